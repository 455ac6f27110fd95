// Declarations of every kernel entry point, grouped by op. Addresses are raw
// pointers to contiguous buffers allocated by pyanom.ops (kernels allocate nothing).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pyanom {

#ifdef PYANOM_WITH_CUDA
int cuda_device_count();
int cuda_runtime_version();
#endif

// ---- greedy_coreset ----

// ---- knn_scores ----

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

}  // namespace pyanom
