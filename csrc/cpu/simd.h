// SIMD vectors through GCC vector extensions, fma, and exp(x) for x <= ~0 (softmax arguments after
// the max is subtracted): a zmm register with AVX-512, else a ymm register (AVX2), which the
// compiler splits on narrower targets. Such vectors pass differently between targets (hence
// -Wpsabi off): for kernels private to one translation unit, which both attention kernels are.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace pyanom {
namespace simd {

// Left off to the end of the including file: the warning is reported where the vectors are used.
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
  static V splat(float x) { return x - V{}; }  // exact (x - 0 == x), folds to a broadcast
  static V fma(V a, V b, V c) {
#if defined(__AVX512F__)
    return _mm512_fmadd_ps(a, b, c);
#else
    return a * b + c;
#endif
  }
  static V exp(V x) {
    const V lo = splat(-87.33654f);
    V z = x < lo ? lo : x;
    const V round = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
    V n = (z * 1.44269504088896341f + round) - round;
    V r = (z - n * 0.693359375f) - n * -2.12194440e-4f;
    V p = splat(1.9875691500e-4f);  // Cephes expf minimax coefficients (about 1 ulp)
    p = fma(p, r, splat(1.3981999507e-3f));
    p = fma(p, r, splat(8.3334519073e-3f));
    p = fma(p, r, splat(4.1665795894e-2f));
    p = fma(p, r, splat(1.6666665459e-1f));
    p = fma(p, r, splat(5.0000001201e-1f));
    p = fma(p * r, r, r) + 1.0f;
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
  static V fma(V a, V b, V c) {
#if defined(__AVX512F__)
    return _mm512_fmadd_pd(a, b, c);
#else
    return a * b + c;
#endif
  }
  static V exp(V x) {
    const V lo = splat(-708.3964185322641);
    V z = x < lo ? lo : x;
    const V round = splat(6755399441055744.0);  // 1.5 * 2^52
    V n = (z * 1.4426950408889634 + round) - round;
    V r = (z - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    // Taylor to degree 13: truncation below 1e-17 relative.
    static constexpr double inv_fact[14] = {
        1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
        1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
    V p = splat(inv_fact[13]);
    for (int k = 12; k >= 0; --k) p = fma(p, r, splat(inv_fact[k]));
    VI bits = (__builtin_convertvector(n, VI) + 1023) << 52;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < lo ? V{} : p * scale;
  }
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename T>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// The first n lanes from p (n <= lanes), zeros after; never reads past p[n - 1].
template <typename V, typename T>
inline V load_first(const T* p, int n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
  else
    return _mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p);
#else
  constexpr int lanes = int(sizeof(V) / sizeof(T));
  if (n == lanes) return load<V>(p);
  V v = {};
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}

// The first n lanes of v to p (0 < n <= lanes).
template <typename V, typename T>
inline void store_first(T* p, V v, int n) {
  constexpr int lanes = int(sizeof(V) / sizeof(T));
  if (n == lanes) {
    store(p, v);
  } else {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
}

}  // namespace simd
}  // namespace pyanom
