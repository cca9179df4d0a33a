// Shared helpers for miad's kernels. Every kernel file includes this first.
// build.rs and compile.py inline it (the `#include "common.cuh"` line is replaced by this
// text), so NVRTC never needs the kernels/ folder at run time.
#pragma once

#define MIAD_EXTERN extern "C" __global__

typedef unsigned int u32;
typedef unsigned long long u64;

// Squared distance in the one operation order every backend uses: (dx*dx + dy*dy) + dz*dz,
// each product and sum rounded separately (no fused multiply-add), so the CPU oracle
// gives the same bits.
__device__ __forceinline__ float miad_sq_dist(float ax, float ay, float az, float bx, float by,
                                              float bz) {
  float dx = __fsub_rn(ax, bx), dy = __fsub_rn(ay, by), dz = __fsub_rn(az, bz);
  return __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), __fmul_rn(dz, dz));
}

// (distance, index) packed so that the u64 order is the (distance, index) order for
// non-negative distances: the float's bits are monotone for x >= 0.
__device__ __forceinline__ u64 miad_key(float d, u32 i) {
  return ((u64)__float_as_uint(d) << 32) | (u64)i;
}

// Warp argmax of non-negative floats, ties to the lowest index; every lane gets the result.
__device__ __forceinline__ void miad_warp_argmax(float &d, u32 &i) {
  u32 bits = __float_as_uint(d);
  u32 m = __reduce_max_sync(0xffffffffu, bits);
  u32 cand = (bits == m) ? i : 0xffffffffu;
  i = __reduce_min_sync(0xffffffffu, cand);
  d = __uint_as_float(m);
}
