// Parameter-free self-attention softmax(X X^T / sqrt(C)) X over the L = H*W positions of
// each [C, L] map (SA-PatchCore eq. 4) on the CPU.
//
// Layout. The input is channels-first, so a row X[c, :] holds one channel of every position.
// Both products are computed transposed, with the query positions i in the SIMD lanes:
//   S^T[j, i] = sum_c X[c, j] X[c, i]      (broadcast key value, vector of queries)
//   O^T[c, i] = sum_j X[c, j] P^T[j, i]    (broadcast channel value, vector of queries)
// so the softmax runs down columns (elementwise across vectors) and O^T is already the
// channels-first output. The maps are first packed into panels of W positions, [L/W][C][W],
// zero-padded to whole vectors, so that every vector load is whole.
//
// Work. One task is (image, block of BQ queries); register tiles are MR rows x NV vectors,
// and the tails (rows and vectors) use smaller instances of the same templates.
// - Full mode (L <= full_limit): S = X^T X is symmetric, so only its tiles on and above the
//   diagonal are computed (3/4 of the multiply-adds of the whole op), mirrored into an [L][Lp]
//   matrix per image, for a group of images at a time; then each query block takes its exact
//   column max and softmax.
// - Flash mode (longer maps): keys come in blocks of KB with the online softmax (running
//   column max m and sum l, the partial output rescaled by exp(m_old - m_new)), so only a
//   KB x BQ block of the L x L matrix exists per thread.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "attention.h"
#include "common.h"
#include "cpu/simd.h"

namespace pyanom {
namespace {

// Vectors of queries per register tile: 6 x 4 accumulators of the 32 zmm registers with
// AVX-512, else 6 x 2 (of the 16 ymm registers with AVX2).
constexpr int kQueryVectors = simd::kRegisters >= 32 ? 4 : 2;
template <typename T>
using Simd = simd::Vec<T>;
using simd::load;
using simd::load_first;
using simd::store;

template <typename T>
struct Plan {
  static constexpr int W = Simd<T>::W;
  static constexpr int NV = kQueryVectors;  // vectors of queries per register tile and task
  static constexpr int BQ = NV * W;  // queries per task, and the side of a score tile
  static constexpr int MR = 6;       // rows (keys, or channels) per register tile
  static constexpr int KB = 512;     // keys per softmax block
  static constexpr int KV = 64;      // keys per pass of the channel tiles in P V
  // Images are taken in groups whose packed maps (and score matrices, full mode) fit this.
  static constexpr std::int64_t kGroupBytes = std::int64_t(16) << 20;
  std::int64_t batch, channels, positions, full_limit;
  std::int64_t padded() const { return (positions + W - 1) / W * W; }
  std::int64_t blocks() const { return (positions + BQ - 1) / BQ; }
  bool full() const { return positions <= full_limit; }
  std::int64_t packed_elems() const { return padded() * channels; }              // per image
  std::int64_t score_elems() const { return full() ? positions * padded() : 0; }  // per image
  std::int64_t group() const {
    const std::int64_t bytes = (packed_elems() + score_elems()) * std::int64_t(sizeof(T));
    return std::clamp<std::int64_t>(kGroupBytes / bytes, 1, batch);
  }
  // Per thread: a block of P^T [KB][BQ] and the output block [C][BQ].
  std::int64_t scratch_elems() const { return KB * BQ + channels * BQ; }
  // OpenMP threads: one per kGrain multiply-adds, at most the OpenMP maximum (a parallel
  // region costs more than a small problem, and much more on a busy machine).
  static constexpr std::int64_t kGrain = std::int64_t(1) << 22;
  int threads() const {
    const std::int64_t work = batch * positions * positions * channels;
    return int(std::clamp<std::int64_t>(work / kGrain, 1, omp_get_max_threads()));
  }
  std::int64_t workspace_bytes() const {
    return (group() * (packed_elems() + score_elems()) + threads() * scratch_elems()) *
           std::int64_t(sizeof(T));
  }
};

// One panel of W positions of a [C][L] map -> [C][W], zero-padded past L. Returns whether all
// its values are finite (x * 0 is 0 for those and NaN for NaN and Inf), which spares the
// caller a separate pass over the input.
template <typename T>
bool pack_panel(const T* xb, std::int64_t C, std::int64_t L, std::int64_t g, T* panel) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  const int n = int(std::min<std::int64_t>(W, L - g * W));
  const T* src = xb + g * W;
  V probe = {};
  for (std::int64_t c = 0; c < C; ++c) {
    const V v = n == W ? load<V>(src + c * L) : load_first<V>(src + c * L, n);
    store(panel + c * W, v);
    probe += v * T(0);
  }
  bool finite = true;
  for (int i = 0; i < W; ++i) finite = finite && probe[i] == probe[i];
  return finite;
}

// Raw scores of MR keys j0.. (rows of st, row stride ld) against NV vectors of queries i0..;
// when colmax is given, the column maxima of these rows are folded into colmax.
template <typename T, int MR, int NV>
void score_tile(const T* xb, std::int64_t C, std::int64_t j0, std::int64_t i0, T* st,
                std::int64_t ld, typename Simd<T>::V* colmax) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  const T* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = xb + (j0 + r) / W * C * W + (j0 + r) % W;
  const T* bq = xb + i0 / W * C * W;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (std::int64_t c = 0; c < C; ++c) {
    V q[NV];
    for (int v = 0; v < NV; ++v) q[v] = load<V>(bq + v * C * W + c * W);
    for (int r = 0; r < MR; ++r) {
      const V k = S::splat(a[r][c * W]);
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(k, q[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(st + r * ld + v * W, acc[r][v]);
  if (colmax)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) colmax[v] = acc[r][v] > colmax[v] ? acc[r][v] : colmax[v];
}

// Partial output of MR channels, ot[c] += sum_j X[c, j] pt[j] over kb keys from k0: stored
// as is for the first keys of all, else added to ot[c] rescaled by alpha (when given).
template <typename T, int MR, int NV>
void value_tile(const T* xb, std::int64_t C, std::int64_t c0, std::int64_t k0, std::int64_t kb,
                const T* pt, const typename Simd<T>::V* alpha, bool first, T* ot) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int BQ = Plan<T>::BQ;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  // k0 is a multiple of W: keys come in whole panels, the last one possibly partial.
  for (std::int64_t j = 0; j < kb; j += W) {
    const T* panel = xb + (k0 + j) / W * C * W + c0 * W;
    const int n = int(std::min<std::int64_t>(W, kb - j));
    for (int jj = 0; jj < n; ++jj) {
      V p[NV];
      for (int v = 0; v < NV; ++v) p[v] = load<V>(pt + (j + jj) * BQ + v * W);
      for (int r = 0; r < MR; ++r) {
        const V xv = S::splat(panel[r * W + jj]);
        for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(xv, p[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      T* o = ot + (c0 + r) * BQ + v * W;
      if (first)
        store(o, acc[r][v]);
      else
        store(o, alpha ? S::fma(load<V>(o), alpha[v], acc[r][v]) : load<V>(o) + acc[r][v]);
    }
}

// Calls f(std::integral_constant<int, m>{}) for the runtime m in 1..MaxM.
template <int MaxM, typename F>
inline void with_rows(int m, F&& f) {
  if constexpr (MaxM > 0) {
    if (m == MaxM) return f(std::integral_constant<int, MaxM>{});
    with_rows<MaxM - 1>(m, std::forward<F>(f));
  }
}

// Scores of `rows` keys j0.. against the NV query vectors at i0, MR rows at a time.
template <typename T, int NV>
void score_rows(const T* xb, std::int64_t C, std::int64_t j0, std::int64_t rows, std::int64_t i0,
                T* st, std::int64_t ld, typename Simd<T>::V* colmax) {
  constexpr int MR = Plan<T>::MR;
  std::int64_t j = 0;
  for (; j + MR <= rows; j += MR) score_tile<T, MR, NV>(xb, C, j0 + j, i0, st + j * ld, ld, colmax);
  with_rows<MR - 1>(int(rows - j), [&](auto m) {
    score_tile<T, decltype(m)::value, NV>(xb, C, j0 + j, i0, st + j * ld, ld, colmax);
  });
}

// Full mode, first phase: the score tile of key block J against query block I (J >= I) into the
// symmetric [L][Lp] matrix s, mirrored into tile (I, J). Rows past L are never read; lanes past
// L are zero so that whole-vector reads of the last column block stay finite.
template <typename T>
void score_block(const T* xb, const Plan<T>& plan, std::int64_t I, std::int64_t J, T* s) {
  constexpr int W = Plan<T>::W, NV = Plan<T>::NV, BQ = Plan<T>::BQ;
  const std::int64_t C = plan.channels, L = plan.positions, Lp = plan.padded();
  const std::int64_t i0 = I * BQ, j0 = J * BQ, rows = std::min<std::int64_t>(BQ, L - j0);
  const int nv = int(std::min<std::int64_t>(NV, (Lp - i0) / W));
  with_rows<NV>(nv, [&](auto v) {
    score_rows<T, decltype(v)::value>(xb, C, j0, rows, i0, s + j0 * Lp + i0, Lp, nullptr);
  });
  if (I == J) return;
  const std::int64_t i_end = std::min<std::int64_t>(i0 + BQ, L);
  const std::int64_t j_end = std::min<std::int64_t>(j0 + BQ, Lp);
  for (std::int64_t i = i0; i < i_end; ++i)
    for (std::int64_t j = j0; j < j_end; ++j) s[i * Lp + j] = j < L ? s[j * Lp + i] : T(0);
}

// softmax(scores / sqrt(C)) X for the queries i0.. of one image, written to out_b [C][L].
// With full scores s ([L][Lp], full mode) the column max is known up front; otherwise the
// scores are computed here block by block of KB keys with the online softmax.
template <typename T, int NV>
void attend_block(const T* xb, const Plan<T>& plan, std::int64_t i0, const T* s, T* scratch,
                  T* out_b) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W, BQ = Plan<T>::BQ, MR = Plan<T>::MR, KB = Plan<T>::KB, KV = Plan<T>::KV;
  const std::int64_t C = plan.channels, L = plan.positions, Lp = plan.padded();
  const T scale = T(1) / std::sqrt(T(C));
  T* pt = scratch;       // [KB][BQ]: this key block's probabilities (unnormalised)
  T* ot = pt + KB * BQ;  // [C][BQ]: the unnormalised output
  V m[NV];               // running column max of the raw scores
  V l[NV];               // running column sum of exp((s - m) * scale)
  V alpha[NV];           // rescale of the partial output for this key block
  for (int v = 0; v < NV; ++v) {
    m[v] = S::splat(-std::numeric_limits<T>::infinity());
    l[v] = V{};
    alpha[v] = S::splat(T(1));
  }
  if (s) {
    for (std::int64_t j = 0; j < L; ++j)
      for (int v = 0; v < NV; ++v) {
        const V x = load<V>(s + j * Lp + i0 + v * W);
        m[v] = x > m[v] ? x : m[v];
      }
  }
  for (std::int64_t k0 = 0; k0 < L; k0 += KB) {
    const std::int64_t kb = std::min<std::int64_t>(KB, L - k0);
    const bool first = k0 == 0;
    V sum[NV];
    for (int v = 0; v < NV; ++v) sum[v] = V{};
    if (s) {
      for (std::int64_t j = 0; j < kb; ++j)
        for (int v = 0; v < NV; ++v) {
          const V p = S::exp((load<V>(s + (k0 + j) * Lp + i0 + v * W) - m[v]) * scale);
          store(pt + j * BQ + v * W, p);
          sum[v] += p;
        }
    } else {
      V bmax[NV];
      for (int v = 0; v < NV; ++v) bmax[v] = S::splat(-std::numeric_limits<T>::infinity());
      score_rows<T, NV>(xb, C, k0, kb, i0, pt, BQ, bmax);
      for (int v = 0; v < NV; ++v) {
        const V mnew = bmax[v] > m[v] ? bmax[v] : m[v];
        alpha[v] = S::exp((m[v] - mnew) * scale);  // 0 for the first block (m = -inf)
        m[v] = mnew;
      }
      for (std::int64_t j = 0; j < kb; ++j)
        for (int v = 0; v < NV; ++v) {
          T* p = pt + j * BQ + v * W;
          const V e = S::exp((load<V>(p) - m[v]) * scale);
          store(p, e);
          sum[v] += e;
        }
    }
    for (int v = 0; v < NV; ++v) l[v] = S::fma(l[v], alpha[v], sum[v]);

    // KV keys at a time, so that their probabilities stay in L1 while every channel tile (and
    // the output block) streams past them; the rescale by alpha goes with the first.
    for (std::int64_t j0 = 0; j0 < kb; j0 += KV) {
      const std::int64_t n = std::min<std::int64_t>(KV, kb - j0);
      const T* p = pt + j0 * BQ;
      const V* a = j0 == 0 ? alpha : nullptr;
      const bool f = first && j0 == 0;
      std::int64_t c = 0;
      for (; c + MR <= C; c += MR) value_tile<T, MR, NV>(xb, C, c, k0 + j0, n, p, a, f, ot);
      with_rows<MR - 1>(int(C - c), [&](auto rows) {
        value_tile<T, decltype(rows)::value, NV>(xb, C, c, k0 + j0, n, p, a, f, ot);
      });
    }
  }

  T inv[NV * W];
  for (int v = 0; v < NV; ++v) store(inv + v * W, T(1) / l[v]);
  const std::int64_t n = std::min<std::int64_t>(NV * W, L - i0);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t i = 0; i < n; ++i) out_b[c * L + i0 + i] = ot[c * BQ + i] * inv[i];
}

template <typename T>
void run(const T* x, T* out, T* workspace, std::int64_t workspace_bytes, const Plan<T>& plan) {
  constexpr int W = Plan<T>::W, NV = Plan<T>::NV, BQ = Plan<T>::BQ;
  PYANOM_CHECK(workspace_bytes >= plan.workspace_bytes(),
               "self_attention: workspace too small (" + std::to_string(workspace_bytes) +
                   " bytes, need " + std::to_string(plan.workspace_bytes()) + ")");
  const std::int64_t C = plan.channels, L = plan.positions, Lp = plan.padded();
  const std::int64_t nb = plan.blocks(), group = plan.group(), panels = Lp / W;
  T* packed = workspace;                                 // [group][Lp / W][C][W]
  T* scores = packed + group * plan.packed_elems();      // [group][L][Lp], full mode
  T* scratch = scores + group * plan.score_elems();      // per thread
  bool finite = true;
#pragma omp parallel num_threads(plan.threads())
  {
    T* mine = scratch + omp_get_thread_num() * plan.scratch_elems();
    for (std::int64_t b0 = 0; b0 < plan.batch; b0 += group) {
      const std::int64_t nimg = std::min(group, plan.batch - b0);
#pragma omp for collapse(2) schedule(static) reduction(&& : finite)
      for (std::int64_t b = 0; b < nimg; ++b)
        for (std::int64_t g = 0; g < panels; ++g)
          finite = pack_panel(x + (b0 + b) * C * L, C, L, g, packed + (b * panels + g) * C * W) &&
                   finite;
      if (!finite) break;  // the same for every thread: the reduction ends with a barrier
      if (plan.full()) {
        // Only the tiles on and above the diagonal: the scores are symmetric.
#pragma omp for collapse(3) schedule(dynamic)
        for (std::int64_t b = 0; b < nimg; ++b)
          for (std::int64_t I = 0; I < nb; ++I)
            for (std::int64_t J = 0; J < nb; ++J)
              if (J >= I)
                score_block(packed + b * plan.packed_elems(), plan, I, J,
                            scores + b * plan.score_elems());
      }
#pragma omp for collapse(2) schedule(dynamic)
      for (std::int64_t b = 0; b < nimg; ++b)
        for (std::int64_t q = 0; q < nb; ++q) {
          const std::int64_t i0 = q * BQ;
          const T* s = plan.full() ? scores + b * plan.score_elems() : nullptr;
          const int nv = int(std::min<std::int64_t>(NV, (Lp - i0) / W));
          with_rows<NV>(nv, [&](auto v) {
            attend_block<T, decltype(v)::value>(packed + b * plan.packed_elems(), plan, i0, s,
                                                mine, out + (b0 + b) * C * L);
          });
        }
    }
  }
  PYANOM_CHECK(finite, "x contains NaN or Inf");
}

}  // namespace

int64_t attention_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_ATTENTION_SIZES) const std::string& dtype) {
  PYANOM_CHECK(batch > 0 && channels > 0 && positions > 0,
               "self_attention: batch, channels and positions must be positive");
  return dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    return Plan<T>{batch, channels, positions, full_limit}.workspace_bytes();
  });
}

void attention_cpu(PYANOM_PARAMS(PYANOM_ATTENTION_ARGS) const std::string& dtype) {
  PYANOM_CHECK(batch > 0 && channels > 0 && positions > 0,
               "self_attention: batch, channels and positions must be positive");
  PYANOM_CHECK(x && out && workspace, "self_attention: null buffer address");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    run<T>(as_ptr<const T>(x), as_ptr<T>(out), as_ptr<T>(workspace), workspace_bytes,
           Plan<T>{batch, channels, positions, full_limit});
  });
}

}  // namespace pyanom
