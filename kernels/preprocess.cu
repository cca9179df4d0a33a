// Per-part cloud preprocessing on the device (SPEC §1, steps 1, 2, 4, 5): plane-distance
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

MIAD_EXTERN void __launch_bounds__(PRE_THREADS)
    preprocess_cloud_f32(const float *__restrict__ cloud, int h, int w, int stride,
                         const float *__restrict__ plane, float plane_dist,
                         const unsigned char *__restrict__ keep, int pad_side, int off_r, int off_c,
                         int out_side, float *__restrict__ pts, int *__restrict__ pix,
                         int *__restrict__ pix_to_point, int *__restrict__ count) {
  __shared__ int warp_sum[PRE_THREADS / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int total = out_side * out_side;
  const int per = (total + blockDim.x - 1) / blockDim.x;
  const int lo = min(total, tid * per), hi = min(total, lo + per);
  const float scale = __fdiv_rn((float)pad_side, (float)out_side);
  float pa = 0.f, pb = 0.f, pcc = 0.f, pd = 0.f;
  if (plane) {
    pa = plane[0];
    pb = plane[1];
    pcc = plane[2];
    pd = plane[3];
  }
  auto valid = [&](int q, float &x, float &y, float &z) -> bool {
    const int r = q / out_side, c = q % out_side;
    const int sr = min((int)floorf(__fmul_rn((float)r, scale)), pad_side - 1) - off_r;
    const int sc = min((int)floorf(__fmul_rn((float)c, scale)), pad_side - 1) - off_c;
    if (sr < 0 || sr >= h || sc < 0 || sc >= w) return false;
    const float *p = cloud + (size_t)sr * stride + 3 * sc;
    x = p[0];
    y = p[1];
    z = p[2];
    // SPEC §1.5-1.6: a point needs all three coordinates non-zero and finite.
    if (x == 0.f || y == 0.f || z == 0.f) return false;
    if (!isfinite(x) || !isfinite(y) || !isfinite(z)) return false;
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
  // Block exclusive scan of cnt.
  int incl = cnt;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
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
  int pos = incl - cnt + (warp > 0 ? warp_sum[warp - 1] : 0);
  if (tid == blockDim.x - 1) *count = pos + cnt;
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
