// channel_self_attention (pyanom.ops.channel_attention):
// For every channel of each [C, L] map of x [B, C, L] (channels-first), separately:
// out[c, i] = sum_j softmax_j(x[c, i] x[c, j]) x[c, j], into out [B, C, L]. No workspace.
// Raises ValueError "x contains NaN or Inf" when x does.
#pragma once
#include <cstdint>
#include <string>

namespace pyanom {

void channel_attention_cpu(std::uintptr_t x, std::uintptr_t out, std::int64_t batch,
                           std::int64_t channels, std::int64_t positions,
                           const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on device buffers, launched on `stream` (a cudaStream_t). Inputs are checked finite
// by the caller.
void channel_attention_cuda(std::uintptr_t x, std::uintptr_t out, std::int64_t batch,
                            std::int64_t channels, std::int64_t positions,
                            const std::string& dtype, std::uintptr_t stream);
#endif

}  // namespace pyanom
