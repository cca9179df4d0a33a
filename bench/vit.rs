//! The networks on the CPU against the machine's peak FMA rate measured in the same run
//! (`measure_peak_gflops`; target ≥ 0.75): one full ViT-B/8 forward pass at 224×224
//! (SPEC §2) with seeded random weights, its blocks' weights packed once as the engine
//! runs them, f32 (the same bits as the unpacked pass: asserted) and bf16 (AVX512-BF16
//! CPUs); where the time of one block goes (LayerNorm, each GEMM, attention, GELU as the
//! difference between fc1 with and without it); Point-MAE's blocks, its whole encoder and
//! UFF at M3DM sizes (unpacked f32, packed f32, bf16); then each GEMM shape of the method
//! as a fraction of the peak measured right before it.
//!
//! `cargo bench --bench vit` (set `MIAD_BENCH_THREADS` to use another thread count;
//! `MIAD_BENCH_PARTS=vit`, `block`, `networks` or `gemm` runs that part alone;
//! `MIAD_BENCH_PARTS=bf16dense` runs the bf16 dense layers as a pass meets them, `passes`
//! the bf16 pass pass by pass, `walk` the bf16 micro-kernel through a GEMM's loops, each
//! only when named;
//! `MIAD_CPU_ISA=avx2` measures the AVX2 path, its peak included).

mod timing;
use miad::config::{ModelConfig, PointConfig, VitConfig};
use miad::cpu::dense::{dense, DensePrecision, PackedWeight};
use miad::cpu::fusion::{fuse_with, fusion_scratch_len, FusionPacked, FusionWeights};
use miad::cpu::gemm::{linear, linear_packed, Epilogue, Mat, PackedF32};
use miad::cpu::gemm_bf16::{linear_bf16, linear_bf16_rows, Bf16Mat, PackedBf16, Rows};
use miad::cpu::point_mae::{
    block_shape as point_block_shape, point_mae_flops, point_mae_forward_with,
    point_mae_scratch_len, PointMaePacked, PointMaeWeights,
};
use miad::cpu::pool::Pool;
use miad::cpu::transformer::{attention, attn_scratch_len, layer_norm, layer_norm_for_bf16};
use miad::cpu::transformer::{block_forward_with, block_scratch_len};
use miad::cpu::vit::{vit_flops, vit_forward, vit_forward_with, vit_scratch_len, VitWeights};
use miad::format::random_model;
use miad::util::peak::{
    measure_bf16_peak_gflops, measure_bf16_peak_gflops_per_cpu_second, measure_peak_gflops,
    measure_peak_gflops_per_cpu_second, process_cpu_seconds,
};
use miad::util::rng::Rng;

fn threads() -> usize {
    std::env::var("MIAD_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn random(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, std);
    v
}

/// ViT-B/8's configuration, its seeded random tensors (only the ViT's: the point and
/// fusion branches are not needed here) and a random 224×224 input.
fn vit_model_and_input() -> (VitConfig, miad::format::OwnedTensors, Vec<f32>) {
    let cfg = VitConfig::base8();
    let model = ModelConfig {
        point: None,
        fusion: None,
        radar: None,
        ..ModelConfig::m3dm()
    };
    let tensors = random_model(&model, 1);
    let s = cfg.image_size as usize;
    let input = random(cfg.in_chans as usize * s * s, 2, 1.0);
    (cfg, tensors, input)
}

/// The forward pass with the blocks' weights packed once in `precision` (as the engine
/// runs it), beside the features of the unpacked f32 pass: f32 packed must give the same
/// bits; bf16 reports its difference.
fn full_forward(threads: usize, pool: &Pool, precision: DensePrecision) {
    let (cfg, tensors, input) = vit_model_and_input();
    let w = VitWeights::load(&tensors, &cfg).expect("random weights match the configuration");
    let mut scratch = vec![0f32; vit_scratch_len(&cfg, threads)];
    let mut f32_out = vec![0f32; cfg.patches() * cfg.dim as usize];
    vit_forward(pool, &cfg, &w, &input, &mut f32_out, &mut scratch).expect("forward pass");
    let Some(blocks) = w.packed(&cfg, precision) else {
        println!("no AVX512-BF16 on this CPU: no bf16 forward pass");
        return;
    };
    let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
    let flops = vit_flops(&cfg);
    // The peak is measured just before and just after (the higher counts): on a shared
    // machine, other load lowers both numbers alike only when they are taken close together.
    let peak_before = measure_peak_gflops(threads);
    let cpu0 = process_cpu_seconds();
    let t = timing::time_runs(5, || {
        vit_forward_with(pool, &cfg, &w, &blocks, &input, &mut out, &mut scratch)
            .expect("forward pass");
    });
    // The warm-up pass and the timed ones.
    let per_cpu = flops * (t.runs + 1) as f64 / (process_cpu_seconds() - cpu0) / 1e9;
    let peak_cpu = measure_peak_gflops_per_cpu_second();
    let (median, reps) = (t.median, t.runs);
    let gflops = flops / median / 1e9;
    let best = flops / t.best / 1e9;
    let peak = measure_peak_gflops(threads).max(peak_before);
    let load = timing::load_average();
    // bf16 work against the bf16 peak too (a pass mixes bf16 products and f32 work).
    let bf16_peaks = if precision == DensePrecision::Bf16 {
        let wall = measure_bf16_peak_gflops(threads).unwrap_or(f64::NAN);
        let cpu = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
        format!(
            "; against the bf16 peak {wall:.1} GFLOP/s: {:.2}, per CPU-second {:.2} of one \
             core's {cpu:.1}",
            gflops / wall,
            per_cpu / cpu
        )
    } else {
        String::new()
    };
    println!(
        "vit_b8_224_forward_{precision:?}_{threads}t: {:.3} s median of {reps} ({:.1} GFLOP per pass): \
         {gflops:.1} GFLOP/s (best {best:.1}) = {:.2} of the measured peak {peak:.1} GFLOP/s \
         (best pass: {:.2}); per CPU-second {per_cpu:.1} GFLOP = {:.2} of one core's \
         {peak_cpu:.1}{bf16_peaks}; load average {}",
        median,
        flops / 1e9,
        gflops / peak,
        best / peak,
        per_cpu / peak_cpu,
        load
    );
    if precision == DensePrecision::F32 {
        assert_eq!(out, f32_out, "packed f32 weights changed the features");
    } else {
        let ref_max = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = out
            .iter()
            .zip(&f32_out)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // A digest of the bits, to compare builds that should give the same features.
        let digest = out.iter().fold(0u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
        });
        println!(
            "  bf16 vs f32 features: max |Δ| {err:.3e} = {:.2e} of max |f32| {ref_max:.3}; \
             digest of the bf16 features {digest:016x}",
            err / ref_max
        );
    }
}

/// Pass by pass (`MIAD_BENCH_PARTS=passes`, `MIAD_BENCH_PASSES` passes, default 12): the
/// wall and CPU time of each bf16 pass, and the two-thread bf16 peak measured right after
/// it, to tell a slow pass of ours from a slow machine.
fn pass_by_pass(threads: usize, pool: &Pool) {
    let (cfg, tensors, input) = vit_model_and_input();
    let w = VitWeights::load(&tensors, &cfg).expect("random weights match the configuration");
    let mut scratch = vec![0f32; vit_scratch_len(&cfg, threads)];
    let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
    let Some(blocks) = w.packed(&cfg, DensePrecision::Bf16) else {
        println!("no AVX512-BF16 on this CPU: no bf16 forward pass");
        return;
    };
    let flops = vit_flops(&cfg);
    for pass in 0..timing::env_usize("MIAD_BENCH_PASSES", 12) {
        let (cpu0, t0) = (process_cpu_seconds(), std::time::Instant::now());
        vit_forward_with(pool, &cfg, &w, &blocks, &input, &mut out, &mut scratch)
            .expect("forward pass");
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_seconds() - cpu0);
        let peak = measure_bf16_peak_gflops(threads).unwrap_or(f64::NAN);
        println!(
            "pass {pass}: {:.1} ms wall, {:.1} ms CPU; {:.2} of the bf16 peak {peak:.0} GFLOP/s \
             measured after it",
            wall * 1e3,
            cpu * 1e3,
            flops / wall / 1e9 / peak
        );
    }
    // The 12 blocks of a pass against block 0 run 12 times (its 14 MB of weights stay in
    // L3): what streaming every block's weights from memory costs.
    let shape = miad::cpu::vit::block_shape(&cfg);
    let d = cfg.dim as usize;
    let mut x = random(cfg.tokens() * d, 5, 1.0);
    let mut block_scratch = vec![0f32; block_scratch_len(&shape, threads)];
    for round in 0..4 {
        for (what, same) in [("12 blocks", false), ("block 0 x12", true)] {
            let (cpu0, t0) = (process_cpu_seconds(), std::time::Instant::now());
            for i in 0..12 {
                let b = if same { 0 } else { i };
                block_forward_with(
                    pool,
                    &shape,
                    &w.blocks[b],
                    Some(&blocks[b]),
                    &mut x,
                    &mut block_scratch,
                );
                x.iter_mut().for_each(|v| *v = v.clamp(-4.0, 4.0));
            }
            println!(
                "round {round} {what}: {:.1} ms wall, {:.1} ms CPU",
                t0.elapsed().as_secs_f64() * 1e3,
                (process_cpu_seconds() - cpu0) * 1e3
            );
        }
    }
}

/// Median wall seconds of `f`, and CPU seconds per run (all threads; the warm-up run
/// counted in the average).
fn timed_cpu(f: impl FnMut()) -> (f64, f64) {
    let cpu0 = process_cpu_seconds();
    let t = timing::time_runs(7, f);
    (
        t.median,
        (process_cpu_seconds() - cpu0) / (t.runs + 1) as f64,
    )
}

fn gemm_shapes(threads: usize, pool: &Pool) {
    // (what, m, k, n): ViT-B/8 (785 tokens), Point-MAE (1025 tokens of 384), UFF-like.
    let shapes = [
        ("vit qkv", 785, 768, 2304),
        ("vit proj", 785, 768, 768),
        ("vit fc1", 785, 768, 3072),
        ("vit fc2", 785, 3072, 768),
        ("point qkv", 1025, 384, 1152),
        ("point fc1", 1025, 384, 1536),
        ("point fc2", 1025, 1536, 384),
    ];
    // Rates per CPU-second (all threads) against one core's peak per CPU-second, measured
    // after each shape: robust to other load on the machine.
    let rate = |flops: f64, f: &mut dyn FnMut()| {
        let cpu = timed_cpu(f).1;
        let g = flops / cpu / 1e9;
        format!(
            "{g:.1} GFLOP per CPU-second = {:.2}",
            g / measure_peak_gflops_per_cpu_second()
        )
    };
    for (what, m, k, n) in shapes {
        let flops = 2.0 * (m * k * n) as f64;
        let a = random(m * k, 3, 1.0);
        let w = random(n * k, 4, 0.05);
        let mut out = vec![0f32; m * n];
        let unpacked = rate(flops, &mut || {
            let (a, w) = (Mat::new(&a, m, k), Mat::new(&w, n, k));
            linear(pool, a, w, None, &mut out, n, Epilogue::None)
        });
        let packed = PackedF32::new(Mat::new(&w, n, k));
        let packed = rate(flops, &mut || {
            let a = Mat::new(&a, m, k);
            linear_packed(pool, a, &packed, None, &mut out, n, Epilogue::None)
        });
        let bf16 = PackedBf16::new(Mat::new(&w, n, k)).map(|packed| {
            let cpu = timed_cpu(&mut || {
                let a = Mat::new(&a, m, k);
                linear_bf16(pool, a, &packed, None, &mut out, n, Epilogue::None)
            })
            .1;
            let g = flops / cpu / 1e9;
            let f32_peak = measure_peak_gflops_per_cpu_second();
            let bf16_peak = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
            format!(
                "; bf16 {g:.1} GFLOP per CPU-second = {:.2} of the f32 peak, {:.2} of the bf16 \
                 peak {bf16_peak:.1}",
                g / f32_peak,
                g / bf16_peak
            )
        });
        println!(
            "gemm {what} {m}x{k}x{n}, {threads}t: weight packed per call {unpacked}; \
             packed once {packed}{}",
            bf16.unwrap_or_default()
        );
    }
}

/// The bf16 block's parts after its norm, as `transformer::block_forward_with` runs them:
/// each product reads its activations in bf16 where they lie (the norm's rows,
/// attention's bf16 output, fc1's bf16 hidden), and fc1 writes only its bf16 output.
fn bf16_block_parts(
    pool: &Pool,
    parts: &mut Vec<(&str, f64)>,
    (qkv_w, proj_w, fc1_w, fc2_w): (&PackedBf16, &PackedBf16, &PackedBf16, &PackedBf16),
    xn16: &[u16],
    qkv_f32: &[f32],
) {
    use miad::cpu::gemm_bf16::{linear_bf16_rows, linear_bf16_rows_rounded, Bf16Mat, Rows};
    let (t, d, heads, hid) = (785, 768, 12, 3072);
    // The bf16 path's hidden rows, one cache line wider (as `transformer` lays them out).
    let hs = hid + 16;
    let run = |f: &mut dyn FnMut()| timing::time_runs(7, f).median;
    let bias = random(3 * d, 40, 0.05);
    let mut qkv = qkv_f32.to_vec();
    let (mut att, mut att16) = (vec![0f32; t * d], vec![0u16; t * d]);
    let mut acc = random(t * d, 41, 1.0);
    let mut hidden16 = vec![0u16; t * hs];
    let mut scratch = vec![0f32; attn_scratch_len(t, d, heads, pool.threads())];
    let rows = |data, cols, stride| {
        Rows::Bf16(Bf16Mat {
            data,
            rows: t,
            cols,
            stride,
        })
    };
    let xn = rows(xn16, d, d);
    let none = Epilogue::None;
    let qkv_time =
        run(&mut || linear_bf16_rows(pool, xn, qkv_w, Some(&bias), &mut qkv, 3 * d, none, None));
    parts.push(("qkv gemm", qkv_time));
    let bf16 = DensePrecision::Bf16;
    let attention_time = run(&mut || {
        let out16 = Some(&mut att16[..]);
        attention(pool, t, d, heads, bf16, &qkv, &mut att, out16, &mut scratch)
    });
    parts.push(("attention", attention_time));
    let (proj_b, accumulate) = (&bias[..d], Epilogue::Accumulate);
    let proj_time = run(&mut || {
        let a = rows(&att16, d, d);
        linear_bf16_rows(pool, a, proj_w, Some(proj_b), &mut acc, d, accumulate, None)
    });
    parts.push(("proj gemm", proj_time));
    let fc1_b = random(hid, 42, 0.05);
    let mut fc1 = |epi| {
        let out16 = (&mut hidden16[..], hs);
        linear_bf16_rows_rounded(pool, xn, fc1_w, Some(&fc1_b), epi, out16)
    };
    let fc1_plain = run(&mut || fc1(Epilogue::None));
    let fc1_gelu = run(&mut || fc1(Epilogue::Gelu));
    parts.push(("fc1 gemm (its bf16 output)", fc1_plain));
    parts.push(("gelu (fc1 with − without)", fc1_gelu - fc1_plain));
    let fc2_time = run(&mut || {
        let a = rows(&hidden16, hid, hs);
        linear_bf16_rows(pool, a, fc2_w, Some(proj_b), &mut acc, d, accumulate, None)
    });
    parts.push(("fc2 gemm", fc2_time));
}

/// One ViT-B/8 block's parts, the dense layers packed in `precision` as the engine runs
/// them (bf16: attention's products in bf16 too); with f32, the parts of attention on
/// one thread.
fn block_breakdown(threads: usize, pool: &Pool, precision: DensePrecision) {
    let (t, d, heads, hid) = (785, 768, 12, 3072);
    let x = random(t * d, 5, 1.0);
    let mut xn = vec![0f32; t * d];
    let (g, b) = (random(d, 6, 0.1), random(d, 7, 0.1));
    let qkv_w = random(3 * d * d, 8, 0.05);
    let qkv_b = random(3 * d, 9, 0.05);
    let proj_w = random(d * d, 10, 0.05);
    let fc1_w = random(hid * d, 11, 0.05);
    let fc1_b = random(hid, 12, 0.05);
    let fc2_w = random(d * hid, 13, 0.05);
    let mut qkv = vec![0f32; t * 3 * d];
    let mut att = vec![0f32; t * d];
    let mut hidden = vec![0f32; t * hid];
    let mut acc = x.clone();
    let mut attn_scratch = vec![0f32; attn_scratch_len(t, d, heads, threads)];
    // Packed once, as the engine runs them.
    let pack = |w: &[f32], n: usize, k: usize| PackedWeight::new(Mat::new(w, n, k), precision);
    let (Some(qkv_p), Some(proj_p), Some(fc1_p), Some(fc2_p)) = (
        pack(&qkv_w, 3 * d, d),
        pack(&proj_w, d, d),
        pack(&fc1_w, hid, d),
        pack(&fc2_w, d, hid),
    ) else {
        println!("no AVX512-BF16 on this CPU: no bf16 block");
        return;
    };
    let mut parts: Vec<(&str, f64)> = Vec::new();
    let run = |f: &mut dyn FnMut()| timing::time_runs(7, f).median;
    // As the block runs them: the bf16 path's LayerNorm sums in lanes and rounds its
    // output to bf16 too.
    let mut xn16 = vec![0u16; t * d];
    let mut norm = |xn: &mut [f32]| match precision {
        DensePrecision::Bf16 => layer_norm_for_bf16(pool, t, d, &x, xn, &mut xn16, &g, &b, 1e-6),
        DensePrecision::F32 => layer_norm(pool, t, d, &x, xn, &g, &b, 1e-6),
    };
    parts.push(("layer_norm x2", 2.0 * run(&mut || norm(&mut xn))));
    if let (
        PackedWeight::Bf16(qkv16),
        PackedWeight::Bf16(proj16),
        PackedWeight::Bf16(fc1_16),
        PackedWeight::Bf16(fc2_16),
    ) = (&qkv_p, &proj_p, &fc1_p, &fc2_p)
    {
        bf16_block_parts(
            pool,
            &mut parts,
            (qkv16, proj16, fc1_16, fc2_16),
            &xn16,
            &qkv,
        );
        // The attention's input for its parts below: the qkv product's output.
        let xn = Rows::Bf16(Bf16Mat {
            data: &xn16,
            rows: t,
            cols: d,
            stride: d,
        });
        linear_bf16_rows(
            pool,
            xn,
            qkv16,
            Some(&qkv_b),
            &mut qkv,
            3 * d,
            Epilogue::None,
            None,
        );
    } else {
        // `dense` through the packed weight (the unpacked `Mat` is not read).
        let linear =
            |a: &[f32], k: usize, w: &PackedWeight, n: usize, bias, out: &mut [f32], epi| {
                let unused = Mat::new(&[], 0, k);
                dense(pool, Mat::new(a, t, k), unused, Some(w), bias, out, n, epi)
            };
        parts.push((
            "qkv gemm",
            run(&mut || {
                linear(
                    &xn,
                    d,
                    &qkv_p,
                    3 * d,
                    Some(&qkv_b),
                    &mut qkv,
                    Epilogue::None,
                )
            }),
        ));
        parts.push((
            "attention",
            run(&mut || {
                attention(
                    pool,
                    t,
                    d,
                    heads,
                    precision,
                    &qkv,
                    &mut att,
                    None,
                    &mut attn_scratch,
                )
            }),
        ));
        parts.push((
            "proj gemm",
            run(&mut || {
                linear(
                    &att,
                    d,
                    &proj_p,
                    d,
                    Some(&b),
                    &mut acc,
                    Epilogue::Accumulate,
                )
            }),
        ));
        let mut fc1 = |epi: Epilogue| linear(&xn, d, &fc1_p, hid, Some(&fc1_b), &mut hidden, epi);
        let fc1_plain = run(&mut || fc1(Epilogue::None));
        let fc1_gelu = run(&mut || fc1(Epilogue::Gelu));
        parts.push(("fc1 gemm", fc1_plain));
        parts.push(("gelu (fc1 with − without)", fc1_gelu - fc1_plain));
        parts.push((
            "fc2 gemm",
            run(&mut || {
                linear(
                    &hidden,
                    hid,
                    &fc2_p,
                    d,
                    Some(&b),
                    &mut acc,
                    Epilogue::Accumulate,
                )
            }),
        ));
    }
    if precision == DensePrecision::F32 {
        // CPU time of this thread alone (robust to the machine's load); the hidden is
        // refilled from fc1 before each (GELU of GELU would shrink the inputs).
        let cpu = |f: &mut dyn FnMut()| timed_cpu(f).1;
        let fresh = hidden.clone();
        let mut gelu_timed = |f: fn(&mut [f32])| {
            cpu(&mut || {
                hidden.copy_from_slice(&fresh);
                f(&mut hidden)
            })
        };
        let gelu_alone = gelu_timed(miad::cpu::vmath::gelu_row);
        let gelu_bf16 = gelu_timed(miad::cpu::vmath::gelu_row_for_bf16);
        let gelu_scalar = gelu_timed(|h| h.iter_mut().for_each(|v| *v = miad::cpu::gemm::gelu(*v)));
        let copy_alone = gelu_timed(|_| ());
        let one = Pool::new(1);
        let ln_f32 = cpu(&mut || layer_norm(&one, t, d, &x, &mut xn, &g, &b, 1e-6));
        let mut xn16 = vec![0u16; t * d];
        let ln_bf16 =
            cpu(&mut || layer_norm_for_bf16(&one, t, d, &x, &mut xn, &mut xn16, &g, &b, 1e-6));
        println!(
            "layer_norm of {t}x{d}, one thread, CPU time: f32 path {:.2} ms, bf16 path {:.2} ms",
            ln_f32 * 1e3,
            ln_bf16 * 1e3
        );
        println!(
            "gelu over the {t}x{hid} hidden, one thread, CPU time less the refill ({:.2} ms): \
             vectorised {:.2} ms, the bf16 path's {:.2} ms, scalar erff {:.2} ms",
            copy_alone * 1e3,
            (gelu_alone - copy_alone) * 1e3,
            (gelu_bf16 - copy_alone) * 1e3,
            (gelu_scalar - copy_alone) * 1e3
        );
    }
    attention_parts(&qkv, t, d, heads, precision);
    let total: f64 = parts.iter().map(|p| p.1).sum();
    println!(
        "one ViT-B/8 block {precision:?}, {threads}t: {:.2} ms in all",
        total * 1e3
    );
    for (what, secs) in parts {
        println!("  {what}: {:.2} ms = {:.2}", secs * 1e3, secs / total);
    }
}

/// The micro-kernel alone on operands that stay in L1 (one panel of `a`, one strip of
/// `b`, `kc` = 256), CPU time against one core's peak: the ceiling of every product.
fn kernel_in_l1() {
    use miad::cpu::gemm::{Kernel, Start};
    let ker = Kernel::best();
    let kc = 256;
    let a = random(ker.mr * kc, 20, 1.0);
    let b = random(kc * ker.nr, 21, 1.0);
    let mut c = vec![0f32; ker.mr * ker.nr];
    let calls = 20_000;
    let (_, cpu) = timed_cpu(|| {
        for _ in 0..calls {
            // SAFETY: `a` holds mr rows of kc, `b` one strip of kc × nr, `c` the tile.
            unsafe {
                ker.run(
                    kc,
                    a.as_ptr(),
                    kc,
                    b.as_ptr(),
                    c.as_mut_ptr(),
                    ker.nr,
                    Start::Zero,
                )
            };
            std::hint::black_box(&mut c);
        }
    });
    let g = 2.0 * (ker.mr * ker.nr * kc * calls) as f64 / cpu / 1e9;
    let peak = measure_peak_gflops_per_cpu_second();
    println!(
        "micro-kernel {}x{} ({:?}) in L1, one thread: {g:.1} GFLOP per CPU-second = {:.2} of one core's {peak:.1}",
        ker.mr,
        ker.nr,
        ker.isa,
        g / peak
    );
}

/// The bf16 micro-kernel (12 × 32, `vdpbf16ps`) alone on operands in L1 (`kc` = 512
/// inner elements), CPU time against one core's bf16 peak: the ceiling of the bf16 path.
fn kernel_bf16_in_l1() {
    use miad::cpu::gemm::Start;
    use miad::cpu::gemm_bf16::{available, micro_kernel, TILE_COLS, TILE_ROWS};
    if !available() {
        println!("no AVX512-BF16 on this CPU: no bf16 micro-kernel");
        return;
    }
    let steps = 256;
    let a: Vec<u32> = (0..TILE_ROWS * steps)
        .map(|i| 0x3f80_3f80 + i as u32 % 7)
        .collect();
    let b: Vec<u16> = (0..steps * 2 * TILE_COLS)
        .map(|i| 0x3f80 + (i % 5) as u16)
        .collect();
    let mut c = vec![0f32; TILE_ROWS * TILE_COLS];
    let calls = 20_000;
    let (_, cpu) = timed_cpu(|| {
        for _ in 0..calls {
            // SAFETY: AVX512-BF16 checked; `a` holds 12 rows of `steps` pairs, `b` one
            // strip of `steps` pairs × 32, `c` the tile.
            unsafe {
                micro_kernel(
                    steps,
                    a.as_ptr(),
                    steps,
                    b.as_ptr(),
                    c.as_mut_ptr(),
                    TILE_COLS,
                    Start::Zero,
                )
            };
            std::hint::black_box(&mut c);
        }
    });
    let g = 2.0 * (TILE_ROWS * TILE_COLS * 2 * steps * calls) as f64 / cpu / 1e9;
    let peak = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
    println!(
        "bf16 micro-kernel {TILE_ROWS}x{TILE_COLS} in L1, one thread: {g:.1} GFLOP per CPU-second = {:.2} of one core's bf16 peak {peak:.1}",
        g / peak
    );
}

/// The bf16 micro-kernel walking a GEMM's loops on one thread (`MIAD_BENCH_PARTS=walk`),
/// each step closer to `gemm_bf16::region` on qkv's shape (a task of 396 rows × 256
/// columns, one `k` block of 384): where it loses its in-L1 rate.
fn kernel_walk() {
    use miad::cpu::gemm::Start;
    use miad::cpu::gemm_bf16::{available, micro_kernel, TILE_COLS, TILE_ROWS};
    if !available() {
        return;
    }
    let (steps, strips, panels) = (192, 8, 33);
    let strip_len = steps * 2 * TILE_COLS;
    let b: Vec<u16> = (0..strips * strip_len)
        .map(|i| 0x3f80 + (i % 5) as u16)
        .collect();
    // Rows of 768 bf16 (384 pairs), as the norm's rows lie.
    let lda_rows = 384;
    let a: Vec<u32> = (0..panels * TILE_ROWS * lda_rows)
        .map(|i| 0x3f80_3f80 + i as u32 % 7)
        .collect();
    let ldc = strips * TILE_COLS;
    let mut c = vec![0f32; panels * TILE_ROWS * ldc];
    let peak = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
    // 48 MB of weight blocks: more than L3 holds.
    let fresh: Vec<u16> = (0..256 * strips * strip_len)
        .map(|i| 0x3f80 + (i % 5) as u16)
        .collect();
    let mut next_block = 0;
    // (what, one strip only, one panel only, start, each pass over another weight block)
    let variants = [
        ("one strip, one panel (L1)", true, true, Start::Zero, false),
        (
            "8 strips (B from L2), one panel",
            false,
            true,
            Start::Zero,
            false,
        ),
        (
            "8 strips, 33 panels in place",
            false,
            false,
            Start::Zero,
            false,
        ),
        (
            "8 strips, 33 panels, C read",
            false,
            false,
            Start::FromC,
            false,
        ),
        (
            "as above, weights from memory",
            false,
            false,
            Start::FromC,
            true,
        ),
    ];
    for round in 0..2 {
        for (what, one_strip, one_panel, start, from_memory) in variants {
            let reps = 40;
            let (_, cpu) = timed_cpu(|| {
                for _ in 0..reps {
                    let b = if from_memory {
                        next_block = (next_block + 1) % 256;
                        &fresh[next_block * strips * strip_len..]
                    } else {
                        &b[..]
                    };
                    for p in 0..panels {
                        let p = if one_panel { 0 } else { p };
                        for s in 0..strips {
                            let bs = if one_strip { 0 } else { s };
                            // SAFETY: AVX512-BF16 checked; `a` holds the panel's 12 rows
                            // of `steps` pairs `lda_rows` apart, `b` the strip, `c` the tile.
                            unsafe {
                                micro_kernel(
                                    steps,
                                    a[p * TILE_ROWS * lda_rows..].as_ptr(),
                                    lda_rows,
                                    b[bs * strip_len..].as_ptr(),
                                    c[p * TILE_ROWS * ldc + s * TILE_COLS..].as_mut_ptr(),
                                    ldc,
                                    start,
                                )
                            };
                        }
                    }
                }
                std::hint::black_box(&mut c);
            });
            let flops = 2.0 * (TILE_ROWS * TILE_COLS * 2 * steps * strips * panels * reps) as f64;
            println!(
                "walk round {round}: {what}: {:.3} of one core's bf16 peak",
                flops / cpu / 1e9 / peak
            );
        }
    }
}

/// Where attention's time goes, on one thread: packing each head's keys and values, the
/// score products, softmax's exponentials, the products with V (the steps of
/// `transformer::attention`, each over every head and query block), against the whole
/// attention on a pool of one thread; in `precision` (bf16: the bf16 products).
fn attention_parts(qkv: &[f32], t: usize, d: usize, heads: usize, precision: DensePrecision) {
    use miad::cpu::gemm::{pack_rhs_whole, packed_rhs_len, product_seq_packed, Kernel, Operand};
    use miad::cpu::gemm_bf16::{
        pack_scaled_into, packed_len, product_seq, round_into, Bf16Mat, Rows,
    };
    use miad::cpu::transformer::QUERY_BLOCK;
    let one = Pool::new(1);
    let (hd, stride, ker) = (d / heads, 3 * d, Kernel::best());
    let bf16 = precision == DensePrecision::Bf16;
    let mut out = vec![0f32; t * d];
    let mut scratch = vec![0f32; attn_scratch_len(t, d, heads, 1)];
    // CPU seconds per run (this thread alone is busy): robust to the machine's load.
    let run = |f: &mut dyn FnMut()| timed_cpu(f).1;
    let whole = run(&mut || {
        attention(
            &one,
            t,
            d,
            heads,
            precision,
            qkv,
            &mut out,
            None,
            &mut scratch,
        )
    });
    let head = |which: usize, h: usize| Mat {
        data: &qkv[which * d + h * hd..],
        rows: t,
        cols: hd,
        stride,
    };
    // Each head's packed keys and values: f32 (as floats), bf16 (as u16).
    let (k_len, v_len) = (packed_rhs_len(hd, t), packed_rhs_len(t, hd));
    let (k16_len, v16_len) = (packed_len(t, hd), packed_len(hd, t));
    let mut k_packed = vec![0f32; heads * k_len];
    let mut v_packed = vec![0f32; heads * v_len];
    let mut k16 = vec![0u16; heads * k16_len];
    let mut v16 = vec![0u16; heads * v16_len];
    let scale = 1.0 / (hd as f32).sqrt();
    let pack = run(&mut || {
        for h in 0..heads {
            if bf16 {
                let k = &mut k16[h * k16_len..(h + 1) * k16_len];
                pack_scaled_into(Operand::plain(head(1, h)), scale, k);
                let v = &mut v16[h * v16_len..(h + 1) * v16_len];
                pack_scaled_into(Operand::transposed(head(2, h)), 1.0, v);
            } else {
                let k = &mut k_packed[h * k_len..(h + 1) * k_len];
                pack_rhs_whole(ker, Operand::transposed(head(1, h)), scale, k);
                let v = &mut v_packed[h * v_len..(h + 1) * v_len];
                pack_rhs_whole(ker, Operand::plain(head(2, h)), 1.0, v);
            }
        }
    });
    let blocks = t.div_ceil(QUERY_BLOCK);
    // One query block's scores, reused by every (head, block) as attention's worker does.
    let mut scores = vec![0f32; QUERY_BLOCK * t];
    let mut probs16 = vec![0u16; QUERY_BLOCK * t];
    let block_rows = |b: usize| QUERY_BLOCK.min(t - b * QUERY_BLOCK);
    let products = run(&mut || {
        for h in 0..heads {
            for b in 0..blocks {
                let q = Mat {
                    data: &qkv[b * QUERY_BLOCK * stride + h * hd..],
                    rows: block_rows(b),
                    cols: hd,
                    stride,
                };
                if bf16 {
                    product_seq(Rows::F32(q), &k16[h * k16_len..], t, &mut scores, t);
                } else {
                    let k = &k_packed[h * k_len..];
                    product_seq_packed(ker, &mut scores, t, q, k, t, false);
                }
            }
        }
    });
    let exp = run(&mut || {
        for _ in 0..heads * blocks {
            for (row, row16) in scores.chunks_exact_mut(t).zip(probs16.chunks_exact_mut(t)) {
                std::hint::black_box(if bf16 {
                    // As attention runs it: the row rounded to bf16 once.
                    let sum = miad::cpu::vmath::exp_shifted_row_for_bf16(row);
                    round_into(row, row16);
                    sum
                } else {
                    miad::cpu::vmath::exp_shifted_row(row)
                });
            }
        }
    });
    let pv = run(&mut || {
        for h in 0..heads {
            for b in 0..blocks {
                let rows = block_rows(b);
                let p = Mat::new(&scores[..rows * t], rows, t);
                let dst = &mut out[b * QUERY_BLOCK * d + h * hd..];
                if bf16 {
                    let p16 = Bf16Mat {
                        data: &probs16[..rows * t],
                        rows,
                        cols: t,
                        stride: t,
                    };
                    product_seq(Rows::Bf16(p16), &v16[h * v16_len..], hd, dst, d);
                } else {
                    product_seq_packed(ker, dst, d, p, &v_packed[h * v_len..], hd, false);
                }
            }
        }
    });
    let flops = 2.0 * t as f64 * t as f64 * d as f64;
    let (peak, which) = if bf16 {
        let peak = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
        (peak, "bf16 peak")
    } else {
        (measure_peak_gflops_per_cpu_second(), "peak")
    };
    println!(
        "attention {precision:?} {t} tokens x {heads} heads, one thread, CPU time: {:.2} ms; \
         pack K, V {:.2} ms; Q·Kᵀ {:.2} ms = {:.2} of one core's {which} {peak:.1}; exp rows \
         {:.2} ms; P·V {:.2} ms = {:.2}",
        whole * 1e3,
        pack * 1e3,
        products * 1e3,
        flops / products / 1e9 / peak,
        exp * 1e3,
        pv * 1e3,
        flops / pv / 1e9 / peak
    );
}

/// Point-MAE (its 12 blocks alone, then the whole encoder: group encoder, position
/// embedding and blocks) and UFF at M3DM sizes, random weights, packed once as the engine
/// runs them: each as a fraction of the FMA peak measured right before it, f32 and bf16.
fn point_and_fusion(threads: usize, pool: &Pool) {
    let model = ModelConfig {
        vit: None,
        radar: None,
        ..ModelConfig::m3dm()
    };
    let tensors = random_model(&model, 3);
    let cfg = PointConfig::m3dm();
    let w = PointMaeWeights::load(&tensors, &cfg).expect("random weights match");
    let (m, s) = (cfg.num_groups as usize, cfg.group_size as usize);
    let n = 50_000;
    let points = random(3 * n, 14, 0.05);
    let mut rng = Rng::new(15);
    let centers: Vec<u32> = (0..m).map(|i| (i * n / m) as u32).collect();
    let groups: Vec<u32> = (0..m * s)
        .map(|_| (rng.uniform() * n as f32) as u32 % n as u32)
        .collect();
    let mut out = vec![0f32; m * cfg.feature_dim()];
    let mut scratch = vec![0f32; point_mae_scratch_len(&cfg, threads)];
    let shape = point_block_shape(&cfg);
    let mut x = random(m * shape.dim, 16, 1.0);
    let mut block_scratch = vec![0f32; block_scratch_len(&shape, threads)];
    let fcfg = model.fusion.clone().expect("m3dm has UFF");
    let fw = FusionWeights::load(&tensors, &fcfg).expect("random weights match");
    let (rg, xg) = (28usize, 56usize);
    let rgb = random(rg * rg * fcfg.rgb_dim as usize, 17, 1.0);
    let xyz = random(xg * xg * fcfg.xyz_dim as usize, 18, 1.0);
    let mut fused = vec![0f32; xg * xg * fcfg.fused_dim()];
    let mut fscratch = vec![0f32; fusion_scratch_len(&fcfg, rg, xg)];
    let branch_flops = |rows: usize, d: u32| 4.0 * rows as f64 * (d * d * fcfg.mlp_ratio) as f64;
    let fusion_flops = branch_flops(xg * xg, fcfg.xyz_dim) + branch_flops(rg * rg, fcfg.rgb_dim);
    // (wall, cpu) seconds; the wall rate against the peak of `threads` threads measured
    // right before, the rate per CPU-second against one core's.
    let report = |what: &str, flops: f64, (secs, cpu): (f64, f64), peak: f64| {
        let g = flops / secs / 1e9;
        let peak_cpu = measure_peak_gflops_per_cpu_second();
        println!(
            "{what}, {threads}t: {:.2} ms, {g:.1} GFLOP/s = {:.2} of the peak {peak:.1}; \
             per CPU-second {:.1} GFLOP = {:.2} of one core's {peak_cpu:.1} (load {})",
            secs * 1e3,
            g / peak,
            flops / cpu / 1e9,
            flops / cpu / 1e9 / peak_cpu,
            timing::load_average()
        );
    };
    let timed = |f: &mut dyn FnMut()| {
        let peak = measure_peak_gflops(threads);
        (timed_cpu(f), peak)
    };
    // `None`: the weights packed in every product (as before they were packed once).
    for precision in [None, Some(DensePrecision::F32), Some(DensePrecision::Bf16)] {
        let (packed, fpacked) = match precision {
            None => (None, None),
            Some(p) => match PointMaePacked::new(&cfg, &w, p) {
                Some(packed) => (Some(packed), FusionPacked::new(&fw, p)),
                None => {
                    println!("no AVX512-BF16 on this CPU: no bf16 point encoder");
                    continue;
                }
            },
        };
        let precision = precision.map_or("F32 unpacked".to_string(), |p| format!("{p:?}"));
        let (secs, peak) = timed(&mut || {
            for (i, bw) in w.blocks.iter().enumerate() {
                let bp = packed.as_ref().map(|p| &p.blocks[i]);
                block_forward_with(pool, &shape, bw, bp, &mut x, &mut block_scratch);
            }
        });
        let blocks_flops = cfg.depth as f64 * shape.flops();
        report(
            &format!("point-mae 12 blocks {precision}"),
            blocks_flops,
            secs,
            peak,
        );
        let (whole, peak) = timed(&mut || {
            point_mae_forward_with(
                pool,
                &cfg,
                &w,
                packed.as_ref(),
                &points,
                n,
                &centers,
                &groups,
                &mut out,
                &mut scratch,
            )
        });
        let all = point_mae_flops(&cfg);
        report(
            &format!("point-mae encoder, all {precision}"),
            all,
            whole,
            peak,
        );
        report(
            &format!("point-mae group encoder + position embedding {precision} (all − blocks)"),
            all - blocks_flops,
            (whole.0 - secs.0, whole.1 - secs.1),
            peak,
        );
        let (secs, peak) = timed(&mut || {
            fuse_with(
                pool,
                &fw,
                fpacked.as_ref(),
                &rgb,
                rg,
                &xyz,
                xg,
                &mut fused,
                &mut fscratch,
            )
        });
        report(&format!("uff 56x56 {precision}"), fusion_flops, secs, peak);
    }
}

/// The bf16 dense layers of ViT-B/8 blocks as the block runs them (qkv and fc1 from the
/// norm's bf16 rows read in place, proj from f32 rows accumulating into the residual, fc1
/// with GELU also writing its output in bf16, fc2 from those rows accumulating; fc1 also
/// without its epilogue, for the epilogue's cost), through the weights of 12 blocks in
/// turn as a pass meets them (each block's weights arrive from memory, not from cache):
/// GFLOP per CPU-second against one core's bf16 peak, each shape and all together;
/// `MIAD_BENCH_ROUNDS` rounds (default 2).
fn bf16_dense(threads: usize, pool: &Pool) {
    use miad::cpu::gemm_bf16::{
        linear_bf16_rows, linear_bf16_rows_rounded, round_into, Bf16Mat, Rows,
    };
    let (t, d, hid, blocks) = (785, 768, 3072, 12);
    // The bf16 path's hidden rows, one cache line wider (as `transformer` lays them out).
    let hs = hid + 16;
    let mut xn16 = vec![0u16; t * d];
    round_into(&random(t * d, 30, 1.0), &mut xn16);
    let att = random(t * d, 31, 1.0);
    let mut acc = random(t * d, 32, 1.0);
    let mut qkv16 = vec![0u16; t * 3 * d];
    let mut qkv = vec![0f32; t * 3 * d];
    let mut hidden = vec![0f32; t * hs];
    let mut hidden16 = vec![0u16; t * hs];
    let pack = |n: usize, k: usize, seed: u64| {
        let w = random(n * k, seed, 0.05);
        (0..blocks)
            .map(|_| PackedBf16::new(Mat::new(&w, n, k)))
            .collect::<Option<Vec<_>>>()
    };
    let (Some(qkv_w), Some(proj_w), Some(fc1_w), Some(fc2_w)) = (
        pack(3 * d, d, 33),
        pack(d, d, 34),
        pack(hid, d, 35),
        pack(d, hid, 36),
    ) else {
        println!("no AVX512-BF16 on this CPU: no bf16 dense layers");
        return;
    };
    let (qkv_b, fc1_b, b) = (
        random(3 * d, 37, 0.05),
        random(hid, 38, 0.05),
        random(d, 39, 0.05),
    );
    let xn = Rows::Bf16(Bf16Mat {
        data: &xn16,
        rows: t,
        cols: d,
        stride: d,
    });
    let flops = |n: usize, k: usize| 2.0 * (t * n * k * blocks) as f64;
    for round in 0..timing::env_usize("MIAD_BENCH_ROUNDS", 2) {
        // (name, GFLOP per CPU-second) of each shape; all together.
        let mut rates: Vec<(&str, f64)> = Vec::new();
        let (mut all_flops, mut all_cpu) = (0.0, 0.0);
        let mut shape = |what: &'static str, fl: f64, f: &mut dyn FnMut(usize)| {
            let cpu = timed_cpu(|| (0..blocks).for_each(&mut *f)).1;
            rates.push((what, fl / cpu / 1e9));
            all_flops += fl;
            all_cpu += cpu;
        };
        shape("qkv", flops(3 * d, d), &mut |i| {
            let (bias, out) = (Some(&qkv_b[..]), &mut qkv[..]);
            linear_bf16_rows(pool, xn, &qkv_w[i], bias, out, 3 * d, Epilogue::None, None)
        });
        shape("qkv rounded only", flops(3 * d, d), &mut |i| {
            let out16 = (&mut qkv16[..], 3 * d);
            linear_bf16_rows_rounded(pool, xn, &qkv_w[i], Some(&qkv_b), Epilogue::None, out16)
        });
        shape("proj", flops(d, d), &mut |i| {
            let a = Rows::F32(Mat::new(&att, t, d));
            let epi = Epilogue::Accumulate;
            linear_bf16_rows(pool, a, &proj_w[i], Some(&b), &mut acc, d, epi, None)
        });
        shape("fc1", flops(hid, d), &mut |i| {
            let (bias, out16) = (Some(&fc1_b[..]), (&mut hidden16[..], hs));
            linear_bf16_rows_rounded(pool, xn, &fc1_w[i], bias, Epilogue::Gelu, out16)
        });
        // fc1 as it ran before: its f32 output written too, and rounded from there.
        shape("fc1 with f32 output", flops(hid, d), &mut |i| {
            let (bias, out16) = (Some(&fc1_b[..]), Some((&mut hidden16[..], hs)));
            let epi = Epilogue::Gelu;
            linear_bf16_rows(pool, xn, &fc1_w[i], bias, &mut hidden, hs, epi, out16)
        });
        shape("fc1 without epilogue", flops(hid, d), &mut |i| {
            let (bias, epi) = (Some(&fc1_b[..]), Epilogue::None);
            linear_bf16_rows(pool, xn, &fc1_w[i], bias, &mut hidden, hs, epi, None)
        });
        let h16 = Rows::Bf16(Bf16Mat {
            data: &hidden16,
            rows: t,
            cols: hid,
            stride: hs,
        });
        shape("fc2", flops(d, hid), &mut |i| {
            let epi = Epilogue::Accumulate;
            linear_bf16_rows(pool, h16, &fc2_w[i], Some(&b), &mut acc, d, epi, None)
        });
        let peak = measure_bf16_peak_gflops_per_cpu_second().unwrap_or(f64::NAN);
        let each: Vec<String> = rates
            .iter()
            .map(|(what, g)| format!("{what} {:.3}", g / peak))
            .collect();
        println!(
            "bf16 dense layers, {threads}t, round {round}, per CPU-second of one core's bf16 \
             peak {peak:.1}: {}; all {:.3} (load {})",
            each.join(", "),
            all_flops / all_cpu / 1e9 / peak,
            timing::load_average()
        );
    }
}

fn main() {
    let threads = threads();
    let pool = Pool::new(threads);
    // All parts, or the one `MIAD_BENCH_PARTS` names (`vit`, `block`, `networks`, `gemm`,
    // `bf16dense`).
    let parts = std::env::var("MIAD_BENCH_PARTS").unwrap_or_default();
    let part = |name: &str| parts.is_empty() || parts == name;
    if part("vit") {
        full_forward(threads, &pool, DensePrecision::F32);
        full_forward(threads, &pool, DensePrecision::Bf16);
    }
    if part("block") {
        kernel_in_l1();
        kernel_bf16_in_l1();
        block_breakdown(threads, &pool, DensePrecision::F32);
        block_breakdown(threads, &pool, DensePrecision::Bf16);
    }
    if part("networks") {
        point_and_fusion(threads, &pool);
    }
    if part("gemm") {
        gemm_shapes(threads, &pool);
    }
    if parts == "walk" {
        kernel_walk();
    }
    if parts == "passes" {
        pass_by_pass(threads, &pool);
    }
    // Only when named: it packs the weights of 12 blocks (0.2 GB).
    if parts == "bf16dense" {
        bf16_dense(threads, &pool);
    }
}
