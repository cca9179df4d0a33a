// The non-GEMM pieces of the ViT and Point-MAE forwards (SPEC §1.4, §2, §3.4–3.6, §5),
// each the same arithmetic, in the same order, as the CPU backend (runtime/cpu/vit.rs,
// point_mae.rs, transformer.rs, fusion.rs, pipeline/preprocess.rs). Every product and sum
// that the CPU rounds separately is written with __fmul_rn/__fadd_rn (or the f64 forms), so
// the compiler cannot contract it into a fused multiply-add; where the CPU reference is a
// GEMM whose order is the GEMM library's, the kernel states its own order (fmaf chains).
// No atomics; every output element is written by exactly one thread.
//
// RGB input (pipeline/preprocess.rs, PIL bicubic as torchvision applies it):
//   pil_coeffs_f32     per-axis resampling tables (f64 weights normalised, stored as f32)
//   rgb_resize_h_f32   horizontal pass over the zero-padded working square, 8-bit store
//   rgb_resize_v_f32   vertical pass, 8-bit store, then (v/255 − mean)/std → CHW f32
// ViT (cpu/vit.rs):
//   im2col_f32/_bf16   CHW image → [patches, C·p·p], columns in the conv weight's
//                      [C, p, p] flattening: patch embedding = one GEMM against W[dim, C·p·p]
//   vit_tokens_f32     x[0] = cls + pos[0]; x[t] = (pos[t] + gemm[t−1]) + bias (in place ok)
// Point-MAE (cpu/point_mae.rs):
//   pos_fc1_gelu_f32/_bf16  h = GELU(c·W1ᵀ + b1), K = 3 (next: the fc2 GEMM)
//   pos_embed_f32           both layers fused: pos = GELU(c·W1ᵀ + b1)·W2ᵀ + b2
// Shared:
//   layernorm_rows_f32/_bf16  optional x += pos (stored back), then LayerNorm: _f32 as
//                      cpu::transformer::layer_norm_row (f64 mean/variance), _bf16 with
//                      f32 statistics and a stated error (see the kernels); input and
//                      output with leading dimensions (final norm straight into the
//                      concatenated Point-MAE output, class token skipped for the ViT)
//   adaptive_pool_f32  PyTorch adaptive average pooling of a grid of vectors
//                      (cpu::fusion::adaptive_avg_pool), strided output
//   copy_rows_f32      strided row copy; ld_src = 0 broadcasts one row
#include "common.cuh"

#include <cuda_bf16.h>

#define EMB_THREADS 256
// Centers per block of pos_embed_f32.
#define POS_ROWS 8

__device__ __forceinline__ long long emb_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

struct EmbF32 {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};
struct EmbBf16 {
  __device__ __forceinline__ __nv_bfloat16 operator()(float v) const {
    return __float2bfloat16_rn(v);
  }
};

// ---------------------------------------------------------------------------------------
// RGB resize (PIL BICUBIC, a = −0.5, support widened by the scale when downscaling).

// Resampling tables of both axes (blockIdx.y: 0 = x, 1 = y) for `in → out`: first source
// index and `taps` weights per output index, zeros past the kernel's end
// (miad_pil_coeffs_row, preprocess.rs `pil_coeffs`).
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    pil_coeffs_f32(int in_x, int taps_x, int *__restrict__ first_x, float *__restrict__ w_x,
                   int in_y, int taps_y, int *__restrict__ first_y, float *__restrict__ w_y,
                   int out) {
  const int o = (int)emb_index();
  if (o >= out) return;
  const bool axis_x = blockIdx.y == 0;
  miad_pil_coeffs_row(axis_x ? in_x : in_y, out, axis_x ? taps_x : taps_y, o,
                      axis_x ? first_x : first_y, axis_x ? w_x : w_y);
}

// Horizontal pass. The working image is `work_w × work_h`: the part's `w × h` 8-bit HWC
// image (rows `stride` bytes apart) placed at (top, left), zeros elsewhere; pixels whose
// `zero_mask` byte (h×w, may be null) is non-zero read as 0 (RGB removed with its point by
// the cloud cleaning). Output `tmp` is `work_h × out × 3` (HWC) of 8-bit values in f32.
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    rgb_resize_h_f32(const unsigned char *__restrict__ img, int h, int w, int stride,
                     const unsigned char *__restrict__ zero_mask, int top, int left, int work_w,
                     int work_h, int out, int taps, const int *__restrict__ first_x,
                     const float *__restrict__ w_x, float *__restrict__ tmp) {
  const long long i = emb_index();
  if (i >= (long long)work_h * out) return;
  const int y = (int)(i / out), ox = (int)(i % out);
  const int sy = y - top;
  const bool row_in = sy >= 0 && sy < h;
  float acc[3];
  miad_pil_taps(first_x[ox], w_x + (long long)ox * taps, taps, work_w,
                [&](int x, float p[3]) {
                  const int sx = x - left;
                  p[0] = p[1] = p[2] = 0.f;
                  if (row_in && sx >= 0 && sx < w &&
                      !(zero_mask && zero_mask[(long long)sy * w + sx])) {
                    const unsigned char *q = img + (long long)sy * stride + 3 * sx;
                    p[0] = (float)q[0];
                    p[1] = (float)q[1];
                    p[2] = (float)q[2];
                  }
                },
                acc);
  float *o = tmp + 3 * i;
  o[0] = miad_pil_u8(acc[0]);
  o[1] = miad_pil_u8(acc[1]);
  o[2] = miad_pil_u8(acc[2]);
}

// Vertical pass over `tmp` (`work_h × out × 3`), 8-bit store, then the ImageNet
// normalisation (v / 255 − mean) / std; output CHW `3 × out × out`.
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    rgb_resize_v_f32(const float *__restrict__ tmp, int work_h, int out, int taps,
                     const int *__restrict__ first_y, const float *__restrict__ w_y, float m0,
                     float m1, float m2, float s0, float s1, float s2, float *__restrict__ dst) {
  const long long plane = (long long)out * out;
  const long long i = emb_index();
  if (i >= plane) return;
  const int oy = (int)(i / out), ox = (int)(i % out);
  float acc[3];
  miad_pil_taps(first_y[oy], w_y + (long long)oy * taps, taps, work_h,
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

// ---------------------------------------------------------------------------------------
// ViT patch embedding.

// Row gy·grid + gx of the patch matrix holds patch (gy, gx); column (ch·p + ky)·p + kx holds
// image[ch][gy·p + ky][gx·p + kx] — the flattening of the conv weight [dim, C, p, p].
template <typename T, typename Cvt>
__device__ __forceinline__ void emb_im2col(const float *__restrict__ img, int chans, int side,
                                           int p, T *__restrict__ out, Cvt cvt) {
  const int grid = side / p;
  const int k = chans * p * p;
  const long long i = emb_index();
  if (i >= (long long)grid * grid * k) return;
  const int row = (int)(i / k), col = (int)(i % k);
  const int gy = row / grid, gx = row % grid;
  const int ch = col / (p * p), r = col % (p * p);
  const int ky = r / p, kx = r % p;
  out[i] = cvt(img[((long long)ch * side + gy * p + ky) * side + gx * p + kx]);
}

MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    im2col_f32(const float *__restrict__ img, int chans, int side, int p,
               float *__restrict__ out) {
  emb_im2col(img, chans, side, p, out, EmbF32());
}

MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    im2col_bf16(const float *__restrict__ img, int chans, int side, int p,
                __nv_bfloat16 *__restrict__ out) {
  emb_im2col(img, chans, side, p, out, EmbBf16());
}

// Token matrix `(patches + 1) × d`: x[0] = cls + pos[0]; x[t] = (pos[t] + g[t − 1]) + bias
// (bias may be null), the CPU's order (pos written first, the GEMM accumulated onto it,
// then the bias). `g` (rows `ldg` apart) may alias x + d with ldg = d (in place).
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    vit_tokens_f32(const float *g, int ldg, const float *__restrict__ bias,
                   const float *__restrict__ pos, const float *__restrict__ cls, float *x,
                   int patches, int d) {
  const long long i = emb_index();
  if (i >= (long long)(patches + 1) * d) return;
  const int t = (int)(i / d), j = (int)(i % d);
  float v;
  if (t == 0) {
    v = __fadd_rn(cls[j], pos[j]);
  } else {
    v = __fadd_rn(pos[i], g[(long long)(t - 1) * ldg + j]);
    if (bias) v = __fadd_rn(v, bias[j]);
  }
  x[i] = v;
}

// ---------------------------------------------------------------------------------------
// Point-MAE position embedding.

// Exact GELU as cpu::gemm::gelu: (0.5·x)·(1 + erf(x·(1/√2))).
__device__ __forceinline__ float emb_gelu(float v) {
  return __fmul_rn(__fmul_rn(0.5f, v),
                   __fadd_rn(1.f, erff(__fmul_rn(v, 0.70710678118654752f))));
}

// GELU(c·w1[j] + b1[j]) with the product order c0·w0, then fma(c1, w1, ·), fma(c2, w2, ·).
__device__ __forceinline__ float emb_fc1(const float *__restrict__ c,
                                         const float *__restrict__ w1,
                                         const float *__restrict__ b1, int j) {
  const float *wr = w1 + 3 * j;
  float acc = __fmul_rn(c[0], wr[0]);
  acc = __fmaf_rn(c[1], wr[1], acc);
  acc = __fmaf_rn(c[2], wr[2], acc);
  return emb_gelu(__fadd_rn(acc, b1[j]));
}

template <typename T, typename Cvt>
__device__ __forceinline__ void emb_pos_fc1(const float *__restrict__ centers, int m,
                                            const float *__restrict__ w1,
                                            const float *__restrict__ b1, int ph,
                                            T *__restrict__ h, Cvt cvt) {
  const long long i = emb_index();
  if (i >= (long long)m * ph) return;
  const int g = (int)(i / ph), j = (int)(i % ph);
  h[i] = cvt(emb_fc1(centers + 3 * (long long)g, w1, b1, j));
}

MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    pos_fc1_gelu_f32(const float *__restrict__ centers, int m, const float *__restrict__ w1,
                     const float *__restrict__ b1, int ph, float *__restrict__ h) {
  emb_pos_fc1(centers, m, w1, b1, ph, h, EmbF32());
}

MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    pos_fc1_gelu_bf16(const float *__restrict__ centers, int m, const float *__restrict__ w1,
                      const float *__restrict__ b1, int ph, __nv_bfloat16 *__restrict__ h) {
  emb_pos_fc1(centers, m, w1, b1, ph, h, EmbBf16());
}

// pos[g][j] = (Σ_k h[g][k]·w2[j][k]) + b2[j], the sum an fma chain over k = 0, 1, ...
// starting from 0, h = GELU(fc1) kept in shared memory (POS_ROWS × ph floats, dynamic).
// Block: POS_ROWS centers; each thread owns output columns j = tid, tid + blockDim, ...
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    pos_embed_f32(const float *__restrict__ centers, int m, const float *__restrict__ w1,
                  const float *__restrict__ b1, int ph, const float *__restrict__ w2,
                  const float *__restrict__ b2, int d, float *__restrict__ out) {
  extern __shared__ float emb_h[];
  const int g0 = blockIdx.x * POS_ROWS;
  const int rows = min(POS_ROWS, m - g0);
  for (int e = threadIdx.x; e < POS_ROWS * ph; e += blockDim.x) {
    const int r = e / ph, j = e % ph;
    // Rows past the last center (last block only) are zeros, never stored.
    emb_h[e] = r < rows ? emb_fc1(centers + 3 * (long long)(g0 + r), w1, b1, j) : 0.f;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc[POS_ROWS];
#pragma unroll
    for (int r = 0; r < POS_ROWS; ++r) acc[r] = 0.f;
    const float *wr = w2 + (long long)j * ph;
    for (int k = 0; k < ph; ++k) {
      const float wk = wr[k];
#pragma unroll
      for (int r = 0; r < POS_ROWS; ++r) acc[r] = __fmaf_rn(emb_h[r * ph + k], wk, acc[r]);
    }
    const float bj = b2[j];
#pragma unroll
    for (int r = 0; r < POS_ROWS; ++r)
      if (r < rows) out[(long long)(g0 + r) * d + j] = __fadd_rn(acc[r], bj);
  }
}

// ---------------------------------------------------------------------------------------
// LayerNorm. One warp per row; each lane sums its columns c ≡ lane (mod 32) in order, then an
// xor butterfly (every lane ends with the same sum).
// f32 output (the parity path): cpu::transformer::layer_norm_row: mean and centred variance
//   in f64, rstd = (f32)(1 / sqrt(var + eps)), y = ((x − (f32)mean)·rstd)·γ + β in f32.
// bf16 output (the fast path): the statistics in f32 (FP64 is slow on sm_87), shifted by
//   the row's first element s: mean = s + (Σ (x − s)) / n, var = Σ fma((x − m)², ...) / n,
//   rstd = 1 / sqrt(var + eps), all correctly rounded f32, then the same y in f32, rounded
//   once to bf16. Error against the f64 statistics, to first order, with u = 2⁻²⁴ and
//   k = ⌈n/32⌉ + 5 (terms a lane adds plus the butterfly depth): the two f32 means differ by
//   e·σ, e = (k + 3)·u·(√(n − 1) + 1) + u·|mean|/σ (Samuelson: |s − mean| ≤ σ√(n − 1); the
//   last term is one ulp of the mean as an f32, which the f64 path rounds to as well), rstd
//   by (k + 4)·u + e² relative, so x̂ = (x − mean)·rstd differs by ≤ e + ((k + 4)·u + e²)·|x̂|
//   before γ, β: 5.5e-5 + 2e-6·|x̂| at n = 768 when |mean| ≲ σ, ~35× below bf16's half ulp
//   at |x̂| ≈ 1. tests/common/oracles.rs holds this bound and the f32-statistics reference
//   that both test binaries check the kernel against.

__device__ __forceinline__ double emb_warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float emb_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// x += pos (when given, stored back) for this lane's columns; returns the lane's plain sum in
// f64 (F64 statistics) or, in f32, its sum of (x − shift).
__device__ __forceinline__ double emb_ln_lane_sum(float *p, const float *__restrict__ q, int cols,
                                                  int lane, double) {
  double s = 0.0;
  for (int c = lane; c < cols; c += 32) {
    const float v = q ? __fadd_rn(p[c], q[c]) : p[c];
    if (q) p[c] = v;
    s = __dadd_rn(s, (double)v);
  }
  return s;
}

__device__ __forceinline__ float emb_ln_lane_sum(float *p, const float *__restrict__ q, int cols,
                                                 int lane, float shift) {
  float s = 0.f;
  for (int c = lane; c < cols; c += 32) {
    const float v = q ? __fadd_rn(p[c], q[c]) : p[c];
    if (q) p[c] = v;
    s = __fadd_rn(s, __fsub_rn(v, shift));
  }
  return s;
}

struct EmbLnStats {
  float mean, rstd;
};

// The f64 statistics of the parity path (x + pos already applied when q is given).
__device__ __forceinline__ EmbLnStats emb_ln_stats(float *p, const float *__restrict__ q, int cols,
                                                   int lane, float eps, EmbF32) {
  const double mean = __ddiv_rn(emb_warp_sum(emb_ln_lane_sum(p, q, cols, lane, 0.0)), (double)cols);
  double v2 = 0.0;
  for (int c = lane; c < cols; c += 32) {
    const double dc = __dsub_rn((double)p[c], mean);
    v2 = __dadd_rn(v2, __dmul_rn(dc, dc));
  }
  const double var = __ddiv_rn(emb_warp_sum(v2), (double)cols);
  return {__double2float_rn(mean),
          __double2float_rn(__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var, (double)eps))))};
}

// The shifted f32 statistics of the fast path.
__device__ __forceinline__ EmbLnStats emb_ln_stats(float *p, const float *__restrict__ q, int cols,
                                                   int lane, float eps, EmbBf16) {
  // Every lane reads the shift before lane 0 may store x + pos into p[0].
  const float shift = q ? __fadd_rn(p[0], q[0]) : p[0];
  __syncwarp();
  const float sum = emb_warp_sum(emb_ln_lane_sum(p, q, cols, lane, shift));
  const float mean = __fadd_rn(shift, __fdiv_rn(sum, (float)cols));
  float v2 = 0.f;
  for (int c = lane; c < cols; c += 32) {
    const float dc = __fsub_rn(p[c], mean);
    v2 = __fmaf_rn(dc, dc, v2);
  }
  const float var = __fdiv_rn(emb_warp_sum(v2), (float)cols);
  return {mean, __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(var, eps)))};
}

template <typename T, typename Cvt>
__device__ __forceinline__ void emb_layernorm(float *x, int ldx, const float *__restrict__ pos,
                                              const float *__restrict__ gamma,
                                              const float *__restrict__ beta, T *y, int ldy,
                                              int rows, int cols, float eps, Cvt cvt) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float *p = x + (long long)row * ldx;
  const float *q = pos ? pos + (long long)row * cols : nullptr;
  const EmbLnStats st = emb_ln_stats(p, q, cols, lane, eps, cvt);
  T *o = y + (long long)row * ldy;
  for (int c = lane; c < cols; c += 32)
    o[c] = cvt(__fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(p[c], st.mean), st.rstd), gamma[c]), beta[c]));
}

// x: rows × cols, rows ldx apart; pos (may be null): rows × cols contiguous, added into x
// first (x must then be writable and not alias y); y: rows ldy apart.
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    layernorm_rows_f32(float *x, int ldx, const float *__restrict__ pos,
                       const float *__restrict__ gamma, const float *__restrict__ beta,
                       float *y, int ldy, int rows, int cols, float eps) {
  emb_layernorm(x, ldx, pos, gamma, beta, y, ldy, rows, cols, eps, EmbF32());
}

MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    layernorm_rows_bf16(float *x, int ldx, const float *__restrict__ pos,
                        const float *__restrict__ gamma, const float *__restrict__ beta,
                        __nv_bfloat16 *y, int ldy, int rows, int cols, float eps) {
  emb_layernorm(x, ldx, pos, gamma, beta, y, ldy, rows, cols, eps, EmbBf16());
}

// ---------------------------------------------------------------------------------------
// Grids of feature vectors.

// Adaptive average pooling of a gi × gi grid of d-vectors (cell rows ld_src apart) to
// go × go (rows ld_dst apart), PyTorch's bins [⌊i·gi/go⌋, ⌈(i+1)·gi/go⌉): the sum in row-
// major order of the bin, times (f32)(1 / cells). When go is a multiple of gi every bin is
// one cell and this is the exact repetition the fusion uses for rgb56.
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    adaptive_pool_f32(const float *__restrict__ src, int gi, int ld_src, int go, int d,
                      float *__restrict__ dst, int ld_dst) {
  const long long i = emb_index();
  if (i >= (long long)go * go * d) return;
  const int cell = (int)(i / d), j = (int)(i % d);
  const int oy = cell / go, ox = cell % go;
  const int y0 = oy * gi / go, y1 = ((oy + 1) * gi + go - 1) / go;
  const int x0 = ox * gi / go, x1 = ((ox + 1) * gi + go - 1) / go;
  float o = 0.f;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) o = __fadd_rn(o, src[((long long)y * gi + x) * ld_src + j]);
  const float inv = __fdiv_rn(1.f, (float)((y1 - y0) * (x1 - x0)));
  dst[(long long)cell * ld_dst + j] = __fmul_rn(o, inv);
}

// dst[r][c] = src[r][c] for rows × cols, rows ld_src / ld_dst apart (ld_src = 0: every
// row of dst gets src's first row).
MIAD_EXTERN void __launch_bounds__(EMB_THREADS)
    copy_rows_f32(const float *__restrict__ src, int ld_src, float *__restrict__ dst, int ld_dst,
                  int rows, int cols) {
  const long long i = emb_index();
  if (i >= (long long)rows * cols) return;
  const int r = (int)(i / cols), c = (int)(i % cols);
  dst[(long long)r * ld_dst + c] = src[(long long)r * ld_src + c];
}
