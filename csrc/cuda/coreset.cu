// k-center greedy (farthest point) selection on CUDA: one persistent cooperative kernel runs
// the whole loop, so no step goes back to the host; the argmax stays on the device.
//
// Every point x keeps m(x) = ||x - a(x)||^2 (float64) and a(x), its nearest chosen center.
// One step, for the new center c' (every block knows it, see below):
//   A. the squared distances dc[g] = ||c_g - c'||^2 from every chosen center (rows copied
//      to a compact, L2-resident array), one warp per center;
//   -- grid sync --
//   B. a point is measured against c' only when dc[a(x)] < 4 m(x) (1 + slack): otherwise
//      d(a(x), c') >= 2 d(x, a(x)) and the triangle inequality proves it keeps m(x) (the
//      slack covers float64 rounding, so the selection stays exactly the unpruned loop's).
//      A warp takes 32 points, votes which need measuring and measures those together
//      (float64, one fixed order: duplicates tie exactly); each block then writes its
//      best (m, lowest index);
//   -- grid sync --
//   every block reduces the blocks' bests itself, so all agree on the next center without
//   a third sync. Skipped points cost 12 bytes (m, a(x)), mostly served from L2.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <limits>

#include "common.h"
#include "coreset.h"
#include "cuda/common.cuh"

namespace cg = cooperative_groups;

namespace pyanom {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlocks = 2048;  // bests buffer size; the grid is at most what fits at once
constexpr int kBlocksPerSm = 4;

// ||a - b||^2 by a whole warp: lane l sums dims l, l + 32, ... then a butterfly, whose
// pairwise sums are symmetric, so every lane holds the same bits.
template <typename T>
__device__ __forceinline__ double warp_squared_distance(const T* a, const T* b, int64_t d, int lane) {
  double acc = 0.0;
  for (int64_t j = lane; j < d; j += 32) {
    const double t = double(a[j]) - double(b[j]);
    acc = fma(t, t, acc);
  }
  return warp_sum_all(acc);
}

// beats() as the reductions of cuda/common.cuh take it: the block's best (r, i) over its
// threads' values is block_best<kThreads>(r, i, sr, si, Beats{}), which every thread gets.
struct Beats {
  __device__ bool operator()(double r2, int i2, double r, int i) const { return beats(r2, i2, r, i); }
};

struct Buffers {
  double* m;       // [n] min squared distance to the chosen set
  int* group;      // [n] index (selection order) of the nearest chosen center
  double* dc;      // [k] squared distance from each chosen center to the new one
  double* best_r;  // [kMaxBlocks] per-block best (m, index)
  int* best_i;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) greedy_kernel(const T* __restrict__ pts, int64_t n, int64_t d,
                                                          int64_t k, int64_t start, int64_t* __restrict__ out,
                                                          T* __restrict__ centers, Buffers buf) {
  cg::grid_group grid = cg::this_grid();
  __shared__ double sr[kWarps];
  __shared__ int si[kWarps];
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;

  // Step 0: every point against the start.
  const T* c = pts + start * d;
  if (blockIdx.x == 0) {
    for (int64_t j = threadIdx.x; j < d; j += kThreads) centers[j] = c[j];
    if (threadIdx.x == 0) out[0] = start;
  }
  double r = -1.0;
  int i = INT_MAX;
  for (int64_t base = warp * 32; base < n; base += warps * 32) {
    const int64_t last = min(int64_t(32), n - base);
    double mine = 0.0;
    for (int64_t p = 0; p < last; ++p) {
      const double s = warp_squared_distance(pts + (base + p) * d, c, d, lane);
      if (lane == p) mine = s;
    }
    if (lane < last) {
      buf.m[base + lane] = mine;
      buf.group[base + lane] = 0;
      if (beats(mine, int(base + lane), r, i)) r = mine, i = int(base + lane);
    }
  }
  block_best<kThreads>(r, i, sr, si, Beats{});
  if (threadIdx.x == 0) buf.best_r[blockIdx.x] = r, buf.best_i[blockIdx.x] = i;
  grid.sync();

  for (int64_t t = 1; t < k; ++t) {
    // The farthest point: every block reduces the same bests the same way.
    r = -1.0;
    i = INT_MAX;
    for (int b = threadIdx.x; b < int(gridDim.x); b += kThreads) {
      if (beats(buf.best_r[b], buf.best_i[b], r, i)) r = buf.best_r[b], i = buf.best_i[b];
    }
    block_best<kThreads>(r, i, sr, si, Beats{});
    if (!(r > 0.0)) {  // every point sits on a center: argmax keeps returning i
      if (blockIdx.x == 0) {
        for (int64_t u = t + threadIdx.x; u < k; u += kThreads) out[u] = i;
      }
      return;  // every block takes this branch at the same t
    }
    c = pts + int64_t(i) * d;
    if (blockIdx.x == 0) {  // read from step t + 1 on, after two grid syncs
      for (int64_t j = threadIdx.x; j < d; j += kThreads) centers[t * d + j] = c[j];
      if (threadIdx.x == 0) out[t] = i;
    }

    // A: distances from the chosen centers to the new one.
    for (int64_t g = warp; g < t; g += warps) {
      const double s = warp_squared_distance(centers + g * d, c, d, lane);
      if (lane == 0) buf.dc[g] = s;
    }
    grid.sync();

    // B: measure the points the triangle inequality cannot rule out; the block's best.
    r = -1.0;
    i = INT_MAX;
    for (int64_t base = warp * 32; base < n; base += warps * 32) {
      const int64_t x = base + lane;
      const bool live = x < n;
      double m = live ? buf.m[x] : -1.0;
      const bool open = live && !center_keeps(buf.dc[buf.group[x]], m);
      unsigned todo = __ballot_sync(0xffffffffu, open);
      while (todo) {
        const int p = __ffs(todo) - 1;
        todo &= todo - 1;
        const double s = warp_squared_distance(pts + (base + p) * d, c, d, lane);
        if (lane == p && s < m) {
          m = s;
          buf.m[x] = s;
          buf.group[x] = int(t);
        }
      }
      if (live && beats(m, int(x), r, i)) r = m, i = int(x);
    }
    block_best<kThreads>(r, i, sr, si, Beats{});
    if (threadIdx.x == 0) buf.best_r[blockIdx.x] = r, buf.best_i[blockIdx.x] = i;
    grid.sync();
  }
}

// Workspace layout: Buffers, then the compact center rows.
struct Layout {
  int64_t m, group, dc, best_r, best_i, centers, total;
  Layout(int64_t n, int64_t d, int64_t k, int64_t elem) {
    auto up = [](int64_t x) { return (x + 255) / 256 * 256; };
    m = 0;
    group = m + up(n * 8);
    dc = group + up(n * 4);
    best_r = dc + up(k * 8);
    best_i = best_r + up(kMaxBlocks * 8);
    centers = best_i + up(kMaxBlocks * 4);
    total = centers + up(k * d * elem);
  }
};

template <typename T>
void launch(const T* pts, int64_t n, int64_t d, int64_t k, int64_t start, int64_t* out, char* ws,
            cudaStream_t stream) {
  int device = 0, sms = 0, cooperative = 0, per_sm = 0;
  PYANOM_CUDA_CHECK(cudaGetDevice(&device));
  PYANOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  PYANOM_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  PYANOM_CHECK(cooperative, "greedy_coreset: this GPU cannot launch cooperative kernels");
  PYANOM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, greedy_kernel<T>, kThreads, 0));
  PYANOM_CHECK(per_sm >= 1, "greedy_coreset: the CUDA kernel does not fit on this GPU");
  // No more blocks than can all run at once (grid syncs), than the bests buffer holds, or
  // than there are warps' worth of points; at most kBlocksPerSm, as each grid sync costs
  // more with more blocks (untuned: no GPU was at hand when this was written).
  const int64_t useful = std::max<int64_t>(1, (n + 32 * kWarps - 1) / (32 * kWarps));
  const int blocks = int(std::min<int64_t>({int64_t(sms) * std::min(per_sm, kBlocksPerSm), kMaxBlocks, useful}));

  const Layout at(n, d, k, sizeof(T));
  Buffers buf{reinterpret_cast<double*>(ws + at.m), reinterpret_cast<int*>(ws + at.group),
              reinterpret_cast<double*>(ws + at.dc), reinterpret_cast<double*>(ws + at.best_r),
              reinterpret_cast<int*>(ws + at.best_i)};
  T* centers = reinterpret_cast<T*>(ws + at.centers);
  void* args[] = {&pts, &n, &d, &k, &start, &out, &centers, &buf};
  PYANOM_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(greedy_kernel<T>), dim3(blocks),
                                                dim3(kThreads), args, 0, stream));
  PYANOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t coreset_workspace_bytes_cuda(PYANOM_PARAMS(PYANOM_CORESET_SIZES) const std::string& dtype) {
  PYANOM_CHECK(n >= 1 && d >= 1, "greedy_coreset: points must be a non-empty [N, D] matrix");
  PYANOM_CHECK(k >= 1 && k <= n, "greedy_coreset: k must be in [1, N]");
  return Layout(n, d, k, parse_dtype(dtype) == DType::Float32 ? 4 : 8).total;
}

void coreset_cuda(PYANOM_PARAMS(PYANOM_CORESET_ARGS) const std::string& dtype, std::uintptr_t stream) {
  PYANOM_CHECK(n >= 1 && d >= 1, "greedy_coreset: points must be a non-empty [N, D] matrix");
  PYANOM_CHECK(n <= std::numeric_limits<int>::max(), "greedy_coreset: N must be below 2^31");
  PYANOM_CHECK(k >= 1 && k <= n, "greedy_coreset: k must be in [1, N]");
  PYANOM_CHECK(start >= 0 && start < n, "greedy_coreset: start must be in [0, N)");
  PYANOM_CHECK(workspace_bytes >= coreset_workspace_bytes_cuda(n, d, k, dtype),
               "greedy_coreset: workspace too small");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    launch<T>(as_ptr<const T>(points), n, d, k, start, as_ptr<int64_t>(out), as_ptr<char>(workspace),
              reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace pyanom
