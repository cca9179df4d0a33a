//! Bank search (SPEC §7) against brute force in f64, ties, exclusion, re-weighting,
//! thread-count independence and zero allocations; the fit-time neighbour table against a
//! brute-force f32 computation and `knn_scan`, and scores with it equal to scores without.

use miad::cpu::bank_search::{
    knn_scan, knn_scratch_len, nearest, nearest_scratch_len, neighbour_table, reweighted_score,
    score_part, score_scratch_len, sq_norms, BankView, NO_ROW, TABLE_NEIGHBOURS,
};
use miad::cpu::pool::Pool;
use miad::util::alloc_counter::counts;
use miad::util::rng::Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    v
}

fn brute(q: &[f32], b: &[f32], dim: usize) -> Vec<(f64, usize)> {
    q.chunks_exact(dim)
        .map(|x| {
            let mut best = (f64::INFINITY, 0);
            for (i, r) in b.chunks_exact(dim).enumerate() {
                let d: f64 = x
                    .iter()
                    .zip(r)
                    .map(|(a, c)| (*a as f64 - *c as f64).powi(2))
                    .sum();
                if d < best.0 {
                    best = (d, i);
                }
            }
            (best.0.sqrt(), best.1)
        })
        .collect()
}

fn run_nearest(pool: &Pool, q: &[f32], bank: &[f32], dim: usize) -> (Vec<f32>, Vec<u32>) {
    let mut norms = vec![0f32; bank.len() / dim];
    sq_norms(bank, dim, &mut norms);
    let bv = BankView::new(bank, &norms, dim);
    let nq = q.len() / dim;
    let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
    let mut s = vec![0f32; nearest_scratch_len(pool.threads())];
    nearest(pool, q, bv, None, &mut d, &mut i, &mut s);
    (d, i)
}

#[test]
fn nearest_equals_brute_force() {
    let pool = Pool::new(2);
    for (nq, nb, dim) in [(1, 1, 3), (70, 1100, 37), (130, 513, 64), (5, 2000, 200)] {
        let q = random(nq * dim, nq as u64);
        let b = random(nb * dim, nb as u64 + 7);
        let (d, i) = run_nearest(&pool, &q, &b, dim);
        for (k, (wd, wi)) in brute(&q, &b, dim).into_iter().enumerate() {
            assert!(
                (d[k] as f64 - wd).abs() < 1e-3 * (1.0 + wd),
                "{nq} {nb} {dim}: {} vs {wd}",
                d[k]
            );
            // Random normal data: the nearest is well separated from the runner-up.
            assert_eq!(i[k] as usize, wi);
        }
    }
}

#[test]
fn ties_go_to_the_lowest_index_and_threads_do_not_matter() {
    // Small integers: every dot product and norm is exact in f32, so ties are exact.
    let dim = 8;
    let mut rng = Rng::new(3);
    let mut b: Vec<f32> = (0..1500 * dim).map(|_| rng.below(5) as f32).collect();
    // Rows 10, 700 and 1400 identical; queries equal to them.
    let row: Vec<f32> = b[10 * dim..11 * dim].to_vec();
    b[700 * dim..701 * dim].copy_from_slice(&row);
    b[1400 * dim..1401 * dim].copy_from_slice(&row);
    let mut q = row.clone();
    q.extend((0..200 * dim).map(|_| rng.below(5) as f32));
    let (d1, i1) = run_nearest(&Pool::new(1), &q, &b, dim);
    let (d3, i3) = run_nearest(&Pool::new(3), &q, &b, dim);
    assert_eq!((d1.clone(), i1.clone()), (d3, i3));
    assert_eq!(d1[0], 0.0);
    for (k, x) in q.chunks_exact(dim).enumerate() {
        // The lowest index at the minimal (exact, integer) squared distance.
        let dists: Vec<i64> = b
            .chunks_exact(dim)
            .map(|r| x.iter().zip(r).map(|(a, c)| ((a - c) as i64).pow(2)).sum())
            .collect();
        let min = *dists.iter().min().unwrap();
        let first = dists.iter().position(|&v| v == min).unwrap();
        assert_eq!(i1[k] as usize, first, "query {k}");
        assert_eq!(d1[k], (min as f32).sqrt());
    }
}

#[test]
fn exclusion_skips_rows_of_one_origin() {
    let dim = 16;
    let b = random(300 * dim, 5);
    let q = b[42 * dim..43 * dim].to_vec();
    let mut norms = vec![0f32; 300];
    sq_norms(&b, dim, &mut norms);
    let bv = BankView::new(&b, &norms, dim);
    let origin: Vec<u32> = (0..300).map(|i| (i / 50) as u32).collect();
    let pool = Pool::new(2);
    let (mut d, mut i) = ([0f32; 1], [0u32; 1]);
    let mut s = vec![0f32; nearest_scratch_len(2)];
    nearest(&pool, &q, bv, Some((&origin, 0)), &mut d, &mut i, &mut s);
    let others: Vec<f32> = b[50 * dim..].to_vec();
    let want = brute(&q, &others, dim)[0];
    assert_eq!(i[0] as usize, want.1 + 50);
    assert!(d[0] > 0.0);
}

#[test]
fn knn_scan_and_reweighting_follow_patchcore() {
    let dim = 32;
    let pool = Pool::new(2);
    let b = random(9000 * dim, 11);
    let x = random(50 * dim, 12);
    let mut norms = vec![0f32; 9000];
    sq_norms(&b, dim, &mut norms);
    let bv = BankView::new(&b, &norms, dim);
    // k nearest of a bank row: itself first, then brute-force order.
    let mut out = [0u32; 3];
    let mut s = vec![0f32; knn_scratch_len(9000, 3)];
    let found = knn_scan(&pool, bv.row(4100), bv, None, 3, &mut out, &mut s);
    assert_eq!(found, 3);
    let mut order: Vec<(f64, usize)> = b
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, r)| {
            (
                r.iter()
                    .zip(bv.row(4100))
                    .map(|(a, c)| (*a as f64 - *c as f64).powi(2))
                    .sum(),
                i,
            )
        })
        .collect();
    order.sort_by(|a, c| a.partial_cmp(c).unwrap());
    assert_eq!(
        out.map(|v| v as usize),
        [order[0].1, order[1].1, order[2].1]
    );
    assert_eq!(out[0], 4100);

    let mut dmap = vec![0f32; 50];
    let mut nn = vec![0u32; 50];
    let mut sc = vec![0f32; score_scratch_len(2, 9000)];
    let r = score_part(&pool, &x, bv, None, &mut dmap, &mut nn, &mut sc);
    // Reference in f64.
    let bf = brute(&x, &b, dim);
    let (j_star, (s_star, m_star)) =
        bf.iter()
            .enumerate()
            .fold((0, (f64::NEG_INFINITY, 0)), |acc, (j, v)| {
                if v.0 > acc.1 .0 {
                    (j, *v)
                } else {
                    acc
                }
            });
    assert_eq!(r.patch, j_star);
    assert_eq!(r.nearest as usize, m_star);
    let mut order: Vec<(f64, usize)> = b
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| {
            (
                row.iter()
                    .zip(bv.row(m_star))
                    .map(|(a, c)| (*a as f64 - *c as f64).powi(2))
                    .sum(),
                i,
            )
        })
        .collect();
    order.sort_by(|a, c| a.partial_cmp(c).unwrap());
    let dd = (dim as f64).sqrt();
    let xj = &x[j_star * dim..(j_star + 1) * dim];
    let denom: f64 = order[1..3]
        .iter()
        .map(|&(_, k)| {
            let d: f64 = xj
                .iter()
                .zip(bv.row(k))
                .map(|(a, c)| (*a as f64 - *c as f64).powi(2))
                .sum();
            (d.sqrt() / dd).exp()
        })
        .sum();
    let w = 1.0 - (s_star / dd).exp() / denom;
    assert!((r.weight as f64 - w).abs() < 1e-4, "{} vs {w}", r.weight);
    assert!((r.score as f64 - w * s_star).abs() < 1e-3);
    for (a, b) in dmap.iter().zip(&bf) {
        assert!((*a as f64 - b.0).abs() < 1e-3);
    }
}

#[test]
fn scoring_does_not_allocate() {
    let dim = 24;
    let pool = Pool::new(1);
    let b = random(2000 * dim, 1);
    let x = random(100 * dim, 2);
    let mut norms = vec![0f32; 2000];
    sq_norms(&b, dim, &mut norms);
    let bv = BankView::new(&b, &norms, dim);
    let mut dmap = vec![0f32; 100];
    let mut nn = vec![0u32; 100];
    let mut sc = vec![0f32; score_scratch_len(1, 2000)];
    score_part(&pool, &x, bv, None, &mut dmap, &mut nn, &mut sc);
    let before = counts();
    for _ in 0..5 {
        score_part(&pool, &x, bv, None, &mut dmap, &mut nn, &mut sc);
    }
    assert_eq!(counts(), before);
}

#[test]
fn near_duplicate_rows_pick_a_nearest_within_the_bound_and_exact_copies_the_lowest() {
    // Exact copies of a row and copies nudged by 1e-6 in one value, on both sides of the
    // kernels' row groups (12, 6, 4 rows) and of the overlapping last group. The search
    // evaluates ‖x‖² − 2x·b + ‖b‖² in f32, so among rows closer than its rounding it may
    // pick any; what must hold: (1) the picked row's exact distance is within that
    // rounding bound of the exact minimum, (2) of exact copies, the lowest index wins
    // (their computed distances are the same bits), (3) threads do not matter.
    let dim = 40;
    let exact = |x: &[f32], r: &[f32]| -> f64 {
        x.iter()
            .zip(r)
            .map(|(a, c)| (*a as f64 - *c as f64).powi(2))
            .sum()
    };
    for nb in [12usize, 13, 25, 37, 101] {
        let mut b = random(nb * dim, 30 + nb as u64);
        let r0: Vec<f32> = b[..dim].to_vec();
        let copies = [0usize, 5, nb - 1];
        for &c in &copies[1..] {
            b[c * dim..(c + 1) * dim].copy_from_slice(&r0);
        }
        let r1: Vec<f32> = b[dim..2 * dim].to_vec();
        for (row, nudge) in [(3usize, 1e-6f32), (nb - 2, -1e-6)] {
            if !copies.contains(&row) && row != 1 {
                b[row * dim..(row + 1) * dim].copy_from_slice(&r1);
                b[row * dim + 7] += nudge;
            }
        }
        let mut q = r0.clone();
        q.extend_from_slice(&r1);
        let mut r1_far = r1.clone();
        r1_far[7] += 1e-3;
        q.extend_from_slice(&r1_far);
        let (d, i) = run_nearest(&Pool::new(2), &q, &b, dim);
        let (d1, i1) = run_nearest(&Pool::new(1), &q, &b, dim);
        assert_eq!((d.clone(), i.clone()), (d1, i1), "{nb}: threads");
        for (k, x) in q.chunks_exact(dim).enumerate() {
            let rows: Vec<f64> = b.chunks_exact(dim).map(|r| exact(x, r)).collect();
            let min = rows.iter().cloned().fold(f64::INFINITY, f64::min);
            // f32 rounding of the three-term formula: a few ulp of its largest terms.
            let xn: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
            let bound = 4.0 * (dim as f64 + 3.0) * f32::EPSILON as f64 * 4.0 * xn.max(1.0);
            let got = i[k] as usize;
            assert!(rows[got] <= min + bound, "{nb} query {k}: row {got}");
            if copies.contains(&got) {
                assert_eq!(
                    got, 0,
                    "{nb} query {k}: exact copies go to the lowest index"
                );
            }
        }
    }
}

/// A clustered bank with exact duplicates (some at lower indices than their source) and
/// near-duplicates (one value moved by 1 to 3 ulps): many rows within the GEMM form's
/// rounding of each other.
fn clustered_with_duplicates(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centres = random(16 * dim, seed + 1);
    let mut b = vec![0f32; n * dim];
    for row in b.chunks_exact_mut(dim) {
        let c = rng.below(16) as usize;
        for (v, &m) in row.iter_mut().zip(&centres[c * dim..(c + 1) * dim]) {
            *v = m + 0.05 * rng.normal();
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

/// The re-weighting's rows of every bank row by brute force: the 3 nearest by f32
/// `Σ (a − b)²` summed in order ((distance, index) order), without the first.
fn brute_table(b: &[f32], dim: usize) -> Vec<u32> {
    let n = b.len() / dim;
    let mut out = Vec::with_capacity(n * TABLE_NEIGHBOURS);
    for m in 0..n {
        let x = &b[m * dim..(m + 1) * dim];
        let mut all: Vec<(f32, u32)> = b
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, r)| {
                (
                    x.iter().zip(r).map(|(a, c)| (a - c) * (a - c)).sum(),
                    i as u32,
                )
            })
            .collect();
        all.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
        for t in 1..3 {
            out.push(all.get(t).map_or(NO_ROW, |v| v.1));
        }
    }
    out
}

#[test]
fn neighbour_table_equals_brute_force_and_knn_scan() {
    for (n, dim, clustered) in [
        (1usize, 8usize, false),
        (2, 8, false),
        (3, 8, true),
        (11, 16, true),
        (64, 12, false),
        // Tiles of 64 rows: an even and an odd number of tiles, a last one of 1 row.
        (200, 24, true),
        (257, 20, false),
        (700, 48, false),
        (900, 40, true),
        (300, 200, true),
    ] {
        let b = if clustered {
            clustered_with_duplicates(n, dim, 40 + n as u64)
        } else {
            random(n * dim, 40 + n as u64)
        };
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let bv = BankView::new(&b, &norms, dim);
        let mut reports = Vec::new();
        let t2 = neighbour_table(&Pool::new(2), bv, &mut |d, t| reports.push((d, t))).unwrap();
        let t1 = neighbour_table(&Pool::new(1), bv, &mut |_, _| {}).unwrap();
        assert_eq!(t2, t1, "{n} x {dim}: threads");
        assert_eq!(reports.last(), Some(&(n, n)), "{n} x {dim}: progress");
        assert_eq!(t2.rows, brute_table(&b, dim), "{n} x {dim}: brute force");
        let mut out = [0u32; 3];
        let mut s = vec![0f32; knn_scratch_len(n, 3)];
        for m in 0..n {
            let found = knn_scan(&Pool::new(2), bv.row(m), bv, None, 3, &mut out, &mut s);
            let mut want = [NO_ROW; TABLE_NEIGHBOURS];
            want[..found - 1].copy_from_slice(&out[1..found]);
            assert_eq!(
                t2.rows[m * TABLE_NEIGHBOURS..(m + 1) * TABLE_NEIGHBOURS],
                want,
                "{n} x {dim}: row {m} vs knn_scan"
            );
        }
    }
    // A bank with a NaN or an infinity has no table (the scan keeps its NaN handling).
    let mut b = random(50 * 8, 3);
    let mut norms = vec![0f32; 50];
    sq_norms(&b, 8, &mut norms);
    b[17] = f32::NAN;
    assert!(neighbour_table(&Pool::new(1), BankView::new(&b, &norms, 8), &mut |_, _| {}).is_none());
    b[17] = f32::INFINITY;
    assert!(neighbour_table(&Pool::new(1), BankView::new(&b, &norms, 8), &mut |_, _| {}).is_none());
}

#[test]
fn scores_with_the_neighbour_table_equal_scores_without() {
    let pool = Pool::new(2);
    for (n, dim, clustered) in [(2usize, 16usize, false), (900, 40, true), (1200, 32, false)] {
        let b = if clustered {
            clustered_with_duplicates(n, dim, 70 + n as u64)
        } else {
            random(n * dim, 70 + n as u64)
        };
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let plain = BankView::new(&b, &norms, dim);
        let table = neighbour_table(&pool, plain, &mut |_, _| {}).unwrap();
        let with = plain.with_neighbours(&table.rows);
        let mut sc = vec![0f32; score_scratch_len(2, n)];
        // Queries: random, bank rows plus noise, and exact bank rows (duplicated ones
        // included), so that m* is sometimes a row with a lower-index copy.
        for (k, noise) in [(0usize, 1.0f32), (1, 0.01), (2, 0.0)] {
            let nq = 60;
            let mut x = random(nq * dim, 80 + k as u64);
            for (j, row) in x.chunks_exact_mut(dim).enumerate() {
                let src = &b[(j * 13 % n) * dim..][..dim];
                if noise < 1.0 {
                    for (v, &s) in row.iter_mut().zip(src) {
                        *v = s + noise * *v;
                    }
                }
            }
            let (mut d1, mut n1) = (vec![0f32; nq], vec![0u32; nq]);
            let (mut d2, mut n2) = (vec![0f32; nq], vec![0u32; nq]);
            let r1 = score_part(&pool, &x, plain, None, &mut d1, &mut n1, &mut sc);
            let r2 = score_part(&pool, &x, with, None, &mut d2, &mut n2, &mut sc);
            assert_eq!(
                r1.score.to_bits(),
                r2.score.to_bits(),
                "{n} x {dim} queries {k}"
            );
            assert_eq!(r1.weight.to_bits(), r2.weight.to_bits());
            assert_eq!((r1.patch, r1.nearest), (r2.patch, r2.nearest));
            // With an exclusion (fit's leave-one-out) the table is not used: the same scan.
            let origin: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
            let ex = Some((origin.as_slice(), 2u32));
            let r3 = score_part(&pool, &x, plain, ex, &mut d1, &mut n1, &mut sc);
            let r4 = score_part(&pool, &x, with, ex, &mut d2, &mut n2, &mut sc);
            assert_eq!(r3.score.to_bits(), r4.score.to_bits());
        }
    }
}

/// The 3 nearest rows of `x` among those not excluded by brute force ((f32 `Σ (a − b)²`
/// summed in order, index) order).
fn brute_knn(x: &[f32], b: &[f32], dim: usize, origin: &[u32], id: u32) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = b
        .chunks_exact(dim)
        .enumerate()
        .filter(|&(i, _)| origin[i] != id)
        .map(|(i, r)| {
            let d = x.iter().zip(r).map(|(a, c)| (a - c) * (a - c)).sum();
            (d, i as u32)
        })
        .collect();
    all.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
    all.iter().take(3).map(|v| v.1).collect()
}

/// The leave-one-out re-weighting (rows of one origin excluded) takes m*'s neighbours
/// from the table when its entries are the scan's answer (both kept, the first at a
/// distance above 0) and scans otherwise: every m* and origin gives the scan's score
/// bits, and both ways are taken (duplicated and near-duplicated rows included). The
/// scan itself (rows 8 at a time) equals brute force with the exclusion.
#[test]
fn leave_one_out_reweighting_with_the_table_equals_the_scan() {
    let pool = Pool::new(2);
    for (n, dim, clustered) in [(5usize, 8usize, false), (203, 24, true), (301, 40, false)] {
        let b = if clustered {
            clustered_with_duplicates(n, dim, 90 + n as u64)
        } else {
            random(n * dim, 90 + n as u64)
        };
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let plain = BankView::new(&b, &norms, dim);
        let table = neighbour_table(&pool, plain, &mut |_, _| {}).unwrap();
        let with = plain.with_neighbours(&table.rows);
        let mut s = vec![0f32; knn_scratch_len(n, 3)];
        let x = random(dim, 7 + n as u64);
        let origin: Vec<u32> = (0..n as u32).map(|i| (i * 7 + i / 3) % 6).collect();
        let (mut by_table, mut by_scan) = (0, 0);
        for m in 0..n as u32 {
            for id in 0..6u32 {
                if origin[m as usize] == id {
                    continue;
                }
                let ex = Some((origin.as_slice(), id));
                let mut out = [0u32; 3];
                let found = knn_scan(&pool, plain.row(m as usize), plain, ex, 3, &mut out, &mut s);
                assert_eq!(
                    out[..found],
                    brute_knn(plain.row(m as usize), &b, dim, &origin, id)[..],
                    "{n} x {dim}: row {m}, origin {id}: scan vs brute force"
                );
                let d = [(x.iter().zip(plain.row(m as usize)))
                    .map(|(a, c)| (a - c) * (a - c))
                    .sum::<f32>()
                    .sqrt()];
                let r1 = reweighted_score(&pool, &x, plain, ex, &d, &[m], &mut s);
                let r2 = reweighted_score(&pool, &x, with, ex, &d, &[m], &mut s);
                let what = format!("{n} x {dim}: row {m}, origin {id}");
                assert_eq!(r1.score.to_bits(), r2.score.to_bits(), "{what}");
                assert_eq!(r1.weight.to_bits(), r2.weight.to_bits(), "{what}");
                let t = &table.rows[m as usize * TABLE_NEIGHBOURS..][..TABLE_NEIGHBOURS];
                let kept = t.iter().all(|&r| r != NO_ROW && origin[r as usize] != id);
                let apart = |r: u32| {
                    let (a, c) = (plain.row(m as usize), plain.row(r as usize));
                    a.iter().zip(c).map(|(a, c)| (a - c) * (a - c)).sum::<f32>() > 0.0
                };
                if kept && apart(t[0]) {
                    by_table += 1;
                } else {
                    by_scan += 1;
                }
            }
        }
        if n > 5 {
            assert!(
                by_table > 0 && by_scan > 0,
                "{n} x {dim}: {by_table} {by_scan}"
            );
        }
    }
}

/// `sq_norms` (rows 8 at a time) gives each row's in-order sum of squares, bit for bit,
/// for any number of rows, with values that are not finite and with values large enough
/// to overflow.
#[test]
fn sq_norms_equal_the_ordered_sum_of_each_row() {
    for (n, dim) in [
        (0usize, 3usize),
        (1, 5),
        (7, 24),
        (8, 1),
        (9, 24),
        (33, 130),
    ] {
        let mut rows = random(n * dim, 200 + n as u64);
        for (i, v) in rows.iter_mut().enumerate() {
            *v *= 1.0 + (i % 7) as f32 * 0.37;
        }
        if n > 5 {
            rows[2 * dim + 1] = f32::NAN;
            rows[3 * dim] = f32::INFINITY;
            rows[4 * dim] = 3e19;
            rows[5 * dim + dim - 1] = -0.0;
        }
        let mut got = vec![0f32; n];
        sq_norms(&rows, dim, &mut got);
        for (i, r) in rows.chunks_exact(dim).enumerate() {
            let mut want = 0f32;
            for v in r {
                want += v * v;
            }
            assert_eq!(got[i].to_bits(), want.to_bits(), "{n} x {dim}: row {i}");
        }
    }
}

#[test]
fn scoring_with_the_table_does_not_allocate() {
    let (n, dim) = (2000, 24);
    let pool = Pool::new(1);
    let b = random(n * dim, 1);
    let x = random(100 * dim, 2);
    let mut norms = vec![0f32; n];
    sq_norms(&b, dim, &mut norms);
    let table = neighbour_table(&pool, BankView::new(&b, &norms, dim), &mut |_, _| {}).unwrap();
    let bv = BankView::new(&b, &norms, dim).with_neighbours(&table.rows);
    let mut dmap = vec![0f32; 100];
    let mut nn = vec![0u32; 100];
    let mut sc = vec![0f32; score_scratch_len(1, n)];
    score_part(&pool, &x, bv, None, &mut dmap, &mut nn, &mut sc);
    let before = counts();
    for _ in 0..5 {
        score_part(&pool, &x, bv, None, &mut dmap, &mut nn, &mut sc);
    }
    assert_eq!(counts(), before);
}

/// `nearest` and `nearest_bf16` on the same data: the same rows and distance bits.
fn assert_bf16_equals_f32(q: &[f32], b: &[f32], dim: usize, threads: usize, what: &str) -> usize {
    use miad::cpu::bank_search::{nearest_bf16, nearest_bf16_scratch_len};
    let pool = Pool::new(threads);
    let (want_d, want_i) = run_nearest(&pool, q, b, dim);
    let mut norms = vec![0f32; b.len() / dim];
    sq_norms(b, dim, &mut norms);
    let bv = BankView::new(b, &norms, dim);
    let nq = q.len() / dim;
    let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
    let mut s = vec![0f32; nearest_bf16_scratch_len(threads, dim)];
    let scans = nearest_bf16(&pool, q, bv, &mut d, &mut i, &mut s);
    assert_eq!(i, want_i, "{what}: rows");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&d), bits(&want_d), "{what}: distance bits");
    eprintln!("bf16 search {what}: {scans} of {nq} queries scanned exactly");
    scans
}

#[test]
fn bf16_search_returns_the_f32_search_result() {
    if !miad::cpu::bank_search::bf16_search_available() {
        eprintln!("no AVX512-BF16 here: nearest_bf16 runs the f32 form on every query");
    }
    for (nq, n, dim, clustered) in [
        (200usize, 3000usize, 64usize, false),
        (130, 2000, 96, true),
        (40, 700, 1152, true),
        // More exact scans in a task than nearest's block of 1920-wide queries (64).
        (100, 300, 1920, true),
        (5, 3, 16, false),
        (9, 11, 32, true),
    ] {
        let b = if clustered {
            clustered_with_duplicates(n, dim, 90 + n as u64)
        } else {
            random(n * dim, 90 + n as u64)
        };
        // Queries: random, near bank rows, and exact bank rows (duplicated ones too).
        let mut q = random(nq * dim, 91 + n as u64);
        for (j, row) in q.chunks_exact_mut(dim).enumerate() {
            let src = &b[(j * 7 % n) * dim..][..dim];
            match j % 3 {
                0 => row.copy_from_slice(src),
                1 => row
                    .iter_mut()
                    .zip(src)
                    .for_each(|(v, &s)| *v = s + 0.01 * *v),
                _ => {}
            }
        }
        for threads in [1, 2] {
            assert_bf16_equals_f32(&q, &b, dim, threads, &format!("{nq} x {n} x {dim}"));
        }
    }
    // A NaN query and one beyond bf16's range: scanned exactly, still nearest's result.
    let (dim, n) = (32, 500);
    let b = random(n * dim, 5);
    let mut q = random(6 * dim, 6);
    q[dim + 3] = f32::NAN;
    q[3 * dim] = 3.3e38;
    let scans = assert_bf16_equals_f32(&q, &b, dim, 2, "NaN and huge queries");
    assert!(scans >= 2);
}

#[test]
fn bf16_search_forces_exact_scans_on_near_duplicate_groups() {
    // Groups of 12 rows within bf16 rounding of each other (more than the 8 kept):
    // queries equal to a group's rows must scan, and still give nearest's answer.
    let (dim, n) = (64, 1200);
    let mut b = random(n * dim, 8);
    let mut rng = Rng::new(9);
    for g in 0..10 {
        let src = g * 100;
        let row = b[src * dim..][..dim].to_vec();
        for m in 1..12 {
            let dst = src + m * 7;
            b[dst * dim..][..dim].copy_from_slice(&row);
            let c = dst * dim + rng.below(dim as u64) as usize;
            b[c] = f32::from_bits(b[c].to_bits() + (m as u32 % 3));
        }
    }
    let q: Vec<f32> = (0..10)
        .flat_map(|g| b[g * 100 * dim..][..dim].to_vec())
        .collect();
    let scans = assert_bf16_equals_f32(&q, &b, dim, 2, "near-duplicate groups");
    if miad::cpu::bank_search::bf16_search_available() {
        assert!(scans > 0, "the groups must force exact scans");
    }
}

/// |g − d²| ≤ E for every pair (g: the bf16 form from the bf16 dot products, d²: the f32
/// search's form), and a crafted case reaching more than 90 % of E.
#[test]
fn bf16_form_bound_holds_and_is_tight() {
    use miad::cpu::bank_search::bf16_form_bound;
    use miad::cpu::gemm::Mat;
    use miad::cpu::gemm_bf16::{pack_into, packed_len, walk_dots, PANEL_LEN, TILE_COLS, TILE_ROWS};
    if !miad::cpu::bank_search::bf16_search_available() {
        eprintln!("no AVX512-BF16 here: nothing to measure");
        return;
    }
    // (g, d², E) of every (query, row) pair; d² with fused multiply-adds (the AVX kernels).
    let measure = |q: &[f32], b: &[f32], dim: usize| -> Vec<(f64, f64, f64)> {
        let (nq, n) = (q.len() / dim, b.len() / dim);
        let mut packed = vec![0u16; packed_len(nq, dim)];
        pack_into(Mat::new(q, nq, dim), &mut packed);
        let mut panel = vec![0u32; PANEL_LEN];
        let mut tiles = vec![0f32; nq.div_ceil(TILE_COLS) * TILE_ROWS * TILE_COLS];
        let sq = |r: &[f32]| -> f32 { r.iter().map(|v| v * v).sum() };
        let mut out = Vec::new();
        walk_dots(
            Mat::new(b, n, dim),
            &packed,
            nq,
            &mut panel,
            &mut tiles,
            |r0, rows, t| {
                for i in 0..rows {
                    let row = &b[(r0 + i) * dim..][..dim];
                    let bn = sq(row);
                    for j in 0..nq {
                        let x = &q[j * dim..][..dim];
                        let qq = sq(x);
                        let dot = t[(j / TILE_COLS) * TILE_ROWS * TILE_COLS
                            + i * TILE_COLS
                            + j % TILE_COLS];
                        let g = qq - 2.0 * dot + bn;
                        let f_dot = x.iter().zip(row).fold(0f32, |s, (a, c)| a.mul_add(*c, s));
                        let d2 = qq - 2.0 * f_dot + bn;
                        out.push((g as f64, d2 as f64, bf16_form_bound(qq, bn, dim)));
                    }
                }
            },
        );
        out
    };
    let mut worst = 0f64;
    for (nq, n, dim, offset) in [
        (20usize, 300usize, 64usize, 0f32),
        (16, 200, 1152, 0.0),
        (16, 100, 256, 20.0),
    ] {
        let q: Vec<f32> = random(nq * dim, 60).iter().map(|v| v + offset).collect();
        let b: Vec<f32> = random(n * dim, 61).iter().map(|v| v + offset).collect();
        for (g, d2, e) in measure(&q, &b, dim) {
            assert!((g - d2).abs() <= e, "{dim}: |{g} - {d2}| > {e}");
            worst = worst.max((g - d2).abs() / e);
        }
    }
    eprintln!("bf16 form bound: largest |g - d2| / E on random data {worst:.3e}");
    // q = b, every value just below a bf16 rounding midpoint (rounds down to 1).
    let dim = 64;
    let v = 1.0 + 2f32.powi(-8) - 2f32.powi(-20);
    let (g, d2, e) = measure(&vec![v; dim], &vec![v; dim], dim)[0];
    let ratio = (g - d2).abs() / e;
    eprintln!("bf16 form bound: crafted case |g - d2| / E = {ratio:.4}");
    assert!(ratio <= 1.0 && ratio > 0.9, "crafted case: {ratio}");
}

/// The speed of the bf16 search against the f32 search, side by side in one process
/// (ratios only: the machine is shared). Run with
/// `cargo test --features cuda-sim --test cpu -- --ignored bf16_search_speed --nocapture`.
#[test]
#[ignore]
fn bf16_search_speed() {
    use miad::cpu::bank_search::{nearest_bf16, nearest_bf16_scratch_len};
    let pool = Pool::new(2);
    for (nq, n, dim, clustered) in [
        (3136usize, 16000usize, 1152usize, false),
        (3136, 16000, 1152, true),
        (784, 24000, 768, true),
    ] {
        // Clustered: 64 centres + noise 0.3, queries a bank row + noise 0.2 (as the
        // device bank tests).
        let mut b = random(n * dim, 3);
        let mut q = random(nq * dim, 4);
        if clustered {
            let centres = random(64 * dim, 5);
            for (i, row) in b.chunks_exact_mut(dim).enumerate() {
                let c = &centres[(i * 37 % 64) * dim..][..dim];
                row.iter_mut().zip(c).for_each(|(v, &m)| *v = m + 0.3 * *v);
            }
            for (j, row) in q.chunks_exact_mut(dim).enumerate() {
                let src = &b[(j * 7919 % n) * dim..][..dim];
                row.iter_mut()
                    .zip(src)
                    .for_each(|(v, &s)| *v = s + 0.2 * *v);
            }
        }
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let bv = BankView::new(&b, &norms, dim);
        let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
        let (mut d16, mut i16) = (vec![0f32; nq], vec![0u32; nq]);
        let mut s32 = vec![0f32; nearest_scratch_len(2)];
        let mut s16 = vec![0f32; nearest_bf16_scratch_len(2, dim)];
        let (mut t32, mut t16, mut scans) = (f64::MAX, f64::MAX, 0);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            nearest(&pool, &q, bv, None, &mut d, &mut i, &mut s32);
            t32 = t32.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            scans = nearest_bf16(&pool, &q, bv, &mut d16, &mut i16, &mut s16);
            t16 = t16.min(t.elapsed().as_secs_f64());
        }
        assert_eq!(i16, i);
        eprintln!(
            "bank search {nq} x {n} x {dim} ({}), 2 threads, best of 3: f32 {t32:.3} s, bf16 exact {t16:.3} s, ratio bf16/f32 {:.3}; {scans} of {nq} queries scanned exactly",
            if clustered { "clustered, queries near rows" } else { "random" },
            t16 / t32
        );
    }
}

/// The fit-time cost of the neighbour table. Run with
/// `cargo test --features cuda-sim --test cpu -- --ignored neighbour_table_speed --nocapture`.
#[test]
#[ignore]
fn neighbour_table_speed() {
    let pool = Pool::new(2);
    for (n, dim, clustered) in [(8000usize, 1152usize, false), (8000, 1152, true)] {
        let mut b = random(n * dim, 3);
        if clustered {
            let centres = random(64 * dim, 5);
            for (i, row) in b.chunks_exact_mut(dim).enumerate() {
                let c = &centres[(i * 37 % 64) * dim..][..dim];
                row.iter_mut().zip(c).for_each(|(v, &m)| *v = m + 0.3 * *v);
            }
        }
        let mut norms = vec![0f32; n];
        sq_norms(&b, dim, &mut norms);
        let bv = BankView::new(&b, &norms, dim);
        let t = std::time::Instant::now();
        let table = neighbour_table(&pool, bv, &mut |_, _| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "neighbour table {n} x {dim} ({}), 2 threads: {secs:.2} s, {:.2} G ordered distance terms/s",
            if clustered { "64 clusters" } else { "random" },
            (table.distances * dim as u64) as f64 / secs / 1e9
        );
    }
}

#[test]
fn lane_distances_equal_the_ordered_scalar_sum() {
    use miad::cpu::lanes::{sq_dists, tile_len, to_tile, LANES};
    // Widths around the vector and group sizes, values over many magnitudes (products
    // that round differently in any other order or with a fused multiply-add).
    for (rows, others, dim) in [(64usize, 7usize, 33usize), (5, 64, 1), (64, 13, 300)] {
        let mut a = random(rows * dim, 90 + dim as u64);
        let mut b = random(others * dim, 91 + dim as u64);
        for (i, v) in a.iter_mut().chain(b.iter_mut()).enumerate() {
            *v *= [1.0f32, 3.1e3, 7.7e-3, 1.9e7][i % 4];
        }
        let mut tile = vec![0f32; tile_len(dim)];
        to_tile(&a, dim, &mut tile);
        let mut out = vec![[0f32; LANES]; others];
        sq_dists(&tile, &b, dim, &mut out);
        for (r, row) in b.chunks_exact(dim).enumerate() {
            for (l, lane) in a.chunks_exact(dim).enumerate() {
                let want: f32 = lane.iter().zip(row).map(|(x, y)| (x - y) * (x - y)).sum();
                let back: f32 = row.iter().zip(lane).map(|(x, y)| (x - y) * (x - y)).sum();
                assert_eq!(
                    out[r][l].to_bits(),
                    want.to_bits(),
                    "{dim}: row {r} lane {l}"
                );
                assert_eq!(want.to_bits(), back.to_bits(), "symmetric");
            }
        }
    }
}

#[test]
fn lane_distances_stop_only_when_no_lane_can_end_below_its_floor() {
    use miad::cpu::lanes::{sq_dists, sq_dists_unless_none_below, tile_len, to_tile, LANES};
    // Widths shorter than, equal to and past several checkpoints.
    for dim in [1usize, 32, 33, 300] {
        let a = random(LANES * dim, 120 + dim as u64);
        let b = random(dim, 121 + dim as u64);
        let mut tile = vec![0f32; tile_len(dim)];
        to_tile(&a, dim, &mut tile);
        let mut full = [[0f32; LANES]];
        sq_dists(&tile, &b, dim, &mut full);
        let full = full[0];
        let bits = |v: &[f32; LANES]| v.map(f32::to_bits);
        // Floors above one lane's distance: the distances come back, the same bits.
        let mut floor = full;
        floor[17] = f32::from_bits(full[17].to_bits() + 1);
        let got = sq_dists_unless_none_below(&tile, &b, &floor).expect("lane 17 may end below");
        assert_eq!(bits(&got), bits(&full), "{dim}");
        // Floors at every lane's distance or below (no lane can end below): stopped.
        let mut floor = full.map(|d| d * 0.5);
        floor[3] = full[3];
        floor[40] = f32::NEG_INFINITY;
        assert!(
            sq_dists_unless_none_below(&tile, &b, &floor).is_none(),
            "{dim}"
        );
        // A NaN in one lane's first value: that lane never reaches a floor (not even
        // -inf), the sums run to the end.
        let mut a_nan = a.clone();
        a_nan[5 * dim] = f32::NAN;
        to_tile(&a_nan, dim, &mut tile);
        let got = sq_dists_unless_none_below(&tile, &b, &[f32::NEG_INFINITY; LANES])
            .expect("the NaN lane keeps the tile going");
        assert!(got[5].is_nan());
    }
}

#[test]
fn lane_distances_of_several_rows_are_the_single_rows_bits_and_stop_alike() {
    use miad::cpu::lanes::{rows_unless_none_below, sq_dists, tile_len, to_tile, LANES};
    for dim in [1usize, 32, 33, 300] {
        let a = random(LANES * dim, 130 + dim as u64);
        // 11 rows: two groups of four and three left over; magnitudes far apart.
        let count = 11;
        let mut b = random(count * dim, 131 + dim as u64);
        for (i, v) in b.iter_mut().enumerate() {
            *v *= [1.0f32, 3.1e3, 7.7e-3][i / dim % 3];
        }
        let mut tile = vec![0f32; tile_len(dim)];
        to_tile(&a, dim, &mut tile);
        let mut full = vec![[0f32; LANES]; count];
        sq_dists(&tile, &b, dim, &mut full);
        // Even rows: one lane's floor one ulp above its distance (kept, the same bits);
        // odd rows: every floor at or below the distance (dropped).
        let floors: Vec<[f32; LANES]> = (0..count)
            .map(|r| {
                let mut f = full[r].map(|d| d * 0.5);
                if r % 2 == 0 {
                    f[(7 * r) % LANES] = full[r][(7 * r) % LANES].next_up();
                } else {
                    f[(5 * r) % LANES] = full[r][(5 * r) % LANES];
                }
                f
            })
            .collect();
        let rows: Vec<&[f32]> = b.chunks_exact(dim).collect();
        let mut sums = vec![[0f32; LANES]; count];
        let mut kept = vec![false; count];
        rows_unless_none_below(&tile, &rows, &floors, &mut sums, &mut kept);
        for r in 0..count {
            assert_eq!(kept[r], r % 2 == 0, "{dim}: row {r}");
            if kept[r] {
                assert_eq!(
                    sums[r].map(f32::to_bits),
                    full[r].map(f32::to_bits),
                    "{dim}: row {r}"
                );
            }
        }
    }
}

#[test]
fn lane_distances_of_half_a_tile_are_the_full_tiles_bits() {
    use miad::cpu::lanes::{sq_dists, sq_dists_unless_none_below_half, tile_len, to_tile, LANES};
    for dim in [1usize, 32, 33, 300] {
        let a = random(LANES * dim, 140 + dim as u64);
        let b = random(dim, 141 + dim as u64);
        let mut tile = vec![0f32; tile_len(dim)];
        to_tile(&a, dim, &mut tile);
        let mut full = [[0f32; LANES]];
        sq_dists(&tile, &b, dim, &mut full);
        let full = full[0];
        for upper in [false, true] {
            let half = if upper {
                LANES / 2..LANES
            } else {
                0..LANES / 2
            };
            // One lane of the half may end below: its half's sums, the other +inf.
            let mut floor = [f32::NEG_INFINITY; LANES];
            floor[half.start + 9] = full[half.start + 9].next_up();
            let got = sq_dists_unless_none_below_half(&tile, &b, &floor, upper)
                .expect("a lane may end below");
            for l in 0..LANES {
                let want = if half.contains(&l) {
                    full[l]
                } else {
                    f32::INFINITY
                };
                assert_eq!(got[l].to_bits(), want.to_bits(), "{dim} {upper}: lane {l}");
            }
            // Floors at the half's distances (the other half's ignored): stopped.
            let mut floor = [f32::INFINITY; LANES];
            floor[half.clone()].copy_from_slice(&full[half.clone()]);
            assert!(sq_dists_unless_none_below_half(&tile, &b, &floor, upper).is_none());
        }
    }
}
