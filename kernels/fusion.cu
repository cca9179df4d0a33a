// RADAR's adaptive instruction fusion (runtime/cuda/stages/fusion.rs, the CPU's
// cpu::radar_fusion): the element-wise steps between its GEMMs and attention.
//   copy_selected_u32  dst = the sel-th of several equal-length sources (`stride` words
//                      apart), sel = min(max(*sel_ptr, 0), max_sel) read on the device: the
//                      instruction of the part's case, the hybrid block's masked or full
//                      attention output, chosen when the recorded graph runs
//   column_means_f32   out[g][c] = mean of column c over the rows of group g (row order,
//                      then one division: the CPU's sum order, bitwise)
//   scale_gelu_f32     out = gelu(z * s[col]) (exact erf GELU), f32 out
//   scale_gelu_bf16    the same, bf16 out (the fast path's fc2 input)
//   scale_cols_f32     dst[r][c] = src[r][c] * s[c], strided rows (the generated fc2 scale,
//                      written into the fused rows)
//   to_bf16            dst = bf16(src), round to nearest even
#include "common.cuh"

#include <cuda_bf16.h>

#define FUS_THREADS 256

__device__ __forceinline__ long long fus_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ float fus_gelu(float v) {
  return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    copy_selected_u32(const u32 *__restrict__ src, long stride,
                      const int *__restrict__ sel_ptr, int max_sel, u32 *__restrict__ dst, long n) {
  const long long i = fus_index();
  if (i >= n) return;
  int sel = *sel_ptr;
  sel = sel < 0 ? 0 : (sel > max_sel ? max_sel : sel);
  dst[i] = src[(long long)sel * stride + i];
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    column_means_f32(const float *__restrict__ x, int rows, int cols, int groups,
                     float *__restrict__ out) {
  const long long i = fus_index();
  if (i >= (long long)groups * cols) return;
  const int g = (int)(i / cols), c = (int)(i % cols);
  const float *p = x + (long long)g * rows * cols + c;
  float s = 0.f;
  for (int r = 0; r < rows; ++r) s += p[(long long)r * cols];
  out[i] = s / (float)rows;
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    scale_gelu_f32(const float *__restrict__ z, const float *__restrict__ s, long n,
                   int cols, float *__restrict__ out) {
  const long long i = fus_index();
  if (i < n) out[i] = fus_gelu(z[i] * s[i % cols]);
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    scale_gelu_bf16(const float *__restrict__ z, const float *__restrict__ s, long n,
                    int cols, __nv_bfloat16 *__restrict__ out) {
  const long long i = fus_index();
  if (i < n) out[i] = __float2bfloat16_rn(fus_gelu(z[i] * s[i % cols]));
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    scale_cols_f32(const float *__restrict__ src, int ld_src, const float *__restrict__ s,
                   int rows, int cols, float *__restrict__ dst, int ld_dst) {
  const long long i = fus_index();
  if (i >= (long long)rows * cols) return;
  const int r = (int)(i / cols), c = (int)(i % cols);
  dst[(long long)r * ld_dst + c] = src[(long long)r * ld_src + c] * s[c];
}

MIAD_EXTERN void __launch_bounds__(FUS_THREADS)
    to_bf16(const float *__restrict__ src, __nv_bfloat16 *__restrict__ dst, long n) {
  const long long i = fus_index();
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}
