// Per-channel self-attention (the SA-PatchCore authors' released form) on the CPU:
// out[c, i] = sum_j exp(a x_j - m) x_j / sum_j exp(a x_j - m), with a = x[c, i], over the L
// positions of one channel.
//
// The softmax needs no running max: the largest logit of row i is known before the pass,
// a * max(x) when a >= 0 and a * min(x) otherwise (call that extreme e), so one pass over the
// keys accumulates the sums, and no L x L block exists at all. The exponent is formed as
// a * (x_j - e), not a x_j - a e: its sign is exact (<= 0 for every key, 0 at the extreme), so
// no term exceeds 1 and the sum is at least 1 for any magnitude, where a x_j - a e would leave
// the rounding error of a e (fused or not) in the exponent: up to 256 at a e ~ 7e9 in float32.
//
// Work: one OpenMP task per channel; queries in the SIMD lanes, NV vectors of them per pass
// over the keys (independent exp chains to fill the pipeline), each key broadcast.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "channel_attention.h"
#include "common.h"
#include "cpu/simd.h"

namespace pyanom {
namespace {

constexpr int kQueryVectors = 4;
// One OpenMP thread per this many exponentials, at most the OpenMP maximum.
constexpr std::int64_t kGrain = std::int64_t(1) << 20;

// NV vectors of queries starting at i0 (the last one partial when n < NV * W lanes remain).
template <typename T, int NV>
void attend(const T* x, std::int64_t L, std::int64_t i0, T hi, T lo, T* out) {
  using S = simd::Vec<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  V a[NV], e[NV], num[NV], den[NV];
  for (int v = 0; v < NV; ++v) {
    const int n = int(std::min<std::int64_t>(W, L - i0 - v * W));
    a[v] = n > 0 ? simd::load_first<V>(x + i0 + v * W, n) : V{};
    e[v] = a[v] >= 0 ? S::splat(hi) : S::splat(lo);
    num[v] = V{};
    den[v] = V{};
  }
  for (std::int64_t j = 0; j < L; ++j) {
    const V xj = S::splat(x[j]);
    for (int v = 0; v < NV; ++v) {
      const V w = S::exp(a[v] * (xj - e[v]));
      den[v] += w;
      num[v] += w * xj;
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int n = int(std::min<std::int64_t>(W, L - i0 - v * W));
    if (n > 0) simd::store_first(out + i0 + v * W, num[v] / den[v], n);
  }
}

// One channel; false when it holds NaN or Inf (then out is left unwritten).
template <typename T>
bool channel(const T* x, std::int64_t L, T* out) {
  constexpr int W = simd::Vec<T>::W, BQ = kQueryVectors * W;
  T hi = x[0], lo = x[0];
  bool finite = true;
  for (std::int64_t j = 0; j < L; ++j) {
    finite = finite && std::isfinite(x[j]);
    hi = std::max(hi, x[j]);
    lo = std::min(lo, x[j]);
  }
  if (!finite) return false;
  std::int64_t i0 = 0;
  for (; i0 + BQ <= L; i0 += BQ) attend<T, kQueryVectors>(x, L, i0, hi, lo, out);
  for (; i0 < L; i0 += W) attend<T, 1>(x, L, i0, hi, lo, out);
  return true;
}

template <typename T>
void run(const T* x, T* out, std::int64_t channels, std::int64_t L) {
  const int threads = int(std::clamp<std::int64_t>(channels * L * L / kGrain, 1, omp_get_max_threads()));
  bool finite = true;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(&& : finite)
  for (std::int64_t c = 0; c < channels; ++c)
    finite = channel(x + c * L, L, out + c * L) && finite;
  PYANOM_CHECK(finite, "x contains NaN or Inf");
}

}  // namespace

void channel_attention_cpu(PYANOM_PARAMS(PYANOM_CHANNEL_ATTENTION_ARGS) const std::string& dtype) {
  PYANOM_CHECK(batch > 0 && channels > 0 && positions > 0,
               "channel_self_attention: batch, channels and positions must be positive");
  PYANOM_CHECK(x && out, "channel_self_attention: null buffer address");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    run<T>(as_ptr<const T>(x), as_ptr<T>(out), batch * channels, positions);
  });
}

}  // namespace pyanom
