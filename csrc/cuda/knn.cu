// Exact k-nearest-neighbour search on CUDA (fp32 / fp64 FMA, no tensor cores).
//
// One block owns 64 queries and sweeps a range of bank rows 64 at a time: the 64 x 64 tile of
// dot products is accumulated in registers (4 x 4 per thread) from 16-feature slices staged
// in shared memory, turned into squared distances ||q||^2 + (||b||^2 - 2 q.b) in shared
// memory, and merged at once into the block's per-query top-k lists by one thread per query,
// which keeps its current k-th distance in a register. The Q x N matrix never exists; scratch
// is the row norms and, when the bank is split between blocks to fill the GPU, one partial
// top-k list per split, merged by a last kernel.
//
// As on the CPU, every dot product and norm is one sequential FMA chain in feature order, so
// a query equal to a bank row gets exactly 0, duplicate rows tie exactly (lowest index first),
// and the result does not depend on the number of splits.
#include <algorithm>
#include <cstdint>
#include <string>

#include "common.h"
#include "cuda/common.cuh"
#include "knn.h"
#include "topk_heap.h"

namespace pyanom {
namespace {

constexpr int kBQ = 64;  // queries per block
constexpr int kBN = 64;  // bank rows per tile
constexpr int kBK = 16;  // features per shared-memory slice
constexpr int kTM = 4;   // queries per thread in the dot-product tile
constexpr int kTN = 4;   // bank rows per thread
constexpr int kPad = 4;  // slice row padding: spreads the transposing stores over the banks
constexpr int kThreads = (kBQ / kTM) * (kBN / kTN);  // 256
constexpr int kNormThreads = 256;
static_assert(kThreads >= kBQ, "one thread per query merges the tile");

// ---- per-query top-k lists: csrc/topk_heap.h, shared with the CPU kernel ----

__device__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- kernels ----

// Squared norm of each row, one sequential FMA chain per row (the tile kernel's order).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    row_norms(const T* __restrict__ x, int64_t rows, int64_t d, T* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* p = x + r * d;
  T s = T(0);
  for (int64_t f = 0; f < d; ++f) s = Num<T>::fmadd(p[f], p[f], s);
  out[r] = s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    knn_tiles(const T* __restrict__ queries, const T* __restrict__ bank,
              const T* __restrict__ query_norms, const T* __restrict__ bank_norms, T* out_d,
              int64_t* out_i, T* split_d, int64_t* split_i, int64_t q, int64_t n, int64_t d,
              int64_t k, int64_t rows_per_split) {
  // Slices A [kBK][kBQ + kPad] and B [kBK][kBN + kPad] while accumulating; the distance
  // tile [kBQ][kBN + 1] (one thread reads each row: the odd stride avoids bank conflicts)
  // while merging.
  constexpr int kLda = kBQ + kPad, kLdb = kBN + kPad, kLdd = kBN + 1;
  constexpr int kSlices = kBK * (kLda + kLdb), kTile = kBQ * kLdd;
  __shared__ __align__(16) T smem[kSlices > kTile ? kSlices : kTile];
  __shared__ T qn[kBQ];
  T* As = smem;
  T* Bs = smem + kBK * kLda;
  T* Ds = smem;

  const int tid = threadIdx.x;
  const int ty = tid / (kBN / kTN), tx = tid % (kBN / kTN);
  const int64_t q0 = int64_t(blockIdx.x) * kBQ;
  const int64_t split = blockIdx.y;
  const int64_t n_begin = split * rows_per_split;
  const int64_t n_end = imin(n, n_begin + rows_per_split);

  // Thread tid < kBQ owns query q0 + tid's list for this split.
  const int64_t row = q0 + tid;
  const bool owner = tid < kBQ && row < q;
  T* my_d = nullptr;
  int64_t* my_i = nullptr;
  const int64_t worst = knn_worst_slot(k);
  T limit = Num<T>::inf();
  if (owner) {
    const int64_t at = split == 0 ? row * k : ((split - 1) * q + row) * k;
    my_d = (split == 0 ? out_d : split_d) + at;
    my_i = (split == 0 ? out_i : split_i) + at;
    for (int64_t j = 0; j < k; ++j) {
      my_d[j] = Num<T>::inf();
      my_i[j] = kEmpty;
    }
  }
  if (tid < kBQ) qn[tid] = row < q ? query_norms[row] : T(0);

  for (int64_t n0 = n_begin; n0 < n_end; n0 += kBN) {
    T acc[kTM][kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = T(0);

    for (int64_t f0 = 0; f0 < d; f0 += kBK) {
      // Consecutive threads read consecutive features of a row (coalesced); zero padding
      // beyond the matrix adds exact zeros to the chains.
      for (int e = tid; e < kBQ * kBK; e += kThreads) {
        const int r = e / kBK, f = e % kBK;
        const int64_t gr = q0 + r, gf = f0 + f;
        As[f * kLda + r] = gr < q && gf < d ? queries[gr * d + gf] : T(0);
      }
      for (int e = tid; e < kBN * kBK; e += kThreads) {
        const int r = e / kBK, f = e % kBK;
        const int64_t gr = n0 + r, gf = f0 + f;
        Bs[f * kLdb + r] = gr < n_end && gf < d ? bank[gr * d + gf] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int f = 0; f < kBK; ++f) {
        T a[kTM], b[kTN];
#pragma unroll
        for (int i = 0; i < kTM; ++i) a[i] = As[f * kLda + ty * kTM + i];
#pragma unroll
        for (int j = 0; j < kTN; ++j) b[j] = Bs[f * kLdb + tx * kTN + j];
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) acc[i][j] = Num<T>::fmadd(a[i], b[j], acc[i][j]);
      }
      __syncthreads();  // also orders the last slice reads before Ds overwrites them
    }

    // d2 = max(||q||^2 + (||b||^2 - 2 q.b), 0), capped so that it beats an empty (+inf) slot.
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int c = tx * kTN + j;
      const T bn = n0 + c < n_end ? bank_norms[n0 + c] : T(0);
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const int r = ty * kTM + i;
        const T t = Num<T>::fmadd(acc[i][j], T(-2), bn) + qn[r];
        Ds[r * kLdd + c] = t < T(0) ? T(0) : (t > Num<T>::most() ? Num<T>::most() : t);
      }
    }
    __syncthreads();
    if (owner) {
      const int64_t cols = imin(kBN, n_end - n0);
      const T* dist = Ds + tid * kLdd;
      for (int64_t c = 0; c < cols; ++c) {
        const T v = dist[c];
        if (v < limit) {  // bank order: a tie never displaces an earlier index
          knn_push(my_d, my_i, k, v, n0 + c, true);
          limit = my_d[worst];
        }
      }
    }
    __syncthreads();  // Ds is the next tile's slices
  }
}

// Merges the splits' lists into split 0's (the outputs), sorts, takes square roots.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    knn_finish(T* out_d, int64_t* out_i, const T* __restrict__ split_d,
               const int64_t* __restrict__ split_i, int64_t q, int64_t k, int64_t splits) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= q) return;
  T* d = out_d + row * k;
  int64_t* ix = out_i + row * k;
  for (int64_t s = 1; s < splits; ++s) {
    const T* od = split_d + ((s - 1) * q + row) * k;
    const int64_t* oi = split_i + ((s - 1) * q + row) * k;
    for (int64_t j = 0; j < k; ++j)
      if (oi[j] != kEmpty) knn_offer(d, ix, k, od[j], oi[j]);
  }
  knn_sort(d, ix, k);
  for (int64_t j = 0; j < k; ++j) d[j] = Num<T>::root(d[j]);
}

// ---- plan: bank splits and workspace layout, shared by the size query and the launch ----

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t align_up(int64_t x) { return ceil_div(x, 256) * 256; }

struct CudaPlan {
  int64_t splits = 1;          // blocks sharing one query tile, each over its bank rows
  int64_t rows_per_split = 0;  // multiple of kBN
  int64_t query_norms = 0, bank_norms = 0, split_d = 0, split_i = 0, bytes = 0;
};

template <typename T>
CudaPlan make_plan(int64_t q, int64_t n, int64_t k, int64_t chunk) {
  int device = 0, sms = 0;
  PYANOM_CUDA_CHECK(cudaGetDevice(&device));
  PYANOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CudaPlan p;
  // Enough blocks for every SM to hold several (query tiles alone leave most idle for
  // PatchCore's one image = 1024 queries), as long as the partial lists fit in the chunk.
  const int64_t query_tiles = ceil_div(q, kBQ), bank_tiles = ceil_div(n, kBN);
  int64_t splits = ceil_div(int64_t(8) * sms, query_tiles);
  splits = std::min(splits, std::max<int64_t>(1, chunk / (q * k)));
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, bank_tiles, 65535}));
  p.rows_per_split = ceil_div(bank_tiles, splits) * kBN;
  p.splits = ceil_div(n, p.rows_per_split);
  const auto carve = [&p](int64_t bytes) {
    const int64_t at = p.bytes;
    p.bytes += align_up(bytes);
    return at;
  };
  p.query_norms = carve(q * int64_t(sizeof(T)));
  p.bank_norms = carve(n * int64_t(sizeof(T)));
  p.split_d = carve((p.splits - 1) * q * k * int64_t(sizeof(T)));
  p.split_i = carve((p.splits - 1) * q * k * int64_t(sizeof(int64_t)));
  return p;
}

template <typename T>
void launch(const T* queries, const T* bank, T* out_d, int64_t* out_i, char* ws, int64_t q,
            int64_t n, int64_t d, int64_t k, const CudaPlan& p, cudaStream_t stream) {
  T* query_norms = reinterpret_cast<T*>(ws + p.query_norms);
  T* bank_norms = reinterpret_cast<T*>(ws + p.bank_norms);
  T* split_d = reinterpret_cast<T*>(ws + p.split_d);
  int64_t* split_i = reinterpret_cast<int64_t*>(ws + p.split_i);
  row_norms<T><<<unsigned(ceil_div(q, kNormThreads)), kNormThreads, 0, stream>>>(queries, q, d,
                                                                                 query_norms);
  PYANOM_CUDA_CHECK_LAUNCH();
  row_norms<T><<<unsigned(ceil_div(n, kNormThreads)), kNormThreads, 0, stream>>>(bank, n, d,
                                                                                 bank_norms);
  PYANOM_CUDA_CHECK_LAUNCH();
  const dim3 grid(unsigned(ceil_div(q, kBQ)), unsigned(p.splits));
  knn_tiles<T><<<grid, kThreads, 0, stream>>>(queries, bank, query_norms, bank_norms, out_d, out_i,
                                              split_d, split_i, q, n, d, k, p.rows_per_split);
  PYANOM_CUDA_CHECK_LAUNCH();
  knn_finish<T><<<unsigned(ceil_div(q, kNormThreads)), kNormThreads, 0, stream>>>(
      out_d, out_i, split_d, split_i, q, k, p.splits);
  PYANOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t knn_workspace_bytes_cuda(PYANOM_PARAMS(PYANOM_KNN_SIZES) const std::string& dtype) {
  (void)d;
  return dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    return make_plan<T>(q, n, k, chunk_size).bytes;
  });
}

void knn_cuda(PYANOM_PARAMS(PYANOM_KNN_ARGS) const std::string& dtype, std::uintptr_t stream) {
  PYANOM_CHECK(q > 0 && n > 0 && d > 0, "knn_scores: queries and bank must be non-empty");
  PYANOM_CHECK(k >= 1 && k <= n, "knn_scores: k must lie in [1, number of bank rows]");
  PYANOM_CHECK(chunk_size >= 1, "knn_scores: chunk_size must be >= 1");
  PYANOM_CHECK(ceil_div(q, kBQ) <= 0x7fffffff, "knn_scores: too many queries for one launch");
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const CudaPlan p = make_plan<T>(q, n, k, chunk_size);
    PYANOM_CHECK(workspace_bytes >= p.bytes,
                 "knn_scores: workspace of " + std::to_string(workspace_bytes) + " bytes, " +
                     std::to_string(p.bytes) + " needed (query knn_workspace_bytes_cuda)");
    launch<T>(as_ptr<const T>(queries), as_ptr<const T>(bank), as_ptr<T>(distances),
              as_ptr<int64_t>(indices), as_ptr<char>(workspace), q, n, d, k, p,
              reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace pyanom
