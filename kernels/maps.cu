// The stages of `inspect` after the bank search (SPEC §7–§9), on fixed buffers:
//
// maps_bank_argmax   per bank (one block each): the Euclidean patch-distance grid (sqrt of
//                    the search's squared distances when asked), s* = its maximum at patch
//                    j* (ties to the lowest patch, as the CPU's first maximum), m* = nn[j*].
// maps_bank_knn      per bank and split of the bank rows: the 3 rows nearest to row m*
//                    ((distance, index) order, distances summed in row order exactly as
//                    the CPU's knn_scan), one top-3 per split. With the bank file's
//                    neighbour table (`neighbours`, rows × 2: b_1, b_2 of every row, the
//                    scan's answer computed at fit time) no scan: split 0 writes m*, b_1,
//                    b_2 as keys ranked 0, 1, 2, the other splits none.
// maps_bank_finish   per bank: merges the splits, then PatchCore's re-weighting (SPEC §7):
//                    w = 1 − exp(s*/D) / Σ_{k=1,2} exp(‖x_j* − b_k‖/D), score = w·s*.
// maps_upsample      bilinear (align_corners = false) grid → S×S, all three banks.
// maps_blur_h/_v     separable Gaussian (weights from the host, scipy "reflect" edges).
// maps_pixels        pixel map = a·(c·(m_xyz, m_rgb, m_fused)) + b, and the region labels'
//                    initialisation (label = own index above the threshold).
// maps_part          the part score (linear OCSVM or the case's Mahalanobis) and verdict.
// maps_label_merge   8-connected union-find (integer atomicMin; the root of a component
//                    is always its smallest pixel index, whatever the order of unions).
// maps_label_resolve every pixel → its root; the root's peak (integer atomicMax of the
//                    order-preserving bits: order-independent).
// maps_regions_select found = number of roots; the `limit` best by (peak desc, root asc)
//                    (radix select of the 64-bit keys, then a rank sort).
// maps_regions_stats one block per kept region: bbox, area, max, mean (f64 sum in a fixed
//                    tree), in a fixed order.
//
// For the whole part in one graph (runtime/cuda/stages/part.rs), where the part's modality
// case is known on the device only: maps_pseudo_select (a modality the part cannot use
// gets its pseudo input's features), maps_normalise (a bank's feature normalisation), and
// maps_pixels_case / maps_part_case / maps_label_merge_case, which read the parameters of
// the part's case from the three the host laid out (status word → case as `Case::of`).
//
// Every product and sum that the CPU oracle rounds separately is rounded separately here
// (__fmul_rn / __fadd_rn: no contraction into fused multiply-adds), so maps, grids and
// scores are the CPU's bits. Float results never depend on atomics or on timing.
#include "common.cuh"

#define MAPS_THREADS 256
#define MAPS_SELECT_THREADS 1024
#define MAPS_MAX_RADIUS 64
#define MAPS_MAX_REGIONS 64
#define MAPS_NONE 0xffffffffu
#define MAPS_NO_KEY 0xffffffffffffffffull

// One bank's inputs (by value, see runtime/cuda/maps.rs `MapBankArg`). patches == 0: absent.
struct MapBank {
  const float *dist;  // patches: distance (or squared distance) to the nearest bank row
  const int *nn;      // patches: that row (< 0: none)
  const float *x;     // patches × dim: the part's normalised features
  const float *rows;  // rows_n × dim: the bank
  int patches;
  int grid;
  int rows_n;
  int dim;
  int knn_splits;
  int knn_chunk;
  const unsigned *neighbours;  // rows_n × 2, or null: scan the bank
};
struct MapBanks {
  MapBank b[3];
};

// One bank's score (runtime/cuda/maps.rs `BankScoreRec`).
struct BankScoreRec {
  float score;
  float s_star;
  float weight;
  int patch;
  int nearest;
  int found;
  int present;
  int pad;
};

struct BlurWeights {
  int radius;
  float w[2 * MAPS_MAX_RADIUS + 1];
};

struct PixelParams {
  float c[3];
  float affine[2];
  float threshold;
};

struct PartParams {
  int kind;  // 0: linear part OCSVM; 1: Mahalanobis of the case
  int dropped;
  float weights[3];
  float part_w[3];
  float mean[3];
  float precision[9];
  float affine[2];
  float part_threshold;
  float pixel_threshold;
  int band;
  float band_lo;
  float band_hi;
};

struct PartDecisionRec {
  float score;
  int verdict;  // 0 pass, 1 fail, 2 uncertain
  float part_threshold;
  float pixel_threshold;
  float bank[3];
  float vector[3];
};

struct RegionRec {
  u32 x0, y0, x1, y1, area;
  float max;
  float mean;
};

// Field-by-field copy with constant offsets (no dynamic indexing of kernel parameters).
__device__ __forceinline__ MapBank maps_pick(const MapBanks &m, int b) {
  MapBank r = m.b[0];
  if (b == 1) r = m.b[1];
  if (b == 2) r = m.b[2];
  return r;
}

// Order-preserving u32 image of a float (−0 as +0); NaN → 0, below everything.
__device__ __forceinline__ u32 maps_ord(float v) {
  if (v != v) return 0u;
  const u32 bits = __float_as_uint(__fadd_rn(v, 0.0f));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float maps_unord(u32 o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ float maps_sq_step(float acc, float a, float b) {
  const float d = __fsub_rn(a, b);
  return __fadd_rn(acc, __fmul_rn(d, d));
}

// Σ (a_k − b_k)² summed in k order from 0 (the CPU's `sq_dist`).
__device__ float maps_seq_sq_dist(const float *a, const float *__restrict__ b, int dim) {
  float acc = 0.0f;
  int k = 0;
  if ((dim & 3) == 0 && (((size_t)a | (size_t)b) & 15) == 0) {
    const float4 *a4 = (const float4 *)a;
    const float4 *b4 = (const float4 *)b;
    for (; k + 16 <= dim; k += 16) {
      const int q = k >> 2;
      const float4 y0 = __ldg(b4 + q), y1 = __ldg(b4 + q + 1), y2 = __ldg(b4 + q + 2),
                   y3 = __ldg(b4 + q + 3);
      const float4 x0 = a4[q], x1 = a4[q + 1], x2 = a4[q + 2], x3 = a4[q + 3];
      acc = maps_sq_step(acc, x0.x, y0.x);
      acc = maps_sq_step(acc, x0.y, y0.y);
      acc = maps_sq_step(acc, x0.z, y0.z);
      acc = maps_sq_step(acc, x0.w, y0.w);
      acc = maps_sq_step(acc, x1.x, y1.x);
      acc = maps_sq_step(acc, x1.y, y1.y);
      acc = maps_sq_step(acc, x1.z, y1.z);
      acc = maps_sq_step(acc, x1.w, y1.w);
      acc = maps_sq_step(acc, x2.x, y2.x);
      acc = maps_sq_step(acc, x2.y, y2.y);
      acc = maps_sq_step(acc, x2.z, y2.z);
      acc = maps_sq_step(acc, x2.w, y2.w);
      acc = maps_sq_step(acc, x3.x, y3.x);
      acc = maps_sq_step(acc, x3.y, y3.y);
      acc = maps_sq_step(acc, x3.z, y3.z);
      acc = maps_sq_step(acc, x3.w, y3.w);
    }
    for (; k + 4 <= dim; k += 4) {
      const float4 y = __ldg(b4 + (k >> 2));
      const float4 x = a4[k >> 2];
      acc = maps_sq_step(acc, x.x, y.x);
      acc = maps_sq_step(acc, x.y, y.y);
      acc = maps_sq_step(acc, x.z, y.z);
      acc = maps_sq_step(acc, x.w, y.w);
    }
  }
  for (; k < dim; ++k) acc = maps_sq_step(acc, a[k], __ldg(b + k));
  return acc;
}

// Keeps the 3 smallest keys, ascending (keys are unique: the low word is the row).
__device__ __forceinline__ void maps_insert3(u64 key, u64 &k0, u64 &k1, u64 &k2) {
  if (key < k2) {
    if (key < k1) {
      k2 = k1;
      if (key < k0) {
        k1 = k0;
        k0 = key;
      } else {
        k1 = key;
      }
    } else {
      k2 = key;
    }
  }
}

// Block-wide merge of every thread's (k0, k1, k2) into thread 0's, in a fixed tree.
__device__ void maps_block_top3(u64 &k0, u64 &k1, u64 &k2, u64 *s0, u64 *s1, u64 *s2) {
  const int t = threadIdx.x;
  s0[t] = k0;
  s1[t] = k1;
  s2[t] = k2;
  __syncthreads();
  for (int half = blockDim.x >> 1; half > 0; half >>= 1) {
    if (t < half) {
      maps_insert3(s0[t + half], k0, k1, k2);
      maps_insert3(s1[t + half], k0, k1, k2);
      maps_insert3(s2[t + half], k0, k1, k2);
    }
    __syncthreads();
    if (t < half) {
      s0[t] = k0;
      s1[t] = k1;
      s2[t] = k2;
    }
    __syncthreads();
  }
}

// grid: 3 blocks (one per bank), MAPS_THREADS threads. grids: 3 × stride floats (bank b at
// b·stride; entries past `patches` and absent banks are written as 0). out: 3 records.
MIAD_EXTERN void maps_bank_argmax(const MapBanks banks, int squared, int stride,
                                  float *__restrict__ grids, BankScoreRec *__restrict__ out) {
  __shared__ u64 red[MAPS_THREADS];
  const int b = blockIdx.x, t = threadIdx.x;
  const MapBank B = maps_pick(banks, b);
  float *g = grids + (size_t)b * stride;
  u64 best = 0;
  for (int j = t; j < stride; j += blockDim.x) {
    float v = 0.0f;
    if (j < B.patches) {
      v = B.dist[j];
      if (squared) v = __fsqrt_rn(fmaxf(v, 0.0f));
      const u64 key = ((u64)maps_ord(v) << 32) | (u64)(~(u32)j);
      best = key > best ? key : best;
    }
    g[j] = v;
  }
  red[t] = best;
  __syncthreads();
  for (int half = blockDim.x >> 1; half > 0; half >>= 1) {
    if (t < half && red[t + half] > red[t]) red[t] = red[t + half];
    __syncthreads();
  }
  if (t != 0) return;
  BankScoreRec r;
  r.pad = 0;
  r.found = 0;
  if (B.patches <= 0) {
    r.score = 0.0f;
    r.s_star = 0.0f;
    r.weight = 1.0f;
    r.patch = -1;
    r.nearest = -1;
    r.present = 0;
    out[b] = r;
    return;
  }
  // The CPU keeps the first maximum by `>`: nothing beats a NaN at patch 0.
  float v0 = B.dist[0];
  if (squared) v0 = __fsqrt_rn(fmaxf(v0, 0.0f));
  const int js = (v0 != v0) ? 0 : (int)(~(u32)(red[0] & 0xffffffffu));
  float s = B.dist[js];
  if (squared) s = __fsqrt_rn(fmaxf(s, 0.0f));
  const int m = B.nn[js];
  r.score = s;
  r.s_star = s;
  r.weight = 1.0f;
  r.patch = js;
  r.nearest = (m >= 0 && m < B.rows_n) ? m : -1;
  r.present = 1;
  out[b] = r;
}

// grid: (max_splits, 3), MAPS_THREADS threads, dynamic shared memory max_dim floats.
// part: 3 × max_splits × 3 keys (distance bits << 32 | row), ascending per split.
MIAD_EXTERN void maps_bank_knn(const MapBanks banks, int max_splits,
                               const BankScoreRec *__restrict__ rec, u64 *__restrict__ part) {
  extern __shared__ float4 knn_q4[];
  __shared__ u64 s0[MAPS_THREADS], s1[MAPS_THREADS], s2[MAPS_THREADS];
  const int b = blockIdx.y, split = blockIdx.x, t = threadIdx.x;
  const MapBank B = maps_pick(banks, b);
  if (split >= B.knn_splits) return;
  u64 *P = part + ((size_t)b * max_splits + split) * 3;
  const int m = B.patches > 0 ? rec[b].nearest : -1;
  if (m < 0) {
    if (t < 3) P[t] = MAPS_NO_KEY;
    return;
  }
  if (B.neighbours != nullptr) {
    // Keys ranked by their position (the finish only reads the rows, in key order).
    if (t < 3) {
      const unsigned row = t == 0 ? (unsigned)m : B.neighbours[(size_t)m * 2 + t - 1];
      P[t] = split != 0 || row == MAPS_NONE ? MAPS_NO_KEY : ((u64)t << 32) | (u64)row;
    }
    return;
  }
  float *q = (float *)knn_q4;
  const float *qrow = B.rows + (size_t)m * B.dim;
  for (int k = t; k < B.dim; k += blockDim.x) q[k] = qrow[k];
  __syncthreads();
  u64 k0 = MAPS_NO_KEY, k1 = MAPS_NO_KEY, k2 = MAPS_NO_KEY;
  const int start = split * B.knn_chunk;
  const int end = min(start + B.knn_chunk, B.rows_n);
  for (int r = start + t; r < end; r += blockDim.x) {
    const float d = maps_seq_sq_dist(q, B.rows + (size_t)r * B.dim, B.dim);
    maps_insert3(((u64)__float_as_uint(d) << 32) | (u64)(u32)r, k0, k1, k2);
  }
  maps_block_top3(k0, k1, k2, s0, s1, s2);
  if (t == 0) {
    P[0] = k0;
    P[1] = k1;
    P[2] = k2;
  }
}

// grid: 3 blocks, MAPS_THREADS threads. Completes the records of maps_bank_argmax.
MIAD_EXTERN void maps_bank_finish(const MapBanks banks, int max_splits,
                                  const u64 *__restrict__ part, BankScoreRec *__restrict__ rec) {
  __shared__ u64 s0[MAPS_THREADS], s1[MAPS_THREADS], s2[MAPS_THREADS];
  __shared__ float nsq[2];
  __shared__ int nb[3];
  const int b = blockIdx.x, t = threadIdx.x;
  const MapBank B = maps_pick(banks, b);
  if (B.patches <= 0) return;
  const BankScoreRec r0 = rec[b];
  if (r0.nearest < 0) return;
  const u64 *P = part + (size_t)b * max_splits * 3;
  u64 k0 = MAPS_NO_KEY, k1 = MAPS_NO_KEY, k2 = MAPS_NO_KEY;
  for (int s = t; s < B.knn_splits; s += blockDim.x) {
    maps_insert3(P[3 * s], k0, k1, k2);
    maps_insert3(P[3 * s + 1], k0, k1, k2);
    maps_insert3(P[3 * s + 2], k0, k1, k2);
  }
  maps_block_top3(k0, k1, k2, s0, s1, s2);
  if (t == 0) {
    nb[0] = k0 == MAPS_NO_KEY ? -1 : (int)(u32)(k0 & 0xffffffffu);
    nb[1] = k1 == MAPS_NO_KEY ? -1 : (int)(u32)(k1 & 0xffffffffu);
    nb[2] = k2 == MAPS_NO_KEY ? -1 : (int)(u32)(k2 & 0xffffffffu);
  }
  __syncthreads();
  // ‖x_j* − b_k‖² for k = 1, 2, each summed in order by one thread.
  if (t < 2) {
    const int row = nb[t + 1];
    float d = 0.0f;
    if (row >= 0)
      d = maps_seq_sq_dist(B.x + (size_t)r0.patch * B.dim, B.rows + (size_t)row * B.dim, B.dim);
    nsq[t] = d;
  }
  __syncthreads();
  if (t != 0) return;
  const int found = (nb[0] >= 0) + (nb[1] >= 0) + (nb[2] >= 0);
  const double dsq = __dsqrt_rn((double)B.dim);
  double denom = -0.0;
  for (int k = 1; k < found; ++k)
    denom = __dadd_rn(denom, exp(__ddiv_rn(__dsqrt_rn((double)nsq[k - 1]), dsq)));
  float w = 1.0f;
  if (denom > 0.0)
    w = (float)__dsub_rn(1.0, __ddiv_rn(exp(__ddiv_rn((double)r0.s_star, dsq)), denom));
  BankScoreRec r = r0;
  r.weight = w;
  r.score = __fmul_rn(w, r0.s_star);
  r.found = found;
  rec[b] = r;
}

// grid: (ceil(s²/MAPS_THREADS), 3). g0..g2: grid sides (0: absent → zeros).
MIAD_EXTERN void maps_upsample(int g0, int g1, int g2, int s, const float *__restrict__ grids,
                               int stride, float *__restrict__ maps) {
  const int b = blockIdx.y;
  const int gi = b == 0 ? g0 : (b == 1 ? g1 : g2);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * s) return;
  float *out = maps + (size_t)b * s * s;
  if (gi <= 0) {
    out[i] = 0.0f;
    return;
  }
  const float *g = grids + (size_t)b * stride;
  const float scale = __fdiv_rn((float)gi, (float)s);
  const int oy = i / s, ox = i % s;
  const float sy = fmaxf(__fsub_rn(__fmul_rn(__fadd_rn((float)oy, 0.5f), scale), 0.5f), 0.0f);
  const float sx = fmaxf(__fsub_rn(__fmul_rn(__fadd_rn((float)ox, 0.5f), scale), 0.5f), 0.0f);
  const int y0 = min((int)floorf(sy), gi - 1), x0 = min((int)floorf(sx), gi - 1);
  const int y1 = min(y0 + 1, gi - 1), x1 = min(x0 + 1, gi - 1);
  const float ly = __fsub_rn(sy, (float)y0), lx = __fsub_rn(sx, (float)x0);
  const float hx = __fsub_rn(1.0f, lx), hy = __fsub_rn(1.0f, ly);
  const float top = __fadd_rn(__fmul_rn(g[y0 * gi + x0], hx), __fmul_rn(g[y0 * gi + x1], lx));
  const float bot = __fadd_rn(__fmul_rn(g[y1 * gi + x0], hx), __fmul_rn(g[y1 * gi + x1], lx));
  out[i] = __fadd_rn(__fmul_rn(top, hy), __fmul_rn(bot, ly));
}

// scipy "reflect": d c b a | a b c d | d c b a.
__device__ __forceinline__ int maps_reflect(int i, int n) {
  const int period = 2 * n;
  int m = i % period;
  if (m < 0) m += period;
  return m >= n ? period - 1 - m : m;
}

// One pass of the separable blur: out[y][x] = Σ_t w[t]·in[y][reflect(x + t − r)] along
// rows (horizontal) or the same along columns, summed in t order.
// grid: (ceil(s²/MAPS_THREADS), 3). present: bit b set when bank b exists (absent: zeros).
__device__ __forceinline__ void maps_blur_pass(bool horizontal, int present, int s,
                                               const BlurWeights &wts,
                                               const float *__restrict__ in,
                                               float *__restrict__ out) {
  __shared__ float w[2 * MAPS_MAX_RADIUS + 1];
  const int r = wts.radius;
  for (int k = threadIdx.x; k <= 2 * r; k += blockDim.x) w[k] = wts.w[k];
  __syncthreads();
  const int b = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * s) return;
  const size_t off = (size_t)b * s * s;
  if (!((present >> b) & 1)) {
    out[off + i] = 0.0f;
    return;
  }
  const int y = i / s, x = i % s;
  // The line through this pixel, its position on it, and the step between its values.
  const float *line = horizontal ? in + off + (size_t)y * s : in + off + x;
  const int pos = horizontal ? x : y;
  const size_t step = horizontal ? 1 : (size_t)s;
  float acc = 0.0f;
  for (int k = 0; k <= 2 * r; ++k)
    acc = __fadd_rn(acc, __fmul_rn(w[k], line[(size_t)maps_reflect(pos + k - r, s) * step]));
  out[off + i] = acc;
}

MIAD_EXTERN void maps_blur_h(int present, int s, const BlurWeights wts, const float *__restrict__ in,
                             float *__restrict__ out) {
  maps_blur_pass(true, present, s, wts, in, out);
}

MIAD_EXTERN void maps_blur_v(int present, int s, const BlurWeights wts, const float *__restrict__ in,
                             float *__restrict__ out) {
  maps_blur_pass(false, present, s, wts, in, out);
}

// grid: ceil(s2/MAPS_THREADS). map = a·((c0·m0 + c1·m1) + c2·m2) + b. With `labels` (and
// `peak`) given: labels[i] = i for pixels that start a region on the CPU (map > t; with a
// NaN threshold every non-NaN pixel, see maps_label_merge), else MAPS_NONE; peak[i] = 0.
__device__ __forceinline__ void maps_pixels_at(const PixelParams &p, int s2,
                                               const float *__restrict__ bank_maps,
                                               float *__restrict__ map, u32 *__restrict__ labels,
                                               u32 *__restrict__ peak) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s2) return;
  const float v0 = bank_maps[i], v1 = bank_maps[(size_t)s2 + i], v2 = bank_maps[2 * (size_t)s2 + i];
  const float lin = __fadd_rn(__fadd_rn(__fmul_rn(p.c[0], v0), __fmul_rn(p.c[1], v1)), __fmul_rn(p.c[2], v2));
  const float v = __fadd_rn(__fmul_rn(p.affine[0], lin), p.affine[1]);
  map[i] = v;
  if (labels != nullptr) {
    const float t = p.threshold;
    const bool start = (v == v) && !(v <= t);
    labels[i] = start ? (u32)i : MAPS_NONE;
    peak[i] = 0u;
  }
}

MIAD_EXTERN void maps_pixels(const PixelParams p, int s2, const float *__restrict__ bank_maps,
                             float *__restrict__ map, u32 *__restrict__ labels,
                             u32 *__restrict__ peak) {
  maps_pixels_at(p, s2, bank_maps, map, labels, peak);
}

// grid: 1 block of 32 threads (thread 0 works). rec: the 3 bank records.
__device__ __forceinline__ void maps_part_at(const PartParams &p, const BankScoreRec *__restrict__ rec,
                                             PartDecisionRec *__restrict__ out) {
  if (threadIdx.x != 0) return;
  PartDecisionRec d;
  for (int b = 0; b < 3; ++b) {
    const BankScoreRec r = rec[b];
    d.bank[b] = r.present ? r.score : 0.0f;
    d.vector[b] = r.present ? __fmul_rn(p.weights[b], r.score) : 0.0f;
  }
  float score;
  if (p.kind == 0) {
    score = -0.0f;
    for (int b = 0; b < 3; ++b) score = __fadd_rn(score, __fmul_rn(p.part_w[b], d.vector[b]));
  } else {
    double dv[3];
    for (int b = 0; b < 3; ++b) {
      const float v = (b == p.dropped || b == 2) ? 0.0f : d.vector[b];
      dv[b] = (double)__fsub_rn(v, p.mean[b]);
    }
    double q = 0.0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        q = __dadd_rn(q, __dmul_rn(__dmul_rn(dv[i], (double)p.precision[3 * i + j]), dv[j]));
    const float dist = (float)__dsqrt_rn(fmax(q, 0.0));
    score = __fadd_rn(__fmul_rn(p.affine[0], dist), p.affine[1]);
  }
  int verdict;
  if (score != score)
    verdict = 1;
  else if (p.band && score >= p.band_lo && score < p.band_hi)
    verdict = 2;
  else if (score > p.part_threshold)
    verdict = 1;
  else
    verdict = 0;
  d.score = score;
  d.verdict = verdict;
  d.part_threshold = p.part_threshold;
  d.pixel_threshold = p.pixel_threshold;
  *out = d;
}

MIAD_EXTERN void maps_part(const PartParams p, const BankScoreRec *__restrict__ rec,
                           PartDecisionRec *__restrict__ out) {
  maps_part_at(p, rec, out);
}

// grid: ceil(s²/MAPS_THREADS). Unions each labelled pixel with its labelled neighbours
// W, NW, N, NE. A NaN threshold links nothing (the CPU's flood fill then never joins a
// neighbour: `map > NaN` is false).
__device__ __forceinline__ void maps_label_merge_at(int s, float threshold, u32 *__restrict__ labels) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * s || threshold != threshold) return;
  if (labels[i] == MAPS_NONE) return;
  const int y = i / s, x = i % s;
  const volatile u32 *V = labels;
  if (x > 0 && V[i - 1] != MAPS_NONE) miad_uf_unite(labels, (u32)i, (u32)(i - 1));
  if (y > 0) {
    const int up = i - s;
    if (x > 0 && V[up - 1] != MAPS_NONE) miad_uf_unite(labels, (u32)i, (u32)(up - 1));
    if (V[up] != MAPS_NONE) miad_uf_unite(labels, (u32)i, (u32)up);
    if (x + 1 < s && V[up + 1] != MAPS_NONE) miad_uf_unite(labels, (u32)i, (u32)(up + 1));
  }
}

MIAD_EXTERN void maps_label_merge(int s, float threshold, u32 *__restrict__ labels) {
  maps_label_merge_at(s, threshold, labels);
}

// grid: ceil(s²/MAPS_THREADS). labels[i] = root; peak[root] = max over the component of
// maps_ord(map) (integer atomicMax: the same result in any order).
MIAD_EXTERN void maps_label_resolve(int s, const float *__restrict__ map, u32 *__restrict__ labels,
                                    u32 *__restrict__ peak) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * s) return;
  if (((const volatile u32 *)labels)[i] == MAPS_NONE) return;
  const u32 root = miad_uf_find((const volatile u32 *)labels, (u32)i);
  labels[i] = root;
  atomicMax(peak + root, maps_ord(map[i]));
}

// grid: 1 block of MAPS_SELECT_THREADS. count[0] = regions found, count[1] = kept
// (min(found, limit)); sel[0..limit): kept roots by (peak desc, root asc), MAPS_NONE after.
MIAD_EXTERN void maps_regions_select(int s2, int limit, const u32 *__restrict__ labels,
                                     const u32 *__restrict__ peak, u32 *__restrict__ sel,
                                     u32 *__restrict__ count) {
  __shared__ u32 hist[256];
  __shared__ u32 total;
  __shared__ u32 want;
  __shared__ u32 nkeys;
  __shared__ u64 prefix;
  __shared__ u64 keys[MAPS_MAX_REGIONS];
  const int t = threadIdx.x;
  if (t == 0) {
    total = 0;
    nkeys = 0;
    prefix = 0;
  }
  __syncthreads();
  u32 mine = 0;
  for (int i = t; i < s2; i += blockDim.x) mine += (labels[i] == (u32)i);
  atomicAdd(&total, mine);
  __syncthreads();
  const u32 found = total;
  const u32 kept = min(found, (u32)limit);
  if (found > (u32)limit) {
    // Radix select of the kept-th largest key, 8 bits at a time from the top.
    if (t == 0) want = kept;
    u64 mask = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int k = t; k < 256; k += blockDim.x) hist[k] = 0;
      __syncthreads();
      const u64 pre = prefix;
      for (int i = t; i < s2; i += blockDim.x) {
        if (labels[i] != (u32)i) continue;
        const u64 key = ((u64)peak[i] << 32) | (u64)(~(u32)i);
        if ((key & mask) == pre) atomicAdd(&hist[(key >> shift) & 255], 1u);
      }
      __syncthreads();
      if (t == 0) {
        u32 w = want;
        int d = 255;
        for (; d > 0; --d) {
          if (w <= hist[d]) break;
          w -= hist[d];
        }
        want = w;
        prefix = pre | ((u64)d << shift);
      }
      mask |= (u64)255 << shift;
      __syncthreads();
    }
  }
  const u64 thr = found > (u32)limit ? prefix : 0;
  for (int i = t; i < s2; i += blockDim.x) {
    if (labels[i] != (u32)i) continue;
    const u64 key = ((u64)peak[i] << 32) | (u64)(~(u32)i);
    if (key >= thr) {
      const u32 at = atomicAdd(&nkeys, 1u);
      if (at < MAPS_MAX_REGIONS) keys[at] = key;
    }
  }
  __syncthreads();
  // Rank sort (keys are unique): position = number of larger keys.
  if (t < (int)kept) {
    const u64 key = keys[t];
    u32 rank = 0;
    for (u32 u = 0; u < kept; ++u) rank += keys[u] > key;
    sel[rank] = ~(u32)(key & 0xffffffffu);
  }
  for (int k = (int)kept + t; k < limit; k += blockDim.x) sel[k] = MAPS_NONE;
  if (t == 0) {
    count[0] = found;
    count[1] = kept;
  }
}

// grid: `limit` blocks of MAPS_THREADS. Block k describes the region of root sel[k] (a
// zero record past count[1]). The root is the component's first pixel in raster order.
MIAD_EXTERN void maps_regions_stats(int s, const float *__restrict__ map,
                                    const u32 *__restrict__ labels, const u32 *__restrict__ sel,
                                    const u32 *__restrict__ count, RegionRec *__restrict__ regions) {
  __shared__ u32 rx0[MAPS_THREADS], ry0[MAPS_THREADS], rx1[MAPS_THREADS], ry1[MAPS_THREADS];
  __shared__ u32 rar[MAPS_THREADS];
  __shared__ float rmx[MAPS_THREADS];
  __shared__ double rsum[MAPS_THREADS];
  const int k = blockIdx.x, t = threadIdx.x;
  if ((u32)k >= count[1]) {
    if (t == 0) {
      RegionRec z;
      z.x0 = z.y0 = z.x1 = z.y1 = z.area = 0;
      z.max = 0.0f;
      z.mean = 0.0f;
      regions[k] = z;
    }
    return;
  }
  const u32 root = sel[k];
  const int s2 = s * s;
  u32 x0 = MAPS_NONE, y0 = MAPS_NONE, x1 = 0, y1 = 0, area = 0;
  float mx = -__int_as_float(0x7f800000);
  double sum = 0.0;
  for (int i = (int)root + t; i < s2; i += blockDim.x) {
    if (labels[i] != root) continue;
    const u32 y = (u32)(i / s), x = (u32)(i % s);
    const float v = map[i];
    x0 = min(x0, x);
    x1 = max(x1, x);
    y0 = min(y0, y);
    y1 = max(y1, y);
    area += 1;
    mx = fmaxf(mx, v);
    sum = __dadd_rn(sum, (double)v);
  }
  rx0[t] = x0;
  ry0[t] = y0;
  rx1[t] = x1;
  ry1[t] = y1;
  rar[t] = area;
  rmx[t] = mx;
  rsum[t] = sum;
  __syncthreads();
  for (int half = blockDim.x >> 1; half > 0; half >>= 1) {
    if (t < half) {
      rx0[t] = min(rx0[t], rx0[t + half]);
      ry0[t] = min(ry0[t], ry0[t + half]);
      rx1[t] = max(rx1[t], rx1[t + half]);
      ry1[t] = max(ry1[t], ry1[t + half]);
      rar[t] += rar[t + half];
      rmx[t] = fmaxf(rmx[t], rmx[t + half]);
      rsum[t] = __dadd_rn(rsum[t], rsum[t + half]);
    }
    __syncthreads();
  }
  if (t == 0) {
    RegionRec r;
    r.x0 = rx0[0];
    r.y0 = ry0[0];
    r.x1 = rx1[0];
    r.y1 = ry1[0];
    r.area = rar[0];
    r.max = rmx[0];
    r.mean = (float)__ddiv_rn(rsum[0], (double)rar[0]);
    regions[k] = r;
  }
}

// ---- The part's case chosen on the device -------------------------------------------------

// The modality case of a part as `Case::of`: 0 complete, 1 RGB only, 2 cloud only (also
// for neither modality, a part the host refuses). status[0], status[1]: RGB, cloud usable.
__device__ __forceinline__ int maps_case(const int *__restrict__ status) {
  const bool rgb = status[0] != 0, cloud = status[1] != 0;
  return rgb && cloud ? 0 : (rgb ? 1 : 2);
}

// grid: ceil(n/MAPS_THREADS). A modality the part cannot use (status[modality] == 0) gets
// its pseudo input's features; a usable one keeps the network's.
MIAD_EXTERN void maps_pseudo_select(const int *__restrict__ status, int modality, int n,
                                    const float *__restrict__ pseudo, float *__restrict__ features) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || status[modality] != 0) return;
  features[i] = pseudo[i];
}

// grid: ceil(n/MAPS_THREADS). out = (in − mean)·inv, each operation rounded as the CPU
// scorer's normalisation.
MIAD_EXTERN void maps_normalise(int n, float mean, float inv, const float *__restrict__ in,
                                float *__restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = __fmul_rn(__fsub_rn(in[i], mean), inv);
}

// maps_pixels with the pixel parameters of the part's case (cases: 3, by `Case`).
MIAD_EXTERN void maps_pixels_case(const int *__restrict__ status, const PixelParams *__restrict__ cases,
                                  int s2, const float *__restrict__ bank_maps, float *__restrict__ map,
                                  u32 *__restrict__ labels, u32 *__restrict__ peak) {
  const PixelParams p = cases[maps_case(status)];
  maps_pixels_at(p, s2, bank_maps, map, labels, peak);
}

// maps_part with the part parameters of the part's case (cases: 3, by `Case`).
MIAD_EXTERN void maps_part_case(const int *__restrict__ status, const PartParams *__restrict__ cases,
                                const BankScoreRec *__restrict__ rec, PartDecisionRec *__restrict__ out) {
  const PartParams p = cases[maps_case(status)];
  maps_part_at(p, rec, out);
}

// maps_label_merge with the pixel threshold of the part's case (cases: 3, by `Case`).
MIAD_EXTERN void maps_label_merge_case(const int *__restrict__ status,
                                       const PixelParams *__restrict__ cases, int s,
                                       u32 *__restrict__ labels) {
  maps_label_merge_at(s, cases[maps_case(status)].threshold, labels);
}

// grid: 1 block of 32 threads (thread 0 works). *out = the part's case (for RADAR's fusion).
MIAD_EXTERN void maps_case_of(const int *__restrict__ status, int *__restrict__ out) {
  if (threadIdx.x == 0) *out = maps_case(status);
}

// grid: ceil(max(min_points, 1)/MAPS_THREADS). From the device preprocessing's status word
// (RGB reason | cloud reason << 8, 0: usable): status[0], status[1] = RGB, cloud usable.
// An unusable cloud (count 0, pixel map all −1) gets a fixed valid cloud of min_points
// distinct points for the point branch to run on (its features are then replaced by the
// pseudo input's): the lattice of the host's filler, (i mod 17, ⌊i/17⌋ mod 17, ⌊i/289⌋)·10⁻³.
MIAD_EXTERN void maps_status_from_word(const u32 *__restrict__ word, int min_points,
                                       int *__restrict__ status, int *__restrict__ count,
                                       float *__restrict__ points) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const u32 w = *word;
  const bool rgb = (w & 0xffu) == 0u, cloud = ((w >> 8) & 0xffu) == 0u;
  if (i == 0) {
    status[0] = rgb ? 1 : 0;
    status[1] = cloud ? 1 : 0;
    if (!cloud) *count = min_points;
  }
  if (cloud || i >= min_points) return;
  points[3 * i] = __fmul_rn((float)(i % 17), 1e-3f);
  points[3 * i + 1] = __fmul_rn((float)((i / 17) % 17), 1e-3f);
  points[3 * i + 2] = __fmul_rn((float)(i / 289), 1e-3f);
}
