//! Bank search on the device, both paths, as the parity tests (tests/cuda/bank.rs) and the
//! bench (bench/cuda/bank.rs) run it.

use miad::cuda::ops::bank_search::{
    fast_bank_sq, BankSearch, F16Inputs, Partials, SearchPath, SearchPlan,
};
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::util::rng::Rng;

pub struct Gpu {
    pub bs: BankSearch,
    pub sms: usize,
    // Declared last: dropped after the kernels.
    pub dev: Device,
}

impl Gpu {
    /// The bank kernels on `dev`.
    pub fn new(dev: Device) -> Gpu {
        let bs = BankSearch::new(&dev).expect("bank kernels load");
        let sms = dev.sm_count as usize;
        Gpu { bs, sms, dev }
    }
}

/// Outputs of both paths and, when timed, milliseconds per search.
pub struct Results {
    pub f32_d: Vec<f32>,
    pub f32_i: Vec<i32>,
    // The f16 distances and the timings are read by the bench only.
    #[allow(dead_code)]
    pub f16_d: Vec<f32>,
    pub f16_i: Vec<i32>,
    /// Per query, the bank splits the fast path scanned exactly.
    pub scanned: Vec<i32>,
    #[allow(dead_code)]
    pub f32_ms: f64,
    #[allow(dead_code)]
    pub f16_ms: f64,
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
    margin: Slot<f32>,
    scanned: Slot<i32>,
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
pub fn run_both(g: &Gpu, q: &[f32], bank: &[f32], dim: usize, reps: usize) -> Results {
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
    let (margin, scanned) = (ap.add::<f32>(nq), ap.add::<i32>(nq));
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
        margin,
        scanned,
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
    let bank_norms = u.get(dev, u.bn);
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
        bank_sq: fast_bank_sq(bank, &bank_norms),
        margin: u.p(u.margin),
    };
    let run32 = |od: DevPtr<f32>, oi: DevPtr<i32>| unsafe {
        g.bs.search_f32(dev, &p32, u.p(u.q), u.p(u.b), parts, od, oi)
            .unwrap();
    };
    let run16 = |od: DevPtr<f32>, oi: DevPtr<i32>| unsafe {
        g.bs.search_f16(dev, &p16, &inputs, parts, od, oi, u.p(u.scanned))
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
        scanned: u.get(dev, u.scanned),
        f32_ms,
        f16_ms,
    }
}

/// Random bank (normal) or clustered bank (centres + small noise); queries near entries.
pub fn data(nq: usize, nb: usize, dim: usize, clustered: bool, seed: u64) -> (Vec<f32>, Vec<f32>) {
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
