//! The extractor's gates for networks run by another backend (the CUDA ViT and point
//! branch): each is accepted only when it reproduces the CPU on a probe input (the ViT on
//! the pseudo input, the point branch on a probe cloud), and then it is what `run` uses.
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
use miad::pipeline::extract::{Extractor, PointNetwork, PointOutputs, RgbNetwork};

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
        let e = ex.use_rgb_network(net, RGB_NETWORK_TOLERANCE).unwrap_err();
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
    let rel = ex.use_rgb_network(net, RGB_NETWORK_TOLERANCE).unwrap();
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
            .use_point_network(&pool, net, POINT_NETWORK_TOLERANCE)
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
        .use_point_network(&pool, net, POINT_NETWORK_TOLERANCE)
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
