// Which instruction-set levels this CPU (and its OS) can run, asked through cpuid by the
// compiler's runtime (which also checks that the OS saves the AVX / AVX-512 registers).
// Compiled into the lowest-level module, so the answer is available before any other loads.
#pragma once
#include <string>
#include <vector>

namespace pyanom {

inline std::vector<std::string> cpu_supported_levels() {
  std::vector<std::string> levels{"generic"};
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
#if defined(__clang__) || __GNUC__ < 12
  // Compilers without the level names: the features -march=x86-64-v3 / -v4 add that matter.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
#else
  const bool v3 = __builtin_cpu_supports("x86-64-v3");
  const bool v4 = __builtin_cpu_supports("x86-64-v4");
#endif
  if (v3) levels.push_back("avx2");
  if (v3 && v4) levels.push_back("avx512");
#endif
  return levels;
}

}  // namespace pyanom
