// Concentrated loss on the CPU: one pass over the pixels forward (per-image sums), one pass
// backward (closed-form gradient from those sums, see concentrated_loss_image in concentrated.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "concentrated.h"
#include "cpu/simd.h"

namespace pyanom {
namespace {

struct HostMath {
  static double pow(double x, double y) { return std::pow(x, y); }
};

// exp and log1p written so that the pixel loops vectorise: libm's scalar calls would
// dominate the time. Each pixel needs e = exp(-|z|) in (0, 1] for the sigmoid and for the
// stable BCE term log1p(e). Measured against long double: exp within 1.2 ulp, log1p
// within 3 ulp, in float and in double.
template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using Int = std::int32_t;
  static constexpr int mantissa = 23;
  static constexpr Int bias = 127;
  static constexpr float lowest = -87.0f;  // exp(-87) is still a normal float
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606820309417232e-6f;
  static constexpr int exp_terms = 8;  // Taylor degree 7 on |r| <= ln2/2
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

template <typename To, typename From>
inline To bit_cast(From x) {
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// exp(-a) for a >= 0 (a beyond -lowest counts as -lowest: exp(lowest) is far below anything
// the loss can resolve). The clamp works on the bit patterns, which order like the numbers
// for a >= 0: a float max would become a branch that GCC keeps out of the vector loop.
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

// log1p(e) for e in [0, 1]: 2 atanh(t) with t = e / (2 + e) <= 1/3, exact in relative terms
// as e -> 0 (no 1 + e is ever formed).
template <typename T>
inline T log1p_unit(T e) {
  const T t = e / (T(2) + e);
  const T u = t * t;
  T sum = T(1) / T(2 * Bits<T>::atanh_terms - 1);
  for (int k = Bits<T>::atanh_terms - 2; k >= 0; --k) sum = sum * u + T(1) / T(2 * k + 1);
  return T(2) * t * sum;
}

struct Block {
  std::int64_t image, begin, count;  // begin: flat offset of the block's first pixel
};

inline Block block_of(std::int64_t index, std::int64_t pixels) {
  const std::int64_t per_image = concentrated_loss_blocks_per_image(pixels);
  const std::int64_t image = index / per_image, start = (index % per_image) * kConcentratedLossBlock;
  return {image, image * pixels + start, std::min(kConcentratedLossBlock, pixels - start)};
}

// Run fn(block index) over every block, in parallel when there is enough work. Blocks are
// handed out dynamically: a thread the OS preempts then holds up at most one block.
template <typename Fn>
void for_blocks(std::int64_t batch, std::int64_t pixels, Fn&& fn) {
  const std::int64_t count = batch * concentrated_loss_blocks_per_image(pixels);
#pragma omp parallel for schedule(dynamic) if (batch * pixels > 2 * kConcentratedLossBlock)
  for (std::int64_t i = 0; i < count; ++i) fn(i);
}

template <typename T>
void forward(const T* z, const T* y, std::int64_t batch, std::int64_t pixels, double gamma,
             double lam, double eps, T* loss, double* sums, double* partial) {
  for_blocks(batch, pixels, [&](std::int64_t index) {
    const Block blk = block_of(index, pixels);
    const T* zb = z + blk.begin;
    const T* yb = y + blk.begin;
    double inter = 0, prob = 0, tgt = 0, bce = 0;
    // float pixels into double sums: a whole vector register of pixels per step (clang would
    // otherwise take half of one, as many as the double sums hold, and run 1.9x slower).
#pragma omp simd simdlen(simd::kBytes / sizeof(T)) reduction(+ : inter, prob, tgt, bce)
    for (std::int64_t j = 0; j < blk.count; ++j) {
      const T zj = zb[j], yj = yb[j];
      const T e = exp_negative(std::abs(zj));
      const T p = (zj >= T(0) ? T(1) : e) / (T(1) + e);
      inter += p * yj;
      prob += p;
      tgt += yj;
      // BCE from logits: max(z, 0) - z y + log1p(exp(-|z|)).
      bce += std::max(zj, T(0)) - zj * yj + log1p_unit(e);
    }
    double* out = partial + kConcentratedLossSums * index;
    out[0] = inter;
    out[1] = prob;
    out[2] = tgt;
    out[3] = bce;
  });
  // Fixed-order reduction of the blocks, then the mean over images.
  const std::int64_t per_image = concentrated_loss_blocks_per_image(pixels);
  double total = 0;
  for (std::int64_t i = 0; i < batch; ++i) {
    double* s = sums + kConcentratedLossSums * i;
    std::fill(s, s + kConcentratedLossSums, 0.0);
    for (std::int64_t b = 0; b < per_image; ++b)
      for (int k = 0; k < kConcentratedLossSums; ++k)
        s[k] += partial[kConcentratedLossSums * (i * per_image + b) + k];
    total += concentrated_loss_image<HostMath>(s, pixels, gamma, lam, eps, true).loss;
  }
  *loss = static_cast<T>(total / static_cast<double>(batch));
}

template <typename T>
void backward(T grad_loss, const T* z, const T* y, const double* sums, std::int64_t batch,
              std::int64_t pixels, double gamma, double lam, double eps, bool detach_factor, T* dz) {
  const double scale = static_cast<double>(grad_loss) / static_cast<double>(batch);
  for_blocks(batch, pixels, [&](std::int64_t index) {
    const Block blk = block_of(index, pixels);
    const ConcentratedLossImage img = concentrated_loss_image<HostMath>(
        sums + kConcentratedLossSums * blk.image, pixels, gamma, lam, eps, detach_factor);
    const T a = static_cast<T>(scale * img.a), b = static_cast<T>(scale * img.b),
            c = static_cast<T>(scale * img.c);
    const T* zb = z + blk.begin;
    const T* yb = y + blk.begin;
    T* db = dz + blk.begin;
#pragma omp simd
    for (std::int64_t j = 0; j < blk.count; ++j) {
      const T zj = zb[j], yj = yb[j];
      const T e = exp_negative(std::abs(zj));
      const T d = T(1) + e;
      const T p = (zj >= T(0) ? T(1) : e) / d;
      const T s = e / (d * d);  // p (1 - p), without cancellation for large |z|
      db[j] = s * (a + b * yj) + c * (p - yj);
    }
  });
}

}  // namespace

void concentrated_loss_check(std::int64_t batch, std::int64_t pixels, double gamma, double lam,
                             double eps) {
  PYANOM_CHECK(batch >= 1, "concentrated_loss: batch must be >= 1, got " + std::to_string(batch));
  PYANOM_CHECK(pixels >= 1, "concentrated_loss: pixels per image must be >= 1, got " + std::to_string(pixels));
  PYANOM_CHECK(std::isfinite(gamma) && gamma >= 0, "concentrated_loss: gamma must be >= 0, got " + std::to_string(gamma));
  PYANOM_CHECK(lam >= 0 && lam <= 1, "concentrated_loss: lam must lie in [0, 1], got " + std::to_string(lam));
  PYANOM_CHECK(std::isfinite(eps) && eps > 0, "concentrated_loss: eps must be > 0, got " + std::to_string(eps));
}

std::size_t concentrated_workspace_bytes(std::int64_t batch, std::int64_t pixels,
                                         const std::string& dtype) {
  PYANOM_CHECK(batch >= 1 && pixels >= 1, "concentrated_loss: batch and pixels must be >= 1");
  parse_dtype(dtype);  // the sums are float64 whatever the dtype, but only a valid one is asked
  return static_cast<std::size_t>(batch * concentrated_loss_blocks_per_image(pixels) *
                                  kConcentratedLossSums) * sizeof(double);
}

void concentrated_cpu(std::uintptr_t logits, std::uintptr_t target, std::int64_t batch,
                      std::int64_t pixels, double gamma, double lam, double eps,
                      std::uintptr_t loss, std::uintptr_t sums, std::uintptr_t workspace,
                      std::size_t workspace_bytes, const std::string& dtype) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  PYANOM_CHECK(workspace_bytes >= concentrated_workspace_bytes(batch, pixels, dtype),
               "concentrated_loss: workspace too small (see concentrated_workspace_bytes)");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    forward(as_ptr<const T>(logits), as_ptr<const T>(target), batch, pixels, gamma, lam, eps,
            as_ptr<T>(loss), as_ptr<double>(sums), as_ptr<double>(workspace));
  });
}

void concentrated_backward_cpu(std::uintptr_t grad_loss, std::uintptr_t logits,
                               std::uintptr_t target, std::uintptr_t sums, std::int64_t batch,
                               std::int64_t pixels, double gamma, double lam, double eps,
                               bool detach_factor, std::uintptr_t grad_logits,
                               const std::string& dtype) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    backward(*as_ptr<const T>(grad_loss), as_ptr<const T>(logits), as_ptr<const T>(target),
             as_ptr<const double>(sums), batch, pixels, gamma, lam, eps, detach_factor,
             as_ptr<T>(grad_logits));
  });
}

}  // namespace pyanom
