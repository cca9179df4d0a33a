//! The per-row projection bound of the pruned search ([`super::bank_prune`]): a lower
//! bound of [`super::bank_search::nearest`]'s computed d² for a (query, bank row) pair
//! from [`PROJ_DIMS`] coordinates instead of the row's `dim`.
//!
//! Fit time ([`Projection::build`]): μ̂, the bank's mean, and V̂, an orthonormal basis of
//! its leading principal directions (k = [`PROJ_DIMS`] directions, from a few steps of
//! subspace iteration on a sample of rows; any orthonormal basis is valid, a good one
//! prunes more), stored as f32 (`dim × (1 + k)`: per coordinate μ̂ then the k
//! directions), and per bank row, in the partition's cluster order, a record
//! `[p̂ (k) | c | ρ_lo | ρ_hi | A]`: p̂ = V̂(b − μ̂) rounded to f32, [ρ_lo, ρ_hi] holding
//! the norm of b − μ̂ outside the span of V̂, c and A as below (all rounded outward).
//!
//! The bound, for P the orthogonal projector onto the span of V̂'s rows (‖V̂V̂ᵀ − I‖ ≤
//! δ = [`BASIS_DELTA`], checked at fit time and when a view is made) and R = I − P:
//! ‖q − b‖² = ‖P(q − b)‖² + ‖R(q − b)‖² ≥ (1 − δ)‖V̂(q − b)‖² + ring², ring =
//! max(0, ρ_lo(q) − ρ_hi(b), ρ_lo(b) − ρ_hi(q)) ≤ |‖Ry_q‖ − ‖Ry_b‖| ≤ ‖R(q − b)‖; and
//! ‖V̂(q − b)‖² ≥ s − (rounding of p̂: 4.01·2⁻²³(‖y_q‖² + ‖y_b‖²); of s: (k+1)u(1+u)^k
//! (‖p̂_q‖² + ‖p̂_b‖²)) with s = ‖p̂_q‖² − 2 p̂_q·p̂_b + ‖p̂_b‖², the dot product an f32
//! sum in index order (the micro-kernel on the records), the rest in f64.
//!
//! The rounding of the search itself (this, more than the cluster bound, limited the
//! pruning of the 1920-d fused bank: `gemm_form_bound` is ≈ 2.4 at the answer's d² of
//! ≈ 0.4 there): nearest computes d² = (‖q‖² − 2 q·b) + ‖b‖² in f32, the dot product
//! summed in index order by the micro-kernel (one multiply-add chain per pair, on every
//! instruction set) and the norms given. Term i of a sequential sum of n products is in
//! n − i of the rounded partial sums, plus its own product rounding, so
//! |dot̂ − q·b| ≤ u(1+u)ⁿ Σ (n − i + 1)|q_i b_i| ≤ u(1+u)ⁿ A_q A_b with A_x² =
//! Σ (n − i + 1) x_i² (Cauchy–Schwarz; about half of the classical n‖q‖‖b‖ when the
//! energy is spread over the coordinates); the norms' errors are measured (|‖x‖²̂ − ‖x‖²|
//! in f64, e_x), and the two final roundings are below 6u(‖q‖² + ‖b‖²). Hence
//! computed d² ≥ ‖q − b‖² − E, E = 2u(1+u)ⁿ A_q A_b + e_q + e_b + 6u(‖q‖² + ‖b‖²).
//!
//! Each side x gets c_x = (1 − δ)‖p̂_x‖² − T_x, T_x holding its share of every margin
//! above (plus f64 evaluation slack), and the pair's bound is
//! c_q + c_b − 2(1 − δ) p̂_q·p̂_b + ring² − 2u(1+u)ⁿ A_q A_b ≤ nearest's computed d²
//! (test: `tests/cpu/bank_prune.rs`). A row is skipped for a query when the bound is above
//! the query's running best: it can neither win nor tie.

use super::pool::{Pool, SharedMut};
use crate::util::rng::Rng;

/// Coordinates of the projection bound.
pub const PROJ_DIMS: usize = 32;
/// Values of a row record after its coordinates: c, ρ_lo, ρ_hi, A.
pub const ROW_EXTRA: usize = 4;
/// The largest ‖V̂V̂ᵀ − I‖ (Frobenius) a basis may have: f32 rounding of an orthonormal
/// basis leaves about 1e-8.
pub const BASIS_DELTA: f64 = 1.0 / 1048576.0;
/// Rows sampled for the principal directions, and subspace-iteration steps.
const SAMPLE_ROWS: usize = 2048;
const ITERATIONS: usize = 3;
/// f32's unit roundoff.
const U: f64 = 1.0 / 16777216.0;
/// ‖p̂ − V̂y‖ ≤ ETA·‖y‖: f32 rounding of each coordinate plus the f64 sum's error.
pub(crate) const ETA: f64 = 1.0 / 8388608.0;
/// Relative slack of the f64 sums and of the terms evaluated in f64.
const F64_SLACK: f64 = 1e-9;

/// Values per row record.
pub fn record_len(k: usize) -> usize {
    k + ROW_EXTRA
}

/// Whether banks of `dim` values get a projection (it must leave a residual).
pub fn applies(dim: usize) -> bool {
    dim >= 2 * PROJ_DIMS
}

/// A projection built from a bank (module doc), owned: what the fit stores.
#[derive(Debug)]
pub struct Projection {
    /// `dim × (1 + k)`: per coordinate, μ̂ then the k directions of V̂.
    pub basis: Vec<f32>,
    /// `n × record_len(k)`, in the partition's cluster order.
    pub rows: Vec<f32>,
}

/// A projection read in place, checked ([`ProjectionView::new`]).
#[derive(Clone, Copy, Debug)]
pub struct ProjectionView<'a> {
    pub basis: &'a [f32],
    pub rows: &'a [f32],
    pub k: usize,
    dim: usize,
}

/// The smallest f32 at or above `x`.
pub(crate) fn f32_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f.next_up()
    } else {
        f
    }
}

/// The largest f32 at or below `x`.
pub(crate) fn f32_down(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) > x {
        f.next_down()
    } else {
        f
    }
}

/// Constant of the search's cross term: |d²̂ − d²| has 2u(1+u)ⁿ A_q A_b.
fn cross_factor(dim: usize) -> f64 {
    2.0 * U * (1.0 + U).powi(dim as i32 + 2) * (1.0 + F64_SLACK)
}

/// Error factor of s per unit of ‖p̂‖² (the k-term dot product, twice, as a
/// sequential sum: (k + 1)u(1+u)^k over ‖p̂_q‖² + ‖p̂_b‖²).
fn proj_dot_factor(k: usize) -> f64 {
    (k as f64 + 1.0) * U * (1.0 + U).powi(k as i32 + 2) * (1.0 + F64_SLACK)
}

/// One side (a query or a bank row) of the bound: the pair's bound is
/// `c_q + c_b − 2(1 − δ) p̂_q·p̂_b + ring² − a_q a_b` (module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct Side {
    /// (1 − δ)‖p̂‖² − T.
    c: f64,
    rho_lo: f64,
    rho_hi: f64,
    /// A rounded up (times the cross factor on the query's side).
    a: f64,
}

/// The side of vector x (`dim` values) against `basis` (`dim × (1 + k)`: per coordinate
/// μ̂ then the k directions); writes p̂ into `p`. `computed_sq_norm`: x's squared norm as
/// nearest has it.
fn side(basis: &[f32], x: &[f32], computed_sq_norm: f32, p: &mut [f32]) -> Side {
    let [sums] = project_pass(basis, [x]);
    side_of(sums, computed_sq_norm, p)
}

/// The side of a vector from its projection sums ([`project_pass`]); writes p̂ into `p`.
fn side_of((acc, sums): Sums, computed_sq_norm: f32, p: &mut [f32]) -> Side {
    let k = PROJ_DIMS;
    let total = |i: usize| sums.iter().map(|s| s[i]).sum::<f64>();
    let (y2, norm2, a2) = (total(0), total(1), total(2));
    let mut s = 0f64;
    let mut p_sq = 0f64;
    for (i, pi) in p[..k].iter_mut().enumerate() {
        let exact = acc.iter().map(|a| a[i]).sum::<f64>();
        s += exact * exact;
        *pi = exact as f32;
        p_sq += *pi as f64 * *pi as f64;
    }
    let y2 = y2 * (1.0 + F64_SLACK);
    // ρ² = ‖y‖² − ‖Py‖², ‖Py‖² within ‖V̂y‖² / (1 ± δ); ‖V̂y‖² = s within f64 slack.
    let s_hi = s * (1.0 + F64_SLACK) + F64_SLACK * y2;
    let s_lo = s * (1.0 - F64_SLACK) - F64_SLACK * y2;
    let y2_lo = y2 * (1.0 - 3.0 * F64_SLACK);
    let rho_lo = (y2_lo - s_hi / (1.0 - BASIS_DELTA)).max(0.0).sqrt() * (1.0 - F64_SLACK);
    let rho_hi = (y2 - s_lo / (1.0 + BASIS_DELTA)).max(0.0).sqrt() * (1.0 + F64_SLACK);
    let norm2 = norm2 * (1.0 + F64_SLACK);
    let a = a2.sqrt() * (1.0 + F64_SLACK);
    let norm_error = (computed_sq_norm as f64 - norm2).abs() + 2.0 * F64_SLACK * norm2;
    let t = proj_dot_factor(k) * p_sq
        + 4.01 * ETA * y2
        + norm_error
        + 6.0 * U * norm2
        + F64_SLACK * (p_sq + rho_hi * rho_hi + norm2 + 1.0);
    Side {
        c: (1.0 - BASIS_DELTA) * p_sq - t * (1.0 + F64_SLACK),
        rho_lo,
        rho_hi,
        a,
    }
}

/// Projection sums, even and odd coordinates apart (independent chains).
type Sums = ([[f64; PROJ_DIMS]; 2], [[f64; 3]; 2]);

/// One pass over the coordinates of each x of `xs` (all `dim` long; several share each
/// read of the basis): y = x − μ̂ (exact in f64) projected on every direction at once,
/// ‖y‖², ‖x‖² and A_x² (module doc), all in f64, even and odd coordinates in separate
/// sums. Compiled for AVX-512F or AVX2 as [`super::gemm::isa`] picks (no fused
/// multiply-add, the same sums in the same order, whatever `N`: the same bits on every
/// path).
fn project_pass<const N: usize>(basis: &[f32], xs: [&[f32]; N]) -> [Sums; N] {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<const N: usize>(basis: &[f32], xs: [&[f32]; N]) -> [Sums; N] {
            project_pass_body(basis, xs)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<const N: usize>(basis: &[f32], xs: [&[f32]; N]) -> [Sums; N] {
            project_pass_body(basis, xs)
        }
        match super::gemm::isa() {
            // SAFETY: `isa` names only instruction sets this CPU runs.
            super::gemm::Isa::Avx512 => return unsafe { avx512(basis, xs) },
            // SAFETY: as above.
            super::gemm::Isa::Avx2 => return unsafe { avx2(basis, xs) },
            super::gemm::Isa::Portable => {}
        }
    }
    project_pass_body(basis, xs)
}

#[inline(always)]
fn project_pass_body<const N: usize>(basis: &[f32], xs: [&[f32]; N]) -> [Sums; N] {
    let dim = xs[0].len();
    let w = 1 + PROJ_DIMS;
    let mut out = [([[0f64; PROJ_DIMS]; 2], [[0f64; 3]; 2]); N];
    for (t, rows) in basis.chunks_exact(2 * w).take(dim / 2).enumerate() {
        add_coordinate(&mut out, &xs, 0, 2 * t, &rows[..w]);
        add_coordinate(&mut out, &xs, 1, 2 * t + 1, &rows[w..]);
    }
    if dim % 2 == 1 {
        add_coordinate(&mut out, &xs, 0, dim - 1, &basis[(dim - 1) * w..dim * w]);
    }
    out
}

/// Coordinate `d` of every x into its sums of `way`, with the basis row of d (μ̂_d, then
/// the directions, converted once for all the xs).
#[inline(always)]
fn add_coordinate<const N: usize>(
    out: &mut [Sums; N],
    xs: &[&[f32]; N],
    way: usize,
    d: usize,
    row: &[f32],
) {
    let dim = xs[0].len();
    let mu = row[0] as f64;
    let dirs: [f64; PROJ_DIMS] = std::array::from_fn(|i| row[1 + i] as f64);
    for ((acc, sums), x) in out.iter_mut().zip(xs) {
        let v = x[d];
        let y = v as f64 - mu;
        let v2 = v as f64 * v as f64;
        let s = &mut sums[way];
        s[0] += y * y;
        s[1] += v2;
        s[2] += (dim - d + 1) as f64 * v2;
        for (a, &b) in acc[way].iter_mut().zip(&dirs) {
            *a += y * b;
        }
    }
}

/// The bound of a pair from its two sides and the f32 dot product p̂_q·p̂_b (module doc).
#[inline(always)]
fn pair_bound(q: &Side, b: &Side, dot: f32) -> f64 {
    let ring = (q.rho_lo - b.rho_hi).max(b.rho_lo - q.rho_hi).max(0.0);
    let v = q.c + b.c - 2.0 * (1.0 - BASIS_DELTA) * dot as f64 + ring * ring - q.a * b.a;
    v * (1.0 - F64_SLACK) - F64_SLACK
}

impl Projection {
    /// Builds the projection of `bank` (`n × dim` rows, `sq_norms` as nearest uses them),
    /// its records in the order `order` (the partition's). `None` when `dim` is too
    /// narrow ([`applies`]) or the basis cannot be made orthonormal within
    /// [`BASIS_DELTA`].
    pub fn build(
        pool: &Pool,
        bank: &[f32],
        sq_norms: &[f32],
        dim: usize,
        order: &[u32],
    ) -> Option<Self> {
        let n = sq_norms.len();
        let k = PROJ_DIMS;
        if !applies(dim) || n == 0 {
            return None;
        }
        let row = |i: usize| &bank[i * dim..(i + 1) * dim];
        // Mean (f64), rounded to f32: the stored μ̂ is what everything is relative to.
        let mut mean64 = vec![0f64; dim];
        for i in 0..n {
            for (m, &v) in mean64.iter_mut().zip(row(i)) {
                *m += v as f64;
            }
        }
        let mean: Vec<f32> = mean64.iter().map(|m| (m / n as f64) as f32).collect();
        let mean_d: Vec<f64> = mean.iter().map(|&m| m as f64).collect();
        // Subspace iteration on a sample of centred rows: Ω ← orth(Yᵀ Y Ω).
        let m = n.min(SAMPLE_ROWS);
        let sample: Vec<f64> = (0..m)
            .flat_map(|t| {
                row(t * n / m)
                    .iter()
                    .zip(&mean_d)
                    .map(|(&v, &mu)| v as f64 - mu)
            })
            .collect();
        let mut rng = Rng::new(0x7072_6f6a);
        let mut start = vec![0f32; k * dim];
        rng.fill_normal(&mut start, 1.0);
        let random: Vec<f64> = start.iter().map(|&v| v as f64).collect();
        let mut omega = random.clone();
        orthonormalise(&mut omega, k, dim);
        let mut z = vec![0f64; m * k];
        for _ in 0..ITERATIONS {
            for t in 0..m {
                let y = &sample[t * dim..(t + 1) * dim];
                for j in 0..k {
                    z[t * k + j] = dot_f64(y, &omega[j * dim..(j + 1) * dim]);
                }
            }
            omega.fill(0.0);
            for t in 0..m {
                let y = &sample[t * dim..(t + 1) * dim];
                for j in 0..k {
                    let c = z[t * k + j];
                    for (o, &v) in omega[j * dim..(j + 1) * dim].iter_mut().zip(y) {
                        *o += c * v;
                    }
                }
            }
            // A little of the random start keeps the basis full rank on a bank of lower
            // rank (its extra directions are then arbitrary, which is valid).
            let scale = omega.iter().fold(0f64, |a, &v| a.max(v.abs())).max(1.0) * 1e-9;
            for (o, &r) in omega.iter_mut().zip(&random) {
                *o += scale * r;
            }
            orthonormalise(&mut omega, k, dim);
        }
        // Per coordinate: μ̂, then the k directions (one pass reads a row).
        let mut basis = vec![0f32; dim * (1 + k)];
        for (d, row) in basis.chunks_exact_mut(1 + k).enumerate() {
            row[0] = mean[d];
            for (i, v) in row[1..].iter_mut().enumerate() {
                *v = omega[i * dim + d] as f32;
            }
        }
        if basis_delta(&basis, dim) > BASIS_DELTA {
            return None;
        }
        let len = record_len(k);
        let mut rows = vec![0f32; n * len];
        let out = SharedMut::new(&mut rows);
        const CHUNK: usize = 256;
        pool.run(n.div_ceil(CHUNK), &|task, _| {
            let r0 = task * CHUNK;
            let r1 = (r0 + CHUNK).min(n);
            // SAFETY: each task writes its own records.
            let recs = unsafe { out.slice(r0 * len, (r1 - r0) * len) };
            for (rec, &orig) in recs.chunks_exact_mut(len).zip(&order[r0..r1]) {
                let i = orig as usize;
                let t = side(&basis, row(i), sq_norms[i], rec);
                // Rounded outward: c and ρ_lo down, ρ_hi and A up.
                rec[k] = f32_down(t.c);
                rec[k + 1] = f32_down(t.rho_lo);
                rec[k + 2] = f32_up(t.rho_hi);
                rec[k + 3] = f32_up(t.a);
            }
        });
        Some(Projection { basis, rows })
    }

    pub fn view(&self, dim: usize, n: usize) -> Result<ProjectionView<'_>, String> {
        ProjectionView::new(&self.basis, &self.rows, dim, n)
    }
}

fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Modified Gram–Schmidt, twice, on the `k` rows of `v` (each `dim` long).
fn orthonormalise(v: &mut [f64], k: usize, dim: usize) {
    for _ in 0..2 {
        for j in 0..k {
            let (done, rest) = v.split_at_mut(j * dim);
            let cur = &mut rest[..dim];
            for i in 0..j {
                let prev = &done[i * dim..(i + 1) * dim];
                let c = dot_f64(cur, prev);
                for (x, &p) in cur.iter_mut().zip(prev) {
                    *x -= c * p;
                }
            }
            let norm = dot_f64(cur, cur).sqrt();
            let norm = if norm > 0.0 { norm } else { 1.0 };
            for x in cur.iter_mut() {
                *x /= norm;
            }
        }
    }
}

/// An upper bound of ‖V̂V̂ᵀ − I‖₂ for the directions of `basis` (`dim × (1 + k)`): the
/// Frobenius norm, computed in f64 from exact products, plus its rounding.
fn basis_delta(basis: &[f32], dim: usize) -> f64 {
    let k = PROJ_DIMS;
    let mut g = [[0f64; PROJ_DIMS]; PROJ_DIMS];
    for row in basis.chunks_exact(1 + k) {
        let v = &row[1..];
        for (gi, &x) in g.iter_mut().zip(v) {
            for (gij, &y) in gi.iter_mut().zip(v) {
                *gij += x as f64 * y as f64;
            }
        }
    }
    let mut sum = 0f64;
    for (i, gi) in g.iter().enumerate() {
        for (j, &gij) in gi.iter().enumerate() {
            let e = gij - if i == j { 1.0 } else { 0.0 };
            sum += e * e;
        }
    }
    sum.sqrt() + (dim as f64 + 2.0) * 2f64.powi(-51)
}

impl<'a> ProjectionView<'a> {
    /// Checks the shapes and that the basis is orthonormal within [`BASIS_DELTA`]; the
    /// error says what is wrong.
    pub fn new(basis: &'a [f32], rows: &'a [f32], dim: usize, n: usize) -> Result<Self, String> {
        let k = PROJ_DIMS;
        if !applies(dim) {
            return Err(format!(
                "a projection for rows of {dim} values (needs ≥ {})",
                2 * k
            ));
        }
        if basis.len() != dim * (1 + k) || rows.len() != n * record_len(k) {
            return Err(format!(
                "projection of {} basis and {} record values for {n} rows of {dim} ({k} directions)",
                basis.len(),
                rows.len()
            ));
        }
        if !basis.iter().chain(rows).all(|v| v.is_finite()) {
            return Err("a projection value that is not finite".into());
        }
        let delta = basis_delta(basis, dim);
        if delta > BASIS_DELTA {
            return Err(format!(
                "projection basis not orthonormal (‖VVᵀ − I‖ ≤ {delta:e})"
            ));
        }
        Ok(ProjectionView {
            basis,
            rows,
            k,
            dim,
        })
    }

    /// Record `r` (cluster-order position).
    #[inline]
    pub fn record(&self, r: usize) -> &'a [f32] {
        let len = record_len(self.k);
        &self.rows[r * len..(r + 1) * len]
    }
}

/// One query's side of the bound ([`QueryBound::new`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct QueryBound(Side);

impl QueryBound {
    /// The query's side; writes its f32 coordinates p̂_q into `p` (k values).
    /// `computed_sq_norm`: the query's squared norm as the search computes it.
    pub fn new(view: &ProjectionView<'_>, q: &[f32], computed_sq_norm: f32, p: &mut [f32]) -> Self {
        debug_assert_eq!(q.len(), view.dim);
        Self::from_side(view, side(view.basis, q, computed_sq_norm, p))
    }

    fn from_side(view: &ProjectionView<'_>, mut side: Side) -> Self {
        side.a *= cross_factor(view.dim);
        QueryBound(side)
    }

    /// [`QueryBound::new`] for every query of `queries` (rows of `view`'s width, their
    /// computed squared norms in `norms`), into `out`, their p̂ into `p` (k values each):
    /// the same bits, two queries per read of the basis.
    pub fn fill(
        view: &ProjectionView<'_>,
        queries: &[f32],
        norms: &[f32],
        p: &mut [f32],
        out: &mut [QueryBound],
    ) {
        let (dim, k) = (view.dim, view.k);
        let mut pairs = queries.chunks_exact(2 * dim);
        let mut j = 0;
        for two in pairs.by_ref() {
            let (x0, x1) = two.split_at(dim);
            let [s0, s1] = project_pass(view.basis, [x0, x1]);
            let (p0, p1) = p[j * k..(j + 2) * k].split_at_mut(k);
            out[j] = Self::from_side(view, side_of(s0, norms[j], p0));
            out[j + 1] = Self::from_side(view, side_of(s1, norms[j + 1], p1));
            j += 2;
        }
        let last = pairs.remainder();
        if !last.is_empty() {
            out[j] = Self::new(view, last, norms[j], &mut p[j * k..(j + 1) * k]);
        }
    }

    /// A lower bound of nearest's computed d² for this query and the row of `record`,
    /// given `dot`, the f32 dot product p̂_q·p̂_b summed in index order (the micro-kernel's
    /// or any sequential sum).
    pub fn lower_bound(&self, record: &[f32], dot: f32) -> f64 {
        pair_bound(&self.0, &row_side(record), dot)
    }
}

/// A row's side from its record.
#[inline(always)]
fn row_side(record: &[f32]) -> Side {
    let k = record.len() - ROW_EXTRA;
    Side {
        c: record[k] as f64,
        rho_lo: record[k + 1] as f64,
        rho_hi: record[k + 2] as f64,
        a: record[k + 3] as f64,
    }
}

/// Most queries of one [`StripSides`] (the widest kernel's strip).
pub const STRIP: usize = 32;

/// The query sides of a strip of at most [`STRIP`] queries, field by field, so that
/// [`StripSides::row_needed`] evaluates [`STRIP`] pair bounds in a few vector steps.
#[derive(Clone, Copy, Debug)]
pub struct StripSides {
    c: [f64; STRIP],
    rho_lo: [f64; STRIP],
    rho_hi: [f64; STRIP],
    a: [f64; STRIP],
}

impl StripSides {
    pub fn new(queries: &[QueryBound]) -> Self {
        assert!(
            queries.len() <= STRIP,
            "StripSides: at most {STRIP} queries"
        );
        let mut s = StripSides {
            c: [0.0; STRIP],
            rho_lo: [0.0; STRIP],
            rho_hi: [0.0; STRIP],
            a: [0.0; STRIP],
        };
        for (j, q) in queries.iter().enumerate() {
            (s.c[j], s.rho_lo[j], s.rho_hi[j], s.a[j]) = (q.0.c, q.0.rho_lo, q.0.rho_hi, q.0.a);
        }
        s
    }

    /// Whether any query j of the strip may get the row of `record` as its answer or a
    /// tie: its bound (with `dots[j]`, the f32 p̂_q·p̂_b) is not above `limit[j]`, its
    /// running best d² (−∞: the query takes no row; so for the places past the strip's
    /// queries). Every query is evaluated, no early exit, compiled for AVX-512F or AVX2
    /// as [`super::gemm::isa`] picks (the same operations in the same order on every
    /// path: the same decisions).
    pub fn row_needed(&self, limit: &[f32; STRIP], record: &[f32], dots: &[f32; STRIP]) -> bool {
        let b = row_side(record);
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(s: &StripSides, l: &[f32; STRIP], b: &Side, d: &[f32; STRIP]) -> bool {
                s.needed_body(l, b, d)
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(s: &StripSides, l: &[f32; STRIP], b: &Side, d: &[f32; STRIP]) -> bool {
                s.needed_body(l, b, d)
            }
            match super::gemm::isa() {
                // SAFETY: `isa` names only instruction sets this CPU runs.
                super::gemm::Isa::Avx512 => return unsafe { avx512(self, limit, &b, dots) },
                // SAFETY: as above.
                super::gemm::Isa::Avx2 => return unsafe { avx2(self, limit, &b, dots) },
                super::gemm::Isa::Portable => {}
            }
        }
        self.needed_body(limit, &b, dots)
    }

    #[inline(always)]
    fn needed_body(&self, limit: &[f32; STRIP], b: &Side, dots: &[f32; STRIP]) -> bool {
        let mut need = false;
        for j in 0..STRIP {
            let q = Side {
                c: self.c[j],
                rho_lo: self.rho_lo[j],
                rho_hi: self.rho_hi[j],
                a: self.a[j],
            };
            // NaN (never from finite inputs) keeps the row.
            let above = pair_bound(&q, b, dots[j]) > limit[j] as f64;
            need |= !above;
        }
        need
    }
}
