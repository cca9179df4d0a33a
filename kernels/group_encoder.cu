// Point-MAE group encoder (SPEC §3.3), fused: one block per group, every activation in
// shared memory, only the D-wide group token written to global memory.
//
//   h1 = relu(W1 x + b1)                (per point, C1)
//   f  = W2 h1 + b2                     (per point, C2)     g = max over points of f
//   h3 = relu(W3[:, :C2] g + W3[:, C2:] f + b3)   (per point, C3; the g part once per group)
//   o  = max over points of (W4 h3 + b4)          (D)
//
// Weights are passed transposed, WT[in][out] (the engine transposes them once at upload),
// so a warp's weight loads are contiguous. Activations are stored channel-major
// ([channel][point]) so a thread's 8 consecutive points are two float4 loads. Each thread
// computes 8 points × 8 channels per tile. h3 and the W4 stage run on chunks of `pc` points
// (running max) in h1's space, so shared memory holds max(C1·S, C3·pc) + C2·S floats
// (+ small vectors): 203 KiB at M3DM sizes.
#include "common.cuh"
#include <cuda_bf16.h>

#define ENC_THREADS 256

// acc[i][j] = sum_k A[k][p0 + i] * WT[k][o0 + j] for a tile of 8 points × 8 channels.
__device__ __forceinline__ void enc_tile(const float *A, int lda, int p0, const float *__restrict__ WT,
                                         int ldw, int o0, int K, float acc[8][8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
#pragma unroll 2
  for (int k = 0; k < K; ++k) {
    const float4 a0 = *(const float4 *)(A + (size_t)k * lda + p0);
    const float4 a1 = *(const float4 *)(A + (size_t)k * lda + p0 + 4);
    const float4 w0 = __ldg((const float4 *)(WT + (size_t)k * ldw + o0));
    const float4 w1 = __ldg((const float4 *)(WT + (size_t)k * ldw + o0 + 4));
    const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
  }
}

// rel: m×s×3 neighbourhood coordinates (relative to the center); out: m×d.
// Dynamic shared memory: (max(c1·s, c3·pc) + c2·s + c2 + c3 + (pc/8)·d + d) floats;
// all widths and s, pc multiples of 8, s a multiple of pc.
MIAD_EXTERN void __launch_bounds__(ENC_THREADS)
    group_encoder_f32(const float *__restrict__ rel, int s, int c1, int c2, int c3, int d, int pc,
                      const float *__restrict__ w1t, const float *__restrict__ b1,
                      const float *__restrict__ w2t, const float *__restrict__ b2,
                      const float *__restrict__ w3t, const float *__restrict__ b3,
                      const float *__restrict__ w4t, const float *__restrict__ b4,
                      float *__restrict__ out) {
  extern __shared__ __align__(16) float enc_sm[];
  const int region = max(c1 * s, c3 * pc);
  float *h1 = enc_sm;                  // [c1][s], dead after conv2
  float *h3 = enc_sm;                  // [c3][pc], reuses h1's space
  float *f2 = enc_sm + region;         // [c2][s]
  float *g = f2 + (size_t)c2 * s;      // [c2]
  float *u = g + c2;                   // [c3]
  float *pm = u + c3;                  // [pc/8][d]
  float *gmax = pm + (size_t)(pc / 8) * d;  // [d]
  const int tid = threadIdx.x;
  const float *x = rel + (size_t)blockIdx.x * s * 3;

  for (int e = tid; e < c1 * s; e += blockDim.x) {
    const int o = e / s, p = e % s;
    float v = b1[o];
    v = fmaf(w1t[o], x[3 * p], v);
    v = fmaf(w1t[c1 + o], x[3 * p + 1], v);
    v = fmaf(w1t[2 * c1 + o], x[3 * p + 2], v);
    h1[(size_t)o * s + p] = fmaxf(v, 0.f);
  }
  for (int o = tid; o < d; o += blockDim.x) gmax[o] = -__int_as_float(0x7f800000);
  __syncthreads();

  float acc[8][8];
  {  // conv2: f2 = W2 h1 + b2
    const int to = c2 / 8, tiles = to * (s / 8);
    for (int t = tid; t < tiles; t += blockDim.x) {
      const int o0 = (t % to) * 8, p0 = (t / to) * 8;
      enc_tile(h1, s, p0, w2t, c2, o0, c1, acc);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float bj = b2[o0 + j];
        float4 *dst = (float4 *)(f2 + (size_t)(o0 + j) * s + p0);
        dst[0] = make_float4(acc[0][j] + bj, acc[1][j] + bj, acc[2][j] + bj, acc[3][j] + bj);
        dst[1] = make_float4(acc[4][j] + bj, acc[5][j] + bj, acc[6][j] + bj, acc[7][j] + bj);
      }
    }
  }
  __syncthreads();
  for (int o = tid; o < c2; o += blockDim.x) {
    float mx = f2[(size_t)o * s];
    for (int p = 1; p < s; ++p) mx = fmaxf(mx, f2[(size_t)o * s + p]);
    g[o] = mx;
  }
  __syncthreads();
  for (int o = tid; o < c3; o += blockDim.x) {
    float v = b3[o];
    for (int k = 0; k < c2; ++k) v = fmaf(w3t[(size_t)k * c3 + o], g[k], v);
    u[o] = v;
  }
  __syncthreads();

  for (int q0 = 0; q0 < s; q0 += pc) {
    {  // conv3 on points [q0, q0+pc): h3 = relu(W3f f2 + u)
      const int to = c3 / 8, tiles = to * (pc / 8);
      for (int t = tid; t < tiles; t += blockDim.x) {
        const int o0 = (t % to) * 8, p0 = (t / to) * 8;
        enc_tile(f2, s, q0 + p0, w3t + (size_t)c2 * c3, c3, o0, c2, acc);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float uj = u[o0 + j];
          float4 *dst = (float4 *)(h3 + (size_t)(o0 + j) * pc + p0);
          dst[0] = make_float4(fmaxf(acc[0][j] + uj, 0.f), fmaxf(acc[1][j] + uj, 0.f),
                               fmaxf(acc[2][j] + uj, 0.f), fmaxf(acc[3][j] + uj, 0.f));
          dst[1] = make_float4(fmaxf(acc[4][j] + uj, 0.f), fmaxf(acc[5][j] + uj, 0.f),
                               fmaxf(acc[6][j] + uj, 0.f), fmaxf(acc[7][j] + uj, 0.f));
        }
      }
    }
    __syncthreads();
    {  // conv4 + max over the chunk's points
      const int to = d / 8, tiles = to * (pc / 8);
      for (int t = tid; t < tiles; t += blockDim.x) {
        const int o0 = (t % to) * 8, tp = t / to;
        enc_tile(h3, pc, tp * 8, w4t, d, o0, c3, acc);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float mx = acc[0][j];
#pragma unroll
          for (int i = 1; i < 8; ++i) mx = fmaxf(mx, acc[i][j]);
          pm[(size_t)tp * d + o0 + j] = mx;
        }
      }
    }
    __syncthreads();
    for (int o = tid; o < d; o += blockDim.x) {
      float mx = gmax[o];
      for (int tp = 0; tp < pc / 8; ++tp) mx = fmaxf(mx, pm[(size_t)tp * d + o]);
      gmax[o] = mx;
    }
    __syncthreads();
  }
  for (int o = tid; o < d; o += blockDim.x) out[(size_t)blockIdx.x * d + o] = gmax[o] + b4[o];
}

// ---------------------------------------------------------------------------------------
// The fast path (`--precision bf16`): the GEMM-shaped steps run as bf16 tensor-core GEMMs
// with f32 accumulation (runtime/cuda/stages/group_encoder.rs, through the device GEMM);
// these kernels do the rest, per pass of `groups` groups of `s` points (rows = groups·s,
// every activation row-major [row][channel]):
//
//   h1 = bf16(relu(W1 x + b1))                       group_conv1_bf16
//   f  = bf16(h1 W2ᵀ + b2)                            GEMM, bias epilogue
//   g  = max over a group's rows of f                 group_max_bf16
//   u  = g W3[:, :c2]ᵀ + b3  (f32, once per group)    GEMM, bias epilogue
//   h3 = bf16(f W3[:, c2:]ᵀ), then                    GEMM
//   h3 = bf16(relu(h3 + u[group]))                    group_bias_relu_bf16
//   o  = bf16(h3 W4ᵀ)                                 GEMM
//   token = max over a group's rows of o, + b4 (f32)  group_max_bias_f32

#define ENC_EW_THREADS 256

__device__ __forceinline__ long long enc_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// h1[r][o] = bf16(relu(b1[o] + W1[o]·rel[r])), with group_encoder_f32's f32 fma chain
// (w1t transposed, [3][c1]); one thread per output value.
MIAD_EXTERN void __launch_bounds__(ENC_EW_THREADS)
    group_conv1_bf16(const float *__restrict__ rel, int rows, int c1,
                     const float *__restrict__ w1t, const float *__restrict__ b1,
                     __nv_bfloat16 *__restrict__ h1) {
  const long long i = enc_index();
  if (i >= (long long)rows * c1) return;
  const long long r = i / c1;
  const int o = (int)(i % c1);
  const float *x = rel + 3 * r;
  float v = b1[o];
  v = fmaf(w1t[o], x[0], v);
  v = fmaf(w1t[c1 + o], x[1], v);
  v = fmaf(w1t[2 * c1 + o], x[2], v);
  h1[i] = __float2bfloat16_rn(fmaxf(v, 0.f));
}

// out[g][o] = max over p < s of x[g·s + p][o] (exact: a max of bf16 values is one of them);
// one thread per (group, channel), consecutive threads on consecutive channels.
MIAD_EXTERN void __launch_bounds__(ENC_EW_THREADS)
    group_max_bf16(const __nv_bfloat16 *__restrict__ x, int groups, int s, int c,
                   __nv_bfloat16 *__restrict__ out) {
  const long long i = enc_index();
  if (i >= (long long)groups * c) return;
  const long long g = i / c;
  const int o = (int)(i % c);
  const __nv_bfloat16 *col = x + g * s * c + o;
  float m = __bfloat162float(col[0]);
  for (int p = 1; p < s; ++p) m = fmaxf(m, __bfloat162float(col[(long long)p * c]));
  out[i] = __float2bfloat16_rn(m);
}

// The group tokens: out[g][o] = (max over p < s of x[g·s + p][o]) + bias[o], f32 (the bias
// commutes with the max, so conv4's GEMM runs without one).
MIAD_EXTERN void __launch_bounds__(ENC_EW_THREADS)
    group_max_bias_f32(const __nv_bfloat16 *__restrict__ x, int groups, int s, int c,
                       const float *__restrict__ bias, float *__restrict__ out) {
  const long long i = enc_index();
  if (i >= (long long)groups * c) return;
  const long long g = i / c;
  const int o = (int)(i % c);
  const __nv_bfloat16 *col = x + g * s * c + o;
  float m = __bfloat162float(col[0]);
  for (int p = 1; p < s; ++p) m = fmaxf(m, __bfloat162float(col[(long long)p * c]));
  out[i] = m + bias[o];
}

// conv3's two halves joined, in place: h[r][o] = bf16(relu(h[r][o] + u[r / s][o])), u the
// per-group half (f32, bias included); one thread per value.
MIAD_EXTERN void __launch_bounds__(ENC_EW_THREADS)
    group_bias_relu_bf16(__nv_bfloat16 *__restrict__ h, int rows, int s, int c,
                         const float *__restrict__ u) {
  const long long i = enc_index();
  if (i >= (long long)rows * c) return;
  const long long r = i / c;
  const int o = (int)(i % c);
  const float v = __bfloat162float(h[i]) + u[(r / s) * c + o];
  h[i] = __float2bfloat16_rn(fmaxf(v, 0.f));
}
