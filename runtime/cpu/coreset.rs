//! Greedy coreset selection (SPEC §6): farthest-first traversal on a sparse random
//! projection of the features — the same rule as FPS (SPEC §3.1), in high dimension.
//!
//! Rule: the first centre is row 0; repeatedly pick the row with the largest squared
//! distance to its nearest chosen centre, ties to the lowest index.
//!
//! - [`greedy_plain`]: the rule written out, kept as the oracle for tests.
//! - [`greedy`] / [`greedy_in_place`]: the same selection, accelerated without changing
//!   it:
//!   1. lanes are rows: the rows are rearranged in tiles of [`TILE`] rows stored
//!      dimension-major, so one vector instruction advances the distances of many rows,
//!      each still summed left to right with every operation rounded on its own, exactly
//!      as [`greedy_plain`] sums it (bit-identical running distances);
//!   2. triangle-inequality pruning: every row remembers its nearest centre `c(i)` and
//!      running distance `r_i²`; a new centre `q` can only come closer than `r_i` if
//!      `‖c(i) − q‖ < 2 r_i`, so rows with `‖c(i) − q‖² ≥ 4 r_i²·(1 + margin)` cannot
//!      move (the margin covers float rounding, so the plain version would not have moved
//!      them either). `‖c(i) − q‖² ≥ r_q²` for every centre (`q` is no closer to any
//!      centre than to its own), so a whole tile whose largest running distance is below
//!      `r_q² / 4` is skipped from one number; in the other tiles the centre-to-centre
//!      distances are computed when a row first needs one (any summation order: they only
//!      feed the bound), and a tile is computed when one of its rows may move;
//!   3. tiles are processed in fixed groups (pool tasks), each keeping its largest
//!      running distance, so the arg-max is a scan over the groups then one tile: ties
//!      still go to the lowest index because both are scanned in order.
//!
//! Projection: Johnson–Lindenstrauss dimension for ε (scikit-learn's
//! `johnson_lindenstrauss_min_dim`: `floor(4 ln n / (ε²/2 − ε³/3))`), sparse Achlioptas/Li
//! matrix with density `1/sqrt(d)`: entries `±sqrt(1/(density·k))` each with probability
//! `density/2`, else 0, drawn from [`Rng`] with a fixed seed. When that dimension is not
//! below `d`, the features are used unprojected (scikit-learn would refuse).

use super::pool::{Pool, SharedMut};
use crate::util::rng::Rng;

/// Rows per tile (lanes of the distance kernel).
pub const TILE: usize = super::lanes::LANES;
/// Tiles per pool task.
const TILES_PER_TASK: usize = 16;
/// Relative safety margin of the pruning test (see the module doc), at least the
/// rounding of a `dim`-term sum with room to spare.
fn prune_margin(dim: usize) -> f32 {
    1e-3f32.max(8.0 * (dim as f32 + 4.0) * f32::EPSILON)
}
/// Bounds below this are never used to skip (rounding there is not relative).
const TINY: f32 = 1e-30;

/// scikit-learn's `johnson_lindenstrauss_min_dim(n, eps)`.
pub fn jl_min_dim(n: usize, eps: f64) -> usize {
    let denom = eps * eps / 2.0 - eps * eps * eps / 3.0;
    (4.0 * (n.max(1) as f64).ln() / denom) as usize
}

/// The dense `k × d` matrix of the sparse random projection (row-major), for
/// [`crate::cpu::gemm::linear`] (`projected = x · Rᵀ`).
pub fn projection_matrix(k: usize, d: usize, seed: u64) -> Vec<f32> {
    let density = 1.0 / (d as f64).sqrt();
    let v = (1.0 / (density * k as f64)).sqrt() as f32;
    let mut rng = Rng::new(seed);
    let mut m = vec![0f32; k * d];
    for e in m.iter_mut() {
        let u = rng.uniform_f64();
        if u < density / 2.0 {
            *e = -v;
        } else if u < density {
            *e = v;
        }
    }
    m
}

#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Squared distance summed in [`TILE`]/4 interleaved partial sums (vectorisable; for
/// bounds only: its rounding differs from [`sq_dist`]'s but is as small).
fn sq_dist_any_order(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { sq_dist_any_order_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { sq_dist_any_order_avx2(a, b) };
        }
    }
    sq_dist_any_order_generic(a, b)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sq_dist_any_order_avx512(a: &[f32], b: &[f32]) -> f32 {
    sq_dist_any_order_generic(a, b)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sq_dist_any_order_avx2(a: &[f32], b: &[f32]) -> f32 {
    sq_dist_any_order_generic(a, b)
}

#[inline(always)]
fn sq_dist_any_order_generic(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = TILE / 4;
    let mut acc = [0f32; W];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail = sq_dist(ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            let d = u - v;
            *s += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Farthest-first selection of `m` rows of `x` (`n × dim`), written out plainly.
pub fn greedy_plain(x: &[f32], dim: usize, m: usize) -> Vec<u32> {
    let n = x.len() / dim;
    let m = m.min(n);
    let mut out = Vec::with_capacity(m);
    if m == 0 {
        return out;
    }
    let mut min_d = vec![f32::INFINITY; n];
    let mut cur = 0usize;
    for _ in 0..m {
        out.push(cur as u32);
        let c = &x[cur * dim..(cur + 1) * dim];
        let mut best = (f32::NEG_INFINITY, 0usize);
        for i in 0..n {
            let d = sq_dist(&x[i * dim..(i + 1) * dim], c);
            if d < min_d[i] {
                min_d[i] = d;
            }
            if min_d[i] > best.0 {
                best = (min_d[i], i);
            }
        }
        cur = best.1;
    }
    out
}

/// The same selection as [`greedy_plain`], accelerated (see the module doc). Indices
/// are identical for any input; the work is split over `pool` in fixed blocks.
pub fn greedy(pool: &Pool, x: &[f32], dim: usize, m: usize) -> Vec<u32> {
    let n = x.len().checked_div(dim).unwrap_or(0);
    let mut tiles = vec![0f32; tiled_len(n, dim)];
    tiles[..n * dim].copy_from_slice(&x[..n * dim]);
    greedy_in_place(pool, &mut tiles, n, dim, m)
}

/// Floats a buffer needs for [`greedy_in_place`]: `n` rows rounded up to whole tiles.
pub fn tiled_len(n: usize, dim: usize) -> usize {
    n.div_ceil(TILE) * TILE * dim
}

/// [`greedy`] on rows held in `x` (`n × dim` row-major at the start, `x.len() ≥`
/// [`tiled_len`]`(n, dim)`), which it rearranges into tiles (module doc) instead of
/// copying: the fit's projected rows are too many for a second copy.
pub fn greedy_in_place(pool: &Pool, x: &mut [f32], n: usize, dim: usize, m: usize) -> Vec<u32> {
    let m = m.min(n);
    if m == 0 {
        return Vec::new();
    }
    let x = &mut x[..tiled_len(n, dim)];
    to_tiles(pool, x, n, dim);
    Selection::new(pool, x, n, dim, m).run()
}

/// Rearranges each tile of `TILE` rows from row-major to dimension-major (lane fastest).
fn to_tiles(pool: &Pool, x: &mut [f32], n: usize, dim: usize) {
    let tile_len = TILE * dim;
    let tiles = n.div_ceil(TILE);
    let xp = SharedMut::new(x);
    pool.run(tiles.div_ceil(TILES_PER_TASK), &|task, _| {
        let mut rows = vec![0f32; tile_len];
        let t0 = task * TILES_PER_TASK;
        for t in t0..(t0 + TILES_PER_TASK).min(tiles) {
            // SAFETY: each task owns its tiles.
            let tile = unsafe { xp.slice(t * tile_len, tile_len) };
            let valid = TILE.min(n - t * TILE);
            rows[..valid * dim].copy_from_slice(&tile[..valid * dim]);
            super::lanes::to_tile(&rows[..valid * dim], dim, tile);
        }
    });
}

/// Row `r` of the tiled rows, gathered into `out`.
fn gather_row(x: &[f32], dim: usize, r: usize, out: &mut [f32]) {
    let tile = &x[(r / TILE) * TILE * dim..(r / TILE + 1) * TILE * dim];
    for (j, o) in out.iter_mut().enumerate() {
        *o = tile[j * TILE + r % TILE];
    }
}

/// True when no row with running distance `md` can move to the new centre: `bound` is a
/// lower bound of the squared distance from the row's nearest centre to the new one,
/// with the same rounding as the computed distances (the new centre's own running
/// distance, or the computed centre-to-centre distance). Rows at distance 0 can never
/// move; tiny bounds (where rounding is not relative) and rows without a centre are
/// never skipped. `scale` is `4 (1 + margin)`.
#[inline]
fn cannot_move(bound: f32, md: f32, scale: f32) -> bool {
    md == 0.0 || (md < f32::INFINITY && bound >= TINY && bound >= scale * md)
}

/// The state of one selection: running distances and nearest centres per row, the
/// largest running distance per tile, the chosen centres' rows.
struct Selection<'a> {
    pool: &'a Pool,
    x: &'a [f32],
    n: usize,
    dim: usize,
    m: usize,
    /// `4 (1 + margin)` of the pruning test.
    scale: f32,
    min_d: Vec<f32>,
    owner: Vec<u32>,
    tile_max: Vec<f32>,
    /// Per task: the largest running distance and the first tile holding it.
    task_best: Vec<(f32, usize)>,
    /// Chosen rows, `m × dim`, in selection order.
    centres: Vec<f32>,
    /// Per worker: centre-to-centre distances to the current centre, valid where the
    /// stamp equals the step + 1 (computed when a row first needs one).
    cc: Vec<Vec<(u32, f32)>>,
}

impl<'a> Selection<'a> {
    fn new(pool: &'a Pool, x: &'a [f32], n: usize, dim: usize, m: usize) -> Self {
        let tiles = n.div_ceil(TILE);
        let mut min_d = vec![f32::INFINITY; tiles * TILE];
        // Padding lanes: never chosen, never updated.
        min_d[n..].fill(f32::NEG_INFINITY);
        Selection {
            pool,
            x,
            n,
            dim,
            m,
            scale: 4.0 * (1.0 + prune_margin(dim)),
            min_d,
            owner: vec![u32::MAX; tiles * TILE],
            tile_max: vec![f32::INFINITY; tiles],
            task_best: vec![(f32::NEG_INFINITY, 0); tiles.div_ceil(TILES_PER_TASK)],
            centres: vec![0f32; m * dim],
            cc: (0..pool.threads()).map(|_| vec![(0u32, 0f32); m]).collect(),
        }
    }

    fn run(mut self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.m);
        let mut cur = 0usize;
        for step in 0..self.m {
            out.push(cur as u32);
            let dim = self.dim;
            gather_row(
                self.x,
                dim,
                cur,
                &mut self.centres[step * dim..(step + 1) * dim],
            );
            let bound = self.min_d[cur];
            self.update(step, bound);
            cur = self.farthest();
        }
        out
    }

    /// Moves to centre `step` every row that comes closer to it.
    fn update(&mut self, step: usize, bound: f32) {
        let (n, dim, x, scale) = (self.n, self.dim, self.x, self.scale);
        let tiles = self.tile_max.len();
        let centres = &self.centres[..(step + 1) * dim];
        let c = &centres[step * dim..];
        let stamp = step as u32 + 1;
        let (mp, op, tp, bp, cp) = (
            SharedMut::new(&mut self.min_d),
            SharedMut::new(&mut self.owner),
            SharedMut::new(&mut self.tile_max),
            SharedMut::new(&mut self.task_best),
            SharedMut::new(&mut self.cc),
        );
        self.pool.run(self.task_best.len(), &|task, worker| {
            let t0 = task * TILES_PER_TASK;
            let t1 = (t0 + TILES_PER_TASK).min(tiles);
            // SAFETY: each task owns tiles t0..t1 (their rows and maxima) and its best
            // slot; each worker owns its centre-to-centre cache.
            let md_all = unsafe { mp.slice(t0 * TILE, (t1 - t0) * TILE) };
            let ow_all = unsafe { op.slice(t0 * TILE, (t1 - t0) * TILE) };
            let tmax = unsafe { tp.slice(t0, t1 - t0) };
            let best_slot = unsafe { &mut bp.slice(task, 1)[0] };
            let cc = unsafe { &mut cp.slice(worker, 1)[0] };
            let mut best = (f32::NEG_INFINITY, 0usize);
            for t in t0..t1 {
                let i = t - t0;
                let md = &mut md_all[i * TILE..(i + 1) * TILE];
                let ow = &mut ow_all[i * TILE..(i + 1) * TILE];
                if !cannot_move(bound, tmax[i], scale) {
                    let valid = TILE.min(n - t * TILE);
                    let needed = (0..valid).any(|l| {
                        if cannot_move(bound, md[l], scale) {
                            return false;
                        }
                        let o = ow[l];
                        if o == u32::MAX {
                            return true;
                        }
                        let e = &mut cc[o as usize];
                        if e.0 != stamp {
                            let oc = &centres[o as usize * dim..(o as usize + 1) * dim];
                            *e = (stamp, sq_dist_any_order(oc, c));
                        }
                        !cannot_move(e.1, md[l], scale)
                    });
                    if needed {
                        let tile = &x[t * TILE * dim..(t + 1) * TILE * dim];
                        let mut d = [[0f32; TILE]];
                        super::lanes::sq_dists(tile, c, dim, &mut d);
                        let d = &d[0];
                        let mut mx = f32::NEG_INFINITY;
                        for l in 0..TILE {
                            if d[l] < md[l] {
                                md[l] = d[l];
                                ow[l] = step as u32;
                            }
                            mx = mx.max(md[l]);
                        }
                        tmax[i] = mx;
                    }
                }
                if tmax[i] > best.0 {
                    best = (tmax[i], t);
                }
            }
            *best_slot = best;
        });
    }

    /// The row with the largest running distance, ties to the lowest index.
    fn farthest(&self) -> usize {
        let mut best = (f32::NEG_INFINITY, 0usize);
        for &b in &self.task_best {
            if b.0 > best.0 {
                best = b;
            }
        }
        let t = best.1;
        let md = &self.min_d[t * TILE..(t + 1) * TILE];
        t * TILE + md.iter().position(|&v| v == best.0).unwrap_or(0)
    }
}

/// Coreset of `m` rows of `x` (`n × d`): projects to the JL dimension for `eps` (when
/// smaller than `d`) with the seeded sparse matrix, then [`greedy`]. Returns row indices
/// in selection order. `project` does the projection (`x · Rᵀ`), so the caller chooses
/// where the projected copy lives; [`project_rows`] is the in-memory default.
pub fn coreset(pool: &Pool, x: &[f32], d: usize, m: usize, eps: f64, seed: u64) -> Vec<u32> {
    let n = x.len() / d;
    let k = jl_min_dim(n, eps);
    if k == 0 || k >= d {
        return greedy(pool, x, d, m);
    }
    let r = projection_matrix(k, d, seed);
    let mut p = vec![0f32; tiled_len(n, k)];
    project_rows(pool, x, d, &r, k, &mut p[..n * k]);
    greedy_in_place(pool, &mut p, n, k, m)
}

/// `out (n × k) = x (n × d) · Rᵀ` with `R` from [`projection_matrix`].
pub fn project_rows(pool: &Pool, x: &[f32], d: usize, r: &[f32], k: usize, out: &mut [f32]) {
    let n = x.len() / d;
    super::gemm::linear(
        pool,
        super::gemm::Mat::new(x, n, d),
        super::gemm::Mat::new(r, k, d),
        None,
        out,
        k,
        super::gemm::Epilogue::None,
    );
}
