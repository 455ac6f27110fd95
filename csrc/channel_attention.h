// channel_self_attention (pyanom.ops.channel_attention):
// For every channel of each [C, L] map of x [B, C, L] (channels-first), separately:
// out[c, i] = sum_j softmax_j(x[c, i] x[c, j]) x[c, j], into out [B, C, L]. No workspace.
#pragma once
#include <cstdint>
#include <string>

#include "common.h"

#define PYANOM_CHANNEL_ATTENTION_ARGS(X)                                                        \
  X(std::uintptr_t, x) X(std::uintptr_t, out) X(int64_t, batch) X(int64_t, channels)            \
  X(int64_t, positions)

namespace pyanom {

// Raises ValueError "x contains NaN or Inf" when x does.
void channel_attention_cpu(PYANOM_PARAMS(PYANOM_CHANNEL_ATTENTION_ARGS) const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// On device buffers, launched on `stream` (a cudaStream_t). Inputs are checked finite by the caller.
void channel_attention_cuda(PYANOM_PARAMS(PYANOM_CHANNEL_ATTENTION_ARGS) const std::string& dtype,
                            std::uintptr_t stream);
#endif

}  // namespace pyanom
