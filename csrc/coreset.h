// greedy_coreset (pyanom.ops.coreset): the entry points, and the exactness rules both kernels
// prune by (the same slack and the same tie order, so the CPU and CUDA selections equal the
// reference's, pyanom.ops.reference).
#pragma once

#include <cfloat>
#include <cstdint>
#include <string>

#include "common.h"
#include "host_device.h"

// Points [n, d] of the dtype (already projected) and k centers: what the workspace size depends on.
#define PYANOM_CORESET_SIZES(X) X(int64_t, n) X(int64_t, d) X(int64_t, k)
#define PYANOM_CORESET_ARGS(X)                                                                      \
  X(std::uintptr_t, points) PYANOM_CORESET_SIZES(X) X(int64_t, start) X(std::uintptr_t, out)        \
  X(std::uintptr_t, workspace) X(int64_t, workspace_bytes)

namespace pyanom {

// Bytes of scratch coreset_cpu needs.
int64_t coreset_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_CORESET_SIZES) const std::string& dtype);
// k-center greedy on the points from `start`; writes k int64 indices in selection order to out.
// Same selection as the unpruned float64 loop, ties to the lowest index.
void coreset_cpu(PYANOM_PARAMS(PYANOM_CORESET_ARGS) const std::string& dtype);
#ifdef PYANOM_WITH_CUDA
// The same on CUDA buffers of the current device, launched on `stream` (a cudaStream_t).
int64_t coreset_workspace_bytes_cuda(PYANOM_PARAMS(PYANOM_CORESET_SIZES) const std::string& dtype);
void coreset_cuda(PYANOM_PARAMS(PYANOM_CORESET_ARGS) const std::string& dtype, std::uintptr_t stream);
#endif

constexpr double kSlack = 1e-6;   // relative slack on pruning tests (float64 error ~ D 2^-53)
constexpr double kTiny = 1e-300;  // absolute slack for float64 squares that underflowed

// The squared center distance from which a point with min distance m (squared) provably
// keeps it: d(c, c') >= 2 d(x, c), with slack.
PYANOM_HOST_DEVICE inline double reach_limit(double m) { return 4.0 * m * (1.0 + kSlack) + kTiny; }

// True when a center at squared distance >= lower from c' proves that a point of its group
// with min distance m keeps it. Never when the bound overflowed (m may then still shrink).
PYANOM_HOST_DEVICE inline bool center_keeps(double lower, double m) {
  const double bound = reach_limit(m);
  return bound <= DBL_MAX && lower >= bound;
}

// (value, index) with the larger value winning and ties going to the lower index.
PYANOM_HOST_DEVICE inline bool beats(double r, int32_t i, double r2, int32_t i2) {
  return r > r2 || (r == r2 && i < i2);
}

}  // namespace pyanom
