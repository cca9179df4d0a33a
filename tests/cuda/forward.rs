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
//! `cargo test --release --features cuda --test cuda forward:: -- --nocapture`. The timing at
//! full size is `forwards` in bench/cuda/.

use miad::backend::Precision;
use miad::config::{FusionConfig, ModelConfig, PointConfig, PreprocessConfig, VitConfig};
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::cuda::stages::forward::{DevicePointMae, DeviceVit, EncoderDims};
use miad::cuda::{Graph, Pinned};
use miad::format::{random_model, write_model, ModelFile, OpenOptions};
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};
use miad::util::rng::Rng;
use miad::Error;

use crate::shared::forward::{
    cpu_point_blocks, cpu_vit, device, errors, normal, F32_TOL, PRECISIONS,
};

const BF16_TOL: f64 = 1e-2;

fn tol(p: Precision) -> f64 {
    match p {
        Precision::F32 => F32_TOL,
        Precision::Bf16 => BF16_TOL,
    }
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
    let dir = crate::common::scratch_dir("cuda-forward");
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
