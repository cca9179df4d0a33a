//! The extractor's gate for an RGB network run by another backend (the CUDA ViT): it is
//! accepted only when it reproduces the CPU ViT on the pseudo input, and then it is what
//! `run` uses. Checked here with stand-in networks on the CPU (no GPU needed).

use miad::config::ModelConfig;
use miad::cpu::pool::Pool;
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::format::{random_model, OwnedTensors};
use miad::pipeline::extract::{Extractor, RgbNetwork, RGB_NETWORK_TOLERANCE};
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::PreprocessMode;
use miad::{Error, Result};
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
            return Err(Error::Cuda("stand-in device lost".into()));
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

#[test]
fn a_network_is_used_only_when_it_reproduces_the_cpu_vit() {
    let (cfg, tensors) = setup();
    let dir = std::env::temp_dir().join(format!("miad-rgb-network-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.miad");
    miad::format::write_model(&cfg, &tensors, &[], &path).unwrap();
    let model = miad::format::ModelFile::open(&path, &Default::default()).unwrap();
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
        let e = ex.use_rgb_network(net).unwrap_err().to_string();
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
    let rel = ex.use_rgb_network(net).unwrap();
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
