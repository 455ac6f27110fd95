// The one vector layer of the CPU kernels. Vectors are GCC vector extensions, so + - * / and
// comparisons work on them directly; this header adds what the operators lack.
// - Vec<T>: the target's register width (a zmm register with AVX-512, else a ymm register, which
//   the compiler splits on narrower targets) with fma, exp, min, max and a lane mask of a < b.
// - vec<T, N>: a fixed number of lanes, for kernels whose order of summation must not depend on
//   the target (coreset), with widening loads and horizontal sums.
// - Scalar exp / log1p written so that `#pragma omp simd` loops vectorise them (concentrated).
// fma is fused exactly where the target has FMA, for vectors and scalars alike (simd::fmadd), so a
// kernel that mixes both gets the same bits from either.
// Vectors pass differently between targets (hence -Wpsabi off): every kernel keeps them inside its
// own translation unit.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace pyanom {
namespace simd {

// Left off to the end of the including file: the warning is reported where the vectors are used.
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__AVX512F__)
constexpr int kBytes = 64;
constexpr int kRegisters = 32;  // zmm
#elif defined(__AVX__)
constexpr int kBytes = 32;
constexpr int kRegisters = 16;  // ymm
#else
constexpr int kBytes = 32;
constexpr int kRegisters = 8;  // 16 xmm registers, two per vector
#endif

template <typename T, int N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
// N lanes of T.
template <typename T, int N = kBytes / int(sizeof(T))>
using vec = typename VecOf<T, N>::type;

template <typename To, typename From>
inline To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}

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

// a * b + c, fused where the target has FMA (as Vec<T>::fma is).
inline float fmadd(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
inline double fmadd(double a, double b, double c) {
#if defined(__FMA__)
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

// What Vec<float> and Vec<double> share: the operations GCC's operators lack, by intrinsic where
// the target has one.
template <typename T>
struct VecOps {
  using V = vec<T>;
  static constexpr int W = kBytes / int(sizeof(T));
  static constexpr bool f32 = sizeof(T) == 4;
  static V splat(T x) { return x - V{}; }  // exact (x - 0 == x), folds to a broadcast
  static V fma(V a, V b, V c) {
#if defined(__AVX512F__)
    if constexpr (f32) return _mm512_fmadd_ps(a, b, c); else return _mm512_fmadd_pd(a, b, c);
#elif defined(__FMA__)
    if constexpr (f32) return _mm256_fmadd_ps(a, b, c); else return _mm256_fmadd_pd(a, b, c);
#else
    return a * b + c;
#endif
  }
  // maxps / minps: b where either is NaN. Masked forms under AVX-512: GCC 12 warns about the
  // unmasked ones' undefined pass-through operand.
  static V max(V a, V b) {
#if defined(__AVX512F__)
    if constexpr (f32) return _mm512_mask_max_ps(a, 0xFFFF, a, b); else return _mm512_mask_max_pd(a, 0xFF, a, b);
#elif defined(__AVX__)
    if constexpr (f32) return _mm256_max_ps(a, b); else return _mm256_max_pd(a, b);
#else
    return a > b ? a : b;
#endif
  }
  static V min(V a, V b) {
#if defined(__AVX512F__)
    if constexpr (f32) return _mm512_mask_min_ps(a, 0xFFFF, a, b); else return _mm512_mask_min_pd(a, 0xFF, a, b);
#elif defined(__AVX__)
    if constexpr (f32) return _mm256_min_ps(a, b); else return _mm256_min_pd(a, b);
#else
    return a < b ? a : b;
#endif
  }
  // Bit l set where a[l] < b[l] (false for NaN).
  static unsigned less(V a, V b) {
#if defined(__AVX512F__)
    if constexpr (f32) return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); else return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ);
#elif defined(__AVX__)
    if constexpr (f32)
      return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)));
    else
      return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LT_OQ)));
#else
    const auto lt = a < b;
    unsigned bits = 0;
    for (int l = 0; l < W; ++l) bits |= unsigned(lt[l] & 1) << l;
    return bits;
#endif
  }
};

// Vec<T>: VecOps<T> and exp, by range reduction x = n ln2 + r, |r| <= ln2/2, a polynomial in r,
// and 2^n built in the exponent bits; exactly 0 below the normal range. Meant for x <= ~0
// (softmax arguments after the max is subtracted).
template <typename T>
struct Vec;

template <>
struct Vec<float> : VecOps<float> {
  using VI = vec<std::int32_t>;
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
struct Vec<double> : VecOps<double> {
  using VI = vec<std::int64_t>;
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

// ---- fixed widths: 8 doubles, 8 and 16 floats ----

using f64x8 = vec<double, 8>;
using f32x8 = vec<float, 8>;
using f32x16 = vec<float, 16>;

inline f64x8 load_f64x8(const double* p) { return load<f64x8>(p); }
// Eight floats widened to double. GCC scalarizes __builtin_convertvector here, hence the intrinsic.
inline f64x8 load_f64x8(const float* p) {
#if defined(__AVX512F__)
  return (f64x8)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#else
  return __builtin_convertvector(load<f32x8>(p), f64x8);
#endif
}

// Sixteen int8 widened to float.
inline f32x16 load_f32x16(const int8_t* q) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
#elif defined(__AVX2__)
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8))));
  f32x16 v;
  std::memcpy(&v, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof lo, &hi, sizeof hi);
  return v;
#else
  f32x16 v;
  for (int l = 0; l < 16; ++l) v[l] = float(q[l]);
  return v;
#endif
}

// Lane sums in a fixed order (of the target: AVX-512 reduces in its own).
inline double hsum(f64x8 s) {
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
inline float hsum(f32x16 s) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)s);
#else
  f32x8 h = load<f32x8>(&s), h2 = load<f32x8>(reinterpret_cast<const float*>(&s) + 8);
  h += h2;
  return ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
#endif
}

// ---- scalar maths that `#pragma omp simd` loops vectorise (libm's calls would not) ----

template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using Int = std::int32_t;
  static constexpr int mantissa = 23;
  static constexpr Int bias = 127;
  static constexpr float lowest = -87.0f;  // exp(-87) is still a normal float
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606820309417232e-6f;
  static constexpr int exp_terms = 8;    // Taylor degree 7 on |r| <= ln2/2
  static constexpr int atanh_terms = 8;  // sum of u^k / (2k + 1), u <= 1/9
};
template <>
struct Bits<double> {
  using Int = std::int64_t;
  static constexpr int mantissa = 52;
  static constexpr Int bias = 1023;
  static constexpr double lowest = -708.0;
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr int exp_terms = 14;
  static constexpr int atanh_terms = 17;
};

// exp(-a) for a >= 0 (a beyond -lowest counts as -lowest: exp(lowest) is far below anything a
// kernel resolves), within 1.2 ulp of long double. The clamp works on the bit patterns, which
// order like the numbers for a >= 0: a float max would become a branch that GCC keeps out of
// the vector loop.
template <typename T>
inline T exp_negative(T a) {
  using B = Bits<T>;
  using Int = typename B::Int;
  const T x = -bit_cast<T>(std::min(bit_cast<Int>(a), bit_cast<Int>(-B::lowest)));
  // Adding 1.5 * 2^mantissa rounds x / ln2 to the integer n, which then sits in the low bits.
  const T shifter = T(3) * T(Int(1) << (B::mantissa - 1));
  const T shifted = x * T(1.4426950408889634074) + shifter;
  const T n = shifted - shifter;
  const T r = (x - n * B::ln2_hi) - n * B::ln2_lo;
  // Taylor series as 1 + r (1 + r/2 (1 + r/3 (...))).
  T poly = T(1);
  for (int k = B::exp_terms - 1; k > 0; --k) poly = poly * (r * (T(1) / T(k))) + T(1);
  const Int ni = bit_cast<Int>(shifted) - bit_cast<Int>(shifter);
  return poly * bit_cast<T>((ni + B::bias) << B::mantissa);
}

// log1p(e) for e in [0, 1], within 3 ulp: 2 atanh(t) with t = e / (2 + e) <= 1/3, exact in
// relative terms as e -> 0 (no 1 + e is ever formed).
template <typename T>
inline T log1p_unit(T e) {
  const T t = e / (T(2) + e);
  const T u = t * t;
  T sum = T(1) / T(2 * Bits<T>::atanh_terms - 1);
  for (int k = Bits<T>::atanh_terms - 2; k >= 0; --k) sum = sum * u + T(1) / T(2 * k + 1);
  return T(2) * t * sum;
}

}  // namespace simd
}  // namespace pyanom
