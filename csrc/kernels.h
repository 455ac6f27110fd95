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

// ---- self_attention ----

// ---- concentrated_loss ----

}  // namespace pyanom
