// Fused multi-head self-attention (flash-attention style).
//
// Input: the output of the fused QKV projection, row-major [n_tokens, 3 * n_heads * D]
// with the timm layout (token, {q,k,v}, head, dim). Output: [n_tokens, n_heads * D],
// heads concatenated (timm's `transpose(1, 2).reshape`). The score matrix never leaves
// the chip: keys and values stream through shared memory in tiles of 64, with an online
// softmax. The head dimension D is a compile-time constant: 64 (ViT-B and Point-MAE) or
// 32 (the small test models), one kernel each; token and head counts are arguments. No
// atomics: every output element is written by exactly one thread, so a launch's bits do
// not depend on scheduling.
//
// attention_f32, attention_f32_d32:   exact f32 path (one query per thread, scores in
//                                     registers).
// attention_bf16, attention_bf16_d32: bf16 tensor cores (mma.sync m16n8k16, f32
//                                     accumulation), bf16 in/out. grid.z splits the keys
//                                     (flash-decoding) so that a ViT-B/8 layer (13 query
//                                     tiles × 12 heads) fills more than one block per SM:
//                                     with one split the output is written directly; with
//                                     more, each split writes its unnormalised output,
//                                     running maximum and row sum (f32) to `parts`, and
// attention_combine_bf16(_d32):       merges the splits of each (token, head) in split
//                                     order (a fixed order: deterministic).

#include "common.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#include <cuda_bf16.h>

#define ATT_TILE 64

// ---------------------------------------------------------------------------------------
// Exact f32 path. Block: 64 threads, 64 queries of one head. grid = (ceil(n/64), heads).
template <int ATT_D>
__device__ __forceinline__ void attention_f32_body(const float *__restrict__ qkv,
                                                   float *__restrict__ out, int n_tokens,
                                                   int n_heads, float scale) {
    __shared__ float ks[ATT_TILE][ATT_D];
    __shared__ float vs[ATT_TILE][ATT_D];
    const int head = blockIdx.y;
    const int qi = blockIdx.x * ATT_TILE + threadIdx.x;
    const long row_stride = 3L * n_heads * ATT_D;
    const int hd = n_heads * ATT_D;

    float q[ATT_D];
    float acc[ATT_D];
    const bool valid = qi < n_tokens;
    const float *qrow = qkv + (long)(valid ? qi : 0) * row_stride + head * ATT_D;
#pragma unroll
    for (int d = 0; d < ATT_D; d++) {
        q[d] = qrow[d] * scale;
        acc[d] = 0.f;
    }
    float m = -INFINITY;
    float l = 0.f;

    for (int k0 = 0; k0 < n_tokens; k0 += ATT_TILE) {
        __syncthreads();
        // Load K and V tiles: 64 rows x 64 floats each, float4 per access.
        for (int i = threadIdx.x; i < ATT_TILE * ATT_D / 4; i += 64) {
            const int r = i / (ATT_D / 4);
            const int c = (i % (ATT_D / 4)) * 4;
            float4 kv = make_float4(0.f, 0.f, 0.f, 0.f);
            float4 vv = kv;
            if (k0 + r < n_tokens) {
                const float *base = qkv + (long)(k0 + r) * row_stride + head * ATT_D + c;
                kv = *reinterpret_cast<const float4 *>(base + hd);
                vv = *reinterpret_cast<const float4 *>(base + 2 * hd);
            }
            *reinterpret_cast<float4 *>(&ks[r][c]) = kv;
            *reinterpret_cast<float4 *>(&vs[r][c]) = vv;
        }
        __syncthreads();
        const int kn = min(ATT_TILE, n_tokens - k0);
        for (int j = 0; j < kn; j++) {
            float s = 0.f;
#pragma unroll
            for (int d = 0; d < ATT_D; d++) s = fmaf(q[d], ks[j][d], s);
            if (s > m) {
                const float c = expf(m - s);
                l *= c;
#pragma unroll
                for (int d = 0; d < ATT_D; d++) acc[d] *= c;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
#pragma unroll
            for (int d = 0; d < ATT_D; d++) acc[d] = fmaf(p, vs[j][d], acc[d]);
        }
    }
    if (valid) {
        const float inv = 1.f / l;
        float *orow = out + (long)qi * hd + head * ATT_D;
#pragma unroll
        for (int d = 0; d < ATT_D; d += 4) {
            *reinterpret_cast<float4 *>(orow + d) =
                make_float4(acc[d] * inv, acc[d + 1] * inv, acc[d + 2] * inv, acc[d + 3] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(64) attention_f32(const float *__restrict__ qkv,
                                                               float *__restrict__ out,
                                                               int n_tokens, int n_heads,
                                                               float scale) {
    attention_f32_body<64>(qkv, out, n_tokens, n_heads, scale);
}

extern "C" __global__ void __launch_bounds__(64)
    attention_f32_d32(const float *__restrict__ qkv, float *__restrict__ out, int n_tokens,
                      int n_heads, float scale) {
    attention_f32_body<32>(qkv, out, n_tokens, n_heads, scale);
}

// ---------------------------------------------------------------------------------------
// bf16 tensor-core path. Block: 4 warps, 64 queries (16 per warp) of one head.
// Shared rows are padded by 8 halves (D + 8: 144 bytes for D = 64, 80 for D = 32; 16-byte
// multiples, as cp.async and ldmatrix need) so that fragment loads and ldmatrix hit
// distinct banks.

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

__device__ __forceinline__ void mma_bf16_16816(float c[4], const unsigned a[4], unsigned b0,
                                               unsigned b1) {
    miad_mma_bf16_16816(c, a, b0, b1);
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    miad_cp_async16((u32)__cvta_generic_to_shared(smem), gmem, pred ? 16u : 0u);
}
__device__ __forceinline__ void cp_async_commit() { miad_cp_async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait() { miad_cp_async_wait<N>(); }

// Partial results of split s (grid.z > 1): `parts` holds splits × n_tokens × n_heads × D
// floats of unnormalised output, then splits × n_tokens × n_heads pairs (running maximum in
// log2 units, row sum).
__device__ __forceinline__ long att_part_row(int split, int token, int head, int n_tokens,
                                             int n_heads) {
    return ((long)split * n_tokens + token) * n_heads + head;
}

template <int ATT_D>
__device__ __forceinline__ void attention_bf16_body(const __nv_bfloat16 *__restrict__ qkv,
                                                    __nv_bfloat16 *__restrict__ out,
                                                    float *__restrict__ parts, int n_tokens,
                                                    int n_heads, float scale,
                                                    int tiles_per_split) {
    constexpr int ATT_PAD = ATT_D + 8;
    constexpr int KSTEPS = ATT_D / 16;  // k16 steps of Q K^T over the head dimension
    constexpr int DTILES = ATT_D / 8;   // n8 tiles of the output over the head dimension
    constexpr int ROW_CHUNKS = ATT_D / 8;  // 16-byte chunks per K or V row
    // Two stages of K and V.
    __shared__ __align__(16) __nv_bfloat16 ks[2][ATT_TILE][ATT_PAD];
    __shared__ __align__(16) __nv_bfloat16 vs[2][ATT_TILE][ATT_PAD];
    const int head = blockIdx.y;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;  // row within the 8-row group
    const int t = lane % 4;  // column pair
    const long row_stride = 3L * n_heads * ATT_D;
    const int hd = n_heads * ATT_D;
    const int q0 = blockIdx.x * ATT_TILE + warp * 16;
    // This block's key tiles: [first_tile, end_tile) of split blockIdx.z (never empty: the
    // host picks the split count so that every split has a tile).
    const int n_tiles = (n_tokens + ATT_TILE - 1) / ATT_TILE;
    const int first_tile = blockIdx.z * tiles_per_split;
    const int end_tile = min(n_tiles, first_tile + tiles_per_split);

    auto load_tile = [&](int stage, int k0) {
        // 64 rows x D halves = 8·D chunks of 16 bytes per matrix; 128 threads x D/16.
#pragma unroll
        for (int i = 0; i < ATT_TILE * ROW_CHUNKS / 128; i++) {
            const int chunk = threadIdx.x + i * 128;
            const int r = chunk / ROW_CHUNKS;
            const int c = (chunk % ROW_CHUNKS) * 8;
            const bool ok = k0 + r < n_tokens;
            const long rr = ok ? (k0 + r) : 0;
            const __nv_bfloat16 *base = qkv + rr * row_stride + head * ATT_D + c;
            cp_async16(&ks[stage][r][c], base + hd, ok);
            cp_async16(&vs[stage][r][c], base + 2 * hd, ok);
        }
        cp_async_commit();
    };

    load_tile(0, first_tile * ATT_TILE);

    // Q fragments (A operand), D/16 k-steps of 16 over the head dimension.
    unsigned qa[KSTEPS][4];
    {
        const int r0 = min(q0 + g, n_tokens - 1);
        const int r1 = min(q0 + g + 8, n_tokens - 1);
        const __nv_bfloat16 *p0 = qkv + (long)r0 * row_stride + head * ATT_D;
        const __nv_bfloat16 *p1 = qkv + (long)r1 * row_stride + head * ATT_D;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            qa[kk][0] = *reinterpret_cast<const unsigned *>(p0 + kk * 16 + 2 * t);
            qa[kk][1] = *reinterpret_cast<const unsigned *>(p1 + kk * 16 + 2 * t);
            qa[kk][2] = *reinterpret_cast<const unsigned *>(p0 + kk * 16 + 8 + 2 * t);
            qa[kk][3] = *reinterpret_cast<const unsigned *>(p1 + kk * 16 + 8 + 2 * t);
        }
    }

    const float sl2 = scale * 1.4426950408889634f;  // scores in log2 units
    float o[DTILES][4];
#pragma unroll
    for (int j = 0; j < DTILES; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // rows g and g + 8
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums

    for (int tile = first_tile; tile < end_tile; tile++) {
        const int stage = (tile - first_tile) & 1;
        const int k0 = tile * ATT_TILE;
        if (tile + 1 < end_tile) {
            load_tile(stage ^ 1, k0 + ATT_TILE);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        // S = Q K^T for 16 queries x 64 keys: 8 n-tiles of 8 keys.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            const __nv_bfloat16 *krow = &ks[stage][j * 8 + g][0];
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                const unsigned b0 = *reinterpret_cast<const unsigned *>(krow + kk * 16 + 2 * t);
                const unsigned b1 =
                    *reinterpret_cast<const unsigned *>(krow + kk * 16 + 8 + 2 * t);
                mma_bf16_16816(s[j], qa[kk], b0, b1);
            }
        }
        // Scale, mask keys past the end, online softmax.
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int key = k0 + j * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const bool ok = key + (e & 1) < n_tokens;
                s[j][e] = ok ? s[j][e] * sl2 : -INFINITY;
            }
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float c0 = exp2f(m0 - mx0);
        const float c1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int j = 0; j < DTILES; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }
        unsigned pa[4][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float p0 = exp2f(s[j][0] - m0);
            const float p1 = exp2f(s[j][1] - m0);
            const float p2 = exp2f(s[j][2] - m1);
            const float p3 = exp2f(s[j][3] - m1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            // C layout of two adjacent n-tiles = A layout of one k16 step.
            pa[j / 2][(j & 1) * 2 + 0] = pack_bf16(p0, p1);
            pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
        // O += P V: V tile is row-major [key][d]; ldmatrix.trans gives the B fragments.
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int j = 0; j < DTILES; j += 2) {
                // x4: matrices (keys kk*16+0..7, d j*8), (keys +8..15, d j*8),
                //     (keys 0..7, d (j+1)*8), (keys 8..15, d (j+1)*8).
                const int mi = lane / 8;
                const int r = kk * 16 + (mi & 1) * 8 + (lane % 8);
                const int c = (j + (mi >> 1)) * 8;
                const unsigned addr = (unsigned)__cvta_generic_to_shared(&vs[stage][r][c]);
                unsigned b[4];
                miad_ldmatrix_x4_trans(b, addr);
                const unsigned b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
                mma_bf16_16816(o[j], pa[kk], b0, b1);
                mma_bf16_16816(o[j + 1], pa[kk], b2, b3);
            }
        }
        __syncthreads();
    }
    // Reduce the row sums across the 4 threads of each row.
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int r0 = q0 + g;
    const int r1 = q0 + g + 8;
    if (gridDim.z > 1) {
        // One split of several: the unnormalised output and (maximum, sum) of each row.
        const long p0 = att_part_row(blockIdx.z, r0, head, n_tokens, n_heads);
        const long p1 = att_part_row(blockIdx.z, r1, head, n_tokens, n_heads);
        float *ml = parts + (long)gridDim.z * n_tokens * hd;
#pragma unroll
        for (int j = 0; j < DTILES; j++) {
            const int col = j * 8 + 2 * t;
            if (r0 < n_tokens)
                *reinterpret_cast<float2 *>(parts + p0 * ATT_D + col) = make_float2(o[j][0], o[j][1]);
            if (r1 < n_tokens)
                *reinterpret_cast<float2 *>(parts + p1 * ATT_D + col) = make_float2(o[j][2], o[j][3]);
        }
        if (t == 0) {
            if (r0 < n_tokens) *reinterpret_cast<float2 *>(ml + 2 * p0) = make_float2(m0, l0);
            if (r1 < n_tokens) *reinterpret_cast<float2 *>(ml + 2 * p1) = make_float2(m1, l1);
        }
        return;
    }
    // Normalise, store.
    const float inv0 = 1.f / l0;
    const float inv1 = 1.f / l1;
#pragma unroll
    for (int j = 0; j < DTILES; j++) {
        const int col = head * ATT_D + j * 8 + 2 * t;
        if (r0 < n_tokens)
            *reinterpret_cast<unsigned *>(out + (long)r0 * hd + col) =
                pack_bf16(o[j][0] * inv0, o[j][1] * inv0);
        if (r1 < n_tokens)
            *reinterpret_cast<unsigned *>(out + (long)r1 * hd + col) =
                pack_bf16(o[j][2] * inv1, o[j][3] * inv1);
    }
}

// Merges `splits` partial results (layout above) of each (token, head): one warp per row,
// splits in order. Block: ATT_COMBINE_ROWS warps.
#define ATT_COMBINE_ROWS 8
template <int ATT_D>
__device__ __forceinline__ void attention_combine_body(const float *__restrict__ parts,
                                                       __nv_bfloat16 *__restrict__ out,
                                                       int n_tokens, int n_heads, int splits) {
    const int row = blockIdx.x * ATT_COMBINE_ROWS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_tokens * n_heads) return;
    const int token = row / n_heads, head = row % n_heads;
    const float *ml = parts + (long)splits * n_tokens * n_heads * ATT_D;
    float m = -INFINITY;
    for (int s = 0; s < splits; s++) m = fmaxf(m, ml[2 * att_part_row(s, token, head, n_tokens, n_heads)]);
    float l = 0.f;
    for (int s = 0; s < splits; s++) {
        const long p = att_part_row(s, token, head, n_tokens, n_heads);
        l = fmaf(ml[2 * p + 1], exp2f(ml[2 * p] - m), l);
    }
    const float inv = 1.f / l;
    for (int c = lane; c < ATT_D; c += 32) {
        float o = 0.f;
        for (int s = 0; s < splits; s++) {
            const long p = att_part_row(s, token, head, n_tokens, n_heads);
            o = fmaf(parts[p * ATT_D + c], exp2f(ml[2 * p] - m), o);
        }
        out[(long)token * n_heads * ATT_D + head * ATT_D + c] = __float2bfloat16_rn(o * inv);
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attention_bf16(const __nv_bfloat16 *__restrict__ qkv, __nv_bfloat16 *__restrict__ out,
                   float *__restrict__ parts, int n_tokens, int n_heads, float scale,
                   int tiles_per_split) {
    attention_bf16_body<64>(qkv, out, parts, n_tokens, n_heads, scale, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(128)
    attention_bf16_d32(const __nv_bfloat16 *__restrict__ qkv, __nv_bfloat16 *__restrict__ out,
                       float *__restrict__ parts, int n_tokens, int n_heads, float scale,
                       int tiles_per_split) {
    attention_bf16_body<32>(qkv, out, parts, n_tokens, n_heads, scale, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(ATT_COMBINE_ROWS * 32)
    attention_combine_bf16(const float *__restrict__ parts, __nv_bfloat16 *__restrict__ out,
                           int n_tokens, int n_heads, int splits) {
    attention_combine_body<64>(parts, out, n_tokens, n_heads, splits);
}

extern "C" __global__ void __launch_bounds__(ATT_COMBINE_ROWS * 32)
    attention_combine_bf16_d32(const float *__restrict__ parts, __nv_bfloat16 *__restrict__ out,
                               int n_tokens, int n_heads, int splits) {
    attention_combine_body<32>(parts, out, n_tokens, n_heads, splits);
}
