//! Point feature alignment (SPEC §4): group features → G×G patch grid, as one sparse
//! (G² × M) matrix applied to the (M × F) group features. The S×S×F map is never built.
//!
//! Steps 1–3 of SPEC §4 are linear in the group features. With a point p at pixel
//! (py, px), its 3 nearest centers k and weights w_pk, output patch (i, j) is
//!   Σ_p coef_i(py) · coef_j(px) / (9 · |bin_i| · |bin_j|) · Σ_k w_pk g_k,
//! where coef_i(py) counts the 3×3-pool windows of rows bin_i = [⌊i·(S−2)/G⌋,
//! ⌈(i+1)·(S−2)/G⌉) that cover pixel row py (same for columns). For each patch the
//! (center, weight) entries of the pixels under its support are gathered, sorted by
//! center and merged — one sparse row — and the row is applied to the group features.
//! Patches are split over the pool in fixed chunks; a patch's bits depend only on its data.

use super::knn::knn_search;
use super::point_kdtree::{kdtree_scratch_len, sq_dist, KdTree};
use super::pool::{Pool, SharedMut};
use crate::config::PreprocessConfig;
use crate::{Error, Result};

/// Neighbours of the inverse-distance interpolation.
const NN: usize = 3;
/// Points per 3-NN task, patch rows per apply task.
const POINT_CHUNK: usize = 256;

/// Adaptive average pooling bin `i` of `out` bins over `input` (PyTorch's bins).
#[inline]
pub fn adaptive_bin(i: usize, input: usize, out: usize) -> (usize, usize) {
    ((i * input) / out, ((i + 1) * input).div_ceil(out))
}

/// Refuses a preprocessing config PFA cannot run: S ≥ 3 and 1 ≤ G ≤ S − 2.
pub fn check_pfa_config(pre: &PreprocessConfig) -> Result<()> {
    let (s, g) = (pre.image_size as usize, pre.xyz_grid as usize);
    if s < 3 || g == 0 || g > s - 2 {
        return Err(Error::Config(format!(
            "xyz grid {g} does not fit a {s}×{s} image after 3×3 pooling"
        )));
    }
    Ok(())
}

fn max_bin(pre: &PreprocessConfig) -> usize {
    let (s, g) = (pre.image_size as usize, pre.xyz_grid as usize);
    (0..g)
        .map(|i| {
            let (a, b) = adaptive_bin(i, s - 2, g);
            b - a
        })
        .max()
        .unwrap_or(0)
}

/// Entries of one sparse row before merging: support pixels × 3 neighbours.
fn row_cap(pre: &PreprocessConfig) -> usize {
    let sup = max_bin(pre) + 2;
    sup * sup * NN
}

fn worker_len(pre: &PreprocessConfig) -> usize {
    2 * row_cap(pre) + 2 * NN + 128
}

/// Scratch floats [`point_feature_align`] needs for up to `max_points` points and
/// `num_groups` centers on `threads` workers.
pub fn pfa_scratch_len(
    pre: &PreprocessConfig,
    num_groups: usize,
    max_points: usize,
    threads: usize,
) -> usize {
    let s = pre.image_size as usize;
    kdtree_scratch_len(num_groups) + 2 * NN * max_points + s * s + threads.max(1) * worker_len(pre)
}

/// xyz patch features `out` (G² × F, row-major, patch = row·G + column) from the group
/// features `group_features` (M × F) of the centers `centers` (M×3 coordinates), for the
/// `n` points `points` (N×3) at pixels `point_pixels` (row·S + column).
/// `scratch`: [`pfa_scratch_len`] floats for `pool.threads()`. Panics on short buffers.
#[allow(clippy::too_many_arguments)]
pub fn point_feature_align(
    pool: &Pool,
    pre: &PreprocessConfig,
    points: &[f32],
    n: usize,
    point_pixels: &[u32],
    centers: &[f32],
    group_features: &[f32],
    feature_dim: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (s, g) = (pre.image_size as usize, pre.xyz_grid as usize);
    let m = centers.len() / 3;
    let f = feature_dim;
    assert!(
        s >= 3 && g >= 1 && g <= s - 2,
        "pfa: grid {g} for image {s}"
    );
    assert!(points.len() >= 3 * n && point_pixels.len() >= n);
    assert!(group_features.len() >= m * f && out.len() >= g * g * f);
    assert!(scratch.len() >= pfa_scratch_len(pre, m, n, pool.threads()));
    let out = &mut out[..g * g * f];
    out.fill(0.0);
    if n == 0 || m == 0 {
        return;
    }
    let nn = NN.min(m);
    let (tree, rest) = KdTree::build(centers, m, scratch);
    let tree = &tree;
    let (nn_w, rest) = rest.split_at_mut(NN * n);
    let (nn_i, rest) = rest.split_at_mut(NN * n);
    let (pix_f, rest) = rest.split_at_mut(s * s);
    let work_len = worker_len(pre);
    let work = SharedMut::new(&mut rest[..pool.threads() * work_len]);

    // 1. the 3 nearest centers of each point and their normalised weights
    {
        let wp = SharedMut::new(nn_w);
        let ip = SharedMut::new(bytemuck::cast_slice_mut::<f32, u32>(nn_i));
        pool.run(n.div_ceil(POINT_CHUNK), &|task, worker| {
            // SAFETY: per-worker scratch; per-task disjoint point ranges.
            let ws = unsafe { work.slice(worker * work_len, work_len) };
            let (cd, rest) = ws.split_at_mut(NN);
            let (ci, stack) = rest.split_at_mut(NN);
            let ci: &mut [u32] = bytemuck::cast_slice_mut(ci);
            let stack: &mut [u32] = bytemuck::cast_slice_mut(&mut stack[..128]);
            let p0 = task * POINT_CHUNK;
            let p1 = (p0 + POINT_CHUNK).min(n);
            let wv = unsafe { wp.slice(NN * p0, NN * (p1 - p0)) };
            let iv = unsafe { ip.slice(NN * p0, NN * (p1 - p0)) };
            for (j, p) in (p0..p1).enumerate() {
                let q = [points[3 * p], points[3 * p + 1], points[3 * p + 2]];
                knn_search(tree, q, nn, &mut cd[..nn], &mut ci[..nn], stack);
                let mut w = [0f32; NN];
                let mut sum = 0f32;
                for k in 0..nn {
                    let c = ci[k] as usize;
                    let d = sq_dist(q, [centers[3 * c], centers[3 * c + 1], centers[3 * c + 2]]);
                    w[k] = 1.0 / (d + 1e-8);
                    sum += w[k];
                }
                for k in 0..NN {
                    wv[NN * j + k] = if k < nn { w[k] / sum } else { 0.0 };
                    iv[NN * j + k] = if k < nn { ci[k] } else { 0 };
                }
            }
        });
    }
    let nn_w = &*nn_w;
    let nn_i: &[u32] = bytemuck::cast_slice(&*nn_i);

    // 2. pixel → point map
    let pix: &mut [u32] = bytemuck::cast_slice_mut(pix_f);
    pix.fill(u32::MAX);
    for (p, &px) in point_pixels[..n].iter().enumerate() {
        if (px as usize) < s * s {
            pix[px as usize] = p as u32;
        }
    }
    let pix = &*pix;

    // 3. one sparse row per patch, applied to the group features
    let cap = row_cap(pre);
    let pooled = s - 2;
    let outp = SharedMut::new(out);
    pool.run(g, &|gi, worker| {
        // SAFETY: per-worker scratch; task gi owns patch row gi of `out`.
        let ws = unsafe { work.slice(worker * work_len, work_len) };
        let (ew, rest) = ws.split_at_mut(cap);
        let ec: &mut [u32] = bytemuck::cast_slice_mut(&mut rest[..cap]);
        let orow = unsafe { outp.slice(gi * g * f, g * f) };
        let (r0, r1) = adaptive_bin(gi, pooled, g);
        for gj in 0..g {
            let (c0, c1) = adaptive_bin(gj, pooled, g);
            let norm = 1.0 / (9.0 * ((r1 - r0) * (c1 - c0)) as f32);
            let mut len = 0usize;
            for py in r0..r1 + 2 {
                // pool windows y ∈ [r0, r1) with y ≤ py ≤ y + 2
                let cy = (py.min(r1 - 1) + 1).saturating_sub(py.saturating_sub(2).max(r0));
                for px in c0..c1 + 2 {
                    let p = pix[py * s + px];
                    if p == u32::MAX {
                        continue;
                    }
                    let cx = (px.min(c1 - 1) + 1).saturating_sub(px.saturating_sub(2).max(c0));
                    let coef = (cy * cx) as f32 * norm;
                    for k in 0..nn {
                        let c = nn_i[NN * p as usize + k];
                        let wt = coef * nn_w[NN * p as usize + k];
                        // insertion by center keeps the row sorted; equal centers merge
                        let mut q = len;
                        while q > 0 && ec[q - 1] > c {
                            q -= 1;
                        }
                        if q > 0 && ec[q - 1] == c {
                            ew[q - 1] += wt;
                        } else {
                            ec.copy_within(q..len, q + 1);
                            ew.copy_within(q..len, q + 1);
                            ec[q] = c;
                            ew[q] = wt;
                            len += 1;
                        }
                    }
                }
            }
            let dst = &mut orow[gj * f..(gj + 1) * f];
            for e in 0..len {
                let (c, wt) = (ec[e] as usize, ew[e]);
                for (o, &v) in dst.iter_mut().zip(&group_features[c * f..(c + 1) * f]) {
                    *o += wt * v;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    /// Dense f64 reference: interpolate, scatter, pool 3×3, adaptive pool.
    fn dense(
        pre: &PreprocessConfig,
        pts: &[f32],
        pix: &[u32],
        centers: &[f32],
        gf: &[f32],
        f: usize,
    ) -> Vec<f64> {
        let (s, g) = (pre.image_size as usize, pre.xyz_grid as usize);
        let m = centers.len() / 3;
        let n = pts.len() / 3;
        let mut map = vec![0f64; s * s * f];
        for p in 0..n {
            let q = [pts[3 * p], pts[3 * p + 1], pts[3 * p + 2]];
            let mut d: Vec<(f32, usize)> = (0..m)
                .map(|c| {
                    (
                        sq_dist(q, [centers[3 * c], centers[3 * c + 1], centers[3 * c + 2]]),
                        c,
                    )
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let w: Vec<f64> = d[..3].iter().map(|x| 1.0 / (x.0 as f64 + 1e-8)).collect();
            let sum: f64 = w.iter().sum();
            for k in 0..3 {
                for j in 0..f {
                    map[pix[p] as usize * f + j] += w[k] / sum * gf[d[k].1 * f + j] as f64;
                }
            }
        }
        let ps = s - 2;
        let mut pooled = vec![0f64; ps * ps * f];
        for y in 0..ps {
            for x in 0..ps {
                for dy in 0..3 {
                    for dx in 0..3 {
                        for j in 0..f {
                            pooled[(y * ps + x) * f + j] +=
                                map[((y + dy) * s + x + dx) * f + j] / 9.0;
                        }
                    }
                }
            }
        }
        let mut out = vec![0f64; g * g * f];
        for i in 0..g {
            let (r0, r1) = adaptive_bin(i, ps, g);
            for jj in 0..g {
                let (c0, c1) = adaptive_bin(jj, ps, g);
                let area = ((r1 - r0) * (c1 - c0)) as f64;
                for y in r0..r1 {
                    for x in c0..c1 {
                        for j in 0..f {
                            out[(i * g + jj) * f + j] += pooled[(y * ps + x) * f + j] / area;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn sparse_alignment_equals_the_dense_maps() {
        let mut rng = Rng::new(17);
        for (s, g) in [(20u32, 6u32), (24, 5), (16, 14)] {
            let pre = PreprocessConfig {
                image_size: s,
                xyz_grid: g,
                ..PreprocessConfig::default()
            };
            let s = s as usize;
            let mut pts = Vec::new();
            let mut pix = Vec::new();
            for i in 0..s * s {
                if rng.uniform() < 0.6 {
                    pix.push(i as u32);
                    pts.extend([rng.uniform(), rng.uniform(), rng.uniform()]);
                }
            }
            let m = 11;
            let centers: Vec<f32> = (0..3 * m).map(|_| rng.uniform()).collect();
            let f = 5;
            let gf: Vec<f32> = (0..m * f).map(|_| rng.normal()).collect();
            let want = dense(&pre, &pts, &pix, &centers, &gf, f);
            let n = pix.len();
            let mut got = vec![0f32; (g * g) as usize * f];
            for threads in [1, 3] {
                let pool = Pool::new(threads);
                let mut scratch = vec![0f32; pfa_scratch_len(&pre, m, n, threads)];
                let mut o = vec![7f32; got.len()];
                point_feature_align(
                    &pool,
                    &pre,
                    &pts,
                    n,
                    &pix,
                    &centers,
                    &gf,
                    f,
                    &mut o,
                    &mut scratch,
                );
                if threads == 1 {
                    got = o;
                } else {
                    assert_eq!(o, got, "bits depend on the thread count");
                }
            }
            for (a, b) in got.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
