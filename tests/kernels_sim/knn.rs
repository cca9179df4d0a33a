//! kNN grouping (kernels/knn.cu: knn_heap_f32, knn_select_f32) against `miad::cpu::knn::group_knn`:
//! indices identical, relative coordinates bit-identical.

use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pool::Pool;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{clouds, for_seeds, same, same_bits, Gen, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("knn_heap_f32_matches_cpu", knn_v1),
    ("knn_select_f32_matches_cpu", knn_v2),
    ("knn_select_f32_overflow_rounds_match_cpu", knn_v2_overflow),
];

const KNN_WARPS: u32 = 4;
const KNN_TILE: u32 = 1024;
const KNN_SELECT_C: u32 = 8;
const KNN_SELECT_T: u32 = 512;
const KNN_SELECT_CAP: u32 = 1024;

/// Centers: a seeded choice of point indices (with repeats), as FPS would give.
fn centers(n: usize, m: usize, seed: u64) -> Vec<u32> {
    let mut g = Gen::new(seed);
    let mut c: Vec<u32> = (0..m).map(|_| g.below(n) as u32).collect();
    c[0] = 0;
    if m > 2 {
        c[m - 1] = c[1];
    }
    c
}

fn reference(pts: &[f32], n: usize, cidx: &[u32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let pool = Pool::new(1);
    let mut idx = vec![0u32; cidx.len() * k];
    let mut scratch = vec![0f32; knn_scratch_len(n, k, 1)];
    group_knn(&pool, pts, n, cidx, k, &mut idx, &mut scratch);
    let mut rel = Vec::with_capacity(idx.len() * 3);
    for (c, row) in cidx.iter().zip(idx.chunks(k)) {
        let c = *c as usize;
        for &j in row {
            let j = j as usize;
            for d in 0..3 {
                rel.push(pts[3 * j + d] - pts[3 * c + d]);
            }
        }
    }
    (idx, rel)
}

fn run(
    select: bool,
    pts: &[f32],
    n: usize,
    cidx: &[u32],
    k: usize,
    seed: u64,
) -> Result<(), String> {
    let m = cidx.len();
    let cxyz: Vec<f32> = cidx
        .iter()
        .flat_map(|&c| pts[3 * c as usize..3 * c as usize + 3].to_vec())
        .collect();
    let p = Buf::from(pts);
    let nb = Buf::from(&[n as i32]);
    let cb = Buf::from(&cxyz);
    let oi = Buf::filled(m * k, 0xdead_beefu32);
    let or = Buf::filled(m * k * 3, f32::NAN);
    let mut a = Args::new()
        .buf(&p)
        .buf(&nb)
        .buf(&cb)
        .val(m as i32)
        .val(k as i32)
        .buf(&oi)
        .buf(&or);
    let (name, cfg) = if select {
        let c = Cfg::new(m.div_ceil(KNN_SELECT_C as usize) as u32, KNN_SELECT_T)
            .smem(KNN_SELECT_C * KNN_SELECT_CAP * 8);
        ("knn_select_f32", c)
    } else {
        let smem = KNN_WARPS * 32 * k as u32 * 8 + KNN_TILE * 12;
        (
            "knn_heap_f32",
            Cfg::new(m.div_ceil(32) as u32, KNN_WARPS * 32).smem(smem),
        )
    };
    sim().launch(name, &cfg, &mut a, seed)?;
    let (wi, wr) = reference(pts, n, cidx, k);
    same(&format!("{name} indices"), oi.get(), &wi)?;
    same_bits(&format!("{name} relative coordinates"), or.get(), &wr)
}

fn cases(select: bool) -> Result<(), String> {
    // Ragged sizes: n not a multiple of the tile or of the thread count, m not of 32 or 8.
    for (n, m, k) in [(1500usize, 37usize, 32usize), (2100, 70, 100)] {
        for (i, (what, pts)) in clouds(n, n as u64).into_iter().enumerate() {
            let s = SEEDS[i % SEEDS.len()];
            run(select, &pts, n, &centers(n, m, s + n as u64), k, s)
                .map_err(|e| format!("{what} cloud, n {n} m {m} k {k}, seed {s}: {e}"))?;
        }
    }
    // k = n: every point, and m = 1.
    let (_, pts) = clouds(64, 7).remove(0);
    run(select, &pts, 64, &[5], 64, 1)
}

fn knn_v1() -> Result<(), String> {
    cases(false)
}

fn knn_v2() -> Result<(), String> {
    cases(true)
}

/// More than KNN_SELECT_CAP points at the bound (a lattice with large shells of equal distance,
/// identical points): the overflow rounds, with a large k.
fn knn_v2_overflow() -> Result<(), String> {
    let n = 3000;
    for (what, pts) in clouds(n, 11).into_iter().skip(1) {
        for_seeds(|s| {
            run(true, &pts, n, &centers(n, 9, s), 500, s).map_err(|e| format!("{what}: {e}"))
        })?;
    }
    Ok(())
}
