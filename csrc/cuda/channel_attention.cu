// Per-channel self-attention (the SA-PatchCore authors' released form) on CUDA:
// out[c, i] = sum_j softmax_j(x[c, i] x[c, j]) x[c, j] over the L positions of one channel.
//
// One thread block per channel: a block-wide min/max first, so the largest logit of every row
// is known (a * e, e = max when a >= 0, min otherwise) and one pass over the keys needs no
// rescaling, the exponent formed as a * (x_j - e) so that it is never positive (see the CPU
// kernel); the keys then go through shared memory in tiles of kTile, each thread owning the
// queries tid, tid + kThreads, ... and their two running sums in registers.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>

#include "channel_attention.h"
#include "common.h"
#include "cuda/common.cuh"

namespace pyanom {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 1024;        // keys per shared tile
constexpr int kQueriesPerThread = 4;  // query registers per pass (L > kThreads: several passes)

template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_attention_kernel(const T* __restrict__ x, T* __restrict__ out, int L) {
  __shared__ T keys[kTile];
  const T* xc = x + std::int64_t(blockIdx.x) * L;
  T* oc = out + std::int64_t(blockIdx.x) * L;
  const int tid = threadIdx.x;

  T hi = xc[0], lo = xc[0];
  for (int j = tid; j < L; j += kThreads) {
    hi = max(hi, xc[j]);
    lo = min(lo, xc[j]);
  }
  block_max_min<kThreads>(hi, lo);

  constexpr int Q = kQueriesPerThread;
  for (int base = 0; base < L; base += kThreads * Q) {
    T a[Q], ext[Q], num[Q], den[Q];
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int i = base + q * kThreads + tid;
      a[q] = i < L ? xc[i] : T(0);
      ext[q] = a[q] >= T(0) ? hi : lo;
      num[q] = T(0);
      den[q] = T(0);
    }
    for (int t0 = 0; t0 < L; t0 += kTile) {
      const int n = min(kTile, L - t0);
      __syncthreads();  // the previous tile is consumed
      for (int j = tid; j < n; j += kThreads) keys[j] = xc[t0 + j];
      __syncthreads();
      for (int j = 0; j < n; ++j) {
        const T xj = keys[j];
#pragma unroll
        for (int q = 0; q < Q; ++q) {
          const T e = Num<T>::fast_exp(a[q] * (xj - ext[q]));
          den[q] += e;
          num[q] += e * xj;
        }
      }
    }
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int i = base + q * kThreads + tid;
      if (i < L) oc[i] = num[q] / den[q];
    }
  }
}

}  // namespace

void channel_attention_cuda(PYANOM_PARAMS(PYANOM_CHANNEL_ATTENTION_ARGS) const std::string& dtype,
                            std::uintptr_t stream) {
  PYANOM_CHECK(batch > 0 && channels > 0 && positions > 0,
               "channel_self_attention: batch, channels and positions must be positive");
  PYANOM_CHECK(x && out, "channel_self_attention: null buffer address");
  PYANOM_CHECK(positions <= INT_MAX && batch * channels <= INT_MAX,
               "channel_self_attention: maps too large for one CUDA launch");
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    channel_attention_kernel<T><<<unsigned(batch * channels), kThreads, 0, s>>>(
        as_ptr<const T>(x), as_ptr<T>(out), int(positions));
    PYANOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pyanom
