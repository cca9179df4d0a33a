// Kernels that exercise the emulator itself (tests/kernels_sim/selftest.rs): each bad_*
// kernel contains one bug that a GPU would not report, and the emulator must; the ok_*
// kernels check collectives and tensor-core fragments against values computed on the host.
#include "common.cuh"

// A barrier reached by only part of the block.
MIAD_EXTERN void bad_partial_barrier(int *out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Two different barriers reached by the two halves of the block.
MIAD_EXTERN void bad_divergent_barrier(int *out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// A shuffle whose mask leaves out lanes that execute it.
MIAD_EXTERN void bad_mask(int *out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);
}

// Lane 0 waits at __syncthreads while the rest of its warp waits for it in a shuffle.
MIAD_EXTERN void bad_deadlock(int *out) {
  int v = (int)threadIdx.x;
  if (threadIdx.x == 0) __syncthreads();
  v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = v;
}

// One element past the buffer the host passed.
MIAD_EXTERN void bad_global_oob(const float *in, float *out, int n) {
  const int i = threadIdx.x;
  if (i <= n) out[i % n] = in[i];
}

// Uses more dynamic shared memory than the launch gave (one float per thread).
MIAD_EXTERN void bad_dyn_smem(float *out) {
  extern __shared__ float st_dyn[];
  st_dyn[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = st_dyn[blockDim.x - 1 - threadIdx.x];
}

// Reads shared memory nobody wrote: the result depends on the seed's poison.
MIAD_EXTERN void bad_uninit_smem(float *out) {
  __shared__ float st_s[64];
  if (threadIdx.x < 32) st_s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = st_s[63 - threadIdx.x];
}

// cp.async without its wait: the copies have not landed when the data is read.
MIAD_EXTERN void bad_cp_async_no_wait(const float4 *in, float4 *out) {
  __shared__ __align__(16) float4 st_buf[32];
  miad_cp_async16((u32)__cvta_generic_to_shared(&st_buf[threadIdx.x]), in + threadIdx.x, 16);
  miad_cp_async_commit();
  __syncthreads();
  out[threadIdx.x] = st_buf[31 - threadIdx.x];
}

// The same with the wait: correct.
MIAD_EXTERN void ok_cp_async(const float4 *in, float4 *out) {
  __shared__ __align__(16) float4 st_buf2[32];
  miad_cp_async16((u32)__cvta_generic_to_shared(&st_buf2[threadIdx.x]), in + threadIdx.x,
                  threadIdx.x == 5 ? 8 : 16);  // lane 5: the upper 8 bytes zero-filled
  miad_cp_async_commit();
  miad_cp_async_wait<0>();
  __syncthreads();
  out[threadIdx.x] = st_buf2[31 - threadIdx.x];
}

// An mbarrier whose phase needs two arrivals and gets one.
MIAD_EXTERN void bad_mbarrier(int *out) {
  __shared__ __align__(8) u64 st_bar;
  const u32 bar = (u32)__cvta_generic_to_shared(&st_bar);
  if (threadIdx.x == 0) miad_mbar_init(bar, 2);
  __syncthreads();
  if (threadIdx.x == 0) miad_mbar_arrive_release(bar);
  miad_mbar_try_wait_parity(bar, 0);
  out[threadIdx.x] = 1;
}

// Warp collectives: out[lane * 8 + i] for i = shfl idx, xor, up, down, ballot, any, all,
// reduce add / min / max (signed) folded into 8 slots (see the test).
MIAD_EXTERN void ok_collectives(const int *in, int *out) {
  const int lane = threadIdx.x & 31, v = in[threadIdx.x];
  int *o = out + threadIdx.x * 8;
  o[0] = __shfl_sync(0xffffffffu, v, (lane * 7) & 31);
  o[1] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[2] = __shfl_up_sync(0xffffffffu, v, 3);
  o[3] = __shfl_down_sync(0xffffffffu, v, 3, 16);
  o[4] = (int)__ballot_sync(0xffffffffu, v > 0);
  o[5] = __any_sync(0xffffffffu, v == 7) + 2 * __all_sync(0xffffffffu, v > -1000);
  o[6] = __reduce_add_sync(0xffffffffu, v) ^ __reduce_min_sync(0xffffffffu, v);
  o[7] = __reduce_max_sync(0xffffffffu, v) + (int)(__popc(miad_lanemask_lt()) == lane);
}

// D = A B + C for one m16n8k16 tile: A (16x16 f16, row-major) through ldmatrix.x4 from
// shared memory, B (16x8, given as 8 rows n of 16 k) through ldmatrix.x2-as-x4 of two
// k halves, C and D f32 row-major 16x8. bf != 0: the bf16 variant with B loaded by
// ldmatrix.trans from a k-major copy.
MIAD_EXTERN void ok_mma(const unsigned short *a, const unsigned short *bt,
                        const unsigned short *bk, const float *c, float *d, int bf) {
  __shared__ __align__(16) unsigned short st_a[16][24];
  __shared__ __align__(16) unsigned short st_bt[16][24];  // rows n (8 used), k contiguous
  __shared__ __align__(16) unsigned short st_bk[16][24];  // rows k, n contiguous (8 used)
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    st_a[i / 16][i % 16] = a[i];
    if (i < 128) st_bt[i / 16][i % 16] = bt[i];
    if (i < 128) st_bk[i / 8][i % 8] = bk[i];
  }
  __syncwarp();
  u32 fa[4], fb[4];
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
  miad_ldmatrix_x4(fa, (u32)__cvta_generic_to_shared(&st_a[(lane % 8) + ((lane / 8) & 1) * 8]
                                                          [(lane / 16) * 8]));
  if (!bf) {
    // B (non-transposed, rows n): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), then repeats.
    miad_ldmatrix_x4(fb, (u32)__cvta_generic_to_shared(&st_bt[lane % 8][((lane / 8) & 1) * 8]));
  } else {
    // B from k-major rows with .trans: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), repeats.
    miad_ldmatrix_x4_trans(fb,
                           (u32)__cvta_generic_to_shared(&st_bk[(lane % 8) + ((lane / 8) & 1) * 8][0]));
  }
  const int g = lane / 4, t = lane % 4;
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                  c[(g + 8) * 8 + 2 * t + 1]};
  if (bf) {
    miad_mma_bf16_16816(acc, fa, fb[0], fb[1]);
  } else {
    miad_mma_f16_16816(acc, fa, fb[0], fb[1]);
  }
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// CUDA's global classification functions (isfinite / isnan / isinf), float and double.
MIAD_EXTERN void ok_classify(const float *in, int n, int *out) {
  const int i = threadIdx.x;
  if (i >= n) return;
  const float f = in[i];
  const double d = (double)f;
  out[i] = (isfinite(f) ? 1 : 0) | (isnan(f) ? 2 : 0) | (isinf(f) ? 4 : 0) |
           (isfinite(d) ? 8 : 0) | (isnan(d) ? 16 : 0) | (isinf(d) ? 32 : 0);
}

// Write-after-read hazard: each thread reads its partner warp's value, then overwrites its
// own without a barrier in between. Under the run-ahead orders one warp finishes before the
// other starts, so the later warp reads -1 in every lane.
MIAD_EXTERN void bad_war(int *out) {
  __shared__ int s[64];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  const int v = s[t ^ 32];
  s[t] = -1;  // bug: the partner may not have read it yet
  out[t] = v;
}

// The same hazard with cp.async: the slot is refilled while the partner warp may still read
// it. The copy's destination is undefined from issue to wait, so the late reader sees NaN.
MIAD_EXTERN void bad_cp_async_war(const float4 *in, float4 *out) {
  __shared__ __align__(16) float4 st_war[64];
  const int t = threadIdx.x;
  st_war[t] = make_float4((float)t, (float)t, (float)t, (float)t);
  __syncthreads();
  const float4 v = st_war[t ^ 32];
  miad_cp_async16((u32)__cvta_generic_to_shared(&st_war[t]), in + t, 16);  // bug: no barrier
  miad_cp_async_commit();
  __syncthreads();
  miad_cp_async_wait<0>();
  out[t] = v;
}
