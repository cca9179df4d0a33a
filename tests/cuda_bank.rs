//! Bank search on the GPU against an exact f64 CPU search: f32 path distances within 1e-5
//! relative and the same index (except near-ties), ties to the lower index, the fast f16
//! path's index agreement >= 99.9%. Skips (and says why) without a CUDA driver (kernels:
//! embedded cubins or `MIAD_CUBIN_DIR`). With `MIAD_BENCH=1` it also times both paths
//! on a 150 000 x 1920 bank.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use miad::cuda::bank::{BankSearch, Partials, SearchPath, SearchPlan};
use miad::cuda::transformer::{driver_present, load_cubin_module};
use miad::util::rng::Rng;

struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    bs: BankSearch,
    sms: usize,
}

fn setup() -> Option<Gpu> {
    if !driver_present() {
        eprintln!("skipped: no CUDA driver on this machine");
        return None;
    }
    let ctx = match CudaContext::new(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            return None;
        }
    };
    let stream = ctx.default_stream();
    let module = load_cubin_module(&ctx, "bank_search").expect("bank kernels load");
    let bs = BankSearch::new(&module).expect("bank kernels found");
    let sms = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .unwrap() as usize;
    Some(Gpu {
        ctx,
        stream,
        bs,
        sms,
    })
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

struct Results {
    f32_d: Vec<f32>,
    f32_i: Vec<i32>,
    f16_d: Vec<f32>,
    f16_i: Vec<i32>,
    f32_ms: f64,
    f16_ms: f64,
}

fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::f16::from_f32(*v).to_bits())
        .collect()
}

/// Runs both paths; with `reps > 0` also times them (mean over reps, after a warm-up).
fn run_both(g: &Gpu, q: &[f32], bank: &[f32], dim: usize, rerank: usize, reps: usize) -> Results {
    let (nq, nb) = (q.len() / dim, bank.len() / dim);
    let s = &g.stream;
    let dq = s.clone_htod(q).unwrap();
    let db = s.clone_htod(bank).unwrap();
    let mut dq16 = s.alloc_zeros::<u16>(q.len()).unwrap();
    let mut db16 = s.alloc_zeros::<u16>(bank.len()).unwrap();
    g.bs.to_f16(s, &dq, &mut dq16).unwrap();
    g.bs.to_f16(s, &db, &mut db16).unwrap();
    // The conversion kernel must agree with the host's round-to-nearest-even.
    if q.len() <= 1 << 20 {
        assert_eq!(
            s.clone_dtoh(&dq16).unwrap(),
            f16_bits(q),
            "f16 conversion differs"
        );
    }
    let mut qn = s.alloc_zeros::<f32>(nq).unwrap();
    let mut bn = s.alloc_zeros::<f32>(nb).unwrap();
    g.bs.row_sqnorms(s, &dq, nq, dim, &mut qn).unwrap();
    g.bs.row_sqnorms(s, &db, nb, dim, &mut bn).unwrap();

    let p32 = SearchPlan::new(nq, nb, dim, SearchPath::F32, g.sms).unwrap();
    let p16 = SearchPlan::new(nq, nb, dim, SearchPath::F16, g.sms).unwrap();
    let mut pd: CudaSlice<f32> = s.alloc_zeros(p32.part_len().max(p16.part_len())).unwrap();
    let mut pi: CudaSlice<i32> = s.alloc_zeros(p32.part_len().max(p16.part_len())).unwrap();
    let mut od = s.clone_htod(&vec![f32::NAN; nq]).unwrap();
    let mut oi = s.clone_htod(&vec![-1i32; nq]).unwrap();
    let mut od16 = s.clone_htod(&vec![f32::NAN; nq]).unwrap();
    let mut oi16 = s.clone_htod(&vec![-1i32; nq]).unwrap();

    let run32 = |od: &mut CudaSlice<f32>,
                 oi: &mut CudaSlice<i32>,
                 pd: &mut CudaSlice<f32>,
                 pi: &mut CudaSlice<i32>| {
        g.bs.search_f32(
            s,
            &p32,
            &dq,
            &db,
            Partials {
                dist: pd,
                index: pi,
            },
            od,
            oi,
        )
        .unwrap();
    };
    run32(&mut od, &mut oi, &mut pd, &mut pi);
    let run16 = |od: &mut CudaSlice<f32>,
                 oi: &mut CudaSlice<i32>,
                 pd: &mut CudaSlice<f32>,
                 pi: &mut CudaSlice<i32>| {
        g.bs.search_f16(
            s,
            &p16,
            &dq,
            &dq16,
            &qn,
            &db,
            &db16,
            &bn,
            rerank,
            Partials {
                dist: pd,
                index: pi,
            },
            od,
            oi,
        )
        .unwrap();
    };
    run16(&mut od16, &mut oi16, &mut pd, &mut pi);
    s.synchronize().unwrap();
    let time = |f: &mut dyn FnMut()| -> f64 {
        if reps == 0 {
            return 0.0;
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = g.ctx.new_event(flags).unwrap();
        let b = g.ctx.new_event(flags).unwrap();
        a.record(s).unwrap();
        for _ in 0..reps {
            f();
        }
        b.record(s).unwrap();
        s.synchronize().unwrap();
        a.elapsed_ms(&b).unwrap() as f64 / reps as f64
    };
    let (mut td, mut ti) = (
        s.alloc_zeros::<f32>(nq).unwrap(),
        s.alloc_zeros::<i32>(nq).unwrap(),
    );
    let f32_ms = time(&mut || run32(&mut td, &mut ti, &mut pd, &mut pi));
    let f16_ms = time(&mut || run16(&mut td, &mut ti, &mut pd, &mut pi));
    Results {
        f32_d: s.clone_dtoh(&od).unwrap(),
        f32_i: s.clone_dtoh(&oi).unwrap(),
        f16_d: s.clone_dtoh(&od16).unwrap(),
        f16_i: s.clone_dtoh(&oi16).unwrap(),
        f32_ms,
        f16_ms,
    }
}

/// Random bank (normal) or clustered bank (centres + small noise); queries near entries.
fn data(nq: usize, nb: usize, dim: usize, clustered: bool, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut bank = vec![0.0f32; nb * dim];
    let mut q = vec![0.0f32; nq * dim];
    if clustered {
        let nc = 64;
        let mut centres = vec![0.0f32; nc * dim];
        rng.fill_normal(&mut centres, 1.0);
        for row in bank.chunks_exact_mut(dim) {
            let c = rng.below(nc as u64) as usize;
            for (x, cv) in row.iter_mut().zip(&centres[c * dim..][..dim]) {
                *x = cv + 0.3 * rng.normal();
            }
        }
        for row in q.chunks_exact_mut(dim) {
            let b = rng.below(nb as u64) as usize;
            for (x, bv) in row.iter_mut().zip(&bank[b * dim..][..dim]) {
                *x = bv + 0.2 * rng.normal();
            }
        }
    } else {
        rng.fill_normal(&mut bank, 1.0);
        rng.fill_normal(&mut q, 1.0);
    }
    (q, bank)
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
    // Bank sizes that are not multiples of the tiles; dim of the fused features.
    check(&g, 300, 20_011, 1920, false, 11);
    check(&g, 300, 20_011, 1920, true, 12);
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
}

#[test]
fn bank_search_bench() {
    if std::env::var_os("MIAD_BENCH").is_none() {
        eprintln!("skipped: set MIAD_BENCH=1 to time the kernels");
        return;
    }
    let Some(g) = setup() else { return };
    let (nq, nb, dim) = (784, 150_000, 1920);
    for clustered in [false, true] {
        let (q, bank) = data(nq, nb, dim, clustered, 31);
        for rerank in [1usize, 8] {
            let r = run_both(&g, &q, &bank, dim, rerank, 5);
            let same = r.f16_i.iter().zip(&r.f32_i).filter(|(a, b)| a == b).count();
            let max_rel = r
                .f16_d
                .iter()
                .zip(&r.f32_d)
                .map(|(a, b)| ((a - b).abs() / b.max(1e-30)) as f64)
                .fold(0.0, f64::max);
            let flop = 2.0 * (nq * nb * dim) as f64;
            println!(
                "BENCH bank {nq}x{nb}x{dim} {} rerank {rerank}: f32 {:.3} ms ({:.1} TFLOP/s eq.), f16 {:.3} ms ({:.1} TFLOP/s), f16 same index {:.5}, max rel dist diff {max_rel:.2e}",
                if clustered { "clustered" } else { "random" },
                r.f32_ms,
                flop / (r.f32_ms * 1e-3) / 1e12,
                r.f16_ms,
                flop / (r.f16_ms * 1e-3) / 1e12,
                same as f64 / nq as f64
            );
        }
    }
}
