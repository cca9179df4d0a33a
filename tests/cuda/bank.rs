//! Bank search on the GPU against an exact f64 CPU search: f32 path distances within 1e-5
//! relative and the same index (except near-ties), ties to the lower index, the fast f16
//! path's index agreement >= 99.9%. Without a GPU it runs on the simulated device (feature
//! `cuda-sim`, a smaller bank) or skips and says why (kernels:
//! `Module::load`, i.e. `MIAD_CUBIN_DIR`, the embedded cubins or NVRTC). With
//! `MIAD_BENCH=1` it also times both paths on a 150 000 x 1920 bank.

use miad::cuda::ops::bank_search::{BankSearch, F16Inputs, Partials, SearchPath, SearchPlan};
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::util::rng::Rng;

struct Gpu {
    bs: BankSearch,
    sms: usize,
    // Declared last: dropped after the kernels.
    dev: Device,
}

fn setup() -> Option<Gpu> {
    let dev = crate::test_device("cuda_bank")?;
    let bs = BankSearch::new(&dev).expect("bank kernels load");
    let sms = dev.sm_count as usize;
    Some(Gpu { bs, sms, dev })
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

/// The device buffers of one search, in one arena.
struct Bufs {
    arena: Arena,
    q: Slot<f32>,
    b: Slot<f32>,
    q16: Slot<u16>,
    b16: Slot<u16>,
    qn: Slot<f32>,
    bn: Slot<f32>,
    pd: Slot<f32>,
    pi: Slot<i32>,
    od: Slot<f32>,
    oi: Slot<i32>,
    od16: Slot<f32>,
    oi16: Slot<i32>,
    td: Slot<f32>,
    ti: Slot<i32>,
}

impl Bufs {
    fn p<T>(&self, s: Slot<T>) -> DevPtr<T> {
        self.arena.ptr(s)
    }
    fn get<T: bytemuck::Pod>(&self, dev: &Device, s: Slot<T>) -> Vec<T> {
        let mut v = vec![T::zeroed(); s.len];
        dev.synchronize().unwrap();
        self.arena.download(dev, s, &mut v).unwrap();
        v
    }
}

/// Runs both paths; with `reps > 0` also times them (mean over reps, after a warm-up).
fn run_both(g: &Gpu, q: &[f32], bank: &[f32], dim: usize, rerank: usize, reps: usize) -> Results {
    let (nq, nb) = (q.len() / dim, bank.len() / dim);
    let dev = &g.dev;
    let p32 = SearchPlan::new(nq, nb, dim, SearchPath::F32, g.sms).unwrap();
    let p16 = SearchPlan::new(nq, nb, dim, SearchPath::F16, g.sms).unwrap();
    let part = p32.part_len().max(p16.part_len());
    let mut ap = ArenaPlan::new();
    let (qs, bs) = (ap.add::<f32>(q.len()), ap.add::<f32>(bank.len()));
    let (q16, b16) = (ap.add::<u16>(q.len()), ap.add::<u16>(bank.len()));
    let (qn, bn) = (ap.add::<f32>(nq), ap.add::<f32>(nb));
    let (pd, pi) = (ap.add::<f32>(part), ap.add::<i32>(part));
    let (od, oi) = (ap.add::<f32>(nq), ap.add::<i32>(nq));
    let (od16, oi16) = (ap.add::<f32>(nq), ap.add::<i32>(nq));
    let (td, ti) = (ap.add::<f32>(nq), ap.add::<i32>(nq));
    let u = Bufs {
        arena: Arena::new(dev, &ap).unwrap(),
        q: qs,
        b: bs,
        q16,
        b16,
        qn,
        bn,
        pd,
        pi,
        od,
        oi,
        od16,
        oi16,
        td,
        ti,
    };
    let a = &u.arena;
    a.upload(dev, u.q, q).unwrap();
    a.upload(dev, u.b, bank).unwrap();
    a.upload(dev, u.od, &vec![f32::NAN; nq]).unwrap();
    a.upload(dev, u.oi, &vec![-1i32; nq]).unwrap();
    a.upload(dev, u.od16, &vec![f32::NAN; nq]).unwrap();
    a.upload(dev, u.oi16, &vec![-1i32; nq]).unwrap();
    unsafe {
        g.bs.to_f16(dev, u.p(u.q), u.p(u.q16), q.len()).unwrap();
        g.bs.to_f16(dev, u.p(u.b), u.p(u.b16), bank.len()).unwrap();
    }
    // The conversion kernel must agree with the host's round-to-nearest-even.
    if q.len() <= 1 << 20 {
        assert_eq!(u.get(dev, u.q16), f16_bits(q), "f16 conversion differs");
    }
    unsafe {
        g.bs.row_sqnorms(dev, u.p(u.q), nq, dim, u.p(u.qn)).unwrap();
        g.bs.row_sqnorms(dev, u.p(u.b), nb, dim, u.p(u.bn)).unwrap();
    }
    let parts = Partials {
        dist: u.p(u.pd),
        index: u.p(u.pi),
    };
    let inputs = F16Inputs {
        q32: u.p(u.q),
        q16: u.p(u.q16),
        qnorm: u.p(u.qn),
        bank32: u.p(u.b),
        bank16: u.p(u.b16),
        bnorm: u.p(u.bn),
    };
    let run32 = |od: DevPtr<f32>, oi: DevPtr<i32>| unsafe {
        g.bs.search_f32(dev, &p32, u.p(u.q), u.p(u.b), parts, od, oi)
            .unwrap();
    };
    let run16 = |od: DevPtr<f32>, oi: DevPtr<i32>| unsafe {
        g.bs.search_f16(dev, &p16, &inputs, rerank, parts, od, oi)
            .unwrap();
    };
    run32(u.p(u.od), u.p(u.oi));
    run16(u.p(u.od16), u.p(u.oi16));
    dev.synchronize().unwrap();
    let time = |f: &dyn Fn()| -> f64 {
        if reps == 0 {
            return 0.0;
        }
        let t = dev.timer().unwrap();
        t.start().unwrap();
        for _ in 0..reps {
            f();
        }
        t.stop_ms().unwrap() as f64 / reps as f64
    };
    let f32_ms = time(&|| run32(u.p(u.td), u.p(u.ti)));
    let f16_ms = time(&|| run16(u.p(u.td), u.p(u.ti)));
    Results {
        f32_d: u.get(dev, u.od),
        f32_i: u.get(dev, u.oi),
        f16_d: u.get(dev, u.od16),
        f16_i: u.get(dev, u.oi16),
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

#[test]
fn bank_search_bench() {
    if std::env::var_os("MIAD_BENCH").is_none() {
        eprintln!("skipped: set MIAD_BENCH=1 to time the kernels");
        return;
    }
    let Some(g) = setup() else { return };
    if !crate::timeable(&g.dev, "bank_search_bench") {
        return;
    }
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
