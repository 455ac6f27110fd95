// k-center greedy (farthest point) selection on the CPU, the whole loop in C++ with OpenMP.
//
// Exact but pruned. Every point x remembers its nearest chosen center c = a(x) and
// m(x) = ||x - c||^2 (float64). The points sharing a center form its group; a group knows
// its radius r (max m in the group) and the lowest index reaching it. A new center c' can
// only lower m(x) when d(c, c') < 2 d(x, c) (triangle inequality), hence:
//   - groups: a group with d(c, c') >= 2 sqrt(r) is skipped whole. The first kCells centers
//     are anchors; every center joins the cell of its nearest anchor and keeps its
//     distances to its kNear nearest anchors a, so d(c, c') >= |d(c', a) - d(c, a)| rejects
//     most groups, and a cell's bound rejects all its groups at once. Only the rest are
//     measured (float32, early exit);
//   - points: inside the other groups a point is skipped by the same test with its own m,
//     else bounded with its residual x - c, kept as int8 times a power of two with a known
//     error e: d(x, c') >= ||q(x - c) - (c' - c)|| - e, 4x fewer bytes than the row. Only
//     points this cannot keep are measured exactly (float64, from the input rows).
// The next center is the best group maximum (a tournament tree over groups, ties to the
// lowest index). Each group's entries (index, m, residual) lie contiguous in an arena and
// are streamed; a new group is appended at the arena's tail, compacted when full.
//
// Threads: OpenMP runs the first full pass. The steps themselves run on one thread: each is
// short and memory-bound, and a fork/join per step cost more than it saved (with 2 threads
// on a shared 2-core machine, GOMP's spinning barriers made the loop 3.5x slower).
//
// Exactness: m and every distance compared with it are float64 sums in one fixed order,
// as in the reference (pyanom.ops.reference.greedy_select). Bounds only decide what to
// skip; they are rigorous lower bounds (float32 sums shrunk by their worst-case rounding
// error, quantization and storage errors added) tested with a relative slack (kSlack) far
// above float64 rounding, so a skipped point provably keeps its m and the selection equals
// the unpruned loop's.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.h"
#include "coreset.h"
#include "cpu/simd.h"

namespace pyanom {
namespace {

constexpr double kTiny32 = 1e-36;    // absolute error bound of float32 sums near underflow
constexpr float kCellSlack = 1e-6f;  // relative error of stored anchor distances (float)
constexpr int64_t kCells = 1024;     // anchors
constexpr int64_t kNear = 4;         // anchors remembered per center
constexpr int64_t kChunk = 1024;     // group entries screened per batch before measuring
constexpr int64_t kAhead = 4;        // rows prefetched ahead of random gathers
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInf32 = std::numeric_limits<float>::infinity();

// Fixed-width vectors (cpu/simd.h): 8 doubles, 8 and 16 floats whatever the register width.
using simd::f32x16;
using simd::f64x8;
using simd::hsum;
using simd::load;
using simd::load_f32x16;
using simd::load_f64x8;

// ||a - b||^2 accumulated in float64 in one fixed order, so equal inputs give equal bits
// wherever a point sits (duplicates tie exactly, as in the reference).
template <typename T>
inline double squared_distance(const T* a, const T* b, int64_t d) {
  f64x8 s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t j = 0;
  for (; j + 32 <= d; j += 32) {
    f64x8 t0 = load_f64x8(a + j) - load_f64x8(b + j);
    f64x8 t1 = load_f64x8(a + j + 8) - load_f64x8(b + j + 8);
    f64x8 t2 = load_f64x8(a + j + 16) - load_f64x8(b + j + 16);
    f64x8 t3 = load_f64x8(a + j + 24) - load_f64x8(b + j + 24);
    s0 += t0 * t0;
    s1 += t1 * t1;
    s2 += t2 * t2;
    s3 += t3 * t3;
  }
  for (; j + 8 <= d; j += 8) {
    f64x8 t = load_f64x8(a + j) - load_f64x8(b + j);
    s0 += t * t;
  }
  double tail = 0.0;
  for (; j < d; ++j) {
    double t = double(a[j]) - double(b[j]);
    tail += t * t;
  }
  f64x8 s = (s0 + s1) + (s2 + s3);
  return hsum(s) + tail;
}

// Float32 sum of (a - b)^2 over dims [j, end): fast, inexact (see Bounds).
inline float squared_distance32(const float* a, const float* b, int64_t j, int64_t end) {
  f32x16 s0 = {}, s1 = {};
  for (; j + 32 <= end; j += 32) {
    f32x16 t0 = load<f32x16>(a + j) - load<f32x16>(b + j);
    f32x16 t1 = load<f32x16>(a + j + 16) - load<f32x16>(b + j + 16);
    s0 += t0 * t0;
    s1 += t1 * t1;
  }
  float tail = 0.0f;
  for (; j < end; ++j) {
    float t = a[j] - b[j];
    tail += t * t;
  }
  return hsum(s0 + s1) + tail;
}

// Float32 ||scale * q - delta||^2 over dq (a multiple of 16) dims. scale is a power of two,
// so scale * q is exact and each difference is rounded once.
inline float quantized_distance(const int8_t* q, float scale, const float* delta, int64_t dq) {
  f32x16 s0 = {}, s1 = {};
  int64_t j = 0;
  for (; j + 32 <= dq; j += 32) {
    f32x16 t0 = load_f32x16(q + j) * scale - load<f32x16>(delta + j);
    f32x16 t1 = load_f32x16(q + j + 16) * scale - load<f32x16>(delta + j + 16);
    s0 += t0 * t0;
    s1 += t1 * t1;
  }
  if (j < dq) {
    f32x16 t0 = load_f32x16(q + j) * scale - load<f32x16>(delta + j);
    s0 += t0 * t0;
  }
  return hsum(s0 + s1);
}

// Rigorous lower bounds on a true squared distance from a computed one: `shrink` is 1 minus
// twice the worst-case relative rounding error of the sum (at most (d + 8) u).
struct Bounds {
  double shrink32, shrink64;
  bool use32;
  explicit Bounds(int64_t d) {
    const double g32 = 2.0 * double(d + 8) * std::ldexp(1.0, -24);
    use32 = g32 < 0.25;
    shrink32 = 1.0 - g32;
    shrink64 = 1.0 - 2.0 * double(d + 8) * std::ldexp(1.0, -53);
  }
  double from32(float s) const {  // an overflowed (inf) sum bounds nothing
    return std::isfinite(s) ? double(s) * shrink32 - kTiny32 : 0.0;
  }
  double from64(double s) const { return s * shrink64; }
};

// The smallest float >= x.
inline float float_up(double x) {
  const float f = float(x);
  return double(f) >= x ? f : std::nextafter(f, kInf32);
}

// A lower bound on the squared distance between two centers, good enough to compare with
// `limit`: for float32 rows it stops as soon as a partial sum proves the distance >= limit.
template <typename T>
inline double center_lower_bound(const T* a, const T* b, int64_t d, double limit, const Bounds& bd) {
  if constexpr (std::is_same_v<T, float>) {
    if (bd.use32) {
      double lo = 0.0;
      float acc = 0.0f;
      for (int64_t j = 0; j < d; j += 64) {
        acc += squared_distance32(a, b, j, std::min(d, j + 64));
        lo = bd.from32(acc);
        if (lo >= limit) return lo;
      }
      if (std::isfinite(acc)) return lo;
    }
  }
  return bd.from64(squared_distance(a, b, d));
}

// Stores the residual x - c of a point with min distance m = ||x - c||^2 as scale * q (q in
// [-127, 127] padded with zeros to dq, scale a power of two) and returns what its bound
// needs: need >= err + sqrt(m (1 + kSlack) + kTiny), err >= ||(x - c) - scale * q||, so
// that ||scale * q - (c' - c)|| >= need + (the error of c' - c) proves x keeps m (inf when
// the residual does not fit float32).
template <typename T>
float quantize(const T* x, const T* c, int64_t d, int64_t dq, double m, int8_t* q, float* scale) {
  double amax = 0.0;
  for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(double(x[j]) - double(c[j])));
  std::memset(q, 0, dq);
  *scale = 0.0f;
  int e = 0;
  std::frexp(amax / 127.0, &e);  // amax / 127 < 2^e
  e = std::max(e, -149);         // the smallest float32 power of two
  if (!(e <= 100) || !std::isfinite(amax) || !std::isfinite(m)) return kInf32;
  double sum = 0.0;
  if (amax > 0.0) {
    const double s = std::ldexp(1.0, e), inv = std::ldexp(1.0, -e);  // exact scalings
    for (int64_t j = 0; j < d; ++j) {
      const double r = double(x[j]) - double(c[j]);
      const double v = std::clamp(std::nearbyint(r * inv), -127.0, 127.0);
      q[j] = int8_t(v);
      sum += (r - s * v) * (r - s * v);
    }
    *scale = float(s);
  }
  // Slack for the float64 rounding of the residual, this sum and the square roots.
  const double err = std::sqrt(sum) * (1.0 + 1e-9) + amax * double(d) * std::ldexp(1.0, -50);
  return float_up((err + std::sqrt(m * (1.0 + kSlack) + kTiny)) * (1.0 + 1e-12));
}


struct Best {
  double r = -1.0;  // below any squared distance: an empty group
  int32_t i = std::numeric_limits<int32_t>::max();
  void offer(double r2, int32_t i2) {
    if (beats(r2, i2, r, i)) r = r2, i = i2;
  }
};

struct Group {
  int64_t start, size;  // its entries in the arena
  double radius;        // max m (Best::r), -1 when empty
  double reach;         // lower bound on its squared distance to the new center (candidates)
  int32_t arg;          // lowest index with m == radius
  float limit;          // 2 sqrt(radius) with slack, rounded up; -inf when radius <= 0
};

struct Anchors {  // a center's kNear nearest anchors and its cell list link
  float dist[kNear];
  int16_t id[kNear];
  int32_t next;  // next center in the cell of id[0], -1 at the end
};

struct Cell {
  int32_t head;  // first member center, -1 when none
  float bound;   // >= d(c, anchor) + limit over its members c
  float to_new;  // d(new center, anchor)
};

template <typename T>
class Greedy {
 public:
  Greedy(const T* pts, int64_t n, int64_t d, int64_t k)
      : pts_(pts), n_(n), d_(d), k_(k), dq_(round_up(d, 16)), bd_(d), bq_(dq_) {
    leaves_ = 1;
    while (leaves_ < k) leaves_ *= 2;
  }

  // Lays every buffer out from `base` (nullptr: only sizes them); returns the bytes used.
  int64_t carve(char* base) {
    const int64_t slots = 2 * n_;  // groups hold n entries; new ones append, compaction frees
    int64_t used = 0;
    auto take = [&](auto*& p, int64_t count) {
      using P = std::remove_reference_t<decltype(*p)>;
      p = base ? reinterpret_cast<P*>(base + used) : nullptr;
      used += round_up(count * int64_t(sizeof(P)), 64);
    };
    take(idx_, slots);
    take(m_, slots);
    take(scale_, slots);
    take(need_, slots);
    take(q_, slots * dq_);
    take(centers_, k_ * d_);
    take(groups_, k_);
    take(anchors_, k_);
    take(cells_, kCells);
    take(cands_, k_);
    take(delta_, dq_);
    take(tree_r_, 2 * leaves_);
    take(tree_i_, 2 * leaves_);
    slots_ = slots;
    return used;
  }

  void run(int64_t start, int64_t* out) {
    for (int64_t p = 1; p < 2 * leaves_; ++p) {
      tree_r_[p] = Best().r;
      tree_i_[p] = Best().i;
    }
    out[0] = start;
    seed_group(start);
    int64_t t = 1;
    for (; t < k_; ++t) {
      const double far = tree_r_[1];
      const int32_t p = tree_i_[1];
      out[t] = p;
      if (!(far > 0.0)) break;  // every point sits on a center: argmax keeps returning p
      add_center(t, p);
    }
    for (int64_t r = t + 1; r < k_; ++r) out[r] = out[t];
  }

 private:
  const T* point(int32_t i) const { return pts_ + int64_t(i) * d_; }
  const T* center(int64_t g) const { return centers_ + g * d_; }
  int8_t* qrow(int64_t slot) const { return q_ + slot * dq_; }

  void prefetch_row(const T* row) const {
    const char* r = reinterpret_cast<const char*>(row);
    for (int64_t off = 0; off < d_ * int64_t(sizeof(T)); off += 64) __builtin_prefetch(r + off);
  }

  void quantize_slot(int64_t slot, const T* c) {
    need_[slot] = quantize(point(idx_[slot]), c, d_, dq_, m_[slot], qrow(slot), scale_ + slot);
  }

  void move_slot(int64_t to, int64_t from) {
    idx_[to] = idx_[from];
    m_[to] = m_[from];
    scale_[to] = scale_[from];
    need_[to] = need_[from];
    std::memcpy(qrow(to), qrow(from), dq_);
  }

  void swap_slots(int64_t a, int64_t b) {
    std::swap(idx_[a], idx_[b]);
    std::swap(m_[a], m_[b]);
    std::swap(scale_[a], scale_[b]);
    std::swap(need_[a], need_[b]);
    std::swap_ranges(qrow(a), qrow(a) + dq_, qrow(b));
  }

  void set_group(int64_t g, int64_t start, int64_t size, const Best& b) {
    Group& grp = groups_[g];
    grp.start = start;
    grp.size = size;
    grp.radius = b.r;
    grp.arg = b.i;
    grp.limit = b.r > 0.0 ? float_up(2.0 * std::sqrt(b.r) * (1.0 + kSlack) + 1e-150) : -kInf32;
    int64_t p = leaves_ + g;  // the tournament tree, leaf to root
    tree_r_[p] = b.r;
    tree_i_[p] = b.i;
    for (p /= 2; p >= 1; p /= 2) {
      const int64_t l = 2 * p, h = 2 * p + 1;
      const int64_t w = beats(tree_r_[h], tree_i_[h], tree_r_[l], tree_i_[l]) ? h : l;
      tree_r_[p] = tree_r_[w];
      tree_i_[p] = tree_i_[w];
    }
  }

  // Group 0: every point, measured against the start.
  void seed_group(int64_t start) {
    std::memcpy(centers_, point(int32_t(start)), d_ * sizeof(T));
    Best first;
#pragma omp parallel if (n_ * d_ >= (int64_t(1) << 20))
    {
      Best local;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n_; ++i) {
        idx_[i] = int32_t(i);
        m_[i] = squared_distance(point(int32_t(i)), centers_, d_);
        quantize_slot(i, centers_);
        local.offer(m_[i], int32_t(i));
      }
#pragma omp critical
      first.offer(local.r, local.i);
    }
    set_group(0, 0, n_, first);
    join_cell(0);
    tail_ = n_;
  }

  // Center t joins the cell of its nearest anchor and remembers its kNear nearest anchors
  // (cells_[a].to_new holds its anchor distances); the first kCells centers are anchors.
  void join_cell(int64_t t) {
    Anchors& an = anchors_[t];
    if (t < kCells) {
      std::fill(an.id, an.id + kNear, int16_t(t));
      std::fill(an.dist, an.dist + kNear, 0.0f);
      cells_[t] = Cell{-1, -kInf32, 0.0f};
    } else {
      std::fill(an.id, an.id + kNear, int16_t(0));
      std::fill(an.dist, an.dist + kNear, kInf32);
      for (int64_t a = 0; a < kCells; ++a) {  // insertion into the sorted kNear nearest
        const float da = cells_[a].to_new;
        int64_t j = kNear;
        while (j > 0 && da < an.dist[j - 1]) --j;
        if (j == kNear) continue;
        for (int64_t i = kNear - 1; i > j; --i) {
          an.id[i] = an.id[i - 1];
          an.dist[i] = an.dist[i - 1];
        }
        an.id[j] = int16_t(a);
        an.dist[j] = da;
      }
    }
    Cell& cell = cells_[an.id[0]];
    an.next = cell.head;
    cell.head = int32_t(t);
    cell.bound = std::max(cell.bound, an.dist[0] + groups_[t].limit);
  }

  // True when some remembered anchor a proves d(g, c') >= limit from the float distances:
  // |d(c', a) - d(g, a)| less their rounding. NaN (overflowed distances) proves nothing.
  bool anchors_reject(int64_t g) const {
    const Anchors& an = anchors_[g];
    for (int64_t j = 0; j < kNear; ++j) {
      const float da = cells_[an.id[j]].to_new, dg = an.dist[j];
      if (std::fabs(da - dg) - kCellSlack * (da + dg) >= groups_[g].limit) return true;
    }
    return false;
  }

  // True when the new center might reach group g; sets its reach bound then.
  bool reaches(int64_t g, const T* c_new) {
    Group& grp = groups_[g];
    if (!(grp.radius > 0.0)) return false;
    grp.reach = center_lower_bound(center(g), c_new, d_, reach_limit(grp.radius), bd_);
    return !center_keeps(grp.reach, grp.radius);
  }

  // The groups the new center t might reach, into cands_; returns their count.
  // A cell is skipped when d(c', a) >= its bound (with float slack); a member when its
  // anchors reject it; the rest are measured.
  int64_t find_candidates(int64_t t, const T* c_new) {
    int64_t ncand = 0;
    if (t <= kCells) {
      for (int64_t g = 0; g < t; ++g) {
        if (reaches(g, c_new)) cands_[ncand++] = int32_t(g);
      }
      return ncand;
    }
    int64_t nopen = 0;  // groups no anchor rejects, gathered into cands_ first
    for (int64_t a = 0; a < kCells; ++a) {
      Cell& cell = cells_[a];
      if (cell.to_new - cell.bound - 2.0f * kCellSlack * (cell.to_new + cell.bound) >= 0.0f) continue;
      float bound = -kInf32;
      for (int32_t g = cell.head; g >= 0; g = anchors_[g].next) {
        bound = std::max(bound, anchors_[g].dist[0] + groups_[g].limit);
        if (!anchors_reject(g)) cands_[nopen++] = g;
      }
      cell.bound = bound;  // refreshed: radii only shrink
    }
    for (int64_t i = 0; i < std::min(nopen, kAhead); ++i) prefetch_row(center(cands_[i]));
    for (int64_t i = 0; i < nopen; ++i) {
      if (i + kAhead < nopen) prefetch_row(center(cands_[i + kAhead]));
      if (reaches(cands_[i], c_new)) cands_[ncand++] = cands_[i];
    }
    return ncand;
  }

  void add_center(int64_t t, int32_t p) {
    T* c_new = centers_ + t * d_;
    std::memcpy(c_new, point(p), d_ * sizeof(T));
    if (t >= kCells) {
      for (int64_t a = 0; a < kCells; ++a) cells_[a].to_new = float(std::sqrt(squared_distance(center(a), c_new, d_)));
    }

    // The groups the new center might reach give up the points it takes: their entries are
    // partitioned (kept first) and the moved ones appended to its new group at the tail.
    const int64_t ncand = find_candidates(t, c_new);
    groups_[t].start = tail_;
    groups_[t].size = 0;
    Best fresh;
    for (int64_t c = 0; c < ncand; ++c) {
      const int32_t g = cands_[c];
      const double delta_err = set_delta(g, c_new);
      Best kept;
      const int64_t nm = measure(g, c_new, delta_err, kept, fresh);
      if (tail_ + nm > slots_) compact(t);
      const int64_t from = groups_[g].start + groups_[g].size - nm;
      for (int64_t q = 0; q < nm; ++q) move_slot(tail_ + q, from + q);
      tail_ += nm;
      groups_[t].size += nm;
      set_group(g, groups_[g].start, groups_[g].size - nm, kept);
    }
    set_group(t, groups_[t].start, groups_[t].size, fresh);
    join_cell(t);
  }

  // delta_ = c' - center(g) in float32; returns a bound on ||(c' - center(g)) - delta_||.
  double set_delta(int64_t g, const T* c_new) {
    float* row = delta_;
    const T* cg = center(g);
    double sum = 0.0, amax = 0.0;
    for (int64_t j = 0; j < d_; ++j) {
      const double v = double(c_new[j]) - double(cg[j]);
      row[j] = float(v);
      sum += (v - double(row[j])) * (v - double(row[j]));
      amax = std::max(amax, std::fabs(v));
    }
    std::fill(row + d_, row + dq_, 0.0f);
    return std::sqrt(sum) * (1.0 + 1e-9) + amax * double(d_) * std::ldexp(1.0, -50);
  }

  // True when the residual bound proves that the point in `slot` keeps its min distance:
  // ||q - delta|| (less its rounding) >= need + delta_err.
  bool residual_keeps(int64_t slot, double delta_err) const {
    const float s = quantized_distance(qrow(slot), scale_[slot], delta_, dq_);
    const double reach = double(need_[slot]) + delta_err;
    return std::isfinite(s) && reach < kInf && double(s) * bq_.shrink32 - kTiny32 >= reach * reach;
  }

  // Finds the points of group g that move to the new center (new m, residual to it) and
  // partitions the group's entries in place, kept first and moved last; returns how many
  // moved and offers each entry to kept or fresh. Chunk by chunk, the few points the bounds
  // cannot keep are measured in a second pass that prefetches their input rows (random
  // gathers) ahead of use. A moved entry is flagged by a negative index until partitioned.
  int64_t measure(int32_t g, const T* c_new, double delta_err, Best& kept, Best& fresh) {
    const Group& grp = groups_[g];
    int32_t open[kChunk];
    int64_t nm = 0;
    for (int64_t b = grp.start, end = grp.start + grp.size; b < end; b += kChunk) {
      const int64_t e = std::min(end, b + kChunk);
      int64_t nopen = 0;
      for (int64_t q = b; q < e; ++q) {
        const double m = m_[q];
        if (!center_keeps(grp.reach, m) && !residual_keeps(q, delta_err)) {
          open[nopen++] = int32_t(q - b);
        } else {
          kept.offer(m, idx_[q]);
        }
      }
      for (int64_t i = 0; i < std::min(nopen, kAhead); ++i) prefetch_row(point(idx_[b + open[i]]));
      for (int64_t i = 0; i < nopen; ++i) {
        if (i + kAhead < nopen) prefetch_row(point(idx_[b + open[i + kAhead]]));
        const int64_t q = b + open[i];
        const double dx = squared_distance(point(idx_[q]), c_new, d_);
        if (dx < m_[q]) {
          m_[q] = dx;
          quantize_slot(q, c_new);
          fresh.offer(dx, idx_[q]);
          idx_[q] = ~idx_[q];
          ++nm;
        } else {
          kept.offer(m_[q], idx_[q]);
        }
      }
    }
    if (nm > 0) {
      int64_t lo = grp.start, hi = grp.start + grp.size - 1;
      for (;;) {
        while (lo < hi && idx_[lo] >= 0) ++lo;
        while (lo < hi && idx_[hi] < 0) --hi;
        if (lo >= hi) break;
        swap_slots(lo, hi);
      }
      for (int64_t q = grp.start + grp.size - nm; q < grp.start + grp.size; ++q) idx_[q] = ~idx_[q];
    }
    return nm;
  }

  // Packs the groups at the arena's front (their segments are ordered by group id; group t,
  // the one being filled, is last).
  void compact(int64_t t) {
    int64_t w = 0;
    for (int64_t g = 0; g <= t; ++g) {
      const int64_t s = groups_[g].start, z = groups_[g].size;
      std::memmove(idx_ + w, idx_ + s, z * sizeof(int32_t));
      std::memmove(m_ + w, m_ + s, z * sizeof(double));
      std::memmove(scale_ + w, scale_ + s, z * sizeof(float));
      std::memmove(need_ + w, need_ + s, z * sizeof(float));
      std::memmove(qrow(w), qrow(s), z * dq_);
      groups_[g].start = w;
      w += z;
    }
    tail_ = w;
  }

  const T* pts_;
  const int64_t n_, d_, k_, dq_;
  const Bounds bd_, bq_;
  int64_t leaves_, slots_ = 0;
  int64_t tail_ = 0;  // first free arena slot
  // The arena, one entry per slot: point index, m, residual (q, scale, err).
  int32_t* idx_ = nullptr;
  double* m_ = nullptr;
  float *scale_ = nullptr, *need_ = nullptr;
  int8_t* q_ = nullptr;
  T* centers_ = nullptr;  // [k, d], selection order
  Group* groups_ = nullptr;
  Anchors* anchors_ = nullptr;
  Cell* cells_ = nullptr;
  int32_t* cands_ = nullptr;  // this step's candidate groups
  float* delta_ = nullptr;    // [dq]: new center - a candidate's center
  double* tree_r_ = nullptr;  // tournament tree over groups: best (radius, index) per node
  int32_t* tree_i_ = nullptr;
};

}  // namespace

int64_t coreset_workspace_bytes_cpu(PYANOM_PARAMS(PYANOM_CORESET_SIZES) const std::string& dtype) {
  PYANOM_CHECK(n >= 1 && d >= 1, "greedy_coreset: points must be a non-empty [N, D] matrix");
  PYANOM_CHECK(k >= 1 && k <= n, "greedy_coreset: k must be in [1, N]");
  return dispatch_float(dtype, [&](auto zero) {
    return Greedy<decltype(zero)>(nullptr, n, d, k).carve(nullptr);
  });
}

void coreset_cpu(PYANOM_PARAMS(PYANOM_CORESET_ARGS) const std::string& dtype) {
  PYANOM_CHECK(n >= 1 && d >= 1, "greedy_coreset: points must be a non-empty [N, D] matrix");
  PYANOM_CHECK(n <= std::numeric_limits<int32_t>::max(), "greedy_coreset: N must be below 2^31");
  PYANOM_CHECK(k >= 1 && k <= n, "greedy_coreset: k must be in [1, N]");
  PYANOM_CHECK(start >= 0 && start < n, "greedy_coreset: start must be in [0, N)");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    Greedy<T> greedy(as_ptr<const T>(points), n, d, k);
    PYANOM_CHECK(workspace_bytes >= greedy.carve(nullptr), "greedy_coreset: workspace too small");
    greedy.carve(as_ptr<char>(workspace));
    greedy.run(start, as_ptr<int64_t>(out));
  });
}

}  // namespace pyanom
