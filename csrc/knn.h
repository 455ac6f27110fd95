// knn_scores (pyanom.ops.knn): the k nearest bank rows of every query, never holding a q x n
// matrix. Distances [q, k] (ascending, dtype) and indices [q, k] (int64), ties to the lowest index.
#pragma once
#include <cstdint>
#include <string>

#include "common.h"

// Queries [q, d] and bank [n, d] of the dtype, k neighbours, and a chunk of at most chunk_size
// elements of scratch (see pyanom.ops.knn): what the workspace size depends on.
#define PYANOM_KNN_SIZES(X) X(int64_t, q) X(int64_t, n) X(int64_t, d) X(int64_t, k) X(int64_t, chunk_size)
#define PYANOM_KNN_ARGS(X)                                                                          \
  X(std::uintptr_t, queries) X(std::uintptr_t, bank) X(std::uintptr_t, distances)                   \
  X(std::uintptr_t, indices) X(std::uintptr_t, workspace) X(int64_t, workspace_bytes)               \
  PYANOM_KNN_SIZES(X)

namespace pyanom {

// Bytes of scratch knn_cpu needs.
int64_t knn_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_KNN_SIZES) const std::string& dtype);
void knn_cpu(PYANOM_PARAMS(PYANOM_KNN_ARGS) const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on the device of the current CUDA context, launched on `stream` (a cudaStream_t).
int64_t knn_workspace_bytes_cuda(PYANOM_PARAMS(PYANOM_KNN_SIZES) const std::string& dtype);
void knn_cuda(PYANOM_PARAMS(PYANOM_KNN_ARGS) const std::string& dtype, std::uintptr_t stream);
#endif

}  // namespace pyanom
