// self_attention (pyanom.ops.attention): softmax(X X^T / sqrt(C)) X for each [C, L] map of
// x [B, C, L] (channels-first), into out [B, C, L].
#pragma once
#include <cstdint>
#include <string>

namespace pyanom {

// Maps of at most full_limit positions hold their whole (symmetric) score matrix and compute
// half of it; longer ones go flash-attention style. Raises "x contains NaN or Inf" when x does.
std::int64_t attention_workspace_bytes_cpu(std::int64_t batch, std::int64_t channels,
                                           std::int64_t positions, std::int64_t full_limit,
                                           const std::string& dtype);
void attention_cpu(std::uintptr_t x, std::uintptr_t out, std::uintptr_t workspace,
                   std::int64_t workspace_bytes, std::int64_t batch, std::int64_t channels,
                   std::int64_t positions, std::int64_t full_limit, const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on device buffers, fused in one kernel launched on `stream` (a cudaStream_t). Inputs
// are checked finite by the caller.
void attention_cuda(std::uintptr_t x, std::uintptr_t out, std::int64_t batch,
                    std::int64_t channels, std::int64_t positions, const std::string& dtype,
                    std::uintptr_t stream);
#endif

}  // namespace pyanom
