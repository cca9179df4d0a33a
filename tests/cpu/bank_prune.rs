//! The pruned bank search (`cpu::bank_prune`) against `nearest`: the same rows and
//! distance bits on random and clustered banks, near-duplicate rows and exact ties,
//! with exclusion, at 1 and 2 threads and for several cluster counts, with and without
//! the per-row projection bound (`cpu::bank_proj`); it does prune, and a search
//! allocates nothing (planned scratch). The projection bound is never above the pair's
//! true distance (f64) nor above nearest's computed d². The fit's neighbour tables
//! through the partition (`cpu::bank_neighbours`) equal `neighbour_table`'s.

use miad::cpu::bank_neighbours::neighbour_table_pruned;
use miad::cpu::bank_proj::{QueryBound, PROJ_DIMS};
use miad::cpu::bank_prune::{nearest_pruned, pruned_scratch_len, BankPartition, PartitionView};
use miad::cpu::bank_search::{nearest, nearest_scratch_len, neighbour_table, sq_norms, BankView};
use miad::cpu::pool::Pool;
use miad::util::alloc_counter::counts as alloc_counts;
use miad::util::rng::Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    v
}

/// `groups` well separated centres, rows spread `noise` around them; every 4th row an
/// exact copy of another row (some at a lower index), every 12th copy moved by 1–3 ulps
/// in one value: many rows tied or within the GEMM form's rounding of each other.
fn clustered(n: usize, dim: usize, groups: usize, noise: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = random(groups * dim, seed + 1)
        .iter()
        .map(|v| 4.0 * v)
        .collect();
    let mut b = vec![0f32; n * dim];
    for row in b.chunks_exact_mut(dim) {
        let c = rng.below(groups as u64) as usize;
        for (v, &m) in row.iter_mut().zip(&centres[c * dim..(c + 1) * dim]) {
            *v = m + noise * rng.normal();
        }
    }
    for i in (3..n).step_by(4) {
        let src = (i * 7 + 1) % n;
        b.copy_within(src * dim..(src + 1) * dim, i * dim);
        if i % 3 == 0 {
            let c = i * dim + rng.below(dim as u64) as usize;
            b[c] = f32::from_bits(b[c].to_bits() + 1 + (i as u32 % 3));
        }
    }
    b
}

/// Queries: exact bank rows (duplicated ones too), rows moved a little, random rows.
fn queries_near(b: &[f32], dim: usize, nq: usize, seed: u64) -> Vec<f32> {
    let n = b.len() / dim;
    let mut q = random(nq * dim, seed);
    for (j, row) in q.chunks_exact_mut(dim).enumerate() {
        let src = &b[(j * 13 % n) * dim..][..dim];
        match j % 3 {
            0 => row.copy_from_slice(src),
            1 => row
                .iter_mut()
                .zip(src)
                .for_each(|(v, &s)| *v = s + 0.01 * *v),
            _ => {}
        }
    }
    q
}

/// Asserts `nearest_pruned` = `nearest` (rows and distance bits) and returns the
/// (asked, computed) pair counts.
fn assert_pruned_equals_nearest(
    q: &[f32],
    b: &[f32],
    dim: usize,
    clusters: usize,
    exclude: Option<(&[u32], u32)>,
    what: &str,
) -> (u64, u64) {
    let mut norms = vec![0f32; b.len() / dim];
    sq_norms(b, dim, &mut norms);
    let bv = BankView::new(b, &norms, dim);
    let nq = q.len() / dim;
    let mut counts = (0, 0);
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        let (mut wd, mut wi) = (vec![0f32; nq], vec![0u32; nq]);
        let mut s = vec![0f32; nearest_scratch_len(threads)];
        nearest(&pool, q, bv, exclude, &mut wd, &mut wi, &mut s);
        let part = BankPartition::build(&pool, bv, clusters).expect("a finite bank");
        let view = part.view(&bv).expect("a partition of this bank");
        let mut sp = vec![0f32; pruned_scratch_len(threads, nq, dim, part.clusters())];
        let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
        nearest_pruned(&pool, q, bv, view, exclude, &mut d, &mut i, &mut sp);
        assert_eq!(i, wi, "{what} ({threads} threads): rows");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&d),
            bits(&wd),
            "{what} ({threads} threads): distance bits"
        );
        // Again on the same scratch: the same bits, and no allocation.
        let (mut d2, mut i2) = (vec![0f32; nq], vec![0u32; nq]);
        let before = alloc_counts();
        nearest_pruned(&pool, q, bv, view, exclude, &mut d2, &mut i2, &mut sp);
        assert_eq!(alloc_counts(), before, "{what}: the search allocated");
        assert_eq!(
            (bits(&d2), i2),
            (bits(&wd), wi.clone()),
            "{what}: second run"
        );
        counts = part.pair_counts();
        assert_eq!(counts.0, 2 * (nq * bv.n) as u64, "{what}: pairs asked");
        // The stored form: the same arrays read back as a view of the bank.
        // The stored form: the same arrays read back as a view of the bank, with the
        // cluster bound alone (a file written before the projection) and with it.
        let stored = PartitionView::new(&bv, &part.order, &part.starts, &part.radii).unwrap();
        let (mut d3, mut i3) = (vec![0f32; nq], vec![0u32; nq]);
        nearest_pruned(&pool, q, bv, stored, exclude, &mut d3, &mut i3, &mut sp);
        assert_eq!(
            (bits(&d3), i3),
            (bits(&wd), wi.clone()),
            "{what}: stored view, cluster bound only"
        );
        if let Some(p) = &part.projection {
            let stored = stored.with_projection(&bv, &p.basis, &p.rows).unwrap();
            let (mut d4, mut i4) = (vec![0f32; nq], vec![0u32; nq]);
            nearest_pruned(&pool, q, bv, stored, exclude, &mut d4, &mut i4, &mut sp);
            assert_eq!((bits(&d4), i4), (bits(&wd), wi), "{what}: stored view");
        }
    }
    eprintln!(
        "pruned search {what}: {} of {} distances computed",
        counts.1, counts.0
    );
    counts
}

#[test]
fn pruned_search_equals_nearest_on_random_and_clustered_banks() {
    for (nq, n, dim, groups, noise, clusters) in [
        (150usize, 2000usize, 64usize, 0usize, 0f32, 31usize),
        (130, 3000, 96, 16, 0.05, 47),
        (70, 1500, 1920, 8, 0.3, 23),
        (40, 700, 1152, 16, 0.05, 1),
        (100, 900, 32, 16, 0.05, 900),
        (9, 13, 16, 4, 0.05, 5),
    ] {
        let b = if groups == 0 {
            random(n * dim, 3 + n as u64)
        } else {
            clustered(n, dim, groups, noise, 3 + n as u64)
        };
        let q = queries_near(&b, dim, nq, 4 + n as u64);
        let what = format!("{nq} x {n} x {dim}, {groups} groups, {clusters} clusters");
        assert_pruned_equals_nearest(&q, &b, dim, clusters, None, &what);
    }
}

#[test]
fn pruned_search_prunes_a_clustered_bank() {
    let (n, dim) = (4000, 128);
    let b = clustered(n, dim, 32, 0.05, 11);
    // In farthest-first order, as the fit stores a bank: the first rows (the centres)
    // then cover every group.
    let order = miad::cpu::coreset::greedy(&Pool::new(2), &b, dim, n);
    let b: Vec<f32> = order
        .iter()
        .flat_map(|&i| b[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect();
    // Queries near bank rows (what leave-one-out scoring asks).
    let mut q = random(256 * dim, 12);
    for (j, row) in q.chunks_exact_mut(dim).enumerate() {
        let src = &b[(j * 13 % n) * dim..][..dim];
        row.iter_mut()
            .zip(src)
            .for_each(|(v, &s)| *v = s + 0.01 * *v);
    }
    let (asked, computed) = assert_pruned_equals_nearest(&q, &b, dim, 62, None, "prune rate");
    assert!(
        computed * 4 < asked,
        "a bank of 32 tight groups must prune most clusters: {computed} of {asked}"
    );
}

#[test]
fn pruned_search_excludes_one_origin_and_keeps_ties_to_the_lowest_row() {
    let (n, dim) = (1200, 48);
    let mut b = clustered(n, dim, 12, 0.05, 21);
    // Exact ties at distance 0 across origins: row 500 copied to 40 and 900.
    b.copy_within(500 * dim..501 * dim, 40 * dim);
    b.copy_within(500 * dim..501 * dim, 900 * dim);
    let origin: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
    let mut q = queries_near(&b, dim, 90, 22);
    q[..dim].copy_from_slice(&b[500 * dim..501 * dim]);
    for id in [0u32, 5, 6] {
        let what = format!("excluding origin {id}");
        assert_pruned_equals_nearest(&q, &b, dim, 18, Some((&origin, id)), &what);
    }
    // Every row excluded: no answer at all, as nearest says.
    let one = vec![3u32; n];
    assert_pruned_equals_nearest(&q, &b, dim, 18, Some((&one, 3)), "all excluded");
}

#[test]
fn pruned_search_takes_non_finite_queries_through_the_plain_block() {
    let (n, dim) = (600, 32);
    let b = clustered(n, dim, 8, 0.05, 31);
    let mut q = queries_near(&b, dim, 70, 32);
    q[dim + 3] = f32::NAN;
    q[40 * dim] = f32::INFINITY;
    assert_pruned_equals_nearest(&q, &b, dim, 9, None, "NaN and inf queries");
    // A bank with a value that is not finite gets no partition.
    let mut bad = b.clone();
    bad[7] = f32::NAN;
    let mut norms = vec![0f32; n];
    sq_norms(&bad, dim, &mut norms);
    let pool = Pool::new(1);
    assert!(BankPartition::build(&pool, BankView::new(&bad, &norms, dim), 9).is_none());
}

/// Rows spread mostly along a few directions (a steep spectrum, as the M3DM banks have)
/// with small noise in every other one, in farthest-first order; every 5th row an exact
/// copy of another.
fn steep(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let dirs = random(4 * dim, seed + 1);
    let mut b = vec![0f32; n * dim];
    for row in b.chunks_exact_mut(dim) {
        let w = [
            8.0 * rng.normal(),
            3.0 * rng.normal(),
            rng.normal(),
            0.5 * rng.normal(),
        ];
        for (c, v) in row.iter_mut().enumerate() {
            *v = 5.0 + (0..4).map(|d| w[d] * dirs[d * dim + c]).sum::<f32>() + 0.05 * rng.normal();
        }
    }
    for i in (4..n).step_by(5) {
        let src = (i * 3 + 1) % n;
        b.copy_within(src * dim..(src + 1) * dim, i * dim);
    }
    let order = miad::cpu::coreset::greedy(&Pool::new(2), &b, dim, n);
    order
        .iter()
        .flat_map(|&i| b[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect()
}

#[test]
fn projection_bound_prunes_a_steep_bank_far_more_than_the_cluster_bound() {
    let (n, dim) = (3000, 256);
    let b = steep(n, dim, 41);
    let q = queries_near(&b, dim, 200, 42);
    let mut norms = vec![0f32; n];
    sq_norms(&b, dim, &mut norms);
    let bv = BankView::new(&b, &norms, dim);
    let pool = Pool::new(2);
    let part = BankPartition::build(&pool, bv, 46).unwrap();
    assert!(
        part.projection.is_some(),
        "a bank of 256 values gets a projection"
    );
    // The same partition without it: the search before the projection bound.
    let cluster = BankPartition::copied(part.view(&bv).unwrap()).without_projection();
    let nq = q.len() / dim;
    let mut sp = vec![0f32; pruned_scratch_len(2, nq, dim, part.clusters())];
    let (mut wd, mut wi) = (vec![0f32; nq], vec![0u32; nq]);
    nearest(&pool, &q, bv, None, &mut wd, &mut wi, &mut sp);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for p in [&part, &cluster] {
        let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
        nearest_pruned(
            &pool,
            &q,
            bv,
            p.view(&bv).unwrap(),
            None,
            &mut d,
            &mut i,
            &mut sp,
        );
        assert_eq!((bits(&d), &i), (bits(&wd), &wi));
    }
    let (asked, with) = part.pair_counts();
    let (_, without) = cluster.pair_counts();
    eprintln!(
        "steep bank: {with} pairs computed with the projection bound ({} bounds), {without} without, of {asked}",
        part.projected_pairs()
    );
    assert!(
        with * 3 < without,
        "the projection bound must prune most of what the cluster bound keeps: {with} vs {without}"
    );
    assert_eq!(cluster.projected_pairs(), 0);
}

#[test]
fn flat_spectrum_far_queries_and_wide_magnitudes_keep_nearests_bits() {
    // A flat spectrum (every direction alike): the projection barely bounds anything.
    let b = random(900 * 96, 51);
    let q = random(60 * 96, 52);
    assert_pruned_equals_nearest(&q, &b, 96, 14, None, "flat spectrum");
    // Queries far from the bank (a shifted copy of its rows, and far random points).
    let b = steep(1000, 128, 53);
    let mut q = queries_near(&b, 128, 90, 54);
    for (j, v) in q.iter_mut().enumerate() {
        if j % 256 < 128 {
            *v = 40.0 * *v + 300.0;
        }
    }
    assert_pruned_equals_nearest(&q, &b, 128, 15, None, "far queries");
    // Rows over many magnitudes: some scaled by 1e3, some by 1e-3.
    let mut b = steep(800, 64, 55);
    for (i, row) in b.chunks_exact_mut(64).enumerate() {
        let s = [1.0, 1e3, 1e-3][i % 3];
        row.iter_mut().for_each(|v| *v *= s);
    }
    let q = queries_near(&b, 64, 80, 56);
    assert_pruned_equals_nearest(&q, &b, 64, 12, None, "wide magnitudes");
}

/// nearest's computed d² for one pair: the norms summed in order, the dot product as one
/// multiply-add chain in index order (the micro-kernel's arithmetic on an FMA machine).
fn computed_d2(q: &[f32], b: &[f32]) -> f32 {
    let qn: f32 = q.iter().map(|v| v * v).sum();
    let bn: f32 = b.iter().map(|v| v * v).sum();
    let dot = q.iter().zip(b).fold(0f32, |s, (&x, &y)| x.mul_add(y, s));
    qn - 2.0 * dot + bn
}

/// The squared norms of the rows of `b` and its partition into 10 clusters.
fn norms_and_partition(pool: &Pool, b: &[f32], dim: usize) -> (Vec<f32>, BankPartition) {
    let mut norms = vec![0f32; b.len() / dim];
    sq_norms(b, dim, &mut norms);
    let part = BankPartition::build(pool, BankView::new(b, &norms, dim), 10).unwrap();
    (norms, part)
}

#[test]
fn projection_bound_is_never_above_the_true_or_the_computed_distance() {
    let pool = Pool::new(2);
    let mut tight = 0usize;
    let mut pairs = 0usize;
    for (what, b, dim, q) in [
        ("steep", steep(700, 192, 61), 192usize, None),
        ("clustered", clustered(600, 128, 12, 0.05, 62), 128, None),
        ("flat", random(500 * 64, 63), 64, None),
        (
            "far queries",
            steep(400, 96, 64),
            96,
            Some(random(40 * 96, 65)),
        ),
    ] {
        let n = b.len() / dim;
        let q = q
            .map(|q| q.iter().map(|v| 50.0 * v - 20.0).collect::<Vec<f32>>())
            .unwrap_or_else(|| queries_near(&b, dim, 60, 66));
        let (norms, part) = norms_and_partition(&pool, &b, dim);
        let bv = BankView::new(&b, &norms, dim);
        let view = part.view(&bv).unwrap();
        let pv = view.projection.expect("a projection");
        let mut p = vec![0f32; PROJ_DIMS];
        for qr in q.chunks_exact(dim) {
            let qn: f32 = qr.iter().map(|v| v * v).sum();
            let bound = QueryBound::new(&pv, qr, qn, &mut p);
            for pos in 0..n {
                let rec = pv.record(pos);
                let row = bv.row(part.order[pos] as usize);
                let dot = p
                    .iter()
                    .zip(&rec[..PROJ_DIMS])
                    .fold(0f32, |s, (&x, &y)| x.mul_add(y, s));
                let lower = bound.lower_bound(rec, dot);
                let exact: f64 = qr
                    .iter()
                    .zip(row)
                    .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                    .sum();
                let computed = computed_d2(qr, row) as f64;
                assert!(
                    lower <= exact && lower <= computed,
                    "{what}: bound {lower} above the true {exact} or computed {computed} d²"
                );
                pairs += 1;
                tight += (lower >= 0.5 * exact) as usize;
            }
        }
    }
    // Not a vacuous bound: most pairs get at least half their distance.
    eprintln!("projection bound ≥ half the true d² for {tight} of {pairs} pairs");
    assert!(tight * 2 > pairs, "{tight} of {pairs}");
}

#[test]
fn query_bounds_filled_in_pairs_equal_the_single_query_bounds() {
    let pool = Pool::new(2);
    let dim = 97; // odd: the last coordinate goes alone
    let b = steep(600, dim, 71);
    let n = b.len() / dim;
    let (norms, part) = norms_and_partition(&pool, &b, dim);
    let bv = BankView::new(&b, &norms, dim);
    let view = part.view(&bv).unwrap();
    let pv = view.projection.expect("a projection");
    // An odd number of queries: the last one is projected alone.
    let q = queries_near(&b, dim, 7, 72);
    let nq = q.len() / dim;
    let mut qn = vec![0f32; nq];
    sq_norms(&q, dim, &mut qn);
    let mut filled = vec![QueryBound::default(); nq];
    let mut p_filled = vec![0f32; nq * PROJ_DIMS];
    QueryBound::fill(&pv, &q, &qn, &mut p_filled, &mut filled);
    let mut p = vec![0f32; PROJ_DIMS];
    for (j, qr) in q.chunks_exact(dim).enumerate() {
        let single = QueryBound::new(&pv, qr, qn[j], &mut p);
        let p_j = &p_filled[j * PROJ_DIMS..(j + 1) * PROJ_DIMS];
        assert_eq!(
            p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            p_j.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "query {j}: projected coordinates"
        );
        for pos in (0..n).step_by(37) {
            let rec = pv.record(pos);
            for dot in [0.0f32, 1.5, -3.25] {
                assert_eq!(
                    single.lower_bound(rec, dot).to_bits(),
                    filled[j].lower_bound(rec, dot).to_bits(),
                    "query {j}, row {pos}"
                );
            }
        }
    }
}

#[test]
fn neighbour_table_through_the_partition_equals_the_full_scan() {
    // Five distinct rows, each copied many times: every row's neighbours are ties.
    let five = random(5 * 64, 66);
    let copies: Vec<f32> = (0..300)
        .flat_map(|i| five[(i * 3 % 5) * 64..(i * 3 % 5 + 1) * 64].to_vec())
        .collect();
    let mut magnitudes = steep(700, 64, 67);
    for (i, row) in magnitudes.chunks_exact_mut(64).enumerate() {
        let s = [1.0, 1e3, 1e-3][i % 3];
        row.iter_mut().for_each(|v| *v *= s);
    }
    // Points of a small integer lattice in 6 of 64 coordinates: the projection holds all
    // of every distance (its bound is as tight as its rounding margins) and most
    // neighbours tie exactly, so a bound a hair too high drops a pair that wins a tie.
    let mut rng = Rng::new(69);
    let lattice: Vec<f32> = (0..900 * 64)
        .map(|i| if i % 64 < 6 { rng.below(4) as f32 } else { 0.0 })
        .collect();
    let cases: [(&str, Vec<f32>, usize, usize); 8] = [
        ("lattice, ties, 64-d", lattice, 64, 14),
        // Below the projection's width: the cluster bound alone.
        ("random 24-d", random(700 * 24, 61), 24, 10),
        (
            "clustered, ties, 48-d",
            clustered(1500, 48, 20, 0.05, 62),
            48,
            23,
        ),
        ("steep, copies, 256-d", steep(2000, 256, 63), 256, 31),
        ("flat spectrum 96-d", random(900 * 96, 64), 96, 14),
        (
            "clustered, ties, 128-d",
            clustered(1300, 128, 12, 0.3, 65),
            128,
            20,
        ),
        ("copies of five rows", copies, 64, 12),
        ("magnitudes 1e-3 to 1e3", magnitudes, 64, 12),
    ];
    for (what, b, dim, clusters) in cases {
        let n = b.len() / dim;
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let bv = BankView::new(&b, &norms, dim);
        let full = neighbour_table(&Pool::new(2), bv, &mut |_, _| {}).unwrap();
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            let part = BankPartition::build(&pool, bv, clusters).expect("a finite bank");
            let mut reports = Vec::new();
            let view = part.view(&bv).unwrap();
            let t =
                neighbour_table_pruned(&pool, bv, view, &mut |d, t| reports.push((d, t))).unwrap();
            assert_eq!(t.rows, full.rows, "{what} ({threads} threads)");
            assert_eq!(reports.last(), Some(&(n, n)), "{what}: progress");
            // The cluster bound alone (a partition without the projection).
            let bare = PartitionView::new(&bv, &part.order, &part.starts, &part.radii).unwrap();
            let c = neighbour_table_pruned(&pool, bv, bare, &mut |_, _| {}).unwrap();
            assert_eq!(
                c.rows, full.rows,
                "{what} ({threads} threads, clusters only)"
            );
            eprintln!(
                "neighbour table {what}: {} distances summed to the end with the projection, {} with \
                 the clusters alone, of {}",
                t.distances,
                c.distances,
                n * n
            );
            assert!(
                t.distances <= c.distances,
                "{what}: the projection adds pruning"
            );
            if what.starts_with("steep") {
                assert!(
                    t.distances * 5 < (n * n) as u64,
                    "a steep bank's table skips most pairs: {} of {}",
                    t.distances,
                    n * n
                );
            }
        }
    }
    // A bank with a value that is not finite has no table, as the full scan.
    let mut b = random(100 * 16, 68);
    let mut norms = vec![0f32; 100];
    sq_norms(&b, 16, &mut norms);
    let pool = Pool::new(1);
    let part = BankPartition::build(&pool, BankView::new(&b, &norms, 16), 12).unwrap();
    b[37] = f32::NAN;
    let bv = BankView::new(&b, &norms, 16);
    let view = PartitionView::new(&bv, &part.order, &part.starts, &part.radii).unwrap();
    assert!(neighbour_table_pruned(&pool, bv, view, &mut |_, _| {}).is_none());
}
