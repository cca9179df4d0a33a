// Farthest point sampling (SPEC §3.1), exact and deterministic.
//
// The first center is point 0; each next one is the point with the largest squared distance
// (miad_sq_dist order) to its nearest chosen center, ties to the lowest index.
//
// sm_90: one thread-block cluster of gridDim.x blocks (launched with a cluster dimension
// equal to the grid); block r keeps the points of the r-th contiguous chunk and their
// running distances in its shared memory (float4: x, y, z, dist). Per iteration: a block
// argmax (warp redux, then warp 0), one candidate per block published in its own shared
// memory (double-buffered by iteration parity), one cluster barrier, then every warp reads
// the candidates of all blocks through distributed shared memory and reduces them to the
// same winner. One barrier per iteration across the cluster, one inside each block.
// Other archs (sm_87): the same code with one block, the points in the global `work` buffer.
#include "common.cuh"
#if __CUDA_ARCH__ >= 900
// Thread-block-cluster primitives in PTX (NVRTC's cooperative_groups needs libcu++ headers).
__device__ __forceinline__ u32 fps_cluster_rank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ u32 fps_cluster_size() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void fps_cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
}
// Reads word `i` of a shared-memory object of block `rank` of the cluster.
__device__ __forceinline__ u32 fps_remote_u32(const void *local, u32 rank) {
  u32 a = (u32)__cvta_generic_to_shared(local), ra, v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
  asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(ra) : "memory");
  return v;
}
#endif

#define FPS_NONE 0xffffffffu

struct FpsCand {
  u32 bits;
  u32 idx;
  float x, y, z;
};

// Argmax of (bits, idx) across the warp with the winner's coordinates; lanes may hold NONE.
__device__ __forceinline__ void fps_warp_pick(u32 &bits, u32 &idx, float &x, float &y, float &z) {
  const u32 full = 0xffffffffu;
  u32 m = __reduce_max_sync(full, bits);
  u32 i = __reduce_min_sync(full, (bits == m) ? idx : FPS_NONE);
  u32 who = __ballot_sync(full, bits == m && idx == i);
  int src = who ? (__ffs(who) - 1) : 0;
  x = __shfl_sync(full, x, src);
  y = __shfl_sync(full, y, src);
  z = __shfl_sync(full, z, src);
  bits = m;
  idx = i;
}

// pts: n×3 (n = *n_ptr); m centers out: out_idx[m], out_xyz[m×3].
// in_smem != 0: dynamic shared memory holds ceil(n / gridDim.x) float4 per block (cluster
// launch). in_smem == 0: single block, `work` holds n float4.
MIAD_EXTERN void __launch_bounds__(1024, 1)
    fps_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr, int m, float4 *work,
            int in_smem, u32 *__restrict__ out_idx, float *__restrict__ out_xyz) {
  extern __shared__ float4 fps_dsm[];
  __shared__ FpsCand warp_best[32];
  __shared__ FpsCand slot[2];
  const int n = *n_ptr;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
#if __CUDA_ARCH__ >= 900
  const int rank = in_smem ? (int)fps_cluster_rank() : 0;
  const int nb = in_smem ? (int)fps_cluster_size() : 1;
#else
  const int rank = 0, nb = 1;
#endif
  const int chunk = (n + nb - 1) / nb;
  const int start = min(n, rank * chunk), len = min(n, start + chunk) - start;
  float4 *P = in_smem ? fps_dsm : work + start;
  const float inf = __int_as_float(0x7f800000);
  for (int l = tid; l < len; l += blockDim.x) {
    int j = start + l;
    P[l] = make_float4(pts[3 * j], pts[3 * j + 1], pts[3 * j + 2], inf);
  }
  float cx = pts[0], cy = pts[1], cz = pts[2];
  if (rank == 0 && tid == 0 && m > 0) {
    out_idx[0] = 0;
    out_xyz[0] = cx;
    out_xyz[1] = cy;
    out_xyz[2] = cz;
  }
  __syncthreads();
  for (int it = 1; it < m; ++it) {
    u32 bb = 0, bi = FPS_NONE;
    float bx = 0.f, by = 0.f, bz = 0.f;
    for (int l = tid; l < len; l += blockDim.x) {
      float4 p = P[l];
      float nd = fminf(p.w, miad_sq_dist(p.x, p.y, p.z, cx, cy, cz));
      P[l].w = nd;
      u32 db = __float_as_uint(nd);
      if (db > bb || bi == FPS_NONE) {
        bb = db;
        bi = (u32)(start + l);
        bx = p.x;
        by = p.y;
        bz = p.z;
      }
    }
    fps_warp_pick(bb, bi, bx, by, bz);
    if (lane == 0) warp_best[warp] = FpsCand{bb, bi, bx, by, bz};
    __syncthreads();
    const int par = it & 1;
    if (warp == 0) {
      FpsCand c = lane < nwarps ? warp_best[lane] : FpsCand{0u, FPS_NONE, 0.f, 0.f, 0.f};
      fps_warp_pick(c.bits, c.idx, c.x, c.y, c.z);
      if (lane == 0) slot[par] = c;
    }
#if __CUDA_ARCH__ >= 900
    if (in_smem) {
      fps_cluster_sync();
    } else {
      __syncthreads();
    }
#else
    __syncthreads();
#endif
    FpsCand c{0u, FPS_NONE, 0.f, 0.f, 0.f};
    if (lane < nb) {
#if __CUDA_ARCH__ >= 900
      if (in_smem) {
        const FpsCand *s = &slot[par];
        c.bits = fps_remote_u32(&s->bits, lane);
        c.idx = fps_remote_u32(&s->idx, lane);
        c.x = __uint_as_float(fps_remote_u32(&s->x, lane));
        c.y = __uint_as_float(fps_remote_u32(&s->y, lane));
        c.z = __uint_as_float(fps_remote_u32(&s->z, lane));
      } else {
        c = slot[par];
      }
#else
      c = slot[par];
#endif
    }
    fps_warp_pick(c.bits, c.idx, c.x, c.y, c.z);
    cx = c.x;
    cy = c.y;
    cz = c.z;
    if (rank == 0 && tid == 0) {
      out_idx[it] = c.idx;
      out_xyz[3 * it] = cx;
      out_xyz[3 * it + 1] = cy;
      out_xyz[3 * it + 2] = cz;
    }
  }
#if __CUDA_ARCH__ >= 900
  // No block may leave while others can still read its shared memory.
  if (in_smem) fps_cluster_sync();
#endif
}
