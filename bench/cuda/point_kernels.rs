//! The point kernels at M3DM sizes on 50 000 points (random and scan order): every FPS and
//! kNN variant side by side (same output checked), the group encoder in TFLOP/s (the f32
//! kernel and the bf16 GEMM path of `--precision bf16`), the
//! alignment kernels against the device's copy bandwidth, and the whole point branch
//! without the transformer.

use miad::cuda::ops::fps::FpsKernel;
use miad::cuda::ops::knn::KnnKernel;
use miad::cuda::stages::group_encoder::{ConvLayers, DeviceGroupEncoderBf16, EncoderBf16Sizes};
use miad::cuda::{Arena, ArenaPlan, Slot};
use miad::util::rng::Rng;

use crate::shared::point::{random_weights, scan_points, surface_points, Gpu, FEAT, GRID, SIDE};

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Median and spread (min, max) of `reps` event-timed runs after 3 warm-ups.
struct Timing {
    med: f32,
    lo: f32,
    hi: f32,
}

/// Each kernel variant side by side in this process, and the whole point branch without
/// the transformer, with the device's copy bandwidth as the ceiling.
pub fn point_kernels() -> bool {
    let Some(dev) = crate::gpu("point_kernels") else {
        return false;
    };
    let g = Gpu::new(dev);
    let dev = &g.dev;
    let t = dev.timer().unwrap();
    let time = |f: &dyn Fn(), reps: usize| -> Timing {
        for _ in 0..3 {
            f();
        }
        dev.synchronize().unwrap();
        let v: Vec<f32> = (0..reps)
            .map(|_| {
                t.start().unwrap();
                f();
                t.stop_ms().unwrap()
            })
            .collect();
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(0f32, f32::max);
        Timing {
            med: median(v),
            lo,
            hi,
        }
    };
    // Peak: a 1 GiB device-to-device copy, bytes read + written.
    let big = 1usize << 30;
    let mut bp = ArenaPlan::new();
    let src: Slot<u8> = bp.add(big);
    let dst: Slot<u8> = bp.add(big);
    let ba = Arena::new(dev, &bp).unwrap();
    dev.memset_u8(ba.ptr(src).raw(), 1, big).unwrap();
    let copy = time(
        &|| {
            dev.copy_dtod(ba.ptr(dst).raw(), ba.ptr(src).raw(), big)
                .unwrap()
        },
        10,
    );
    let peak = 2.0 * big as f64 / (copy.med as f64 * 1e-3) / 1e9;
    drop(ba);
    println!(
        "device: {} sm_{} ({} SMs); register fps {:?}",
        dev.name,
        dev.sm(),
        dev.sm_count,
        g.k.fps_regs_geometry()
    );
    println!("peak copy bandwidth: {peak:.0} GB/s (1 GiB dtod, read+write)");

    let mut rng = Rng::new(3);
    let w = random_weights(&mut rng, &g.pc);
    g.upload_weights(&w);
    let mut feat = vec![0f32; g.pc.num_groups as usize * FEAT];
    rng.fill_normal(&mut feat, 1.0);
    g.arena.upload(dev, g.b.feat, &feat).unwrap();
    let b = &g.b;
    let k = &g.k;
    let (m, s) = (g.pc.num_groups as usize, g.pc.group_size as usize);
    let fps = |kind: FpsKernel| unsafe {
        k.fps_with(
            kind,
            dev,
            g.p(b.pts),
            g.p(b.n),
            g.p(b.work),
            g.p(b.c_idx),
            g.p(b.c_xyz),
        )
        .unwrap()
    };
    let knn = |kind: KnnKernel| unsafe {
        k.knn_with(
            kind,
            dev,
            g.p(b.pts),
            g.p(b.n),
            g.p(b.c_xyz),
            g.p(b.g_idx),
            g.p(b.g_rel),
        )
        .unwrap()
    };
    let wp = b.w.map(|s| g.p(s));
    let enc = || unsafe { k.encoder(dev, g.p(b.g_rel), wp, g.p(b.tokens)).unwrap() };
    let conv: ConvLayers<'_> = [0, 1, 2, 3].map(|i| (&w.w[2 * i][..], &w.w[2 * i + 1][..]));
    let enc_sizes = EncoderBf16Sizes::new(m, s, w.dims).unwrap();
    let enc_bf16 = DeviceGroupEncoderBf16::new(dev, enc_sizes, &conv).unwrap();
    let enc16 = || unsafe { enc_bf16.record(dev, g.p(b.g_rel), g.p(b.tokens)).unwrap() };
    let nn3 = || unsafe {
        k.nn3(
            dev,
            g.p(b.pts),
            g.p(b.n),
            g.p(b.c_xyz),
            g.p(b.nn_idx),
            g.p(b.nn_w),
        )
        .unwrap()
    };
    let proj = || unsafe {
        k.project(
            dev,
            g.p(b.p2p),
            g.p(b.nn_idx),
            g.p(b.nn_w),
            g.p(b.feat),
            FEAT as i32,
            g.p(b.out),
        )
        .unwrap()
    };
    // pixel map for 50 000 points: pixels 0..n
    let p2p: Vec<i32> = (0..(SIDE * SIDE) as i32)
        .map(|q| if q < 50_000 { q } else { -1 })
        .collect();
    g.arena.upload(dev, b.p2p, &p2p).unwrap();
    let [c1, c2, c3, d] = [128.0, 256.0, 512.0, 384.0];
    let (mf, sf) = (m as f64, s as f64);
    let enc_flop = 2.0 * mf * sf * (3.0 * c1 + c1 * c2 + c2 * c3 + c3 * d) + 2.0 * mf * c2 * c3;
    let fps_kinds: Vec<FpsKernel> = [
        FpsKernel::SharedMemory,
        FpsKernel::RegistersBarrier,
        FpsKernel::RegistersMbarrier,
    ]
    .into_iter()
    .filter(|&x| k.fps_available(x))
    .collect();
    let knn_kinds: Vec<KnnKernel> = [KnnKernel::LaneHeaps, KnnKernel::BoundSelect]
        .into_iter()
        .filter(|&x| k.knn_available(x))
        .collect();
    let row = |name: &str, tm: &Timing, extra: String| {
        println!(
            "{name:44} {:8.4} ms  [{:.4} .. {:.4}]  {extra}",
            tm.med, tm.lo, tm.hi
        );
    };

    let n = 50_000usize;
    for (order, pts) in [
        ("random order", surface_points(&mut rng, n)),
        ("scan order", scan_points(n)),
    ] {
        g.put_points(&pts);
        println!("-- {n} points, {order}");
        let mut fps_first = None;
        let mut reference = None;
        for &kind in &fps_kinds {
            // Same output as the first kernel, checked here too (the bench may run alone).
            fps(kind);
            dev.synchronize().unwrap();
            let idx = g.get(b.c_idx, m);
            match &reference {
                None => reference = Some(idx),
                Some(r) => assert_eq!(&idx, r, "{order}: {kind:?} differs from the first kernel"),
            }
            let tm = time(&|| fps(kind), 20);
            let first: f32 = *fps_first.get_or_insert(tm.med);
            row(
                &format!("fps {kind:?} 1024 of {n}"),
                &tm,
                format!(
                    "{:.3} us/step, first/this {:.1}x",
                    tm.med as f64 * 1e3 / (m - 1) as f64,
                    first / tm.med
                ),
            );
        }
        // kNN on these centers. Compulsory bytes: points once, centers, indices and
        // relative coordinates out.
        let knn_bytes = (n * 12 + m * 12 + m * s * 16) as f64;
        let mut knn_first = None;
        let mut reference = None;
        for &kind in &knn_kinds {
            knn(kind);
            dev.synchronize().unwrap();
            let idx = g.get(b.g_idx, m * s);
            match &reference {
                None => reference = Some(idx),
                Some(r) => assert!(
                    &idx == r,
                    "{order}: kNN {kind:?} differs from the first kernel"
                ),
            }
            let tm = time(&|| knn(kind), 10);
            let first: f32 = *knn_first.get_or_insert(tm.med);
            let gbs = knn_bytes / (tm.med as f64 * 1e-3) / 1e9;
            row(
                &format!("knn {kind:?} {m} x {s}"),
                &tm,
                format!(
                    "{gbs:.1} GB/s = {:.2}% of copy peak (compulsory {:.1} MB), first/this {:.1}x",
                    100.0 * gbs / peak,
                    knn_bytes / 1e6,
                    first / tm.med
                ),
            );
        }
        if matches!(order, "scan order") {
            continue;
        }
        let t_enc = time(&enc, 10);
        row(
            "group encoder",
            &t_enc,
            format!(
                "{:.1} TFLOP/s f32",
                enc_flop / (t_enc.med as f64 * 1e-3) / 1e12
            ),
        );
        let t_enc16 = time(&enc16, 10);
        row(
            "group encoder bf16 (GEMM path)",
            &t_enc16,
            format!(
                "{:.1} TFLOP/s bf16, {:.1}x the f32 kernel",
                enc_flop / (t_enc16.med as f64 * 1e-3) / 1e12,
                t_enc.med / t_enc16.med
            ),
        );
        row("pfa nn3", &time(&nn3, 20), String::new());
        let t_proj = time(&proj, 20);
        let bytes = (GRID * GRID * FEAT * 4 + 1024 * FEAT * 4) as f64;
        row(
            "pfa project (1152)",
            &t_proj,
            format!(
                "{:.1}% of copy peak (compulsory bytes)",
                100.0 * bytes / (t_proj.med as f64 * 1e-3) / 1e9 / peak
            ),
        );
        for (fk, kk) in [
            (FpsKernel::SharedMemory, KnnKernel::LaneHeaps),
            (k.fps_kernel, k.knn_kernel),
            (FpsKernel::RegistersMbarrier, k.knn_kernel),
        ] {
            if !k.fps_available(fk) || !k.knn_available(kk) {
                continue;
            }
            let tm = time(
                &|| {
                    fps(fk);
                    knn(kk);
                    enc();
                    nn3();
                    proj();
                },
                10,
            );
            row(
                &format!("point branch {fk:?}+{kk:?} (+enc+nn3+proj)"),
                &tm,
                String::new(),
            );
        }
    }
    true
}
