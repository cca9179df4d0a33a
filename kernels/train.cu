// Training of the learned fusion on the device (runtime/cuda/stages/train_uff.rs, the CPU's
// fit::train_fusion, docs/RADAR-FUSION.md §5b): the element-wise steps and row/column
// reductions between the cuBLASLt products of one step. Rows beyond the batch's `n` are
// padding: the loss kernels give them a zero gradient, so every later product and sum adds
// exact zeros for them.
//   affine_cols_f32          out = u * gamma[col] + beta[col] (LayerNorm's affine)
//   gelu_f32                 out = gelu(z), exact erf GELU
//   gelu_backward_f32        dz *= gelu'(z) = Phi(z) + z phi(z)
//   l2_normalize_rows_f32    q = p / max(|p|, 1e-12), norms = |p| (one thread per row, f64
//                            sum of squares in column order: the CPU's)
//   l2_normalize_backward_f32 dp = (g - q (q.g)) / |p| (g / 1e-12 when clamped)
//   infonce_softmax_f32      one block per row of a block of logits S (rows r0.., n valid
//                            columns): the row's loss term log sum exp(S/T) - S_ii/T and, in
//                            place, the gradient scale (softmax - onehot); zero outside n
//   infonce_total_f64        out = 2T * (sum of the first n per-row terms, row order) / n
//   col_sums_f32             out[c] = sum over rows of m[r][c] (row order: the CPU's)
//   ln_param_grads_f32       dgamma = sum_rows da * u, dbeta = sum_rows da (row order)
//   adamw_f32                torch.optim.AdamW's update; flags a non-finite gradient
// Doubles travel as their u64 bits (the launch layer's argument types have no double).
#include "common.cuh"

#define TRN_THREADS 256

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ long long trn_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    affine_cols_f32(const float *__restrict__ u, const float *__restrict__ gamma,
                    const float *__restrict__ beta, long n, int cols, float *__restrict__ out) {
  const long long i = trn_index();
  if (i < n) {
    const int c = (int)(i % cols);
    out[i] = __fadd_rn(__fmul_rn(u[i], gamma[c]), beta[c]);
  }
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    gelu_f32(const float *__restrict__ z, long n, float *__restrict__ out) {
  const long long i = trn_index();
  if (i < n) {
    const float v = z[i];
    out[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
  }
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    gelu_backward_f32(float *__restrict__ dz, const float *__restrict__ z, long n) {
  const long long i = trn_index();
  if (i < n) {
    const float v = z[i];
    const float cdf = 0.5f * (1.f + erff(v * 0.70710678118654752f));
    // phi(v) = exp(-v^2/2) / sqrt(2 pi)
    const float pdf = expf(-0.5f * v * v) * 0.39894228040143268f;
    dz[i] = dz[i] * (cdf + v * pdf);
  }
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    l2_normalize_rows_f32(const float *__restrict__ p, int rows, int cols, float *__restrict__ q,
                          float *__restrict__ norms) {
  const long long r = trn_index();
  if (r >= rows) return;
  const float *pr = p + r * cols;
  double s = 0.0;
  for (int c = 0; c < cols; ++c) s = __dadd_rn(s, (double)__fmul_rn(pr[c], pr[c]));
  const float norm = (float)sqrt(s);
  norms[r] = norm;
  const float inv = 1.f / fmaxf(norm, 1e-12f);
  float *qr = q + r * cols;
  for (int c = 0; c < cols; ++c) qr[c] = __fmul_rn(pr[c], inv);
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    l2_normalize_backward_f32(const float *__restrict__ q, const float *__restrict__ norms,
                              const float *__restrict__ g, int rows, int cols,
                              float *__restrict__ dp) {
  const long long r = trn_index();
  if (r >= rows) return;
  const float *qr = q + r * cols, *gr = g + r * cols;
  float *dr = dp + r * cols;
  const float norm = norms[r];
  if (norm > 1e-12f) {
    float dot = 0.f;
    for (int c = 0; c < cols; ++c) dot = __fadd_rn(dot, __fmul_rn(qr[c], gr[c]));
    const float inv = 1.f / norm;
    for (int c = 0; c < cols; ++c) dr[c] = __fmul_rn(__fsub_rn(gr[c], __fmul_rn(qr[c], dot)), inv);
  } else {
    for (int c = 0; c < cols; ++c) dr[c] = gr[c] / 1e-12f;
  }
}

// Block-wide reductions over TRN_THREADS threads in a fixed tree (deterministic).
__device__ __forceinline__ float trn_block_max(float v, float *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = TRN_THREADS / 2; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + o]);
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

__device__ __forceinline__ double trn_block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = TRN_THREADS / 2; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] = __dadd_rn(sh[threadIdx.x], sh[threadIdx.x + o]);
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// Row i of the block (global row r0 + i) of S (ld columns apart, n valid): the loss term
// into loss_rows[r0 + i] (f64 bits) and, in place, scale * (softmax(S/T) - onehot(r0 + i));
// rows at or past n and columns at or past n become 0 (the padding's zero gradient).
MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    infonce_softmax_f32(float *__restrict__ s, int ld, int r0, int n, float inv_t, float scale,
                        u64 *__restrict__ loss_rows) {
  __shared__ float shf[TRN_THREADS];
  __shared__ double shd[TRN_THREADS];
  const int i = blockIdx.x, row = r0 + i;
  float *sr = s + (long long)i * ld;
  if (row >= n) {
    for (int c = threadIdx.x; c < ld; c += TRN_THREADS) sr[c] = 0.f;
    return;
  }
  // The thread owning column `row` (the same in every loop below) keeps the positive's
  // logit before the row is overwritten.
  float m = -INFINITY, diag = 0.f;
  for (int c = threadIdx.x; c < n; c += TRN_THREADS) {
    const float v = __fmul_rn(sr[c], inv_t);
    if (c == row) diag = v;
    m = fmaxf(m, v);
  }
  m = trn_block_max(m, shf);
  double part = 0.0;
  for (int c = threadIdx.x; c < n; c += TRN_THREADS) {
    const float e = expf(__fsub_rn(__fmul_rn(sr[c], inv_t), m));
    sr[c] = e;
    part = __dadd_rn(part, (double)e);
  }
  const double sum = trn_block_sum(part, shd);
  const float inv_sum = (float)(1.0 / sum);
  for (int c = threadIdx.x; c < ld; c += TRN_THREADS) {
    if (c >= n) {
      sr[c] = 0.f;
      continue;
    }
    float gv = __fmul_rn(sr[c], __fmul_rn(inv_sum, scale));
    if (c == row) {
      loss_rows[row] = (u64)__double_as_longlong(log(sum) + (double)m - (double)diag);
      gv = __fsub_rn(gv, scale);
    }
    sr[c] = gv;
  }
}

// out = 2T * (sum of the first n per-row terms, row order) / n: the InfoNCE of the batch.
MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    infonce_total_f64(const u64 *__restrict__ rows, int n, float t, u64 *__restrict__ out) {
  if (trn_index() != 0) return;
  double s = 0.0;
  for (int r = 0; r < n; ++r) s = __dadd_rn(s, __longlong_as_double((long long)rows[r]));
  out[0] = (u64)__double_as_longlong(2.0 * (double)t * s / (double)n);
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    col_sums_f32(const float *__restrict__ m, int rows, int cols, float *__restrict__ out) {
  const long long c = trn_index();
  if (c >= cols) return;
  float s = 0.f;
  for (int r = 0; r < rows; ++r) s = __fadd_rn(s, m[(long long)r * cols + c]);
  out[c] = s;
}

MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    ln_param_grads_f32(const float *__restrict__ da, const float *__restrict__ u, int rows,
                       int cols, float *__restrict__ dgamma, float *__restrict__ dbeta) {
  const long long c = trn_index();
  if (c >= cols) return;
  float sg = 0.f, sb = 0.f;
  for (int r = 0; r < rows; ++r) {
    const long long i = (long long)r * cols + c;
    sg = __fadd_rn(sg, __fmul_rn(da[i], u[i]));
    sb = __fadd_rn(sb, da[i]);
  }
  dgamma[c] = sg;
  dbeta[c] = sb;
}

// p *= decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= step * m / (sqrt(v) / bc2_sqrt + eps), with step = lr / (1 - b1^t), decay =
// 1 - lr * weight_decay. A non-finite gradient sets *bad to 1 (same value from every writer).
MIAD_EXTERN void __launch_bounds__(TRN_THREADS)
    adamw_f32(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
              float *__restrict__ v, long n, float step, float decay, float b1, float b2,
              float bc2_sqrt, float eps, int *__restrict__ bad) {
  const long long i = trn_index();
  if (i >= n) return;
  const float gi = g[i];
  if (!isfinite(gi)) *bad = 1;
  const float pi = __fmul_rn(p[i], decay);
  const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.f - b1, gi));
  const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1.f - b2, gi), gi));
  m[i] = mi;
  v[i] = vi;
  const float denom = __fadd_rn(sqrtf(vi) / bc2_sqrt, eps);
  p[i] = __fsub_rn(pi, __fmul_rn(step, mi) / denom);
}
