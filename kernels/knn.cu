// k-nearest-neighbour grouping (SPEC §3.2): for each center its k nearest points of P,
// sorted by (squared distance, index), and their coordinates relative to the center.
//
// One block per 32 centers (lane = center), KNN_WARPS warps splitting the points into
// contiguous ranges. Each lane keeps a max-heap of k packed (distance, index) keys for its
// center and range in shared memory ([warp][slot][lane] layout: lanes hit distinct banks);
// all lanes read the same point at a time (a shared-memory broadcast). Then each heap is
// sorted in place and warp 0 merges the KNN_WARPS sorted lists of each center. Results
// do not depend on scheduling: the key order is total.
#include "common.cuh"

#define KNN_WARPS 4
#define KNN_TILE 1024
#define KNN_MAXKEY 0xffffffffffffffffull

__device__ __forceinline__ void knn_sift_down(u64 *h, int size, u64 key, int pos) {
  // h is strided by 32 (one column per lane).
  while (true) {
    int l = 2 * pos + 1;
    if (l >= size) break;
    int r = l + 1;
    u64 hl = h[l * 32];
    int c = l;
    u64 hc = hl;
    if (r < size) {
      u64 hr = h[r * 32];
      if (hr > hl) {
        c = r;
        hc = hr;
      }
    }
    if (hc > key) {
      h[pos * 32] = hc;
      pos = c;
    } else {
      break;
    }
  }
  h[pos * 32] = key;
}

// pts: n×3 (n = *n_ptr, n >= k); centers: m×3. out_idx: m×k; out_rel: m×k×3 (p − center).
// Dynamic shared memory: KNN_WARPS·32·k·8 bytes of heaps + KNN_TILE·12 bytes of points.
MIAD_EXTERN void __launch_bounds__(KNN_WARPS * 32)
    knn_heap_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr,
            const float *__restrict__ centers, int m, int k, u32 *__restrict__ out_idx,
            float *__restrict__ out_rel) {
  extern __shared__ u64 knn_dsm[];
  const int n = *n_ptr;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c_id = blockIdx.x * 32 + lane;
  const bool active = c_id < m;
  float cx = 0.f, cy = 0.f, cz = 0.f;
  if (active) {
    cx = centers[3 * c_id];
    cy = centers[3 * c_id + 1];
    cz = centers[3 * c_id + 2];
  }
  u64 *heap = knn_dsm + (size_t)warp * 32 * k + lane;
  float *tile = (float *)(knn_dsm + (size_t)KNN_WARPS * 32 * k);
  for (int s = 0; s < k; ++s) heap[s * 32] = KNN_MAXKEY;
  const int per = (n + KNN_WARPS - 1) / KNN_WARPS;
  const int lo = min(n, warp * per), hi = min(n, lo + per);
  // Points stream through a shared tile that all warps load together.
  for (int t0 = 0; t0 < n; t0 += KNN_TILE) {
    const int tn = min(KNN_TILE, n - t0);
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * tn; i += blockDim.x) tile[i] = pts[3 * t0 + i];
    __syncthreads();
    const int a = max(lo, t0), b = min(hi, t0 + tn);
    for (int j = a; j < b; ++j) {
      const float *p = tile + 3 * (j - t0);
      float d = miad_sq_dist(p[0], p[1], p[2], cx, cy, cz);
      u64 key = miad_key(d, (u32)j);
      if (key < heap[0]) knn_sift_down(heap, k, key, 0);
    }
  }
  // Heap sort in place: ascending keys.
  for (int s = k - 1; s > 0; --s) {
    u64 top = heap[0];
    u64 last = heap[s * 32];
    heap[s * 32] = top;
    knn_sift_down(heap, s, last, 0);
  }
  __syncthreads();
  if (warp == 0 && active) {
    int pos[KNN_WARPS];
#pragma unroll
    for (int w = 0; w < KNN_WARPS; ++w) pos[w] = 0;
    for (int t = 0; t < k; ++t) {
      u64 best = KNN_MAXKEY;
      int bw = 0;
#pragma unroll
      for (int w = 0; w < KNN_WARPS; ++w) {
        u64 v = pos[w] < k ? knn_dsm[((size_t)w * k + pos[w]) * 32 + lane] : KNN_MAXKEY;
        if (v < best) {
          best = v;
          bw = w;
        }
      }
#pragma unroll
      for (int w = 0; w < KNN_WARPS; ++w) pos[w] += (w == bw) ? 1 : 0;
      // n < k leaves unfilled slots (a caller bug); clamp so nothing reads out of bounds.
      u32 j = min((u32)(best & 0xffffffffu), (u32)max(n - 1, 0));
      size_t o = (size_t)c_id * k + t;
      out_idx[o] = j;
      out_rel[3 * o] = __fsub_rn(pts[3 * j], cx);
      out_rel[3 * o + 1] = __fsub_rn(pts[3 * j + 1], cy);
      out_rel[3 * o + 2] = __fsub_rn(pts[3 * j + 2], cz);
    }
  }
}

// ======================================================================================
// select kNN: exact k nearest (k <= KNN_SELECT_T) per center, sorted by (distance bits, index), for
// KNN_SELECT_C centers per block of KNN_SELECT_T threads.
//
// Why this design (exact and deterministic by construction, no spatial structure to
// build): the answer is the unique set of the k smallest 64-bit keys (distance bits << 32 |
// index), so any candidate filter that provably keeps those k keys, followed by an exact
// sort of the survivors, gives the same bits as the CPU, whatever the order in which the
// survivors were gathered.
//  pass 1: thread t scans the points j ≡ t (mod KNN_SELECT_T) and keeps, per center, the minimum
//          distance of its slice. The k-th smallest of the KNN_SELECT_T slice minima, τ, is an
//          upper bound of the k-th smallest distance (k distinct points, one per slice, lie
//          at <= τ). One warp per center finds it exactly by a bitwise radix select on the
//          float bits (non-negative floats order like their bits).
//  pass 2: the same scan appends every key with distance <= τ to the center's buffer in
//          shared memory (warp-aggregated atomics). With KNN_SELECT_T slices the bound is tight
//          (≈ k·(1 + a few %) survivors for clouds in random or scan order).
//  overflow (more than KNN_SELECT_CAP survivors, e.g. massive exact ties): sort the full buffer;
//          its k-th key is a smaller valid bound (k actual keys are <= it, and the
//          KNN_SELECT_CAP - k larger buffer keys are now excluded), rescan with it; repeats until
//          the survivors fit (at most n / (KNN_SELECT_CAP - k) rounds, one in practice).
//  final:  bitonic sort of each buffer (padded with the maximum key to a power of two, the
//          same size for the block's centers), the first k keys are the answer.
// Cost: 2 scans of n points per block of KNN_SELECT_C centers (each point load serves KNN_SELECT_C
// distance computations), ~10 instructions per (center, point) and pass; 128 blocks for
// 1024 centers (one per SM on H100).
// ======================================================================================
#define KNN_SELECT_C 8
#define KNN_SELECT_T 512
#define KNN_SELECT_CAP 1024
#define KNN_SELECT_U 2
#define KNN_SELECT_NONE 0xffffffffu

// One scan: append to buf[c] every key (d, j) <= (tb[c], ti[c]) (tb < 0: none).
__device__ __forceinline__ void knn_select_collect(const float *__restrict__ pts, int n,
                                             const float (&cx)[KNN_SELECT_C],
                                             const float (&cy)[KNN_SELECT_C],
                                             const float (&cz)[KNN_SELECT_C], const int (&tb)[KNN_SELECT_C],
                                             const u32 (&ti)[KNN_SELECT_C], u64 *buf, int *cnt) {
  const u32 full = 0xffffffffu;
  const int tid = threadIdx.x, lane = tid & 31;
  const float qnan = __int_as_float(0x7fffffff);
  for (int j0 = tid - lane; j0 < n; j0 += KNN_SELECT_U * KNN_SELECT_T) {
    float qx[KNN_SELECT_U], qy[KNN_SELECT_U], qz[KNN_SELECT_U];
#pragma unroll
    for (int u = 0; u < KNN_SELECT_U; ++u) {
      const int j = j0 + lane + u * KNN_SELECT_T;
      qx[u] = qy[u] = qz[u] = qnan;
      if (j < n) {
        qx[u] = __ldg(pts + 3 * j);
        qy[u] = __ldg(pts + 3 * j + 1);
        qz[u] = __ldg(pts + 3 * j + 2);
      }
    }
#pragma unroll
    for (int u = 0; u < KNN_SELECT_U; ++u) {
      const u32 j = (u32)(j0 + lane + u * KNN_SELECT_T);
      const bool ok = j < (u32)n;
#pragma unroll
      for (int c = 0; c < KNN_SELECT_C; ++c) {
        const float d = miad_sq_dist(qx[u], qy[u], qz[u], cx[c], cy[c], cz[c]);
        const int db = __float_as_int(d);  // d >= 0: its bits order like the values
        const bool pre = ok && db <= tb[c];
        if (__any_sync(full, pre)) {
          const bool cand = pre && (db < tb[c] || j <= ti[c]);
          const u32 bal = __ballot_sync(full, cand);
          if (bal) {
            const int leader = __ffs(bal) - 1;
            int at = 0;
            if (lane == leader) at = atomicAdd(&cnt[c], __popc(bal));
            at = __shfl_sync(full, at, leader);
            if (cand) {
              const int pos = at + __popc(bal & miad_lanemask_lt());
              if (pos < KNN_SELECT_CAP) buf[c * KNN_SELECT_CAP + pos] = ((u64)(u32)db << 32) | (u64)j;
            }
          }
        }
      }
    }
  }
}

// Ascending bitonic sort of buf[c][0, p) for the centers in `mask`; p a power of two >= 2.
// Ends with a barrier.
__device__ __forceinline__ void knn_select_sort(u64 *buf, u32 mask, int p, int logp) {
  const int half = p >> 1, total = KNN_SELECT_C * half;
  for (int size = 2; size <= p; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < total; t += KNN_SELECT_T) {
        const int c = t >> (logp - 1), i = t & (half - 1);
        if ((mask >> c) & 1u) {
          const int lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
          const int hi = lo + stride;
          u64 *b = buf + c * KNN_SELECT_CAP;
          const u64 a = b[lo], v = b[hi];
          if ((a > v) == ((lo & size) == 0)) {
            b[lo] = v;
            b[hi] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// pts: n×3 (n = *n_ptr, n >= k); centers: m×3. out_idx: m×k; out_rel: m×k×3 (p − center).
// Launch: ceil(m / KNN_SELECT_C) blocks of KNN_SELECT_T threads, dynamic shared memory
// KNN_SELECT_C·KNN_SELECT_CAP·8 bytes. 1 <= k <= KNN_SELECT_T (else the block returns without writing).
MIAD_EXTERN void __launch_bounds__(KNN_SELECT_T, 1)
    knn_select_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr,
             const float *__restrict__ centers, int m, int k, u32 *__restrict__ out_idx,
             float *__restrict__ out_rel) {
  extern __shared__ u64 knn_select_buf[];  // [KNN_SELECT_C][KNN_SELECT_CAP]; pass 1 keeps its minima here
  __shared__ int cnt[KNN_SELECT_C];
  __shared__ int tbs[KNN_SELECT_C];
  __shared__ u32 tis[KNN_SELECT_C];
  __shared__ float cen[KNN_SELECT_C][3];
  const u32 full = 0xffffffffu;
  const int n = *n_ptr;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c0 = blockIdx.x * KNN_SELECT_C;
  const int nc = min(KNN_SELECT_C, m - c0);
  if (k < 1 || k > KNN_SELECT_T || nc <= 0) return;

  float cx[KNN_SELECT_C], cy[KNN_SELECT_C], cz[KNN_SELECT_C];
#pragma unroll
  for (int c = 0; c < KNN_SELECT_C; ++c) {
    const int cc = c0 + min(c, nc - 1);  // inactive centers repeat the last one
    cx[c] = centers[3 * cc];
    cy[c] = centers[3 * cc + 1];
    cz[c] = centers[3 * cc + 2];
  }
  if (tid < KNN_SELECT_C) {
    const int cc = c0 + min(tid, nc - 1);
    cen[tid][0] = centers[3 * cc];
    cen[tid][1] = centers[3 * cc + 1];
    cen[tid][2] = centers[3 * cc + 2];
  }

  // Pass 1: per-thread slice minima.
  {
    float mn[KNN_SELECT_C];
    const float inf = __int_as_float(0x7f800000), qnan = __int_as_float(0x7fffffff);
#pragma unroll
    for (int c = 0; c < KNN_SELECT_C; ++c) mn[c] = inf;
    for (int j0 = tid - lane; j0 < n; j0 += KNN_SELECT_U * KNN_SELECT_T) {
      float qx[KNN_SELECT_U], qy[KNN_SELECT_U], qz[KNN_SELECT_U];
#pragma unroll
      for (int u = 0; u < KNN_SELECT_U; ++u) {
        const int j = j0 + lane + u * KNN_SELECT_T;
        qx[u] = qy[u] = qz[u] = qnan;
        if (j < n) {
          qx[u] = __ldg(pts + 3 * j);
          qy[u] = __ldg(pts + 3 * j + 1);
          qz[u] = __ldg(pts + 3 * j + 2);
        }
      }
#pragma unroll
      for (int u = 0; u < KNN_SELECT_U; ++u) {
#pragma unroll
        for (int c = 0; c < KNN_SELECT_C; ++c) {
          // fminf returns the other operand for a NaN (no point).
          mn[c] = fminf(mn[c], miad_sq_dist(qx[u], qy[u], qz[u], cx[c], cy[c], cz[c]));
        }
      }
    }
    u32 *mins = reinterpret_cast<u32 *>(knn_select_buf);
#pragma unroll
    for (int c = 0; c < KNN_SELECT_C; ++c) mins[c * KNN_SELECT_T + tid] = __float_as_uint(mn[c]);
  }
  __syncthreads();
  // Radix select of the k-th smallest minimum (rank k-1), one warp per center.
  if (warp < KNN_SELECT_C) {
    const u32 *mins = reinterpret_cast<const u32 *>(knn_select_buf) + warp * KNN_SELECT_T;
    u32 v[KNN_SELECT_T / 32];
#pragma unroll
    for (int i = 0; i < KNN_SELECT_T / 32; ++i) v[i] = mins[lane + 32 * i];
    u32 prefix = 0u;
    int r = k - 1;
    for (int b = 31; b >= 0; --b) {
      const u32 mask = ~0u << b;  // the bits decided so far and bit b
      int c = 0;
#pragma unroll
      for (int i = 0; i < KNN_SELECT_T / 32; ++i) c += (v[i] & mask) == prefix;
      c = (int)__reduce_add_sync(full, (u32)c);
      if (r >= c) {  // fewer than r+1 values with bit b = 0 under this prefix
        r -= c;
        prefix |= 1u << b;
      }
    }
    if (lane == 0) {
      tbs[warp] = warp < nc ? (int)prefix : -1;
      tis[warp] = KNN_SELECT_NONE;
      cnt[warp] = 0;
    }
  }
  __syncthreads();  // also: the minima are dead from here on, the buffers take their place

  int tb[KNN_SELECT_C];
  u32 ti[KNN_SELECT_C];
#pragma unroll
  for (int c = 0; c < KNN_SELECT_C; ++c) {
    tb[c] = tbs[c];
    ti[c] = tis[c];
  }
  knn_select_collect(pts, n, cx, cy, cz, tb, ti, knn_select_buf, cnt);
  __syncthreads();

  // Overflow: tighten the bound of the overflowing centers and rescan for them only.
  for (;;) {
    u32 over = 0u;
#pragma unroll
    for (int c = 0; c < KNN_SELECT_C; ++c) over |= (cnt[c] > KNN_SELECT_CAP ? 1u : 0u) << c;
    if (over == 0u) break;  // uniform: every thread read the same counts
    knn_select_sort(knn_select_buf, over, KNN_SELECT_CAP, 10);
    if (tid < KNN_SELECT_C) {
      if ((over >> tid) & 1u) {
        const u64 key = knn_select_buf[tid * KNN_SELECT_CAP + (k - 1)];
        tbs[tid] = (int)(u32)(key >> 32);
        tis[tid] = (u32)key;
        cnt[tid] = 0;
      } else {
        tbs[tid] = -1;  // done: keep its buffer, collect nothing
      }
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < KNN_SELECT_C; ++c) {
      tb[c] = tbs[c];
      ti[c] = tis[c];
    }
    knn_select_collect(pts, n, cx, cy, cz, tb, ti, knn_select_buf, cnt);
    __syncthreads();
  }

  // Final sort: pad each buffer to p with the maximum key.
  int most = k;
#pragma unroll
  for (int c = 0; c < KNN_SELECT_C; ++c) most = max(most, cnt[c]);
  int logp = 1;
  while ((1 << logp) < most) ++logp;
  const int p = 1 << logp;  // <= KNN_SELECT_CAP: counts are <= KNN_SELECT_CAP here, k <= KNN_SELECT_T
  for (int t = tid; t < KNN_SELECT_C * p; t += KNN_SELECT_T) {
    const int c = t >> logp, i = t & (p - 1);
    if (i >= cnt[c]) knn_select_buf[c * KNN_SELECT_CAP + i] = 0xffffffffffffffffull;
  }
  __syncthreads();
  knn_select_sort(knn_select_buf, (1u << KNN_SELECT_C) - 1u, p, logp);

  // Write. n < k leaves maximum keys: clamp the index as knn_heap_f32 does.
  const u32 last = (u32)max(n - 1, 0);
  for (int t = tid; t < nc * k; t += KNN_SELECT_T) {
    const int c = t / k, r = t - c * k;
    const u64 key = knn_select_buf[c * KNN_SELECT_CAP + r];
    const u32 j = min((u32)key, last);
    const size_t o = (size_t)(c0 + c) * k + r;
    out_idx[o] = j;
    out_rel[3 * o] = __fsub_rn(pts[3 * j], cen[c][0]);
    out_rel[3 * o + 1] = __fsub_rn(pts[3 * j + 1], cen[c][1]);
    out_rel[3 * o + 2] = __fsub_rn(pts[3 * j + 2], cen[c][2]);
  }
}
