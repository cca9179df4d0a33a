//! The Point-MAE encoder against the PyTorch reference (tests/reference/point_reference.py):
//! group features within 1e-4 relative, identical bits for 1 and 2 threads, no allocation.

use miad::config::PointConfig;
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::format::{OwnedTensors, TensorSource};

fn fixture() -> OwnedTensors {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/point_small.safetensors");
    OwnedTensors::from_safetensors_file(&path).expect("fixture")
}

fn get<'a>(t: &'a OwnedTensors, name: &str) -> &'a [f32] {
    let (shape, _) = &t.tensors[name];
    t.f32(name, shape).unwrap()
}

#[test]
fn group_features_match_pytorch() {
    let t = fixture();
    let cfg = PointConfig::small();
    let w = PointMaeWeights::load(&t, &cfg).unwrap();
    let points = get(&t, "ref.points");
    let n = points.len() / 3;
    let centers: Vec<u32> = get(&t, "ref.center_indices")
        .iter()
        .map(|&v| v as u32)
        .collect();
    let groups: Vec<u32> = get(&t, "ref.group_indices")
        .iter()
        .map(|&v| v as u32)
        .collect();
    let want = get(&t, "ref.group_features");
    let m = cfg.num_groups as usize;
    let mut first: Option<Vec<f32>> = None;
    for threads in [1usize, 2] {
        let pool = Pool::new(threads);
        let mut out = vec![0f32; m * cfg.feature_dim()];
        let mut scratch = vec![0f32; point_mae_scratch_len(&cfg, threads)];
        point_mae_forward(
            &pool,
            &cfg,
            &w,
            points,
            n,
            &centers,
            &groups,
            &mut out,
            &mut scratch,
        );
        let mut worst = 0f32;
        for (a, b) in out.iter().zip(want) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
        assert!(worst <= 1e-4, "relative error {worst}");
        match &first {
            None => first = Some(out),
            Some(f) => assert_eq!(f, &out, "bits depend on the thread count"),
        }
    }
}

#[test]
fn missing_or_misshapen_weights_are_errors() {
    let t = fixture();
    let mut cfg = PointConfig::small();
    cfg.dim = 64;
    assert!(PointMaeWeights::load(&t, &cfg).is_err());
    let mut cfg = PointConfig::small();
    cfg.out_layers = vec![5];
    assert!(PointMaeWeights::load(&t, &cfg).is_err());
    let mut partial = t.clone();
    partial.tensors.remove("point.encoder.conv3.weight");
    assert!(PointMaeWeights::load(&partial, &PointConfig::small()).is_err());
}
