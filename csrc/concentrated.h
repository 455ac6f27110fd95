// concentrated_loss (pyanom.ops.concentrated): the fused forward and backward entry points and
// the per-image maths both the CPU and CUDA kernels share.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "host_device.h"

// Images of pixels each (everything after the batch dimension): what the workspace size depends on.
#define PYANOM_CONCENTRATED_SIZES(X) X(std::int64_t, batch) X(std::int64_t, pixels)
#define PYANOM_CONCENTRATED_PARAMETERS(X) X(double, gamma) X(double, lam) X(double, eps)
// Forward. loss: one element of the logits' dtype; sums: [batch, 4] float64.
#define PYANOM_CONCENTRATED_ARGS(X)                                                             \
  X(std::uintptr_t, logits) X(std::uintptr_t, target) PYANOM_CONCENTRATED_SIZES(X)              \
  PYANOM_CONCENTRATED_PARAMETERS(X) X(std::uintptr_t, loss) X(std::uintptr_t, sums)             \
  X(std::uintptr_t, workspace) X(std::size_t, workspace_bytes)
// Backward. grad_loss: one element of the logits' dtype; grad_logits: like logits.
#define PYANOM_CONCENTRATED_BACKWARD_ARGS(X)                                                    \
  X(std::uintptr_t, grad_loss) X(std::uintptr_t, logits) X(std::uintptr_t, target)              \
  X(std::uintptr_t, sums) PYANOM_CONCENTRATED_SIZES(X) PYANOM_CONCENTRATED_PARAMETERS(X)        \
  X(bool, detach_factor) X(std::uintptr_t, grad_logits)

namespace pyanom {

// Work is split into blocks of at most kConcentratedLossBlock pixels of one image (one
// OpenMP iteration or one CUDA thread block each); their partial sums go to a workspace
// and are added in a fixed order, so results do not depend on the thread count.
// Per image the forward pass keeps kConcentratedLossSums sums for the backward pass, in
// this order: sum(p y), sum(p), sum(y), sum(pixel BCE), with p = sigmoid(logits).
constexpr std::int64_t kConcentratedLossBlock = 8192;
constexpr int kConcentratedLossSums = 4;

PYANOM_HOST_DEVICE constexpr std::int64_t concentrated_loss_blocks_per_image(std::int64_t pixels) {
  return (pixels + kConcentratedLossBlock - 1) / kConcentratedLossBlock;
}

// Bytes of float64 workspace the forward pass needs (the same for either dtype and device).
std::size_t concentrated_workspace_bytes(PYANOM_PARAMS(PYANOM_CONCENTRATED_SIZES) const std::string& dtype);
// Raises ValueError unless batch, pixels >= 1, gamma >= 0, 0 <= lam <= 1 and 0 < eps <= 1.
void concentrated_loss_check(std::int64_t batch, std::int64_t pixels, double gamma, double lam,
                             double eps);

void concentrated_cpu(PYANOM_PARAMS(PYANOM_CONCENTRATED_ARGS) const std::string& dtype);
void concentrated_backward_cpu(PYANOM_PARAMS(PYANOM_CONCENTRATED_BACKWARD_ARGS) const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// Same contracts on device buffers, enqueued on `stream` (a cudaStream_t).
void concentrated_cuda(PYANOM_PARAMS(PYANOM_CONCENTRATED_ARGS) const std::string& dtype,
                       std::uintptr_t stream);
void concentrated_backward_cuda(PYANOM_PARAMS(PYANOM_CONCENTRATED_BACKWARD_ARGS) const std::string& dtype,
                                std::uintptr_t stream);
#endif

// One image's loss and the closed form of its gradient, shared by the CPU and CUDA kernels.
// With I = sum(p y), T = sum(p) + sum(y), U = T - I + eps, N pixels, IoU = I / U,
// F = max(1 - IoU, eps)^gamma and G = lam Dice + (1 - lam) BCE, the image loss is F G and
//   d(F G)/dz_j = s_j (a + b y_j) + c (p_j - y_j),   s_j = p_j (1 - p_j),
// from dDice/dp_j = (2I + eps)/(T + eps)^2 - 2 y_j/(T + eps), dBCE/dz_j = (p_j - y_j)/N and
// dIoU/dp_j = -I/U^2 + y_j (U + I)/U^2 (the last only when the factor is differentiated:
// dF/dIoU = -gamma max(1 - IoU, eps)^(gamma - 1), zero where the clamp holds).
// Math supplies pow for the host or the device (this header does not include <cmath>).
struct ConcentratedLossImage {
  double loss, a, b, c;
};

template <typename Math>
PYANOM_HOST_DEVICE inline ConcentratedLossImage concentrated_loss_image(
    const double* sums, std::int64_t pixels, double gamma, double lam, double eps, bool detach_factor) {
  const double inter = sums[0], total = sums[1] + sums[2];
  const double uni = total - inter + eps, dice_den = total + eps;
  const double base = 1.0 - inter / uni;
  const double clamped = base >= eps ? base : eps;
  const double factor = Math::pow(clamped, gamma);
  const double dice = 1.0 - (2.0 * inter + eps) / dice_den;
  const double bce = sums[3] / static_cast<double>(pixels);
  const double weighted = lam * dice + (1.0 - lam) * bce;
  // d(F G)/dIoU through the factor; zero when detached, for gamma = 0 or under the clamp.
  const double slope = (detach_factor || gamma == 0.0 || base < eps)
                           ? 0.0
                           : -gamma * Math::pow(clamped, gamma - 1.0) * weighted;
  ConcentratedLossImage out;
  out.loss = factor * weighted;
  out.a = factor * lam * (2.0 * inter + eps) / (dice_den * dice_den) - slope * inter / (uni * uni);
  out.b = -2.0 * factor * lam / dice_den + slope * (uni + inter) / (uni * uni);
  out.c = factor * (1.0 - lam) / static_cast<double>(pixels);
  return out;
}

}  // namespace pyanom
