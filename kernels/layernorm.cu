// LayerNorm, residual add and bias + GELU for the transformer blocks.
//
// layernorm_f32 / layernorm_f32_bf16: one warp per row, two passes over the row (mean,
// then centred variance, as PyTorch), fixed reduction order (lane partials, then an xor
// butterfly), so the same input gives the same bits. The _bf16 variant writes bf16 bits for
// the fast path's next GEMM.
// add_f32: y += x (residual), bias_gelu_f32: y = gelu(y + bias[col]) with the exact erf GELU.

#include <cuda_bf16.h>

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename Store>
__device__ __forceinline__ void layernorm_row(const float *__restrict__ x,
                                              const float *__restrict__ gamma,
                                              const float *__restrict__ beta, int rows, int cols,
                                              float eps, Store store) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *p = x + (long)row * cols;
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) s += p[c];
    const float mean = warp_sum(s) / cols;
    float v = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float d = p[c] - mean;
        v = fmaf(d, d, v);
    }
    const float rstd = rsqrtf(warp_sum(v) / cols + eps);
    for (int c = lane; c < cols; c += 32)
        store((long)row * cols + c, (p[c] - mean) * rstd * gamma[c] + beta[c]);
}

extern "C" __global__ void layernorm_f32(const float *__restrict__ x,
                                         const float *__restrict__ gamma,
                                         const float *__restrict__ beta, float *__restrict__ y,
                                         int rows, int cols, float eps) {
    layernorm_row(x, gamma, beta, rows, cols, eps, [&](long i, float v) { y[i] = v; });
}

extern "C" __global__ void layernorm_f32_bf16(const float *__restrict__ x,
                                              const float *__restrict__ gamma,
                                              const float *__restrict__ beta,
                                              __nv_bfloat16 *__restrict__ y, int rows, int cols,
                                              float eps) {
    layernorm_row(x, gamma, beta, rows, cols, eps,
                  [&](long i, float v) { y[i] = __float2bfloat16_rn(v); });
}

extern "C" __global__ void add_f32(float *__restrict__ y, const float *__restrict__ x, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

extern "C" __global__ void bias_gelu_f32(float *__restrict__ y, const float *__restrict__ bias,
                                         long n, int cols) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = y[i] + bias[i % cols];
        y[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    }
}
