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
//! projection bound of [`super::bank_proj`] (below the true squared distance: its margins
//! for nearest's rounding only lower it). A row that passes is summed through the lanes
//! and dropped as soon as every lane's partial sum is past its query's running third
//! ([`super::lanes::sq_dists_unless_none_below`]: the partial sums never exceed the
//! full ones). Every distance that is offered is
//! [`sq_dist`]'s own bits (the lanes of [`super::lanes::sq_dists`]), and the three nearest
//! do not depend on the order in which pairs are offered: the table is
//! [`neighbour_table`]'s whatever the partition.
//!
//! [`neighbour_table`]: super::bank_search::neighbour_table
//! [`sq_dist`]: super::bank_search::sq_dist

use super::bank_proj::{f32_down, QueryBound, PROJ_DIMS};
use super::bank_prune::PartitionView;
use super::bank_search::{BankView, Nearest3, NeighbourTable, NO_ROW, TABLE_NEIGHBOURS};
use super::lanes::{gather_tile, sq_dists, sq_dists_unless_none_below, tile_len, LANES};
use super::pool::{Pool, SharedMut};
use std::sync::atomic::{AtomicU64, Ordering};

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
            let c = tile_neighbours(bank, &part, p0..p1, work, out);
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
    span: std::ops::Range<usize>,
    work: &mut Work,
    out: &mut [u32],
) -> u64 {
    let (dim, k) = (bank.dim, part.clusters());
    let lanes = span.len();
    let sums = SumRounding::new(dim);
    let query_rows = &part.order[span];
    gather_tile(
        query_rows.iter().map(|&r| bank.row(r as usize)),
        dim,
        &mut work.tile,
    );
    // Lower bounds of the true distance of every query to every centre (rows 0..k).
    sq_dists(&work.tile, &bank.data[..k * dim], dim, &mut work.centre);
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
    let mut bounds = [QueryBound::default(); LANES];
    if let Some(pv) = part.projection {
        let mut p = [0f32; PROJ_DIMS];
        for (l, &r) in query_rows.iter().enumerate() {
            let r = r as usize;
            bounds[l] = QueryBound::new(&pv, bank.row(r), bank.sq_norms[r], &mut p);
            for (d, &v) in p.iter().enumerate() {
                work.projected[d * LANES + l] = v;
            }
        }
    }
    let mut near = [Nearest3::EMPTY; LANES];
    let mut computed = 0u64;
    // Per query: a true squared distance above this cannot enter its three nearest.
    let mut above = [0f64; LANES];
    let mut reach = [false; LANES];
    let mut dots = [0f32; LANES];
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
        for pos in part.starts[c] as usize..part.starts[c + 1] as usize {
            let record = part.projection.map(|pv| {
                // p̂_q·p̂_b summed in index order, products and sums rounded apart.
                let rec = pv.record(pos);
                dots.fill(0.0);
                for (d, &v) in rec[..PROJ_DIMS].iter().enumerate() {
                    let col = &work.projected[d * LANES..(d + 1) * LANES];
                    for (s, &x) in dots.iter_mut().zip(col) {
                        *s += x * v;
                    }
                }
                rec
            });
            // Per lane, the sum at which the row is out: the running third's next f32
            // (at or past it the row can neither enter nor tie); −∞ for a lane the
            // bounds already rule out.
            let mut floor = [f32::NEG_INFINITY; LANES];
            let mut any = false;
            for l in 0..lanes {
                let out_of_reach = !reach[l]
                    || record.is_some_and(|rec| bounds[l].lower_bound(rec, dots[l]) > above[l]);
                if !out_of_reach {
                    floor[l] = near[l].d[2].next_up();
                    any = true;
                }
            }
            if !any {
                continue;
            }
            // The exact sums, dropped as soon as every lane is at its floor.
            let b = part.order[pos];
            let row = bank.row(b as usize);
            if let Some(dists) = sq_dists_unless_none_below(&work.tile, row, &floor) {
                for (q, &e) in near[..lanes].iter_mut().zip(&dists) {
                    q.offer(e, b);
                }
                computed += lanes as u64;
            }
        }
    }
    for (entry, q) in out.chunks_exact_mut(TABLE_NEIGHBOURS).zip(&near) {
        entry.copy_from_slice(q.table_entry());
    }
    computed
}
