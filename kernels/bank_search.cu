// Exact nearest-neighbour search of query features in a memory bank, with the distance
// matrix never written to device memory.
//
// Layouts: queries [nq, dim] row-major, bank [nb, dim] row-major, dim a multiple of 32.
// Exact f32 path, two launches:
//   1. bank_search_f32: block (query tile, bank split) scans bank tiles of its split and
//      keeps, per query, the lexicographically smallest (distance, index) in registers; it
//      writes one (distance, index) pair per (query, split). The distance is
//      e'(q, b) = sum over k in order of (q_k - b_k)^2 (fma accumulation from 0);
//   2. bank_reduce_f32: per query, the smallest pair over splits (the order does not matter:
//      (distance, index) is a total order, so the result is the same for any split count).
//
// Fast path (f16 tensor cores), exact: it returns the f32 path's index and distance bits.
//   1. bank_fast_margin: per query, the proven bound E on |f - e'| below (infinite when the
//      query does not fit f16 or is not finite);
//   2. bank_search_f16: f(q, b) = max(||q||^2 + ||b||^2 - 2 q~.b~, 0) with q~, b~ the
//      f16-rounded rows, f32 accumulation and f32 norms; per (query, split) the FAST_KEEP
//      smallest (f, index), ascending;
//   3. bank_finish_exact: per query, F = min f and the threshold T = F + 2E. The exact winner
//      r* has f(r*) <= e'(r*) + E <= e'(r_F) + E <= F + 2E (r_F: the row of F), and so has
//      every row tied with it; a row with f > T has e' > F + E >= e'(r_F): it cannot win.
//      So every row with f <= T is re-scored with e' (the f32 path's arithmetic, one thread
//      per row, the same bits), and the smallest (e', index) is the f32 path's answer. A
//      split whose FAST_KEEP-th kept f is <= T may hold more such rows than it kept: that
//      split is scanned exactly instead (counted per query in `scanned`). E infinite (a
//      query or bank outside f16's range, NaN, Inf) scans every split.
//
// The bound (u = 2^-24 f32, h = 2^-11 f16 unit roundoff, eta = 2^-25 half the f16
// subnormal spacing, n = dim, g = gamma_{n+2} = (n+2)u / (1 - (n+2)u), Q = ||q||, B = max
// ||b|| over the bank, S = (Q + B)^2):
//   |q~_k - q_k| <= h|q_k| + eta (round to nearest, |q_k| <= 65504), so
//   |q~.b~ - q.b| <= (2h + h^2) Q B + eta (1+h) sqrt(n) (Q + B) + n eta^2      (Cauchy-Schwarz);
//   the tensor-core sum of the exact f16 products: at most n 2^-21 ||q~|| ||b~||, assuming
//   each m16n8k16 step loses at most 17 * 2^-23 (|c| + sum |p|) (alignment to the largest
//   term and truncation, as measured on V100/T4/A100 by Fasi et al. 2021; 1 rounding to
//   nearest in the emulator), with ||q~|| <= (1+h) Q + sqrt(n) eta;
//   the f32 norms: |fl(||q||^2) - Q^2| <= g Q^2 (any summation order), the same for b;
//   the two f32 roundings of ||q||^2 + ||b||^2 - 2 acc: at most 3 u S;
//   the f32 path itself: |e' - ||q - b||^2| <= g ||q - b||^2 <= g S.
//   E = 2 (dot error + accumulation error) + g (Q^2 + B^2) + 3 u S + g S,
// evaluated in f64 from upper bounds of Q and B (Q^2 <= fl(||q||^2) (1 + 2g)) and rounded
// up. Tests measure |f - e'| against E (tests/kernels_sim/bank.rs).
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
// Candidates kept per (query, split), ascending (runtime/cuda/ops/bank_search.rs FAST_KEEP).
#define FAST_KEEP 4

// Inserts (d, i) into an ascending list of FAST_KEEP (distance, index) pairs.
__device__ __forceinline__ void keep_insert(float (&ld)[FAST_KEEP], int (&li)[FAST_KEEP],
                                            float d, int i) {
    if (!pair_less(d, i, ld[FAST_KEEP - 1], li[FAST_KEEP - 1])) return;
    ld[FAST_KEEP - 1] = d;
    li[FAST_KEEP - 1] = i;
#pragma unroll
    for (int p = FAST_KEEP - 1; p > 0; p--) {
        if (pair_less(ld[p], li[p], ld[p - 1], li[p - 1])) {
            const float td = ld[p];
            const int ti = li[p];
            ld[p] = ld[p - 1];
            li[p] = li[p - 1];
            ld[p - 1] = td;
            li[p - 1] = ti;
        }
    }
}

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
    // Every thread's kept lists: per query row, 2 bank halves x 4 quad lanes x FAST_KEEP.
    __shared__ float cand_d[H_TQ][8 * FAST_KEEP];
    __shared__ int cand_i[H_TQ][8 * FAST_KEEP];
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
    float best_d[2][2][FAST_KEEP];
    int best_i[2][2][FAST_KEEP];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int k = 0; k < FAST_KEEP; k++) {
                best_d[mt][h][k] = INFINITY;
                best_i[mt][h][k] = 0x7fffffff;
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
                                keep_insert(best_d[mt][h], best_i[mt][h], d, bi);
                            }
                    }
                }
            }
        }
    }
    // Merge the 8 lists of each query row (4 quad lanes x 2 bank halves) into the split's
    // FAST_KEEP smallest: the split's k smallest are each among the k smallest of the
    // thread that saw them.
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = wm * 32 + mt * 16 + g + h * 8;
#pragma unroll
            for (int k = 0; k < FAST_KEEP; k++) {
                cand_d[r][(wn * 4 + t) * FAST_KEEP + k] = best_d[mt][h][k];
                cand_i[r][(wn * 4 + t) * FAST_KEEP + k] = best_i[mt][h][k];
            }
        }
    __syncthreads();
    if (threadIdx.x < H_TQ) {
        const int r = threadIdx.x;
        float ld[FAST_KEEP];
        int li[FAST_KEEP];
#pragma unroll
        for (int k = 0; k < FAST_KEEP; k++) {
            ld[k] = INFINITY;
            li[k] = 0x7fffffff;
        }
        for (int x = 0; x < 8 * FAST_KEEP; x++) keep_insert(ld, li, cand_d[r][x], cand_i[r][x]);
        if (q0 + r < nq) {
            const long o = ((long)(q0 + r) * n_splits + split) * FAST_KEEP;
#pragma unroll
            for (int k = 0; k < FAST_KEEP; k++) {
                part_d[o + k] = ld[k];
                part_i[o + k] = li[k];
            }
        }
    }
}

// The bound E of the header, from a query's f32 squared norm, the bank's largest f32 squared
// row norm and the width; rounded up (the factor covers the f64 evaluation and the
// rounding to f32).
__device__ __forceinline__ float fast_margin(float q_sq, float b_sq, int n) {
    const double u = 0x1p-24, h = 0x1p-11, eta = 0x1p-25, acc = 0x1p-21;
    const double nn = (double)n;
    const double g = (nn + 2.0) * u / (1.0 - (nn + 2.0) * u);
    const double qq = sqrt((double)q_sq * (1.0 + 2.0 * g));
    const double bb = sqrt((double)b_sq * (1.0 + 2.0 * g));
    const double rn = sqrt(nn);
    const double qt = (1.0 + h) * qq + rn * eta;
    const double bt = (1.0 + h) * bb + rn * eta;
    const double s = (qq + bb) * (qq + bb);
    const double dot = (2.0 * h + h * h) * qq * bb + eta * (1.0 + h) * rn * (qq + bb) +
                       nn * eta * eta + nn * acc * qt * bt;
    const double e = 2.0 * dot + g * (qq * qq + bb * bb) + 3.0 * u * s + g * s;
    return (float)(e * (1.0 + 0x1p-20));
}

// Per query (one warp): E of the header, or +inf when a value of the query is not finite
// or beyond f16's largest finite value (its f16 copy is then not within the bound).
// bank_sq: the bank's largest squared row norm (+inf for a bank that does not fit f16).
extern "C" __global__ void bank_fast_margin(const float *__restrict__ q,
                                            const float *__restrict__ qnorm, int nq, int dim,
                                            float bank_sq, float *__restrict__ margin) {
    const int qi = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (qi >= nq) return;
    const float *qrow = q + (long)qi * dim;
    bool fits = true;
    for (int c = lane; c < dim; c += 32) fits = fits && fabsf(qrow[c]) <= 65504.f;
    fits = __all_sync(0xffffffffu, fits);
    if (lane == 0) {
        const float qn = qnorm[qi];
        margin[qi] = fits && qn <= 3.0e38f && bank_sq <= 3.0e38f ? fast_margin(qn, bank_sq, dim)
                                                                 : INFINITY;
    }
}

// e' of the header: the f32 path's distance bits (k in order, fma from 0).
__device__ __forceinline__ float row_sq_dist(const float *__restrict__ a,
                                             const float *__restrict__ b, int dim) {
    float s = 0.f;
    for (int c = 0; c < dim; c++) {
        const float d = a[c] - b[c];
        s = fmaf(d, d, s);
    }
    return s;
}

// Fast-path finish (header, step 3): one warp per query. part_d/part_i: FAST_KEEP pairs per
// (query, split), ascending; rows_per_split: bank rows of a split (the last one may be
// shorter). Writes the f32 path's (distance, index) and the number of splits scanned.
extern "C" __global__ void bank_finish_exact(const float *__restrict__ q,
                                             const float *__restrict__ bank, int dim,
                                             const float *__restrict__ part_d,
                                             const int *__restrict__ part_i,
                                             const float *__restrict__ margin, int nq, int nb,
                                             int n_splits, int rows_per_split,
                                             float *__restrict__ out_d, int *__restrict__ out_i,
                                             int *__restrict__ scanned) {
    const int qi = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (qi >= nq) return;
    const float *pd = part_d + (long)qi * n_splits * FAST_KEEP;
    const int *pi = part_i + (long)qi * n_splits * FAST_KEEP;
    const float *qrow = q + (long)qi * dim;
    float fmin = INFINITY;
    for (int s = lane; s < n_splits; s += 32) fmin = fminf(fmin, pd[s * FAST_KEEP]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) fmin = fminf(fmin, __shfl_xor_sync(0xffffffffu, fmin, o));
    // In f64: exact enough that a row with f <= F + 2E is never left out.
    const double thr = (double)fmin + 2.0 * (double)margin[qi];
    const bool scan_all = !(thr < (double)INFINITY);
    // A split's list holds every row with f <= thr unless its last kept f is <= thr.
    auto complete = [&](int s) { return !scan_all && (double)pd[s * FAST_KEEP + FAST_KEEP - 1] > thr; };
    float best_d = INFINITY;
    int best_i = 0x7fffffff;
    for (int c = lane; c < n_splits * FAST_KEEP; c += 32) {
        const int id = pi[c];
        if (complete(c / FAST_KEEP) && (double)pd[c] <= thr && id >= 0 && id < nb) {
            const float e = row_sq_dist(qrow, bank + (long)id * dim, dim);
            if (pair_less(e, id, best_d, best_i)) {
                best_d = e;
                best_i = id;
            }
        }
    }
    int n_scanned = 0;
    for (int s = 0; s < n_splits; s++) {
        if (complete(s)) continue;
        n_scanned++;
        const int lo = s * rows_per_split;
        const int hi = min(nb, lo + rows_per_split);
        for (int r = lo + lane; r < hi; r += 32) {
            const float e = row_sq_dist(qrow, bank + (long)r * dim, dim);
            if (pair_less(e, r, best_d, best_i)) {
                best_d = e;
                best_i = r;
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float od = __shfl_xor_sync(0xffffffffu, best_d, o);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (pair_less(od, oi, best_d, best_i)) {
            best_d = od;
            best_i = oi;
        }
    }
    if (lane == 0) {
        out_d[qi] = best_d;
        out_i[qi] = best_i;
        scanned[qi] = n_scanned;
    }
}
