// Which instruction-set levels this CPU (and its OS) can run, read from cpuid and xgetbv here
// rather than through the compiler runtime's __builtin_cpu_supports: zig's compiler-rt (the
// wheel's toolchain, packaging/build_wheel.sh) leaves those feature bits at zero. A level needs
// its instructions and an OS that saves the registers they use (XCR0). Compiled into the
// lowest-level module, so the answer is available before any other loads.
#pragma once
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace pyanom {

#if defined(__x86_64__) && defined(__GNUC__)
namespace detail {

inline bool bit(unsigned reg, int n) { return (reg >> n) & 1u; }

// The registers the OS saves on a context switch (XCR0); only valid when cpuid reports OSXSAVE.
inline unsigned long long xcr0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

}  // namespace detail
#endif

inline std::vector<std::string> cpu_supported_levels() {
  std::vector<std::string> levels{"generic"};
#if defined(__x86_64__) && defined(__GNUC__)
  using detail::bit;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return levels;
  const unsigned c1 = c;
  const bool osxsave = bit(c1, 27);
  const unsigned long long xcr = osxsave ? detail::xcr0() : 0;
  unsigned b7 = 0;
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    b7 = b;
  }
  const bool lzcnt = __get_cpuid(0x80000001u, &a, &b, &c, &d) && bit(c, 5);
  // x86-64-v3: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, with the XMM and YMM state saved.
  const bool v3 = osxsave && (xcr & 0x6) == 0x6 && bit(c1, 28) && bit(b7, 5) && bit(b7, 3) &&
                  bit(b7, 8) && bit(c1, 29) && bit(c1, 12) && lzcnt && bit(c1, 22);
  // x86-64-v4: AVX-512 F, BW, CD, DQ and VL, with the opmask and both halves of the ZMM state saved.
  const bool v4 = v3 && (xcr & 0xe0) == 0xe0 && bit(b7, 16) && bit(b7, 30) && bit(b7, 28) &&
                  bit(b7, 17) && bit(b7, 31);
  if (v3) levels.push_back("avx2");
  if (v4) levels.push_back("avx512");
#endif
  return levels;
}

}  // namespace pyanom
