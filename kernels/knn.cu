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
    knn_f32(const float *__restrict__ pts, const int *__restrict__ n_ptr,
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
