// Exact nearest-neighbour search of query features in a memory bank, with the distance
// matrix never written to device memory.
//
// Layouts: queries [nq, dim] row-major, bank [nb, dim] row-major, dim a multiple of 32.
// A search runs in two launches:
//   1. a tile kernel: block (query tile, bank split) scans bank tiles of its split and keeps,
//      per query, the lexicographically smallest (distance, index) in registers; it writes
//      one (distance, index) pair per (query, split);
//   2. bank_reduce_*: per query, the smallest pair over splits (the order does not matter:
//      (distance, index) is a total order, so the result is the same for any split count).
// The fast path (f16 tensor cores, ||q||^2 - 2 q.b + ||b||^2 with precomputed f32 norms)
// re-ranks the `rerank` best split winners in exact f32 against the f32 bank.
// No atomics anywhere.

#include "common.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#include <cuda_fp16.h>

__device__ __forceinline__ bool pair_less(float da, int ia, float db, int ib) {
    return da < db || (da == db && ia < ib);
}

// Squared norms of rows (f32), one warp per row, fixed reduction order.
extern "C" __global__ void row_sqnorm_f32(const float *__restrict__ x, float *__restrict__ out,
                                          int rows, int dim) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *p = x + (long)row * dim;
    float s = 0.f;
    for (int c = lane; c < dim; c += 32) s = fmaf(p[c], p[c], s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[row] = s;
}

// f32 -> f16 conversion (bank and queries of the fast path).
extern "C" __global__ void convert_f32_f16(const float *__restrict__ x, __half *__restrict__ y,
                                           long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half_rn(x[i]);
}

// ---------------------------------------------------------------------------------------
// Exact f32 path: sum of squared differences (no cancellation). Block 256 threads, tile
// 64 queries x 64 bank rows, 4 x 4 per thread, dim streamed in chunks of 32.
#define F_TQ 64
#define F_TB 64
#define F_KC 32

extern "C" __global__ void __launch_bounds__(256, 1)
    bank_search_f32(const float *__restrict__ q, const float *__restrict__ bank, int nq, int nb,
                    int dim, int tiles_per_split, float *__restrict__ part_d,
                    int *__restrict__ part_i) {
    __shared__ float qs[F_KC][F_TQ + 4];
    __shared__ float bs[F_KC][F_TB + 4];
    __shared__ float red_d[16][F_TQ];
    __shared__ int red_i[16][F_TQ];
    const int tx = threadIdx.x % 16;  // bank direction
    const int ty = threadIdx.x / 16;  // query direction
    const int q0 = blockIdx.x * F_TQ;
    const int split = blockIdx.y;
    const int n_splits = gridDim.y;

    float best_d[4];
    int best_i[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        best_d[i] = INFINITY;
        best_i[i] = 0x7fffffff;
    }
    const int n_bank_tiles = (nb + F_TB - 1) / F_TB;
    const int t_begin = split * tiles_per_split;
    const int t_end = min(n_bank_tiles, t_begin + tiles_per_split);
    for (int bt = t_begin; bt < t_end; bt++) {
        const int b0 = bt * F_TB;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
        for (int k0 = 0; k0 < dim; k0 += F_KC) {
            __syncthreads();
            // 64 rows x 32 columns each, transposed into [k][row].
            for (int e = threadIdx.x; e < F_TQ * F_KC; e += 256) {
                const int r = e / F_KC;
                const int c = e % F_KC;
                const int qr = min(q0 + r, nq - 1);
                const int br = min(b0 + r, nb - 1);
                qs[c][r] = q[(long)qr * dim + k0 + c];
                bs[c][r] = bank[(long)br * dim + k0 + c];
            }
            __syncthreads();
#pragma unroll 4
            for (int k = 0; k < F_KC; k++) {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; i++) a[i] = qs[k][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; j++) b[j] = bs[k][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const float d = a[i] - b[j];
                        acc[i][j] = fmaf(d, d, acc[i][j]);
                    }
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int bi = b0 + tx + 16 * j;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const bool take = bi < nb && pair_less(acc[i][j], bi, best_d[i], best_i[i]);
                best_d[i] = take ? acc[i][j] : best_d[i];
                best_i[i] = take ? bi : best_i[i];
            }
        }
    }
    // Reduce across the 16 threads that share a query row (tx direction).
#pragma unroll
    for (int i = 0; i < 4; i++) {
        red_d[tx][ty + 16 * i] = best_d[i];
        red_i[tx][ty + 16 * i] = best_i[i];
    }
    __syncthreads();
    if (threadIdx.x < F_TQ) {
        const int r = threadIdx.x;
        float d = red_d[0][r];
        int id = red_i[0][r];
        for (int x = 1; x < 16; x++)
            if (pair_less(red_d[x][r], red_i[x][r], d, id)) {
                d = red_d[x][r];
                id = red_i[x][r];
            }
        if (q0 + r < nq) {
            part_d[(long)(q0 + r) * n_splits + split] = d;
            part_i[(long)(q0 + r) * n_splits + split] = id;
        }
    }
}

// Per query: the smallest (distance, index) over splits. One thread per query.
extern "C" __global__ void bank_reduce_f32(const float *__restrict__ part_d,
                                           const int *__restrict__ part_i, int nq, int n_splits,
                                           float *__restrict__ out_d, int *__restrict__ out_i) {
    const int qi = blockIdx.x * blockDim.x + threadIdx.x;
    if (qi >= nq) return;
    float d = INFINITY;
    int id = 0x7fffffff;
    for (int s = 0; s < n_splits; s++) {
        const float ds = part_d[(long)qi * n_splits + s];
        const int is = part_i[(long)qi * n_splits + s];
        if (pair_less(ds, is, d, id)) {
            d = ds;
            id = is;
        }
    }
    out_d[qi] = d;
    out_i[qi] = id;
}

// ---------------------------------------------------------------------------------------
// Fast path: f16 tensor cores. Block 128 threads = 4 warps in a 2 x 2 layout, tile 64
// queries x 128 bank rows, each warp 32 x 64 (2 x 8 mma tiles), dim in chunks of 32
// through a two-stage cp.async pipeline. Rows padded to 40 halves (80 bytes): ldmatrix
// rows land in distinct bank groups.
#define H_TQ 64
#define H_TB 128
#define H_KC 32
#define H_PAD 40

__device__ __forceinline__ void hcp_async16(void *smem, const void *gmem) {
    miad_cp_async16((u32)__cvta_generic_to_shared(smem), gmem, 16u);
}

__device__ __forceinline__ void ldsm_x4(unsigned r[4], const void *p) {
    miad_ldmatrix_x4(r, (u32)__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mma_f16_16816(float c[4], const unsigned a[4], unsigned b0,
                                              unsigned b1) {
    miad_mma_f16_16816(c, a, b0, b1);
}

extern "C" __global__ void __launch_bounds__(128)
    bank_search_f16(const __half *__restrict__ q, const __half *__restrict__ bank,
                    const float *__restrict__ qnorm, const float *__restrict__ bnorm, int nq,
                    int nb, int dim, int tiles_per_split, float *__restrict__ part_d,
                    int *__restrict__ part_i) {
    __shared__ __align__(16) __half qs[2][H_TQ][H_PAD];
    __shared__ __align__(16) __half bs[2][H_TB][H_PAD];
    __shared__ float red_d[2][H_TQ];
    __shared__ int red_i[2][H_TQ];
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int wm = warp & 1;   // query half (32 rows)
    const int wn = warp >> 1;  // bank half (64 rows)
    const int g = lane / 4;
    const int t = lane % 4;
    const int q0 = blockIdx.x * H_TQ;
    const int split = blockIdx.y;
    const int n_splits = gridDim.y;
    const int n_bank_tiles = (nb + H_TB - 1) / H_TB;
    const int t_begin = split * tiles_per_split;
    const int t_end = min(n_bank_tiles, t_begin + tiles_per_split);
    const int k_chunks = dim / H_KC;

    // Query norms of this thread's 4 rows (2 m-tiles x rows g, g+8).
    float qn[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = q0 + wm * 32 + mt * 16 + g + h * 8;
            qn[mt][h] = qnorm[min(r, nq - 1)];
        }
    float best_d[2][2];
    int best_i[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            best_d[mt][h] = INFINITY;
            best_i[mt][h] = 0x7fffffff;
        }

    auto load = [&](int stage, int b0, int k0) {
        // Queries: 64 rows x 32 halves = 256 chunks of 16 bytes; bank: 512 chunks.
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = threadIdx.x + i * 128;
            const int r = c / 4;
            const int col = (c % 4) * 8;
            const int qr = min(q0 + r, nq - 1);
            hcp_async16(&qs[stage][r][col], q + (long)qr * dim + k0 + col);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int c = threadIdx.x + i * 128;
            const int r = c / 4;
            const int col = (c % 4) * 8;
            const int br = min(b0 + r, nb - 1);
            hcp_async16(&bs[stage][r][col], bank + (long)br * dim + k0 + col);
        }
        miad_cp_async_commit();
    };

    const int total = (t_end - t_begin) * k_chunks;
    if (total > 0) load(0, t_begin * H_TB, 0);
    float acc[2][8][4];
    for (int step = 0; step < total; step++) {
        const int bt = t_begin + step / k_chunks;
        const int kc = step % k_chunks;
        const int stage = step & 1;
        if (kc == 0) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] =
                    acc[mt][j][3] = 0.f;
        }
        if (step + 1 < total) {
            const int nstep = step + 1;
            load(stage ^ 1, (t_begin + nstep / k_chunks) * H_TB, (nstep % k_chunks) * H_KC);
            miad_cp_async_wait<1>();
        } else {
            miad_cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            unsigned a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                // A 16x16: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
                // (rows 8-15, k 8-15) = a0..a3.
                const int r = wm * 32 + mt * 16 + (lane % 8) + ((lane / 8) & 1) * 8;
                const int c = kk * 16 + (lane / 16) * 8;
                ldsm_x4(a[mt], &qs[stage][r][c]);
            }
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                // B: bank rows are n, k contiguous: non-transposed ldmatrix gives b0/b1.
                // matrices (n j*8.., k 0-7), (n j*8.., k 8-15), (n (j+1)*8.., k 0-7), (.., k 8-15)
                const int mi = lane / 8;
                const int r = wn * 64 + (j + (mi >> 1)) * 8 + (lane % 8);
                const int c = kk * 16 + (mi & 1) * 8;
                unsigned b[4];
                ldsm_x4(b, &bs[stage][r][c]);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    mma_f16_16816(acc[mt][j], a[mt], b[0], b[1]);
                    mma_f16_16816(acc[mt][j + 1], a[mt], b[2], b[3]);
                }
            }
        }
        __syncthreads();
        if (kc == k_chunks - 1) {
            const int b0 = bt * H_TB + wn * 64;
#pragma unroll
            for (int j = 0; j < 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int bi = b0 + j * 8 + 2 * t + e;
                    if (bi < nb) {
                        const float bnv = bnorm[bi];
#pragma unroll
                        for (int mt = 0; mt < 2; mt++)
#pragma unroll
                            for (int h = 0; h < 2; h++) {
                                const float d =
                                    fmaxf(qn[mt][h] + bnv - 2.f * acc[mt][j][h * 2 + e], 0.f);
                                if (pair_less(d, bi, best_d[mt][h], best_i[mt][h])) {
                                    best_d[mt][h] = d;
                                    best_i[mt][h] = bi;
                                }
                            }
                    }
                }
            }
        }
    }
    // Reduce over the 4 threads of a quad, then over the two bank halves.
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float d = best_d[mt][h];
            int id = best_i[mt][h];
#pragma unroll
            for (int o = 1; o < 4; o <<= 1) {
                const float od = __shfl_xor_sync(0xffffffffu, d, o);
                const int oi = __shfl_xor_sync(0xffffffffu, id, o);
                if (pair_less(od, oi, d, id)) {
                    d = od;
                    id = oi;
                }
            }
            if (t == 0) {
                const int r = wm * 32 + mt * 16 + g + h * 8;
                red_d[wn][r] = d;
                red_i[wn][r] = id;
            }
        }
    __syncthreads();
    if (threadIdx.x < H_TQ) {
        const int r = threadIdx.x;
        float d = red_d[0][r];
        int id = red_i[0][r];
        if (pair_less(red_d[1][r], red_i[1][r], d, id)) {
            d = red_d[1][r];
            id = red_i[1][r];
        }
        if (q0 + r < nq) {
            part_d[(long)(q0 + r) * n_splits + split] = d;
            part_i[(long)(q0 + r) * n_splits + split] = id;
        }
    }
}

// Fast-path finish: per query (one warp), take the `rerank` smallest split winners by
// approximate distance and recompute their distances exactly in f32 against the f32 bank;
// the answer is the smallest exact (distance, index). rerank <= 32.
extern "C" __global__ void bank_rerank_f32(const float *__restrict__ q,
                                           const float *__restrict__ bank, int dim,
                                           const float *__restrict__ part_d,
                                           const int *__restrict__ part_i, int nq, int n_splits,
                                           int rerank, float *__restrict__ out_d,
                                           int *__restrict__ out_i) {
    const int qi = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (qi >= nq) return;
    const float *pd = part_d + (long)qi * n_splits;
    const int *pi = part_i + (long)qi * n_splits;
    const float *qrow = q + (long)qi * dim;
    float best_d = INFINITY;
    int best_i = 0x7fffffff;
    // Selection by repeated minimum over (approx distance, index) strictly greater than the
    // previous pick: deterministic, no scratch.
    float prev_d = -INFINITY;
    int prev_i = -1;
    for (int r = 0; r < rerank; r++) {
        float d = INFINITY;
        int id = 0x7fffffff;
        for (int s = lane; s < n_splits; s += 32) {
            const float ds = pd[s];
            const int is = pi[s];
            if (pair_less(prev_d, prev_i, ds, is) && pair_less(ds, is, d, id)) {
                d = ds;
                id = is;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float od = __shfl_xor_sync(0xffffffffu, d, o);
            const int oi = __shfl_xor_sync(0xffffffffu, id, o);
            if (pair_less(od, oi, d, id)) {
                d = od;
                id = oi;
            }
        }
        if (id == 0x7fffffff) break;
        prev_d = d;
        prev_i = id;
        const float *brow = bank + (long)id * dim;
        float s = 0.f;
        for (int c = lane; c < dim; c += 32) {
            const float diff = qrow[c] - brow[c];
            s = fmaf(diff, diff, s);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (pair_less(s, id, best_d, best_i)) {
            best_d = s;
            best_i = id;
        }
    }
    if (lane == 0) {
        out_d[qi] = best_d;
        out_i[qi] = best_i;
    }
}
