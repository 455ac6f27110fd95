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

// ---- concentrated_loss ----

}  // namespace pyanom
