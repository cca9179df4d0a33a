// Greedy coreset selection (SPEC §6) at fit time: the farthest-first traversal of
// runtime/cpu/coreset.rs `greedy`, with the same arithmetic, so the indices are identical.
//
// Rule: the first centre is row 0; repeatedly pick the row with the largest squared distance
// to its nearest chosen centre, ties to the lowest index.
//
// Arithmetic mirrored from the CPU (bit for bit):
// - a squared distance is Rust's `a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()`:
//   one sum from left to right over the dimensions, every difference, product and sum
//   rounded on its own (no fused multiply-add): cs_sq_term + __fadd_rn in dimension order,
//   one thread per row;
// - the triangle-inequality pruning of `greedy` with the same test: a row whose nearest
//   centre o satisfies cc[o] >= (4 * r2) * (1 + margin) is not measured (the factor comes
//   from the host, computed like the CPU's constant);
// - a measured row takes the new distance only when it is strictly smaller;
// - the arg-max over packed keys (distance bits << 32 | ~row): the largest distance, then
//   the lowest row (distances are >= +0 or +inf, never NaN: a NaN distance never passes
//   `d < r2`).
//
// Per step s (the centre chosen last is row state[0], stored as column s of C):
//   coreset_cc_f32      cc[j] = |C_j - q|^2 for the s earlier centres (C is k x ldc,
//                       column-major, so a warp reads 32 consecutive floats per dimension);
//   coreset_update_f32  each block owns CS_SEG consecutive rows: loads their running
//                       distances, keeps the rows the pruning test cannot skip (a list in
//                       shared memory, in row order), measures them 256 at a time through a
//                       shared-memory tile (coalesced loads of 32 dimensions of 256 rows),
//                       updates min_d / owner, and writes its best key; the last block to
//                       finish (threadfence + counter) reduces the block keys in block order
//                       and publishes the next centre: state[0], out[s + 1], column s + 1 of C.
// No float atomics; the one integer atomic only elects the last block, so the bits do not
// depend on scheduling.
#include "common.cuh"

#define CS_NONE 0xffffffffu
#define CS_THREADS 256
#define CS_WARPS (CS_THREADS / 32)
#define CS_ROUNDS 4
#define CS_SEG (CS_THREADS * CS_ROUNDS)
#define CS_TK 32
#define CS_CC_THREADS 256

__device__ __forceinline__ float cs_sq_term(float a, float b) {
  const float t = __fsub_rn(a, b);
  return __fmul_rn(t, t);
}

__device__ __forceinline__ u64 cs_max(u64 a, u64 b) { return a > b ? a : b; }

__device__ __forceinline__ u64 cs_warp_max(u64 v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = cs_max(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Rows are `ld` floats apart (ld >= k, a multiple of 32: every 32-dimension tile of a row is
// one aligned 128-byte line); only the first k are read.
//
// Running distances +inf, owners none, row 0 is the first centre (out[0], column 0 of C),
// state = {current centre 0, finished-block counter 0}.
MIAD_EXTERN void coreset_init_f32(const float *__restrict__ P, u32 n, u32 k,
                                  float *__restrict__ min_d, u32 *__restrict__ owner,
                                  float *__restrict__ C, u32 ldc, u32 *__restrict__ out,
                                  u32 *__restrict__ state) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    min_d[i] = __int_as_float(0x7f800000);
    owner[i] = CS_NONE;
  }
  if (blockIdx.x == 0) {
    for (u32 t = threadIdx.x; t < k; t += blockDim.x) C[(size_t)t * ldc] = P[t];
    if (threadIdx.x == 0) {
      out[0] = 0;
      state[0] = 0;
      state[1] = 0;
    }
  }
}

// cc[j] = sum_t (C[t][j] - q[t])^2 for j < step, q = row state[0] of P.
MIAD_EXTERN void __launch_bounds__(CS_CC_THREADS)
    coreset_cc_f32(const float *__restrict__ P, u32 k, u32 ld, const float *__restrict__ C, u32 ldc,
                   const u32 *__restrict__ state, u32 step, float *__restrict__ cc) {
  __shared__ float qs[CS_CC_THREADS];
  const float *q = P + (size_t)state[0] * ld;
  const u32 j = blockIdx.x * CS_CC_THREADS + threadIdx.x;
  const bool live = j < step;
  const float *c = C + j;
  float acc = 0.f;
  for (u32 t0 = 0; t0 < k; t0 += CS_CC_THREADS) {
    const u32 len = min(k - t0, (u32)CS_CC_THREADS);
    __syncthreads();
    if (threadIdx.x < len) qs[threadIdx.x] = q[t0 + threadIdx.x];
    __syncthreads();
    if (live) {
      const float *ct = c + (size_t)t0 * ldc;
#pragma unroll 8
      for (u32 t = 0; t < len; ++t) acc = __fadd_rn(acc, cs_sq_term(ct[(size_t)t * ldc], qs[t]));
    }
  }
  if (live) cc[j] = acc;
}

// One step of the selection (see the file comment). `factor` = 1 + the CPU's pruning margin.
MIAD_EXTERN void __launch_bounds__(CS_THREADS)
    coreset_update_f32(const float *__restrict__ P, u32 n, u32 k, u32 ld, u32 step, u32 m,
                       const float *__restrict__ cc, float factor, float *__restrict__ min_d,
                       u32 *__restrict__ owner, float *__restrict__ C, u32 ldc,
                       u32 *__restrict__ out, u64 *__restrict__ block_keys,
                       u32 *__restrict__ state) {
  __shared__ float seg_md[CS_SEG];
  __shared__ u32 list[CS_SEG];
  __shared__ float tile[CS_THREADS * (CS_TK + 1)];
  __shared__ float qs[CS_TK];
  __shared__ u32 warp_cnt[CS_WARPS];
  __shared__ u64 warp_key[CS_WARPS];
  __shared__ u32 last_block;
  __shared__ u32 next_row;
  const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const size_t base = (size_t)blockIdx.x * CS_SEG;
  const float *q = P + (size_t)state[0] * ld;

  // 1. Running distances of the segment, and the rows the pruning test cannot skip.
  u32 count = 0;
  for (u32 r = 0; r < CS_ROUNDS; ++r) {
    const u32 local = r * CS_THREADS + tid;
    const size_t row = base + local;
    bool measure = false;
    if (row < n) {
      const float r2 = min_d[row];
      const u32 o = owner[row];
      seg_md[local] = r2;
      const bool skip = o != CS_NONE && cc[o] >= __fmul_rn(__fmul_rn(4.0f, r2), factor);
      measure = !skip;
    }
    const u32 bal = __ballot_sync(0xffffffffu, measure);
    if (lane == 0) warp_cnt[warp] = __popc(bal);
    __syncthreads();
    u32 off = count, total = 0;
#pragma unroll
    for (u32 w = 0; w < CS_WARPS; ++w) {
      const u32 c = warp_cnt[w];
      off += (w < warp) ? c : 0u;
      total += c;
    }
    if (measure) list[off + __popc(bal & ((1u << lane) - 1u))] = local;
    count += total;
    __syncthreads();
  }

  // 2. Distances of the listed rows to the new centre, 256 rows at a time.
  for (u32 g = 0; g < count; g += CS_THREADS) {
    const u32 rows = min(count - g, (u32)CS_THREADS);
    float acc = 0.f;
    for (u32 t0 = 0; t0 < k; t0 += CS_TK) {
      const u32 len = min(k - t0, (u32)CS_TK);
      __syncthreads();
      if (tid < len) qs[tid] = q[t0 + tid];
      for (u32 i = warp; i < rows; i += CS_WARPS) {
        const size_t row = base + list[g + i];
        if (lane < len) tile[i * (CS_TK + 1) + lane] = P[row * ld + t0 + lane];
      }
      __syncthreads();
      if (tid < rows) {
        const float *a = tile + tid * (CS_TK + 1);
        if (len == CS_TK) {
#pragma unroll
          for (u32 t = 0; t < CS_TK; ++t) acc = __fadd_rn(acc, cs_sq_term(a[t], qs[t]));
        } else {
          for (u32 t = 0; t < len; ++t) acc = __fadd_rn(acc, cs_sq_term(a[t], qs[t]));
        }
      }
    }
    if (tid < rows) {
      const u32 local = list[g + tid];
      if (acc < seg_md[local]) {
        const size_t row = base + local;
        seg_md[local] = acc;
        min_d[row] = acc;
        owner[row] = step;
      }
    }
  }
  __syncthreads();

  // 3. The segment's best key; the last block to finish picks the next centre.
  u64 best = 0;
#pragma unroll
  for (u32 r = 0; r < CS_ROUNDS; ++r) {
    const u32 local = r * CS_THREADS + tid;
    const size_t row = base + local;
    if (row < n)
      best = cs_max(best, ((u64)__float_as_uint(seg_md[local]) << 32) | (u64)(~(u32)row));
  }
  best = cs_warp_max(best);
  if (lane == 0) warp_key[warp] = best;
  __syncthreads();
  if (tid == 0) {
    u64 b = warp_key[0];
#pragma unroll
    for (u32 w = 1; w < CS_WARPS; ++w) b = cs_max(b, warp_key[w]);
    block_keys[blockIdx.x] = b;
    __threadfence();
    last_block = (atomicAdd(&state[1], 1u) == gridDim.x - 1) ? 1u : 0u;
  }
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  u64 b = 0;
  for (u32 i = tid; i < gridDim.x; i += CS_THREADS) b = cs_max(b, __ldcg(&block_keys[i]));
  b = cs_warp_max(b);
  if (lane == 0) warp_key[warp] = b;
  __syncthreads();
  if (tid == 0) {
    u64 w0 = warp_key[0];
#pragma unroll
    for (u32 w = 1; w < CS_WARPS; ++w) w0 = cs_max(w0, warp_key[w]);
    const u32 next = ~(u32)w0;
    next_row = next;
    state[0] = next;
    state[1] = 0;
    if (step + 1 < m) out[step + 1] = next;
  }
  __syncthreads();
  if (step + 1 < m) {
    const float *src = P + (size_t)next_row * ld;
    for (u32 t = tid; t < k; t += CS_THREADS) C[(size_t)t * ldc + step + 1] = src[t];
  }
}
