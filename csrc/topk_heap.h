// Per-query top-k lists of (squared distance, index) shared by the kNN kernels on host and
// device: distances ascending, ties to the lower index, so every backend keeps the same
// neighbours. Up to kSortedMax entries a list is kept sorted (insertion); above, a max-heap.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace pyanom {

constexpr int64_t kEmpty = INT64_MAX;  // index of an unfilled slot
constexpr int64_t kSortedMax = 32;

// Where a list of k keeps its worst entry.
PYANOM_HOST_DEVICE inline int64_t knn_worst_slot(int64_t k) { return k > kSortedMax ? 0 : k - 1; }

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

// Replaces the worst entry by (v, id), which must come before it. `later`: id exceeds every kept
// index (a scan in bank order), so a sorted list needs only the distance.
template <typename T>
PYANOM_HOST_DEVICE inline void knn_push(T* d, int64_t* ix, int64_t k, T v, int64_t id, bool later) {
  if (k > kSortedMax) {  // heap entries are compared with each other: always the full order
    knn_sift_down(d, ix, 0, k, v, id);
    return;
  }
  int64_t j = k - 1;
  for (; j > 0 && (later ? v < d[j - 1] : knn_before(v, id, d[j - 1], ix[j - 1])); --j) {
    d[j] = d[j - 1];
    ix[j] = ix[j - 1];
  }
  d[j] = v;
  ix[j] = id;
}

// Adds another list's entry (any index order) if it beats the worst kept.
template <typename T>
PYANOM_HOST_DEVICE inline void knn_offer(T* d, int64_t* ix, int64_t k, T v, int64_t id) {
  const int64_t w = knn_worst_slot(k);
  if (knn_before(v, id, d[w], ix[w])) knn_push(d, ix, k, v, id, false);
}

// Ascending order: a heap is sorted in place, a sorted list already is.
template <typename T>
PYANOM_HOST_DEVICE inline void knn_sort(T* d, int64_t* ix, int64_t k) {
  if (k <= kSortedMax) return;
  for (int64_t end = k - 1; end > 0; --end) {
    const T v = d[end];
    const int64_t id = ix[end];
    d[end] = d[0];
    ix[end] = ix[0];
    knn_sift_down(d, ix, 0, end, v, id);
  }
}

}  // namespace pyanom
