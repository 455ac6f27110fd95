// The one header the CUDA kernels share: the check of every CUDA call and launch, maths that
// takes float or double under one name (Num<T>), and warp and block reductions whose order is
// fixed, so that a result does not depend on the scheduling.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cfloat>
#include <stdexcept>
#include <string>

// Every CUDA call and launch goes through PYANOM_CUDA_CHECK so failures surface as Python errors.
#define PYANOM_CUDA_CHECK(expr)                                                  \
  do {                                                                           \
    cudaError_t err_ = (expr);                                                   \
    if (err_ != cudaSuccess)                                                     \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " +    \
                               cudaGetErrorString(err_));                        \
  } while (0)

#define PYANOM_CUDA_CHECK_LAUNCH() PYANOM_CUDA_CHECK(cudaGetLastError())

namespace pyanom {

// ---- maths: one name for float and double ----

template <typename T>
struct Num;
template <>
struct Num<float> {
  __device__ static float inf() { return CUDART_INF_F; }
  __device__ static float lowest() { return -FLT_MAX; }
  __device__ static float most() { return FLT_MAX; }
  __device__ static float fmadd(float a, float b, float c) { return fmaf(a, b, c); }
  // Correctly rounded whatever --use_fast_math says, like the CPU kernels' sqrt.
  __device__ static float root(float x) { return __fsqrt_rn(x); }
  __device__ static float exp(float x) { return expf(x); }
  __device__ static float fast_exp(float x) { return __expf(x); }  // the intrinsic, whatever the flags
  __device__ static float exp2(float x) { return exp2f(x); }
  __device__ static float log1p(float x) { return log1pf(x); }
};
template <>
struct Num<double> {
  __device__ static double inf() { return CUDART_INF; }
  __device__ static double lowest() { return -DBL_MAX; }
  __device__ static double most() { return DBL_MAX; }
  __device__ static double fmadd(double a, double b, double c) { return fma(a, b, c); }
  __device__ static double root(double x) { return __dsqrt_rn(x); }
  __device__ static double exp(double x) { return ::exp(x); }
  __device__ static double fast_exp(double x) { return ::exp(x); }
  __device__ static double exp2(double x) { return ::exp2(x); }
  __device__ static double log1p(double x) { return ::log1p(x); }
};

// pow for the maths headers shared with the CPU (they take a Math with a static pow).
struct DeviceMath {
  __host__ __device__ static double pow(double x, double y) { return ::pow(x, y); }
};

// ---- reductions ----

constexpr unsigned kAllLanes = 0xffffffffu;

// Sum over the warp by halving: lane 0 gets the total.
__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kAllLanes, v, offset);
  return v;
}

// Sum over the warp by a butterfly, whose pairwise sums are symmetric: every lane gets the same bits.
__device__ __forceinline__ double warp_sum_all(double v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kAllLanes, v, off);
  return v;
}

// The best (r, i) of the warp by better(r2, i2, r, i) (a strict total order); every lane gets it.
template <typename Better>
__device__ __forceinline__ void warp_best(double& r, int& i, Better better) {
  for (int off = 16; off > 0; off /= 2) {
    const double r2 = __shfl_xor_sync(kAllLanes, r, off);
    const int i2 = __shfl_xor_sync(kAllLanes, i, off);
    if (better(r2, i2, r, i)) r = r2, i = i2;
  }
}

// The best (r, i) of a block of Threads threads; every thread gets it. sr and si hold one entry
// per warp in shared memory.
template <int Threads, typename Better>
__device__ void block_best(double& r, int& i, double* sr, int* si, Better better) {
  constexpr int kWarps = Threads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  warp_best(r, i, better);
  __syncthreads();  // sr/si may still be read from the previous call
  if (lane == 0) sr[warp] = r, si[warp] = i;
  __syncthreads();
  r = sr[0], i = si[0];
  for (int w = 1; w < kWarps; ++w) {
    if (better(sr[w], si[w], r, i)) r = sr[w], i = si[w];
  }
}

// Sum v[k] over a block of Threads threads in a fixed tree order; thread 0 gets the totals.
template <int Threads, int N>
__device__ void block_sum(double (&v)[N]) {
  constexpr int kWarps = Threads / 32;
  __shared__ double warp_sums[N][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < N; ++k) {
    v[k] = warp_sum(v[k]);
    if (lane == 0) warp_sums[k][warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < N; ++k) {
      v[k] = lane < kWarps ? warp_sums[k][lane] : 0.0;
      v[k] = warp_sum(v[k]);
    }
  }
}

// The largest and smallest of hi and lo over a block of Threads threads (a power of two);
// every thread gets them.
template <int Threads, typename T>
__device__ void block_max_min(T& hi, T& lo) {
  __shared__ T red_hi[Threads], red_lo[Threads];
  const int tid = threadIdx.x;
  red_hi[tid] = hi;
  red_lo[tid] = lo;
  __syncthreads();
  for (int s = Threads / 2; s > 0; s /= 2) {
    if (tid < s) {
      red_hi[tid] = max(red_hi[tid], red_hi[tid + s]);
      red_lo[tid] = min(red_lo[tid], red_lo[tid + s]);
    }
    __syncthreads();
  }
  hi = red_hi[0];
  lo = red_lo[0];
}

}  // namespace pyanom
