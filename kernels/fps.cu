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
// Thread-block-cluster primitives (common.cuh; NVRTC's cooperative_groups needs libcu++).
__device__ __forceinline__ u32 fps_cluster_rank() { return miad_cluster_rank(); }
__device__ __forceinline__ u32 fps_cluster_size() { return miad_cluster_size(); }
__device__ __forceinline__ void fps_cluster_sync() { miad_cluster_sync(); }
// Reads word `i` of a shared-memory object of block `rank` of the cluster.
__device__ __forceinline__ u32 fps_remote_u32(const void *local, u32 rank) {
  return miad_ld_cluster_u32(miad_mapa((u32)__cvta_generic_to_shared(local), rank));
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
    fps_smem_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr, int m, float4 *work,
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

// ======================================================================================
// register FPS (sm_90): one thread-block cluster of 8 or 16 blocks of FPS_REGS_THREADS threads, the
// points in registers. Same result as fps_smem_f32 (the same total order: squared distance in
// miad_sq_dist bits, ties to the lowest index) for every input.
//
// Layout: block r of the cluster owns the r-th contiguous chunk of ceil(n / nb) points and
// stages it once in shared memory (float4 x, y, z, 0: only to look up the coordinates of the
// block's winner). Thread t owns qn = ceil(len / FPS_REGS_THREADS) *contiguous* points
// [t·qn, t·qn + qn) of the chunk in registers (x, y, z, running min distance) and their
// bounding box. Because every level (slot in a thread, lane in a warp, warp in a block, block
// in the cluster) owns an ascending, disjoint index range, "ties to the lowest index" is
// "the lowest slot / lane / warp / rank among those holding the maximum": one max-reduction
// and one ballot per level, no index reduction.
//
// One step (it = 1 .. m-1), q = it - 1, buffers s = q & 1:
//  1. Each thread skips its update when the lower bound of the squared distance from the
//     new center to its bounding box is >= its current maximum running distance: then no
//     min changes, so the thread's (max, argmax) stays. The bound is computed with the same
//     rounded operations as miad_sq_dist on per-axis gaps (round-to-nearest is monotone and
//     sign-symmetric, so lb <= miad_sq_dist(p, c) for every p in the box): exact, and on
//     organized clouds (row-major pixel order: a thread's points are neighbouring pixels)
//     most threads skip most steps. Otherwise it updates its qn points and recomputes its
//     argmax (strict > in ascending slot order).
//  2. Warp: __reduce_max_sync of the distance bits, ballot of the lanes holding it, lowest
//     such lane; lane 0 writes (bits, index) to the warp's slot. One __syncthreads.
//  3. Warp 0 reduces the warp slots the same way, looks the winner's coordinates up in the
//     staged chunk, and lanes r < nb push (bits, index, x, y, z) into slot [rank] of the
//     receive buffer s of block r (distributed shared memory).
//  4. Exchange (xmode 0): one cluster barrier, barrier.cluster.arrive (release in warp 0,
//     the writer; relaxed elsewhere) / wait.acquire, orders the remote stores before every
//     reader. (xmode 1): the pushes to other blocks are st.async with mbarrier complete_tx
//     on the receiver's mbarrier s, the block's own message a local store + mbarrier arrive
//     (release), and every thread waits on its own block's mbarrier
//     (try_wait.parity.acquire.cluster): no cluster-wide barrier and no fence, the data
//     arrives with its signal. Each phase needs 2 arrivals (thread 0's re-arm with the
//     (nb-1)·20 remote bytes, the own message) and those bytes.
//  5. Every warp reads the nb messages from its *local* receive buffer (one lane each),
//     reduces them the same way (block ranks own ascending ranges) and takes the winner's
//     coordinates by shuffle: the next center, with no global load.
// Double-buffering is safe with one exchange per step: block A writes buffer s of block B
// for step q+2 only after A completed step q+1, which needs B's step-q+1 message, which B
// sends after its __syncthreads of step q+1, which all of B's threads reach after reading
// buffer s of step q. The same argument covers the warp slots and (xmode 1) the re-arming
// of mbarrier s by thread 0 right after its step-q wait: no step-q+2 transaction or own
// arrival can come before it, so the phase cannot complete early.
// ======================================================================================
#define FPS_REGS_THREADS 512
#define FPS_REGS_WARPS (FPS_REGS_THREADS / 32)
#define FPS_REGS_MAXCL 16
// Payload per message and receiver: bits, index, x, y (16 bytes) + z (4 bytes).
#define FPS_REGS_MSG_BYTES 20

struct __align__(16) Fps2Msg {
  u32 bits;
  u32 idx;
  float x, y, z;
  u32 pad[3];
};

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 fps_regs_smem_addr(const void *p) {
  return (u32)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ u32 fps_regs_mapa(u32 local, u32 rank) { return miad_mapa(local, rank); }
__device__ __forceinline__ u32 fps_regs_dyn_smem_bytes() { return miad_dynamic_smem_size(); }
// Remote weak stores; ordered for readers by the following cluster barrier (release).
__device__ __forceinline__ void fps_regs_put(u32 raddr, u32 b, u32 i, float x, float y, float z) {
  miad_st_cluster_v4(raddr, b, i, __float_as_uint(x), __float_as_uint(y));
  miad_st_cluster_u32(raddr + 16, __float_as_uint(z));
}
// Remote stores that complete FPS_REGS_MSG_BYTES transaction bytes on the receiver's mbarrier.
__device__ __forceinline__ void fps_regs_put_async(u32 raddr, u32 rbar, u32 b, u32 i, float x,
                                               float y, float z) {
  miad_st_async_v4(raddr, rbar, b, i, __float_as_uint(x), __float_as_uint(y));
  miad_st_async_u32(raddr + 16, rbar, __float_as_uint(z));
}
// Two arrivals per phase: thread 0's arm (with the remote bytes) and the block's own message.
__device__ __forceinline__ void fps_regs_mbar_init(u32 bar) { miad_mbar_init(bar, 2); }
// The block's own message is written with ordinary stores, then this arrival (release)
// publishes it to the local waiters; st.async only ever targets other blocks.
__device__ __forceinline__ void fps_regs_mbar_arrive(u32 bar) { miad_mbar_arrive_release(bar); }
// Thread 0's arrival of a phase, announcing `bytes` of incoming transactions.
__device__ __forceinline__ void fps_regs_mbar_arm(u32 bar, u32 bytes) {
  miad_mbar_arrive_expect_tx(bar, bytes);
}
__device__ __forceinline__ bool fps_regs_mbar_try(u32 bar, u32 parity) {
  return miad_mbar_try_wait_parity(bar, parity);
}
// Cluster barrier in two halves. Only threads that wrote distributed shared memory need
// the release (it compiles to MEMBAR.ALL.GPU, which also waits for the thread's pending
// global stores); the others arrive relaxed: everything they did before is ordered before
// the releasing warp's arrive by the __syncthreads in between (release is cumulative).
__device__ __forceinline__ void fps_regs_cluster_arrive(bool release) {
  if (release) {
    miad_cluster_arrive_release();
  } else {
    miad_cluster_arrive_relaxed();
  }
}
__device__ __forceinline__ void fps_regs_cluster_wait() { miad_cluster_wait(); }
// Waits for the phase of `parity` to complete. A protocol bug would hang the GPU: after
// ~2^26 unsuccessful polls (seconds) trap instead, so the host sees a launch error.
__device__ __forceinline__ void fps_regs_mbar_wait(u32 bar, u32 parity) {
  u32 spins = 0;
  while (!fps_regs_mbar_try(bar, parity)) {
    if (++spins == (1u << 26)) __trap();
  }
}
#endif

template <int PPT>
__device__ __forceinline__ void fps_regs_body(const float *__restrict__ pts,
                                          const int *__restrict__ n_ptr, int m, int xmode,
                                          u32 *__restrict__ out_idx, float *__restrict__ out_xyz) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ float4 fps_regs_pts[];
  __shared__ Fps2Msg recv[2][FPS_REGS_MAXCL];
  __shared__ uint2 wslot[2][FPS_REGS_WARPS];
  __shared__ __align__(8) u64 mbar[2];
  const u32 full = 0xffffffffu;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rank = (int)fps_cluster_rank(), nb = (int)fps_cluster_size();
  if (nb > FPS_REGS_MAXCL) __trap();
  // Points a block can hold: registers and the staged chunk. n beyond nb·cap is a caller
  // bug (the host plans cap for max_points); clamp so nothing is accessed out of bounds.
  const int cap = min(PPT * FPS_REGS_THREADS, (int)(fps_regs_dyn_smem_bytes() / 16));
  const int n = min(*n_ptr, nb * cap);
  if (n <= 0 || m <= 0) return;  // uniform over the cluster; no remote access happened
  const int chunk = (n + nb - 1) / nb;
  const int start = min(n, rank * chunk), len = min(n, start + chunk) - start;
  const int qn = (len + FPS_REGS_THREADS - 1) / FPS_REGS_THREADS;
  const float inf = __int_as_float(0x7f800000);

#pragma unroll 4
  for (int l = tid; l < len; l += FPS_REGS_THREADS) {
    const int j = start + l;
    fps_regs_pts[l] = make_float4(pts[3 * j], pts[3 * j + 1], pts[3 * j + 2], 0.f);
  }
  const u32 bar0 = fps_regs_smem_addr(&mbar[0]);
  if (xmode != 0 && tid == 0) {
    fps_regs_mbar_init(bar0);
    fps_regs_mbar_init(bar0 + 8);
    miad_fence_mbarrier_init();
    // Phases of steps 0 and 1 (buffers 0 and 1): one message from every other block.
    fps_regs_mbar_arm(bar0, (u32)(nb - 1) * FPS_REGS_MSG_BYTES);
    fps_regs_mbar_arm(bar0 + 8, (u32)(nb - 1) * FPS_REGS_MSG_BYTES);
  }
  __syncthreads();

  float px[PPT], py[PPT], pz[PPT], pd[PPT];
  float lox = inf, loy = inf, loz = inf, hix = -inf, hiy = -inf, hiz = -inf;
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int l = tid * qn + j;
    if (j < qn && l < len) {
      const float4 p = fps_regs_pts[l];
      px[j] = p.x;
      py[j] = p.y;
      pz[j] = p.z;
      pd[j] = inf;
      lox = fminf(lox, p.x);
      loy = fminf(loy, p.y);
      loz = fminf(loz, p.z);
      hix = fmaxf(hix, p.x);
      hiy = fmaxf(hiy, p.y);
      hiz = fmaxf(hiz, p.z);
    } else {
      px[j] = 0.f;
      py[j] = 0.f;
      pz[j] = 0.f;
      pd[j] = -inf;  // never the argmax, never changed by fminf
    }
  }
  const bool has = tid * qn < len;
  const u32 base = (u32)(start + tid * qn);
  // Thread state: max running distance and its slot (-1: no points). Before the first
  // update every point is at +inf, the argmax is the first slot.
  float best = has ? inf : -1.f;
  int bj = has ? 0 : -1;

  // Remote addresses for the pushing lanes of warp 0: slot [rank] of block `lane`.
  u32 r_recv = 0, r_bar = 0;
  if (lane < nb) {
    r_recv = fps_regs_mapa(fps_regs_smem_addr(&recv[0][rank]), (u32)lane);
    r_bar = fps_regs_mapa(bar0, (u32)lane);
  }
  const u32 recv_stride = (u32)sizeof(recv[0]);

  float cx = pts[0], cy = pts[1], cz = pts[2];
  if (rank == 0 && tid == 0) {
    out_idx[0] = 0;
    out_xyz[0] = cx;
    out_xyz[1] = cy;
    out_xyz[2] = cz;
  }
  // Every block has started and (xmode 1) initialised its mbarriers before any push.
  fps_cluster_sync();

  for (int it = 1; it < m; ++it) {
    const int q = it - 1, s = q & 1;
    // 1. Update (or skip) this thread's points.
    const float gx = fmaxf(fmaxf(__fsub_rn(lox, cx), __fsub_rn(cx, hix)), 0.f);
    const float gy = fmaxf(fmaxf(__fsub_rn(loy, cy), __fsub_rn(cy, hiy)), 0.f);
    const float gz = fmaxf(fmaxf(__fsub_rn(loz, cz), __fsub_rn(cz, hiz)), 0.f);
    const float lb =
        __fadd_rn(__fadd_rn(__fmul_rn(gx, gx), __fmul_rn(gy, gy)), __fmul_rn(gz, gz));
    if (!(lb >= best)) {
      best = -1.f;
      bj = -1;
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        if (j < qn) {
          const float nd = fminf(pd[j], miad_sq_dist(px[j], py[j], pz[j], cx, cy, cz));
          pd[j] = nd;
          if (nd > best) {
            best = nd;
            bj = j;
          }
        }
      }
    }
    // 2. Warp argmax: lowest lane among those with the largest distance.
    {
      const u32 bits = bj >= 0 ? __float_as_uint(best) : 0u;
      const u32 mx = __reduce_max_sync(full, bits);
      const u32 bal = __ballot_sync(full, bj >= 0 && bits == mx);
      const int src = bal ? __ffs(bal) - 1 : 0;
      const u32 widx = __shfl_sync(full, base + (u32)bj, src);
      if (lane == 0) wslot[s][warp] = make_uint2(mx, bal ? widx : FPS_NONE);
    }
    __syncthreads();
    // 3. Block argmax by warp 0, pushed to every block of the cluster.
    if (warp == 0) {
      const uint2 e = lane < FPS_REGS_WARPS ? wslot[s][lane] : make_uint2(0u, FPS_NONE);
      const bool h = e.y != FPS_NONE;
      const u32 mx = __reduce_max_sync(full, h ? e.x : 0u);
      const u32 bal = __ballot_sync(full, h && e.x == mx);
      const int src = bal ? __ffs(bal) - 1 : 0;
      const u32 bidx = __shfl_sync(full, e.y, src);
      float4 p = make_float4(0.f, 0.f, 0.f, 0.f);
      if (bidx != FPS_NONE) p = fps_regs_pts[bidx - (u32)start];
      if (lane < nb) {
        const u32 dst = r_recv + (u32)s * recv_stride;
        if (xmode == 0) {
          fps_regs_put(dst, mx, bidx, p.x, p.y, p.z);
        } else if (lane != rank) {
          fps_regs_put_async(dst, r_bar + 8u * (u32)s, mx, bidx, p.x, p.y, p.z);
        } else {
          Fps2Msg &own = recv[s][rank];
          own.bits = mx;
          own.idx = bidx;
          own.x = p.x;
          own.y = p.y;
          own.z = p.z;
          fps_regs_mbar_arrive(bar0 + 8u * (u32)s);
        }
      }
      __syncwarp();
    }
    // 4. Exchange.
    if (xmode == 0) {
      fps_regs_cluster_arrive(warp == 0);
      fps_regs_cluster_wait();
    } else {
      fps_regs_mbar_wait(bar0 + 8u * (u32)s, (u32)(q >> 1) & 1u);
      if (tid == 0) fps_regs_mbar_arm(bar0 + 8u * (u32)s, (u32)(nb - 1) * FPS_REGS_MSG_BYTES);
      __syncwarp();
    }
    // 5. Cluster argmax from the local receive buffer; every warp does it.
    {
      u32 eb = 0u, ei = FPS_NONE;
      float ex = 0.f, ey = 0.f, ez = 0.f;
      if (lane < nb) {
        const uint4 v = *reinterpret_cast<const uint4 *>(&recv[s][lane]);
        eb = v.x;
        ei = v.y;
        ex = __uint_as_float(v.z);
        ey = __uint_as_float(v.w);
        ez = recv[s][lane].z;
      }
      const bool h = ei != FPS_NONE;
      const u32 mx = __reduce_max_sync(full, h ? eb : 0u);
      const u32 bal = __ballot_sync(full, h && eb == mx);
      const int src = bal ? __ffs(bal) - 1 : 0;  // never 0 with n >= 1: block 0 holds point 0
      cx = __shfl_sync(full, ex, src);
      cy = __shfl_sync(full, ey, src);
      cz = __shfl_sync(full, ez, src);
      const u32 ci = __shfl_sync(full, ei, src);
      // Written by warp 1 (FPS_REGS_WARPS >= 2), not by the releasing warp 0: its pending
      // global stores would delay the next step's release.
      if (rank == 0 && tid == 32) {
        out_idx[it] = ci;
        out_xyz[3 * it] = cx;
        out_xyz[3 * it + 1] = cy;
        out_xyz[3 * it + 2] = cz;
      }
    }
  }
  // No block leaves while a remote store to it, or from it, may be in flight.
  fps_cluster_sync();
#else
  __trap();  // the host launches register FPS only on sm_90+
#endif
}

// pts: n×3 (n = *n_ptr); m centers out: out_idx[m], out_xyz[m×3]. Launch: one cluster of
// gridDim.x = 8 or 16 blocks (cluster dimension = grid) of FPS_REGS_THREADS threads, dynamic
// shared memory ceil(n_max / nb) × 16 bytes; n <= nb × PPT × FPS_REGS_THREADS.
// xmode 0: exchange by cluster barrier; 1: by st.async + mbarrier.
MIAD_EXTERN void __launch_bounds__(FPS_REGS_THREADS, 1)
    fps_regs_p8_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr, int m, int xmode,
                u32 *__restrict__ out_idx, float *__restrict__ out_xyz) {
  fps_regs_body<8>(pts, n_ptr, m, xmode, out_idx, out_xyz);
}
MIAD_EXTERN void __launch_bounds__(FPS_REGS_THREADS, 1)
    fps_regs_p16_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr, int m, int xmode,
                 u32 *__restrict__ out_idx, float *__restrict__ out_xyz) {
  fps_regs_body<16>(pts, n_ptr, m, xmode, out_idx, out_xyz);
}
