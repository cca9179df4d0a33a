// Point feature alignment (SPEC §4): group features → the xyz patch grid.
//
// pfa_nn3_f32: for every point, its 3 nearest centers (squared distance in miad_sq_dist
//   order, ties to the lowest center index) and weights w_k = 1/(d_k + 1e-8) / Σ.
// pfa_project_f32: one block per grid cell. The cell's value is a fixed linear combination
//   of the points in its receptive field on the side×side map (3×3 average pooling, then
//   adaptive average pooling): coef(q) = cy·cx / (9·area). The block lists (center,
//   coef·w) pairs of its field in shared memory (fixed slots: deterministic), then each
//   thread sums its channels over the list. The 224×224×F map is never formed.
#include "common.cuh"

// pts: n×3 (n = *n_ptr); centers: m×3 (dynamic shared memory m·12 bytes).
MIAD_EXTERN void pfa_nn3_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr,
                             const float *__restrict__ centers, int m, int *__restrict__ nn_idx,
                             float *__restrict__ nn_w) {
  extern __shared__ float pfa_c[];
  for (int i = threadIdx.x; i < 3 * m; i += blockDim.x) pfa_c[i] = centers[i];
  __syncthreads();
  const int n = *n_ptr;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const float x = pts[3 * j], y = pts[3 * j + 1], z = pts[3 * j + 2];
  const float inf = __int_as_float(0x7f800000);
  float d0 = inf, d1 = inf, d2 = inf;
  int i0 = 0, i1 = 0, i2 = 0;
  for (int c = 0; c < m; ++c) {
    const float d = miad_sq_dist(x, y, z, pfa_c[3 * c], pfa_c[3 * c + 1], pfa_c[3 * c + 2]);
    if (d < d2) {
      if (d < d1) {
        d2 = d1;
        i2 = i1;
        if (d < d0) {
          d1 = d0;
          i1 = i0;
          d0 = d;
          i0 = c;
        } else {
          d1 = d;
          i1 = c;
        }
      } else {
        d2 = d;
        i2 = c;
      }
    }
  }
  const float w0 = __frcp_rn(d0 + 1e-8f), w1 = __frcp_rn(d1 + 1e-8f), w2 = __frcp_rn(d2 + 1e-8f);
  const float s = (w0 + w1) + w2;
  nn_idx[3 * j] = i0;
  nn_idx[3 * j + 1] = i1;
  nn_idx[3 * j + 2] = i2;
  nn_w[3 * j] = __fdiv_rn(w0, s);
  nn_w[3 * j + 1] = __fdiv_rn(w1, s);
  nn_w[3 * j + 2] = __fdiv_rn(w2, s);
}

// pix_to_point: side×side (point index or −1); g: m×f group features; out: grid²×f.
// Dynamic shared memory: 3·field² (int + float), field = ceil((side−2)/grid) + 3.
MIAD_EXTERN void pfa_project_f32(const int *__restrict__ pix_to_point, const int *__restrict__ nn_idx,
                                 const float *__restrict__ nn_w, const float *__restrict__ g, int f,
                                 int side, int grid, int field, float *__restrict__ out) {
  extern __shared__ float pfa_s[];
  const int cap = 3 * field * field;
  float *cw = pfa_s;
  int *ci = (int *)(pfa_s + cap);
  const int cell = blockIdx.x, gi = cell / grid, gj = cell % grid;
  const int pooled = side - 2;
  const int r0 = (gi * pooled) / grid, r1 = ((gi + 1) * pooled + grid - 1) / grid;
  const int c0 = (gj * pooled) / grid, c1 = ((gj + 1) * pooled + grid - 1) / grid;
  const int fh = r1 - r0 + 2, fw = c1 - c0 + 2;
  const float inv = 1.0f / (9.0f * (float)((r1 - r0) * (c1 - c0)));
  for (int q = threadIdx.x; q < field * field; q += blockDim.x) {
    const int qy = q / field, qx = q % field;
    float coef = 0.f;
    int pt = -1;
    if (qy < fh && qx < fw) {
      const int y = r0 + qy, xx = c0 + qx;
      // 3×3 windows (top-left r in [r0, r1)) that cover row y: r in [y−2, y].
      const int cy = min(y, r1 - 1) - max(y - 2, r0) + 1;
      const int cx = min(xx, c1 - 1) - max(xx - 2, c0) + 1;
      if (cy > 0 && cx > 0) {
        pt = pix_to_point[y * side + xx];
        coef = (float)(cy * cx) * inv;
      }
    }
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      ci[3 * q + k] = pt >= 0 ? nn_idx[3 * pt + k] : 0;
      cw[3 * q + k] = pt >= 0 ? coef * nn_w[3 * pt + k] : 0.f;
    }
  }
  __syncthreads();
  const int used = 3 * field * field;
  for (int c = threadIdx.x; c < f; c += blockDim.x) {
    float acc = 0.f;
    for (int e = 0; e < used; ++e) {
      const float w = cw[e];
      if (w != 0.f) acc = fmaf(w, __ldg(g + (size_t)ci[e] * f + c), acc);
    }
    out[(size_t)cell * f + c] = acc;
  }
}
