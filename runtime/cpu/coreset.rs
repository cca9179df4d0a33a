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
//!   3. a coherent row order: after 16 centres, then after 4× as many each time, the
//!      rows are stored grouped by nearest centre, the centres in a depth-first order of
//!      the tree that hangs each centre under its nearest earlier one (moved one
//!      dimension at a time through a column of scratch, no second copy of the rows). A
//!      tile then holds the rows of few centres, and neighbouring tiles lie close
//!      together: a summary per tile (each centre's largest running
//!      distance there, up to [`SUMMARY_OWNERS`] centres) skips the whole tile with one
//!      test per centre before any row is looked at, the tile's principal ball (item 5)
//!      is small, and the rows that may move gather in fewer tiles. The running
//!      distances do not depend on where a row is stored;
//!   4. tiles are processed in fixed groups (pool tasks), each keeping its largest
//!      running distance and the lowest original index holding it, so the arg-max is a
//!      scan over the groups then one tile, ties to the lowest original index whatever
//!      the order.
//!   5. a principal-coordinate bound ([`Principal`]): each row also keeps its
//!      coordinates on the leading principal directions of the rows (k =
//!      [`PROJ_DIMS`], the basis of [`super::bank_proj`]) in a small tile of its own;
//!      a row that the centre-to-centre test leaves is computed only if the distance of
//!      those coordinates to the centre's, lowered by every rounding involved, is below
//!      its running distance. Feature rows are far from isotropic (a few directions hold
//!      most of their spread), so this drops most of the rows the triangle inequality
//!      cannot, from k values per row instead of `dim`. A ball per tile, and one per
//!      pool task around its tiles' balls, skip a whole tile or task from k values.
//!
//! Projection: Johnson–Lindenstrauss dimension for ε (scikit-learn's
//! `johnson_lindenstrauss_min_dim`: `floor(4 ln n / (ε²/2 − ε³/3))`), sparse Achlioptas/Li
//! matrix with density `1/sqrt(d)`: entries `±sqrt(1/(density·k))` each with probability
//! `density/2`, else 0, drawn from [`Rng`] with a fixed seed. When that dimension is not
//! below `d`, the features are used unprojected (scikit-learn would refuse).

use super::bank_proj::{f32_up, Projection, BASIS_DELTA, PROJ_DIMS};
use super::lanes;
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
    select_in_place(pool, x, n, dim, m, &mut |_, _| {})
}

/// [`greedy_in_place`] with `progress(centres chosen, m)` every 256 centres and at the end.
pub fn select_in_place(
    pool: &Pool,
    x: &mut [f32],
    n: usize,
    dim: usize,
    m: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<u32> {
    let m = m.min(n);
    if m == 0 {
        return Vec::new();
    }
    let x = &mut x[..tiled_len(n, dim)];
    let principal = Principal::build(pool, &x[..n * dim], n, dim);
    to_tiles(pool, x, n, dim);
    Selection::new(pool, x, n, dim, m, principal).run(progress)
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

/// f32's unit roundoff.
const U: f64 = 1.0 / 16777216.0;
/// Rows the principal directions are estimated from (any basis is valid; a good one
/// prunes more).
const PRINCIPAL_SAMPLE: usize = 2048;
/// Values per row in a principal tile: the k coordinates, then the row's error bound.
const PRINCIPAL_LEN: usize = PROJ_DIMS + 1;

/// The principal-coordinate bound (module doc, item 5). For V̂ the f32 basis (k rows,
/// ‖V̂V̂ᵀ − I‖₂ ≤ δ = [`BASIS_DELTA`], so σ_max(V̂)² ≤ 1 + δ) and μ̂ its mean, each row x
/// stores p̂ = V̂(x − μ̂) evaluated in f64 and rounded to f32, and e ≥ ‖p̂ − V̂(x − μ̂)‖.
/// For a row x and a centre q (both rows): V̂(x − q) = p − p_q, so
/// ‖x − q‖ ≥ ‖V̂(x − q)‖ / √(1 + δ) ≥ (‖p̂ − p̂_q‖ − e − e_q) / √(1 + δ), and
/// ‖p̂ − p̂_q‖² ≥ s / (1 + u)^(k+2) for s an f32 sum of the k rounded squared
/// differences in any order (non-negative terms). The computed distance of [`greedy_plain`]
/// (`dim` non-negative terms, each a rounded difference squared and rounded, summed in
/// order) is at least ‖x − q‖²(1 − u)^(dim+2), less `dim` times the smallest subnormal
/// for terms that underflow. When that lower bound reaches the row's running distance,
/// the row cannot come closer. NaN or infinite values give no bound.
struct Principal {
    /// Per tile, [`PRINCIPAL_LEN`] × [`TILE`] values dimension-major (lane fastest), in
    /// the rows' current order.
    tiles: Vec<f32>,
    /// Per tile, a ball holding its rows' coordinates: the centre (k values), then a
    /// radius `R ≥ ‖p̂ − centre‖ + e` for each of its rows (the same bound then holds for
    /// the whole tile with `e = R` and the centre for p̂).
    balls: Vec<f32>,
    /// Per pool task (its [`TILES_PER_TASK`] tiles), a ball holding its tiles' balls.
    group_balls: Vec<f32>,
    /// `(1 + u)^-((k+2)/2)`, `(1 − u)^(dim+2) / (1 + δ)` less f64 slack, `dim · 2⁻¹⁴⁹`.
    sum_scale: f64,
    dist_scale: f64,
    underflow: f64,
}

impl Principal {
    /// The basis from a sample of `x` (`n × dim`, row-major) and every row's coordinates.
    /// `None` when the rows are too narrow for a residual ([`super::bank_proj::applies`])
    /// or the basis is not orthonormal enough.
    fn build(pool: &Pool, x: &[f32], n: usize, dim: usize) -> Option<Principal> {
        let k = PROJ_DIMS;
        let sample_rows = n.min(PRINCIPAL_SAMPLE);
        if sample_rows == 0 {
            return None;
        }
        let sample: Vec<f32> = (0..sample_rows)
            .flat_map(|t| {
                let r = t * n / sample_rows;
                x[r * dim..(r + 1) * dim].iter().copied()
            })
            .collect();
        let order: Vec<u32> = (0..sample_rows as u32).collect();
        let norms = vec![0f32; sample_rows];
        let basis = Projection::build(pool, &sample, &norms, dim, &order)?.basis;
        let tiles_n = n.div_ceil(TILE);
        let mut tiles = vec![0f32; tiles_n * PRINCIPAL_LEN * TILE];
        let tp = SharedMut::new(&mut tiles);
        pool.run(tiles_n.div_ceil(TILES_PER_TASK), &|task, _| {
            let t0 = task * TILES_PER_TASK;
            let t1 = (t0 + TILES_PER_TASK).min(tiles_n);
            let len = PRINCIPAL_LEN * TILE;
            // SAFETY: each task writes its own tiles.
            let out = unsafe { tp.slice(t0 * len, (t1 - t0) * len) };
            for r in t0 * TILE..(t1 * TILE).min(n) {
                let tile = &mut out[(r / TILE - t0) * len..(r / TILE - t0 + 1) * len];
                let mut p = [0f32; PRINCIPAL_LEN];
                principal_coordinates(&basis, &x[r * dim..(r + 1) * dim], &mut p);
                for (j, &v) in p.iter().enumerate() {
                    tile[j * TILE + r % TILE] = v;
                }
            }
        });
        let u_dim = (1.0 - U).powi(dim as i32 + 2);
        let mut principal = Principal {
            tiles,
            balls: vec![0f32; tiles_n * PRINCIPAL_LEN],
            group_balls: vec![0f32; tiles_n.div_ceil(TILES_PER_TASK) * PRINCIPAL_LEN],
            sum_scale: (1.0 + U).powf(-(k as f64 + 2.0) / 2.0),
            dist_scale: u_dim / (1.0 + BASIS_DELTA) * (1.0 - 1e-12),
            underflow: dim as f64 * 2f64.powi(-149),
        };
        principal.refresh_balls(pool, n);
        Some(principal)
    }

    /// Recomputes every tile's ball from its rows (after they were moved).
    fn refresh_balls(&mut self, pool: &Pool, n: usize) {
        let k = PROJ_DIMS;
        let tiles_n = self.balls.len() / PRINCIPAL_LEN;
        let tiles = &self.tiles;
        let bp = SharedMut::new(&mut self.balls);
        pool.run(tiles_n.div_ceil(TILES_PER_TASK), &|task, _| {
            let t0 = task * TILES_PER_TASK;
            let t1 = (t0 + TILES_PER_TASK).min(tiles_n);
            // SAFETY: each task writes its own tiles' balls.
            let balls = unsafe { bp.slice(t0 * PRINCIPAL_LEN, (t1 - t0) * PRINCIPAL_LEN) };
            for (t, ball) in (t0..t1).zip(balls.chunks_exact_mut(PRINCIPAL_LEN)) {
                let tile = &tiles[t * PRINCIPAL_LEN * TILE..(t + 1) * PRINCIPAL_LEN * TILE];
                let valid = TILE.min(n - t * TILE);
                let coord = |j: usize, l: usize| tile[j * TILE + l] as f64;
                for (j, b) in ball[..k].iter_mut().enumerate() {
                    *b = ((0..valid).map(|l| coord(j, l)).sum::<f64>() / valid as f64) as f32;
                }
                let mut radius = 0f64;
                for l in 0..valid {
                    let d2: f64 = (0..k).map(|j| (coord(j, l) - ball[j] as f64).powi(2)).sum();
                    // NaN never lowers the maximum: an infinite radius bounds nothing.
                    let r = d2.sqrt() + coord(k, l);
                    radius = if r.is_nan() {
                        f64::INFINITY
                    } else {
                        radius.max(r)
                    };
                }
                ball[k] = f32_up(radius * (1.0 + 1e-12));
            }
        });
        // A group's ball: ‖p̂ − g‖ + e ≤ ‖p̂ − c‖ + e + ‖c − g‖ ≤ R + ‖c − g‖ for a row in
        // a tile of centre c and radius R.
        for (group, g) in self.group_balls.chunks_exact_mut(PRINCIPAL_LEN).enumerate() {
            let tiles = group * TILES_PER_TASK..((group + 1) * TILES_PER_TASK).min(tiles_n);
            let ball = |t: usize| &self.balls[t * PRINCIPAL_LEN..(t + 1) * PRINCIPAL_LEN];
            for (j, v) in g[..k].iter_mut().enumerate() {
                let sum: f64 = tiles.clone().map(|t| ball(t)[j] as f64).sum();
                *v = (sum / tiles.len() as f64) as f32;
            }
            let mut radius = 0f64;
            for t in tiles {
                let b = ball(t);
                let d2: f64 = (0..k).map(|j| (b[j] as f64 - g[j] as f64).powi(2)).sum();
                let r = d2.sqrt() + b[k] as f64;
                radius = if r.is_nan() {
                    f64::INFINITY
                } else {
                    radius.max(r)
                };
            }
            g[k] = f32_up(radius * (1.0 + 1e-12));
        }
    }

    /// True when no row of pool task `group`'s tiles can come closer to the centre
    /// (coordinates `q`) than their largest running distance `group_max`.
    fn group_cannot_move(&self, group: usize, q: &[f32; PRINCIPAL_LEN], group_max: f32) -> bool {
        let ball = &self.group_balls[group * PRINCIPAL_LEN..(group + 1) * PRINCIPAL_LEN];
        let s = sq_dist_any_order(&ball[..PROJ_DIMS], &q[..PROJ_DIMS]);
        self.cannot_move(s, ball[PROJ_DIMS], q[PROJ_DIMS], group_max)
    }

    /// True when no row of tile `t` can come closer to the centre (coordinates `q`) than
    /// the tile's largest running distance `tile_max`.
    fn tile_cannot_move(&self, t: usize, q: &[f32; PRINCIPAL_LEN], tile_max: f32) -> bool {
        let ball = &self.balls[t * PRINCIPAL_LEN..(t + 1) * PRINCIPAL_LEN];
        let s = sq_dist_any_order(&ball[..PROJ_DIMS], &q[..PROJ_DIMS]);
        self.cannot_move(s, ball[PROJ_DIMS], q[PROJ_DIMS], tile_max)
    }

    /// Clears `may_move` for the rows of tile `t` that cannot come closer to the centre
    /// (coordinates `q`) than their running distances `md`; whether any row is left.
    fn drop_rows(
        &self,
        t: usize,
        q: &[f32; PRINCIPAL_LEN],
        md: &[f32],
        may_move: &mut [bool; TILE],
    ) -> bool {
        let len = PRINCIPAL_LEN * TILE;
        let tile = &self.tiles[t * len..(t + 1) * len];
        let mut sums = [[0f32; TILE]];
        super::lanes::sq_dists(tile, &q[..PROJ_DIMS], PROJ_DIMS, &mut sums);
        let errors = &tile[PROJ_DIMS * TILE..];
        let mut any = false;
        for (l, m) in may_move.iter_mut().enumerate() {
            *m = *m && !self.cannot_move(sums[0][l], errors[l], q[PROJ_DIMS], md[l]);
            any |= *m;
        }
        any
    }

    /// The k coordinates and error bound of row `r` (tiled order) into `out`.
    fn gather(&self, r: usize, out: &mut [f32; PRINCIPAL_LEN]) {
        gather_row(&self.tiles, PRINCIPAL_LEN, r, out);
    }

    /// True when a row whose principal sum to the centre is `s` (error bounds `e` for the
    /// row, `e_q` for the centre) cannot come closer than its running distance `md`.
    #[inline]
    fn cannot_move(&self, s: f32, e: f32, e_q: f32, md: f32) -> bool {
        let t = (s as f64).sqrt() * self.sum_scale - e as f64 - e_q as f64;
        // NaN comparisons are false: no bound.
        t > 0.0 && t * t * self.dist_scale - self.underflow >= md as f64
    }
}

/// p̂ = V̂(x − μ̂) (f64, rounded to f32) and its error bound `e` into `out[..k]`, `out[k]`
/// (see [`Principal`]): f32 rounding of each coordinate, u‖p‖, plus the f64 sums' error,
/// √k (dim + 2) 2⁻⁵² ‖x − μ̂‖ (the differences and products of f32 values are exact or
/// rounded once in f64), rounded up with room to spare.
fn principal_coordinates(basis: &[f32], x: &[f32], out: &mut [f32; PRINCIPAL_LEN]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { principal_coordinates_avx512(basis, x, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { principal_coordinates_avx2(basis, x, out) };
        }
    }
    principal_coordinates_generic(basis, x, out)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn principal_coordinates_avx512(basis: &[f32], x: &[f32], out: &mut [f32; PRINCIPAL_LEN]) {
    principal_coordinates_generic(basis, x, out)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn principal_coordinates_avx2(basis: &[f32], x: &[f32], out: &mut [f32; PRINCIPAL_LEN]) {
    principal_coordinates_generic(basis, x, out)
}

#[inline(always)]
fn principal_coordinates_generic(basis: &[f32], x: &[f32], out: &mut [f32; PRINCIPAL_LEN]) {
    let k = PROJ_DIMS;
    let mut acc = [0f64; PROJ_DIMS];
    let mut y_sq = 0f64;
    for (coef, &v) in basis.chunks_exact(1 + k).zip(x) {
        let y = v as f64 - coef[0] as f64;
        y_sq += y * y;
        for (a, &c) in acc.iter_mut().zip(&coef[1..]) {
            *a += y * c as f64;
        }
    }
    let mut p_sq = 0f64;
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = a as f32;
        p_sq += a * a;
    }
    let dim = x.len() as f64;
    let sums = (k as f64).sqrt() * (dim + 2.0) * 2f64.powi(-52) * y_sq.sqrt();
    // Each coordinate's f32 rounding is below u|p_i| + 2⁻¹⁵⁰ (subnormals).
    let rounding = U * p_sq.sqrt() + k as f64 * 2f64.powi(-149);
    out[k] = f32_up((rounding + sums) * (1.0 + 1e-6));
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

/// Distinct nearest centres a [`TileOwners`] summary holds.
const SUMMARY_OWNERS: usize = 16;

/// A tile's rows grouped by nearest centre: per centre the largest running distance of
/// its rows there, so that one pruning test per centre covers the whole tile. `len` past
/// [`SUMMARY_OWNERS`]: not summarised (more centres, a row without one, a NaN distance);
/// the rows are then tested one by one.
#[derive(Clone, Copy)]
struct TileOwners {
    owner: [u32; SUMMARY_OWNERS],
    reach: [f32; SUMMARY_OWNERS],
    len: usize,
}

impl TileOwners {
    const UNKNOWN: TileOwners = TileOwners {
        owner: [0; SUMMARY_OWNERS],
        reach: [0.0; SUMMARY_OWNERS],
        len: SUMMARY_OWNERS + 1,
    };

    /// The summary of a tile's rows (running distances `md`, nearest centres `ow`).
    fn of(md: &[f32], ow: &[u32]) -> Self {
        let mut s = TileOwners {
            len: 0,
            ..Self::UNKNOWN
        };
        for (&d, &o) in md.iter().zip(ow) {
            if o == u32::MAX || d.is_nan() {
                return Self::UNKNOWN;
            }
            match s.owner[..s.len].iter().position(|&v| v == o) {
                Some(k) => s.reach[k] = s.reach[k].max(d),
                None if s.len < SUMMARY_OWNERS => {
                    s.owner[s.len] = o;
                    s.reach[s.len] = d;
                    s.len += 1;
                }
                None => return Self::UNKNOWN,
            }
        }
        s
    }
}

/// The selection re-orders its rows by nearest centre when this many centres are
/// chosen, then at every factor of [`REORDER_GROWTH`] (module doc).
const REORDER_FIRST: usize = 16;
const REORDER_GROWTH: usize = 4;

/// The largest running distance of a group of tiles (or of one tile), the lowest
/// original row holding it and the tile: the arg-max with ties to the lowest index
/// whatever order the rows are stored in.
#[derive(Clone, Copy, Debug)]
struct Farthest {
    dist: f32,
    row: u32,
    tile: usize,
}

impl Farthest {
    const NONE: Farthest = Farthest {
        dist: f32::NEG_INFINITY,
        row: u32::MAX,
        tile: 0,
    };

    /// Takes `other` when it is farther, or as far and at a lower original row. A NaN
    /// distance never wins (as `>` in [`greedy_plain`]).
    fn merge(&mut self, other: Farthest) {
        if other.dist > self.dist
            || (other.dist == self.dist && other.dist > f32::NEG_INFINITY && other.row < self.row)
        {
            *self = other;
        }
    }

    /// Tile `tile` (running distances `md`, original rows `orig`, largest distance
    /// `dist`): the lowest original row at that distance.
    fn of_tile(md: &[f32], orig: &[u32], dist: f32, tile: usize) -> Farthest {
        let row = md
            .iter()
            .zip(orig)
            .filter(|(&d, _)| d == dist)
            .map(|(_, &o)| o)
            .min()
            .unwrap_or(u32::MAX);
        Farthest { dist, row, tile }
    }
}

/// The state of one selection: running distances and nearest centres per row, the
/// largest running distance per tile, the chosen centres' rows.
struct Selection<'a> {
    pool: &'a Pool,
    /// The rows in tiles, in the current order ([`Selection::reorder`]).
    x: &'a mut [f32],
    n: usize,
    dim: usize,
    m: usize,
    /// `4 (1 + margin)` of the pruning test.
    scale: f32,
    min_d: Vec<f32>,
    owner: Vec<u32>,
    /// The original index of the row stored at each position (`u32::MAX`: padding).
    orig: Vec<u32>,
    tile_max: Vec<f32>,
    owners: Vec<TileOwners>,
    /// Per task: the farthest row of its tiles.
    task_best: Vec<Farthest>,
    /// Chosen rows, `m × dim`, in selection order.
    centres: Vec<f32>,
    /// Per worker: centre-to-centre distances to the current centre, valid where the
    /// stamp equals the step + 1 (computed when a row first needs one).
    cc: Vec<Vec<(u32, f32)>>,
    /// The principal-coordinate bound, where the rows allow one, and the current
    /// centre's coordinates.
    principal: Option<Principal>,
    centre_principal: [f32; PRINCIPAL_LEN],
    /// Per chosen centre, the centre nearest to it when it was chosen (`u32::MAX`: none).
    parent: Vec<u32>,
}

impl<'a> Selection<'a> {
    fn new(
        pool: &'a Pool,
        x: &'a mut [f32],
        n: usize,
        dim: usize,
        m: usize,
        principal: Option<Principal>,
    ) -> Self {
        let tiles = n.div_ceil(TILE);
        let mut min_d = vec![f32::INFINITY; tiles * TILE];
        // Padding lanes: never chosen, never updated.
        min_d[n..].fill(f32::NEG_INFINITY);
        let mut orig: Vec<u32> = (0..(tiles * TILE) as u32).collect();
        orig[n..].fill(u32::MAX);
        Selection {
            pool,
            x,
            n,
            dim,
            m,
            scale: 4.0 * (1.0 + prune_margin(dim)),
            min_d,
            owner: vec![u32::MAX; tiles * TILE],
            orig,
            tile_max: vec![f32::INFINITY; tiles],
            owners: vec![TileOwners::UNKNOWN; tiles],
            task_best: vec![Farthest::NONE; tiles.div_ceil(TILES_PER_TASK)],
            centres: vec![0f32; m * dim],
            cc: (0..pool.threads()).map(|_| vec![(0u32, 0f32); m]).collect(),
            principal,
            centre_principal: [0f32; PRINCIPAL_LEN],
            parent: Vec::with_capacity(m),
        }
    }

    fn run(mut self, progress: &mut dyn FnMut(usize, usize)) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.m);
        let mut reorder_at = REORDER_FIRST;
        let mut cur = 0usize;
        for step in 0..self.m {
            out.push(self.orig[cur]);
            self.parent.push(self.owner[cur]);
            let dim = self.dim;
            gather_row(
                self.x,
                dim,
                cur,
                &mut self.centres[step * dim..(step + 1) * dim],
            );
            if let Some(p) = &self.principal {
                p.gather(cur, &mut self.centre_principal);
            }
            let bound = self.min_d[cur];
            self.update(step, bound);
            if step + 1 == reorder_at && step + 1 < self.m {
                self.reorder();
                reorder_at *= REORDER_GROWTH;
            }
            cur = self.farthest();
            if (step + 1) % 256 == 0 || step + 1 == self.m {
                progress(step + 1, self.m);
            }
        }
        out
    }

    /// Moves to centre `step` every row that comes closer to it.
    fn update(&mut self, step: usize, bound: f32) {
        let (n, dim, scale) = (self.n, self.dim, self.scale);
        let x: &[f32] = self.x;
        let orig = &self.orig;
        let tiles = self.tile_max.len();
        let centres = &self.centres[..(step + 1) * dim];
        let c = &centres[step * dim..];
        let stamp = step as u32 + 1;
        let principal = self.principal.as_ref();
        let centre_principal = &self.centre_principal;
        let (mp, op, tp, sp, bp, cp) = (
            SharedMut::new(&mut self.min_d),
            SharedMut::new(&mut self.owner),
            SharedMut::new(&mut self.tile_max),
            SharedMut::new(&mut self.owners),
            SharedMut::new(&mut self.task_best),
            SharedMut::new(&mut self.cc),
        );
        self.pool.run(self.task_best.len(), &|task, worker| {
            let t0 = task * TILES_PER_TASK;
            let t1 = (t0 + TILES_PER_TASK).min(tiles);
            // SAFETY: each task owns tiles t0..t1 (their rows, maxima and summaries) and
            // its best slot; each worker owns its centre-to-centre cache.
            let md_all = unsafe { mp.slice(t0 * TILE, (t1 - t0) * TILE) };
            let ow_all = unsafe { op.slice(t0 * TILE, (t1 - t0) * TILE) };
            let tmax = unsafe { tp.slice(t0, t1 - t0) };
            let summaries = unsafe { sp.slice(t0, t1 - t0) };
            let best_slot = unsafe { &mut bp.slice(task, 1)[0] };
            // The task's farthest row is its tiles' largest running distance (from the
            // first step on): when no row of the group can move, nothing changes and the
            // slot stays.
            let group_max = best_slot.dist;
            if step > 0
                && (cannot_move(bound, group_max, scale)
                    || principal
                        .is_some_and(|p| p.group_cannot_move(task, centre_principal, group_max)))
            {
                return;
            }
            let cc = unsafe { &mut cp.slice(worker, 1)[0] };
            // The distance from centre `o` to the new one (computed once per step).
            let mut to_new = |o: u32| {
                let e = &mut cc[o as usize];
                if e.0 != stamp {
                    let oc = &centres[o as usize * dim..(o as usize + 1) * dim];
                    *e = (stamp, sq_dist_any_order(oc, c));
                }
                e.1
            };
            let mut best = Farthest::NONE;
            for t in t0..t1 {
                let i = t - t0;
                let md = &mut md_all[i * TILE..(i + 1) * TILE];
                let ow = &mut ow_all[i * TILE..(i + 1) * TILE];
                let valid = TILE.min(n - t * TILE);
                let s = summaries[i];
                // One test per centre of the tile's summary (when it has one).
                let mut summary_says_still = || {
                    s.len <= SUMMARY_OWNERS
                        && (0..s.len).all(|k| {
                            cannot_move(bound, s.reach[k], scale)
                                || cannot_move(to_new(s.owner[k]), s.reach[k], scale)
                        })
                };
                let ball_says_still =
                    || principal.is_some_and(|p| p.tile_cannot_move(t, centre_principal, tmax[i]));
                // Per row: its running distance where it may move, -inf where the
                // bounds show it cannot.
                let mut floor = [f32::NEG_INFINITY; TILE];
                let needed = !cannot_move(bound, tmax[i], scale)
                    && !ball_says_still()
                    && !summary_says_still()
                    && {
                        // The cheapest bounds first: the new centre's own distance, the
                        // principal coordinates, then the centre-to-centre distance.
                        let mut may_move = [false; TILE];
                        let mut any = false;
                        for l in 0..valid {
                            may_move[l] = !cannot_move(bound, md[l], scale);
                            any |= may_move[l];
                        }
                        if let (true, Some(p)) = (any, principal) {
                            any = p.drop_rows(t, centre_principal, md, &mut may_move);
                        }
                        if any {
                            any = false;
                            for l in 0..valid {
                                if may_move[l]
                                    && (ow[l] == u32::MAX
                                        || !cannot_move(to_new(ow[l]), md[l], scale))
                                {
                                    floor[l] = md[l];
                                    any = true;
                                }
                            }
                        }
                        any
                    };
                let tile = &x[t * TILE * dim..(t + 1) * TILE * dim];
                // Summed until no row of the tile can still come closer; then nothing
                // changes (no row moves; the tile's maximum and summary stay).
                // A half of the tile with no row that may move is not read.
                let idle = |h: &[f32]| h.iter().all(|&f| f == f32::NEG_INFINITY);
                let (lower, upper) = floor.split_at(TILE / 2);
                let moved = needed
                    .then(|| match (idle(lower), idle(upper)) {
                        (true, false) => {
                            lanes::sq_dists_unless_none_below_half(tile, c, &floor, true)
                        }
                        (false, true) => {
                            lanes::sq_dists_unless_none_below_half(tile, c, &floor, false)
                        }
                        _ => lanes::sq_dists_unless_none_below(tile, c, &floor),
                    })
                    .flatten();
                if let Some(d) = moved {
                    let mut mx = f32::NEG_INFINITY;
                    for l in 0..TILE {
                        if d[l] < md[l] {
                            md[l] = d[l];
                            ow[l] = step as u32;
                        }
                        mx = mx.max(md[l]);
                    }
                    tmax[i] = mx;
                    summaries[i] = TileOwners::of(&md[..valid], &ow[..valid]);
                }
                if tmax[i] >= best.dist && tmax[i] > f32::NEG_INFINITY {
                    let rows = &orig[t * TILE..(t + 1) * TILE];
                    best.merge(Farthest::of_tile(md, rows, tmax[i], t));
                }
            }
            *best_slot = best;
        });
    }

    /// The position of the row with the largest running distance, ties to the lowest
    /// original index; the row at original index 0 when no distance is comparable (as
    /// [`greedy_plain`]).
    fn farthest(&self) -> usize {
        let mut best = Farthest::NONE;
        for &b in &self.task_best {
            best.merge(b);
        }
        let position = |row: u32| self.orig.iter().position(|&o| o == row).unwrap_or(0);
        if best.row == u32::MAX {
            return position(0);
        }
        let t = best.tile;
        let rows = &self.orig[t * TILE..(t + 1) * TILE];
        t * TILE + rows.iter().position(|&o| o == best.row).unwrap_or(0)
    }

    /// Stores the rows grouped by nearest centre (in their current order within a
    /// centre), so that a tile's rows share few centres and one test per centre skips it;
    /// moves the per-row state with them and recomputes the per-tile state.
    fn reorder(&mut self) {
        let (n, dim) = (self.n, self.dim);
        let rank = tree_order(&self.parent);
        let rank_of = |o: u32| rank.get(o as usize).copied().unwrap_or(u32::MAX);
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.sort_by_key(|&p| (rank_of(self.owner[p as usize]), p));
        permute_rows(self.pool, self.x, dim, &perm);
        if let Some(p) = &mut self.principal {
            permute_rows(self.pool, &mut p.tiles, PRINCIPAL_LEN, &perm);
            p.refresh_balls(self.pool, n);
        }
        for v in [&mut self.owner, &mut self.orig] {
            let old = v[..n].to_vec();
            for (dst, &p) in v.iter_mut().zip(&perm) {
                *dst = old[p as usize];
            }
        }
        let old = self.min_d[..n].to_vec();
        for (dst, &p) in self.min_d.iter_mut().zip(&perm) {
            *dst = old[p as usize];
        }
        let mut best = vec![Farthest::NONE; self.task_best.len()];
        for t in 0..self.tile_max.len() {
            let lanes = t * TILE..(t + 1) * TILE;
            let valid = t * TILE..((t + 1) * TILE).min(n);
            let md = &self.min_d[lanes.clone()];
            let mx = md.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            self.tile_max[t] = mx;
            self.owners[t] = TileOwners::of(&self.min_d[valid.clone()], &self.owner[valid]);
            if mx > f32::NEG_INFINITY {
                let f = Farthest::of_tile(md, &self.orig[lanes], mx, t);
                best[t / TILES_PER_TASK].merge(f);
            }
        }
        self.task_best = best;
    }
}

/// The rank of each centre in a depth-first walk of the tree in which each centre hangs
/// under `parent[c]` (the centre nearest to it when it was chosen; `u32::MAX` or any
/// later index: a root), children in index order: centres near each other get near
/// ranks, so rows stored in this order of their centres make tiles, and runs of tiles,
/// that lie close together.
fn tree_order(parent: &[u32]) -> Vec<u32> {
    let c = parent.len();
    // Children lists (index `c` is the root above the roots), built backwards so each
    // list is in increasing order.
    let mut first_child = vec![u32::MAX; c + 1];
    let mut next_sibling = vec![u32::MAX; c];
    for (i, &p) in parent.iter().enumerate().rev() {
        let p = if (p as usize) < i { p as usize } else { c };
        next_sibling[i] = first_child[p];
        first_child[p] = i as u32;
    }
    let mut rank = vec![0u32; c];
    let mut next = 0u32;
    let mut stack = vec![c];
    let mut children = Vec::new();
    while let Some(node) = stack.pop() {
        if node < c {
            rank[node] = next;
            next += 1;
        }
        children.clear();
        let mut ch = first_child[node];
        while ch != u32::MAX {
            children.push(ch as usize);
            ch = next_sibling[ch as usize];
        }
        stack.extend(children.iter().rev());
    }
    rank
}

/// Moves the tiled rows so that position `p` holds the row that was at `perm[p]`
/// (`perm` a permutation of the first `perm.len()` positions), in place, one dimension
/// at a time through a column of scratch (a row's values lie a cache line apart, a
/// dimension's in runs of [`TILE`]: each run is copied whole, so this streams), the
/// dimensions split over the pool.
fn permute_rows(pool: &Pool, x: &mut [f32], dim: usize, perm: &[u32]) {
    let n = perm.len();
    if n == 0 {
        return;
    }
    let tiles = n.div_ceil(TILE);
    assert!(
        (tiles - 1) * TILE * dim + (dim - 1) * TILE + (n - (tiles - 1) * TILE) <= x.len()
            && perm.iter().all(|&p| (p as usize) < n),
        "permute_rows: shapes"
    );
    let per_task = dim.div_ceil(pool.threads());
    let xp = SharedMut::new(x);
    pool.run(dim.div_ceil(per_task), &|task, _| {
        let mut column = vec![0f32; n];
        for j in task * per_task..((task + 1) * per_task).min(dim) {
            for t in 0..tiles {
                let rows = t * TILE..((t + 1) * TILE).min(n);
                // SAFETY: the run of dimension j in tile t is inside `x` (checked above)
                // and each task reads and writes only its own dimensions.
                let run = unsafe { xp.slice(t * TILE * dim + j * TILE, rows.len()) };
                column[rows].copy_from_slice(run);
            }
            for t in 0..tiles {
                let rows = t * TILE..((t + 1) * TILE).min(n);
                // SAFETY: as above.
                let run = unsafe { xp.slice(t * TILE * dim + j * TILE, rows.len()) };
                for (v, &p) in run.iter_mut().zip(&perm[rows]) {
                    *v = column[p as usize];
                }
            }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows near a 12-dimensional subspace far from the origin: the principal coordinates
    /// hold all of their spread, so the bound is as tight as its rounding margins.
    fn low_rank_rows(n: usize, dim: usize) -> Vec<f32> {
        let mut rng = Rng::new(5);
        let offset: Vec<f32> = (0..dim).map(|_| rng.normal() * 4.0).collect();
        let dirs: Vec<f32> = (0..12 * dim).map(|_| rng.normal()).collect();
        let mut x = vec![0f32; n * dim];
        for row in x.chunks_exact_mut(dim) {
            let a: Vec<f32> = (0..12).map(|_| rng.normal()).collect();
            for (k, v) in row.iter_mut().enumerate() {
                *v = offset[k] + (0..12).map(|r| a[r] * dirs[r * dim + k]).sum::<f32>();
            }
        }
        x
    }

    #[test]
    fn principal_bound_never_passes_the_plain_distance_and_is_tight() {
        let (n, dim) = (2600, 300);
        let x = low_rank_rows(n, dim);
        let p = Principal::build(&Pool::new(2), &x, n, dim).expect("a basis");
        let coords = |r: usize| {
            let mut c = [0f32; PRINCIPAL_LEN];
            p.gather(r, &mut c);
            c
        };
        let (mut pairs, mut tight) = (0, 0);
        for q in (0..n).step_by(37) {
            let cq = coords(q);
            for t in 0..n.div_ceil(TILE) {
                // Just above the nearest row of the tile: the ball must not rule it out.
                let rows = t * TILE..((t + 1) * TILE).min(n);
                let nearest = rows
                    .clone()
                    .map(|i| sq_dist(&x[i * dim..(i + 1) * dim], &x[q * dim..(q + 1) * dim]))
                    .fold(f32::INFINITY, f32::min);
                assert!(
                    !p.tile_cannot_move(t, &cq, nearest.next_up()),
                    "tile {t} q {q}"
                );
                if t % TILES_PER_TASK == 0 {
                    let group = t * TILE..((t + TILES_PER_TASK) * TILE).min(n);
                    let nearest = group
                        .map(|i| sq_dist(&x[i * dim..(i + 1) * dim], &x[q * dim..(q + 1) * dim]))
                        .fold(f32::INFINITY, f32::min);
                    let g = t / TILES_PER_TASK;
                    assert!(
                        !p.group_cannot_move(g, &cq, nearest.next_up()),
                        "group {g} q {q}"
                    );
                }
                for i in rows {
                    let d = sq_dist(&x[i * dim..(i + 1) * dim], &x[q * dim..(q + 1) * dim]);
                    let ci = coords(i);
                    let s = sq_dist(&ci[..PROJ_DIMS], &cq[..PROJ_DIMS]);
                    // A running distance just above the plain distance: the row moves.
                    assert!(!p.cannot_move(s, ci[PROJ_DIMS], cq[PROJ_DIMS], d.next_up()));
                    pairs += 1;
                    tight += usize::from(p.cannot_move(
                        s,
                        ci[PROJ_DIMS],
                        cq[PROJ_DIMS],
                        d * (1.0 - 1e-4),
                    ));
                }
            }
        }
        // All but the (near-)zero distances are ruled out 0.01 % below the plain one.
        assert!(tight * 100 > pairs * 99, "{tight} of {pairs}");
    }

    #[test]
    fn principal_bound_covers_a_plain_sum_that_rounds_every_small_term_away() {
        // Two rows differing by 1 in one coordinate and by v in 299 others, v² just under
        // half an ulp of 1: the plain sum is exactly 1 while the distance is 1 + 1.7e-5
        // (the worst rounding the (1 − u)^(dim+2) margin covers), and the principal
        // coordinates hold all of it.
        let (n, dim) = (64, 300);
        let mut delta = vec![(0.49f64 * 2f64.powi(-23)).sqrt() as f32; dim];
        delta[0] = 1.0;
        let x: Vec<f32> = (0..n)
            .flat_map(|r| delta.iter().map(move |&v| if r % 2 == 1 { v } else { 0.0 }))
            .collect();
        let plain = sq_dist(&x[dim..2 * dim], &x[..dim]);
        assert_eq!(plain, 1.0);
        let p = Principal::build(&Pool::new(1), &x, n, dim).expect("a basis");
        let (mut c0, mut c1) = ([0f32; PRINCIPAL_LEN], [0f32; PRINCIPAL_LEN]);
        p.gather(0, &mut c0);
        p.gather(1, &mut c1);
        let s = sq_dist(&c1[..PROJ_DIMS], &c0[..PROJ_DIMS]);
        assert!(s > 1.00001, "{s}");
        assert!(!p.cannot_move(s, c1[PROJ_DIMS], c0[PROJ_DIMS], plain.next_up()));
        assert!(p.cannot_move(s, c1[PROJ_DIMS], c0[PROJ_DIMS], 0.9999));
    }
}
