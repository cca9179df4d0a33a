//! The full ViT and Point-MAE forwards on the device (`miad::cuda::stages::forward`) against the
//! CPU backend, with the same seeded random model (`format::random_model`):
//! - f32 path vs `cpu::vit::vit_forward` / the Point-MAE blocks of
//!   `cpu::point_mae::point_mae_forward`: within 1e-4 relative, both as ‖Δ‖/‖ref‖ and as
//!   max |Δ| / max |ref| (the two backends differ only in summation order);
//! - bf16 path: within 1e-2 by both measures (bf16 operands, f32 accumulation and
//!   residual stream, cuBLASLt's tanh GELU); the errors are printed;
//! - the same bits on a second run; a CUDA-graph replay (pinned input → forward → pinned
//!   output) gives the bits of a direct run, for two inputs in turn;
//! - the image path (u8 image → device resize → forward) vs `pipeline::preprocess` +
//!   `vit_forward`; a model file gives the same model as its tensors.
//!
//! Sizes: `ModelConfig::demo()` (ViT 112×112 → 197 tokens, Point-MAE 256 groups, heads of
//! 64) and a ragged preset (26 tokens, 100 groups, mlp 320, out_layers out of order).
//! Heads 48 wide have no attention kernel and are refused (checked here without a GPU);
//! the `small()` preset's 32-wide heads run (the engine tests on the simulated device).
//!
//! Without a driver, a GPU or the cuBLASLt library every GPU test prints a SKIP line and
//! passes. On a GPU machine:
//! `cargo test --release --features cuda --test cuda forward:: -- --nocapture`; the bench
//! (full ViT-B/8 at 224×224 and Point-MAE with 1024 groups, graph-replayed, both
//! precisions, GEMM and attention shares, error vs the CPU at full size):
//! `MIAD_BENCH=1 cargo test --release --features cuda --test cuda forward::bench_forwards -- --nocapture`.

use miad::backend::Precision;
use miad::config::{FusionConfig, ModelConfig, PointConfig, PreprocessConfig, VitConfig};
use miad::cpu::gemm::{linear, Epilogue, Mat};
use miad::cpu::point_mae::{
    block_shape as point_block_shape, point_mae_forward, point_mae_scratch_len, PointMaeWeights,
};
use miad::cpu::pool::Pool;
use miad::cpu::transformer::{block_forward, block_scratch_len, layer_norm};
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::cuda::device::gemm::cublaslt_present;
use miad::cuda::stages::forward::{DevicePointMae, DeviceVit, EncoderDims, Kinds};
use miad::cuda::{Device, Graph, Pinned};
use miad::format::{random_model, write_model, ModelFile, OpenOptions, OwnedTensors};
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};
use miad::util::rng::Rng;
use miad::Error;

const F32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 1e-2;
const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Bf16];

fn device(test: &str) -> Option<Device> {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_forward {test}: SKIP, no usable GPU: {e}");
            return None;
        }
    };
    if !cublaslt_present() {
        eprintln!(
            "cuda_forward {test}: SKIP, {} has a driver but the cuBLASLt library (libcublasLt.so.12) cannot be loaded",
            dev.name
        );
        return None;
    }
    eprintln!("cuda_forward {test}: {} (sm_{})", dev.name, dev.sm());
    Some(dev)
}

fn tol(p: Precision) -> f64 {
    match p {
        Precision::F32 => F32_TOL,
        Precision::Bf16 => BF16_TOL,
    }
}

fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    rng.fill_normal(&mut v, std);
    v
}

/// (‖Δ‖/‖ref‖, max |Δ| / max |ref|); panics on a non-finite output.
fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "output length");
    let (mut num, mut den, mut max_d, mut max_r) = (0f64, 0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "non-finite output at {i}: {g}");
        let d = (g as f64 - w as f64).abs();
        num += d * d;
        den += (w as f64) * (w as f64);
        max_d = max_d.max(d);
        max_r = max_r.max((w as f64).abs());
    }
    assert!(den > 0.0, "all-zero reference");
    ((num / den).sqrt(), max_d / max_r)
}

fn check(what: &str, p: Precision, got: &[f32], want: &[f32]) {
    let (frob, max) = errors(got, want);
    println!("{what} {p:?}: ‖Δ‖/‖ref‖ {frob:.3e}, max|Δ|/max|ref| {max:.3e}");
    let t = tol(p);
    assert!(
        frob <= t && max <= t,
        "{what} {p:?}: errors {frob:.3e} / {max:.3e} above {t:e}"
    );
}

/// 26 ViT tokens, 100 groups, mlp 320, out_layers out of order: nothing a multiple of a
/// tile.
fn ragged() -> ModelConfig {
    let vit = VitConfig {
        image_size: 40,
        patch_size: 8,
        in_chans: 3,
        dim: 128,
        depth: 2,
        heads: 2,
        mlp_dim: 320,
        ln_eps: 1e-6,
    };
    let point = PointConfig {
        num_groups: 100,
        group_size: 16,
        encoder_widths: [32, 64, 128],
        pos_hidden: 48,
        dim: 128,
        depth: 3,
        heads: 2,
        mlp_dim: 320,
        ln_eps: 1e-5,
        out_layers: vec![2, 0],
    };
    let fusion = FusionConfig {
        rgb_dim: vit.dim,
        xyz_dim: point.feature_dim() as u32,
        mlp_ratio: 4,
        ln_eps: 1e-5,
        head_dim: 32,
    };
    ModelConfig {
        name: "ragged".into(),
        vit: Some(vit),
        point: Some(point),
        fusion: Some(fusion),
        radar: None,
        preprocess: PreprocessConfig {
            image_size: 40,
            xyz_grid: 10,
            ..PreprocessConfig::default()
        },
    }
}

// ---------- CPU references ----------

fn cpu_vit(pool: &Pool, vc: &VitConfig, t: &OwnedTensors, input: &[f32]) -> Vec<f32> {
    let w = VitWeights::load(t, vc).unwrap();
    let mut out = vec![0f32; vc.patches() * vc.dim as usize];
    let mut scratch = vec![0f32; vit_scratch_len(vc, pool.threads())];
    vit_forward(pool, vc, &w, input, &mut out, &mut scratch).unwrap();
    out
}

/// The transformer part of `point_mae_forward` (position MLP, `x = Block_i(x + pos)`,
/// selected outputs through the final norm) on given tokens, from the CPU's public pieces,
/// in the same order.
fn cpu_point_blocks(
    pool: &Pool,
    pc: &PointConfig,
    t: &OwnedTensors,
    tokens: &[f32],
    centers: &[f32],
) -> Vec<f32> {
    let w = PointMaeWeights::load(t, pc).unwrap();
    let (m, d, ph, fd) = (
        pc.num_groups as usize,
        pc.dim as usize,
        pc.pos_hidden as usize,
        pc.feature_dim(),
    );
    let mut pos_h = vec![0f32; m * ph];
    linear(
        pool,
        Mat::new(centers, m, 3),
        Mat::new(w.pos1.0, ph, 3),
        Some(w.pos1.1),
        &mut pos_h,
        ph,
        Epilogue::Gelu,
    );
    let mut pos = vec![0f32; m * d];
    linear(
        pool,
        Mat::new(&pos_h, m, ph),
        Mat::new(w.pos2.0, d, ph),
        Some(w.pos2.1),
        &mut pos,
        d,
        Epilogue::None,
    );
    let shape = point_block_shape(pc);
    let mut scratch = vec![0f32; block_scratch_len(&shape, pool.threads())];
    let mut x = tokens.to_vec();
    let mut normed = vec![0f32; m * d];
    let mut out = vec![f32::NAN; m * fd];
    for (i, bw) in w.blocks.iter().enumerate() {
        x.iter_mut().zip(&pos).for_each(|(a, p)| *a += p);
        block_forward(pool, &shape, bw, &mut x, &mut scratch);
        if let Some(slot) = pc.out_layers.iter().position(|&l| l as usize == i) {
            layer_norm(pool, m, d, &x, &mut normed, w.norm.0, w.norm.1, pc.ln_eps);
            for (g, row) in normed.chunks_exact(d).enumerate() {
                out[g * fd + slot * d..][..d].copy_from_slice(row);
            }
        }
    }
    out
}

fn cpu_rgb_input(
    pre: &PreprocessConfig,
    img: &[u8],
    (w, h, stride): (usize, usize, usize),
    mode: PreprocessMode,
) -> Vec<f32> {
    let mut out = PreprocessOutput::new(pre);
    let mut scratch = vec![0f32; preprocess_scratch_len(pre, w, h)];
    let view = RgbView {
        data: img,
        width: w,
        height: h,
        stride,
    };
    preprocess(pre, Some(view), None, mode, &mut out, &mut scratch).unwrap();
    out.rgb_input
}

fn random_image(rng: &mut Rng, w: usize, h: usize, stride: usize) -> Vec<u8> {
    let mut img = vec![0u8; (h - 1) * stride + 3 * w];
    for y in 0..h {
        for x in 0..3 * w {
            let g = ((x / 3 + 2 * y) % 256) as u32;
            let n = (rng.next_u64() >> 57) as u32;
            img[y * stride + x] = ((g + n) / 2 + ((x % 3) as u32) * 20).min(255) as u8;
        }
    }
    img
}

// ---------- tests ----------

#[test]
fn configs_the_kernels_cannot_run_are_refused_on_the_host() {
    // Heads 48 wide (the small preset's widths over 2 heads).
    let mut cfg = ModelConfig::small();
    cfg.vit.as_mut().unwrap().heads = 2;
    cfg.point.as_mut().unwrap().heads = 2;
    for e in [
        EncoderDims::vit(cfg.vit.as_ref().unwrap()).unwrap_err(),
        EncoderDims::point(cfg.point.as_ref().unwrap()).unwrap_err(),
    ] {
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("head dimension of 48"), "{e}");
        assert!(
            e.to_string().contains("need a head dimension of 32 or 64"),
            "{e}"
        );
    }
    let v = EncoderDims::vit(&VitConfig::base8()).unwrap();
    assert_eq!((v.tokens, v.heads), (785, 12));
    let Some(dev) = device("refusals") else {
        return;
    };
    let t = random_model(&cfg, 1);
    for p in PRECISIONS {
        let e = DeviceVit::from_source(&dev, &cfg, &t, 64, 64, p)
            .err()
            .unwrap();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = DevicePointMae::from_source(&dev, &cfg, &t, p)
            .err()
            .unwrap();
        assert!(e.to_string().contains("head dimension"), "{e}");
    }
}

#[test]
fn vit_matches_cpu_forward() {
    let Some(dev) = device("vit") else {
        return;
    };
    let pool = Pool::with_available_cores();
    for (seed, cfg) in [(11u64, ModelConfig::demo()), (12, ragged())] {
        let vc = cfg.vit.clone().unwrap();
        let t = random_model(&cfg, seed);
        let mut rng = Rng::new(seed + 100);
        let side = vc.image_size as usize;
        let input = normal(&mut rng, 3 * side * side, 1.0);
        let want = cpu_vit(&pool, &vc, &t, &input);
        for p in PRECISIONS {
            let vit = DeviceVit::from_source(&dev, &cfg, &t, 64, 64, p).unwrap();
            assert_eq!(vit.plan().features_len(), want.len());
            let got = vit.run_input(&dev, &input).unwrap();
            assert_eq!(
                got,
                vit.run_input(&dev, &input).unwrap(),
                "a second run differs"
            );
            let what = format!(
                "ViT '{}' {} tokens × {}, depth {}",
                cfg.name,
                vc.tokens(),
                vc.dim,
                vc.depth
            );
            check(&what, p, &got, &want);
        }
    }
}

#[test]
fn vit_image_path_matches_cpu_preprocess() {
    let Some(dev) = device("vit image") else {
        return;
    };
    let pool = Pool::with_available_cores();
    let cfg = ModelConfig::demo();
    let vc = cfg.vit.clone().unwrap();
    let t = random_model(&cfg, 13);
    let mut rng = Rng::new(14);
    let (w, h) = (150usize, 90usize);
    let stride = 3 * w + 5;
    let img = random_image(&mut rng, w, h, stride);
    for p in PRECISIONS {
        let vit = DeviceVit::from_source(&dev, &cfg, &t, 160, 100, p).unwrap();
        for mode in [PreprocessMode::Full, PreprocessMode::AlreadyClean] {
            let input = cpu_rgb_input(&cfg.preprocess, &img, (w, h, stride), mode);
            let want = cpu_vit(&pool, &vc, &t, &input);
            let got = vit.run_image(&dev, &img, (w, h, stride), mode).unwrap();
            check(&format!("ViT image {w}×{h} {mode:?}"), p, &got, &want);
        }
        // Outside the planned size, or a buffer too short: refused.
        assert!(vit
            .run_image(&dev, &img, (w + 20, h, stride), PreprocessMode::Full)
            .is_err());
        assert!(vit
            .run_image(
                &dev,
                &img[..img.len() - 1],
                (w, h, stride),
                PreprocessMode::Full
            )
            .is_err());
        assert!(vit.run_input(&dev, &[0.0; 5]).is_err());
    }
}

#[test]
fn point_mae_matches_cpu_forward() {
    let Some(dev) = device("point") else {
        return;
    };
    let pool = Pool::with_available_cores();
    for (seed, cfg) in [(15u64, ModelConfig::demo()), (16, ragged())] {
        let pc = cfg.point.clone().unwrap();
        let t = random_model(&cfg, seed);
        let (m, d) = (pc.num_groups as usize, pc.dim as usize);
        let mut rng = Rng::new(seed + 100);
        let tokens = normal(&mut rng, m * d, 1.0);
        let centers = normal(&mut rng, m * 3, 0.3);
        let want = cpu_point_blocks(&pool, &pc, &t, &tokens, &centers);
        for p in PRECISIONS {
            let pm = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
            let got = pm.run(&dev, &tokens, &centers).unwrap();
            assert_eq!(
                got,
                pm.run(&dev, &tokens, &centers).unwrap(),
                "a second run differs"
            );
            let what = format!(
                "Point-MAE '{}' {m} groups × {d}, depth {}, out_layers {:?}",
                cfg.name, pc.depth, pc.out_layers
            );
            check(&what, p, &got, &want);
            // Tokens written straight into the residual stream: no copy, same bits.
            dev.upload(pm.residual_ptr().raw(), &tokens).unwrap();
            dev.upload(pm.centers_ptr().raw(), &centers).unwrap();
            unsafe {
                pm.record(&dev, pm.residual_ptr(), pm.centers_ptr(), pm.output_ptr())
                    .unwrap()
            };
            let mut direct = vec![0f32; got.len()];
            dev.download(&mut direct, pm.output_ptr().raw()).unwrap();
            assert_eq!(direct, got, "forward from the residual buffer differs");
            assert!(pm.run(&dev, &tokens[1..], &centers).is_err());
        }
    }
}

/// With a zero group encoder whose conv4 bias is b4, every token is b4 (no ReLU after
/// conv4): the device forward on those tokens must match `point_mae_forward` itself.
#[test]
fn point_mae_matches_point_mae_forward_with_a_constant_encoder() {
    let Some(dev) = device("point constant encoder") else {
        return;
    };
    let pool = Pool::with_available_cores();
    let cfg = ModelConfig::demo();
    let pc = cfg.point.clone().unwrap();
    let mut t = random_model(&cfg, 17);
    for i in 1..=4 {
        t.tensors
            .get_mut(&format!("point.encoder.conv{i}.weight"))
            .unwrap()
            .1
            .fill(0.0);
        if i < 4 {
            t.tensors
                .get_mut(&format!("point.encoder.conv{i}.bias"))
                .unwrap()
                .1
                .fill(0.0);
        }
    }
    let b4 = t.tensors["point.encoder.conv4.bias"].1.clone();
    let (m, s) = (pc.num_groups as usize, pc.group_size as usize);
    let mut rng = Rng::new(18);
    let n = m + 17;
    let points = normal(&mut rng, 3 * n, 0.3);
    let center_idx: Vec<u32> = (0..m as u32).map(|i| (i * 7) % n as u32).collect();
    let group_idx = vec![0u32; m * s];
    let w = PointMaeWeights::load(&t, &pc).unwrap();
    let mut want = vec![0f32; m * pc.feature_dim()];
    let mut scratch = vec![0f32; point_mae_scratch_len(&pc, pool.threads())];
    point_mae_forward(
        &pool,
        &pc,
        &w,
        &points,
        n,
        &center_idx,
        &group_idx,
        &mut want,
        &mut scratch,
    );
    let centers: Vec<f32> = center_idx
        .iter()
        .flat_map(|&i| points[3 * i as usize..][..3].iter().copied())
        .collect();
    let tokens = b4.repeat(m);
    for p in PRECISIONS {
        let pm = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
        let got = pm.run(&dev, &tokens, &centers).unwrap();
        check("Point-MAE vs point_mae_forward", p, &got, &want);
    }
}

#[test]
fn graph_replay_equals_direct_run() {
    let Some(dev) = device("graph") else {
        return;
    };
    let cfg = ModelConfig::demo();
    let t = random_model(&cfg, 21);
    let mut rng = Rng::new(22);
    for p in PRECISIONS {
        // ViT: pinned CHW input → forward → pinned features.
        let vit = DeviceVit::from_source(&dev, &cfg, &t, 64, 64, p).unwrap();
        let (n_in, n_out) = (vit.plan().input_len(), vit.plan().features_len());
        let inputs = [normal(&mut rng, n_in, 1.0), normal(&mut rng, n_in, 1.0)];
        let direct: Vec<Vec<f32>> = inputs
            .iter()
            .map(|x| vit.run_input(&dev, x).unwrap())
            .collect();
        assert_ne!(direct[0], direct[1]);
        let mut pin_in = Pinned::<f32>::new(&dev, n_in).unwrap();
        let mut pin_out = Pinned::<f32>::new(&dev, n_out).unwrap();
        let graph = Graph::capture(&dev, |d| {
            pin_in.copy_to(d, vit.input_ptr(), n_in)?;
            unsafe { vit.record_input(d, vit.input_ptr(), vit.output_ptr())? };
            pin_out.copy_from(d, vit.output_ptr(), n_out)
        })
        .unwrap();
        for i in [0usize, 1, 0] {
            pin_in.as_mut_slice().copy_from_slice(&inputs[i]);
            graph.replay(&dev).unwrap();
            dev.synchronize().unwrap();
            assert_eq!(
                pin_out.as_slice(),
                &direct[i][..],
                "ViT {p:?}: replay of input {i} differs from the direct run"
            );
        }
        drop(graph);

        // Point-MAE: pinned tokens and centers → forward → pinned features.
        let pm = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
        let pp = pm.plan().clone();
        let (nt, nc, no) = (pp.tokens_len(), 3 * pp.groups, pp.output_len());
        let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|_| (normal(&mut rng, nt, 1.0), normal(&mut rng, nc, 0.3)))
            .collect();
        let direct: Vec<Vec<f32>> = inputs
            .iter()
            .map(|(x, c)| pm.run(&dev, x, c).unwrap())
            .collect();
        let mut pin_t = Pinned::<f32>::new(&dev, nt).unwrap();
        let mut pin_c = Pinned::<f32>::new(&dev, nc).unwrap();
        let mut pin_o = Pinned::<f32>::new(&dev, no).unwrap();
        let graph = Graph::capture(&dev, |d| {
            pin_t.copy_to(d, pm.tokens_ptr(), nt)?;
            pin_c.copy_to(d, pm.centers_ptr(), nc)?;
            unsafe { pm.record(d, pm.tokens_ptr(), pm.centers_ptr(), pm.output_ptr())? };
            pin_o.copy_from(d, pm.output_ptr(), no)
        })
        .unwrap();
        for i in [0usize, 1, 0] {
            pin_t.as_mut_slice().copy_from_slice(&inputs[i].0);
            pin_c.as_mut_slice().copy_from_slice(&inputs[i].1);
            graph.replay(&dev).unwrap();
            dev.synchronize().unwrap();
            assert_eq!(
                pin_o.as_slice(),
                &direct[i][..],
                "Point-MAE {p:?}: replay of input {i} differs from the direct run"
            );
        }
        println!("graph replay {p:?}: ViT and Point-MAE replays equal their direct runs");
    }
}

#[test]
fn a_model_file_gives_the_model_of_its_tensors() {
    let Some(dev) = device("model file") else {
        return;
    };
    let cfg = ModelConfig::demo();
    let t = random_model(&cfg, 31);
    let dir = std::env::temp_dir().join(format!("miad-cuda-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("demo.miad");
    write_model(&cfg, &t, &[], &path).unwrap();
    let file = ModelFile::open(&path, &OpenOptions::default()).unwrap();
    let mut rng = Rng::new(32);
    let vc = cfg.vit.as_ref().unwrap();
    let side = vc.image_size as usize;
    let input = normal(&mut rng, 3 * side * side, 1.0);
    let pc = cfg.point.as_ref().unwrap();
    let (m, d) = (pc.num_groups as usize, pc.dim as usize);
    let tokens = normal(&mut rng, m * d, 1.0);
    let centers = normal(&mut rng, m * 3, 0.3);
    for p in PRECISIONS {
        let a = DeviceVit::new(&dev, &file, 64, 64, p).unwrap();
        let b = DeviceVit::from_source(&dev, &cfg, &t, 64, 64, p).unwrap();
        assert_eq!(a.precision(), p);
        assert_eq!(
            a.run_input(&dev, &input).unwrap(),
            b.run_input(&dev, &input).unwrap()
        );
        let a = DevicePointMae::new(&dev, &file, p).unwrap();
        let b = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
        assert_eq!(
            a.run(&dev, &tokens, &centers).unwrap(),
            b.run(&dev, &tokens, &centers).unwrap()
        );
        println!(
            "demo model {p:?}: ViT arena {:.1} MiB, Point-MAE arena {:.1} MiB",
            b.arena_bytes() as f64 / (1 << 20) as f64,
            a.arena_bytes() as f64 / (1 << 20) as f64
        );
    }
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Milliseconds per replay of `graph`: warm replays, then the median of 5 rounds.
fn time_graph(dev: &Device, graph: &Graph, reps: usize) -> f64 {
    for _ in 0..3 {
        graph.replay(dev).unwrap();
    }
    dev.synchronize().unwrap();
    let timer = dev.timer().unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            timer.start().unwrap();
            for _ in 0..reps {
                graph.replay(dev).unwrap();
            }
            timer.stop_ms().unwrap() as f64 / reps as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[2]
}

/// (all, gemm, attention) milliseconds of the three graphs.
fn report(what: &str, p: Precision, flops: f64, arena: usize, ms: [f64; 3], err: (f64, f64)) {
    let [all, gemm, att] = ms;
    println!(
        "BENCH forward {what} {p:?}: {all:.3} ms/forward ({:.1} TFLOP/s), GEMM {gemm:.3} ms ({:.0}%), attention {att:.3} ms ({:.0}%), other ~{:.3} ms; arena {:.0} MiB; vs CPU ‖Δ‖/‖ref‖ {:.2e}, max {:.2e}",
        flops / (all * 1e-3) / 1e12,
        100.0 * gemm / all,
        100.0 * att / all,
        (all - gemm - att).max(0.0),
        arena as f64 / (1 << 20) as f64,
        err.0,
        err.1
    );
}

#[test]
fn bench_forwards() {
    if std::env::var_os("MIAD_BENCH").is_none() {
        eprintln!("skipped: set MIAD_BENCH=1 to time the full-size forwards");
        return;
    }
    let Some(dev) = device("bench") else {
        return;
    };
    let reps = 20;
    let pool = Pool::with_available_cores();
    let cfg = ModelConfig::m3dm();
    let t = random_model(&cfg, 41);
    let mut rng = Rng::new(42);
    let vc = cfg.vit.clone().unwrap();
    let side = vc.image_size as usize;
    let input = normal(&mut rng, 3 * side * side, 1.0);
    let vit_ref = cpu_vit(&pool, &vc, &t, &input);
    let pc = cfg.point.clone().unwrap();
    let (m, d) = (pc.num_groups as usize, pc.dim as usize);
    let tokens = normal(&mut rng, m * d, 1.0);
    let centers = normal(&mut rng, m * 3, 0.3);
    let point_ref = cpu_point_blocks(&pool, &pc, &t, &tokens, &centers);
    for p in PRECISIONS {
        let vit = DeviceVit::from_source(&dev, &cfg, &t, side, side, p).unwrap();
        let err = errors(&vit.run_input(&dev, &input).unwrap(), &vit_ref);
        let graphs = [
            Graph::capture(&dev, |d| unsafe {
                vit.record_input(d, vit.input_ptr(), vit.output_ptr())
            }),
            Graph::capture(&dev, |d| unsafe { vit.record_kinds(d, Kinds::GEMM) }),
            Graph::capture(&dev, |d| unsafe { vit.record_kinds(d, Kinds::ATTENTION) }),
        ]
        .map(Result::unwrap);
        let ms = graphs.each_ref().map(|g| time_graph(&dev, g, reps));
        report(
            &format!("ViT-B/8 {side}×{side}"),
            p,
            vit.flops(),
            vit.arena_bytes(),
            ms,
            err,
        );
        if p == Precision::F32 {
            assert!(err.0 <= F32_TOL && err.1 <= F32_TOL, "{err:?}");
        }
        drop(graphs);
        drop(vit);

        let pm = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
        let err = errors(&pm.run(&dev, &tokens, &centers).unwrap(), &point_ref);
        let graphs = [
            Graph::capture(&dev, |d| unsafe {
                pm.record(d, pm.tokens_ptr(), pm.centers_ptr(), pm.output_ptr())
            }),
            Graph::capture(&dev, |d| unsafe { pm.record_kinds(d, Kinds::GEMM) }),
            Graph::capture(&dev, |d| unsafe { pm.record_kinds(d, Kinds::ATTENTION) }),
        ]
        .map(Result::unwrap);
        let ms = graphs.each_ref().map(|g| time_graph(&dev, g, reps));
        report(
            &format!("Point-MAE {m} groups"),
            p,
            pm.flops(),
            pm.arena_bytes(),
            ms,
            err,
        );
        if p == Precision::F32 {
            assert!(err.0 <= F32_TOL && err.1 <= F32_TOL, "{err:?}");
        }
    }
}
