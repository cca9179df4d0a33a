// Preprocessing on the device (SPEC §1), two parts:
// - preprocess_cloud_f32 (below, PointKernels::preprocess): the cloud steps only, with the
//   plane and the cluster mask given by the host, sizes as launch arguments;
// - the pre_* kernels (after it, DevicePreprocess): the whole preprocessing of a part,
//   RANSAC and clustering included, sizes read from a part header in device memory.
//
// preprocess_cloud_f32: per-part cloud preprocessing (SPEC §1, steps 1, 2, 4, 5): plane-distance
// mask, padding to a square, nearest resize to out_side×out_side, and compaction of the
// valid points in row-major pixel order with their pixel indices (a block prefix sum, so
// the order never depends on scheduling). The RANSAC plane and the cluster mask are
// computed on the CPU (they are inputs here: `plane`, `keep`).
//
// Source pixel of output pixel (r, c) in the padded square: floor(r · scale) with
// scale = (float)pad_side / out_side in f32 (PyTorch's nearest); then minus the padding
// offset; outside the cloud → no point. A point is valid when its three coordinates are
// all non-zero and finite (SPEC §1.5-1.6: M3DM's np.all(pc != 0, axis=1)), its keep
// flag is set (when `keep` is given) and |a·x + b·y + c·z + d| ≥ plane_dist (when `plane`
// is given; ((a·x + b·y) + c·z) + d, no fused multiply-add).
#include "common.cuh"

#define PRE_THREADS 1024

// Exclusive prefix sum of `cnt` over the block (blockDim.x a multiple of 32, at most 1024);
// `total` gets the block's sum. Every thread of the block must call it.
__device__ __forceinline__ int pre_block_scan(int cnt, int *warp_sum, int &total) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int incl = cnt;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  __syncthreads();  // warp_sum may still be read by an earlier call
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    int v = lane < nw ? warp_sum[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int t = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += t;
    }
    if (lane < nw) warp_sum[lane] = v;  // inclusive
  }
  __syncthreads();
  total = warp_sum[(blockDim.x >> 5) - 1];
  return incl - cnt + (warp > 0 ? warp_sum[warp - 1] : 0);
}

// SPEC §1.5–1.6: a point needs all three coordinates non-zero and finite.
__device__ __forceinline__ bool pre_valid(float x, float y, float z) {
  return x != 0.f && y != 0.f && z != 0.f && isfinite(x) && isfinite(y) && isfinite(z);
}

// PyTorch's nearest source index: min(⌊dst · (in/out)⌋, in − 1), ratio in f32.
__device__ __forceinline__ int pre_nearest(int dst, int in, int out) {
  if (in == out) return dst;
  const float scale = __fdiv_rn((float)in, (float)out);
  return min((int)floorf(__fmul_rn((float)dst, scale)), in - 1);
}

MIAD_EXTERN void __launch_bounds__(PRE_THREADS)
    preprocess_cloud_f32(const float *__restrict__ cloud, int h, int w, int stride,
                         const float *__restrict__ plane, float plane_dist,
                         const unsigned char *__restrict__ keep, int pad_side, int off_r, int off_c,
                         int out_side, float *__restrict__ pts, int *__restrict__ pix,
                         int *__restrict__ pix_to_point, int *__restrict__ count) {
  __shared__ int warp_sum[PRE_THREADS / 32];
  const int tid = threadIdx.x;
  const int total = out_side * out_side;
  const int per = (total + blockDim.x - 1) / blockDim.x;
  const int lo = min(total, tid * per), hi = min(total, lo + per);
  float pa = 0.f, pb = 0.f, pcc = 0.f, pd = 0.f;
  if (plane) {
    pa = plane[0];
    pb = plane[1];
    pcc = plane[2];
    pd = plane[3];
  }
  auto valid = [&](int q, float &x, float &y, float &z) -> bool {
    const int sr = pre_nearest(q / out_side, pad_side, out_side) - off_r;
    const int sc = pre_nearest(q % out_side, pad_side, out_side) - off_c;
    if (sr < 0 || sr >= h || sc < 0 || sc >= w) return false;
    const float *p = cloud + (size_t)sr * stride + 3 * sc;
    x = p[0];
    y = p[1];
    z = p[2];
    if (!pre_valid(x, y, z)) return false;
    if (keep && !keep[(size_t)sr * w + sc]) return false;
    if (plane) {
      const float dist =
          fabsf(__fadd_rn(__fadd_rn(__fadd_rn(__fmul_rn(pa, x), __fmul_rn(pb, y)), __fmul_rn(pcc, z)), pd));
      if (dist < plane_dist) return false;
    }
    return true;
  };
  int cnt = 0;
  float x, y, z;
  for (int q = lo; q < hi; ++q) cnt += valid(q, x, y, z) ? 1 : 0;
  int n_valid;
  int pos = pre_block_scan(cnt, warp_sum, n_valid);
  if (tid == 0) *count = n_valid;
  for (int q = lo; q < hi; ++q) {
    if (valid(q, x, y, z)) {
      pts[3 * pos] = x;
      pts[3 * pos + 1] = y;
      pts[3 * pos + 2] = z;
      pix[pos] = q;
      pix_to_point[q] = pos;
      ++pos;
    } else {
      pix_to_point[q] = -1;
    }
  }
}

// ======================================================================================
// The whole preprocessing of one part (runtime/cuda/stages/preprocess.rs, CPU oracle
// pipeline/preprocess.rs `preprocess`). Per-part sizes are read from the part header
// (PreHeader); every grid is sized for the engine's largest part, so one recorded graph
// serves every part. Kernels in launch order (Full mode; AlreadyClean: 1, 2, 11–14):
//   1  pre_reset          PreState ← 0 (one thread)
//   2  pre_load           working cloud (padded, invalid points zeroed), content flags
//                         (any valid point, any non-finite one, image not blank)
//   3  pre_border         the non-zero points of the border frame, raster order
//   4  pre_ransac_hyp     one block per RANSAC hypothesis: the CPU's draws (SplitMix64 at
//                         a computed stream position), least-squares plane, inlier count
//   5  pre_ransac_refit   best hypothesis (most inliers, first on ties); its inliers
//                         gathered in parallel, refitted in one thread (the CPU's
//                         summation order)
//   6  pre_plane_remove   zero points closer than plane_distance; cluster labels ← index
//   7  pre_cluster_merge  union-find over 8-neighbours closer than eps
//   8  pre_cluster_resolve  every point → its root (first pixel); component sizes
//   9  pre_cluster_best   largest component, first root on ties (u64 atomicMax)
//   10 pre_cluster_keep   zero points outside it, or all when below the minimum size
//   11 pre_rgb_coeffs     PIL bicubic tables for this part's working size
//   12 pre_rgb_h          horizontal pass (removed pixels read as 0)
//   13 pre_rgb_v          vertical pass, ImageNet normalisation (zeros without an image)
//   14 pre_compact        nearest resize, compaction, pixel map, count, status word
// Every f64 operation of the plane fit is written with __d*_rn (no contraction), so the
// plane is the CPU's bits.
// ======================================================================================

#define PRE_BLOCK 256
#define PRE_NONE 0xffffffffu

// Why a modality is unusable (Unusable in preprocess.rs; 0: usable). Status word:
// rgb code | cloud code << 8.
#define PRE_MISSING 1
#define PRE_BLANK 2
#define PRE_ALL_ZERO 3
#define PRE_NON_FINITE 4
#define PRE_EMPTY_AFTER_CLEANING 5
#define PRE_TOO_FEW_POINTS 6

// One part's sizes (PartHeader in runtime/cuda/stages/preprocess.rs).
struct PreHeader {
  int width, height;  // input size (1×1 when neither modality is given)
  int rgb_stride;     // bytes between RGB rows
  int cloud_stride;   // floats between cloud rows
  int has_rgb, has_cloud;
  int work_w, work_h;  // padded square (Full) or the input size (AlreadyClean)
  int top, left;       // position of the input in the working image
  int pad0, pad1;
};

// A plane n·p + d = 0 and its inlier count (ok = 0: no plane).
struct PrePlane {
  double n0, n1, n2, d;
  u32 count, ok;
};

// Per-part scratch the kernels share (PreState).
struct PreState {
  u32 any_valid, any_nonfinite, rgb_differs, n_border;
  u32 emptied, pad0;
  u64 best_cluster;  // (size << 32) | (0xffffffff − root), 0: no point
  PrePlane plane;    // the fitted background plane (ok = 0: none removed)
};

__device__ __forceinline__ bool pre_nonzero(const float *p) {
  return p[0] != 0.f || p[1] != 0.f || p[2] != 0.f;
}

// |n·p + d| in f64, ((n0 x + n1 y) + n2 z) + d (preprocess.rs `plane_dist`).
__device__ __forceinline__ double pre_plane_dist(const PrePlane &pl, const float *p) {
  return fabs(__dadd_rn(__dadd_rn(__dadd_rn(__dmul_rn(pl.n0, (double)p[0]),
                                            __dmul_rn(pl.n1, (double)p[1])),
                                  __dmul_rn(pl.n2, (double)p[2])),
                        pl.d));
}

// ---- SplitMix64 (util/rng.rs): the m-th output (0-based) of Rng::new(seed) is a pure
// function of m, so every hypothesis finds its draws without the ones before it.
__device__ __forceinline__ u64 pre_rng_at(u64 seed, u64 m) {
  const u64 golden = 0x9E3779B97F4A7C15ull;
  u64 z = (seed ^ golden) + (m + 1) * golden;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// High 64 bits of a · b (Rng::below: ((x as u128 · n) >> 64)).
__device__ __forceinline__ u64 pre_mul_hi(u64 a, u64 b) {
  const u64 a_lo = a & 0xffffffffull, a_hi = a >> 32;
  const u64 b_lo = b & 0xffffffffull, b_hi = b >> 32;
  const u64 lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const u64 cross = (lo_lo >> 32) + (hi_lo & 0xffffffffull) + lo_hi;
  return hi_hi + (hi_lo >> 32) + (cross >> 32);
}

// ---- Jacobi eigen-decomposition of a symmetric 3×3 (util/linalg.rs symmetric_eigen3), the
// same rotations in the same order. Returns the eigenvector of the smallest eigenvalue
// (first on ties) in v0..v2.
__device__ __forceinline__ void pre_rotate(double m[3][3], double v[3][3], const int p, const int q) {
  if (m[p][q] == 0.0) return;
  const double theta = __ddiv_rn(__dsub_rn(m[q][q], m[p][p]), __dmul_rn(2.0, m[p][q]));
  double t = __ddiv_rn(copysign(1.0, theta),
                       __dadd_rn(fabs(theta), __dsqrt_rn(__dadd_rn(__dmul_rn(theta, theta), 1.0))));
  if (theta == 0.0) t = 1.0;
  const double c = __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(__dmul_rn(t, t), 1.0)));
  const double s = __dmul_rn(t, c);
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const double mkp = m[k][p], mkq = m[k][q];
    m[k][p] = __dsub_rn(__dmul_rn(c, mkp), __dmul_rn(s, mkq));
    m[k][q] = __dadd_rn(__dmul_rn(s, mkp), __dmul_rn(c, mkq));
  }
  double rp[3], rq[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    rp[k] = m[p][k];
    rq[k] = m[q][k];
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    m[p][k] = __dsub_rn(__dmul_rn(c, rp[k]), __dmul_rn(s, rq[k]));
    m[q][k] = __dadd_rn(__dmul_rn(s, rp[k]), __dmul_rn(c, rq[k]));
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const double vp = v[k][p], vq = v[k][q];
    v[k][p] = __dsub_rn(__dmul_rn(c, vp), __dmul_rn(s, vq));
    v[k][q] = __dadd_rn(__dmul_rn(s, vp), __dmul_rn(c, vq));
  }
}

__device__ __forceinline__ void pre_smallest_eigenvector(double m[3][3], double &v0, double &v1,
                                                     double &v2) {
  double v[3][3] = {{1.0, 0.0, 0.0}, {0.0, 1.0, 0.0}, {0.0, 0.0, 1.0}};
  double sq = 0.0;
#pragma unroll
  for (int r = 0; r < 3; ++r)
#pragma unroll
    for (int c = 0; c < 3; ++c) sq = __dadd_rn(sq, __dmul_rn(m[r][c], m[r][c]));
  const double scale = __dsqrt_rn(sq);
  const double eps = 2.220446049250313e-16;  // f64::EPSILON
  for (int sweep = 0; sweep < 50; ++sweep) {
    const double off = __dadd_rn(__dadd_rn(__dmul_rn(m[0][1], m[0][1]), __dmul_rn(m[0][2], m[0][2])),
                                 __dmul_rn(m[1][2], m[1][2]));
    if (__dsqrt_rn(off) <= __dmul_rn(__dmul_rn(eps, scale), 1e-3) || off == 0.0) break;
    pre_rotate(m, v, 0, 1);
    pre_rotate(m, v, 0, 2);
    pre_rotate(m, v, 1, 2);
  }
  int best = 0;
  double val = __longlong_as_double(0x7ff0000000000000ll);  // +inf
#pragma unroll
  for (int i = 0; i < 3; ++i)
    if (m[i][i] < val) {
      val = m[i][i];
      best = i;
    }
  // Column `best` of v.
  v0 = best == 0 ? v[0][0] : best == 1 ? v[0][1] : v[0][2];
  v1 = best == 0 ? v[1][0] : best == 1 ? v[1][1] : v[1][2];
  v2 = best == 0 ? v[2][0] : best == 1 ? v[2][1] : v[2][2];
}

// Least-squares plane of the points `each` visits (preprocess.rs `fit_plane`): `each(f)`
// calls f(p) for every point p (3 floats) in order; it is called twice (mean, then
// covariance). False (no plane) below 3 points or for a degenerate normal.
template <class Each>
__device__ __forceinline__ bool pre_fit_plane(Each each, PrePlane &pl) {
  double m0 = 0.0, m1 = 0.0, m2 = 0.0;
  long long k = 0;
  each([&](const float *p) {
    m0 = __dadd_rn(m0, (double)p[0]);
    m1 = __dadd_rn(m1, (double)p[1]);
    m2 = __dadd_rn(m2, (double)p[2]);
    ++k;
  });
  if (k < 3) return false;
  const double kd = (double)k;
  m0 = __ddiv_rn(m0, kd);
  m1 = __ddiv_rn(m1, kd);
  m2 = __ddiv_rn(m2, kd);
  double c00 = 0.0, c01 = 0.0, c02 = 0.0, c11 = 0.0, c12 = 0.0, c22 = 0.0;
  each([&](const float *p) {
    const double d0 = __dsub_rn((double)p[0], m0), d1 = __dsub_rn((double)p[1], m1),
                 d2 = __dsub_rn((double)p[2], m2);
    c00 = __dadd_rn(c00, __dmul_rn(d0, d0));
    c01 = __dadd_rn(c01, __dmul_rn(d0, d1));
    c02 = __dadd_rn(c02, __dmul_rn(d0, d2));
    c11 = __dadd_rn(c11, __dmul_rn(d1, d1));
    c12 = __dadd_rn(c12, __dmul_rn(d1, d2));
    c22 = __dadd_rn(c22, __dmul_rn(d2, d2));
  });
  // d[r]·d[c] = d[c]·d[r] exactly: the CPU's lower triangle holds the same sums.
  double cov[3][3] = {{c00, c01, c02}, {c01, c11, c12}, {c02, c12, c22}};
  double n0, n1, n2;
  pre_smallest_eigenvector(cov, n0, n1, n2);
  const double norm =
      __dsqrt_rn(__dadd_rn(__dadd_rn(__dmul_rn(n0, n0), __dmul_rn(n1, n1)), __dmul_rn(n2, n2)));
  if (!(norm > 0.0 && isfinite(norm))) return false;
  pl.n0 = __ddiv_rn(n0, norm);
  pl.n1 = __ddiv_rn(n1, norm);
  pl.n2 = __ddiv_rn(n2, norm);
  pl.d = -__dadd_rn(__dadd_rn(__dmul_rn(pl.n0, m0), __dmul_rn(pl.n1, m1)), __dmul_rn(pl.n2, m2));
  return true;
}

// Pixel i of the working image as (row, column) of the input (may be outside it).
__device__ __forceinline__ void pre_source(const PreHeader &hd, int i, int &sr, int &sc) {
  sr = i / hd.work_w - hd.top;
  sc = i % hd.work_w - hd.left;
}

__device__ __forceinline__ bool pre_inside(const PreHeader &hd, int sr, int sc) {
  return sr >= 0 && sr < hd.height && sc >= 0 && sc < hd.width;
}

// 1. grid: 1 × 1.
MIAD_EXTERN void pre_reset(PreState *__restrict__ st) {
  PreState z;
  z.any_valid = z.any_nonfinite = z.rgb_differs = z.n_border = 0;
  z.emptied = z.pad0 = 0;
  z.best_cluster = 0;
  z.plane.n0 = z.plane.n1 = z.plane.n2 = z.plane.d = 0.0;
  z.plane.count = z.plane.ok = 0;
  *st = z;
}

// 2. grid: ceil(max working pixels / PRE_BLOCK) × PRE_BLOCK.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_load(const PreHeader *__restrict__ header, const float *__restrict__ cloud,
             const unsigned char *__restrict__ rgb, float *__restrict__ wcloud,
             PreState *__restrict__ st) {
  const PreHeader hd = *header;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  bool valid = false, nonfinite = false, differs = false;
  if (i < hd.work_w * hd.work_h) {
    int sr, sc;
    pre_source(hd, i, sr, sc);
    const bool inside = pre_inside(hd, sr, sc);
    float x = 0.f, y = 0.f, z = 0.f;
    if (inside && hd.has_cloud) {
      const float *p = cloud + (long long)sr * hd.cloud_stride + 3 * sc;
      x = p[0];
      y = p[1];
      z = p[2];
      nonfinite = !isfinite(x) || !isfinite(y) || !isfinite(z);
      valid = pre_valid(x, y, z);
      // SPEC §1.5–1.6: from here on "no point" is (0, 0, 0) in every step.
      if (!valid) x = y = z = 0.f;
    }
    float *w = wcloud + 3 * (long long)i;
    w[0] = x;
    w[1] = y;
    w[2] = z;
    if (inside && hd.has_rgb) {
      const unsigned char *q = rgb + (long long)sr * hd.rgb_stride + 3 * sc;
      differs = q[0] != rgb[0] || q[1] != rgb[1] || q[2] != rgb[2];
    }
  }
  // One atomic per warp and flag (the grid is whole warps).
  const bool lead = (threadIdx.x & 31) == 0;
  if (__any_sync(0xffffffffu, valid) && lead) atomicOr(&st->any_valid, 1u);
  if (__any_sync(0xffffffffu, nonfinite) && lead) atomicOr(&st->any_nonfinite, 1u);
  if (__any_sync(0xffffffffu, differs) && lead) atomicOr(&st->rgb_differs, 1u);
}

// The f-th pixel of the `b`-pixel frame of a w × h image, raster order (the CPU's test
// r < b || c < b || r + b >= h || c + b >= w); returns the frame size when f < 0.
__device__ __forceinline__ int pre_frame(int w, int h, int b, int f, int &r, int &c) {
  const int tb = min(b, h);             // top band rows
  const int bs = max(h - b, tb);        // first bottom band row
  const int lc = min(b, w);             // left columns of a middle row
  const int rs = max(w - b, lc);        // first right column of a middle row
  const int per_mid = lc + (w - rs);
  const int top_n = tb * w, mid_n = (bs - tb) * per_mid;
  if (f < 0) return top_n + mid_n + (h - bs) * w;
  if (f < top_n) {
    r = f / w;
    c = f % w;
  } else if (f < top_n + mid_n) {
    const int g = f - top_n, k = g % per_mid;
    r = tb + g / per_mid;
    c = k < lc ? k : rs + (k - lc);
  } else {
    const int g = f - top_n - mid_n;
    r = bs + g / w;
    c = g % w;
  }
  return 0;
}

// 3. grid: 1 × PRE_THREADS. border[0..n_border) = working-pixel indices of the frame's
// non-zero points, raster order of the input.
MIAD_EXTERN void __launch_bounds__(PRE_THREADS)
    pre_border(const PreHeader *__restrict__ header, int border_px,
               const float *__restrict__ wcloud, int *__restrict__ border,
               PreState *__restrict__ st) {
  __shared__ int warp_sum[PRE_THREADS / 32];
  const PreHeader hd = *header;
  int r, c;
  const int total = pre_frame(hd.width, hd.height, border_px, -1, r, c);
  const int per = (total + blockDim.x - 1) / blockDim.x;
  const int lo = min(total, (int)threadIdx.x * per), hi = min(total, lo + per);
  auto point_at = [&](int f) -> int {
    pre_frame(hd.width, hd.height, border_px, f, r, c);
    const int i = (r + hd.top) * hd.work_w + c + hd.left;
    return pre_nonzero(wcloud + 3 * (long long)i) ? i : -1;
  };
  int cnt = 0;
  for (int f = lo; f < hi; ++f) cnt += point_at(f) >= 0;
  int n;
  int pos = pre_block_scan(cnt, warp_sum, n);
  for (int f = lo; f < hi; ++f) {
    const int i = point_at(f);
    if (i >= 0) border[pos++] = i;
  }
  if (threadIdx.x == 0) st->n_border = (u32)n;
}

// 4. grid: iterations × PRE_BLOCK. Hypothesis h: `draws` points drawn with replacement by
// Rng::below(n_border) at stream positions h·draws … h·draws + draws − 1, their plane,
// and its inliers (|distance| < threshold) among the frame's points.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_ransac_hyp(const float *__restrict__ wcloud, const int *__restrict__ border,
                   const PreState *__restrict__ st, u64 seed, int draws, float threshold,
                   PrePlane *__restrict__ hyps) {
  __shared__ PrePlane pl;
  __shared__ u32 inliers;
  const u32 nb = st->n_border;
  const int h = blockIdx.x;
  if (threadIdx.x == 0) {
    pl.ok = 0;
    inliers = 0;
    if (nb >= 3) {
      const u64 first = (u64)h * (u64)draws;
      PrePlane fit;
      const bool ok = pre_fit_plane(
          [&](auto f) {
            for (int j = 0; j < draws; ++j) {
              const u64 k = pre_mul_hi(pre_rng_at(seed, first + (u64)j), (u64)nb);
              f(wcloud + 3 * (long long)border[k]);
            }
          },
          fit);
      if (ok) {
        pl = fit;
        pl.ok = 1;
      }
    }
  }
  __syncthreads();
  if (pl.ok) {
    const double thr = (double)threshold;
    u32 mine = 0;
    for (u32 j = threadIdx.x; j < nb; j += blockDim.x)
      mine += pre_plane_dist(pl, wcloud + 3 * (long long)border[j]) < thr;
    atomicAdd(&inliers, mine);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    PrePlane out = pl;
    out.count = pl.ok ? inliers : 0;
    hyps[h] = out;
  }
}

// 5. grid: 1 × PRE_THREADS. The hypothesis with the most inliers (> 0; first on ties),
// refitted on its inliers in frame order (its own plane when the refit fails). The
// inliers are gathered in parallel into `inliers` (3 floats each, frame order); the fit
// sums them in one thread, in the CPU's order.
MIAD_EXTERN void __launch_bounds__(PRE_THREADS)
    pre_ransac_refit(const float *__restrict__ wcloud, const int *__restrict__ border,
                     const PrePlane *__restrict__ hyps, int iterations, float threshold,
                     float *__restrict__ inliers, PreState *__restrict__ st) {
  __shared__ u64 best;
  __shared__ int warp_sum[PRE_THREADS / 32];
  if (threadIdx.x == 0) best = 0;
  __syncthreads();
  u64 mine = 0;
  for (int h = threadIdx.x; h < iterations; h += blockDim.x) {
    const PrePlane p = hyps[h];
    const u64 key = ((u64)p.count << 32) | (u64)(0xffffffffu - (u32)h);
    if (p.ok && p.count > 0 && key > mine) mine = key;
  }
  atomicMax(&best, mine);
  __syncthreads();
  const u64 chosen = best;
  if (chosen == 0) {
    if (threadIdx.x == 0) {
      PrePlane none;
      none.n0 = none.n1 = none.n2 = none.d = 0.0;
      none.count = none.ok = 0;
      st->plane = none;
    }
    return;
  }
  const PrePlane hyp = hyps[0xffffffffu - (u32)(chosen & 0xffffffffull)];
  const int nb = (int)st->n_border;
  const double thr = (double)threshold;
  const int per = (nb + blockDim.x - 1) / blockDim.x;
  const int lo = min(nb, (int)threadIdx.x * per), hi = min(nb, lo + per);
  auto at = [&](int j) { return wcloud + 3 * (long long)border[j]; };
  int cnt = 0;
  for (int j = lo; j < hi; ++j) cnt += pre_plane_dist(hyp, at(j)) < thr;
  int k;
  int pos = pre_block_scan(cnt, warp_sum, k);
  for (int j = lo; j < hi; ++j) {
    const float *p = at(j);
    if (pre_plane_dist(hyp, p) < thr) {
      inliers[3 * pos] = p[0];
      inliers[3 * pos + 1] = p[1];
      inliers[3 * pos + 2] = p[2];
      ++pos;
    }
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  PrePlane plane = hyp;
  PrePlane fit;
  if (pre_fit_plane(
          [&](auto f) {
            for (int j = 0; j < k; ++j) f(inliers + 3 * j);
          },
          fit)) {
    plane.n0 = fit.n0;
    plane.n1 = fit.n1;
    plane.n2 = fit.n2;
    plane.d = fit.d;
  }
  plane.ok = 1;
  st->plane = plane;
}

// 6. grid: ceil(max working pixels / PRE_BLOCK). Zeroes points closer than `distance` to
// the plane; labels ← own index for the remaining points (PRE_NONE elsewhere); sizes ← 0.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_plane_remove(const PreHeader *__restrict__ header, const PreState *__restrict__ st,
                     float distance, float *__restrict__ wcloud, u32 *__restrict__ labels,
                     u32 *__restrict__ sizes) {
  const PreHeader hd = *header;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd.work_w * hd.work_h) return;
  float *p = wcloud + 3 * (long long)i;
  bool point = pre_nonzero(p);
  if (point && st->plane.ok && pre_plane_dist(st->plane, p) < (double)distance) {
    p[0] = p[1] = p[2] = 0.f;
    point = false;
  }
  labels[i] = point ? (u32)i : PRE_NONE;
  sizes[i] = 0;
}

// 7. grid: as 6. Unites each point with its W, NW, N, NE neighbours closer than eps
// (squared distance `eps2`, miad_sq_dist as cpu::point_kdtree::sq_dist).
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_cluster_merge(const PreHeader *__restrict__ header, const float *__restrict__ wcloud,
                      float eps2, u32 *__restrict__ labels) {
  const PreHeader hd = *header;
  const int w = hd.work_w;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= w * hd.work_h) return;
  const volatile u32 *V = labels;
  if (V[i] == PRE_NONE) return;
  const int y = i / w, x = i % w;
  const float *p = wcloud + 3 * (long long)i;
  auto link = [&](int j) {
    if (V[j] == PRE_NONE) return;
    const float *q = wcloud + 3 * (long long)j;
    if (miad_sq_dist(q[0], q[1], q[2], p[0], p[1], p[2]) < eps2)
      miad_uf_unite(labels, (u32)i, (u32)j);
  };
  if (x > 0) link(i - 1);
  if (y > 0) {
    if (x > 0) link(i - w - 1);
    link(i - w);
    if (x + 1 < w) link(i - w + 1);
  }
}

// 8. grid: as 6. labels[i] ← root; sizes[root] += 1.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_cluster_resolve(const PreHeader *__restrict__ header, u32 *__restrict__ labels,
                        u32 *__restrict__ sizes) {
  const PreHeader hd = *header;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd.work_w * hd.work_h) return;
  if (((const volatile u32 *)labels)[i] == PRE_NONE) return;
  const u32 root = miad_uf_find((const volatile u32 *)labels, (u32)i);
  labels[i] = root;
  atomicAdd(sizes + root, 1u);
}

// 9. grid: as 6. best_cluster ← max over roots of (size << 32) | (0xffffffff − root).
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_cluster_best(const PreHeader *__restrict__ header, const u32 *__restrict__ sizes,
                     PreState *__restrict__ st) {
  const PreHeader hd = *header;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd.work_w * hd.work_h) return;
  const u32 n = sizes[i];
  if (n > 0) atomicMax(&st->best_cluster, ((u64)n << 32) | (u64)(0xffffffffu - (u32)i));
}

// 10. grid: as 6. Keeps the largest cluster when it has at least `min_points` points, else
// empties the cloud (emptied ← 1).
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_cluster_keep(const PreHeader *__restrict__ header, const u32 *__restrict__ labels,
                     int min_points, float *__restrict__ wcloud, PreState *__restrict__ st) {
  const PreHeader hd = *header;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd.work_w * hd.work_h) return;
  const u64 best = st->best_cluster;
  const u32 size = (u32)(best >> 32), root = 0xffffffffu - (u32)(best & 0xffffffffull);
  const bool kept = size > 0 && size >= (u32)min_points;
  if (!kept && i == 0) st->emptied = 1;
  if (!kept || labels[i] != root) {
    float *p = wcloud + 3 * (long long)i;
    p[0] = p[1] = p[2] = 0.f;
  }
}

// 11. grid: ceil(out / PRE_BLOCK) × 2 (y: 0 = x axis, 1 = y axis). Tables for the part's
// working size → out.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_rgb_coeffs(const PreHeader *__restrict__ header, int out, int taps,
                   int *__restrict__ first_x, float *__restrict__ w_x, int *__restrict__ first_y,
                   float *__restrict__ w_y) {
  const int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= out) return;
  const bool axis_x = blockIdx.y == 0;
  miad_pil_coeffs_row(axis_x ? header->work_w : header->work_h, out, taps, o,
                      axis_x ? first_x : first_y, axis_x ? w_x : w_y);
}

// 12. grid: ceil(max working rows · out / PRE_BLOCK). Horizontal pass over the working
// image (the input at (top, left), zeros around); with `clean` (Full mode), a pixel whose
// input point was valid and is now gone reads as 0, when the cloud stayed usable.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_rgb_h(const PreHeader *__restrict__ header, const unsigned char *__restrict__ rgb,
              const float *__restrict__ cloud, const float *__restrict__ wcloud,
              const PreState *__restrict__ st, int clean, int out, int taps,
              const int *__restrict__ first_x, const float *__restrict__ w_x,
              float *__restrict__ tmp) {
  const PreHeader hd = *header;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)hd.work_h * out) return;
  const int y = (int)(i / out), ox = (int)(i % out);
  const int sy = y - hd.top;
  const bool row_in = hd.has_rgb && sy >= 0 && sy < hd.height;
  const bool zeroing = clean && hd.has_cloud && st->any_valid && !st->emptied;
  float acc[3];
  miad_pil_taps(first_x[ox], w_x + (long long)ox * taps, taps, hd.work_w,
                [&](int x, float p[3]) {
                  const int sx = x - hd.left;
                  p[0] = p[1] = p[2] = 0.f;
                  if (!row_in || sx < 0 || sx >= hd.width) return;
                  if (zeroing) {
                    const float *c = cloud + (long long)sy * hd.cloud_stride + 3 * sx;
                    const float *k = wcloud + 3 * ((long long)y * hd.work_w + x);
                    if (pre_valid(c[0], c[1], c[2]) && !pre_nonzero(k)) return;
                  }
                  const unsigned char *q = rgb + (long long)sy * hd.rgb_stride + 3 * sx;
                  p[0] = (float)q[0];
                  p[1] = (float)q[1];
                  p[2] = (float)q[2];
                },
                acc);
  float *o = tmp + 3 * i;
  o[0] = miad_pil_u8(acc[0]);
  o[1] = miad_pil_u8(acc[1]);
  o[2] = miad_pil_u8(acc[2]);
}

// 13. grid: ceil(out² / PRE_BLOCK). Vertical pass, 8-bit store, (v/255 − mean)/std, CHW;
// zeros when the part has no image.
MIAD_EXTERN void __launch_bounds__(PRE_BLOCK)
    pre_rgb_v(const PreHeader *__restrict__ header, const float *__restrict__ tmp, int out,
              int taps, const int *__restrict__ first_y, const float *__restrict__ w_y, float m0,
              float m1, float m2, float s0, float s1, float s2, float *__restrict__ dst) {
  const long long plane = (long long)out * out;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= plane) return;
  if (!header->has_rgb) {
    dst[i] = dst[plane + i] = dst[2 * plane + i] = 0.f;
    return;
  }
  const int oy = (int)(i / out), ox = (int)(i % out);
  float acc[3];
  miad_pil_taps(first_y[oy], w_y + (long long)oy * taps, taps, header->work_h,
                [&](int y, float p[3]) {
                  const float *q = tmp + 3 * ((long long)y * out + ox);
                  p[0] = q[0];
                  p[1] = q[1];
                  p[2] = q[2];
                },
                acc);
  dst[i] = miad_imagenet_norm(acc[0], m0, s0);
  dst[plane + i] = miad_imagenet_norm(acc[1], m1, s1);
  dst[2 * plane + i] = miad_imagenet_norm(acc[2], m2, s2);
}

// 14. grid: 1 × PRE_THREADS. Nearest resize of the working cloud to out × out, the non-zero
// pixels compacted in raster order (points, pixel indices, pixel → point map, count), and
// the status word. An unusable cloud leaves count 0 and a map of −1.
MIAD_EXTERN void __launch_bounds__(PRE_THREADS)
    pre_compact(const PreHeader *__restrict__ header, const float *__restrict__ wcloud,
                const PreState *__restrict__ st, int out, int min_points,
                float *__restrict__ pts, int *__restrict__ pix, int *__restrict__ pixel_map,
                int *__restrict__ count, u32 *__restrict__ status) {
  __shared__ int warp_sum[PRE_THREADS / 32];
  const PreHeader hd = *header;
  const int total = out * out;
  const int per = (total + blockDim.x - 1) / blockDim.x;
  const int lo = min(total, (int)threadIdx.x * per), hi = min(total, lo + per);
  auto source = [&](int q) -> const float * {
    const int sy = pre_nearest(q / out, hd.work_h, out);
    const int sx = pre_nearest(q % out, hd.work_w, out);
    return wcloud + 3 * ((long long)sy * hd.work_w + sx);
  };
  int cnt = 0;
  for (int q = lo; q < hi; ++q) cnt += pre_nonzero(source(q));
  int n;
  int pos = pre_block_scan(cnt, warp_sum, n);
  u32 cloud_code = 0;
  if (!hd.has_cloud)
    cloud_code = PRE_MISSING;
  else if (!st->any_valid)
    cloud_code = st->any_nonfinite ? PRE_NON_FINITE : PRE_ALL_ZERO;
  else if (st->emptied)
    cloud_code = PRE_EMPTY_AFTER_CLEANING;
  else if (n < max(min_points, 1))
    cloud_code = PRE_TOO_FEW_POINTS;
  const u32 rgb_code = !hd.has_rgb ? PRE_MISSING : !st->rgb_differs ? PRE_BLANK : 0u;
  const bool usable = cloud_code == 0;
  for (int q = lo; q < hi; ++q) {
    const float *p = source(q);
    if (usable && pre_nonzero(p)) {
      pts[3 * pos] = p[0];
      pts[3 * pos + 1] = p[1];
      pts[3 * pos + 2] = p[2];
      pix[pos] = q;
      pixel_map[q] = pos;
      ++pos;
    } else {
      pixel_map[q] = -1;
    }
  }
  if (threadIdx.x == 0) {
    *count = usable ? n : 0;
    *status = rgb_code | (cloud_code << 8);
  }
}
