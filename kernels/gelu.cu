// Bias + exact GELU for the transformer MLP, launched after the fc1 GEMM on the exact f32
// path (runtime/cuda/gemm.rs): bias_gelu_f32: y = gelu(y + bias[col]) with the erf GELU.
// LayerNorm lives in embed.cu (f64 statistics on the f32 path, f32 on the bf16 path); residual adds
// are done by accumulating GEMMs.

#include "common.cuh"

extern "C" __global__ void bias_gelu_f32(float *__restrict__ y, const float *__restrict__ bias,
                                         long n, int cols) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = y[i] + bias[i % cols];
        y[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    }
}
