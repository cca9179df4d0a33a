//! The Point-MAE encoder against the PyTorch reference (tests/reference/point_reference.py):
//! group features within 1e-4 relative, identical bits for 1 and 2 threads, no allocation.

use miad::backend::Precision;
use miad::config::PointConfig;
use miad::cpu::dense::DensePrecision;
use miad::cpu::point_mae::{
    point_mae_forward, point_mae_forward_with, point_mae_scratch_len, PointMaePacked,
    PointMaeWeights,
};
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

/// The encoder with its dense layers packed once: in f32 the same bits as packing them in
/// every product; in bf16 (AVX512-BF16 CPUs) within `Precision::Bf16.feature_tolerance()`
/// of max |reference| of the PyTorch fixture, further from it than f32 (so the bf16
/// kernels did run), and the same bits for 1 and 2 threads.
#[test]
fn packed_weights_keep_f32_bits_and_bf16_within_its_tolerance() {
    let t = fixture();
    let cfg = PointConfig::small();
    let w = PointMaeWeights::load(&t, &cfg).unwrap();
    let points = get(&t, "ref.points");
    let n = points.len() / 3;
    let idx = |name| -> Vec<u32> { get(&t, name).iter().map(|&v| v as u32).collect() };
    let (centers, groups) = (idx("ref.center_indices"), idx("ref.group_indices"));
    let want = get(&t, "ref.group_features");
    let m = cfg.num_groups as usize;
    let run = |threads: usize, packed: Option<&PointMaePacked>| {
        let pool = Pool::new(threads);
        let mut out = vec![0f32; m * cfg.feature_dim()];
        let mut scratch = vec![0f32; point_mae_scratch_len(&cfg, threads)];
        point_mae_forward_with(
            &pool,
            &cfg,
            &w,
            packed,
            points,
            n,
            &centers,
            &groups,
            &mut out,
            &mut scratch,
        );
        out
    };
    let plain = run(2, None);
    let f32_packed = PointMaePacked::new(&cfg, &w, DensePrecision::F32).expect("f32 packs");
    assert_eq!(plain, run(2, Some(&f32_packed)), "packed f32 changed bits");
    let Some(bf16) = PointMaePacked::new(&cfg, &w, DensePrecision::Bf16) else {
        assert!(!miad::cpu::gemm_bf16::available());
        println!("no AVX512-BF16 on this CPU: the bf16 path is not built, nothing to check");
        return;
    };
    let got = run(1, Some(&bf16));
    assert_eq!(
        got,
        run(2, Some(&bf16)),
        "bf16 bits depend on the thread count"
    );
    let max_err = |out: &[f32]| {
        out.iter()
            .zip(want)
            .fold(0f32, |e, (a, b)| e.max((a - b).abs()))
    };
    let ref_max = want.iter().fold(0f32, |e, v| e.max(v.abs()));
    let (err, f32_err) = (max_err(&got), max_err(&plain));
    let tol = Precision::Bf16.feature_tolerance();
    assert!(
        err <= tol * ref_max,
        "bf16: max error {err} exceeds {tol} × max|ref| {ref_max}"
    );
    assert!(err > f32_err, "bf16 error {err} not above f32's {f32_err}");
    println!(
        "small Point-MAE bf16: max abs error {err:.3e} = {:.3e} of max |ref| (f32 path {:.3e})",
        err / ref_max,
        f32_err / ref_max
    );
}
