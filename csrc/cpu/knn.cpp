// Exact k-nearest-neighbour search on the CPU: a register-blocked GEMM micro-kernel computes
// q.b for a tile of queries x bank rows, and the tile is turned into squared distances
// ||q||^2 - 2 q.b + ||b||^2 and merged into each query's top-k while it is still in cache.
// No Q x N matrix is ever written; scratch is one packed block of bank rows plus small
// per-thread tiles (KnnPlan).
//
// Every dot product and every norm is one sequential FMA chain over the features in the same
// order, so a query equal to a bank row gets exactly 0 (not the sqrt of a rounding residue),
// duplicate bank rows get bit-identical distances (ties go to the lowest index), and the
// result does not depend on the tiling, the chunk size or the number of threads.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"
#include "cpu/simd.h"
#include "knn.h"
#include "topk_heap.h"

namespace pyanom {
namespace {

// Vectors from the one layer (cpu/simd.h); two registers of bank rows per micro-kernel step.
template <typename T>
using Simd = simd::Vec<T>;
using simd::fmadd;
using simd::load;
using simd::store;

// Query rows per micro-tile: their 2 kMR accumulators take 3/4 of the vector registers
// (24 of 32 zmm with AVX-512, 12 of 16 ymm with AVX2).
constexpr int kMR = simd::kRegisters * 3 / 8;

template <typename T>
constexpr int kNR = 2 * Simd<T>::W;  // bank rows per micro-tile

// Depth of one pass over the features: keeps a micro-panel of kMR query rows in L1.
template <typename T>
constexpr int64_t kDepth = 1024 / sizeof(T);  // 256 floats, 128 doubles

// Tile of the C (dot product) scratch each thread fills before merging it into the top-k.
constexpr int64_t kTileQueryPanels = 8;  // kMR * 8 query rows
constexpr int64_t kTileBankPanels = 8;   // kNR * 8 bank rows

// ---- the micro-kernel: c[kMR x kNR] (+)= a[kMR rows, lda] . b[kNR interleaved]^T over kc ----

template <typename T>
inline void micro_kernel(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b,
                         T* __restrict c, int64_t ldc, bool accumulate) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::W;
  V acc[kMR][2];
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i) {
    acc[i][0] = accumulate ? load<V>(c + i * ldc) : S::splat(T(0));
    acc[i][1] = accumulate ? load<V>(c + i * ldc + L) : S::splat(T(0));
  }
  for (int64_t p = 0; p < kc; ++p) {
    const V b0 = load<V>(b + p * 2 * L);
    const V b1 = load<V>(b + p * 2 * L + L);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      const V ai = S::splat(a[i * lda + p]);
      acc[i][0] = S::fma(ai, b0, acc[i][0]);
      acc[i][1] = S::fma(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kMR; ++i) {
    store(c + i * ldc, acc[i][0]);
    store(c + i * ldc + L, acc[i][1]);
  }
}

// ---- per-query top-k: (squared distance, index) pairs ----

template <typename T>
struct TopK {  // one query's list (see topk_heap.h)
  T* d;
  int64_t* ix;
  int64_t k;

  int64_t worst() const { return knn_worst_slot(k); }
  void push_later(T v, int64_t id) const { knn_push(d, ix, k, v, id, true); }
  void offer(T v, int64_t id) const { knn_offer(d, ix, k, v, id); }
  // Ascending order, then squared distances -> distances.
  void finish() const {
    knn_sort(d, ix, k);
    for (int64_t j = 0; j < k; ++j) d[j] = std::sqrt(d[j]);
  }
};

// Merges one query's row of a dot-product tile into its top-k. Squared distances are
// ||q||^2 + (||b||^2 - 2 q.b), clamped to [0, max] so that rounding never makes them
// negative and every candidate beats an empty (+inf) slot. Bank indices rise along the row,
// so a candidate enters only when strictly nearer than the worst kept (ties keep the earlier).
template <typename T>
void merge_row(T* row, const T* bank_norms, T query_norm, int64_t cols, int64_t cols_pad,
               int64_t first_id, const TopK<T>& top) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::W;
  const V qn = S::splat(query_norm), minus2 = S::splat(T(-2)), zero = S::splat(T(0)),
          most = S::splat(std::numeric_limits<T>::max());
  const int64_t w = top.worst();
  T limit = top.d[w];
  V vlimit = S::splat(limit);
  for (int64_t j = 0; j < cols_pad; j += L) {
    const V d2 = S::min(
        S::max(S::fma(load<V>(row + j), minus2, load<V>(bank_norms + j)) + qn, zero), most);
    unsigned hits = S::less(d2, vlimit);
    if (!hits) continue;
    store(row + j, d2);
    do {
      const int64_t col = j + __builtin_ctz(hits);
      const T v = row[col];
      if (v < limit && col < cols) {
        top.push_later(v, first_id + col);
        limit = top.d[w];
        vlimit = S::splat(limit);
      }
      hits &= hits - 1;
    } while (hits);
  }
}

// ---- the plan: tile sizes and the workspace layout, shared by the size query and the kernel ----

struct KnnPlan {
  int threads = 1;
  int64_t depth = 0;      // features per pass (kc)
  int64_t mc = 0;         // queries per work item, multiple of kMR
  int64_t nc = 0;         // bank rows per packed block, multiple of kNR
  int64_t nc2 = 0;        // bank rows per C tile, multiple of kNR, <= nc
  int64_t splits = 1;     // groups of bank tiles searched in parallel for few queries
  // byte offsets into the workspace
  int64_t packed = 0, bank_norms = 0, query_norms = 0, tiles = 0, tails = 0, split_d = 0,
          split_i = 0, bytes = 0;
};

template <typename T>
KnnPlan make_plan(int64_t q, int64_t n, int64_t d, int64_t k, int64_t chunk, int threads) {
  constexpr int64_t NR = kNR<T>;
  KnnPlan p;
  p.threads = std::max(1, threads);
  // Fixed by (d, dtype) only, so every chunk size sums the same products in the same order.
  const int64_t passes = (d + kDepth<T> - 1) / kDepth<T>;
  p.depth = (d + passes - 1) / passes;

  const int64_t n_pad = round_up(n, NR);
  p.mc = std::min(kTileQueryPanels * kMR, round_up(q, kMR));
  p.nc2 = std::min(kTileBankPanels * NR, n_pad);
  // The chunk holds the packed bank block (rows x (d + 1 norm)) and every thread's tiles.
  int64_t rest = chunk - p.threads * (p.mc * p.nc2 + kMR * d);
  if (rest < NR * (d + 1)) {  // too small for the tuned tiles: one minimal tile at a time
    p.mc = kMR;
    p.nc2 = NR;
    p.nc = NR;
  } else {
    p.nc = std::min(std::max(rest / (d + 1) / NR * NR, NR), n_pad);
    p.nc2 = std::min(p.nc2, p.nc);
  }
  // Too few query blocks to occupy every thread: split each bank block between threads too,
  // each split keeping its own top-k, merged at the end.
  const int64_t items = (q + p.mc - 1) / p.mc;
  if (items < p.threads) {
    const int64_t tiles_per_block = (p.nc + p.nc2 - 1) / p.nc2;
    p.splits = std::max<int64_t>(1, std::min<int64_t>((p.threads + items - 1) / items, tiles_per_block));
  }

  const auto carve = [&p](int64_t bytes) {
    const int64_t at = p.bytes;
    p.bytes += round_up(bytes, 64);
    return at;
  };
  p.packed = carve(p.nc * d * int64_t(sizeof(T)));
  p.bank_norms = carve(p.nc * int64_t(sizeof(T)));
  p.query_norms = carve(q * int64_t(sizeof(T)));
  p.tiles = carve(p.threads * p.mc * p.nc2 * int64_t(sizeof(T)));
  p.tails = carve(p.threads * kMR * d * int64_t(sizeof(T)));
  p.split_d = carve((p.splits - 1) * q * k * int64_t(sizeof(T)));
  p.split_i = carve((p.splits - 1) * q * k * int64_t(sizeof(int64_t)));
  return p;
}

// Packs `rows` (<= kNR) bank rows as one panel, each feature's kNR values adjacent (zero rows
// pad it), and stores their squared norms, summed in the micro-kernel's FMA order. Returns
// whether every value is finite (x * 0 is 0 for those, NaN for NaN and Inf), which spares the
// op a separate pass over the bank.
template <typename T>
bool pack_panel(const T* bank, int64_t rows, int64_t d, T* out, T* norms) {
  using S = Simd<T>;
  constexpr int64_t NR = kNR<T>;
  constexpr int L = S::W;
  for (int64_t j = 0; j < NR; ++j) {
    const T* src = bank + j * d;
    if (j < rows) {
      for (int64_t p = 0; p < d; ++p) out[p * NR + j] = src[p];
    } else {
      for (int64_t p = 0; p < d; ++p) out[p * NR + j] = T(0);
    }
  }
  using V = typename S::V;
  const V zero = S::splat(T(0));
  V n0 = zero, n1 = zero, probe = zero;
  for (int64_t p = 0; p < d; ++p) {
    const V v0 = load<V>(out + p * NR), v1 = load<V>(out + p * NR + L);
    n0 = S::fma(v0, v0, n0);
    n1 = S::fma(v1, v1, n1);
    probe = S::fma(v1, zero, S::fma(v0, zero, probe));
  }
  store(norms, n0);
  store(norms + L, n1);
  T lanes[L];
  store(lanes, probe);
  bool finite = true;
  for (int i = 0; i < L; ++i) finite = finite && lanes[i] == lanes[i];
  return finite;
}

template <typename T>
void knn_cpu_impl(const T* queries, const T* bank, T* dist, int64_t* index, char* ws,
                  int64_t q, int64_t n, int64_t d, int64_t k, const KnnPlan& p) {
  constexpr int64_t NR = kNR<T>;
  T* packed = reinterpret_cast<T*>(ws + p.packed);
  T* bank_norms = reinterpret_cast<T*>(ws + p.bank_norms);
  T* query_norms = reinterpret_cast<T*>(ws + p.query_norms);
  T* split_d = reinterpret_cast<T*>(ws + p.split_d);
  int64_t* split_i = reinterpret_cast<int64_t*>(ws + p.split_i);
  const int64_t items = (q + p.mc - 1) / p.mc;
  const int64_t work = items * p.splits;
  const auto state = [&](int64_t split, int64_t row) {
    if (split == 0) return TopK<T>{dist + row * k, index + row * k, k};
    const int64_t at = ((split - 1) * q + row) * k;
    return TopK<T>{split_d + at, split_i + at, k};
  };

  bool finite_queries = true, finite_bank = true;  // as pack_panel finds them
#pragma omp parallel num_threads(p.threads)
  {
    const int tid = omp_get_thread_num();
    T* tile = reinterpret_cast<T*>(ws + p.tiles) + int64_t(tid) * p.mc * p.nc2;
    T* tail = reinterpret_cast<T*>(ws + p.tails) + int64_t(tid) * kMR * d;

#pragma omp for schedule(static) reduction(&& : finite_queries)
    for (int64_t row = 0; row < q; ++row) {
      const T* x = queries + row * d;
      T s = T(0), probe = T(0);
      for (int64_t f = 0; f < d; ++f) {
        s = fmadd(x[f], x[f], s);
        probe = fmadd(x[f], T(0), probe);
      }
      finite_queries = finite_queries && probe == probe;
      query_norms[row] = s;
      for (int64_t split = 0; split < p.splits; ++split) {
        const TopK<T> t = state(split, row);
        std::fill(t.d, t.d + k, std::numeric_limits<T>::infinity());
        std::fill(t.ix, t.ix + k, kEmpty);
      }
    }

    for (int64_t block0 = 0; block0 < n; block0 += p.nc) {
      const int64_t rows = std::min(p.nc, n - block0);
      const int64_t panels = (rows + NR - 1) / NR;
#pragma omp for schedule(static) reduction(&& : finite_bank)
      for (int64_t pi = 0; pi < panels; ++pi)
        finite_bank = pack_panel(bank + (block0 + pi * NR) * d, std::min(NR, rows - pi * NR), d,
                                 packed + pi * NR * d, bank_norms + pi * NR) &&
                      finite_bank;

      // Work item = (query block, split); a split owns a contiguous run of this block's tiles.
      const int64_t tiles = (rows + p.nc2 - 1) / p.nc2;
      const int64_t tiles_per_split = (tiles + p.splits - 1) / p.splits;
#pragma omp for schedule(dynamic, 1)
      for (int64_t w = 0; w < work; ++w) {
        const int64_t split = w % p.splits;
        const int64_t q0 = (w / p.splits) * p.mc;
        const int64_t mq = std::min(p.mc, q - q0);
        const int64_t full = mq / kMR * kMR;  // rows read in place; the rest go through `tail`
        if (full < mq) {
          std::memcpy(tail, queries + (q0 + full) * d, size_t((mq - full) * d) * sizeof(T));
          std::fill(tail + (mq - full) * d, tail + kMR * d, T(0));
        }
        const int64_t t_end = std::min(tiles, (split + 1) * tiles_per_split);
        for (int64_t t = split * tiles_per_split; t < t_end; ++t) {
          const int64_t c0 = t * p.nc2;                       // first column in the block
          const int64_t cols = std::min(p.nc2, rows - c0);    // valid columns
          const int64_t cols_pad = round_up(cols, NR);
          for (int64_t f0 = 0; f0 < d; f0 += p.depth) {
            const int64_t kc = std::min(p.depth, d - f0);
            for (int64_t ir = 0; ir < mq; ir += kMR) {
              const T* a = ir < full ? queries + (q0 + ir) * d + f0 : tail + f0;
              for (int64_t jr = 0; jr < cols_pad; jr += NR)
                micro_kernel<T>(kc, a, d, packed + (c0 + jr) * d + f0 * NR, tile + ir * p.nc2 + jr,
                                p.nc2, f0 > 0);
            }
          }
          for (int64_t i = 0; i < mq; ++i)
            merge_row<T>(tile + i * p.nc2, bank_norms + c0, query_norms[q0 + i], cols, cols_pad,
                         block0 + c0, state(split, q0 + i));
        }
      }
    }

    // Merge the splits into split 0 (the outputs), sort, take square roots.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < q; ++row) {
      const TopK<T> top = state(0, row);
      for (int64_t split = 1; split < p.splits; ++split) {
        const TopK<T> other = state(split, row);
        for (int64_t j = 0; j < k; ++j)
          if (other.ix[j] != kEmpty) top.offer(other.d[j], other.ix[j]);
      }
      top.finish();
    }
  }
  PYANOM_CHECK(finite_queries, "queries contains NaN or Inf");
  PYANOM_CHECK(finite_bank, "bank contains NaN or Inf");
}

// OpenMP threads worth waking for q x n x d multiply-adds: about 1 M each (~10 us), so small
// calls, such as gradcheck's, do not pay fork-join and barrier costs that exceed the work.
int threads_for(int64_t q, int64_t n, int64_t d) {
  const int64_t useful = std::max<int64_t>(1, q * n * d / (int64_t(1) << 20));
  return int(std::min<int64_t>(omp_get_max_threads(), useful));
}

}  // namespace

int64_t knn_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_KNN_SIZES) const std::string& dtype) {
  return dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    return make_plan<T>(q, n, d, k, chunk_size, threads_for(q, n, d)).bytes;
  });
}

void knn_cpu(PYANOM_PARAMS(PYANOM_KNN_ARGS) const std::string& dtype) {
  PYANOM_CHECK(q > 0 && n > 0 && d > 0, "knn_scores: queries and bank must be non-empty");
  PYANOM_CHECK(k >= 1 && k <= n, "knn_scores: k must lie in [1, number of bank rows]");
  PYANOM_CHECK(chunk_size >= 1, "knn_scores: chunk_size must be >= 1");
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const KnnPlan p = make_plan<T>(q, n, d, k, chunk_size, threads_for(q, n, d));
    PYANOM_CHECK(workspace_bytes >= p.bytes,
                 "knn_scores: workspace of " + std::to_string(workspace_bytes) + " bytes, " +
                     std::to_string(p.bytes) + " needed (query knn_workspace_bytes_cpu)");
    knn_cpu_impl<T>(as_ptr<const T>(queries), as_ptr<const T>(bank), as_ptr<T>(distances),
                    as_ptr<int64_t>(indices), as_ptr<char>(workspace), q, n, d, k, p);
  });
}

}  // namespace pyanom
