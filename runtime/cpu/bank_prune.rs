//! Exact pruning of the nearest-bank-row search (issue 20 items 5–6): the same rows and
//! distance bits as [`super::bank_search::nearest`], with whole clusters of bank rows
//! skipped when no row in them can win.
//!
//! Partition ([`BankPartition::build`]): the first `k` bank rows are the centres (a bank
//! is stored in coreset order, farthest-first, so they are spread over it); every row
//! joins its nearest centre; `r_c` bounds the true distance of cluster c's rows to its
//! centre (f64, rounded up). The rows are copied in cluster order so that a cluster is
//! contiguous for the GEMM micro-kernel.
//!
//! Search: per block of queries, the GEMM form `g = ‖q‖² − 2q·c + ‖c‖²` to every centre
//! gives a lower bound of the true ‖q − c‖ (`g − E`, E of `gemm_form_bound` with the
//! bank's largest norm); a row b of cluster c then has true distance ≥ t = that bound −
//! r_c, and its computed `d² ≥ t² − E` (the same bound against [`nearest`]'s form). The
//! clusters are visited nearest first; a cluster is skipped for a strip of queries when
//! every query of the strip has `t > 0` and `t² − E > best` (in f64): its rows have a
//! computed d² above the running best, so they can neither win nor tie. The rows that are
//! visited go through the kernel exactly as [`nearest`] computes them (the same packed
//! queries, the k order of the micro-kernel: each pair's dot product does not depend on
//! its neighbours in the tile), and the minimum keeps the lowest original row among equal
//! d² — so the result is [`nearest`]'s, bit for bit, whatever the partition.
//!
//! Memory: a second copy of the bank (the fit holds it while it scores; inspection does
//! not use this path). The search allocates its per-worker buffers per call.
//!
//! [`nearest`]: super::bank_search::nearest

use super::bank_search::{
    gemm_form_bound, nearest, query_block, search_block, BankView, NO_ROW, QUERY_PACK_FLOATS,
};
use super::gemm::{pack_rhs, Kernel, Mat, Operand, Start};
use super::pool::{Pool, SharedMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per cluster aimed at by [`BankPartition::clusters_for`].
pub const ROWS_PER_CLUSTER: usize = 64;
/// Most clusters.
pub const MAX_CLUSTERS: usize = 4096;

/// Bank rows grouped around centres, with radii (module doc).
#[derive(Debug)]
pub struct BankPartition {
    n: usize,
    dim: usize,
    /// Bank rows in cluster order; cluster c is `order[starts[c]..starts[c + 1]]`.
    order: Vec<u32>,
    starts: Vec<usize>,
    /// The bank's rows and squared norms in `order`.
    data: Vec<f32>,
    norms: Vec<f32>,
    /// The centres' rows (bank rows `0..k`) and squared norms.
    centre_data: Vec<f32>,
    centre_norms: Vec<f32>,
    /// Upper bound of the true distance from each centre to each row of its cluster.
    radius: Vec<f64>,
    /// Largest squared norm of the bank.
    b_max: f32,
    /// Pairs (query, bank row) the searches were asked for, and those computed.
    pairs_asked: AtomicU64,
    pairs_computed: AtomicU64,
}

impl BankPartition {
    /// The number of clusters used for a bank of `n` rows.
    pub fn clusters_for(n: usize) -> usize {
        (n / ROWS_PER_CLUSTER).clamp(1, MAX_CLUSTERS)
    }

    /// Partitions `bank` into `clusters` clusters. `None` when the pruned search would
    /// not apply (a value that is not finite, a bank or centre set smaller than the
    /// kernel's row group, rows too wide for the packed search): [`nearest`] then runs.
    pub fn build(pool: &Pool, bank: BankView<'_>, clusters: usize) -> Option<Self> {
        let (n, dim) = (bank.n, bank.dim);
        let ker = Kernel::best();
        let k = clusters.clamp(ker.mr, n.max(ker.mr));
        let packed = query_block(dim) * dim <= QUERY_PACK_FLOATS;
        if !packed || n < k || !bank.data.iter().chain(bank.sq_norms).all(|v| v.is_finite()) {
            return None;
        }
        let centre_data = bank.data[..k * dim].to_vec();
        let centre_norms = bank.sq_norms[..k].to_vec();
        let centres = BankView::new(&centre_data, &centre_norms, dim);
        // Any assignment is valid (the radii are measured); the nearest keeps them small.
        let mut near_d = vec![0f32; n];
        let mut owner = vec![0u32; n];
        let mut scratch = vec![0f32; super::bank_search::nearest_scratch_len(pool.threads())];
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
        let mut counts = vec![0usize; k + 1];
        for (i, &c) in owner.iter().enumerate() {
            let c = (c as usize).min(k - 1);
            let r = exact_dist(bank.row(i), &centre_data[c * dim..(c + 1) * dim]);
            radius[c] = radius[c].max(r);
            counts[c + 1] += 1;
        }
        for r in radius.iter_mut() {
            // f64 sums of 2 000 exact squares are within 1e-12 relative: rounded up.
            *r *= 1.0 + 1e-9;
        }
        let mut starts = counts;
        for c in 0..k {
            starts[c + 1] += starts[c];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; n];
        for (i, &c) in owner.iter().enumerate() {
            let c = (c as usize).min(k - 1);
            order[next[c]] = i as u32;
            next[c] += 1;
        }
        let mut data = Vec::with_capacity(n * dim);
        let mut norms = Vec::with_capacity(n);
        for &i in &order {
            data.extend_from_slice(bank.row(i as usize));
            norms.push(bank.sq_norms[i as usize]);
        }
        Some(BankPartition {
            n,
            dim,
            order,
            starts,
            data,
            norms,
            centre_data,
            centre_norms,
            radius,
            b_max: bank.sq_norms.iter().fold(0f32, |m, &v| m.max(v)),
            pairs_asked: AtomicU64::new(0),
            pairs_computed: AtomicU64::new(0),
        })
    }

    pub fn clusters(&self) -> usize {
        self.radius.len()
    }

    /// (query, row) pairs asked for and computed by the searches so far.
    pub fn pair_counts(&self) -> (u64, u64) {
        (
            self.pairs_asked.load(Ordering::Relaxed),
            self.pairs_computed.load(Ordering::Relaxed),
        )
    }

    /// Whether this partition was built from `bank` (same shape).
    pub fn fits(&self, bank: &BankView<'_>) -> bool {
        self.n == bank.n && self.dim == bank.dim
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

/// [`nearest`]'s result for `queries` against `bank`, with the clusters of `part` that
/// cannot hold the answer skipped (module doc). `exclude` as in [`nearest`].
///
/// The queries are searched grouped by their nearest centre (a skip is decided per strip
/// of the kernel's `nr` queries, so a strip of similar queries skips more); each query's
/// result depends only on its own row, so the grouping changes no bit.
pub fn nearest_pruned(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    part: &BankPartition,
    exclude: Option<(&[u32], u32)>,
    dist: &mut [f32],
    index: &mut [u32],
) {
    let dim = bank.dim;
    assert!(
        part.fits(&bank),
        "nearest_pruned: partition of another bank"
    );
    assert_eq!(queries.len() % dim, 0, "nearest_pruned: ragged queries");
    let nq = queries.len() / dim;
    assert!(
        dist.len() >= nq && index.len() >= nq,
        "nearest_pruned: outputs"
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
    let centres = BankView::new(&part.centre_data, &part.centre_norms, dim);
    let mut owner_d = vec![0f32; nq];
    let mut owner = vec![0u32; nq];
    let mut scratch = vec![0f32; super::bank_search::nearest_scratch_len(pool.threads())];
    nearest(
        pool,
        queries,
        centres,
        None,
        &mut owner_d,
        &mut owner,
        &mut scratch,
    );
    let mut order: Vec<u32> = (0..nq as u32).collect();
    order.sort_by_key(|&j| (owner[j as usize], j));
    let mut grouped = Vec::with_capacity(nq * dim);
    for &j in &order {
        grouped.extend_from_slice(&queries[j as usize * dim..(j as usize + 1) * dim]);
    }
    let (mut gd, mut gi) = (vec![0f32; nq], vec![0u32; nq]);
    search_grouped(pool, &grouped, bank, part, exclude, &mut gd, &mut gi);
    for (t, &j) in order.iter().enumerate() {
        dist[j as usize] = gd[t];
        index[j as usize] = gi[t];
    }
}

/// The pruned search of [`nearest_pruned`] on queries in the given order.
fn search_grouped(
    pool: &Pool,
    queries: &[f32],
    bank: BankView<'_>,
    part: &BankPartition,
    exclude: Option<(&[u32], u32)>,
    dist: &mut [f32],
    index: &mut [u32],
) {
    let dim = bank.dim;
    let nq = queries.len() / dim;
    let ker = Kernel::best();
    let (mr, nr) = (ker.mr, ker.nr);
    let qb = query_block(dim);
    let k = part.clusters();
    let threads = pool.threads().max(1);
    // Per worker: packed queries, then per (query, centre) the lower bound of ‖q − c‖.
    let mut packs = vec![0f32; threads * QUERY_PACK_FLOATS];
    let mut bounds = vec![0f64; threads * qb * k];
    let mut orders = vec![0u32; threads * k];
    let mut keys = vec![0f64; threads * k];
    let (dp, ip, pp, bp, op, kp) = (
        SharedMut::new(dist),
        SharedMut::new(index),
        SharedMut::new(&mut packs),
        SharedMut::new(&mut bounds),
        SharedMut::new(&mut orders),
        SharedMut::new(&mut keys),
    );
    let tasks = nq.div_ceil(qb);
    pool.run(tasks, &|task, worker| {
        let q0 = task * qb;
        let qn = qb.min(nq - q0);
        // SAFETY: each worker owns its buffers; each task its output range.
        let pack = unsafe { pp.slice(worker * QUERY_PACK_FLOATS, QUERY_PACK_FLOATS) };
        let lo = unsafe { bp.slice(worker * qb * k, qb * k) };
        let visit = unsafe { op.slice(worker * k, k) };
        let keys = unsafe { kp.slice(worker * k, k) };
        let d_out = unsafe { dp.slice(q0, qn) };
        let i_out = unsafe { ip.slice(q0, qn) };
        let q = &queries[q0 * dim..(q0 + qn) * dim];
        let mut qnorm = [0f32; super::bank_search::QUERY_BLOCK];
        for (n, r) in qnorm.iter_mut().zip(q.chunks_exact(dim)) {
            *n = r.iter().map(|v| v * v).sum();
        }
        d_out.fill(f32::INFINITY);
        i_out.fill(NO_ROW);
        if !q.iter().all(|v| v.is_finite()) {
            // No bound holds: nearest's own block search.
            search_block(ker, q, qn, &qnorm, bank, exclude, pack, d_out, i_out);
            part.pairs_asked
                .fetch_add((qn * bank.n) as u64, Ordering::Relaxed);
            part.pairs_computed
                .fetch_add((qn * bank.n) as u64, Ordering::Relaxed);
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
        // E per query (the bank's largest norm covers every centre and row).
        let mut err = [0f64; super::bank_search::QUERY_BLOCK];
        for j in 0..qn {
            err[j] = gemm_form_bound(qnorm[j], part.b_max, dim);
        }
        // Lower bounds of the true ‖q − c‖ for every centre.
        let mut tile = [0f32; 12 * 32];
        let mut c0 = 0;
        loop {
            let start = c0.min(k - mr);
            for s in 0..strips {
                let j0 = s * nr;
                let cols = nr.min(qn - j0);
                // SAFETY: rows start..start+mr of the centres hold mr·dim floats; the
                // strip dim·nr packed floats; the tile mr·nr floats.
                unsafe {
                    ker.run(
                        dim,
                        part.centre_data[start * dim..].as_ptr(),
                        dim,
                        pack[s * dim * nr..(s + 1) * dim * nr].as_ptr(),
                        tile.as_mut_ptr(),
                        nr,
                        Start::Zero,
                    )
                };
                for i in 0..mr {
                    let c = start + i;
                    let cn = part.centre_norms[c];
                    for jj in 0..cols {
                        let j = j0 + jj;
                        let g = qnorm[j] as f64 - 2.0 * tile[i * nr + jj] as f64 + cn as f64;
                        // The f32 form's own rounding is inside E; f64 steps: 1e-12.
                        lo[j * k + c] = (g - err[j]).max(0.0).sqrt() * (1.0 - 1e-12);
                    }
                }
            }
            c0 = start + mr;
            if c0 >= k {
                break;
            }
        }
        let mut computed = 0u64;
        for s in 0..strips {
            let j0 = s * nr;
            let cols = nr.min(qn - j0);
            let strip = j0..j0 + cols;
            // This strip's clusters nearest first (by its smallest bound).
            for (c, (v, kv)) in visit.iter_mut().zip(keys.iter_mut()).enumerate() {
                *v = c as u32;
                *kv = strip
                    .clone()
                    .map(|j| lo[j * k + c] - part.radius[c])
                    .fold(f64::INFINITY, f64::min);
            }
            visit.sort_by(|&a, &b| {
                keys[a as usize]
                    .total_cmp(&keys[b as usize])
                    .then(a.cmp(&b))
            });
            for &c in visit.iter() {
                let c = c as usize;
                let r = part.radius[c];
                // Every query's bound t is at least the key, and later keys are larger:
                // once the key skips the whole strip, so does every later cluster.
                let key = keys[c];
                if key > 0.0 && strip.clone().all(|j| key * key - err[j] > d_out[j] as f64) {
                    break;
                }
                let need = strip.clone().any(|j| {
                    let t = lo[j * k + c] - r;
                    !(t > 0.0 && t * t - err[j] > d_out[j] as f64)
                });
                if !need {
                    continue;
                }
                // The cluster's rows, widened to at least one row group (visiting more
                // rows than needed is harmless).
                let (mut a, mut b) = (part.starts[c], part.starts[c + 1]);
                if b - a < mr {
                    b = (a + mr).min(part.n);
                    a = b - mr;
                }
                let mut r0 = a;
                loop {
                    let start = r0.min(b - mr);
                    // SAFETY: as above, rows of the partition's copy of the bank.
                    unsafe {
                        ker.run(
                            dim,
                            part.data[start * dim..].as_ptr(),
                            dim,
                            pack[s * dim * nr..(s + 1) * dim * nr].as_ptr(),
                            tile.as_mut_ptr(),
                            nr,
                            Start::Zero,
                        )
                    };
                    computed += (mr * cols) as u64;
                    for i in 0..mr {
                        let row = start + i;
                        let orig = part.order[row];
                        if let Some((origin, id)) = exclude {
                            if origin[orig as usize] == id {
                                continue;
                            }
                        }
                        let bn = part.norms[row];
                        for jj in 0..cols {
                            let j = j0 + jj;
                            let d2 = qnorm[j] - 2.0 * tile[i * nr + jj] + bn;
                            // nearest's strict `<` in bank order: the smallest d², the
                            // lowest row among equal ones, never an infinite or NaN d².
                            if d2 < d_out[j]
                                || (d2 == d_out[j] && d2 < f32::INFINITY && orig < i_out[j])
                            {
                                d_out[j] = d2;
                                i_out[j] = orig;
                            }
                        }
                    }
                    r0 = start + mr;
                    if r0 >= b {
                        break;
                    }
                }
            }
        }
        part.pairs_asked
            .fetch_add((qn * bank.n) as u64, Ordering::Relaxed);
        part.pairs_computed.fetch_add(computed, Ordering::Relaxed);
        for v in d_out.iter_mut() {
            *v = v.max(0.0).sqrt();
        }
    });
}
