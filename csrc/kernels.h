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

// ---- concentrated_loss ----

}  // namespace pyanom
