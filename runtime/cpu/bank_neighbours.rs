//! The re-weighting's neighbour table through the bank's partition (issue 20 item 6): the
//! table of [`neighbour_table`], row for row, with the pairs that cannot enter a row's
//! three nearest skipped.
//!
//! [`neighbour_table`] keeps for every row m the 3 smallest `(d, row)` pairs over the
//! whole bank (d: [`sq_dist`]'s ordered sum, ties to the lower row, an infinite d never)
//! and stores the last two. Here each run of [`LANES`] rows in the partition's cluster
//! order (similar rows together) is a tile of queries, and the bank is offered to it
//! cluster by cluster, the nearest clusters first. A pair is skipped only when a lower
//! bound D of its true squared distance proves its computed d above the query's running
//! third: every step of the ordered sum rounds non-negative values and a subnormal product
//! loses at most 2⁻¹⁵⁰, so d ≥ D(1 − u)^(n+3) − n·2⁻¹⁵⁰ (u = 2⁻²⁴), and such a pair can
//! neither enter nor tie. The bounds: a centre's computed distance (the same sum, read
//! back the other way) less the cluster's radius; then, where the partition has one, the
//! projection of [`super::bank_proj`] in difference form ([`DiffBound`]: the distance of
//! the two rows' coordinates and residual norms, with no margin for nearest's rounding,
//! which the ordered sum does not have). The rows that pass are summed through the lanes
//! in batches of [`BATCH`] ([`super::lanes::rows_unless_none_below`]: the tile read once
//! per block of dimensions for the whole batch), each dropped as soon as every lane's
//! partial sum is past its query's running third (the partial sums never exceed the full
//! ones; a batch's floors are those from before it, never below the current ones). The
//! centres are the bank's first rows and their distances to the queries are computed
//! first for the bounds: they are offered at once, so every query starts with a running
//! third, and skipped in their clusters. Every distance that is offered is [`sq_dist`]'s
//! own bits (the lanes of [`super::lanes::sq_dists`]), each pair is offered once, and the
//! three nearest do not depend on the order in which pairs are offered: the table is
//! [`neighbour_table`]'s whatever the partition.
//!
//! [`neighbour_table`]: super::bank_search::neighbour_table
//! [`sq_dist`]: super::bank_search::sq_dist

use super::bank_proj::{f32_down, f32_up, ProjectionView, BASIS_DELTA, ETA, PROJ_DIMS};
use super::bank_prune::PartitionView;
use super::bank_search::{BankView, Nearest3, NeighbourTable, NO_ROW, TABLE_NEIGHBOURS};
use super::lanes::{gather_tile, rows_unless_none_below, sq_dists, tile_len, LANES};
use super::pool::{Pool, SharedMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bank rows summed together against a tile of queries
/// ([`super::lanes::rows_unless_none_below`]).
const BATCH: usize = 16;
/// Relative slack of the bounds evaluated in f64.
const SLACK: f64 = 1e-12;

/// How far [`super::bank_search::sq_dist`]'s computed d of `dim` terms can be from the
/// true squared distance D: D(1 − u)^(n+3) − floor ≤ d ≤ D(1 + u)^(n+3) + floor.
#[derive(Clone, Copy)]
struct SumRounding {
    shrink: f64,
    grow: f64,
    floor: f64,
}

impl SumRounding {
    fn new(dim: usize) -> Self {
        let u = 2f64.powi(-24);
        let steps = dim as i32 + 3;
        SumRounding {
            shrink: (1.0 - u).powi(steps),
            grow: (1.0 + u).powi(steps),
            floor: dim as f64 * 2f64.powi(-150),
        }
    }

    /// A lower bound of the true distance (not squared) of a pair whose computed d is `d`.
    fn true_distance_below(&self, d: f32) -> f32 {
        f32_down(((d as f64 - self.floor).max(0.0) / self.grow).sqrt() * (1.0 - SLACK))
    }

    /// A true squared distance above this proves the computed d above `best`.
    fn true_sq_above(&self, best: f32) -> f64 {
        (best as f64 + self.floor) / self.shrink * (1.0 + SLACK)
    }
}

/// One worker's scratch.
struct Work {
    /// The queries, dimension-major ([`super::lanes::to_tile`]).
    tile: Vec<f32>,
    /// Per cluster: the computed distance of each query to its centre, then a lower
    /// bound of the true distance.
    centre: Vec<[f32; LANES]>,
    keys: Vec<f32>,
    visit: Vec<u32>,
    /// The queries' projected coordinates, dimension-major.
    projected: Vec<f32>,
}

/// The projection bound in difference form, for the ordered sum. With V̂ the basis
/// (‖V̂V̂ᵀ − I‖₂ ≤ δ, so σ_max(V̂)² ≤ 1 + δ), y = x − μ̂, p̂ a row's stored coordinates with
/// ‖p̂ − V̂y‖ ≤ e ([`DiffBound::coordinate_error`]) and [ρ_lo, ρ_hi] its residual norm
/// ‖Ry‖ (R = I − P, P the projector onto the span of V̂'s rows):
/// ‖q − b‖² = ‖P(q − b)‖² + ‖R(q − b)‖² ≥ (‖p̂_q − p̂_b‖ − e_q − e_b)₊² / (1 + δ) + ring²,
/// ring = max(0, ρ_lo(q) − ρ_hi(b), ρ_lo(b) − ρ_hi(q)), and ‖p̂_q − p̂_b‖² ≥
/// (s − k·2⁻¹⁴⁹) / (1 + u)^(k+2) for s the f32 sum (any order) of the k rounded squares of
/// rounded differences (each term within (1 + u)³ and 2⁻¹⁵⁰ of underflow).
#[derive(Clone, Copy)]
struct DiffBound {
    sum_scale: f64,
    underflow: f64,
    basis_scale: f64,
}

impl DiffBound {
    fn new() -> Self {
        let (k, u) = (PROJ_DIMS as i32, 2f64.powi(-24));
        DiffBound {
            sum_scale: (1.0 + u).powi(-(k + 2)),
            underflow: PROJ_DIMS as f64 * 2f64.powi(-149),
            basis_scale: 1.0 / (1.0 + BASIS_DELTA),
        }
    }

    /// e ≥ ‖p̂ − V̂y‖ for the row of `record`, rounded up: ETA‖y‖, with
    /// ‖y‖² ≤ ‖V̂y‖² / (1 − δ) + ρ_hi² and ‖V̂y‖ ≤ ‖p̂‖ + ETA‖y‖.
    fn coordinate_error(record: &[f32]) -> f32 {
        let p = record[..PROJ_DIMS]
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt();
        let rho_hi = record[PROJ_DIMS + 2] as f64;
        let a = 1.0 / (1.0 - BASIS_DELTA).sqrt();
        let y = (a * p + rho_hi) / (1.0 - a * ETA);
        f32_up(ETA * y * (1.0 + 1e-9))
    }

    /// A lower bound of the true squared distance from the f32 sum `s`, the two rows'
    /// coordinate errors together `e` and their residual norms' intervals.
    #[inline(always)]
    fn true_sq_below(&self, s: f32, e: f64, q_rho: (f64, f64), b_rho: (f64, f64)) -> f64 {
        let s = (s as f64 - self.underflow).max(0.0) * self.sum_scale;
        let t = (s.sqrt() * (1.0 - SLACK) - e).max(0.0);
        let ring = (q_rho.0 - b_rho.1).max(b_rho.0 - q_rho.1).max(0.0);
        (t * t * self.basis_scale + ring * ring) * (1.0 - SLACK)
    }
}

/// The queries' side of the projection bound: the view and every record's
/// [`DiffBound::coordinate_error`] (cluster-order positions).
struct Projected<'a> {
    view: ProjectionView<'a>,
    errors: Vec<f32>,
}

/// [`neighbour_table`]'s table of `bank` through `part`, a partition of it (module doc).
/// `None` when the bank holds a value that is not finite (as [`neighbour_table`]).
/// `progress(done, total)` in rows. Its `distances`: the (query, row) pairs summed to
/// the end.
///
/// [`neighbour_table`]: super::bank_search::neighbour_table
pub fn neighbour_table_pruned(
    pool: &Pool,
    bank: BankView<'_>,
    part: PartitionView<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Option<NeighbourTable> {
    if !bank.data.iter().chain(bank.sq_norms).all(|v| v.is_finite()) {
        return None;
    }
    let (n, dim) = (bank.n, bank.dim);
    assert_eq!(part.order.len(), n, "neighbour_table_pruned: another bank");
    let k = part.clusters();
    let threads = pool.threads().max(1);
    let mut work: Vec<Work> = (0..threads)
        .map(|_| Work {
            tile: vec![0f32; tile_len(dim)],
            centre: vec![[0f32; LANES]; k],
            keys: vec![0f32; k],
            visit: vec![0u32; k],
            projected: vec![0f32; PROJ_DIMS * LANES],
        })
        .collect();
    // The entries by cluster-order position (each tile writes its own run).
    let mut by_pos = vec![NO_ROW; n * TABLE_NEIGHBOURS];
    let computed = AtomicU64::new(0);
    let projected = part.projection.map(|view| Projected {
        view,
        errors: (0..n)
            .map(|pos| DiffBound::coordinate_error(view.record(pos)))
            .collect(),
    });
    let (wp, op) = (SharedMut::new(&mut work), SharedMut::new(&mut by_pos));
    let tiles = n.div_ceil(LANES);
    let batch = (threads * 8).max(tiles / 50);
    let mut t0 = 0;
    while t0 < tiles {
        let t1 = (t0 + batch).min(tiles);
        pool.run(t1 - t0, &|task, worker| {
            let p0 = (t0 + task) * LANES;
            let p1 = (p0 + LANES).min(n);
            // SAFETY: each worker owns its scratch; each task the entries of its tile.
            let work = unsafe { &mut wp.slice(worker, 1)[0] };
            let out = unsafe { op.slice(p0 * TABLE_NEIGHBOURS, (p1 - p0) * TABLE_NEIGHBOURS) };
            let c = tile_neighbours(bank, &part, projected.as_ref(), p0..p1, work, out);
            computed.fetch_add(c, Ordering::Relaxed);
        });
        t0 = t1;
        progress((t0 * LANES).min(n), n);
    }
    let mut rows = vec![NO_ROW; n * TABLE_NEIGHBOURS];
    for (entry, &orig) in by_pos.chunks_exact(TABLE_NEIGHBOURS).zip(part.order) {
        let at = orig as usize * TABLE_NEIGHBOURS;
        rows[at..at + TABLE_NEIGHBOURS].copy_from_slice(entry);
    }
    Some(NeighbourTable {
        rows,
        distances: computed.into_inner(),
    })
}

/// The entries of the rows at cluster-order positions `span` (at most [`LANES`]): their
/// three nearest over the bank, the skipped pairs proven out (module doc). Returns the
/// distances computed.
fn tile_neighbours(
    bank: BankView<'_>,
    part: &PartitionView<'_>,
    projected: Option<&Projected<'_>>,
    span: std::ops::Range<usize>,
    work: &mut Work,
    out: &mut [u32],
) -> u64 {
    let (dim, k) = (bank.dim, part.clusters());
    let lanes = span.len();
    let sums = SumRounding::new(dim);
    let query_rows = &part.order[span.clone()];
    gather_tile(
        query_rows.iter().map(|&r| bank.row(r as usize)),
        dim,
        &mut work.tile,
    );
    // Lower bounds of the true distance of every query to every centre (rows 0..k).
    sq_dists(&work.tile, &bank.data[..k * dim], dim, &mut work.centre);
    // The centres are the bank's rows 0..k and these are their distances, bit for bit:
    // offered first, they give every query a running third before any cluster is visited
    // (and are skipped when their clusters are).
    let mut near = [Nearest3::EMPTY; LANES];
    for (c, d) in work.centre.iter().enumerate() {
        for (q, &e) in near[..lanes].iter_mut().zip(d) {
            q.offer(e, c as u32);
        }
    }
    for (c, lo) in work.centre.iter_mut().enumerate() {
        let r = part.radii[c] as f64;
        let mut key = f64::INFINITY;
        for v in lo[..lanes].iter_mut() {
            *v = sums.true_distance_below(*v);
            key = key.min(*v as f64 - r);
        }
        work.keys[c] = f32_down(key);
        work.visit[c] = c as u32;
    }
    let keys = &work.keys;
    // Nearest clusters first; a total order (key, then cluster).
    work.visit.sort_unstable_by(|&a, &b| {
        keys[a as usize]
            .total_cmp(&keys[b as usize])
            .then(a.cmp(&b))
    });
    let diff = DiffBound::new();
    // Per query: its coordinate error and residual norm interval.
    let mut q_err = [0f64; LANES];
    let mut q_rho = [(0f64, 0f64); LANES];
    if let Some(pr) = projected {
        for (l, pos) in span.clone().enumerate() {
            let rec = pr.view.record(pos);
            for (d, &v) in rec[..PROJ_DIMS].iter().enumerate() {
                work.projected[d * LANES + l] = v;
            }
            q_err[l] = pr.errors[pos] as f64;
            q_rho[l] = (rec[PROJ_DIMS + 1] as f64, rec[PROJ_DIMS + 2] as f64);
        }
    }
    let mut computed = 0u64;
    // Per query: a true squared distance above this cannot enter its three nearest.
    let mut above = [0f64; LANES];
    let mut reach = [false; LANES];
    let mut floors = [[0f32; LANES]; BATCH];
    let mut dists = [[0f32; LANES]; BATCH];
    let mut kept = [false; BATCH];
    let mut batch_rows = [0u32; BATCH];
    let mut row_refs: [&[f32]; BATCH] = [&[]; BATCH];
    for &c in work.visit.iter() {
        let c = c as usize;
        for (a, q) in above[..lanes].iter_mut().zip(&near) {
            *a = sums.true_sq_above(q.d[2]);
        }
        // Later clusters' keys are no smaller: once every query is past, so is the rest.
        let key = work.keys[c] as f64;
        if key > 0.0 && above[..lanes].iter().all(|&a| key * key > a) {
            break;
        }
        let r = part.radii[c] as f64;
        for (l, (ok, &a)) in reach.iter_mut().zip(&above[..lanes]).enumerate() {
            let t = work.centre[c][l] as f64 - r;
            *ok = !(t > 0.0 && t * t > a);
        }
        if !reach[..lanes].contains(&true) {
            continue;
        }
        // The cluster's rows in batches: the bounds and floors of a batch from the running
        // thirds before it (a floor only falls as rows are offered, so an earlier one is
        // still a valid one), then the batch's exact sums together.
        let rows = part.starts[c] as usize..part.starts[c + 1] as usize;
        // Batches of fixed positions (not of rows that pass): then the floors do not
        // depend on what the bounds dropped, and a bound that drops more sums less.
        for first in rows.clone().step_by(BATCH) {
            let mut batch = 0;
            for pos in first..(first + BATCH).min(rows.end) {
                let b = part.order[pos];
                // The centres were offered already.
                if (b as usize) < k {
                    continue;
                }
                let mut lower = [f64::NEG_INFINITY; LANES];
                // The projection bound of every query against this row.
                if let Some(pr) = projected {
                    let rec = pr.view.record(pos);
                    let mut s = [[0f32; LANES]];
                    sq_dists(&work.projected, &rec[..PROJ_DIMS], PROJ_DIMS, &mut s);
                    let e_b = pr.errors[pos] as f64;
                    let b_rho = (rec[PROJ_DIMS + 1] as f64, rec[PROJ_DIMS + 2] as f64);
                    for l in 0..LANES {
                        lower[l] = diff.true_sq_below(s[0][l], q_err[l] + e_b, q_rho[l], b_rho);
                    }
                }
                // Per lane, the sum at which the row is out: the running third's next f32
                // (at or past it the row can neither enter nor tie); −∞ for a lane the
                // bounds already rule out.
                let floor = &mut floors[batch];
                *floor = [f32::NEG_INFINITY; LANES];
                let mut any = false;
                for l in 0..lanes {
                    if reach[l] && lower[l] <= above[l] {
                        floor[l] = near[l].d[2].next_up();
                        any = true;
                    }
                }
                if any {
                    batch_rows[batch] = b;
                    row_refs[batch] = bank.row(b as usize);
                    batch += 1;
                }
            }
            // The exact sums, each dropped as soon as every lane is at its floor.
            rows_unless_none_below(
                &work.tile,
                &row_refs[..batch],
                &floors[..batch],
                &mut dists,
                &mut kept,
            );
            for ((d, &k), &b) in dists.iter().zip(&kept).zip(&batch_rows).take(batch) {
                if k {
                    for (q, &e) in near[..lanes].iter_mut().zip(d) {
                        q.offer(e, b);
                    }
                    computed += lanes as u64;
                }
            }
        }
    }
    for (entry, q) in out.chunks_exact_mut(TABLE_NEIGHBOURS).zip(&near) {
        entry.copy_from_slice(q.table_entry());
    }
    computed
}
