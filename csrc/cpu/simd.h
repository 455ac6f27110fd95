// SIMD vectors through GCC vector extensions, and exp(x) for x <= ~0 (softmax arguments after the
// max is subtracted): a zmm register with AVX-512, else a ymm register, which the compiler splits
// on narrower targets. For kernels private to one translation unit.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace pyanom {
namespace simd {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__AVX512F__)
constexpr int kBytes = 64;
#else
constexpr int kBytes = 32;
#endif
typedef float vf32 __attribute__((vector_size(kBytes)));
typedef double vf64 __attribute__((vector_size(kBytes)));
typedef std::int32_t vi32 __attribute__((vector_size(kBytes)));
typedef std::int64_t vi64 __attribute__((vector_size(kBytes)));

template <typename T>
struct Vec;

// exp by range reduction x = n ln2 + r, |r| <= ln2/2, a polynomial in r, and 2^n built in the
// exponent bits; exactly 0 below the normal range.
template <>
struct Vec<float> {
  using V = vf32;
  using VI = vi32;
  static constexpr int W = kBytes / 4;
  static V splat(float x) { return x - V{}; }
  static V exp(V x) {
    const V lo = splat(-87.33654f);
    V z = x < lo ? lo : x;
    const V round = splat(12582912.0f);  // 1.5 * 2^23
    V n = (z * 1.44269504088896341f + round) - round;
    V r = (z - n * 0.693359375f) - n * -2.12194440e-4f;
    V p = splat(1.9875691500e-4f);  // Cephes expf minimax coefficients
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = (p * r) * r + r + 1.0f;
    VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < lo ? V{} : p * scale;
  }
};

template <>
struct Vec<double> {
  using V = vf64;
  using VI = vi64;
  static constexpr int W = kBytes / 8;
  static V splat(double x) { return x - V{}; }
  static V exp(V x) {
    const V lo = splat(-708.3964185322641);
    V z = x < lo ? lo : x;
    const V round = splat(6755399441055744.0);  // 1.5 * 2^52
    V n = (z * 1.4426950408889634 + round) - round;
    V r = (z - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    V p = splat(1.0 / 6227020800.0);  // Taylor to degree 13: truncation below 1e-17
    double term = 6227020800.0;
    for (int k = 12; k >= 0; --k) {
      term /= (k + 1);
      p = p * r + 1.0 / term;
    }
    VI bits = (__builtin_convertvector(n, VI) + 1023) << 52;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < lo ? V{} : p * scale;
  }
};

// The first n lanes from p (0 < n <= lanes), zeros after; never reads past p[n - 1].
template <typename V, typename T>
inline V load_first(const T* p, int n) {
  constexpr int lanes = int(sizeof(V) / sizeof(T));
  V v = {};
  if (n == lanes) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (int i = 0; i < n; ++i) v[i] = p[i];
  }
  return v;
}

// The first n lanes of v to p (0 < n <= lanes).
template <typename V, typename T>
inline void store_first(T* p, V v, int n) {
  constexpr int lanes = int(sizeof(V) / sizeof(T));
  if (n == lanes) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
}
#pragma GCC diagnostic pop

}  // namespace simd
}  // namespace pyanom
