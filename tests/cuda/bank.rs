//! Bank search on the GPU against an exact f64 CPU search: f32 path distances within 1e-5
//! relative and the same index (except near-ties), ties to the lower index; the exact fast
//! (f16) path returns the f32 path's index and distance bits on every query, also on
//! near-duplicate banks. Without a GPU it runs on the simulated device (feature
//! `cuda-sim`, a smaller bank) or skips and says why (kernels:
//! `Module::load`, i.e. `MIAD_CUBIN_DIR`, the embedded cubins or NVRTC). The timing of
//! both paths on a 150 000 x 1920 bank is `bank_search` in bench/cuda/.

use miad::cuda::ops::bank_search::{F16Inputs, Partials, SearchPath, SearchPlan};
use miad::cuda::DevPtr;

use crate::shared::bank::{data, run_both, Gpu};

fn setup() -> Option<Gpu> {
    crate::test_device("cuda_bank").map(Gpu::new)
}

/// Exact search in f64: (best index, best distance, second-best distance) per query.
fn reference(q: &[f32], bank: &[f32], dim: usize) -> Vec<(usize, f64, f64)> {
    let nq = q.len() / dim;
    let mut out = vec![(0usize, 0.0f64, 0.0f64); nq];
    let per = nq.div_ceil(16);
    std::thread::scope(|s| {
        for (ci, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (k, slot) in chunk.iter_mut().enumerate() {
                    let qi = ci * per + k;
                    let qr = &q[qi * dim..][..dim];
                    let (mut bi, mut bd, mut sd) = (0usize, f64::INFINITY, f64::INFINITY);
                    for (j, br) in bank.chunks_exact(dim).enumerate() {
                        let d: f64 = qr
                            .iter()
                            .zip(br)
                            .map(|(a, b)| {
                                let x = *a as f64 - *b as f64;
                                x * x
                            })
                            .sum();
                        if d < bd {
                            sd = bd;
                            bd = d;
                            bi = j;
                        } else if d < sd {
                            sd = d;
                        }
                    }
                    *slot = (bi, bd, sd);
                }
            });
        }
    });
    out
}

fn check(g: &Gpu, nq: usize, nb: usize, dim: usize, clustered: bool, seed: u64) {
    let (q, bank) = data(nq, nb, dim, clustered, seed);
    let want = reference(&q, &bank, dim);
    let r = run_both(g, &q, &bank, dim, 0);
    let mut max_rel = 0.0f64;
    for (k, &(bi, bd, sd)) in want.iter().enumerate() {
        let near_tie = (sd - bd) <= 1e-5 * bd;
        let gi = r.f32_i[k];
        assert!(
            gi >= 0 && (gi as usize) < nb,
            "query {k}: index {gi} out of range"
        );
        if !near_tie {
            assert_eq!(gi as usize, bi, "query {k}: f32 index");
        }
        let rel = (r.f32_d[k] as f64 - bd).abs() / bd.max(1e-30);
        max_rel = max_rel.max(rel);
    }
    eprintln!(
        "bank {nq} x {nb} x {dim} ({}): f32 max rel dist err {max_rel:.2e}; fast path: {} of {nq} queries scanned a split exactly",
        if clustered { "clustered" } else { "random" },
        r.scanned.iter().filter(|&&s| s > 0).count()
    );
    assert!(max_rel <= 1e-5, "f32 distances off by {max_rel:e}");
    assert_fast_is_exact(&r);
}

/// The fast path's result is the f32 path's: same index, same distance bits.
fn assert_fast_is_exact(r: &crate::shared::bank::Results) {
    assert_eq!(r.f16_i, r.f32_i, "fast path index");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&r.f16_d), bits(&r.f32_d), "fast path distance bits");
}

#[test]
fn bank_search_fast_path_is_exact_on_near_duplicates() {
    let Some(g) = setup() else { return };
    let (dim, nb) = (128, 1_500);
    let (mut q, mut bank) = data(40, nb, dim, true, 31);
    let mut rng = miad::util::rng::Rng::new(32);
    // Groups of rows that f16 cannot tell apart: copies of one row with a few values moved
    // by 1 to 4 f32 ulps (below f16 resolution), exact copies, and rows equidistant from a
    // query (its mirror images q ± δ·e_c for one coordinate c).
    for grp in 0..12 {
        let src = rng.below(nb as u64) as usize;
        let row = bank[src * dim..][..dim].to_vec();
        for m in 0..9 {
            let dst = (grp * 97 + m * 131 + 7) % nb;
            let out = &mut bank[dst * dim..][..dim];
            out.copy_from_slice(&row);
            if m % 3 != 0 {
                let c = rng.below(dim as u64) as usize;
                out[c] = f32::from_bits(out[c].to_bits() + 1 + (m as u32 % 4));
            }
        }
    }
    for k in 0..8 {
        // q_c = 1 and rows with 1.25 and 0.75 there: both differences exactly 0.25.
        let c = k % dim;
        q[k * dim + c] = 1.0;
        let qr = q[k * dim..][..dim].to_vec();
        for (j, sign) in [(0usize, 1.0f32), (1, -1.0)] {
            let dst = 1_000 + 2 * k + j;
            let out = &mut bank[dst * dim..][..dim];
            out.copy_from_slice(&qr);
            out[c] += sign * 0.25;
        }
    }
    // Queries equal to rows of the near-duplicate groups.
    for k in 8..20 {
        let src = (k * 97 + 7) % nb;
        let row = bank[src * dim..][..dim].to_vec();
        q[..]
            .chunks_exact_mut(dim)
            .nth(k)
            .unwrap()
            .copy_from_slice(&row);
    }
    let r = run_both(&g, &q, &bank, dim, 0);
    assert_fast_is_exact(&r);
    let want = reference(&q, &bank, dim);
    for (k, w) in want.iter().enumerate().take(8) {
        // The two mirror images tie exactly (same arithmetic both ways): the lower one.
        assert_eq!(
            r.f32_i[k] as usize,
            1_000 + 2 * k,
            "equidistant rows, query {k}"
        );
        assert_eq!(r.f32_i[k] as usize, w.0, "exact search, query {k}");
    }
}

#[test]
fn bank_search_matches_exact_search() {
    let Some(g) = setup() else { return };
    // Bank sizes that are not multiples of the tiles; dim of the fused features. The
    // simulated device (the kernels emulated on the CPU) gets fewer queries and rows,
    // still several splits of ragged tiles.
    let (nq, nb) = if g.dev.is_simulated() {
        (20, 1_411)
    } else {
        (300, 20_011)
    };
    check(&g, nq, nb, 1920, false, 11);
    check(&g, nq, nb, 1920, true, 12);
    check(&g, 70, 333, 64, true, 13);
}

#[test]
fn bank_search_ties_go_to_lower_index() {
    let Some(g) = setup() else { return };
    let dim = 64;
    let nb = 1000;
    let (q, mut bank) = data(10, nb, dim, false, 21);
    // Every query's exact copy appears twice, the lower copy at a higher tile position
    // first in scan order of neither path: indices 900+k and 100+k.
    for k in 0..10 {
        let row = q[k * dim..][..dim].to_vec();
        bank[(900 + k) * dim..][..dim].copy_from_slice(&row);
        bank[(100 + k) * dim..][..dim].copy_from_slice(&row);
    }
    let r = run_both(&g, &q, &bank, dim, 0);
    for k in 0..10 {
        assert_eq!(r.f32_i[k] as usize, 100 + k, "f32 tie");
        assert_eq!(r.f32_d[k], 0.0);
        assert_eq!(r.f16_i[k] as usize, 100 + k, "f16 tie");
    }
}

#[test]
fn bank_search_rejects_bad_shapes() {
    assert!(SearchPlan::new(10, 10, 33, SearchPath::F32, 1).is_err());
    assert!(SearchPlan::new(0, 10, 32, SearchPath::F16, 1).is_err());
    let p = SearchPlan::new(784, 150_000, 1920, SearchPath::F16, 132).unwrap();
    assert!(p.splits * p.tiles_per_split * 128 >= 150_000);
    assert!((p.splits - 1) * p.tiles_per_split * 128 < 150_000);
    let Some(g) = setup() else { return };
    // A plan for the wrong path is refused before any launch.
    let p32 = SearchPlan::new(64, 64, 32, SearchPath::F32, g.sms).unwrap();
    let p16 = SearchPlan::new(64, 64, 32, SearchPath::F16, g.sms).unwrap();
    let null = Partials {
        dist: DevPtr::null(),
        index: DevPtr::null(),
    };
    let inputs = F16Inputs {
        q32: DevPtr::null(),
        q16: DevPtr::null(),
        qnorm: DevPtr::null(),
        bank32: DevPtr::null(),
        bank16: DevPtr::null(),
        bnorm: DevPtr::null(),
        bank_sq: 1.0,
        margin: DevPtr::null(),
    };
    unsafe {
        let n = DevPtr::null();
        assert!(g
            .bs
            .search_f32(&g.dev, &p16, n, n, null, n, DevPtr::null())
            .is_err());
        assert!(g
            .bs
            .search_f16(
                &g.dev,
                &p32,
                &inputs,
                null,
                n,
                DevPtr::null(),
                DevPtr::null()
            )
            .is_err());
    }
}

/// The engine's device search carries each bank's neighbour table (the re-weighting then
/// looks m*'s neighbours up instead of scanning the bank): the device copy equals the
/// bank file's table, and a bank without one has none.
#[test]
fn device_search_uploads_the_neighbour_tables() {
    use miad::backend::Precision;
    use miad::config::FeatureNorm;
    use miad::cpu::bank_search::{neighbour_table, sq_norms, BankView};
    use miad::cpu::pool::Pool;
    use miad::cuda::stages::bank_search::DeviceBankSearch;
    use miad::pipeline::score::BankSet;
    use std::sync::Arc;

    let pool = Pool::new(2);
    let (n, dim, grid) = (300, 64, 4);
    let (_, rows) = data(1, n, dim, true, 21);
    let mut norms = vec![0f32; n];
    sq_norms(&rows, dim, &mut norms);
    let table = neighbour_table(&pool, BankView::new(&rows, &norms, dim), &mut |_, _| {})
        .expect("finite bank")
        .rows;
    let with = BankView::new(&rows, &norms, dim).with_neighbours(&table);
    let without = BankView::new(&rows, &norms, dim);
    let set = BankSet {
        banks: [Some(with), Some(without), None],
        norms: [FeatureNorm::default(); 3],
        grids: [grid; 3],
    };
    for precision in [Precision::F32, Precision::Bf16] {
        let Some(dev) = crate::test_device("cuda_bank_tables") else {
            return;
        };
        let dev = Arc::new(dev);
        let search = DeviceBankSearch::on_device(dev.clone(), &set, &pool, precision).unwrap();
        let on_device = search.neighbours(0).expect("bank 0 has a table");
        let mut back = vec![0u32; table.len()];
        dev.download(&mut back, on_device.raw()).unwrap();
        assert_eq!(back, table, "{precision}");
        assert!(search.neighbours(1).is_none(), "bank 1 has no table");
        assert!(search.neighbours(2).is_none(), "bank 2 is absent");
    }
}
