//! The extractor's gates for networks run by another backend (the CUDA ViT, point branch
//! and fusion): each is accepted only when it reproduces the CPU on a probe input (the ViT
//! on the pseudo input, the point branch on a probe cloud, the fusion on probe features in
//! every case its model distinguishes), and then it is what `run` uses.
//! Checked here with stand-in networks on the CPU (no GPU needed).

use miad::backend::Precision;
use miad::config::ModelConfig;
use miad::cpu::fps::{farthest_point_sample, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::format::{random_model, OwnedTensors};
use miad::pipeline::extract::{DeviceNetwork, Extractor, PointNetwork, PointOutputs, RgbNetwork};

/// The parity path's tolerance, which the engine passes to the gates.
const RGB_NETWORK_TOLERANCE: f32 = Precision::F32.feature_tolerance();
const POINT_NETWORK_TOLERANCE: f32 = RGB_NETWORK_TOLERANCE;
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::PreprocessMode;
use miad::{DeviceError, Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The CPU ViT, optionally wrong: `shift` is added to its first feature, relative to the
/// features' peak; `nan` poisons one value; `fail` returns an error.
struct StandIn {
    cfg: ModelConfig,
    tensors: OwnedTensors,
    shift: f32,
    nan: bool,
    fail: bool,
    calls: Arc<AtomicUsize>,
}

impl RgbNetwork for StandIn {
    fn forward(&mut self, input: &[f32], features: &mut [f32]) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(Error::Device(DeviceError::Other(
                "stand-in device lost".into(),
            )));
        }
        let vc = self.cfg.vit.as_ref().unwrap();
        let w = VitWeights::load(&self.tensors, vc)?;
        let pool = Pool::new(1);
        let mut scratch = vec![0f32; vit_scratch_len(vc, 1)];
        vit_forward(&pool, vc, &w, input, features, &mut scratch)?;
        let peak = features.iter().fold(0f32, |m, v| m.max(v.abs()));
        features[0] += self.shift * peak;
        if self.nan {
            features[1] = f32::NAN;
        }
        Ok(())
    }
}

fn setup() -> (ModelConfig, OwnedTensors) {
    let cfg = ModelConfig::small();
    let tensors = random_model(&cfg, 21);
    (cfg, tensors)
}

fn stand_in(shift: f32, nan: bool, fail: bool) -> (Box<StandIn>, Arc<AtomicUsize>) {
    let (cfg, tensors) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    let net = StandIn {
        cfg,
        tensors,
        shift,
        nan,
        fail,
        calls: calls.clone(),
    };
    (Box::new(net), calls)
}

/// The model of [`setup`], written to a file and opened.
fn model_file(name: &str) -> (std::path::PathBuf, miad::format::ModelFile) {
    let (cfg, tensors) = setup();
    let dir = crate::common::scratch_dir(name);
    let path = dir.join("model.miad");
    miad::format::write_model(&cfg, &tensors, &[], &path).unwrap();
    let model = miad::format::ModelFile::open(&path, &Default::default()).unwrap();
    (dir, model)
}

#[test]
fn a_network_is_used_only_when_it_reproduces_the_cpu_vit() {
    let (dir, model) = model_file("rgb-network");
    let pool = Pool::new(2);
    let mut ex = Extractor::new(&pool, &model, 96, 96, PreprocessMode::Full).unwrap();

    // Wrong by 10x the tolerance, NaN, or failing: refused, with the reason.
    for (shift, nan, fail, needle) in [
        (
            10.0 * RGB_NETWORK_TOLERANCE,
            false,
            false,
            "differ from the CPU ViT",
        ),
        (0.0, true, false, "NaN"),
        (0.0, false, true, "stand-in device lost"),
    ] {
        let (net, _) = stand_in(shift, nan, fail);
        let e = ex
            .use_network(&pool, DeviceNetwork::Rgb(net), RGB_NETWORK_TOLERANCE)
            .unwrap_err();
        // A disagreement is a self-check failure; the network's own error passes through.
        let self_check = matches!(e, Error::Device(DeviceError::SelfCheck(_)));
        assert_eq!(self_check, !fail, "{e}");
        let e = e.to_string();
        assert!(e.contains(needle), "{e}");
    }

    // A part through the CPU ViT, for reference.
    let (w, h) = (96, 96);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let view = || RgbView::packed(&rgb, w, h);
    ex.run(&pool, Some(view()), None).unwrap();
    let cpu = ex.rgb.clone();

    // Within tolerance: accepted, and from then on it computes the RGB features.
    let (net, calls) = stand_in(0.1 * RGB_NETWORK_TOLERANCE, false, false);
    let rel = ex
        .use_network(&pool, DeviceNetwork::Rgb(net), RGB_NETWORK_TOLERANCE)
        .unwrap();
    assert!(rel > 0.0 && rel <= RGB_NETWORK_TOLERANCE, "{rel}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one self-check pass");
    ex.run(&pool, Some(view()), None).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "run used the network");
    let peak = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!((ex.rgb[0] - cpu[0] - 0.1 * RGB_NETWORK_TOLERANCE * peak).abs() <= 1e-6 * peak);
    assert_eq!(ex.rgb[1..], cpu[1..]);
    // A part without RGB still gets the pseudo features, without calling the network.
    let cloud = vec![0f32; w * h * 3];
    let cloud_view = miad::pipeline::input::CloudView::packed(&cloud, w, h);
    let _ = ex.run(&pool, None, Some(cloud_view));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How a stand-in point branch goes wrong.
#[derive(Clone, Copy, PartialEq)]
enum PointFault {
    Center,
    Group,
    Shift(f32),
    Nan,
    Error,
}

/// The CPU point branch, computed from its public pieces, with a fault.
struct PointStandIn {
    cfg: ModelConfig,
    tensors: OwnedTensors,
    fault: PointFault,
    calls: Arc<AtomicUsize>,
}

impl PointNetwork for PointStandIn {
    fn forward(
        &mut self,
        points: &[f32],
        n: usize,
        pixels: &[u32],
        out: PointOutputs<'_>,
    ) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fault == PointFault::Error {
            return Err(Error::Device(DeviceError::Other(
                "stand-in point branch lost".into(),
            )));
        }
        let pc = self.cfg.point.as_ref().unwrap();
        let pre = &self.cfg.preprocess;
        let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
        let pool = Pool::new(1);
        let s = pre.image_size as usize;
        let len = fps_scratch_len(s * s)
            .max(knn_scratch_len(s * s, k, 1))
            .max(point_mae_scratch_len(pc, 1))
            .max(pfa_scratch_len(pre, m, s * s, 1));
        let mut scratch = vec![0f32; len];
        farthest_point_sample(points, n, m, out.centers, &mut scratch);
        group_knn(&pool, points, n, out.centers, k, out.groups, &mut scratch);
        let w = PointMaeWeights::load(&self.tensors, pc)?;
        let mut features = vec![0f32; m * pc.feature_dim()];
        point_mae_forward(
            &pool,
            pc,
            &w,
            points,
            n,
            out.centers,
            out.groups,
            &mut features,
            &mut scratch,
        );
        let center_xyz: Vec<f32> = out
            .centers
            .iter()
            .flat_map(|&i| points[3 * i as usize..3 * i as usize + 3].to_vec())
            .collect();
        point_feature_align(
            &pool,
            pre,
            points,
            n,
            pixels,
            &center_xyz,
            &features,
            pc.feature_dim(),
            out.xyz,
            &mut scratch,
        );
        let peak = out.xyz.iter().fold(0f32, |m, v| m.max(v.abs()));
        match self.fault {
            PointFault::Center => out.centers[3] = out.centers[3].wrapping_add(1),
            PointFault::Group => out.groups[7] = out.groups[7].wrapping_add(1),
            PointFault::Shift(r) => out.xyz[5] += r * peak,
            PointFault::Nan => out.xyz[9] = f32::NAN,
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn a_point_network_is_used_only_when_it_reproduces_the_cpu_point_branch() {
    let (dir, model) = model_file("point-network");
    let pool = Pool::new(2);
    // Already clean: the test cloud is used as it is (no plane removal).
    let mut ex = Extractor::new(&pool, &model, 96, 96, PreprocessMode::AlreadyClean).unwrap();
    let stand_in = |fault| {
        let (cfg, tensors) = setup();
        let calls = Arc::new(AtomicUsize::new(0));
        let net = PointStandIn {
            cfg,
            tensors,
            fault,
            calls: calls.clone(),
        };
        (Box::new(net), calls)
    };
    for (fault, needle) in [
        (PointFault::Center, "center 3"),
        (PointFault::Group, "group member 7"),
        (
            PointFault::Shift(10.0 * POINT_NETWORK_TOLERANCE),
            "xyz features differ",
        ),
        (PointFault::Nan, "xyz feature 9 is NaN"),
        (PointFault::Error, "stand-in point branch lost"),
    ] {
        let (net, _) = stand_in(fault);
        let e = ex
            .use_network(&pool, DeviceNetwork::Point(net), POINT_NETWORK_TOLERANCE)
            .unwrap_err();
        let self_check = matches!(e, Error::Device(DeviceError::SelfCheck(_)));
        assert_eq!(self_check, !matches!(fault, PointFault::Error), "{e}");
        let e = e.to_string();
        assert!(e.contains(needle), "{e}");
    }

    // A part through the CPU point branch, for reference: a tilted plane with a bump.
    let (w, h) = (96, 96);
    let mut cloud = vec![0f32; w * h * 3];
    for r in 0..h {
        for c in 0..w {
            let (x, y) = (c as f32 / w as f32, r as f32 / h as f32);
            let z = 1.0 + 0.2 * x + 0.1 * (-20.0 * ((x - 0.5).powi(2) + (y - 0.4).powi(2))).exp();
            cloud[3 * (r * w + c)..3 * (r * w + c) + 3].copy_from_slice(&[x, y, z]);
        }
    }
    let view = || miad::pipeline::input::CloudView::packed(&cloud, w, h);
    let status = ex.run(&pool, None, Some(view())).unwrap();
    assert!(status.cloud_usable());
    let (xyz, centers, groups) = (ex.xyz.clone(), ex.centers().to_vec(), ex.groups().to_vec());

    let (net, calls) = stand_in(PointFault::Shift(0.1 * POINT_NETWORK_TOLERANCE));
    let rel = ex
        .use_network(&pool, DeviceNetwork::Point(net), POINT_NETWORK_TOLERANCE)
        .unwrap();
    assert!(rel > 0.0 && rel <= POINT_NETWORK_TOLERANCE, "{rel}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one self-check pass");
    ex.run(&pool, None, Some(view())).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "run used the network");
    assert_eq!(ex.centers(), &centers[..]);
    assert_eq!(ex.groups(), &groups[..]);
    let peak = xyz.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = xyz
        .iter()
        .zip(&ex.xyz)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 0.11 * POINT_NETWORK_TOLERANCE * peak,
        "{worst} vs peak {peak}"
    );
    assert!(worst > 0.0, "the stand-in's shift shows");
    let _ = std::fs::remove_dir_all(&dir);
}

/// How a stand-in fusion goes wrong.
#[derive(Clone, Copy, PartialEq)]
enum FusionFault {
    /// Adds `shift × peak` to the first fused value.
    Shift(f32),
    Nan,
    Error,
    /// Always fuses with the complete case's instruction (RADAR).
    IgnoresCase,
}

/// The CPU fusion (UFF or RADAR, from the public pieces), with a fault; records the cases
/// it was asked for.
struct FusionStandIn {
    cfg: ModelConfig,
    tensors: OwnedTensors,
    fault: FusionFault,
    cases: Arc<std::sync::Mutex<Vec<miad::cpu::radar_fusion::Case>>>,
}

impl miad::pipeline::extract::FusionNetwork for FusionStandIn {
    fn forward(
        &mut self,
        xyz: &[f32],
        rgb: &[f32],
        case: miad::cpu::radar_fusion::Case,
        fused: &mut [f32],
    ) -> Result<()> {
        use miad::cpu::radar_fusion as rf;
        self.cases.lock().unwrap().push(case);
        if self.fault == FusionFault::Error {
            return Err(Error::Device(DeviceError::Other(
                "stand-in fusion lost".into(),
            )));
        }
        let fc = self.cfg.fusion.as_ref().unwrap();
        let pool = Pool::new(1);
        let (rgb_grid, xyz_grid) = (
            self.cfg.vit.as_ref().unwrap().grid(),
            self.cfg.preprocess.xyz_grid as usize,
        );
        match &self.cfg.radar {
            Some(rc) => {
                let w = rf::load_weights(&self.tensors, fc, rc)?;
                let mut s = rf::RadarScratch::new(rf::Dims::new(fc, rc, xyz_grid));
                let case = match self.fault {
                    FusionFault::IgnoresCase => rf::Case::Complete,
                    _ => case,
                };
                s.fuse(&pool, &w, xyz, rgb, case, fused);
            }
            None => {
                use miad::cpu::fusion::{fuse, fusion_scratch_len, FusionWeights};
                let w = FusionWeights::load(&self.tensors, fc)?;
                let mut scratch = vec![0f32; fusion_scratch_len(fc, rgb_grid, xyz_grid)];
                fuse(&pool, &w, rgb, rgb_grid, xyz, xyz_grid, fused, &mut scratch);
            }
        }
        let peak = fused.iter().fold(0f32, |m, v| m.max(v.abs()));
        match self.fault {
            FusionFault::Shift(s) => fused[0] += s * peak,
            FusionFault::Nan => fused[1] = f32::NAN,
            _ => {}
        }
        Ok(())
    }
}

type Cases = Arc<std::sync::Mutex<Vec<miad::cpu::radar_fusion::Case>>>;

fn fusion_stand_in(
    cfg: &ModelConfig,
    tensors: &OwnedTensors,
    fault: FusionFault,
) -> (Box<FusionStandIn>, Cases) {
    let cases = Cases::default();
    let net = FusionStandIn {
        cfg: cfg.clone(),
        tensors: tensors.clone(),
        fault,
        cases: cases.clone(),
    };
    (Box::new(net), cases)
}

#[test]
fn a_fusion_is_used_only_when_it_reproduces_the_cpu_fusion_in_every_case() {
    use miad::cpu::radar_fusion::Case;
    let tol = Precision::F32.feature_tolerance();
    let pool = Pool::new(2);
    let (w, h) = (96, 96);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    for radar in [false, true] {
        let mut cfg = ModelConfig::small();
        if radar {
            cfg.radar = Some(miad::config::RadarConfig {
                dim: 32,
                depth: 2,
                heads: 1,
                instruction_len: 4,
                hyper_dim: 16,
                token_grid: cfg.vit.as_ref().unwrap().grid() as u32,
                ln_eps: 1e-5,
                hybrid: true,
            });
        }
        let tensors = random_model(&cfg, 23);
        let dir = crate::common::scratch_dir(&format!("fusion-network-{radar}"));
        let path = dir.join("model.miad");
        miad::format::write_model(&cfg, &tensors, &[], &path).unwrap();
        let model = miad::format::ModelFile::open(&path, &Default::default()).unwrap();
        let mut ex = Extractor::new(&pool, &model, w, h, PreprocessMode::Full).unwrap();
        let mut faults = vec![
            (FusionFault::Shift(10.0 * tol), "differ from the CPU's"),
            (FusionFault::Nan, "NaN"),
            (FusionFault::Error, "stand-in fusion lost"),
        ];
        if radar {
            // Only the other cases' instructions can show this one.
            faults.push((FusionFault::IgnoresCase, "(RgbOnly) differ from the CPU's"));
        }
        for (fault, needle) in faults {
            let (net, _) = fusion_stand_in(&cfg, &tensors, fault);
            let e = ex
                .use_network(&pool, DeviceNetwork::Fusion(net), tol)
                .unwrap_err();
            let self_check = matches!(e, Error::Device(DeviceError::SelfCheck(_)));
            assert_eq!(self_check, fault != FusionFault::Error, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        // A part through the CPU fusion, for reference.
        let view = || RgbView::packed(&rgb, w, h);
        ex.run(&pool, Some(view()), None).unwrap();
        let cpu = ex.fused.clone();

        // Within tolerance: accepted after one pass per case, then used by `run` with the
        // part's case.
        let (net, cases) = fusion_stand_in(&cfg, &tensors, FusionFault::Shift(0.1 * tol));
        let rel = ex
            .use_network(&pool, DeviceNetwork::Fusion(net), tol)
            .unwrap();
        assert!(rel > 0.0 && rel <= tol, "{rel}");
        let checked = if radar {
            vec![Case::Complete, Case::RgbOnly, Case::CloudOnly]
        } else {
            vec![Case::Complete]
        };
        assert_eq!(*cases.lock().unwrap(), checked);
        ex.run(&pool, Some(view()), None).unwrap();
        assert_eq!(cases.lock().unwrap().last(), Some(&Case::RgbOnly));
        let peak = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((ex.fused[0] - cpu[0] - 0.1 * tol * peak).abs() <= 1e-6 * peak);
        assert_eq!(ex.fused[1..], cpu[1..]);
        drop(ex);
        drop(model);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
