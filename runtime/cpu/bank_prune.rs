//! Exact pruning of the nearest-bank-row search (issue 20 items 5–6): the same rows and
//! distance bits as [`super::bank_search::nearest`], with whole clusters of bank rows
//! skipped when no row in them can win.
//!
//! Partition ([`BankPartition::build`], at fit time; stored in the bank file and read in
//! place through [`PartitionView`]): the first `k` bank rows are the centres (a bank is
//! stored in coreset order, farthest-first, so they are spread over it); every row joins
//! its nearest centre; `r_c` bounds the true distance of cluster c's rows to its centre
//! (f64, rounded up, stored as the next f32 up). `order` lists the rows cluster by
//! cluster; `starts` where each cluster begins.
//!
//! Search: one pass of the micro-kernel over the centres per block of queries (before the
//! queries are grouped by their nearest centre; the bounds are kept per query): the GEMM
//! form `g = ‖q‖² − 2q·c + ‖c‖²` to every centre gives a lower bound of the true
//! ‖q − c‖ (`g − E`, E of `gemm_form_bound` with the bank's largest norm); a row b of
//! cluster c then has true distance ≥ t = that bound − r_c, and its computed `d² ≥ t² − E` (the same bound against [`nearest`]'s form). The
//! clusters are visited nearest first; a cluster is skipped for a strip of queries when
//! every query of the strip has `t > 0` and `t² − E > best` (in f64): its rows have a
//! computed d² above the running best, so they can neither win nor tie. The rows that are
//! visited are taken a kernel row group at a time and go, read in place, through the
//! micro-kernel's arithmetic exactly as [`nearest`] computes them (the same packed queries, the k
//! order of the micro-kernel: each pair's dot product does not depend on its neighbours
//! in the tile), and the minimum keeps the lowest original row among equal d² — so the
//! result is [`nearest`]'s, bit for bit, whatever the partition.
//!
//! Per-row bound ([`super::bank_proj`], where the partition has one: banks of 64 values
//! or more fitted since it was added): in a visited cluster, the rows' records (32
//! projected coordinates and a few margins, stored in cluster order) go through the
//! micro-kernel against the strip's projected queries, and a row joins the panel only
//! when its projection bound is not above the running best of some strip query that the
//! cluster bound leaves the cluster to (the others take none of its rows); the bound
//! also carries a sharper rounding margin of nearest's d² than `gemm_form_bound`
//! (per pair, from the order of the sums). Without it (files fitted before), every row
//! of a visited cluster is computed.
//!
//! Memory: no copy of the bank; the search works in planned scratch
//! ([`pruned_scratch_len`]), so inspection allocates nothing.
//!
//! [`nearest`]: super::bank_search::nearest

use super::bank_proj::{
    f32_down, f32_up, Projection, ProjectionView, QueryBound, StripSides, PROJ_DIMS, STRIP,
};
use super::bank_search::{
    gemm_form_bound, nearest, nearest_scratch_len, query_block, search_block, sq_norms, walk_bank,
    BankView, NO_ROW, QUERY_BLOCK, QUERY_PACK_FLOATS,
};
use super::gemm::{pack_rhs, prefetch_to_l2, Kernel, Mat, Operand, Start};
use super::pool::{Pool, SharedMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per cluster aimed at by [`BankPartition::clusters_for`].
pub const ROWS_PER_CLUSTER: usize = 64;
/// Most clusters.
pub const MAX_CLUSTERS: usize = 4096;
/// Floats at the start of a visited row fetched ahead of the kernel (4 cache lines).
const PREFETCH_FLOATS: usize = 64;
/// Most rows of a micro-kernel's row group (the panel of gathered rows holds this many).
const MAX_MR: usize = 12;

/// (query, bank row) pairs the searches were asked for, and those computed.
#[derive(Debug, Default)]
pub struct PairCounts {
    asked: AtomicU64,
    computed: AtomicU64,
    projected: AtomicU64,
}

impl PairCounts {
    pub fn get(&self) -> (u64, u64) {
        (
            self.asked.load(Ordering::Relaxed),
            self.computed.load(Ordering::Relaxed),
        )
    }

    /// Pairs whose projection bound was evaluated (each costs `PROJ_DIMS` of a pair's
    /// `dim` multiply-adds).
    pub fn projected(&self) -> u64 {
        self.projected.load(Ordering::Relaxed)
    }

    fn add(&self, asked: u64, computed: u64, projected: u64) {
        self.asked.fetch_add(asked, Ordering::Relaxed);
        self.computed.fetch_add(computed, Ordering::Relaxed);
        self.projected.fetch_add(projected, Ordering::Relaxed);
    }
}

/// A partition built from a bank (module doc), owned: what the fit builds and stores.
#[derive(Debug)]
pub struct BankPartition {
    /// Bank rows in cluster order; cluster c is `order[starts[c]..starts[c + 1]]`.
    pub order: Vec<u32>,
    pub starts: Vec<u32>,
    /// Upper bound of the true distance from each centre to each row of its cluster.
    pub radii: Vec<f32>,
    /// The per-row projection bound's data ([`super::bank_proj`]), for banks wide enough.
    pub projection: Option<Projection>,
    counts: PairCounts,
}

/// A partition read in place (from a bank file, or borrowed from a [`BankPartition`])
/// for the bank it was built from: the centres are that bank's first `radii.len()` rows.
#[derive(Clone, Copy, Debug)]
pub struct PartitionView<'a> {
    pub order: &'a [u32],
    pub starts: &'a [u32],
    pub radii: &'a [f32],
    /// Largest squared norm of the bank.
    pub b_max: f32,
    /// The per-row projection bound, where the partition has one.
    pub projection: Option<ProjectionView<'a>>,
    /// Where the searches count their pairs (the fit's report), if anywhere.
    pub counts: Option<&'a PairCounts>,
}

impl BankPartition {
    /// The number of clusters used for a bank of `n` rows.
    pub fn clusters_for(n: usize) -> usize {
        (n / ROWS_PER_CLUSTER).clamp(1, MAX_CLUSTERS)
    }

    /// Partitions `bank` into `clusters` clusters. `None` when the pruned search would
    /// not apply (a value that is not finite, a bank smaller than the largest kernel row
    /// group, rows too wide for the packed search): [`nearest`] then runs.
    pub fn build(pool: &Pool, bank: BankView<'_>, clusters: usize) -> Option<Self> {
        let (n, dim) = (bank.n, bank.dim);
        // At least any kernel's row group, whatever the machine searching it.
        let k = clusters.clamp(MAX_MR, n.max(MAX_MR));
        let packed = query_block(dim) * dim <= QUERY_PACK_FLOATS;
        if !packed || n < k || !bank.data.iter().chain(bank.sq_norms).all(|v| v.is_finite()) {
            return None;
        }
        let centres = BankView::new(&bank.data[..k * dim], &bank.sq_norms[..k], dim);
        // Any assignment is valid (the radii are measured); the nearest keeps them small.
        let mut near_d = vec![0f32; n];
        let mut owner = vec![0u32; n];
        let mut scratch = vec![0f32; nearest_scratch_len(pool.threads())];
        nearest(
            pool,
            bank.data,
            centres,
            None,
            &mut near_d,
            &mut owner,
            &mut scratch,
        );
        let mut radius = vec![0f64; k];
        let mut counts = vec![0u32; k + 1];
        for (i, &c) in owner.iter().enumerate() {
            let c = (c as usize).min(k - 1);
            let r = exact_dist(bank.row(i), centres.row(c));
            radius[c] = radius[c].max(r);
            counts[c + 1] += 1;
        }
        // f64 sums of 2 000 exact squares are within 1e-12 relative: rounded up, then to
        // the f32 at or above.
        let radii = radius.iter().map(|&r| f32_up(r * (1.0 + 1e-9))).collect();
        let mut starts = counts;
        for c in 0..k {
            starts[c + 1] += starts[c];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; n];
        for (i, &c) in owner.iter().enumerate() {
            let c = (c as usize).min(k - 1);
            order[next[c] as usize] = i as u32;
            next[c] += 1;
        }
        let projection = Projection::build(pool, bank.data, bank.sq_norms, dim, &order);
        Some(BankPartition {
            order,
            starts,
            radii,
            projection,
            counts: PairCounts::default(),
        })
    }

    /// An owned copy of a stored partition (to count its searches' pairs).
    pub fn copied(p: PartitionView<'_>) -> Self {
        BankPartition {
            order: p.order.to_vec(),
            starts: p.starts.to_vec(),
            radii: p.radii.to_vec(),
            projection: p.projection.map(|v| Projection {
                basis: v.basis.to_vec(),
                rows: v.rows.to_vec(),
            }),
            counts: PairCounts::default(),
        }
    }

    /// The same partition without its projection bound (the cluster bound alone).
    pub fn without_projection(mut self) -> Self {
        self.projection = None;
        self
    }

    pub fn clusters(&self) -> usize {
        self.radii.len()
    }

    /// (query, row) pairs asked for and computed by the searches through
    /// [`BankPartition::view`] so far.
    pub fn pair_counts(&self) -> (u64, u64) {
        self.counts.get()
    }

    /// Pairs whose projection bound the searches evaluated so far.
    pub fn projected_pairs(&self) -> u64 {
        self.counts.projected()
    }

    /// The partition for searching `bank` (the bank it was built from), counting pairs.
    pub fn view(&self, bank: &BankView<'_>) -> Result<PartitionView<'_>, String> {
        let mut v = PartitionView::new(bank, &self.order, &self.starts, &self.radii)?;
        if let Some(p) = &self.projection {
            v = v.with_projection(bank, &p.basis, &p.rows)?;
        }
        v.counts = Some(&self.counts);
        Ok(v)
    }
}

impl<'a> PartitionView<'a> {
    /// Checks that the arrays describe a partition of `bank`'s rows (every row exactly
    /// once, clusters in order, finite radii); the error says what is wrong.
    pub fn new(
        bank: &BankView<'_>,
        order: &'a [u32],
        starts: &'a [u32],
        radii: &'a [f32],
    ) -> Result<Self, String> {
        let (n, k) = (bank.n, radii.len());
        if k == 0 || k > n || starts.len() != k + 1 || order.len() != n {
            return Err(format!(
                "{k} clusters, {} starts, {} rows in order for a bank of {n} rows",
                starts.len(),
                order.len()
            ));
        }
        if starts[0] != 0 || starts[k] as usize != n || starts.windows(2).any(|w| w[0] > w[1]) {
            return Err("cluster starts not ascending from 0 to the bank's rows".into());
        }
        if radii.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
            return Err("a cluster radius that is not finite and ≥ 0".into());
        }
        // Every row once (the bank file's checksum guards the rest).
        let mut seen = vec![false; n];
        for &r in order {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(format!("row {r} out of range or listed twice")),
            }
        }
        Ok(PartitionView {
            order,
            starts,
            radii,
            b_max: bank.sq_norms.iter().fold(0f32, |m, &v| m.max(v)),
            projection: None,
            counts: None,
        })
    }

    /// The partition with the per-row projection bound of `basis` and `rows` (records in
    /// this partition's cluster order, [`super::bank_proj`]); checked.
    pub fn with_projection(
        mut self,
        bank: &BankView<'_>,
        basis: &'a [f32],
        rows: &'a [f32],
    ) -> Result<Self, String> {
        self.projection = Some(ProjectionView::new(basis, rows, bank.dim, bank.n)?);
        Ok(self)
    }

    pub fn clusters(&self) -> usize {
        self.radii.len()
    }

    fn count(&self, asked: usize, computed: u64, projected: u64) {
        if let Some(c) = self.counts {
            c.add(asked as u64, computed, projected);
        }
    }
}

/// ‖a − b‖ in f64 (differences of f32 values are exact in f64).
fn exact_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Floats of the per-worker part of [`pruned_scratch_len`]: packed queries, the visiting
/// order and keys of the clusters, the panel of gathered rows, the block's projected
/// queries and their packed form.
fn pruned_worker_floats(dim: usize, clusters: usize) -> usize {
    QUERY_PACK_FLOATS.max(nearest_scratch_len(1))
        + 2 * clusters
        + MAX_MR * dim
        + 2 * QUERY_BLOCK * PROJ_DIMS
}

/// Floats of scratch [`nearest_pruned`] needs for `queries` rows of `dim` values against
/// a partition of `clusters` clusters with a pool of `threads` threads.
pub fn pruned_scratch_len(threads: usize, queries: usize, dim: usize, clusters: usize) -> usize {
    // Per query: its nearest centre, its place, its result, the lower bounds of its
    // distance to every centre; the queries grouped by centre; per centre its place in
    // the grouping.
    4 * queries
        + queries * clusters
        + clusters
        + queries * dim
        + threads.max(1) * pruned_worker_floats(dim, clusters)
}

/// [`nearest`]'s result for `queries` against `bank`, with the clusters of `part` that
/// cannot hold the answer skipped (module doc). `exclude` as in [`nearest`]. `scratch`:
/// [`pruned_scratch_len`]; no allocation.
///
/// The queries are searched grouped by their nearest centre (a skip is decided per strip
/// of the kernel's `nr` queries, so a strip of similar queries skips more); each query's
/// result depends only on its own row, so the grouping changes no bit. A bank smaller
/// than the kernel's row group, or fewer centres than that, takes [`nearest`]'s search.
#[allow(clippy::too_many_arguments)]
pub fn nearest_pruned(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    part: PartitionView<'_>,
    exclude: Option<(&[u32], u32)>,
    dist: &mut [f32],
    index: &mut [u32],
    scratch: &mut [f32],
) {
    let dim = bank.dim;
    assert!(
        part.order.len() == bank.n && part.clusters() <= bank.n,
        "nearest_pruned: partition of another bank"
    );
    assert_eq!(queries.len() % dim, 0, "nearest_pruned: ragged queries");
    let nq = queries.len() / dim;
    assert!(
        dist.len() >= nq && index.len() >= nq,
        "nearest_pruned: outputs"
    );
    let threads = pool.threads().max(1);
    let k = part.clusters();
    assert!(
        scratch.len() >= pruned_scratch_len(threads, nq, dim, k),
        "nearest_pruned: scratch too small"
    );
    if let Some((origin, _)) = exclude {
        assert_eq!(
            origin.len(),
            bank.n,
            "nearest_pruned: one origin per bank row"
        );
    }
    if nq == 0 {
        return;
    }
    let ker = Kernel::best();
    let (per_query, workers) = scratch.split_at_mut(4 * nq + nq * k + k + nq * dim);
    if k < ker.mr || bank.n < ker.mr || query_block(dim) * dim > QUERY_PACK_FLOATS {
        // A partition made for a narrower kernel, or a bank too small to prune.
        nearest(pool, queries, bank, exclude, dist, index, workers);
        part.count(nq * bank.n, (nq * bank.n) as u64, 0);
        return;
    }
    let (owner, rest) = per_query.split_at_mut(nq);
    let (order, rest) = rest.split_at_mut(nq);
    let (gd, rest) = rest.split_at_mut(nq);
    let (gi, rest) = rest.split_at_mut(nq);
    let (lo, rest) = rest.split_at_mut(nq * k);
    let (centre_key, grouped) = rest.split_at_mut(k);
    let owner: &mut [u32] = bytemuck::cast_slice_mut(owner);
    let order: &mut [u32] = bytemuck::cast_slice_mut(order);
    let gi: &mut [u32] = bytemuck::cast_slice_mut(gi);
    centre_bounds(pool, queries, bank, part, lo, owner, workers);
    for (j, o) in order.iter_mut().enumerate() {
        *o = j as u32;
    }
    // The groups of queries in the order of their centres along the bank's leading
    // direction, so that a strip spanning several groups holds near ones (a strip's
    // rows are computed for all its queries): a total order (centre key, centre, query),
    // no allocation, the same order every run.
    centre_order(bank, part, centre_key);
    order.sort_unstable_by(|&a, &b| {
        let (ca, cb) = (owner[a as usize] as usize, owner[b as usize] as usize);
        centre_key[ca]
            .total_cmp(&centre_key[cb])
            .then(ca.cmp(&cb))
            .then(a.cmp(&b))
    });
    for (t, &j) in order.iter().enumerate() {
        grouped[t * dim..(t + 1) * dim]
            .copy_from_slice(&queries[j as usize * dim..(j as usize + 1) * dim]);
    }
    let bounds = CentreBounds { lo, order };
    search_grouped(pool, grouped, bank, part, &bounds, exclude, gd, gi, workers);
    for (t, &j) in order.iter().enumerate() {
        dist[j as usize] = gd[t];
        index[j as usize] = gi[t];
    }
}

/// Per centre (rows 0..k of the bank), its coordinate along the projection's first
/// direction (0 for all without a projection): the order the query groups are searched in.
fn centre_order(bank: BankView<'_>, part: PartitionView<'_>, key: &mut [f32]) {
    let Some(pv) = part.projection else {
        key.fill(0.0);
        return;
    };
    let w = 1 + pv.k;
    for (c, kc) in key.iter_mut().enumerate() {
        let along: f64 = bank
            .row(c)
            .iter()
            .zip(pv.basis.chunks_exact(w))
            .map(|(&x, b)| (x as f64 - b[0] as f64) * b[1] as f64)
            .sum();
        *kc = along as f32;
    }
}

/// Every query's lower bounds of its true distance to the centres, `k` per query in the
/// queries' own order, and which query is where in the grouped order.
struct CentreBounds<'s> {
    lo: &'s [f32],
    order: &'s [u32],
}

/// Fills `lo` (`k` per query: a lower bound of the true ‖q − c‖ for every centre c, rows
/// 0..k of the bank, module doc) and `owner` (each query's centre of smallest GEMM form,
/// the first of equal ones: only the grouping, no result, depends on it), one walk of
/// the micro-kernel over the centres per block of queries (a centre may be visited
/// twice: the same values). `workers`: a packing buffer per worker.
fn centre_bounds(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    part: PartitionView<'_>,
    lo: &mut [f32],
    owner: &mut [u32],
    workers: &mut [f32],
) {
    let dim = bank.dim;
    let nq = queries.len() / dim;
    let ker = Kernel::best();
    let qb = query_block(dim);
    let k = part.clusters();
    let centres = BankView::new(&bank.data[..k * dim], &bank.sq_norms[..k], dim);
    let per_worker = pruned_worker_floats(dim, k);
    let (lp, op, wp) = (
        SharedMut::new(lo),
        SharedMut::new(owner),
        SharedMut::new(workers),
    );
    pool.run(nq.div_ceil(qb), &|task, worker| {
        let q0 = task * qb;
        let qn = qb.min(nq - q0);
        // SAFETY: each worker owns its scratch; each task its queries' bounds and owners.
        let pack = unsafe { wp.slice(worker * per_worker, QUERY_PACK_FLOATS) };
        let lo = unsafe { lp.slice(q0 * k, qn * k) };
        let owner = unsafe { op.slice(q0, qn) };
        let q = &queries[q0 * dim..(q0 + qn) * dim];
        let mut qnorm = [0f32; QUERY_BLOCK];
        // E per query (the bank's largest norm covers every centre).
        let mut err = [0f64; QUERY_BLOCK];
        sq_norms(q, dim, &mut qnorm[..qn]);
        for (e, &n) in err.iter_mut().zip(&qnorm[..qn]) {
            *e = gemm_form_bound(n, part.b_max, dim);
        }
        let mut nearest_g = [f64::INFINITY; QUERY_BLOCK];
        owner.fill(0);
        walk_bank(ker, q, qn, centres, pack, |c, j0, dots| {
            let cn = bank.sq_norms[c] as f64;
            for (j, &dot) in (j0..).zip(dots) {
                let g = qnorm[j] as f64 - 2.0 * dot as f64 + cn;
                // The f32 form's own rounding is inside E; f64 steps: 1e-12.
                lo[j * k + c] = f32_down((g - err[j]).max(0.0).sqrt() * (1.0 - 1e-12));
                if g < nearest_g[j] {
                    nearest_g[j] = g;
                    owner[j] = c as u32;
                }
            }
        });
    });
}

/// The pruned search of [`nearest_pruned`] on queries in the given order (`bounds.order`:
/// where each came from); `workers`: [`pruned_worker_floats`] per worker.
#[allow(clippy::too_many_arguments)]
fn search_grouped(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    part: PartitionView<'_>,
    bounds: &CentreBounds<'_>,
    exclude: Option<(&[u32], u32)>,
    dist: &mut [f32],
    index: &mut [u32],
    workers: &mut [f32],
) {
    let dim = bank.dim;
    let nq = queries.len() / dim;
    let ker = Kernel::best();
    let (mr, nr) = (ker.mr, ker.nr);
    let qb = query_block(dim);
    let k = part.clusters();
    let per_worker = pruned_worker_floats(dim, k);
    let (dp, ip, wp) = (
        SharedMut::new(dist),
        SharedMut::new(index),
        SharedMut::new(workers),
    );
    let tasks = nq.div_ceil(qb);
    pool.run(tasks, &|task, worker| {
        let q0 = task * qb;
        let qn = qb.min(nq - q0);
        // SAFETY: each worker owns its scratch; each task its output range.
        let work = unsafe { wp.slice(worker * per_worker, per_worker) };
        let d_out = unsafe { dp.slice(q0, qn) };
        let i_out = unsafe { ip.slice(q0, qn) };
        let pack_len = QUERY_PACK_FLOATS.max(nearest_scratch_len(1));
        let (pack, rest) = work.split_at_mut(pack_len);
        let (visit, rest) = rest.split_at_mut(k);
        let (keys, rest) = rest.split_at_mut(k);
        let (panel, rest) = rest.split_at_mut(MAX_MR * dim);
        let (pq, ppack) = rest.split_at_mut(QUERY_BLOCK * PROJ_DIMS);
        let visit: &mut [u32] = bytemuck::cast_slice_mut(visit);
        let q = &queries[q0 * dim..(q0 + qn) * dim];
        let mut qnorm = [0f32; QUERY_BLOCK];
        sq_norms(q, dim, &mut qnorm[..qn]);
        d_out.fill(f32::INFINITY);
        i_out.fill(NO_ROW);
        // A value that is not finite makes its query's norm so (and a norm beyond f32 of
        // finite values takes this way too, exactly as well).
        if !qnorm[..qn].iter().all(|v| v.is_finite()) {
            // No bound holds: nearest's own block search.
            search_block(ker, q, qn, &qnorm, bank, exclude, pack, d_out, i_out);
            part.count(qn * bank.n, (qn * bank.n) as u64, 0);
            for v in d_out.iter_mut() {
                *v = v.max(0.0).sqrt();
            }
            return;
        }
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
        // The projection bound's query side: p̂_q packed as the queries are.
        let mut qbound = [QueryBound::default(); QUERY_BLOCK];
        if let Some(pv) = part.projection {
            let kp = pv.k;
            QueryBound::fill(&pv, q, &qnorm[..qn], &mut pq[..qn * kp], &mut qbound[..qn]);
            pack_rhs(
                Operand::transposed(Mat::new(&pq[..qn * kp], qn, kp)),
                0,
                kp,
                0,
                qn,
                nr,
                1.0,
                ppack,
            );
        }
        // E per query (the bank's largest norm covers every centre and row).
        let mut err = [0f64; QUERY_BLOCK];
        for j in 0..qn {
            err[j] = gemm_form_bound(qnorm[j], part.b_max, dim);
        }
        // Each query's lower bounds to the centres (computed before grouping).
        let lo = |j: usize, c: usize| bounds.lo[bounds.order[q0 + j] as usize * k + c];
        let mut tile = [0f32; MAX_MR * 32];
        let mut computed = 0u64;
        let mut projected = 0u64;
        let mut ptile = [0f32; MAX_MR * 32];
        for s in 0..strips {
            let j0 = s * nr;
            let cols = nr.min(qn - j0);
            let strip = j0..j0 + cols;
            let strip_pack = &pack[s * dim * nr..(s + 1) * dim * nr];
            // This strip's clusters nearest first (by its smallest bound).
            for (c, (v, kv)) in visit.iter_mut().zip(keys.iter_mut()).enumerate() {
                *v = c as u32;
                *kv = f32_down(
                    strip
                        .clone()
                        .map(|j| lo(j, c) as f64 - part.radii[c] as f64)
                        .fold(f64::INFINITY, f64::min),
                );
            }
            // A total order (key, then cluster): unstable sorting allocates nothing.
            visit.sort_unstable_by(|&a, &b| {
                keys[a as usize]
                    .total_cmp(&keys[b as usize])
                    .then(a.cmp(&b))
            });
            let sides = StripSides::new(&qbound[strip.clone()]);
            // Rows (cluster-order positions) waiting for a full panel.
            let mut pending = [0u32; MAX_MR];
            let mut waiting = 0;
            let rows_out = Panel {
                ker,
                bank,
                part: &part,
                exclude,
                strip_pack,
                qnorm: &qnorm,
                j0,
                cols,
            };
            for &c in visit.iter() {
                let c = c as usize;
                let r = part.radii[c] as f64;
                // Every query's bound t is at least the key, and later keys are larger:
                // once the key skips the whole strip, so does every later cluster.
                let key = keys[c] as f64;
                if key > 0.0 && strip.clone().all(|j| key * key - err[j] > d_out[j] as f64) {
                    break;
                }
                // The strip's queries this cluster may serve (the others take none of its
                // rows below).
                let mut reach = [false; STRIP];
                for (jj, ok) in reach[..cols].iter_mut().enumerate() {
                    let j = j0 + jj;
                    let t = lo(j, c) as f64 - r;
                    *ok = !(t > 0.0 && t * t - err[j] > d_out[j] as f64);
                }
                if !reach[..cols].contains(&true) {
                    continue;
                }
                let (a, b) = (part.starts[c] as usize, part.starts[c + 1] as usize);
                let Some(pv) = part.projection else {
                    // The cluster bound alone: every row of the cluster it may take.
                    for pos in a..b {
                        if !rows_out.takes(pos) {
                            continue;
                        }
                        pending[waiting] = pos as u32;
                        waiting += 1;
                        if waiting == mr {
                            computed += rows_out.run(&pending, panel, &mut tile, d_out, i_out);
                            waiting = 0;
                        }
                    }
                    continue;
                };
                // Per row: the projection bound of every query of the strip from the
                // rows' records (contiguous in cluster order) through the micro-kernel.
                let kp = pv.k;
                let len = super::bank_proj::record_len(kp);
                // Per query, the running best it may take a row at; −∞ out of reach.
                let mut limit = [f32::NEG_INFINITY; STRIP];
                let within = |limit: &mut [f32; STRIP], d_out: &[f32]| {
                    for (jj, l) in limit[..cols].iter_mut().enumerate() {
                        *l = if reach[jj] {
                            d_out[j0 + jj]
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                };
                within(&mut limit, d_out);
                for g0 in (a..b).step_by(mr) {
                    let rows = mr.min(b - g0);
                    let start = g0.min(bank.n - mr);
                    // SAFETY: records start..start+mr hold mr·len floats (start ≤ n − mr);
                    // the strip kp·nr packed floats; the tile mr·nr floats.
                    unsafe {
                        ker.run(
                            kp,
                            pv.rows[start * len..].as_ptr(),
                            len,
                            ppack[s * kp * nr..(s + 1) * kp * nr].as_ptr(),
                            ptile.as_mut_ptr(),
                            nr,
                            Start::Zero,
                        )
                    };
                    projected += (rows * cols) as u64;
                    for pos in g0..g0 + rows {
                        let mut dots = [0f32; STRIP];
                        dots[..cols]
                            .copy_from_slice(&ptile[(pos - start) * nr..(pos - start) * nr + cols]);
                        let need = sides.row_needed(&limit, pv.record(pos), &dots);
                        if need && rows_out.takes(pos) {
                            // The row's first lines fetched while the group fills, so
                            // that its stream is under way when the kernel reads it
                            // (fetching all of it: the same CPU time, spent waiting at
                            // the prefetches).
                            let row = bank.row(part.order[pos] as usize);
                            prefetch_to_l2(&row[..row.len().min(PREFETCH_FLOATS)]);
                            pending[waiting] = pos as u32;
                            waiting += 1;
                            if waiting == mr {
                                computed += rows_out.run(&pending, panel, &mut tile, d_out, i_out);
                                waiting = 0;
                                within(&mut limit, d_out);
                            }
                        }
                    }
                }
            }
            if waiting > 0 {
                computed += rows_out.run(&pending[..waiting], panel, &mut tile, d_out, i_out);
            }
        }
        part.count(qn * bank.n, computed, projected);
        for v in d_out.iter_mut() {
            *v = v.max(0.0).sqrt();
        }
    });
}

/// One strip's exact pass over gathered rows, as [`nearest`] computes them.
struct Panel<'p, 'a> {
    ker: Kernel,
    bank: BankView<'a>,
    part: &'p PartitionView<'a>,
    exclude: Option<(&'a [u32], u32)>,
    /// The strip's packed queries (`dim × nr`).
    strip_pack: &'p [f32],
    qnorm: &'p [f32],
    j0: usize,
    cols: usize,
}

impl Panel<'_, '_> {
    /// Whether the row at cluster-order position `pos` may be an answer at all (not
    /// excluded): an excluded row is never gathered (the leave-one-out scoring of the
    /// fit, where the part's own rows are the nearest ones).
    #[inline]
    fn takes(&self, pos: usize) -> bool {
        match self.exclude {
            Some((origin, id)) => origin[self.part.order[pos] as usize] != id,
            None => true,
        }
    }

    /// The rows at cluster-order positions `pos` (at most the kernel's `mr`, none excluded:
    /// [`Panel::takes`]) computed in place against the strip's queries through the
    /// micro-kernel (`panel`: the portable kernel's copy), the running minimum of `d_out`/`i_out` kept as nearest
    /// keeps it (the smallest d², the lowest row among equal ones, never an infinite or
    /// NaN d²). Returns the pairs computed.
    fn run(
        &self,
        pos: &[u32],
        panel: &mut [f32],
        tile: &mut [f32; MAX_MR * 32],
        d_out: &mut [f32],
        i_out: &mut [u32],
    ) -> u64 {
        let (dim, mr, nr) = (self.bank.dim, self.ker.mr, self.ker.nr);
        // The rows in place; a short group repeats its first row (those tile rows are not
        // read).
        let Some(&first) = pos.first() else {
            return 0;
        };
        let mut rows = [std::ptr::null::<f32>(); MAX_MR];
        for (i, r) in rows[..mr].iter_mut().enumerate() {
            let p = *pos.get(i).unwrap_or(&first);
            *r = self.bank.row(self.part.order[p as usize] as usize).as_ptr();
        }
        // SAFETY: `rows` holds mr rows of dim floats, the strip dim·nr packed floats, the
        // tile mr·nr floats; the panel mr·dim floats.
        unsafe {
            row_kernel::run(
                self.ker,
                dim,
                &rows,
                self.strip_pack.as_ptr(),
                tile.as_mut_ptr(),
                panel,
            )
        };
        for (i, &p) in pos.iter().enumerate() {
            let orig = self.part.order[p as usize];
            let bn = self.bank.sq_norms[orig as usize];
            for jj in 0..self.cols {
                let j = self.j0 + jj;
                let d2 = self.qnorm[j] - 2.0 * tile[i * nr + jj] + bn;
                if d2 < d_out[j] || (d2 == d_out[j] && d2 < f32::INFINITY && orig < i_out[j]) {
                    d_out[j] = d2;
                    i_out[j] = orig;
                }
            }
        }
        (pos.len() * self.cols) as u64
    }
}

/// The micro-kernel on rows read in place (the pruned search's visited rows, wherever they
/// lie in the bank) instead of a copied panel: the same tile bits as [`Kernel::run`] on
/// those rows copied, since each pair's sum is the same chain of multiply-adds in k order
/// from zero (the AVX kernels'; the portable kernel, plain multiply-then-add, is run on a
/// copied panel).
mod row_kernel {
    use super::MAX_MR;
    use crate::cpu::gemm::{Isa, Kernel, Start};

    /// `tile[i·nr + j] = Σ_k rows[i][k] · strip[k·nr + j]` for the kernel's `mr × nr` tile.
    ///
    /// # Safety
    /// `rows[..ker.mr]` each hold `dim` floats; `strip` `dim · ker.nr` packed floats; `tile`
    /// `ker.mr · ker.nr` floats; `panel` (used by the portable kernel) `ker.mr · dim`.
    pub(super) unsafe fn run(
        ker: Kernel,
        dim: usize,
        rows: &[*const f32; MAX_MR],
        strip: *const f32,
        tile: *mut f32,
        panel: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match ker.isa {
            Isa::Avx512 if ker.mr == 12 && ker.nr == 32 => {
                // SAFETY: the kernel of this ISA was picked for this CPU; sizes as above.
                return unsafe { x86::rows_12x32(dim, rows, strip, tile) };
            }
            Isa::Avx2 if ker.mr == 6 && ker.nr == 16 => {
                // SAFETY: as above.
                return unsafe { x86::rows_6x16(dim, rows, strip, tile) };
            }
            _ => {}
        }
        for (i, &r) in rows[..ker.mr].iter().enumerate() {
            // SAFETY: each row holds dim floats.
            let src = unsafe { std::slice::from_raw_parts(r, dim) };
            panel[i * dim..(i + 1) * dim].copy_from_slice(src);
        }
        // SAFETY: the panel holds mr·dim floats; strip and tile as above.
        unsafe { ker.run(dim, panel.as_ptr(), dim, strip, tile, ker.nr, Start::Zero) };
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::MAX_MR;
        use std::arch::x86_64::*;

        /// One kernel: `$rows` accumulators of two vectors each, from zero, one fused
        /// multiply-add per pair and step in k order (as `gemm`'s micro-kernels).
        macro_rules! rows_kernel {
            ($name:ident, $features:literal, $rows:literal, $lanes:literal, $zero:path,
             $load:path, $store:path, $set1:path, $fmadd:path) => {
                /// # Safety
                /// The CPU has the features; sizes as [`super::run`] says.
                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn $name(
                    steps: usize,
                    rows: &[*const f32; MAX_MR],
                    b: *const f32,
                    c: *mut f32,
                ) {
                    unsafe {
                        let a: [*const f32; $rows] = std::array::from_fn(|i| rows[i]);
                        let mut lo = [$zero(); $rows];
                        let mut hi = [$zero(); $rows];
                        let mut bp = b;
                        let mut k = 0;
                        macro_rules! step {
                            ($u:expr) => {
                                let b0 = $load(bp.add($u * 2 * $lanes));
                                let b1 = $load(bp.add($u * 2 * $lanes + $lanes));
                                for i in 0..$rows {
                                    let ai = $set1(*a[i].add(k + $u));
                                    lo[i] = $fmadd(ai, b0, lo[i]);
                                    hi[i] = $fmadd(ai, b1, hi[i]);
                                }
                            };
                        }
                        while k + 4 <= steps {
                            step!(0);
                            step!(1);
                            step!(2);
                            step!(3);
                            bp = bp.add(4 * 2 * $lanes);
                            k += 4;
                        }
                        while k < steps {
                            step!(0);
                            bp = bp.add(2 * $lanes);
                            k += 1;
                        }
                        for i in 0..$rows {
                            $store(c.add(i * 2 * $lanes), lo[i]);
                            $store(c.add(i * 2 * $lanes + $lanes), hi[i]);
                        }
                    }
                }
            };
        }

        rows_kernel!(
            rows_12x32,
            "avx512f",
            12,
            16,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_set1_ps,
            _mm512_fmadd_ps
        );
        rows_kernel!(
            rows_6x16,
            "avx2,fma",
            6,
            8,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_set1_ps,
            _mm256_fmadd_ps
        );
    }
}
