//! Scoring one part against one memory bank (SPEC §7).
//!
//! Exact nearest neighbour of every query row among the bank rows, fused into the GEMM
//! micro-kernel of [`super::gemm`]: `‖x−b‖² = ‖x‖² − 2x·b + ‖b‖²`, with the bank's squared
//! norms precomputed (they are stored in the bank file). A pool task takes a fixed block
//! of queries (as many as fit [`QUERY_PACK_FLOATS`], at most [`QUERY_BLOCK`]), packs them
//! once as the kernel's right-hand operand, and walks the whole bank `MR` rows at a time,
//! read in place: the kernel writes one `MR × NR` tile of dot products into a small array
//! in L1, and the tile is folded into each query's running minimum at once. No distance
//! matrix is formed; every query's result depends only on its own row and the shape, so
//! the bits do not depend on the thread count. Ties go to the lowest bank index (strict
//! `<` in bank order).
//!
//! Then the PatchCore re-weighting (PatchCore eq. 7, `n_reweight = 3`) of the image score.

use super::gemm::{pack_rhs, Kernel, Mat, Operand, Start};
use super::pool::{Pool, SharedMut};

/// Most queries per task.
pub const QUERY_BLOCK: usize = 128;
/// Floats of packed queries per worker: 128 queries of M3DM's xyz width (1152) fit, and
/// stay in a Zen 5 core's 1 MiB L2 next to the bank rows streaming by.
pub const QUERY_PACK_FLOATS: usize = 128 * 1152;
/// Queries are blocked in multiples of this (every kernel's `NR` divides it).
const QUERY_QUANTUM: usize = 32;
/// Bank rows per task of the k-nearest scan used by the re-weighting.
pub const KNN_BLOCK: usize = 4096;
/// Neighbours per bank row in the bank file's table (`bank.*_neighbours`): the
/// re-weighting's b_1 and b_2 (SPEC §7).
pub const TABLE_NEIGHBOURS: usize = 2;
/// A table entry with no row (a bank of fewer than 3 rows).
pub const NO_ROW: u32 = u32::MAX;

/// A bank: `n × dim` row-major features (already normalised), their squared norms and,
/// when the bank file has it, the re-weighting's neighbour table ([`neighbour_table`]).
#[derive(Clone, Copy, Debug)]
pub struct BankView<'a> {
    pub data: &'a [f32],
    pub sq_norms: &'a [f32],
    pub n: usize,
    pub dim: usize,
    /// [`TABLE_NEIGHBOURS`] rows per bank row; `None`: the re-weighting scans the bank.
    pub neighbours: Option<&'a [u32]>,
    /// A fit-time partition of the bank ([`super::bank_prune`]): the scorer then searches
    /// through [`super::bank_prune::nearest_pruned`] (the same result as [`nearest`],
    /// skipping the clusters that cannot hold a query's answer).
    pub partition: Option<super::bank_prune::PartitionView<'a>>,
}

impl<'a> BankView<'a> {
    pub fn new(data: &'a [f32], sq_norms: &'a [f32], dim: usize) -> Self {
        assert!(
            dim > 0 && data.len().is_multiple_of(dim),
            "bank: ragged rows"
        );
        let n = data.len() / dim;
        assert_eq!(sq_norms.len(), n, "bank: one norm per row");
        BankView {
            data,
            sq_norms,
            n,
            dim,
            neighbours: None,
            partition: None,
        }
    }

    /// The same bank with its neighbour table (`n ×` [`TABLE_NEIGHBOURS`] rows).
    pub fn with_neighbours(self, table: &'a [u32]) -> Self {
        assert_eq!(
            table.len(),
            self.n * TABLE_NEIGHBOURS,
            "bank: neighbour table of {} rows",
            self.n
        );
        BankView {
            neighbours: Some(table),
            ..self
        }
    }

    /// The same bank with a partition of its rows ([`super::bank_prune::PartitionView`]).
    pub fn with_partition(self, partition: super::bank_prune::PartitionView<'a>) -> Self {
        assert_eq!(
            partition.order.len(),
            self.n,
            "bank: partition of another bank"
        );
        BankView {
            partition: Some(partition),
            ..self
        }
    }
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Squared L2 norm of each `dim`-row (what the bank file stores as `bank.*_norms`), each
/// summed in order (`Σ v²`, products rounded). Rows are taken [`SCAN_ROWS`] at a time, so
/// their sums are independent chains that overlap in the pipeline (the same bits).
pub fn sq_norms(rows: &[f32], dim: usize, out: &mut [f32]) {
    let groups = rows.chunks_exact(dim * SCAN_ROWS);
    let tail = groups.remainder();
    let mut outs = out.chunks_exact_mut(SCAN_ROWS);
    for (g, o) in groups.zip(outs.by_ref()) {
        let rows: [&[f32]; SCAN_ROWS] = std::array::from_fn(|r| &g[r * dim..(r + 1) * dim]);
        let mut acc = [0f32; SCAN_ROWS];
        for k in 0..dim {
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a += row[k] * row[k];
            }
        }
        o.copy_from_slice(&acc);
    }
    let done = (rows.len() - tail.len()) / dim.max(1);
    for (r, o) in tail.chunks_exact(dim).zip(out[done..].iter_mut()) {
        *o = r.iter().map(|v| v * v).sum();
    }
}

/// The arithmetic of the CPU's exact nearest-row search at inspection: [`nearest`] (f32)
/// or [`nearest_bf16`] (a bf16 candidate pass re-scored in f32); the same rows and
/// distance bits either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchForm {
    #[default]
    F32,
    Bf16,
}

/// Floats of scratch [`nearest`] needs with a pool of `threads` threads: each worker's
/// packed queries.
pub fn nearest_scratch_len(threads: usize) -> usize {
    threads.max(1) * QUERY_PACK_FLOATS
}

/// Queries per task for rows of `dim` values (fixed by the shape).
pub fn query_block(dim: usize) -> usize {
    (QUERY_PACK_FLOATS / dim.max(1) / QUERY_QUANTUM * QUERY_QUANTUM)
        .clamp(QUERY_QUANTUM, QUERY_BLOCK)
}

/// Floats of scratch [`knn_scan`] needs for a bank of `n` rows (`k` neighbours).
pub fn knn_scratch_len(n: usize, k: usize) -> usize {
    n.div_ceil(KNN_BLOCK).max(1) * k * 2
}

/// For each of the `queries.len() / bank.dim` query rows: the Euclidean distance to its
/// nearest bank row (`sqrt` of the squared distance clamped at 0) and that row's index.
///
/// `exclude`, when given as `(origin, id)`, skips bank rows with `origin[b] == id` (used
/// at fit time to score a training part against a bank without its own features).
pub fn nearest(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    exclude: Option<(&[u32], u32)>,
    dist: &mut [f32],
    index: &mut [u32],
    scratch: &mut [f32],
) {
    let dim = bank.dim;
    assert_eq!(queries.len() % dim, 0, "nearest: ragged queries");
    let nq = queries.len() / dim;
    assert!(dist.len() >= nq && index.len() >= nq, "nearest: outputs");
    assert!(
        scratch.len() >= nearest_scratch_len(pool.threads()),
        "nearest: scratch too small"
    );
    if let Some((origin, _)) = exclude {
        assert_eq!(origin.len(), bank.n, "nearest: one origin per bank row");
    }
    if nq == 0 {
        return;
    }
    let qb = query_block(dim);
    // A dimension so wide that even QUERY_QUANTUM queries overflow the pack: the
    // plain search (no such model exists; kept correct rather than fast).
    let packed = qb * dim <= QUERY_PACK_FLOATS;
    let ker = Kernel::best();
    let tasks = nq.div_ceil(qb);
    let (dp, ip, sp) = (
        SharedMut::new(dist),
        SharedMut::new(index),
        SharedMut::new(scratch),
    );
    pool.run(tasks, &|task, worker| {
        let q0 = task * qb;
        let qn = qb.min(nq - q0);
        // SAFETY: each worker owns its scratch slice; each task its output range.
        let pack = unsafe { sp.slice(worker * QUERY_PACK_FLOATS, QUERY_PACK_FLOATS) };
        let d_out = unsafe { dp.slice(q0, qn) };
        let i_out = unsafe { ip.slice(q0, qn) };
        let q = &queries[q0 * dim..(q0 + qn) * dim];
        let mut qnorm = [0f32; QUERY_BLOCK];
        sq_norms(q, dim, &mut qnorm[..qn]);
        d_out.fill(f32::INFINITY);
        i_out.fill(u32::MAX);
        if packed && bank.n >= ker.mr {
            search_block(ker, q, qn, &qnorm, bank, exclude, pack, d_out, i_out);
        } else {
            for (i, x) in q.chunks_exact(dim).enumerate() {
                for b in 0..bank.n {
                    let dot: f32 = x.iter().zip(bank.row(b)).map(|(a, c)| a * c).sum();
                    fold(
                        &mut d_out[i],
                        &mut i_out[i],
                        qnorm[i] - 2.0 * dot + bank.sq_norms[b],
                        b,
                        exclude,
                    );
                }
            }
        }
        for v in d_out.iter_mut() {
            *v = v.max(0.0).sqrt();
        }
    });
}

/// One step of the running minimum: strict `<`, so the earlier (lower) row wins a tie.
#[inline(always)]
fn fold(best: &mut f32, arg: &mut u32, d2: f32, row: usize, exclude: Option<(&[u32], u32)>) {
    if d2 < *best {
        if let Some((origin, id)) = exclude {
            if origin[row] == id {
                return;
            }
        }
        *best = d2;
        *arg = row as u32;
    }
}

/// The fused search of one query block (`qn` queries, `bank.n ≥ ker.mr`): the running
/// minimum of [`walk_bank`]'s dot products. `d_out`, `i_out` start at +∞ and [`NO_ROW`];
/// they end with squared distances.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_block(
    ker: Kernel,
    q: &[f32],
    qn: usize,
    qnorm: &[f32],
    bank: BankView<'_>,
    exclude: Option<(&[u32], u32)>,
    pack: &mut [f32],
    d_out: &mut [f32],
    i_out: &mut [u32],
) {
    walk_bank(ker, q, qn, bank, pack, |row, j0, dots| {
        if let Some((origin, id)) = exclude {
            if origin[row] == id {
                return;
            }
        }
        let cols = dots.len();
        let bn = bank.sq_norms[row];
        let (best, arg) = (&mut d_out[j0..j0 + cols], &mut i_out[j0..j0 + cols]);
        for (((b, a), &qq), &dot) in best
            .iter_mut()
            .zip(arg.iter_mut())
            .zip(&qnorm[j0..j0 + cols])
            .zip(dots)
        {
            let d2 = qq - 2.0 * dot + bn;
            if d2 < *b {
                *b = d2;
                *a = row as u32;
            }
        }
    });
}

/// The GEMM walk of one query block (`qn` queries, `bank.n ≥ ker.mr`): queries packed
/// once, the bank walked `mr` rows at a time, read in place; `visit(row, j0, dots)` gets
/// the dot products of bank row `row` with queries `j0..j0 + dots.len()`. The last group
/// of rows is the bank's last `mr` rows, so rows may be visited twice (a running minimum
/// or a top list that ignores a pair it already holds is unaffected).
pub(crate) fn walk_bank(
    ker: Kernel,
    q: &[f32],
    qn: usize,
    bank: BankView<'_>,
    pack: &mut [f32],
    mut visit: impl FnMut(usize, usize, &[f32]),
) {
    let (dim, mr, nr) = (bank.dim, ker.mr, ker.nr);
    let strips = qn.div_ceil(nr);
    pack_rhs(
        Operand::transposed(Mat::new(q, qn, dim)),
        0,
        dim,
        0,
        qn,
        nr,
        1.0,
        pack,
    );
    let mut tile = [0f32; 12 * 32];
    let mut r0 = 0;
    loop {
        let start = r0.min(bank.n - mr);
        for s in 0..strips {
            let j0 = s * nr;
            let cols = nr.min(qn - j0);
            // SAFETY: rows start..start+mr of the bank hold mr·dim floats read in place;
            // the strip holds dim·nr packed floats; the tile holds mr·nr floats.
            unsafe {
                ker.run(
                    dim,
                    bank.data[start * dim..].as_ptr(),
                    dim,
                    pack[s * dim * nr..(s + 1) * dim * nr].as_ptr(),
                    tile.as_mut_ptr(),
                    nr,
                    Start::Zero,
                )
            };
            for i in 0..mr {
                visit(start + i, j0, &tile[i * nr..i * nr + cols]);
            }
        }
        r0 = start + mr;
        if r0 >= bank.n {
            break;
        }
    }
}

/// Squared Euclidean distance, summed in order.
#[inline]
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Rows [`sq_dists`] computes at once.
const SCAN_ROWS: usize = 8;

/// [`sq_dist`] of `query` to bank rows `b0..b0 + SCAN_ROWS`, each summed in order as
/// there (the rows' sums are independent chains, so they overlap in the pipeline).
fn sq_dists(query: &[f32], bank: BankView<'_>, b0: usize) -> [f32; SCAN_ROWS] {
    let dim = bank.dim;
    let rows: [&[f32]; SCAN_ROWS] = std::array::from_fn(|r| bank.row(b0 + r));
    let mut acc = [0f32; SCAN_ROWS];
    for (k, &x) in query.iter().enumerate().take(dim) {
        for (a, row) in acc.iter_mut().zip(&rows) {
            let d = x - row[k];
            *a += d * d;
        }
    }
    acc
}

/// The `k` bank rows nearest to `query` by direct squared distance, nearest first, ties
/// to the lowest index; skips rows excluded as in [`nearest`]. Writes `k` indices into
/// `out` and returns how many were found (fewer when the bank is smaller). Fixed
/// partition: blocks of [`KNN_BLOCK`] rows, each keeps its own top `k`, merged in order.
pub fn knn_scan(
    pool: &Pool,
    query: &[f32],
    bank: BankView<'_>,
    exclude: Option<(&[u32], u32)>,
    k: usize,
    out: &mut [u32],
    scratch: &mut [f32],
) -> usize {
    let blocks = bank.n.div_ceil(KNN_BLOCK).max(1);
    assert!(
        scratch.len() >= blocks * k * 2,
        "knn_scan: scratch too small"
    );
    assert!(out.len() >= k);
    let sp = SharedMut::new(scratch);
    pool.run(blocks, &|blk, _| {
        // SAFETY: one block's top-k slot per task.
        let slot = unsafe { sp.slice(blk * k * 2, k * 2) };
        let (dd, ii) = slot.split_at_mut(k);
        dd.fill(f32::INFINITY);
        ii.fill(f32::from_bits(u32::MAX));
        let start = blk * KNN_BLOCK;
        let end = (start + KNN_BLOCK).min(bank.n);
        let kept = |b: usize| exclude.is_none_or(|(origin, id)| origin[b] != id);
        let mut b = start;
        while b + SCAN_ROWS <= end {
            let d = sq_dists(query, bank, b);
            for (r, &d) in d.iter().enumerate() {
                if kept(b + r) {
                    insert_top(dd, ii, d, (b + r) as u32);
                }
            }
            b += SCAN_ROWS;
        }
        for b in b..end {
            if kept(b) {
                insert_top(dd, ii, sq_dist(query, bank.row(b)), b as u32);
            }
        }
    });
    // Merge block results in block order: ties keep the earlier (lower) index.
    let mut best_d = [f32::INFINITY; 8];
    let mut best_i = [u32::MAX; 8];
    assert!(k <= 8, "knn_scan: k at most 8");
    let mut bd = [0f32; 8];
    let mut bi = [0f32; 8];
    for blk in 0..blocks {
        let slot = &scratch[blk * k * 2..(blk + 1) * k * 2];
        bd[..k].copy_from_slice(&slot[..k]);
        bi[..k].copy_from_slice(&slot[k..2 * k]);
        for t in 0..k {
            let idx = bi[t].to_bits();
            if idx != u32::MAX {
                insert_top_u(&mut best_d[..k], &mut best_i[..k], bd[t], idx);
            }
        }
    }
    let mut found = 0;
    for &i in &best_i[..k] {
        if i != u32::MAX {
            out[found] = i;
            found += 1;
        }
    }
    found
}

/// Inserts `(d, i)` into the ascending top list (indices stored as f32 bits).
fn insert_top(dd: &mut [f32], ii: &mut [f32], d: f32, i: u32) {
    let k = dd.len();
    if d >= dd[k - 1] {
        return;
    }
    let mut p = k - 1;
    while p > 0 && d < dd[p - 1] {
        dd[p] = dd[p - 1];
        ii[p] = ii[p - 1];
        p -= 1;
    }
    dd[p] = d;
    ii[p] = f32::from_bits(i);
}

fn insert_top_u(dd: &mut [f32], ii: &mut [u32], d: f32, i: u32) {
    let k = dd.len();
    if d > dd[k - 1] || (d == dd[k - 1] && i >= ii[k - 1]) {
        return;
    }
    let mut p = k - 1;
    while p > 0 && (d < dd[p - 1] || (d == dd[p - 1] && i < ii[p - 1])) {
        dd[p] = dd[p - 1];
        ii[p] = ii[p - 1];
        p -= 1;
    }
    dd[p] = d;
    ii[p] = i;
}

/// A part's score against one bank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BankScore {
    /// Image score `s = w · s*`.
    pub score: f32,
    /// `s* = max_j d_j`.
    pub s_star: f32,
    /// The re-weighting factor `w`.
    pub weight: f32,
    /// Patch `j*` and its nearest bank row `m*`.
    pub patch: usize,
    pub nearest: u32,
}

/// Scratch for [`score_part`]: the nearest-neighbour tiles and the k-nearest scan.
pub fn score_scratch_len(threads: usize, bank_rows: usize) -> usize {
    nearest_scratch_len(threads) + knn_scratch_len(bank_rows, 3)
}

/// Scores a part's (normalised) patch features `x` against `bank`: fills `dmap` (one
/// distance per patch, the segmentation map on the patch grid) and `nn` (nearest rows),
/// and returns the re-weighted image score (SPEC §7, D = sqrt(feature dim)).
#[allow(clippy::too_many_arguments)]
pub fn score_part(
    pool: &Pool,
    x: &[f32],
    bank: BankView<'_>,
    exclude: Option<(&[u32], u32)>,
    dmap: &mut [f32],
    nn: &mut [u32],
    scratch: &mut [f32],
) -> BankScore {
    let n = x.len() / bank.dim;
    let (s_near, s_knn) = scratch.split_at_mut(nearest_scratch_len(pool.threads()));
    nearest(pool, x, bank, exclude, &mut dmap[..n], &mut nn[..n], s_near);
    reweighted_score(pool, x, bank, exclude, &dmap[..n], &nn[..n], s_knn)
}

/// The re-weighted image score (SPEC §7) from a finished nearest-neighbour search
/// (`dmap`, `nn` as [`nearest`] fills them, by any backend). `scratch`:
/// [`knn_scratch_len`]`(bank rows, 3)` floats.
pub fn reweighted_score(
    pool: &Pool,
    x: &[f32],
    bank: BankView<'_>,
    exclude: Option<(&[u32], u32)>,
    dmap: &[f32],
    nn: &[u32],
    s_knn: &mut [f32],
) -> BankScore {
    let dim = bank.dim;
    let n = dmap.len();
    // s* and j*: first maximum.
    let mut j_star = 0;
    for j in 1..n {
        if dmap[j] > dmap[j_star] {
            j_star = j;
        }
    }
    let s_star = dmap[j_star];
    let m_star = nn[j_star];
    if m_star == u32::MAX {
        return BankScore {
            score: s_star,
            s_star,
            weight: 1.0,
            patch: j_star,
            nearest: m_star,
        };
    }
    let mut knn = [0u32; 3];
    let found = match bank.neighbours {
        // The table is knn_scan's answer for every row of the whole bank (m* first).
        Some(table) if table_answers(table, bank, m_star, exclude) => {
            let m = m_star as usize * TABLE_NEIGHBOURS;
            knn[0] = m_star;
            let mut found = 1;
            for &b in &table[m..m + TABLE_NEIGHBOURS] {
                if b != NO_ROW {
                    knn[found] = b;
                    found += 1;
                }
            }
            found
        }
        _ => knn_scan(
            pool,
            bank.row(m_star as usize),
            bank,
            exclude,
            3,
            &mut knn,
            s_knn,
        ),
    };
    let d_sqrt = (dim as f64).sqrt();
    let xj = &x[j_star * dim..(j_star + 1) * dim];
    let denom: f64 = knn[1..found.max(1)]
        .iter()
        .map(|&b| ((sq_dist(xj, bank.row(b as usize)) as f64).sqrt() / d_sqrt).exp())
        .sum();
    let weight = if denom > 0.0 {
        (1.0 - (s_star as f64 / d_sqrt).exp() / denom) as f32
    } else {
        1.0
    };
    BankScore {
        score: weight * s_star,
        s_star,
        weight,
        patch: j_star,
        nearest: m_star,
    }
}

/// Whether the neighbour table's entries of row `m` (not excluded itself) are
/// [`knn_scan`]'s answer for `m` with `exclude`. Without exclusion they are. With it,
/// when both entries are rows that are not excluded and the first is at a computed
/// distance above 0 from m: the whole bank's 3 nearest (by (d, index)) are then m (the
/// only row at distance 0: a second one would precede the first entry), b_1 and b_2,
/// all kept by the exclusion, so they are also the 3 nearest of the rows it keeps.
fn table_answers(
    table: &[u32],
    bank: BankView<'_>,
    m: u32,
    exclude: Option<(&[u32], u32)>,
) -> bool {
    let Some((origin, id)) = exclude else {
        return true;
    };
    let t = m as usize * TABLE_NEIGHBOURS;
    let (b1, b2) = (table[t], table[t + 1]);
    let kept = |b: u32| b != NO_ROW && origin[b as usize] != id;
    kept(m) && kept(b1) && kept(b2) && sq_dist(bank.row(m as usize), bank.row(b1 as usize)) > 0.0
}

/// The neighbour table of a bank and how it was computed.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourTable {
    /// [`TABLE_NEIGHBOURS`] rows per bank row ([`NO_ROW`] where the bank has too few).
    pub rows: Vec<u32>,
    /// Distances computed ([`sq_dist`]'s: once per pair of rows, both ways round within a
    /// tile).
    pub distances: u64,
}

/// The error bound of the GEMM form against [`sq_dist`] for squared norms `q_sq`, `b_sq`
/// of width `n`: with u = 2^-24 and g = γ_{n+2} = (n+2)u / (1 − (n+2)u), the dot product
/// (any summation order) is off by at most g·QB, each f32 norm by g·Q² (g·B²), the two
/// operations of `‖q‖² − 2q·b + ‖b‖²` by 3u·S and `sq_dist` (rounded differences and
/// squares, summed in order) by g·S, S = (Q + B)²: in all (2g + 3u)·S. Q and B are bounded
/// from the computed squares (Q² ≤ fl(Q²)(1 + 2g)); the result is rounded up.
pub(crate) fn gemm_form_bound(q_sq: f32, b_sq: f32, n: usize) -> f64 {
    let u = 2f64.powi(-24);
    let g = (n as f64 + 2.0) * u / (1.0 - (n as f64 + 2.0) * u);
    let q = (q_sq as f64 * (1.0 + 2.0 * g)).sqrt();
    let b = (b_sq as f64 * (1.0 + 2.0 * g)).sqrt();
    (2.0 * g + 3.0 * u) * (q + b) * (q + b) * (1.0 + 2f64.powi(-20))
}

/// The 3 smallest `(distance, row)` pairs seen, in (distance, row) order: the lowest row
/// wins a tie whatever order the pairs come in; an infinite distance is never kept (as
/// [`knn_scan`]).
#[derive(Clone, Copy)]
pub(crate) struct Nearest3 {
    pub(crate) d: [f32; 3],
    pub(crate) i: [u32; 3],
}

impl Nearest3 {
    pub(crate) const EMPTY: Nearest3 = Nearest3 {
        d: [f32::INFINITY; 3],
        i: [NO_ROW; 3],
    };

    #[inline]
    pub(crate) fn offer(&mut self, d: f32, row: u32) {
        if d < f32::INFINITY && (d < self.d[2] || (d == self.d[2] && row < self.i[2])) {
            insert_top_u(&mut self.d, &mut self.i, d, row);
        }
    }

    /// The table's entry: the three nearest without the first (the row itself, or its
    /// copy at a lower index).
    pub(crate) fn table_entry(&self) -> &[u32] {
        &self.i[1..3]
    }
}

/// Rows of [`neighbour_table`] per tile (the lanes of [`super::lanes`]).
const TABLE_TILE: usize = super::lanes::LANES;

/// For every bank row m, the rows PatchCore's re-weighting takes (SPEC §7): the 3 rows
/// nearest to m by [`sq_dist`] (m itself included, ties to the lower index), without the
/// first; exactly what [`knn_scan`] returns for m's row with no exclusion, so scores with
/// the table are the scan's bits. A row exactly duplicated at a lower index therefore
/// gets itself as b_1 (the duplicate comes first), as with the scan.
///
/// Every distance is [`sq_dist`]'s own, computed once per pair of rows: [`sq_dist`] is
/// symmetric bit for bit (`(a − b)² = (b − a)²`), so the pair (i, j) of tiles i ≤ j
/// ([`TABLE_TILE`] rows each) is computed once, tile i in the lanes of
/// [`super::lanes::sq_dists`] (each lane the scalar sum of its row, bit-identical) and
/// the rows of tile j streamed past, and each distance is offered to both rows. No bound,
/// no candidate list: in 1 920 dimensions the GEMM form's rounding bound is wider than
/// the gap between neighbours (91 % of the fused rows of a 50-part fit had to be
/// re-scored one pair at a time), while the lanes give every exact distance for a few
/// GEMM passes' time. Each worker keeps its own lists of every row; they are merged in
/// (distance, row) order, which does not depend on which worker saw which pair.
///
/// `None` when the bank holds a value that is not finite (the scan's handling of NaN
/// distances is then kept by not storing a table). `progress(done, total)` in rows,
/// after each batch of tile pairs (every task has the same number of pairs).
pub fn neighbour_table(
    pool: &Pool,
    bank: BankView<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Option<NeighbourTable> {
    use super::lanes::{sq_dists, tile_len, to_tile, LANES};
    if !bank.data.iter().chain(bank.sq_norms).all(|v| v.is_finite()) {
        return None;
    }
    let (n, dim) = (bank.n, bank.dim);
    let threads = pool.threads().max(1);
    let tiles = n.div_ceil(TABLE_TILE);
    // Task t takes tiles t and tiles − 1 − t: (tiles − t) + (t + 1) tile pairs, the same
    // for every task.
    let tasks = tiles.div_ceil(2);
    let mut near = vec![Nearest3::EMPTY; threads * n];
    let mut lanes = vec![0f32; threads * tile_len(dim)];
    let mut dists = vec![[0f32; LANES]; threads * TABLE_TILE];
    let (np, lp, dp) = (
        SharedMut::new(&mut near),
        SharedMut::new(&mut lanes),
        SharedMut::new(&mut dists),
    );
    let rows_of = |t: usize| t * TABLE_TILE..((t + 1) * TABLE_TILE).min(n);
    let batch = threads * 2;
    let mut t0 = 0;
    while t0 < tasks {
        let t1 = (t0 + batch).min(tasks);
        pool.run(t1 - t0, &|task, worker| {
            // SAFETY: each worker owns its lists, its tile and its distances.
            let near = unsafe { np.slice(worker * n, n) };
            let tile = unsafe { lp.slice(worker * tile_len(dim), tile_len(dim)) };
            let out = unsafe { dp.slice(worker * TABLE_TILE, TABLE_TILE) };
            let t = t0 + task;
            let last = tiles - 1 - t;
            let pair = [t, last];
            for &i in &pair[..if last == t { 1 } else { 2 }] {
                let own = rows_of(i);
                to_tile(&bank.data[own.start * dim..own.end * dim], dim, tile);
                for j in i..tiles {
                    let other = rows_of(j);
                    sq_dists(
                        tile,
                        &bank.data[other.start * dim..other.end * dim],
                        dim,
                        out,
                    );
                    for (b, d) in other.clone().zip(out.iter()) {
                        for (a, &e) in own.clone().zip(d.iter()) {
                            near[a].offer(e, b as u32);
                            // Within tile i, (a, b) also comes as (b, a).
                            if j != i {
                                near[b].offer(e, a as u32);
                            }
                        }
                    }
                }
            }
        });
        t0 = t1;
        progress(n * t0 / tasks, n);
    }
    let mut rows = vec![NO_ROW; n * TABLE_NEIGHBOURS];
    for (m, out) in rows.chunks_exact_mut(TABLE_NEIGHBOURS).enumerate() {
        let mut all = Nearest3::EMPTY;
        for w in 0..threads {
            let seen = near[w * n + m];
            for (&d, &i) in seen.d.iter().zip(&seen.i) {
                if i != NO_ROW {
                    all.offer(d, i);
                }
            }
        }
        out.copy_from_slice(all.table_entry());
    }
    // Tile pairs i < j once, each tile with itself both ways round.
    let own_pairs: usize = (0..tiles).map(|t| rows_of(t).len().pow(2)).sum();
    Some(NeighbourTable {
        rows,
        distances: ((n * n + own_pairs) / 2) as u64,
    })
}

/// Candidates per query kept by the bf16 pass of [`nearest_bf16`].
const BF16_KEEP: usize = 8;

/// Whether this CPU runs [`nearest_bf16`]'s fast pass (AVX512-BF16).
pub fn bf16_search_available() -> bool {
    super::gemm_bf16::available()
}

/// Floats of scratch [`nearest_bf16`] needs per worker for rows of `dim` values: the
/// packed bf16 queries, the bank rows' bf16 panel and the dot-product tiles.
/// The exact scan of the queries whose candidates did not suffice uses [`nearest`]'s
/// packing buffer and a copy of those queries.
fn bf16_worker_floats(dim: usize) -> usize {
    use super::gemm_bf16::{packed_len, PANEL_LEN, TILE_COLS, TILE_ROWS};
    packed_len(QUERY_BLOCK, dim).div_ceil(2)
        + PANEL_LEN
        + QUERY_BLOCK.div_ceil(TILE_COLS) * TILE_ROWS * TILE_COLS
        + QUERY_PACK_FLOATS
        + QUERY_BLOCK * dim
}

/// Floats of scratch [`nearest_bf16`] needs with a pool of `threads` threads.
pub fn nearest_bf16_scratch_len(threads: usize, dim: usize) -> usize {
    threads.max(1) * bf16_worker_floats(dim)
}

/// The bound of |g − d²| between the bf16 form g (bf16 operands, f32 accumulation
/// through `vdpbf16ps`) and [`nearest`]'s f32 form d² of the same query and bank row, for
/// squared norms `q_sq`, `b_sq` (the same f32 values enter both forms, so their errors
/// cancel) and width `n`. With h = 2⁻⁸ (bf16), u = 2⁻²⁴, γ = γ_{n+2}:
/// the bf16 dot is off the exact q·b by at most (2h + h² + γ(1+h)²)·QB (rounding both
/// operands, Cauchy–Schwarz, then n rounded additions) plus flushed subnormals (inputs
/// and sums; bounded by the absolute term), the f32 dot by γ·QB, and each form's two
/// operations by 2u·S, S = (Q + B)²:
/// |g − d²| ≤ 2(2h + h² + γ(1+h)² + γ)·QB + 5u·S + 2⁻¹²⁰·n·(1 + Q + B)².
pub fn bf16_form_bound(q_sq: f32, b_sq: f32, n: usize) -> f64 {
    let (h, u) = (2f64.powi(-8), 2f64.powi(-24));
    let nn = n as f64;
    let g = (nn + 2.0) * u / (1.0 - (nn + 2.0) * u);
    let q = (q_sq as f64 * (1.0 + 2.0 * g)).sqrt();
    let b = (b_sq as f64 * (1.0 + 2.0 * g)).sqrt();
    let e = 2.0 * (2.0 * h + h * h + g * (1.0 + h) * (1.0 + h) + g) * q * b
        + 5.0 * u * (q + b) * (q + b)
        + 2f64.powi(-120) * nn * (1.0 + q + b) * (1.0 + q + b);
    e * (1.0 + 2f64.powi(-20))
}

/// [`nearest`]'s squared distance of query `x` (squared norm `qq`, as [`nearest`]
/// computes it) to bank row `b`: the micro-kernel's dot product (k in order from 0, fused
/// multiply-adds on x86, separate products on the portable kernel), then
/// `qq − 2·dot + ‖b‖²` (the plain loop's sum where [`nearest`] does not pack).
fn f32_form_sq_dist(ker: Kernel, x: &[f32], qq: f32, bank: BankView<'_>, b: usize) -> f32 {
    let row = bank.row(b);
    let packed = query_block(bank.dim) * bank.dim <= QUERY_PACK_FLOATS && bank.n >= ker.mr;
    let dot = if !packed {
        // nearest's plain loop.
        x.iter().zip(row).map(|(a, c)| a * c).sum()
    } else if ker.isa == super::gemm::Isa::Portable {
        x.iter().zip(row).fold(0f32, |s, (a, c)| s + a * c)
    } else {
        x.iter().zip(row).fold(0f32, |s, (a, c)| a.mul_add(*c, s))
    };
    qq - 2.0 * dot + bank.sq_norms[b]
}

/// [`nearest`]'s result (the same rows and distance bits, no exclusion) through a bf16
/// first pass (issue 20 item 5): bf16 dot products with f32 accumulation
/// ([`super::gemm_bf16::walk_dots`]) keep [`BF16_KEEP`] candidates per query by the bf16
/// form g; with U = g₁ + E₁ (the smallest g and its bound, [`bf16_form_bound`]) every
/// row that can beat or tie the f32 winner has g − E ≤ U, and those are re-scored with
/// [`nearest`]'s exact f32 arithmetic. A query whose kept list may miss such a row (its
/// last g − E_max ≤ U), whose values do not fit bf16, or a CPU without AVX512-BF16, takes
/// the f32 form over the whole bank. Returns how many queries did (no allocation).
/// `scratch`: [`nearest_bf16_scratch_len`].
pub fn nearest_bf16(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    dist: &mut [f32],
    index: &mut [u32],
    scratch: &mut [f32],
) -> usize {
    let dim = bank.dim;
    assert_eq!(queries.len() % dim, 0, "nearest_bf16: ragged queries");
    let nq = queries.len() / dim;
    assert!(
        dist.len() >= nq && index.len() >= nq,
        "nearest_bf16: outputs"
    );
    let per_worker = bf16_worker_floats(dim);
    assert!(
        scratch.len() >= pool.threads().max(1) * per_worker,
        "nearest_bf16: scratch too small"
    );
    if nq == 0 {
        return 0;
    }
    let ker = Kernel::best();
    let fast = bf16_search_available();
    // Bank values beyond bf16's finite range (or not finite): no bound, every query exact.
    let fits = |v: &f32| v.abs() <= 3.0e38;
    let b_max = if bank.data.iter().all(fits) && bank.sq_norms.iter().all(fits) {
        bank.sq_norms.iter().fold(0f32, |m, &v| m.max(v))
    } else {
        f32::INFINITY
    };
    let tasks = nq.div_ceil(QUERY_BLOCK);
    let scan_count = std::sync::atomic::AtomicUsize::new(0);
    let (dp, ip, sp) = (
        SharedMut::new(dist),
        SharedMut::new(index),
        SharedMut::new(scratch),
    );
    pool.run(tasks, &|task, worker| {
        use super::gemm_bf16::{pack_into, walk_dots, TILE_COLS, TILE_ROWS};
        let q0 = task * QUERY_BLOCK;
        let qn = QUERY_BLOCK.min(nq - q0);
        // SAFETY: each worker owns its scratch slice; each task its output range.
        let work = unsafe { sp.slice(worker * per_worker, per_worker) };
        let (work, scan_work) =
            work.split_at_mut(per_worker - QUERY_PACK_FLOATS - QUERY_BLOCK * dim);
        let (scan_pack, scan_queries) = scan_work.split_at_mut(QUERY_PACK_FLOATS);
        let d_out = unsafe { dp.slice(q0, qn) };
        let i_out = unsafe { ip.slice(q0, qn) };
        let q = &queries[q0 * dim..(q0 + qn) * dim];
        let mut qnorm = [0f32; QUERY_BLOCK];
        sq_norms(q, dim, &mut qnorm[..qn]);
        let mut kd = [[f32::INFINITY; BF16_KEEP]; QUERY_BLOCK];
        let mut ki = [[NO_ROW; BF16_KEEP]; QUERY_BLOCK];
        if fast {
            let packed_floats = super::gemm_bf16::packed_len(QUERY_BLOCK, dim).div_ceil(2);
            let (packed, rest) = work.split_at_mut(packed_floats);
            let (panel, tiles) = rest.split_at_mut(super::gemm_bf16::PANEL_LEN);
            let packed: &mut [u16] = bytemuck::cast_slice_mut(packed);
            pack_into(Mat::new(q, qn, dim), packed);
            let panel: &mut [u32] = bytemuck::cast_slice_mut(panel);
            let last = BF16_KEEP - 1;
            let bank_rows = Mat::new(bank.data, bank.n, dim);
            walk_dots(
                bank_rows,
                packed,
                qn,
                panel,
                tiles,
                |r0, rows_here, tiles| {
                    for s in 0..qn.div_ceil(TILE_COLS) {
                        let j0 = s * TILE_COLS;
                        let cols = TILE_COLS.min(qn - j0);
                        let tile = &tiles[s * TILE_ROWS * TILE_COLS..];
                        for i in 0..rows_here {
                            let row = r0 + i;
                            let bn = bank.sq_norms[row];
                            for (jj, &dot) in
                                tile[i * TILE_COLS..i * TILE_COLS + cols].iter().enumerate()
                            {
                                let j = j0 + jj;
                                let g = qnorm[j] - 2.0 * dot + bn;
                                let r = row as u32;
                                if g < kd[j][last] || (g == kd[j][last] && r < ki[j][last]) {
                                    insert_top_u(&mut kd[j], &mut ki[j], g, r);
                                }
                            }
                        }
                    }
                },
            );
        }
        // Queries to scan exactly: their rows, squared norms and positions.
        let mut scan_at = [0usize; QUERY_BLOCK];
        let mut scan_norm = [0f32; QUERY_BLOCK];
        let mut scanned = 0;
        for (j, x) in q.chunks_exact(dim).enumerate() {
            let qq = qnorm[j];
            let (gd, gi) = (&kd[j], &ki[j]);
            let reach = if gi[0] == NO_ROW || !x.iter().all(fits) {
                f64::INFINITY
            } else {
                gd[0] as f64 + bf16_form_bound(qq, bank.sq_norms[gi[0] as usize], dim)
            };
            let kept = BF16_KEEP.min(bank.n);
            let complete = fast
                && reach < f64::INFINITY
                && (bank.n <= BF16_KEEP
                    || gd[BF16_KEEP - 1] as f64 - bf16_form_bound(qq, b_max, dim) > reach);
            let (mut best, mut arg) = (f32::INFINITY, NO_ROW);
            let mut take = |b: usize| {
                let d2 = f32_form_sq_dist(ker, x, qq, bank, b);
                // As nearest's strict `<` from +inf in bank order: the lowest row of equal
                // d², an infinite or NaN d² never.
                if d2 < best || (d2 == best && d2 < f32::INFINITY && (b as u32) < arg) {
                    best = d2;
                    arg = b as u32;
                }
            };
            if complete {
                for t in 0..kept {
                    let b = gi[t] as usize;
                    if gd[t] as f64 - bf16_form_bound(qq, bank.sq_norms[b], dim) <= reach {
                        take(b);
                    }
                }
            } else {
                scan_at[scanned] = j;
                scan_norm[scanned] = qq;
                scan_queries[scanned * dim..(scanned + 1) * dim].copy_from_slice(x);
                scanned += 1;
                continue;
            }
            d_out[j] = best.max(0.0).sqrt();
            i_out[j] = arg;
        }
        if scanned > 0 {
            // nearest's own search on those queries (the same bits: each query's result
            // depends only on its row).
            let (mut sd, mut si) = ([f32::INFINITY; QUERY_BLOCK], [NO_ROW; QUERY_BLOCK]);
            let sq = &scan_queries[..scanned * dim];
            let qb = query_block(dim);
            if qb * dim <= QUERY_PACK_FLOATS && bank.n >= ker.mr {
                // In blocks of nearest's size (what its packing buffer holds).
                for c0 in (0..scanned).step_by(qb) {
                    let c1 = (c0 + qb).min(scanned);
                    let (sd, si) = (&mut sd[c0..c1], &mut si[c0..c1]);
                    let x = &sq[c0 * dim..c1 * dim];
                    let norms = &scan_norm[c0..c1];
                    search_block(ker, x, c1 - c0, norms, bank, None, scan_pack, sd, si);
                }
            } else {
                for (t, x) in sq.chunks_exact(dim).enumerate() {
                    for b in 0..bank.n {
                        let dot: f32 = x.iter().zip(bank.row(b)).map(|(a, c)| a * c).sum();
                        fold(
                            &mut sd[t],
                            &mut si[t],
                            scan_norm[t] - 2.0 * dot + bank.sq_norms[b],
                            b,
                            None,
                        );
                    }
                }
            }
            for t in 0..scanned {
                d_out[scan_at[t]] = sd[t].max(0.0).sqrt();
                i_out[scan_at[t]] = si[t];
            }
        }
        scan_count.fetch_add(scanned, std::sync::atomic::Ordering::Relaxed);
    });
    scan_count.into_inner()
}
