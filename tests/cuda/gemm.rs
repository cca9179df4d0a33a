//! Dense layers through cuBLASLt (`miad::cuda::device::gemm`) against an f64 host reference:
//! - f32 plans (full f32, exact erf GELU) within 1e-5 relative (Frobenius, and largest
//!   error over largest value) at ViT-B/8 and Point-MAE shapes, with bias, with bias + GELU
//!   and without bias; every output written (outputs start as NaN);
//! - bf16 plans (f32 accumulation) within 1e-2 of the reference on the bf16-rounded
//!   inputs and of the reference on the f32 inputs;
//! - same bits on a second run; bad arguments refused before anything is launched.
//!
//! The host-side checks (shape validation, layouts) always run. The GPU tests print a SKIP
//! line and pass without a driver, a GPU or the cuBLASLt library. TFLOP/s of every shape and
//! precision: `gemm` in bench/cuda/.

use miad::backend::Precision;
use miad::cuda::device::gemm::{Epilogue, GemmPlan, GemmShape};
use miad::cuda::DevPtr;

use crate::shared::gemm::{bf16_bits, inputs, run, setup, Bufs, Gpu, SHAPES};

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

fn bf16_vals(x: &[u16]) -> Vec<f32> {
    x.iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect()
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
