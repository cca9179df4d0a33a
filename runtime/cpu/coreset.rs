//! Greedy coreset selection (SPEC §6): farthest-first traversal on a sparse random
//! projection of the features — the same rule as FPS (SPEC §3.1), in high dimension.
//!
//! Rule: the first centre is row 0; repeatedly pick the row with the largest squared
//! distance to its nearest chosen centre, ties to the lowest index.
//!
//! - [`greedy_plain`]: the rule written out, kept as the oracle for tests.
//! - [`greedy`]: the same selection, accelerated without changing it:
//!   1. triangle-inequality pruning: every row remembers its nearest centre `c(i)` and
//!      distance `r_i`; a new centre `q` can only come closer than `r_i` if
//!      `‖c(i) − q‖ < 2 r_i`, so rows with `‖c(i) − q‖² ≥ 4 r_i²·(1 + margin)` are
//!      skipped without touching their features (the margin keeps the skip safe under
//!      float rounding, so the plain version would not have updated them either);
//!      centre-to-centre distances are computed once per new centre, for the centres
//!      that still own rows;
//!   2. rows are processed in fixed blocks (pool tasks), each block keeping its maximum,
//!      so the arg-max is a scan over block maxima then one block: ties still go to the
//!      lowest index because blocks are scanned in order.
//!
//! Projection: Johnson–Lindenstrauss dimension for ε (scikit-learn's
//! `johnson_lindenstrauss_min_dim`: `floor(4 ln n / (ε²/2 − ε³/3))`), sparse Achlioptas/Li
//! matrix with density `1/sqrt(d)`: entries `±sqrt(1/(density·k))` each with probability
//! `density/2`, else 0, drawn from [`Rng`] with a fixed seed. When that dimension is not
//! below `d`, the features are used unprojected (scikit-learn would refuse).

use super::pool::{Pool, SharedMut};
use crate::util::rng::Rng;

/// Rows per task of the accelerated update.
pub const BLOCK: usize = 1024;
/// Centres per task of the centre-to-centre distances.
const CC_BLOCK: usize = 512;
/// Relative safety margin of the pruning test (see the module doc).
const PRUNE_MARGIN: f32 = 1e-3;

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
    let n = x.len() / dim;
    let m = m.min(n);
    let mut out = Vec::with_capacity(m);
    if m == 0 {
        return out;
    }
    let blocks = n.div_ceil(BLOCK);
    let mut min_d = vec![f32::INFINITY; n];
    let mut owner = vec![u32::MAX; n];
    let mut block_max = vec![(f32::NEG_INFINITY, 0usize); blocks];
    // Distance² from the new centre to every earlier centre (by selection order).
    let mut cc = vec![0f32; m];
    let mut cur = 0usize;
    for step in 0..m {
        out.push(cur as u32);
        let c = &x[cur * dim..(cur + 1) * dim];
        {
            let ccp = SharedMut::new(&mut cc);
            let centres = &out[..step];
            pool.run(step.div_ceil(CC_BLOCK), &|t, _| {
                let s0 = t * CC_BLOCK;
                let len = CC_BLOCK.min(step - s0);
                // SAFETY: each task owns its range of `cc`.
                let dst = unsafe { ccp.slice(s0, len) };
                for (v, &o) in dst.iter_mut().zip(&centres[s0..s0 + len]) {
                    *v = sq_dist(&x[o as usize * dim..(o as usize + 1) * dim], c);
                }
            });
        }
        let (mp, op, bp) = (
            SharedMut::new(&mut min_d),
            SharedMut::new(&mut owner),
            SharedMut::new(&mut block_max),
        );
        let cc_ref = &cc[..step];
        pool.run(blocks, &|b, _| {
            let start = b * BLOCK;
            let len = BLOCK.min(n - start);
            // SAFETY: each task owns rows start..start+len and its block slot.
            let md = unsafe { mp.slice(start, len) };
            let ow = unsafe { op.slice(start, len) };
            let bm = unsafe { &mut bp.slice(b, 1)[0] };
            let mut best = (f32::NEG_INFINITY, 0usize);
            for i in 0..len {
                let r2 = md[i];
                let o = ow[i];
                let skip = o != u32::MAX && cc_ref[o as usize] >= 4.0 * r2 * (1.0 + PRUNE_MARGIN);
                if !skip {
                    let row = start + i;
                    let d = sq_dist(&x[row * dim..(row + 1) * dim], c);
                    if d < r2 {
                        md[i] = d;
                        ow[i] = step as u32;
                    }
                }
                if md[i] > best.0 {
                    best = (md[i], start + i);
                }
            }
            *bm = best;
        });
        let mut best = (f32::NEG_INFINITY, 0usize);
        for &bm in &block_max {
            if bm.0 > best.0 {
                best = bm;
            }
        }
        cur = best.1;
    }
    out
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
    let mut p = vec![0f32; n * k];
    project_rows(pool, x, d, &r, k, &mut p);
    greedy(pool, &p, k, m)
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
