// Training of RADAR's adaptive instruction fusion on the device (docs/RADAR-FUSION.md §9b,
// the CPU's cpu::radar_fusion backward): the steps between the products of the token
// transformer's and the branches' backward passes that UFF's training (train.cu) does not
// have (the column sums and LayerNorm parameter gradients, accumulating, are train.cu's).
// Sums that the CPU runs in row order run in row order here (one thread per row or
// column), so those kernels are bitwise the CPU's; the softmax kernels reduce a row in a
// fixed tree (deterministic, within a stated tolerance of the CPU's sequential sums).
//   layernorm_stats_f32        u = (x - mean)/sigma, rstd = 1/sigma, out = u gamma + beta
//                              (one thread per row, the CPU's ln_forward order)
//   layernorm_backward_f32     dx += rstd (da gamma - mean(da gamma) - u mean(da gamma u))
//   softmax_rows_f32           per row of a square logits matrix (heads stacked): p =
//                              softmax(scale s) over the row's group (eq. 7's mask: with
//                              split > 0 rows < split see columns < split, the others the
//                              rest; exact zeros elsewhere), one block per row
//   softmax_backward_f32       ds = p (ds - sum(ds p)) scale, one block per row, in place
//   scale_backward_f32         the generated scales, y = z (.) s (gelu 0) or y = gelu(z (.) s)
//                              (gelu 1): pre = dy (times gelu'(z s)), ds[c] += sum_rows
//                              pre z, dy = pre s (one thread per column, rows in order)
//   gather_rows_f32            dst[i] = src[idx[i]] (rows of `cols` floats)
//   scatter_add_rows_f32       dst[t] += sum over i with idx[i] = t of src[i], i in order
//   add_row_scaled_f32         dst[r] += v * scale for every row (the token mean's gradient)
#include "common.cuh"

#define TRR_THREADS 256

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ long long trr_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    layernorm_stats_f32(const float *__restrict__ x, int rows, int cols,
                        const float *__restrict__ gamma, const float *__restrict__ beta, float eps,
                        float *__restrict__ u, float *__restrict__ rstd, float *__restrict__ out) {
  const long long r = trr_index();
  if (r >= rows) return;
  const float *xr = x + r * cols;
  float sum = 0.f;
  for (int c = 0; c < cols; ++c) sum = __fadd_rn(sum, xr[c]);
  const float mean = __fdiv_rn(sum, (float)cols);
  float var = 0.f;
  for (int c = 0; c < cols; ++c) {
    const float d = __fsub_rn(xr[c], mean);
    var = __fadd_rn(var, __fmul_rn(d, d));
  }
  var = __fdiv_rn(var, (float)cols);
  const float rs = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(var, eps)));
  rstd[r] = rs;
  float *ur = u + r * cols, *orow = out + r * cols;
  for (int c = 0; c < cols; ++c) {
    const float uc = __fmul_rn(__fsub_rn(xr[c], mean), rs);
    ur[c] = uc;
    orow[c] = __fadd_rn(__fmul_rn(uc, gamma[c]), beta[c]);
  }
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    layernorm_backward_f32(const float *__restrict__ da, const float *__restrict__ u,
                           const float *__restrict__ rstd, const float *__restrict__ gamma,
                           int rows, int cols, float *__restrict__ dx) {
  const long long r = trr_index();
  if (r >= rows) return;
  const float *dar = da + r * cols, *ur = u + r * cols;
  float mean_g = 0.f, mean_gu = 0.f;
  for (int c = 0; c < cols; ++c) {
    const float gi = __fmul_rn(dar[c], gamma[c]);
    mean_g = __fadd_rn(mean_g, gi);
    mean_gu = __fadd_rn(mean_gu, __fmul_rn(gi, ur[c]));
  }
  mean_g = __fdiv_rn(mean_g, (float)cols);
  mean_gu = __fdiv_rn(mean_gu, (float)cols);
  const float rs = rstd[r];
  float *dxr = dx + r * cols;
  for (int c = 0; c < cols; ++c) {
    const float t = __fsub_rn(__fsub_rn(__fmul_rn(dar[c], gamma[c]), mean_g),
                              __fmul_rn(ur[c], mean_gu));
    dxr[c] = __fadd_rn(dxr[c], __fmul_rn(rs, t));
  }
}

// Block b is row b of `rows` rows of length `cols` (square per head: row i of its head is
// b % cols). With split > 0 the row's group is [0, split) for i < split, else [split, cols).
MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    softmax_rows_f32(float *__restrict__ s, int rows, int cols, int split, float scale) {
  __shared__ float sh[TRR_THREADS];
  const int b = blockIdx.x;
  if (b >= rows) return;
  const int i = b % cols;
  int lo = 0, hi = cols;
  if (split > 0) {
    lo = i < split ? 0 : split;
    hi = i < split ? split : cols;
  }
  float *sr = s + (long long)b * cols;
  float m = -INFINITY;
  for (int c = lo + threadIdx.x; c < hi; c += TRR_THREADS) m = fmaxf(m, __fmul_rn(sr[c], scale));
  m = miad_block_reduce<TRR_THREADS>(m, sh, MiadMax());
  float part = 0.f;
  for (int c = threadIdx.x; c < cols; c += TRR_THREADS) {
    float e = 0.f;
    if (c >= lo && c < hi) e = expf(__fsub_rn(__fmul_rn(sr[c], scale), m));
    sr[c] = e;
    part = __fadd_rn(part, e);
  }
  const float inv = __fdiv_rn(1.f, miad_block_reduce<TRR_THREADS>(part, sh, MiadAddF()));
  for (int c = threadIdx.x; c < cols; c += TRR_THREADS) sr[c] = __fmul_rn(sr[c], inv);
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    softmax_backward_f32(float *__restrict__ ds, const float *__restrict__ p, int rows, int cols,
                         float scale) {
  __shared__ float sh[TRR_THREADS];
  const int b = blockIdx.x;
  if (b >= rows) return;
  float *dr = ds + (long long)b * cols;
  const float *pr = p + (long long)b * cols;
  float part = 0.f;
  for (int c = threadIdx.x; c < cols; c += TRR_THREADS)
    part = __fadd_rn(part, __fmul_rn(dr[c], pr[c]));
  const float dot = miad_block_reduce<TRR_THREADS>(part, sh, MiadAddF());
  for (int c = threadIdx.x; c < cols; c += TRR_THREADS)
    dr[c] = __fmul_rn(__fmul_rn(pr[c], __fsub_rn(dr[c], dot)), scale);
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    scale_backward_f32(float *__restrict__ dy, const float *__restrict__ z,
                       const float *__restrict__ s, int rows, int cols, int gelu,
                       float *__restrict__ ds) {
  const long long c = trr_index();
  if (c >= cols) return;
  float acc = ds[c];
  const float sc = s[c];
  for (int r = 0; r < rows; ++r) {
    const long long i = (long long)r * cols + c;
    float pre = dy[i];
    if (gelu) {
      const float v = __fmul_rn(z[i], sc);
      const float cdf = 0.5f * (1.f + erff(v * 0.70710678118654752f));
      // phi(v) = exp(-v^2/2) / sqrt(2 pi)
      const float pdf = expf(-0.5f * v * v) * 0.39894228040143268f;
      pre = __fmul_rn(pre, cdf + v * pdf);
    }
    acc = __fadd_rn(acc, __fmul_rn(pre, z[i]));
    dy[i] = __fmul_rn(pre, sc);
  }
  ds[c] = acc;
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    gather_rows_f32(const float *__restrict__ src, int cols, const u32 *__restrict__ idx, int n,
                    float *__restrict__ dst) {
  const long long i = trr_index();
  if (i >= (long long)n * cols) return;
  const long long r = i / cols, c = i % cols;
  dst[i] = src[(long long)idx[r] * cols + c];
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    scatter_add_rows_f32(const float *__restrict__ src, int cols, const u32 *__restrict__ idx,
                         int n, float *__restrict__ dst, int dst_rows) {
  const long long i = trr_index();
  if (i >= (long long)dst_rows * cols) return;
  const u32 t = (u32)(i / cols);
  const long long c = i % cols;
  float acc = dst[i];
  for (int r = 0; r < n; ++r)
    if (idx[r] == t) acc = __fadd_rn(acc, src[(long long)r * cols + c]);
  dst[i] = acc;
}

MIAD_EXTERN void __launch_bounds__(TRR_THREADS)
    add_row_scaled_f32(float *__restrict__ dst, int rows, int cols, const float *__restrict__ v,
                       float scale) {
  const long long i = trr_index();
  if (i >= (long long)rows * cols) return;
  dst[i] = __fadd_rn(dst[i], __fmul_rn(v[i % cols], scale));
}
