//! Dense layers through cuBLASLt (`miad::cuda::device::gemm`) against an f64 host reference:
//! - f32 plans (full f32, exact erf GELU) within 1e-5 relative (Frobenius, and largest
//!   error over largest value) at ViT-B/8 and Point-MAE shapes, with bias, with bias + GELU
//!   and without bias; every output written (outputs start as NaN);
//! - bf16 plans (f32 accumulation) within 1e-2 of the reference on the bf16-rounded
//!   inputs and of the reference on the f32 inputs;
//! - same bits on a second run; bad arguments refused before anything is launched.
//!
//! The host-side checks (shape validation, layouts) always run. The GPU tests print a SKIP
//! line and pass without a driver, a GPU or the cuBLASLt library. With `MIAD_BENCH=1` the
//! bench reports TFLOP/s of every shape and precision:
//! `MIAD_BENCH=1 cargo test --release --features cuda --test cuda gemm::gemm_bench -- --nocapture`.

use miad::backend::Precision;
use miad::cuda::device::gemm::{
    CublasLt, Epilogue, GemmPlan, GemmShape, Workspace, GEMM_WORKSPACE_BYTES,
};
use miad::cuda::ops::gelu::Elementwise;
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::util::rng::Rng;

/// Device, library handle and the exact-GELU kernels. Fields drop in order: the device
/// last.
struct Gpu {
    ew: Elementwise,
    lt: CublasLt,
    dev: Device,
}

fn setup() -> Option<Gpu> {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_gemm: SKIP, no usable GPU: {e}");
            return None;
        }
    };
    let lt = match CublasLt::new(&dev) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cuda_gemm: SKIP, {} has a driver but no cuBLASLt: {e}",
                dev.name
            );
            return None;
        }
    };
    eprintln!(
        "cuda_gemm: {} (sm_{}), cuBLASLt {}",
        dev.name,
        dev.sm(),
        lt.version()
    );
    let ew = Elementwise::new(&dev).expect("gelu kernel loads");
    Some(Gpu { ew, lt, dev })
}

/// (name, m, n, k, epilogue) of the dense layers of ViT-B/8 (785 tokens) and Point-MAE
/// (1024 groups).
const SHAPES: [(&str, usize, usize, usize, Epilogue); 8] = [
    ("vit qkv", 785, 2304, 768, Epilogue::Bias),
    ("vit proj", 785, 768, 768, Epilogue::Bias),
    ("vit fc1", 785, 3072, 768, Epilogue::BiasGelu),
    ("vit fc2", 785, 768, 3072, Epilogue::Bias),
    ("pmae qkv", 1024, 1152, 384, Epilogue::None),
    ("pmae proj", 1024, 384, 384, Epilogue::Bias),
    ("pmae fc1", 1024, 1536, 384, Epilogue::BiasGelu),
    ("pmae fc2", 1024, 384, 1536, Epilogue::Bias),
];

fn gelu(v: f64) -> f64 {
    0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
}

/// f64 `y = x·w^T (+ b) (then GELU)`, row-major, threads over rows.
fn reference(x: &[f32], w: &[f32], b: &[f32], s: &GemmShape) -> Vec<f64> {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut y = vec![0.0f64; m * n];
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let rows_per = m.div_ceil(threads);
    std::thread::scope(|sc| {
        for (ci, chunk) in y.chunks_mut(rows_per * n).enumerate() {
            sc.spawn(move || {
                for (ri, row) in chunk.chunks_mut(n).enumerate() {
                    let xr = &x[(ci * rows_per + ri) * k..][..k];
                    for (c, out) in row.iter_mut().enumerate() {
                        let wr = &w[c * k..][..k];
                        // Four partial sums (f64): the reference need not be sequential.
                        let mut acc = [0.0f64; 4];
                        let mut xs = xr.chunks_exact(4);
                        let mut ws = wr.chunks_exact(4);
                        for (xa, wa) in (&mut xs).zip(&mut ws) {
                            for l in 0..4 {
                                acc[l] += xa[l] as f64 * wa[l] as f64;
                            }
                        }
                        let mut v = acc.iter().sum::<f64>()
                            + xs.remainder()
                                .iter()
                                .zip(ws.remainder())
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>();
                        match s.epilogue {
                            Epilogue::None => {}
                            Epilogue::Bias => v += b[c] as f64,
                            Epilogue::BiasGelu => v = gelu(v + b[c] as f64),
                        }
                        *out = v;
                    }
                }
            });
        }
    });
    y
}

/// (Frobenius relative error, largest error / largest reference value); panics on a
/// non-finite output (unwritten, or NaN).
fn rel_err(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den, mut max_abs, mut max_ref) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite(),
            "output {i} not finite ({g}): unwritten or NaN"
        );
        let e = *g as f64 - w;
        num += e * e;
        den += w * w;
        max_abs = max_abs.max(e.abs());
        max_ref = max_ref.max(w.abs());
    }
    ((num / den).sqrt(), max_abs / max_ref)
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

fn bf16_vals(x: &[u16]) -> Vec<f32> {
    x.iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect()
}

/// Random inputs of a shape: x ~ N(0, 1), w ~ N(0, 1/k) (outputs ~ N(0, 1), so GELU sees
/// both signs), bias ~ N(0, 0.5).
fn inputs(s: &GemmShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut x = vec![0.0f32; s.x_len()];
    let mut w = vec![0.0f32; s.w_len()];
    let mut b = vec![0.0f32; s.n];
    rng.fill_normal(&mut x, 1.0);
    rng.fill_normal(&mut w, 1.0 / (s.k as f32).sqrt());
    rng.fill_normal(&mut b, 0.5);
    (x, w, b)
}

/// Device buffers of one layer in one arena, with the workspace.
struct Bufs<T> {
    arena: Arena,
    x: Slot<T>,
    w: Slot<T>,
    b: Slot<T>,
    y: Slot<T>,
    ws: Slot<u8>,
}

impl<T: bytemuck::Pod> Bufs<T> {
    fn new(dev: &Device, s: &GemmShape, x: &[T], w: &[T], b: &[T], poison: T) -> Self {
        let mut p = ArenaPlan::new();
        let (xs, ws_, bs, ys) = (
            p.add::<T>(x.len()),
            p.add::<T>(w.len()),
            p.add::<T>(b.len().max(1)),
            p.add::<T>(s.y_len()),
        );
        let wk = p.add::<u8>(GEMM_WORKSPACE_BYTES);
        let arena = Arena::new(dev, &p).unwrap();
        arena.upload(dev, xs, x).unwrap();
        arena.upload(dev, ws_, w).unwrap();
        arena.upload(dev, bs, b).unwrap();
        arena.upload(dev, ys, &vec![poison; s.y_len()]).unwrap();
        Bufs {
            arena,
            x: xs,
            w: ws_,
            b: bs,
            y: ys,
            ws: wk,
        }
    }
    fn workspace(&self) -> Workspace {
        Workspace {
            ptr: self.arena.ptr(self.ws),
            bytes: GEMM_WORKSPACE_BYTES,
        }
    }
    fn ptrs(&self) -> [DevPtr<T>; 4] {
        let a = &self.arena;
        [a.ptr(self.x), a.ptr(self.w), a.ptr(self.b), a.ptr(self.y)]
    }
    fn y(&self, dev: &Device) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.y.len];
        dev.synchronize().unwrap();
        self.arena.download(dev, self.y, &mut v).unwrap();
        v
    }
}

/// Runs `plan` on `bufs` once.
fn run<T: miad::cuda::device::gemm::GemmElement + bytemuck::Pod>(
    g: &Gpu,
    plan: &GemmPlan,
    bufs: &Bufs<T>,
) {
    let [x, w, b, y] = bufs.ptrs();
    unsafe { plan.run(&g.dev, x, w, b, y) }.unwrap();
}

fn check_f32(g: &Gpu, name: &str, s: GemmShape, seed: u64) {
    let (x, w, b) = inputs(&s, seed);
    let want = reference(&x, &w, &b, &s);
    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, f32::NAN);
    let plan = GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), Some(&g.ew)).unwrap();
    run(g, &plan, &bufs);
    let got = bufs.y(&g.dev);
    let (rel, maxrel) = rel_err(&got, &want);
    eprintln!(
        "gemm f32  {name} {}x{}x{} {:?}: rel {rel:.2e}, max/maxref {maxrel:.2e} (workspace {} B, waves {:.2})",
        s.m,
        s.n,
        s.k,
        s.epilogue,
        plan.workspace_bytes(),
        plan.waves()
    );
    assert!(
        rel < 1e-5 && maxrel < 1e-5,
        "{name}: f32 GEMM off: {rel:e} {maxrel:e}"
    );
    run(g, &plan, &bufs);
    let again = bufs.y(&g.dev);
    assert!(
        got.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{name}: f32 GEMM not deterministic"
    );
}

fn check_bf16(g: &Gpu, name: &str, s: GemmShape, seed: u64) {
    let (x, w, b) = inputs(&s, seed);
    let want = reference(&x, &w, &b, &s);
    let (x16, w16, b16) = (bf16_bits(&x), bf16_bits(&w), bf16_bits(&b));
    let want_r = reference(&bf16_vals(&x16), &bf16_vals(&w16), &bf16_vals(&b16), &s);
    let bufs = Bufs::new(&g.dev, &s, &x16, &w16, &b16, 0x7fc0u16);
    let plan = GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), None).unwrap();
    run(g, &plan, &bufs);
    let raw = bufs.y(&g.dev);
    let got = bf16_vals(&raw);
    let (rel_r, max_r) = rel_err(&got, &want_r);
    let (rel_f, _) = rel_err(&got, &want);
    eprintln!(
        "gemm bf16 {name} {}x{}x{} {:?}: rel {rel_r:.2e} (max {max_r:.2e}) vs bf16 inputs, {rel_f:.2e} vs f32 inputs",
        s.m, s.n, s.k, s.epilogue
    );
    assert!(
        rel_r < 1e-2 && max_r < 1e-2 && rel_f < 1e-2,
        "{name}: bf16 GEMM off: {rel_r:e} {max_r:e} {rel_f:e}"
    );
    run(g, &plan, &bufs);
    assert_eq!(raw, bufs.y(&g.dev), "{name}: bf16 GEMM not deterministic");
}

#[test]
fn gemm_shapes_are_checked_on_the_host() {
    // No driver involved.
    let f = Precision::F32;
    assert!(GemmShape::new(0, 768, 768, f, Epilogue::Bias).is_err());
    assert!(GemmShape::new(785, 768, 0, f, Epilogue::Bias).is_err());
    assert!(GemmShape::new(1 << 31, 1, 1, f, Epilogue::None).is_err());
    let s = GemmShape::new(785, 2304, 768, f, Epilogue::Bias).unwrap();
    assert_eq!(s.flops(), 2.0 * 785.0 * 2304.0 * 768.0);
    let l = s.layouts();
    assert!(l.trans_a && !l.trans_b);
    assert_eq!((l.a.rows, l.a.cols, l.a.ld), (768, 2304, 768));
    assert_eq!((l.b.rows, l.b.cols, l.b.ld), (768, 785, 768));
    assert_eq!((l.d.rows, l.d.cols, l.d.ld), (2304, 785, 2304));
    let ok = 1u64 << 40;
    assert!(s.check_run(Precision::Bf16, ok, ok, ok, ok).is_err());
    assert!(s.check_run(f, ok + 4, ok, ok, ok).is_err());
    assert!(s.check_run(f, ok, ok, 0, ok).is_err());
    assert!(s.check_run(f, ok, ok, ok, ok).is_ok());
}

#[test]
fn gemm_f32_matches_f64_reference() {
    let Some(g) = setup() else { return };
    for (i, (name, m, n, k, e)) in SHAPES.into_iter().enumerate() {
        let s = GemmShape::new(m, n, k, Precision::F32, e).unwrap();
        check_f32(&g, name, s, 100 + i as u64);
    }
    // Every epilogue on one ragged shape (odd sizes, not multiples of any tile).
    for (i, e) in [Epilogue::None, Epilogue::Bias, Epilogue::BiasGelu]
        .into_iter()
        .enumerate()
    {
        let s = GemmShape::new(77, 93, 45, Precision::F32, e).unwrap();
        check_f32(&g, "ragged", s, 200 + i as u64);
    }
}

#[test]
fn gemm_bf16_matches_f64_reference() {
    let Some(g) = setup() else { return };
    for (i, (name, m, n, k, e)) in SHAPES.into_iter().enumerate() {
        let s = GemmShape::new(m, n, k, Precision::Bf16, e).unwrap();
        check_bf16(&g, name, s, 300 + i as u64);
    }
}

#[test]
fn gemm_rejects_bad_arguments() {
    let Some(g) = setup() else { return };
    let s = GemmShape::new(64, 64, 64, Precision::F32, Epilogue::Bias).unwrap();
    let (x, w, b) = inputs(&s, 7);
    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, f32::NAN);
    // The exact-GELU f32 plan needs the elementwise kernels.
    let sg = GemmShape::new(64, 64, 64, Precision::F32, Epilogue::BiasGelu).unwrap();
    assert!(GemmPlan::new(&g.dev, &g.lt, sg, bufs.workspace(), None).is_err());
    // A misaligned workspace.
    let mut ws = bufs.workspace();
    ws.ptr = ws.ptr.offset(16);
    assert!(GemmPlan::new(&g.dev, &g.lt, s, ws, None).is_err());
    let plan = GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), None).unwrap();
    let [xp, wp, bp, yp] = bufs.ptrs();
    unsafe {
        // Wrong element type, misaligned or null pointers, missing bias.
        let mut h = DevPtr::<u16>::null();
        h.0 = xp.raw();
        assert!(plan.run(&g.dev, h, h, h, h).is_err());
        assert!(plan.run(&g.dev, xp.offset(1), wp, bp, yp).is_err());
        assert!(plan.run(&g.dev, xp, wp, bp, DevPtr::null()).is_err());
        assert!(plan.run(&g.dev, xp, wp, DevPtr::null(), yp).is_err());
    }
    // Nothing was written.
    assert!(bufs.y(&g.dev).iter().all(|v| v.is_nan()));
    // A planned run still works.
    unsafe { plan.run(&g.dev, xp, wp, bp, yp) }.unwrap();
    assert!(bufs.y(&g.dev).iter().all(|v| v.is_finite()));
}

#[test]
fn gemm_bench() {
    if std::env::var_os("MIAD_BENCH").is_none() {
        eprintln!("skipped: set MIAD_BENCH=1 to time the GEMMs");
        return;
    }
    let Some(g) = setup() else { return };
    let reps = 100;
    let timer = g.dev.timer().unwrap();
    for (name, m, n, k, e) in SHAPES {
        let mut line = format!("BENCH gemm {name} {m}x{n}x{k} {e:?}:");
        for p in [Precision::F32, Precision::Bf16] {
            let s = GemmShape::new(m, n, k, p, e).unwrap();
            let (x, w, b) = inputs(&s, 9);
            let mut times = Vec::new();
            match p {
                Precision::F32 => {
                    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, 0.0);
                    let plan =
                        GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), Some(&g.ew)).unwrap();
                    run(&g, &plan, &bufs);
                    for _ in 0..5 {
                        timer.start().unwrap();
                        for _ in 0..reps {
                            run(&g, &plan, &bufs);
                        }
                        times.push(timer.stop_ms().unwrap() as f64 / reps as f64);
                    }
                }
                Precision::Bf16 => {
                    let (x, w, b) = (bf16_bits(&x), bf16_bits(&w), bf16_bits(&b));
                    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, 0);
                    let plan = GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), None).unwrap();
                    run(&g, &plan, &bufs);
                    for _ in 0..5 {
                        timer.start().unwrap();
                        for _ in 0..reps {
                            run(&g, &plan, &bufs);
                        }
                        times.push(timer.stop_ms().unwrap() as f64 / reps as f64);
                    }
                }
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = times[2];
            line += &format!(
                " {p:?} {:.1} us ({:.1} TFLOP/s)",
                t * 1e3,
                s.flops() / (t * 1e-3) / 1e12
            );
        }
        println!("{line}");
    }
}
