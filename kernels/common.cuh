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

// Block-wide reduction of one value per thread of a block of N threads in a fixed tree
// (the same order every run: deterministic); `sh` holds N values, every thread gets the
// result. Ops: MiadMax (fmaxf), MiadAddF (__fadd_rn), MiadAddD (__dadd_rn).
struct MiadMax {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MiadAddF {
  __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
struct MiadAddD {
  __device__ double operator()(double a, double b) const { return __dadd_rn(a, b); }
};

template <int N, typename T, typename Op>
__device__ __forceinline__ T miad_block_reduce(T v, T *sh, Op op) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = N / 2; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] = op(sh[threadIdx.x], sh[threadIdx.x + o]);
    __syncthreads();
  }
  const T r = sh[0];
  __syncthreads();
  return r;
}

// Warp argmax of non-negative floats, ties to the lowest index; every lane gets the result.
__device__ __forceinline__ void miad_warp_argmax(float &d, u32 &i) {
  u32 bits = __float_as_uint(d);
  u32 m = __reduce_max_sync(0xffffffffu, bits);
  u32 cand = (bits == m) ? i : 0xffffffffu;
  i = __reduce_min_sync(0xffffffffu, cand);
  d = __uint_as_float(m);
}

// ======================================================================================
// Inline PTX lives only here, each instruction in a small function with a branch for the
// SIMT emulator (kernels/sim: MIAD_SIM), so every .cu file compiles for the CPU unchanged.
// Shared-memory operands are 32-bit shared-window addresses (__cvta_generic_to_shared).
// ======================================================================================
// Lanes below the calling one (%lanemask_lt).
__device__ __forceinline__ u32 miad_lanemask_lt() {
#ifdef MIAD_SIM
  return (1u << (threadIdx.x & 31u)) - 1u;
#else
  u32 r;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(r));
  return r;
#endif
}

// cp.async of 16 bytes, global -> shared, bypassing L1; src_bytes < 16 zero-fills the rest.
__device__ __forceinline__ void miad_cp_async16(u32 smem, const void *gmem, u32 src_bytes) {
#ifdef MIAD_SIM
  miad_sim::cp_async(smem, gmem, 16, src_bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(src_bytes));
#endif
}
__device__ __forceinline__ void miad_cp_async_commit() {
#ifdef MIAD_SIM
  miad_sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N committed cp.async groups of this thread are pending.
template <int N> __device__ __forceinline__ void miad_cp_async_wait() {
#ifdef MIAD_SIM
  miad_sim::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix .x4 (b16): lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void miad_ldmatrix_x4(u32 r[4], u32 addr) {
#ifdef MIAD_SIM
  miad_sim::collective(miad_sim::LDMATRIX_X4, 0xffffffffu, &addr, r, 0, 32, __LINE__);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}
__device__ __forceinline__ void miad_ldmatrix_x4_trans(u32 r[4], u32 addr) {
#ifdef MIAD_SIM
  miad_sim::collective(miad_sim::LDMATRIX_X4_T, 0xffffffffu, &addr, r, 0, 32, __LINE__);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// D = A B + C, m16n8k16, A row-major, B column-major, f32 accumulators (in place in c).
#ifdef MIAD_SIM
__device__ __forceinline__ void miad_sim_mma(miad_sim::Op op, float c[4], const u32 a[4],
                                             u32 b0, u32 b1) {
  u32 in[10] = {a[0], a[1], a[2], a[3], b0, b1, __float_as_uint(c[0]), __float_as_uint(c[1]),
                __float_as_uint(c[2]), __float_as_uint(c[3])};
  miad_sim::collective(op, 0xffffffffu, in, c, 0, 32, __LINE__);
}
#endif
__device__ __forceinline__ void miad_mma_f16_16816(float c[4], const u32 a[4], u32 b0, u32 b1) {
#ifdef MIAD_SIM
  miad_sim_mma(miad_sim::MMA_F16, c, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ void miad_mma_bf16_16816(float c[4], const u32 a[4], u32 b0,
                                                    u32 b1) {
#ifdef MIAD_SIM
  miad_sim_mma(miad_sim::MMA_BF16, c, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

#if __CUDA_ARCH__ >= 900
// ---- thread-block clusters (sm_90)
__device__ __forceinline__ u32 miad_cluster_rank() {
#ifdef MIAD_SIM
  return miad_sim::cluster_rank();
#else
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
#endif
}
__device__ __forceinline__ u32 miad_cluster_size() {
#ifdef MIAD_SIM
  return miad_sim::cluster_size();
#else
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
  return r;
#endif
}
__device__ __forceinline__ u32 miad_dynamic_smem_size() {
#ifdef MIAD_SIM
  return miad_sim::dynamic_smem_size();
#else
  u32 r;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
#endif
}
// Cluster barrier halves: arrive (release, or relaxed) and wait (acquire).
__device__ __forceinline__ void miad_cluster_arrive_release() {
#ifdef MIAD_SIM
  miad_sim::cluster_arrive();
#else
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void miad_cluster_arrive_relaxed() {
#ifdef MIAD_SIM
  miad_sim::cluster_arrive();
#else
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void miad_cluster_wait() {
#ifdef MIAD_SIM
  miad_sim::cluster_wait();
#else
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void miad_cluster_sync() {
#ifdef MIAD_SIM
  miad_sim::cluster_arrive();
  miad_sim::cluster_wait();
#else
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
#endif
}
// The shared::cluster address of `addr` (a shared::cta address) in block `rank`.
__device__ __forceinline__ u32 miad_mapa(u32 addr, u32 rank) {
#ifdef MIAD_SIM
  return miad_sim::mapa(addr, rank);
#else
  u32 r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
#endif
}
__device__ __forceinline__ u32 miad_ld_cluster_u32(u32 addr) {
#ifdef MIAD_SIM
  miad_sim::yield();
  return *(const u32 *)miad_sim::shared_ptr(addr, 4);
#else
  u32 v;
  asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
#endif
}
__device__ __forceinline__ void miad_st_cluster_v4(u32 addr, u32 a, u32 b, u32 c, u32 d) {
#ifdef MIAD_SIM
  miad_sim::yield();
  u32 *p = (u32 *)miad_sim::shared_ptr(addr, 16);
  p[0] = a;
  p[1] = b;
  p[2] = c;
  p[3] = d;
#else
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(a), "r"(b),
               "r"(c), "r"(d)
               : "memory");
#endif
}
__device__ __forceinline__ void miad_st_cluster_u32(u32 addr, u32 v) {
#ifdef MIAD_SIM
  miad_sim::yield();
  *(u32 *)miad_sim::shared_ptr(addr, 4) = v;
#else
  asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
#endif
}
// st.async with mbarrier::complete_tx::bytes on the receiver's mbarrier `bar`.
__device__ __forceinline__ void miad_st_async_v4(u32 addr, u32 bar, u32 a, u32 b, u32 c,
                                                 u32 d) {
#ifdef MIAD_SIM
  const u32 v[4] = {a, b, c, d};
  miad_sim::st_async(addr, v, 16, bar);
#else
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, "
      "[%5];" ::"r"(addr),
      "r"(a), "r"(b), "r"(c), "r"(d), "r"(bar)
      : "memory");
#endif
}
__device__ __forceinline__ void miad_st_async_u32(u32 addr, u32 bar, u32 v) {
#ifdef MIAD_SIM
  miad_sim::st_async(addr, &v, 4, bar);
#else
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                   addr),
               "r"(v), "r"(bar)
               : "memory");
#endif
}
// ---- mbarrier (shared::cta addresses)
__device__ __forceinline__ void miad_mbar_init(u32 bar, u32 count) {
#ifdef MIAD_SIM
  miad_sim::mbar_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void miad_fence_mbarrier_init() {
#ifdef MIAD_SIM
  miad_sim::yield();
#else
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void miad_mbar_arrive_release(u32 bar) {
#ifdef MIAD_SIM
  miad_sim::mbar_arrive(bar, 0);
#else
  asm volatile(
      "{\n\t.reg .b64 st;\n\tmbarrier.arrive.release.cta.shared::cta.b64 st, [%0];\n\t}" ::"r"(
          bar)
      : "memory");
#endif
}
// One arrival that also announces `bytes` of incoming transactions for the phase.
__device__ __forceinline__ void miad_mbar_arrive_expect_tx(u32 bar, u32 bytes) {
#ifdef MIAD_SIM
  miad_sim::mbar_arrive(bar, bytes);
#else
  asm volatile(
      "{\n\t.reg .b64 st;\n\tmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n\t}" ::"r"(
          bar),
      "r"(bytes)
      : "memory");
#endif
}
// Whether the phase of `parity` has completed (acquire at cluster scope).
__device__ __forceinline__ bool miad_mbar_try_wait_parity(u32 bar, u32 parity) {
#ifdef MIAD_SIM
  return miad_sim::mbar_wait_parity(bar, parity);
#else
  u32 ok;
  asm volatile(
      "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], "
      "%2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
#endif
}
#endif  // __CUDA_ARCH__ >= 900

// ======================================================================================
// RGB resize as PIL's BICUBIC (a = −0.5, support widened by the scale when downscaling),
// in the operation order of pipeline/preprocess.rs (`bicubic`, `pil_coeffs`,
// `resize_bicubic_pil`), for embed.cu's and preprocess.cu's resize kernels.
// ======================================================================================
__device__ __forceinline__ double miad_pil_bicubic(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1.0) {
    // ((a + 2) x − (a + 3)) x x + 1
    return __dadd_rn(__dmul_rn(__dmul_rn(__dsub_rn(__dmul_rn(1.5, x), 2.5), x), x), 1.0);
  }
  if (x < 2.0) {
    // (((x − 5) x + 8) x − 4) a
    return __dmul_rn(
        __dsub_rn(__dmul_rn(__dadd_rn(__dmul_rn(__dsub_rn(x, 5.0), x), 8.0), x), 4.0), a);
  }
  return 0.0;
}

// PIL's 8-bit store: round half up, clip to 0..=255.
__device__ __forceinline__ float miad_pil_u8(float v) {
  return fminf(fmaxf(floorf(__fadd_rn(v, 0.5f)), 0.f), 255.f);
}

// Output index `o` of the `in → out` table: first source index and `taps` weights (f64,
// normalised by their f64 sum, stored as f32), zeros past the kernel's end. The weights
// are recomputed in the second loop instead of kept in a local array (same values; no
// stack frame).
__device__ __forceinline__ void miad_pil_coeffs_row(int in, int out, int taps, int o,
                                                    int *__restrict__ first,
                                                    float *__restrict__ w) {
  const double scale = __ddiv_rn((double)in, (double)out);
  const double filterscale = fmax(scale, 1.0);
  const double support = __dmul_rn(2.0, filterscale);
  const double center = __dmul_rn(__dadd_rn((double)o, 0.5), scale);
  const double ww = __ddiv_rn(1.0, filterscale);
  long long xmin = (long long)floor(__dadd_rn(__dsub_rn(center, support), 0.5));
  if (xmin < 0) xmin = 0;
  long long xend = (long long)floor(__dadd_rn(__dadd_rn(center, support), 0.5));
  if (xend > in) xend = in;
  long long cnt = xend > xmin ? xend - xmin : 0;
  if (cnt > taps) cnt = taps;
  if (cnt > 64) cnt = 64;
  const double xm = (double)xmin;
  double sum = 0.0;
  for (int t = 0; t < (int)cnt; ++t)
    sum = __dadd_rn(sum, miad_pil_bicubic(__dmul_rn(
                             __dadd_rn(__dsub_rn(__dadd_rn((double)t, xm), center), 0.5), ww)));
  float *row = w + (long long)o * taps;
  for (int t = 0; t < taps; ++t) {
    float v = 0.f;
    if (t < (int)cnt && sum != 0.0) {
      const double k = miad_pil_bicubic(
          __dmul_rn(__dadd_rn(__dsub_rn(__dadd_rn((double)t, xm), center), 0.5), ww));
      v = __double2float_rn(__ddiv_rn(k, sum));
    }
    row[t] = v;
  }
  first[o] = (int)xmin;
}

// One output value of a resize pass: the taps of row `wr` from source index `x0`, taps past
// `limit` and zero weights skipped, each product and sum rounded (no FMA); `fetch(x, p)`
// writes the three channels of source index x into p. Returns the three sums unrounded.
template <class Fetch>
__device__ __forceinline__ void miad_pil_taps(int x0, const float *__restrict__ wr, int taps,
                                              int limit, Fetch fetch, float acc[3]) {
  acc[0] = acc[1] = acc[2] = 0.f;
  for (int t = 0; t < taps; ++t) {
    const float wt = wr[t];
    const int x = x0 + t;
    if (wt == 0.f || x >= limit) continue;
    float p[3];
    fetch(x, p);
    acc[0] = __fadd_rn(acc[0], __fmul_rn(wt, p[0]));
    acc[1] = __fadd_rn(acc[1], __fmul_rn(wt, p[1]));
    acc[2] = __fadd_rn(acc[2], __fmul_rn(wt, p[2]));
  }
}

// (v / 255 − mean) / std of an 8-bit store.
__device__ __forceinline__ float miad_imagenet_norm(float acc, float mean, float std) {
  return __fdiv_rn(__fsub_rn(__fdiv_rn(miad_pil_u8(acc), 255.f), mean), std);
}

// ======================================================================================
// Union-find over pixel labels (Playne & Hawick): a label is its pixel's index or a
// smaller pixel's index; the larger root is linked under the smaller with an integer
// atomicMin, so the final root of a component is its first pixel in raster order, in any
// schedule (maps.cu's regions, preprocess.cu's largest cluster).
// ======================================================================================
__device__ __forceinline__ u32 miad_uf_find(const volatile u32 *L, u32 x) {
  u32 p = L[x];
  while (p != x) {
    x = p;
    p = L[x];
  }
  return x;
}

__device__ __forceinline__ void miad_uf_unite(u32 *L, u32 a, u32 b) {
  const volatile u32 *V = L;
  while (true) {
    a = miad_uf_find(V, a);
    b = miad_uf_find(V, b);
    if (a == b) return;
    if (a > b) {
      const u32 tmp = a;
      a = b;
      b = tmp;
    }
    const u32 old = atomicMin(L + b, a);
    if (old == b) return;
    b = old;
  }
}
