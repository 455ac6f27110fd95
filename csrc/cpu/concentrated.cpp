// Concentrated loss on the CPU: one pass over the pixels forward (per-image sums), one pass
// backward (closed-form gradient from those sums, see concentrated_loss_image in concentrated.h).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "concentrated.h"
#include "cpu/simd.h"

namespace pyanom {
namespace {

struct HostMath {
  static double pow(double x, double y) { return std::pow(x, y); }
};

// The pixel loops vectorise under `omp simd` with the layer's scalar exp and log1p (libm's calls
// would dominate the time). Each pixel needs e = exp(-|z|) in (0, 1] for the sigmoid and for the
// stable BCE term log1p(e).
using simd::exp_negative;
using simd::log1p_unit;

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
  PYANOM_CHECK(eps > 0 && eps <= 1, "concentrated_loss: eps must lie in (0, 1], got " + std::to_string(eps));
}

std::size_t concentrated_workspace_bytes(PYANOM_PARAMS(PYANOM_CONCENTRATED_SIZES) const std::string& dtype) {
  PYANOM_CHECK(batch >= 1 && pixels >= 1, "concentrated_loss: batch and pixels must be >= 1");
  parse_dtype(dtype);  // the sums are float64 whatever the dtype, but only a valid one is asked
  return static_cast<std::size_t>(batch * concentrated_loss_blocks_per_image(pixels) *
                                  kConcentratedLossSums) * sizeof(double);
}

void concentrated_cpu(PYANOM_PARAMS(PYANOM_CONCENTRATED_ARGS) const std::string& dtype) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  PYANOM_CHECK(workspace_bytes >= concentrated_workspace_bytes(batch, pixels, dtype),
               "concentrated_loss: workspace too small (see concentrated_workspace_bytes)");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    forward(as_ptr<const T>(logits), as_ptr<const T>(target), batch, pixels, gamma, lam, eps,
            as_ptr<T>(loss), as_ptr<double>(sums), as_ptr<double>(workspace));
  });
}

void concentrated_backward_cpu(PYANOM_PARAMS(PYANOM_CONCENTRATED_BACKWARD_ARGS) const std::string& dtype) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    backward(*as_ptr<const T>(grad_loss), as_ptr<const T>(logits), as_ptr<const T>(target),
             as_ptr<const double>(sums), batch, pixels, gamma, lam, eps, detach_factor,
             as_ptr<T>(grad_logits));
  });
}

}  // namespace pyanom
