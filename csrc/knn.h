// knn_scores (pyanom.ops.knn): the k nearest bank rows of every query, never holding a q x n
// matrix. Distances [q, k] (ascending, dtype) and indices [q, k] (int64), ties to the lowest index.
#pragma once
#include <cstdint>
#include <string>

namespace pyanom {

// Bytes of scratch knn_cpu needs for queries [q, d], bank [n, d] of `dtype`, k neighbours and a
// chunk of at most chunk_size elements (see pyanom.ops.knn).
int64_t knn_workspace_bytes_cpu(int64_t q, int64_t n, int64_t d, int64_t k, int64_t chunk_size,
                                const std::string& dtype);
void knn_cpu(std::uintptr_t queries, std::uintptr_t bank, std::uintptr_t distances,
             std::uintptr_t indices, std::uintptr_t workspace, int64_t workspace_bytes, int64_t q,
             int64_t n, int64_t d, int64_t k, int64_t chunk_size, const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on the device of the current CUDA context, launched on `stream` (a cudaStream_t).
int64_t knn_workspace_bytes_cuda(int64_t q, int64_t n, int64_t d, int64_t k, int64_t chunk_size,
                                 const std::string& dtype);
void knn_cuda(std::uintptr_t queries, std::uintptr_t bank, std::uintptr_t distances,
              std::uintptr_t indices, std::uintptr_t workspace, int64_t workspace_bytes, int64_t q,
              int64_t n, int64_t d, int64_t k, int64_t chunk_size, const std::string& dtype,
              std::uintptr_t stream);
#endif

}  // namespace pyanom
