//! Fusion on the device (`miad::cuda::stages::fusion`) against the CPU fusion
//! (`cpu::fusion::fuse`, M3DM's UFF), with seeded random models (`format::random_model`):
//! - f32 path within 1e-5 (measured on the simulated device: at most 7.5e-7; the two
//!   differ in summation order and the LayerNorm's f64 statistics), bf16 path within
//!   `Precision::Bf16.feature_tolerance()` (1e-2; measured at most 4.5e-3), as
//!   max |Δ| / max |ref| and ‖Δ‖/‖ref‖ (both printed): on random features and on the pseudo-input layouts of the incomplete
//!   cases (every xyz row one token: no cloud; every RGB row one token: no image);
//! - sizes: `ModelConfig::small()` (8 → 16 grid) and a ragged preset (5 → 10 grid, widths
//!   that are no multiple of a tile) and a grid that does not repeat (7 → 7);
//! - a CUDA-graph replay (pinned inputs → fusion → pinned output) gives the bits of a
//!   direct run, for two parts in turn; a second run gives the same bits;
//! - bad inputs refused with an error;
//! - RADAR's fusion (`cpu::radar_fusion`) in each of the three cases, with and without the
//!   hybrid block, heads of 32 and 64: f32 within 1e-5 (measured at most 1.6e-6), bf16
//!   within 1e-2 (measured at most 6.8e-3), and another case's features differ (the case
//!   is read); one recorded graph replayed with the case changed in its device int gives
//!   each case's features (the bits of direct runs); heads of 16 refused.
//!
//! On the simulated device without a GPU (`test_device`); on a GPU machine:
//! `cargo test --release --features cuda --test cuda fusion:: -- --nocapture`.

use std::sync::Arc;

use miad::backend::Precision;
use miad::config::{FusionConfig, ModelConfig, PointConfig, VitConfig};
use miad::cpu::fusion::{fuse, fusion_scratch_len, FusionWeights};
use miad::cpu::pool::Pool;
use miad::cuda::stages::fusion::DeviceFusion;
use miad::cuda::{Graph, Pinned};
use miad::format::{random_model, OwnedTensors};
use miad::util::rng::Rng;

use crate::shared::forward::{errors, normal, PRECISIONS};
use crate::test_device;

/// Tolerance of the f32 path (max and norm-wise relative).
const F32_TOL: f64 = 1e-5;

/// ViT 40/8 (5×5 grid, width 80), Point-MAE width 56 × 3 layers, xyz grid 10.
fn ragged() -> ModelConfig {
    let mut cfg = ModelConfig::small();
    let vit = VitConfig {
        image_size: 40,
        patch_size: 8,
        dim: 80,
        heads: 2,
        mlp_dim: 160,
        ..VitConfig::small()
    };
    let point = PointConfig {
        dim: 56,
        heads: 2,
        mlp_dim: 112,
        out_layers: vec![1, 0, 1],
        ..PointConfig::small()
    };
    cfg.fusion = Some(FusionConfig {
        rgb_dim: vit.dim,
        xyz_dim: point.feature_dim() as u32,
        mlp_ratio: 3,
        ..cfg.fusion.clone().unwrap()
    });
    cfg.preprocess.image_size = 40;
    cfg.preprocess.xyz_grid = 10;
    cfg.vit = Some(vit);
    cfg.point = Some(point);
    cfg.name = "ragged-fusion".into();
    cfg
}

/// The small preset on a 7×7 xyz grid (the RGB grid's side: no repetition).
fn same_grid() -> ModelConfig {
    let mut cfg = ModelConfig::small();
    cfg.vit.as_mut().unwrap().image_size = 56;
    cfg.preprocess.image_size = 56;
    cfg.preprocess.xyz_grid = 7;
    cfg.name = "same-grid-fusion".into();
    cfg
}

struct Sizes {
    rgb_grid: usize,
    xyz_grid: usize,
    rgb_dim: usize,
    xyz_dim: usize,
}

fn sizes(cfg: &ModelConfig) -> Sizes {
    let fc = cfg.fusion.as_ref().unwrap();
    Sizes {
        rgb_grid: cfg.vit.as_ref().unwrap().grid(),
        xyz_grid: cfg.preprocess.xyz_grid as usize,
        rgb_dim: fc.rgb_dim as usize,
        xyz_dim: fc.xyz_dim as usize,
    }
}

fn cpu_fuse(cfg: &ModelConfig, t: &OwnedTensors, xyz: &[f32], rgb: &[f32]) -> Vec<f32> {
    let s = sizes(cfg);
    let fc = cfg.fusion.as_ref().unwrap();
    let w = FusionWeights::load(t, fc).unwrap();
    let mut out = vec![0f32; s.xyz_grid * s.xyz_grid * (s.xyz_dim + s.rgb_dim)];
    let mut scratch = vec![0f32; fusion_scratch_len(fc, s.rgb_grid, s.xyz_grid)];
    fuse(
        &Pool::new(2),
        &w,
        rgb,
        s.rgb_grid,
        xyz,
        s.xyz_grid,
        &mut out,
        &mut scratch,
    );
    out
}

/// Random features, then the two pseudo layouts (one repeated row for a missing modality).
fn inputs(cfg: &ModelConfig, seed: u64) -> Vec<(&'static str, Vec<f32>, Vec<f32>)> {
    let s = sizes(cfg);
    let mut rng = Rng::new(seed);
    let xyz = normal(&mut rng, s.xyz_grid * s.xyz_grid * s.xyz_dim, 1.0);
    let rgb = normal(&mut rng, s.rgb_grid * s.rgb_grid * s.rgb_dim, 2.0);
    let pseudo_xyz = xyz[..s.xyz_dim].repeat(s.xyz_grid * s.xyz_grid);
    let pseudo_rgb = rgb[s.rgb_dim..2 * s.rgb_dim].repeat(s.rgb_grid * s.rgb_grid);
    vec![
        ("complete", xyz.clone(), rgb.clone()),
        ("rgb only (pseudo cloud)", pseudo_xyz, rgb),
        ("cloud only (pseudo image)", xyz, pseudo_rgb),
    ]
}

fn check(what: &str, p: Precision, got: &[f32], want: &[f32]) -> f64 {
    let (frob, max) = errors(got, want);
    println!("fusion {what} {p:?}: ‖Δ‖/‖ref‖ {frob:.3e}, max|Δ|/max|ref| {max:.3e}");
    let tol = match p {
        Precision::F32 => F32_TOL,
        Precision::Bf16 => p.feature_tolerance() as f64,
    };
    assert!(
        frob <= tol && max <= tol,
        "fusion {what} {p:?}: errors {frob:.3e} / {max:.3e} above {tol:e}"
    );
    max
}

#[test]
fn uff_matches_the_cpu_fusion_in_both_precisions() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    let dev = Arc::new(dev);
    for (i, cfg) in [ModelConfig::small(), ragged(), same_grid()]
        .into_iter()
        .enumerate()
    {
        let t = random_model(&cfg, 40 + i as u64);
        for p in PRECISIONS {
            let f = DeviceFusion::from_source(dev.clone(), &cfg, &t, p).unwrap();
            assert_eq!(f.precision(), p);
            for (case, xyz, rgb) in inputs(&cfg, 7 + i as u64) {
                let want = cpu_fuse(&cfg, &t, &xyz, &rgb);
                let got = f.run(&xyz, &rgb).unwrap();
                check(&format!("{} {case}", cfg.name), p, &got, &want);
                // Deterministic: the same bits again.
                assert_eq!(got, f.run(&xyz, &rgb).unwrap(), "{} {case} {p:?}", cfg.name);
            }
        }
    }
}

#[test]
fn a_recorded_graph_replays_the_direct_run() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    let dev = Arc::new(dev);
    let cfg = ragged();
    let t = random_model(&cfg, 41);
    let f = DeviceFusion::from_source(dev.clone(), &cfg, &t, Precision::F32).unwrap();
    let d = *f.dims();
    let mut plan = miad::cuda::device::arena::ArenaPlan::new();
    let (sx, sr, sf) = (
        plan.add::<f32>(d.xyz_len()),
        plan.add::<f32>(d.rgb_len()),
        plan.add::<f32>(d.fused_len()),
    );
    let io = miad::cuda::device::arena::Arena::new(&dev, &plan).unwrap();
    let mut hx = Pinned::<f32>::new(&dev, d.xyz_len()).unwrap();
    let mut hr = Pinned::<f32>::new(&dev, d.rgb_len()).unwrap();
    let mut hf = Pinned::<f32>::new(&dev, d.fused_len()).unwrap();
    let graph = Graph::capture(&dev, |g| {
        hx.copy_to(g, io.ptr(sx), d.xyz_len())?;
        hr.copy_to(g, io.ptr(sr), d.rgb_len())?;
        unsafe { f.record(g, io.ptr(sx), io.ptr(sr), io.ptr(sf))? };
        hf.copy_from(g, io.ptr(sf), d.fused_len())
    })
    .unwrap();
    for (case, xyz, rgb) in inputs(&cfg, 9) {
        hx.as_mut_slice().copy_from_slice(&xyz);
        hr.as_mut_slice().copy_from_slice(&rgb);
        graph.replay(&dev).unwrap();
        dev.synchronize().unwrap();
        let direct = f.run(&xyz, &rgb).unwrap();
        assert_eq!(hf.as_slice(), &direct[..], "graph replay {case}");
    }
}

#[test]
fn bad_inputs_and_models_are_refused() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    let dev = Arc::new(dev);
    let cfg = ModelConfig::small();
    let t = random_model(&cfg, 42);
    let f = DeviceFusion::from_source(dev.clone(), &cfg, &t, Precision::F32).unwrap();
    let d = *f.dims();
    let e = f
        .run(&vec![0.0; d.xyz_len() - 1], &vec![0.0; d.rgb_len()])
        .unwrap_err();
    assert!(e.to_string().contains("fusion input"), "{e}");
    assert!(f.run(&vec![0.0; d.xyz_len()], &[]).is_err());
    // Still usable.
    let (_, xyz, rgb) = inputs(&cfg, 3).swap_remove(0);
    check(
        "after refusals",
        Precision::F32,
        &f.run(&xyz, &rgb).unwrap(),
        &cpu_fuse(&cfg, &t, &xyz, &rgb),
    );
    // A grid that is not a multiple of the RGB grid.
    let mut bad = cfg.clone();
    bad.preprocess.xyz_grid = 9;
    let e = DeviceFusion::from_source(dev.clone(), &bad, &t, Precision::F32)
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a multiple"), "{e}");
    // Weights of another shape.
    let mut bad = cfg.clone();
    bad.fusion.as_mut().unwrap().mlp_ratio = 2;
    assert!(DeviceFusion::from_source(dev, &bad, &t, Precision::Bf16).is_err());
}

// ---------------------------------------------------------------------------------------
// RADAR

use miad::config::RadarConfig;
use miad::cpu::radar_fusion::{self as rf, Case};

/// The small preset with a RADAR fusion whose heads the attention kernels have (32 or 64
/// wide), with or without the hybrid block.
fn radar(dim: u32, heads: u32, hybrid: bool) -> ModelConfig {
    let mut cfg = ModelConfig::small();
    cfg.name = format!("radar-{dim}-{heads}-{hybrid}");
    cfg.radar = Some(RadarConfig {
        dim,
        depth: 2,
        heads,
        instruction_len: 4,
        hyper_dim: 16,
        token_grid: cfg.vit.as_ref().unwrap().grid() as u32,
        ln_eps: 1e-5,
        hybrid,
    });
    cfg
}

fn cpu_radar(
    cfg: &ModelConfig,
    t: &OwnedTensors,
    xyz: &[f32],
    rgb: &[f32],
    case: Case,
) -> Vec<f32> {
    let s = sizes(cfg);
    let (fc, rc) = (cfg.fusion.as_ref().unwrap(), cfg.radar.as_ref().unwrap());
    let w = rf::load_weights(t, fc, rc).unwrap();
    let mut scratch = rf::RadarScratch::new(rf::Dims::new(fc, rc, s.xyz_grid));
    let mut out = vec![0f32; s.xyz_grid * s.xyz_grid * (s.xyz_dim + s.rgb_dim)];
    scratch.fuse(&Pool::new(2), &w, xyz, rgb, case, &mut out);
    out
}

const CASES: [Case; 3] = [Case::Complete, Case::RgbOnly, Case::CloudOnly];

/// The inputs of a part of `case`: the missing modality's rows one repeated token (the
/// pseudo input's layout).
fn case_inputs(cfg: &ModelConfig, seed: u64) -> Vec<(Case, Vec<f32>, Vec<f32>)> {
    let v = inputs(cfg, seed);
    CASES
        .into_iter()
        .zip(v)
        .map(|(c, (_, x, r))| (c, x, r))
        .collect()
}

#[test]
fn radar_matches_the_cpu_fusion_in_every_case_and_both_precisions() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    let dev = Arc::new(dev);
    for (i, cfg) in [radar(32, 1, true), radar(64, 1, false), radar(64, 2, true)]
        .into_iter()
        .enumerate()
    {
        let t = random_model(&cfg, 50 + i as u64);
        for p in PRECISIONS {
            let f = DeviceFusion::from_source(dev.clone(), &cfg, &t, p).unwrap();
            assert!(f.is_radar());
            for (case, xyz, rgb) in case_inputs(&cfg, 17 + i as u64) {
                let want = cpu_radar(&cfg, &t, &xyz, &rgb, case);
                let got = f.run_case(&xyz, &rgb, case).unwrap();
                check(&format!("{} {case:?}", cfg.name), p, &got, &want);
                // The case matters: another case's instructions give other features.
                let other = CASES[(case as usize + 1) % 3];
                let (d, _) = errors(&cpu_radar(&cfg, &t, &xyz, &rgb, other), &want);
                assert!(
                    d > 1e-3,
                    "{} {case:?}: the case does not matter ({d})",
                    cfg.name
                );
            }
        }
    }
}

/// One recorded graph, the case written to the device int before each replay: every case's
/// features, equal to the direct runs' bits.
#[test]
fn one_recorded_radar_graph_serves_every_case() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    let dev = Arc::new(dev);
    let cfg = radar(32, 1, true);
    let t = random_model(&cfg, 60);
    for p in PRECISIONS {
        let f = DeviceFusion::from_source(dev.clone(), &cfg, &t, p).unwrap();
        let d = *f.dims();
        let mut plan = miad::cuda::device::arena::ArenaPlan::new();
        let (sx, sr, sf) = (
            plan.add::<f32>(d.xyz_len()),
            plan.add::<f32>(d.rgb_len()),
            plan.add::<f32>(d.fused_len()),
        );
        let io = miad::cuda::device::arena::Arena::new(&dev, &plan).unwrap();
        let mut hx = Pinned::<f32>::new(&dev, d.xyz_len()).unwrap();
        let mut hr = Pinned::<f32>::new(&dev, d.rgb_len()).unwrap();
        let mut hc = Pinned::<i32>::new(&dev, 1).unwrap();
        let mut hf = Pinned::<f32>::new(&dev, d.fused_len()).unwrap();
        let graph = Graph::capture(&dev, |g| {
            hx.copy_to(g, io.ptr(sx), d.xyz_len())?;
            hr.copy_to(g, io.ptr(sr), d.rgb_len())?;
            hc.copy_to(g, f.case_ptr(), 1)?;
            unsafe { f.record(g, io.ptr(sx), io.ptr(sr), io.ptr(sf))? };
            hf.copy_from(g, io.ptr(sf), d.fused_len())
        })
        .unwrap();
        // Cases in an order that changes the case at every replay.
        let mut parts = case_inputs(&cfg, 61);
        parts.reverse();
        parts.push(parts[0].clone());
        for (case, xyz, rgb) in parts {
            hx.as_mut_slice().copy_from_slice(&xyz);
            hr.as_mut_slice().copy_from_slice(&rgb);
            hc.as_mut_slice()[0] = case as i32;
            graph.replay(&dev).unwrap();
            dev.synchronize().unwrap();
            let want = cpu_radar(&cfg, &t, &xyz, &rgb, case);
            check(&format!("graph {case:?}"), p, hf.as_slice(), &want);
            let direct = f.run_case(&xyz, &rgb, case).unwrap();
            assert_eq!(hf.as_slice(), &direct[..], "graph replay {case:?} {p:?}");
        }
    }
}

#[test]
fn radar_heads_without_an_attention_kernel_are_refused() {
    let Some(dev) = test_device("cuda fusion") else {
        return;
    };
    // Heads 16 wide (the fit tests' tiny RADAR): refused with the reason.
    let cfg = radar(32, 2, true);
    let t = random_model(&cfg, 62);
    let e = DeviceFusion::from_source(Arc::new(dev), &cfg, &t, Precision::F32)
        .err()
        .unwrap();
    assert!(e.to_string().contains("head dimension of 16"), "{e}");
}
