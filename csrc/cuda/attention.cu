// Parameter-free self-attention softmax(X X^T / sqrt(C)) X over the L = H*W positions of each
// [C, L] map (SA-PatchCore eq. 4), fused in one kernel.
//
// The head dimension is C (up to 2048 and more), far past what flash-attention kernels keep in
// registers, so here nothing scales with C or L on chip:
// - one thread block takes BM queries of one map (128 or 64) and walks the keys in blocks of BN;
// - S = Q^T K for the block is accumulated over C in shared chunks of BK channels; both
//   operands are rows of the channels-first map, so the loads are coalesced;
// - the online softmax (base 2) keeps a running max and sum per query in shared memory;
// - O = O * exp2(m_old - m_new) + P V goes CT channels at a time, its running value kept in
//   the output itself (each element owned by one thread), normalised by the last key block.
// Accumulation is in T (fp32 for float). 256 threads as a 16 x 16 grid; a thread holds the
// queries tx + 16 i and the keys (or channels) ty + 16 j of a tile, so shared reads are
// conflict-free or broadcasts and output rows are written 16 queries at a time.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "attention.h"
#include "common.h"
#include "cuda/common.cuh"

namespace pyanom {
namespace {

constexpr int kThreads = 256;  // 16 x 16
constexpr int kKeys = 64;      // BN: keys per block of the online softmax
constexpr int kDepth = 16;     // BK: channels per shared chunk of Q and K, keys per chunk of V
constexpr int kChannels = 64;  // CT: output channels per pass of P V

// Shared memory: P [BN][BM] (keys major), row max / sum / rescale [BM], then one work area
// reused by the phases: Q and K chunks [BK][BM] + [BK][BN], partial reductions [16][BM], the
// V chunk [BK][CT + 1] (padded: its stores go down columns).
template <int BM>
constexpr int shared_elems() {
  constexpr int qk = kDepth * (BM + kKeys), red = 16 * BM, v = kDepth * (kChannels + 1);
  constexpr int work = qk > red ? (qk > v ? qk : v) : (red > v ? red : v);
  return kKeys * BM + 3 * BM + work;
}

// BM queries per block (a multiple of 16).
template <typename T, int BM>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const T* __restrict__ x, T* __restrict__ out, int C, int L,
                     int query_blocks, T scale_log2) {
  constexpr int BN = kKeys, BK = kDepth, CT = kChannels;
  constexpr int TM = BM / 16, TN = BN / 16, TC = CT / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T* ps = reinterpret_cast<T*>(smem);  // [BN][BM]
  T* row_max = ps + BN * BM;           // running max of the logits (base 2) per query
  T* row_sum = row_max + BM;           // running sum of exp2(logit - max) per query
  T* rescale = row_sum + BM;           // exp2(old max - new max) for this key block
  T* work = rescale + BM;
  T* qs = work;          // [BK][BM]
  T* ks = qs + BK * BM;  // [BK][BN]
  T* red = work;         // [16][BM]
  T* vs = work;          // [BK][CT + 1]

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int q0 = (blockIdx.x % query_blocks) * BM;
  const std::int64_t map = std::int64_t(blockIdx.x / query_blocks) * C * L;
  const T* xb = x + map;
  T* ob = out + map;

  if (tid < BM) {
    row_max[tid] = Num<T>::lowest();
    row_sum[tid] = T(0);
  }
  for (int k0 = 0; k0 < L; k0 += BN) {
    // 1. Scores of this key block: s[i][j] for query q0 + tx + 16 i, key k0 + ty + 16 j.
    T s[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) s[i][j] = T(0);
    for (int c0 = 0; c0 < C; c0 += BK) {
      __syncthreads();  // the work area is free (previous chunk, or the previous P V)
      for (int e = tid; e < BK * BM; e += kThreads) {
        const int c = c0 + e / BM, q = q0 + e % BM;
        qs[e] = c < C && q < L ? xb[std::int64_t(c) * L + q] : T(0);
      }
      for (int e = tid; e < BK * BN; e += kThreads) {
        const int c = c0 + e / BN, k = k0 + e % BN;
        ks[e] = c < C && k < L ? xb[std::int64_t(c) * L + k] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < BK; ++c) {
        T a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = qs[c * BM + tx + 16 * i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = ks[c * BN + ty + 16 * j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) s[i][j] = fma(a[i], b[j], s[i][j]);
      }
    }

    // 2. Online softmax per query, in base 2 (logit = s * log2(e) / sqrt(C)).
    bool valid[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) valid[j] = k0 + ty + 16 * j < L;
    __syncthreads();  // Q and K chunks consumed: red reuses them
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      T m = Num<T>::lowest();
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        s[i][j] *= scale_log2;
        if (valid[j]) m = fmax(m, s[i][j]);
      }
      red[ty * BM + tx + 16 * i] = m;
    }
    __syncthreads();
    if (tid < BM) {
      T m = red[tid];
      for (int t = 1; t < 16; ++t) m = fmax(m, red[t * BM + tid]);
      const T old = row_max[tid];
      const T now = fmax(old, m);
      rescale[tid] = Num<T>::exp2(old - now);  // 0 for the first block (old = lowest)
      row_max[tid] = now;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int q = tx + 16 * i;
      const T m = row_max[q];
      T sum = T(0);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const T p = valid[j] ? Num<T>::exp2(s[i][j] - m) : T(0);
        ps[(ty + 16 * j) * BM + q] = p;
        sum += p;
      }
      red[ty * BM + q] = sum;
    }
    __syncthreads();
    if (tid < BM) {
      T sum = red[tid];
      for (int t = 1; t < 16; ++t) sum += red[t * BM + tid];
      row_sum[tid] = fma(row_sum[tid], rescale[tid], sum);
    }

    // 3. O = O * rescale + P V, CT channels at a time: o[i][j] for query q0 + tx + 16 i,
    //    channel c0 + ty + 16 j. The last key block also divides by the row sum.
    const bool first = k0 == 0, last = k0 + BN >= L;
    for (int c0 = 0; c0 < C; c0 += CT) {
      T o[TM][TC];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TC; ++j) o[i][j] = T(0);
      for (int kk = 0; kk < BN && k0 + kk < L; kk += BK) {
        __syncthreads();  // P, rescale and row sums are ready; red or the last V chunk consumed
        for (int e = tid; e < BK * CT; e += kThreads) {
          const int k = e % BK, c = e / BK;
          const int key = k0 + kk + k, channel = c0 + c;
          vs[k * (CT + 1) + c] =
              channel < C && key < L ? xb[std::int64_t(channel) * L + key] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
          T a[TM], v[TC];
#pragma unroll
          for (int i = 0; i < TM; ++i) a[i] = ps[(kk + k) * BM + tx + 16 * i];
#pragma unroll
          for (int j = 0; j < TC; ++j) v[j] = vs[k * (CT + 1) + ty + 16 * j];
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TC; ++j) o[i][j] = fma(a[i], v[j], o[i][j]);
        }
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int q = q0 + tx + 16 * i;
        if (q >= L) continue;
        const T alpha = rescale[tx + 16 * i];
        const T norm = last ? T(1) / row_sum[tx + 16 * i] : T(1);
#pragma unroll
        for (int j = 0; j < TC; ++j) {
          const int channel = c0 + ty + 16 * j;
          if (channel >= C) continue;
          T* dst = ob + std::int64_t(channel) * L + q;
          const T value = first ? o[i][j] : fma(*dst, alpha, o[i][j]);
          *dst = value * norm;
        }
      }
    }
  }
}

template <typename T, int BM>
void launch_tiles(const T* x, T* out, std::int64_t batch, std::int64_t channels,
                  std::int64_t positions, cudaStream_t stream) {
  const std::int64_t query_blocks = (positions + BM - 1) / BM;
  PYANOM_CHECK(channels <= INT_MAX && positions <= INT_MAX && batch * query_blocks <= INT_MAX,
               "self_attention: maps too large for one CUDA launch");
  const int bytes = shared_elems<BM>() * int(sizeof(T));
  // Past the 48 KiB default for double: opt in (every supported GPU allows 64 KiB).
  PYANOM_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<T, BM>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  const T scale_log2 = T(1.4426950408889634) / std::sqrt(T(channels));
  attention_kernel<T, BM><<<unsigned(batch * query_blocks), kThreads, bytes, stream>>>(
      x, out, int(channels), int(positions), int(query_blocks), scale_log2);
  PYANOM_CUDA_CHECK_LAUNCH();
}

// 128 queries per block in float (64 in double, for the same shared bytes), or 64 when 128
// would leave multiprocessors idle (small maps, e.g. 32 maps of 16 x 16 make only 64 blocks).
template <typename T>
void launch(const T* x, T* out, std::int64_t batch, std::int64_t channels,
            std::int64_t positions, cudaStream_t stream) {
  int device = 0, sms = 0;
  PYANOM_CUDA_CHECK(cudaGetDevice(&device));
  PYANOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if constexpr (sizeof(T) == 4)
    if (batch * ((positions + 127) / 128) >= sms)
      return launch_tiles<T, 128>(x, out, batch, channels, positions, stream);
  launch_tiles<T, 64>(x, out, batch, channels, positions, stream);
}

}  // namespace

void attention_cuda(PYANOM_PARAMS(PYANOM_ATTENTION_CUDA_ARGS) const std::string& dtype,
                    std::uintptr_t stream) {
  PYANOM_CHECK(batch > 0 && channels > 0 && positions > 0,
               "self_attention: batch, channels and positions must be positive");
  PYANOM_CHECK(x && out, "self_attention: null buffer address");
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    launch<T>(as_ptr<const T>(x), as_ptr<T>(out), batch, channels, positions, s);
  });
}

}  // namespace pyanom
