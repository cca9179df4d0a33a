//! The simulated device's layer: the cuBLASLt stand-in against an f64 row-major
//! reference for every plan kind the engine uses, graphs that replay what they recorded,
//! and each misuse check provoked.

use miad::backend::Precision;
use miad::cuda::device::gemm::{CublasLt, Epilogue, GemmPlan, GemmShape, Workspace};
use miad::cuda::device::graph::{Graph, Pinned};
use miad::cuda::device::Kernel;
use miad::cuda::ops::gelu::Elementwise;
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device};
use miad::util::rng::Rng;
use miad::{DeviceError, Error, Misuse};

fn dev() -> Device {
    Device::simulated().expect("the simulated device opens (feature cuda-sim)")
}

fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

fn bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}
fn from_bf16(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// `Y = X·W^T (+ b) (GELU)` (`Y +=` when accumulating) in f64 on row-major data.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y0: &[f32],
    (m, n, k): (usize, usize, usize),
    epi: Epilogue,
    accumulate: bool,
    tanh_gelu: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0.0;
            for l in 0..k {
                acc += x[r * k + l] as f64 * w[c * k + l] as f64;
            }
            if accumulate {
                acc += y0[r * n + c] as f64;
            }
            if epi != Epilogue::None {
                acc += b[c] as f64;
            }
            if epi == Epilogue::BiasGelu {
                acc = if tanh_gelu {
                    gelu_tanh(acc)
                } else {
                    gelu_erf(acc)
                };
            }
            out[r * n + c] = acc;
        }
    }
    out
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let big = want.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0f64, f64::max)
        / big
}

/// Every plan kind the forwards use: f32 with none/bias/exact GELU and accumulation;
/// bf16 with bias and tanh-GELU epilogues, bf16 → f32 output, accumulation.
#[test]
fn gemm_plans_follow_the_cublaslt_descriptors() {
    let d = dev();
    let lt = CublasLt::new(&d).unwrap();
    let ew = Elementwise::new(&d).unwrap();
    let (m, n, k) = (37, 24, 40);
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
    let w: Vec<f32> = (0..n * k).map(|_| 0.2 * rng.normal()).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let y0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
    let mut plan = ArenaPlan::new();
    let (sx, sw, sb, sy) = (
        plan.add::<f32>(m * k),
        plan.add::<f32>(n * k),
        plan.add::<f32>(n),
        plan.add::<f32>(m * n),
    );
    let (hx, hw, hb, hy) = (
        plan.add::<u16>(m * k),
        plan.add::<u16>(n * k),
        plan.add::<u16>(n),
        plan.add::<u16>(m * n),
    );
    let arena = Arena::new(&d, &plan).unwrap();
    arena.upload(&d, sx, &x).unwrap();
    arena.upload(&d, sw, &w).unwrap();
    arena.upload(&d, sb, &b).unwrap();
    let x16: Vec<u16> = x.iter().map(|&v| bf16(v)).collect();
    let w16: Vec<u16> = w.iter().map(|&v| bf16(v)).collect();
    let b16: Vec<u16> = b.iter().map(|&v| bf16(v)).collect();
    arena.upload(&d, hx, &x16).unwrap();
    arena.upload(&d, hw, &w16).unwrap();
    arena.upload(&d, hb, &b16).unwrap();
    let xr: Vec<f32> = x16.iter().map(|&v| from_bf16(v)).collect();
    let wr: Vec<f32> = w16.iter().map(|&v| from_bf16(v)).collect();
    let br: Vec<f32> = b16.iter().map(|&v| from_bf16(v)).collect();
    for epi in [Epilogue::None, Epilogue::Bias, Epilogue::BiasGelu] {
        for acc in [false, true] {
            if acc && epi == Epilogue::BiasGelu {
                continue;
            }
            // f32.
            let mut s = GemmShape::new(m, n, k, Precision::F32, epi).unwrap();
            if acc {
                s = s.accumulating().unwrap();
            }
            let p = GemmPlan::new(&d, &lt, s, Workspace::none(), Some(&ew)).unwrap();
            arena.upload(&d, sy, &y0).unwrap();
            unsafe {
                p.run(
                    &d,
                    arena.ptr(sx),
                    arena.ptr(sw),
                    arena.ptr(sb),
                    arena.ptr(sy),
                )
                .unwrap()
            };
            let mut got = vec![0f32; m * n];
            arena.download(&d, sy, &mut got).unwrap();
            let want = reference(&x, &w, &b, &y0, (m, n, k), epi, acc, false);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "f32 {epi:?} accumulate {acc}: {e}");
            // bf16 inputs, f32 output (the residual stream) and bf16 output.
            let s16 = GemmShape::new(m, n, k, Precision::Bf16, epi).unwrap();
            let mixed = s16.with_output(Precision::F32).unwrap();
            let mixed = if acc {
                mixed.accumulating().unwrap()
            } else {
                mixed
            };
            let p = GemmPlan::new(&d, &lt, mixed, Workspace::none(), None).unwrap();
            arena.upload(&d, sy, &y0).unwrap();
            unsafe {
                p.run_mixed(
                    &d,
                    arena.ptr(hx),
                    arena.ptr(hw),
                    arena.ptr(sb),
                    arena.ptr(sy),
                )
                .unwrap()
            };
            arena.download(&d, sy, &mut got).unwrap();
            let want = reference(&xr, &wr, &b, &y0, (m, n, k), epi, acc, true);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "bf16→f32 {epi:?} accumulate {acc}: {e}");
            if !acc {
                let p = GemmPlan::new(&d, &lt, s16, Workspace::none(), None).unwrap();
                unsafe {
                    p.run(
                        &d,
                        arena.ptr(hx),
                        arena.ptr(hw),
                        arena.ptr(hb),
                        arena.ptr(hy),
                    )
                    .unwrap()
                };
                let mut g16 = vec![0u16; m * n];
                arena.download(&d, hy, &mut g16).unwrap();
                let got: Vec<f32> = g16.iter().map(|&v| from_bf16(v)).collect();
                let want = reference(&xr, &wr, &br, &y0, (m, n, k), epi, false, true);
                let e = rel_err(&got, &want);
                // bf16 output: one rounding (2^-8 relative).
                assert!(e < 8e-3, "bf16 {epi:?}: {e}");
            }
        }
    }
}

/// A graph records copies, a launch and a GEMM, and replays them with the captured
/// arguments on whatever the pinned buffers hold.
#[test]
fn graphs_replay_recorded_work_on_new_inputs() {
    let d = dev();
    let lt = CublasLt::new(&d).unwrap();
    let ew = Elementwise::new(&d).unwrap();
    let (m, n, k) = (5, 8, 16);
    let mut plan = ArenaPlan::new();
    let (sx, sw, sb, sy) = (
        plan.add::<f32>(m * k),
        plan.add::<f32>(n * k),
        plan.add::<f32>(n),
        plan.add::<f32>(m * n),
    );
    let arena = Arena::new(&d, &plan).unwrap();
    let mut rng = Rng::new(3);
    let w: Vec<f32> = (0..n * k).map(|_| 0.3 * rng.normal()).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    arena.upload(&d, sw, &w).unwrap();
    arena.upload(&d, sb, &b).unwrap();
    let s = GemmShape::new(m, n, k, Precision::F32, Epilogue::BiasGelu).unwrap();
    let p = GemmPlan::new(&d, &lt, s, Workspace::none(), Some(&ew)).unwrap();
    let mut hx = Pinned::<f32>::new(&d, m * k).unwrap();
    let mut hy = Pinned::<f32>::new(&d, m * n).unwrap();
    let hy_ptr: *mut Pinned<f32> = &mut hy;
    let g = Graph::capture(&d, |d| {
        hx.copy_to(d, arena.ptr(sx), m * k)?;
        unsafe {
            p.run(
                d,
                arena.ptr(sx),
                arena.ptr(sw),
                arena.ptr(sb),
                arena.ptr(sy),
            )?
        };
        // SAFETY: the pinned buffer outlives the graph; nothing else borrows it here.
        unsafe { (*hy_ptr).copy_from(d, arena.ptr(sy), m * n) }
    })
    .unwrap();
    // Nothing ran while recording: the output buffer is still zero.
    assert!(hy.as_slice().iter().all(|&v| v == 0.0));
    for round in 0..2 {
        let x: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        hx.as_mut_slice().copy_from_slice(&x);
        g.replay(&d).unwrap();
        d.synchronize().unwrap();
        let want = reference(&x, &w, &b, &[], (m, n, k), Epilogue::BiasGelu, false, false);
        let e = rel_err(hy.as_slice(), &want);
        assert!(e < 1e-5, "replay {round}: {e}");
    }
}

/// The error must be the simulated device's `kind` of misuse, its message naming `words`.
fn expect_err<T>(r: miad::Result<T>, kind: Misuse, words: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("expected a {kind:?} error with {words:?}"),
        Err(e) => e,
    };
    assert!(
        matches!(&e, Error::Device(DeviceError::Misuse { kind: k, .. }) if *k == kind),
        "{e:?} is not a {kind:?} misuse"
    );
    let e = e.to_string();
    for w in words {
        assert!(e.contains(w), "{e:?} lacks {w:?}");
    }
    e
}

#[test]
fn out_of_bounds_copies_are_refused() {
    let d = dev();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(64);
    let arena = Arena::new(&d, &plan).unwrap();
    let bytes = arena.bytes() / 4;
    // One element past the allocation's end.
    let past = arena.ptr(s).offset(bytes - 8);
    expect_err(
        d.upload(past.raw(), &[1f32; 9]),
        Misuse::OutOfBounds,
        &["out of bounds by 4"],
    );
    let mut host = [0f32; 4];
    expect_err(
        d.download(&mut host, DevPtr::<f32>::null().raw() + 64),
        Misuse::OutOfBounds,
        &["outside every device allocation"],
    );
    expect_err(
        d.memset_u8(arena.ptr(s).raw(), 0, arena.bytes() + 1),
        Misuse::OutOfBounds,
        &["memset", "out of bounds"],
    );
    // In bounds is fine.
    d.upload(past.raw(), &[1f32; 8]).unwrap();
}

#[test]
fn reads_of_never_written_memory_are_reported() {
    let d = dev();
    let lt = CublasLt::new(&d).unwrap();
    let mut plan = ArenaPlan::new();
    let (sa, sb) = (plan.add::<f32>(16), plan.add::<f32>(16));
    let (sx, sw, sy) = (plan.add::<f32>(4), plan.add::<f32>(4), plan.add::<f32>(1));
    let arena = Arena::new(&d, &plan).unwrap();
    arena.upload(&d, sa, &[2f32; 8]).unwrap();
    let mut out = [0f32; 16];
    // The first 8 values were written, the rest never.
    arena.download(&d, sa, &mut out[..8]).unwrap();
    expect_err(
        arena.download(&d, sa, &mut out),
        Misuse::NeverWritten,
        &["never written", "offset 32"],
    );
    // A device-to-device copy carries the poison; the download of its target reports it.
    d.copy_dtod(arena.ptr(sb).raw(), arena.ptr(sa).raw(), 64)
        .unwrap();
    expect_err(
        arena.download(&d, sb, &mut out),
        Misuse::NeverWritten,
        &["never written"],
    );
    // A GEMM whose weights were never uploaded.
    arena.upload(&d, sx, &[1f32; 4]).unwrap();
    let s = GemmShape::new(1, 1, 4, Precision::F32, Epilogue::None).unwrap();
    let p = GemmPlan::new(&d, &lt, s, Workspace::none(), None).unwrap();
    let r = unsafe {
        p.run(
            &d,
            arena.ptr(sx),
            arena.ptr(sw),
            DevPtr::null(),
            arena.ptr(sy),
        )
    };
    expect_err(r, Misuse::NeverWritten, &["gemm A", "never written"]);
}

#[test]
fn graph_replay_after_replanning_is_refused() {
    let d = dev();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(32);
    let arena = Arena::new(&d, &plan).unwrap();
    let host = Pinned::<f32>::new(&d, 32).unwrap();
    let g = Graph::capture(&d, |d| host.copy_to(d, arena.ptr(s), 32)).unwrap();
    g.replay(&d).unwrap();
    // Re-planning: the arena the graph was recorded with goes, a new one comes (possibly
    // at the same address).
    drop(arena);
    let _new = Arena::new(&d, &plan).unwrap();
    expect_err(
        g.replay(&d),
        Misuse::StaleGraph,
        &["replay after re-planning"],
    );
}

#[test]
fn kernel_argument_misuse_is_refused() {
    let d = dev();
    let m = miad::cuda::device::module::Module::load(&d, "gelu").unwrap();
    let f = Kernel::find(&m, "bias_gelu_f32").unwrap();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(8);
    let arena = Arena::new(&d, &plan).unwrap();
    let y = arena.ptr(s);
    let (n, cols) = (8i64, 8i32);
    let mut args = miad::kernel_args![y, y, n];
    let r = unsafe { d.launch(f, (1, 1, 1), (32, 1, 1), 0, &mut args) };
    assert!(
        matches!(
            r,
            Err(Error::Device(DeviceError::ArgumentCount {
                kernel: "bias_gelu_f32",
                expected: 4,
                passed: 3
            }))
        ),
        "{r:?}"
    );
    let mut args = miad::kernel_args![y, y, n, cols];
    // Dynamic shared memory above 48 KiB without the opt-in.
    let r = unsafe { d.launch(f, (1, 1, 1), (32, 1, 1), 64 << 10, &mut args) };
    expect_err(r, Misuse::LaunchConfig, &["set_max_dynamic_smem"]);
    assert!(Kernel::find(&m, "no_such_kernel").is_err());
}

#[test]
fn nested_capture_is_refused_and_the_stream_stays_usable() {
    let d = dev();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(4);
    let arena = Arena::new(&d, &plan).unwrap();
    let host = Pinned::<f32>::new(&d, 4).unwrap();
    let r = Graph::capture(&d, |d| {
        host.copy_to(d, arena.ptr(s), 4)?;
        Graph::capture(d, |_| Ok(())).map(|_| ())
    });
    expect_err(r, Misuse::Capture, &["capture is already under way"]);
    // The failed capture was abandoned: work runs again at once.
    d.upload(arena.ptr(s).raw(), &[3f32; 4]).unwrap();
    let mut out = [0f32; 4];
    arena.download(&d, s, &mut out).unwrap();
    assert_eq!(out, [3.0; 4]);
}

#[test]
fn gemm_operands_whose_layouts_contradict_each_other_are_refused() {
    use miad::cuda::device::sim::{GemmCall, GemmOperand, HostMem, SimStream};
    let stream = SimStream::new().unwrap();
    let mem = HostMem::device(1024).unwrap();
    let op = |rows: u64, cols: u64, ld: i64| GemmOperand {
        ptr: mem.addr(),
        rows,
        cols,
        ld,
        trans: false,
        bf16: false,
    };
    let call = |a, b, d| GemmCall {
        a,
        b,
        d,
        alpha: 1.0,
        beta: 0.0,
        bias: 0,
        gelu_tanh: false,
    };
    // op(A) 2x3 · op(B) 4x2: the inner sizes differ.
    expect_err(
        stream.gemm(call(op(2, 3, 2), op(4, 2, 4), op(2, 2, 2))),
        Misuse::GemmLayout,
        &["op(A) 2x3", "op(B) 4x2"],
    );
    // D of the wrong shape.
    expect_err(
        stream.gemm(call(op(2, 3, 2), op(3, 2, 3), op(3, 2, 3))),
        Misuse::GemmLayout,
        &["into D 3x2"],
    );
    // A leading dimension shorter than a column.
    expect_err(
        stream.gemm(call(op(2, 3, 1), op(3, 2, 3), op(2, 2, 2))),
        Misuse::GemmLayout,
        &["gemm A", "ld 1 < rows 2"],
    );
}

#[test]
fn a_kernel_the_emulator_stops_is_reported_with_its_name() {
    let d = dev();
    let att = miad::cuda::ops::attention::Attention::new(&d).unwrap();
    let m = d.module("attention").unwrap();
    let f = Kernel::find(&m, "attention_bf16").unwrap();
    let mut plan = ArenaPlan::new();
    let (sq, so) = (plan.add::<u16>(3 * 64), plan.add::<u16>(64));
    let arena = Arena::new(&d, &plan).unwrap();
    arena.upload(&d, sq, &[bf16(0.5); 3 * 64]).unwrap();
    let (q, o) = (arena.ptr(sq), arena.ptr(so));
    let (n, heads, scale) = (1i32, 1i32, 0.125f32);
    let (qb, ob) = (q.cast::<half::bf16>(), o.cast::<half::bf16>());
    let (parts, tiles_per_split) = (DevPtr::<f32>::null(), 1i32);
    let mut args = miad::kernel_args![qb, ob, parts, n, heads, scale, tiles_per_split];
    // Half a warp: the tensor-core instructions need all 32 lanes.
    let r = unsafe { d.launch(f, (1, 1, 1), (16, 1, 1), 0, &mut args) };
    expect_err(r, Misuse::Kernel, &["attention_bf16"]);
    // The stream stays usable: the full block runs.
    unsafe { att.run_bf16(&d, q, o, DevPtr::null(), 1, 1, 0.125) }.unwrap();
    let mut out = [0u16; 64];
    arena.download(&d, so, &mut out).unwrap();
    // One key: the output is its value row.
    assert!(out.iter().all(|&v| v == bf16(0.5)), "{out:?}");
}

#[test]
fn the_engine_arena_hands_each_region_out_once() {
    let d = dev();
    let mut small = ArenaPlan::new();
    small.add::<f32>(100);
    let mut big = ArenaPlan::new();
    big.add::<f32>(10_000);
    // Before the engine plans: a stage used alone gets an arena of its own.
    let own = d.stage_arena("alone", &small).unwrap();
    assert_eq!(d.counts().arenas, 1);
    drop(own);
    assert!(d.shared_gemm_workspace().unwrap().is_none());
    d.plan_engine_arena(&[("a", small.clone()), ("b", big.clone())])
        .unwrap();
    assert_eq!(d.counts().arenas, 2);
    assert!(d
        .plan_engine_arena(&[("c", small.clone())])
        .unwrap_err()
        .to_string()
        .contains("planned once"));
    let ws = d.shared_gemm_workspace().unwrap().unwrap();
    assert!(ws.bytes > 0);
    let a = d.stage_arena("a", &small).unwrap();
    let b = d.stage_arena("b", &big).unwrap();
    // Regions of the one allocation, disjoint, and no new arena.
    assert_eq!(d.counts().arenas, 2);
    let (pa, pb) = (
        a.ptr::<u8>(small_slot()).raw(),
        b.ptr::<u8>(small_slot()).raw(),
    );
    assert!(
        pa + a.bytes() as u64 <= pb,
        "{pa:#x} + {} > {pb:#x}",
        a.bytes()
    );
    assert!(pb + b.bytes() as u64 <= ws.ptr.raw());
    for (r, words) in [
        (d.stage_arena("a", &small), "second time"),
        (d.stage_arena("x", &small), "did not plan"),
    ] {
        let e = r.err().unwrap().to_string();
        assert!(e.contains(words), "{e}");
    }
    // A stage that needs more than the engine planned for it.
    let dev2 = dev();
    dev2.plan_engine_arena(&[("a", small)]).unwrap();
    let e = dev2.stage_arena("a", &big).err().unwrap().to_string();
    assert!(e.contains("needs") && e.contains("planned"), "{e}");
}

/// A slot at the start of an arena (its base address).
fn small_slot() -> miad::cuda::Slot<u8> {
    ArenaPlan::new().add::<u8>(0)
}

/// A stage's region of the engine's arena is bounded on the simulated device: a copy that
/// runs past its end is out of bounds, though the engine's allocation continues.
#[test]
fn copies_past_a_stage_region_are_out_of_bounds() {
    let d = dev();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(64);
    d.plan_engine_arena(&[("a", plan.clone()), ("b", plan.clone())])
        .unwrap();
    let a = d.stage_arena("a", &plan).unwrap();
    let b = d.stage_arena("b", &plan).unwrap();
    let words = a.bytes() / 4;
    // The whole region: fine; one word more: into region b, refused.
    a.upload(&d, s, &[1f32; 64]).unwrap();
    d.upload(a.ptr(s).raw(), &vec![1f32; words]).unwrap();
    expect_err(
        d.upload(a.ptr(s).raw(), &vec![1f32; words + 1]),
        Misuse::OutOfBounds,
        &["out of bounds by 4"],
    );
    expect_err(
        d.memset_u8(b.ptr(s).raw(), 0, b.bytes() + 4),
        Misuse::OutOfBounds,
        &["memset", "out of bounds by 4"],
    );
    // A graph recorded on a region replays while the region lives.
    let host = Pinned::<f32>::new(&d, 64).unwrap();
    let g = Graph::capture(&d, |d| host.copy_to(d, b.ptr(s), 64)).unwrap();
    g.replay(&d).unwrap();
    drop(b);
    expect_err(g.replay(&d), Misuse::StaleGraph, &["re-planning"]);
}
