//! Bank search on the GPU against an exact f64 CPU search: f32 path distances within 1e-5
//! relative and the same index (except near-ties), ties to the lower index, the fast f16
//! path's index agreement >= 99.9%. Without a GPU it runs on the simulated device (feature
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
    let r = run_both(g, &q, &bank, dim, 8, 0);
    let mut same16 = 0;
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
        if r.f16_i[k] as usize == bi {
            same16 += 1;
        }
    }
    let frac = same16 as f64 / nq as f64;
    eprintln!(
        "bank {nq} x {nb} x {dim} ({}): f32 max rel dist err {max_rel:.2e}; f16 same index {frac:.5}",
        if clustered { "clustered" } else { "random" }
    );
    assert!(max_rel <= 1e-5, "f32 distances off by {max_rel:e}");
    assert!(frac >= 0.999, "fast path agreement {frac}");
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
    let r = run_both(&g, &q, &bank, dim, 8, 0);
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
    assert!(miad::cuda::ops::bank_search::check_rerank(0).is_err());
    assert!(miad::cuda::ops::bank_search::check_rerank(
        miad::cuda::ops::bank_search::MAX_RERANK + 1
    )
    .is_err());
    let Some(g) = setup() else { return };
    // Wrong path and bad rerank counts are refused before any launch.
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
    };
    unsafe {
        let n = DevPtr::null();
        assert!(g
            .bs
            .search_f32(&g.dev, &p16, n, n, null, n, DevPtr::null())
            .is_err());
        assert!(g
            .bs
            .search_f16(&g.dev, &p32, &inputs, 8, null, n, DevPtr::null())
            .is_err());
        assert!(g
            .bs
            .search_f16(&g.dev, &p16, &inputs, 0, null, n, DevPtr::null())
            .is_err());
        assert!(g
            .bs
            .search_f16(&g.dev, &p16, &inputs, 33, null, n, DevPtr::null())
            .is_err());
    }
}
