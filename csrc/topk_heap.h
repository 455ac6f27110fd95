// The order and the max-heap step the kNN kernels share on host and device: distances
// ascending, ties to the lower index, so every backend keeps the same neighbours.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define PYANOM_HOST_DEVICE __host__ __device__
#else
#define PYANOM_HOST_DEVICE
#endif

namespace pyanom {

// True when (d, i) comes before (wd, wi).
template <typename T>
PYANOM_HOST_DEVICE inline bool knn_before(T d, int64_t i, T wd, int64_t wi) {
  return d < wd || (d == wd && i < wi);
}

// Puts (v, id) at `pos` of the max-heap [0, n) of (d, ix) and restores the heap below it.
template <typename T>
PYANOM_HOST_DEVICE inline void knn_sift_down(T* d, int64_t* ix, int64_t pos, int64_t n, T v, int64_t id) {
  for (;;) {
    int64_t child = 2 * pos + 1;
    if (child >= n) break;
    if (child + 1 < n && knn_before(d[child], ix[child], d[child + 1], ix[child + 1])) ++child;
    if (!knn_before(v, id, d[child], ix[child])) break;
    d[pos] = d[child];
    ix[pos] = ix[child];
    pos = child;
  }
  d[pos] = v;
  ix[pos] = id;
}

}  // namespace pyanom
