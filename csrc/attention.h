// self_attention (pyanom.ops.attention): softmax(X X^T / sqrt(C)) X for each [C, L] map of
// x [B, C, L] (channels-first), into out [B, C, L].
#pragma once
#include <cstdint>
#include <string>

#include "common.h"

#define PYANOM_ATTENTION_SHAPE(X) X(int64_t, batch) X(int64_t, channels) X(int64_t, positions)
// Maps of at most full_limit positions hold their whole (symmetric) score matrix on the CPU and
// compute half of it; longer ones go flash-attention style.
#define PYANOM_ATTENTION_SIZES(X) PYANOM_ATTENTION_SHAPE(X) X(int64_t, full_limit)
#define PYANOM_ATTENTION_ARGS(X)                                                                \
  X(std::uintptr_t, x) X(std::uintptr_t, out) X(std::uintptr_t, workspace)                      \
  X(int64_t, workspace_bytes) PYANOM_ATTENTION_SIZES(X)
// The CUDA kernel is fused in one launch: no workspace.
#define PYANOM_ATTENTION_CUDA_ARGS(X) X(std::uintptr_t, x) X(std::uintptr_t, out) PYANOM_ATTENTION_SHAPE(X)

namespace pyanom {

// Raises "x contains NaN or Inf" when x does.
int64_t attention_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_ATTENTION_SIZES) const std::string& dtype);
void attention_cpu(PYANOM_PARAMS(PYANOM_ATTENTION_ARGS) const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// On device buffers, launched on `stream` (a cudaStream_t). Inputs are checked finite by the caller.
void attention_cuda(PYANOM_PARAMS(PYANOM_ATTENTION_CUDA_ARGS) const std::string& dtype,
                    std::uintptr_t stream);
#endif

}  // namespace pyanom
