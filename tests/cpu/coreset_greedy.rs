//! Coreset: the accelerated farthest-first selection returns exactly the plain one's
//! indices; the projection follows scikit-learn's JL dimension and Li's density.

use miad::cpu::coreset::{
    coreset, greedy, greedy_in_place, greedy_plain, jl_min_dim, projection_matrix, tiled_len,
};
use miad::cpu::pool::Pool;
use miad::util::rng::Rng;

fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    // Clusters make pruning effective and near-ties likely.
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..8 * dim).map(|_| rng.normal() * 5.0).collect();
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        let c = rng.below(8) as usize;
        for k in 0..dim {
            x[i * dim + k] = centres[c * dim + k] + rng.normal() * 0.3;
        }
    }
    x
}

#[test]
fn accelerated_equals_plain_on_several_sizes() {
    let pool = Pool::new(2);
    for (n, dim, m) in [
        (1, 3, 1),
        (10, 2, 10),
        (500, 3, 60),
        (3000, 16, 300),
        (2100, 64, 150),
        // Re-ordered by nearest centre after 16 and 64 centres.
        (9000, 8, 1500),
    ] {
        let x = clustered(n, dim, n as u64);
        let plain = greedy_plain(&x, dim, m);
        assert_eq!(plain[0], 0);
        assert_eq!(greedy(&pool, &x, dim, m), plain, "n {n} dim {dim}");
        assert_eq!(greedy(&Pool::new(1), &x, dim, m), plain);
    }
}

#[test]
fn ties_go_to_the_lowest_index() {
    // Points on a line at 0, 1, 2, 3, 4, 4 (duplicate), -4: after 0, the farthest are
    // 4 (index 4, 5) and -4 (index 6), all at distance 4: index 4 wins.
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 4.0, -4.0];
    assert_eq!(greedy_plain(&x, 1, 3), vec![0, 4, 6]);
    assert_eq!(greedy(&Pool::new(2), &x, 1, 3), vec![0, 4, 6]);
}

#[test]
fn jl_dimension_matches_scikit_learn() {
    // sklearn.random_projection.johnson_lindenstrauss_min_dim(n, eps=0.9)
    assert_eq!(jl_min_dim(1000, 0.9), 170);
    assert_eq!(jl_min_dim(200_000, 0.9), 301);
    assert_eq!(jl_min_dim(1_250_000, 0.9), 346);
}

#[test]
fn projection_is_sparse_with_the_right_scale_and_coreset_is_seeded() {
    let (k, d) = (300, 1152);
    let r = projection_matrix(k, d, 42);
    let nz = r.iter().filter(|v| **v != 0.0).count() as f64;
    let density = 1.0 / (d as f64).sqrt();
    assert!((nz / (k * d) as f64 - density).abs() < 0.1 * density);
    let v = (1.0 / (density * k as f64)).sqrt() as f32;
    assert!(r.iter().all(|&e| e == 0.0 || e == v || e == -v));
    assert_eq!(r, projection_matrix(k, d, 42));
    let x = clustered(400, 200, 1);
    let pool = Pool::new(2);
    let a = coreset(&pool, &x, 200, 40, 0.9, 7);
    assert_eq!(a, coreset(&Pool::new(1), &x, 200, 40, 0.9, 7));
    assert_eq!(a.len(), 40);
}

/// 24 seeded random cases: sizes, dimensions and selection fractions.
#[test]
fn accelerated_equals_plain_property() {
    let mut g = Rng::new(24);
    for case in 0..24 {
        let n = 1 + g.below(1499) as usize;
        let dim = 1 + g.below(23) as usize;
        let frac = 0.01 + 0.49 * g.uniform_f64();
        let seed = g.below(1000);
        let x = clustered(n, dim, seed);
        let m = ((n as f64 * frac) as usize).max(1);
        assert_eq!(
            greedy(&Pool::new(2), &x, dim, m),
            greedy_plain(&x, dim, m),
            "case {case}: n {n} dim {dim} m {m} seed {seed}"
        );
    }
}

/// Rows on an integer grid with exact duplicates and one-ulp neighbours: many running
/// distances tie exactly or nearly, so any difference in the arithmetic or in the order
/// of ties would change the selection.
fn ties_and_duplicates(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        match rng.below(4) {
            // An exact copy of an earlier row.
            0 if i > 0 => {
                let j = rng.below(i as u64) as usize;
                let src: Vec<f32> = x[j * dim..(j + 1) * dim].to_vec();
                x[i * dim..(i + 1) * dim].copy_from_slice(&src);
            }
            // An earlier row moved by one ulp in one coordinate.
            1 if i > 0 => {
                let j = rng.below(i as u64) as usize;
                let src: Vec<f32> = x[j * dim..(j + 1) * dim].to_vec();
                let row = &mut x[i * dim..(i + 1) * dim];
                row.copy_from_slice(&src);
                let k = rng.below(dim as u64) as usize;
                row[k] = f32::from_bits(row[k].to_bits() + 1);
            }
            _ => {
                for v in x[i * dim..(i + 1) * dim].iter_mut() {
                    *v = rng.below(5) as f32 - 2.0;
                }
            }
        }
    }
    x
}

#[test]
fn accelerated_equals_plain_with_ties_duplicates_and_projected_dims() {
    // Several pool tasks (16 tiles of 64 rows each), partial last tiles, and the
    // dimensions of the fit's projections (≈ 300).
    for (n, dim, m, seed) in [
        (3001, 1, 400, 1u64),
        (2500, 7, 700, 2),
        (1500, 300, 300, 3),
        (2049, 64, 1024, 4),
    ] {
        let x = ties_and_duplicates(n, dim, seed);
        assert_equals_plain_on_threads(&x, dim, m, &[1, 2, 3]);
    }
}

/// The accelerated selection on each pool size equals the plain one.
fn assert_equals_plain_on_threads(x: &[f32], dim: usize, m: usize, threads: &[usize]) {
    let plain = greedy_plain(x, dim, m);
    for &t in threads {
        let n = x.len() / dim;
        assert_eq!(
            greedy(&Pool::new(t), x, dim, m),
            plain,
            "n {n} dim {dim} m {m} threads {t}"
        );
    }
}

#[test]
fn accelerated_equals_plain_on_clustered_high_dimensional_rows() {
    // Tight clusters: most tiles are skipped from their largest running distance alone
    // and many rows by their centre-to-centre bound; selecting every row drives the
    // running distances to exact zeros.
    let (n, dim) = (2300, 300);
    let x = clustered(n, dim, 9);
    for m in [1, 64, 900, n] {
        assert_eq!(
            greedy(&Pool::new(2), &x, dim, m),
            greedy_plain(&x, dim, m),
            "m {m}"
        );
    }
}

#[test]
fn accelerated_equals_plain_with_non_finite_rows() {
    let (n, dim) = (700, 5);
    let mut x = clustered(n, dim, 3);
    x[40 * dim + 2] = f32::NAN;
    x[41 * dim] = f32::INFINITY;
    x[300 * dim + 4] = f32::NEG_INFINITY;
    x[301 * dim..302 * dim].fill(f32::NAN);
    x[650 * dim + 1] = 1e-41; // subnormal
    for m in [3, 50, 200] {
        assert_eq!(greedy(&Pool::new(2), &x, dim, m), greedy_plain(&x, dim, m));
    }
}

#[test]
fn in_place_selection_equals_the_copying_one() {
    let (n, dim, m) = (1000, 33, 120);
    let x = ties_and_duplicates(n, dim, 5);
    let mut buf = vec![0f32; tiled_len(n, dim)];
    buf[..n * dim].copy_from_slice(&x);
    let pool = Pool::new(2);
    assert_eq!(
        greedy_in_place(&pool, &mut buf, n, dim, m),
        greedy(&pool, &x, dim, m)
    );
    assert_eq!(greedy(&pool, &x, dim, 0), Vec::<u32>::new());
    assert_eq!(greedy(&pool, &x, dim, n + 5).len(), n);
}

/// Rows far from the origin on a few directions (`rank` of them, spreads falling off as
/// the fit's projected features do), with exact duplicates and one-ulp neighbours. With
/// `rank` at most the principal bound's 32 coordinates that bound is as tight as its
/// rounding margins, so a margin too small would move a row the plain rule keeps.
fn low_rank_far_from_origin(n: usize, dim: usize, rank: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let offset: Vec<f32> = (0..dim).map(|_| rng.normal() * 3.0).collect();
    let dirs: Vec<f32> = (0..rank * dim).map(|_| rng.normal()).collect();
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        if i > 0 && rng.below(6) == 0 {
            let j = rng.below(i as u64) as usize;
            let src: Vec<f32> = x[j * dim..(j + 1) * dim].to_vec();
            let row = &mut x[i * dim..(i + 1) * dim];
            row.copy_from_slice(&src);
            if rng.below(2) == 0 {
                let k = rng.below(dim as u64) as usize;
                row[k] = f32::from_bits(row[k].to_bits() + 1);
            }
            continue;
        }
        let coefs: Vec<f32> = (0..rank).map(|r| rng.normal() / (1.0 + r as f32)).collect();
        for (k, v) in x[i * dim..(i + 1) * dim].iter_mut().enumerate() {
            *v = offset[k] + (0..rank).map(|r| coefs[r] * dirs[r * dim + k]).sum::<f32>();
        }
    }
    x
}

#[test]
fn accelerated_equals_plain_on_low_rank_rows_far_from_the_origin() {
    // Rank below, at and above the principal bound's 32 coordinates; widths from the
    // narrowest that gets the bound (64) to the fit's (≈ 300).
    for (n, dim, rank, m, seed) in [
        (1, 64, 3, 1, 10u64),
        (70, 128, 4, 70, 10),
        (2600, 64, 8, 900, 11),
        (2200, 96, 32, 700, 12),
        (1800, 300, 48, 500, 13),
    ] {
        let x = low_rank_far_from_origin(n, dim, rank, seed);
        assert_equals_plain_on_threads(&x, dim, m, &[1, 2]);
    }
}

#[test]
fn accelerated_equals_plain_with_non_finite_wide_rows() {
    // Wide enough for the principal bound: NaN and infinite values reach its coordinates.
    let (n, dim) = (900, 72);
    let mut x = low_rank_far_from_origin(n, dim, 6, 4);
    x[40 * dim + 2] = f32::NAN;
    x[41 * dim] = f32::INFINITY;
    x[300 * dim + 4] = f32::NEG_INFINITY;
    x[301 * dim..302 * dim].fill(f32::NAN);
    x[650 * dim + 1] = 1e-41;
    for m in [3, 50, 300] {
        assert_eq!(greedy(&Pool::new(2), &x, dim, m), greedy_plain(&x, dim, m));
    }
}
