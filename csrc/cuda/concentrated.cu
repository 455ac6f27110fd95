// Concentrated loss on CUDA: one pass over the pixels forward, one pass backward, as on the
// CPU (see concentrated_loss_image in concentrated.h for the closed-form gradient).
// Forward: each thread block sums one block of kConcentratedLossBlock pixels of one image
// into the workspace; one small block then adds those partial sums per image in a fixed
// order and averages the image losses, so the result is deterministic.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "common.h"
#include "concentrated.h"
#include "cuda/common.cuh"

namespace pyanom {
namespace {

constexpr int kThreads = 256;
static_assert(kConcentratedLossBlock % kThreads == 0, "a block of pixels spreads evenly over the threads");

struct Block {
  std::int64_t image, begin;  // begin: flat offset of the block's first pixel
  int count;
};

__device__ inline Block block_of(std::int64_t pixels) {
  const std::int64_t per_image = concentrated_loss_blocks_per_image(pixels);
  const std::int64_t image = blockIdx.x / per_image;
  const std::int64_t start = (blockIdx.x % per_image) * kConcentratedLossBlock;
  const std::int64_t left = pixels - start;
  return {image, image * pixels + start,
          static_cast<int>(left < kConcentratedLossBlock ? left : kConcentratedLossBlock)};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_sums_kernel(const T* __restrict__ z, const T* __restrict__ y, std::int64_t pixels,
                        double* __restrict__ partial) {
  const Block blk = block_of(pixels);
  const T* zb = z + blk.begin;
  const T* yb = y + blk.begin;
  // At most kConcentratedLossBlock / kThreads pixels per thread: summed in T, then in double.
  T inter = 0, prob = 0, tgt = 0, bce = 0;
#pragma unroll 4
  for (int j = threadIdx.x; j < blk.count; j += kThreads) {
    const T zj = zb[j], yj = yb[j];
    const T e = Num<T>::exp(-fabs(zj));
    const T p = (zj >= T(0) ? T(1) : e) / (T(1) + e);
    inter += p * yj;
    prob += p;
    tgt += yj;
    bce += fmax(zj, T(0)) - zj * yj + Num<T>::log1p(e);  // stable BCE from logits
  }
  double v[kConcentratedLossSums] = {inter, prob, tgt, bce};
  block_sum<kThreads>(v);
  if (threadIdx.x == 0)
    for (int k = 0; k < kConcentratedLossSums; ++k)
      partial[kConcentratedLossSums * static_cast<std::int64_t>(blockIdx.x) + k] = v[k];
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const double* __restrict__ partial, std::int64_t batch, std::int64_t pixels,
                  double gamma, double lam, double eps, T* __restrict__ loss, double* __restrict__ sums) {
  const std::int64_t per_image = concentrated_loss_blocks_per_image(pixels);
  double total[1] = {0.0};
  for (std::int64_t i = threadIdx.x; i < batch; i += kThreads) {
    double s[kConcentratedLossSums] = {0.0, 0.0, 0.0, 0.0};
    for (std::int64_t b = 0; b < per_image; ++b)
      for (int k = 0; k < kConcentratedLossSums; ++k)
        s[k] += partial[kConcentratedLossSums * (i * per_image + b) + k];
    for (int k = 0; k < kConcentratedLossSums; ++k) sums[kConcentratedLossSums * i + k] = s[k];
    total[0] += concentrated_loss_image<DeviceMath>(s, pixels, gamma, lam, eps, true).loss;
  }
  block_sum<kThreads>(total);
  if (threadIdx.x == 0) *loss = static_cast<T>(total[0] / static_cast<double>(batch));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ grad_loss, const T* __restrict__ z, const T* __restrict__ y,
                    const double* __restrict__ sums, std::int64_t batch, std::int64_t pixels,
                    double gamma, double lam, double eps, bool detach_factor, T* __restrict__ dz) {
  const Block blk = block_of(pixels);
  __shared__ T coef[3];
  if (threadIdx.x == 0) {
    const ConcentratedLossImage img = concentrated_loss_image<DeviceMath>(
        sums + kConcentratedLossSums * blk.image, pixels, gamma, lam, eps, detach_factor);
    const double scale = static_cast<double>(*grad_loss) / static_cast<double>(batch);
    coef[0] = static_cast<T>(scale * img.a);
    coef[1] = static_cast<T>(scale * img.b);
    coef[2] = static_cast<T>(scale * img.c);
  }
  __syncthreads();
  const T a = coef[0], b = coef[1], c = coef[2];
  const T* zb = z + blk.begin;
  const T* yb = y + blk.begin;
  T* db = dz + blk.begin;
#pragma unroll 4
  for (int j = threadIdx.x; j < blk.count; j += kThreads) {
    const T zj = zb[j], yj = yb[j];
    const T e = Num<T>::exp(-fabs(zj));
    const T d = T(1) + e;
    const T p = (zj >= T(0) ? T(1) : e) / d;
    const T s = e / (d * d);  // p (1 - p), without cancellation for large |z|
    db[j] = s * (a + b * yj) + c * (p - yj);
  }
}

unsigned int grid_size(std::int64_t batch, std::int64_t pixels) {
  const std::int64_t blocks = batch * concentrated_loss_blocks_per_image(pixels);
  PYANOM_CHECK(blocks <= INT_MAX, "concentrated_loss: too many pixels for one launch (" +
                                      std::to_string(blocks) + " blocks of " +
                                      std::to_string(kConcentratedLossBlock) + ")");
  return static_cast<unsigned int>(blocks);
}

}  // namespace

void concentrated_cuda(PYANOM_PARAMS(PYANOM_CONCENTRATED_ARGS) const std::string& dtype,
                       std::uintptr_t stream) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  PYANOM_CHECK(workspace_bytes >= concentrated_workspace_bytes(batch, pixels, dtype),
               "concentrated_loss: workspace too small (see concentrated_workspace_bytes)");
  const unsigned int grid = grid_size(batch, pixels);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    partial_sums_kernel<T><<<grid, kThreads, 0, s>>>(as_ptr<const T>(logits), as_ptr<const T>(target),
                                                     pixels, as_ptr<double>(workspace));
    PYANOM_CUDA_CHECK_LAUNCH();
    finish_kernel<T><<<1, kThreads, 0, s>>>(as_ptr<const double>(workspace), batch, pixels, gamma,
                                            lam, eps, as_ptr<T>(loss), as_ptr<double>(sums));
    PYANOM_CUDA_CHECK_LAUNCH();
  });
}

void concentrated_backward_cuda(PYANOM_PARAMS(PYANOM_CONCENTRATED_BACKWARD_ARGS) const std::string& dtype,
                                std::uintptr_t stream) {
  concentrated_loss_check(batch, pixels, gamma, lam, eps);
  const unsigned int grid = grid_size(batch, pixels);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    backward_kernel<T><<<grid, kThreads, 0, s>>>(as_ptr<const T>(grad_loss), as_ptr<const T>(logits),
                                                 as_ptr<const T>(target), as_ptr<const double>(sums),
                                                 batch, pixels, gamma, lam, eps, detach_factor,
                                                 as_ptr<T>(grad_logits));
    PYANOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pyanom
