// Declarations of every kernel entry point, grouped by op. Addresses are raw
// pointers to contiguous buffers allocated by pyanom.ops (kernels allocate nothing).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "host_device.h"

namespace pyanom {

#ifdef PYANOM_WITH_CUDA
int cuda_device_count();
int cuda_runtime_version();
#endif

// ---- greedy_coreset ----
// Bytes of scratch greedy_coreset_cpu needs for points [n, d] of `dtype` and k centers.
int64_t greedy_coreset_workspace_bytes(int64_t n, int64_t d, int64_t k, const std::string& dtype);
// k-center greedy on points [n, d] (already projected) from `start`; writes k int64 indices
// in selection order to out. Same selection as the unpruned float64 loop, ties to the lowest index.
void greedy_coreset_cpu(std::uintptr_t points, int64_t n, int64_t d, int64_t k, int64_t start,
                        std::uintptr_t out, std::uintptr_t workspace, int64_t workspace_bytes,
                        const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on CUDA buffers of the current device, launched on `stream` (a cudaStream_t).
int64_t greedy_coreset_cuda_workspace_bytes(int64_t n, int64_t d, int64_t k, const std::string& dtype);
void greedy_coreset_cuda(std::uintptr_t points, int64_t n, int64_t d, int64_t k, int64_t start,
                         std::uintptr_t out, std::uintptr_t workspace, int64_t workspace_bytes,
                         const std::string& dtype, std::uintptr_t stream);
#endif

// ---- knn_scores ----
// Bytes of scratch knn_scores_cpu needs for queries [q, d], bank [n, d] of `dtype`, k
// neighbours and a chunk of at most chunk_size elements (see pyanom.ops.knn).
int64_t knn_scores_workspace_bytes(int64_t q, int64_t n, int64_t d, int64_t k,
                                   const std::string& dtype, int64_t chunk_size);
// k nearest bank rows of every query: distances [q, k] (ascending, dtype) and indices [q, k]
// (int64), ties to the lowest index; never holds a q x n matrix.
void knn_scores_cpu(std::uintptr_t queries, std::uintptr_t bank, std::uintptr_t distances,
                    std::uintptr_t indices, std::uintptr_t workspace, int64_t workspace_bytes,
                    int64_t q, int64_t n, int64_t d, int64_t k, const std::string& dtype,
                    int64_t chunk_size);
#ifdef PYANOM_WITH_CUDA
// The same on the device of the current CUDA context, launched on `stream` (a cudaStream_t).
int64_t knn_scores_cuda_workspace_bytes(int64_t q, int64_t n, int64_t d, int64_t k,
                                        const std::string& dtype, int64_t chunk_size);
void knn_scores_cuda(std::uintptr_t queries, std::uintptr_t bank, std::uintptr_t distances,
                     std::uintptr_t indices, std::uintptr_t workspace, int64_t workspace_bytes,
                     int64_t q, int64_t n, int64_t d, int64_t k, const std::string& dtype,
                     int64_t chunk_size, std::uintptr_t stream);
#endif

// ---- self_attention ----
// softmax(X X^T / sqrt(C)) X for each [C, L] map of x [B, C, L] (channels-first), into out
// [B, C, L]. Maps of at most full_limit positions hold their whole (symmetric) score matrix and
// compute half of it; longer ones go flash-attention style. Workspace: see _workspace_bytes.
std::int64_t self_attention_workspace_bytes(std::int64_t batch, std::int64_t channels,
                                            std::int64_t positions, std::int64_t full_limit,
                                            const std::string& dtype);
void self_attention_cpu(std::uintptr_t x, std::uintptr_t out, std::uintptr_t workspace,
                        std::int64_t workspace_bytes, std::int64_t batch, std::int64_t channels,
                        std::int64_t positions, std::int64_t full_limit, const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on device buffers, fused in one kernel launched on `stream` (a cudaStream_t).
void self_attention_cuda(std::uintptr_t x, std::uintptr_t out, std::int64_t batch,
                         std::int64_t channels, std::int64_t positions, const std::string& dtype,
                         std::uintptr_t stream);
#endif

// ---- concentrated_loss ----
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

std::size_t concentrated_loss_workspace_bytes(std::int64_t batch, std::int64_t pixels);
// Raises ValueError unless batch, pixels >= 1, gamma >= 0, 0 <= lam <= 1 and eps > 0.
void concentrated_loss_check(std::int64_t batch, std::int64_t pixels, double gamma, double lam,
                             double eps);

// loss: one element of the logits' dtype; sums: [batch, 4] float64.
void concentrated_loss_forward_cpu(std::uintptr_t logits, std::uintptr_t target, std::int64_t batch,
                                   std::int64_t pixels, double gamma, double lam, double eps,
                                   std::uintptr_t loss, std::uintptr_t sums, std::uintptr_t workspace,
                                   std::size_t workspace_bytes, const std::string& dtype);
// grad_loss: one element of the logits' dtype; grad_logits: like logits.
void concentrated_loss_backward_cpu(std::uintptr_t grad_loss, std::uintptr_t logits,
                                    std::uintptr_t target, std::uintptr_t sums, std::int64_t batch,
                                    std::int64_t pixels, double gamma, double lam, double eps,
                                    bool detach_factor, std::uintptr_t grad_logits,
                                    const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// Same contracts on device buffers, enqueued on `stream` (a cudaStream_t).
void concentrated_loss_forward_cuda(std::uintptr_t logits, std::uintptr_t target, std::int64_t batch,
                                    std::int64_t pixels, double gamma, double lam, double eps,
                                    std::uintptr_t loss, std::uintptr_t sums, std::uintptr_t workspace,
                                    std::size_t workspace_bytes, const std::string& dtype,
                                    std::uintptr_t stream);
void concentrated_loss_backward_cuda(std::uintptr_t grad_loss, std::uintptr_t logits,
                                     std::uintptr_t target, std::uintptr_t sums, std::int64_t batch,
                                     std::int64_t pixels, double gamma, double lam, double eps,
                                     bool detach_factor, std::uintptr_t grad_logits,
                                     const std::string& dtype, std::uintptr_t stream);
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
