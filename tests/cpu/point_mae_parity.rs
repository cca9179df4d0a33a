//! The Point-MAE encoder against the PyTorch reference (tests/reference/point_reference.py):
//! group features within 1e-4 relative, identical bits for 1 and 2 threads, no allocation;
//! the group encoder bit for bit against its layers computed one by one.

use miad::backend::Precision;
use miad::config::PointConfig;
use miad::cpu::dense::DensePrecision;
use miad::cpu::gemm::{linear, Epilogue, Mat};
use miad::cpu::point_mae::{
    group_encoder, group_encoder_scratch_len, point_mae_forward, point_mae_forward_with,
    point_mae_scratch_len, PointMaePacked, PointMaeWeights,
};
use miad::cpu::pool::Pool;
use miad::format::{OwnedTensors, TensorSource};
use miad::util::rng::Rng;

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

/// The group encoder, layer by layer as SPEC §3.3 reads, through whole-matrix products
/// ([`linear`]: conv1 + ReLU, conv2, the max over each group, conv3 as its per-group half
/// plus its per-point half, the group's term + ReLU, conv4, the max): what the encoder
/// computed before its passes were fused and chunked.
fn group_encoder_reference(
    cfg: &PointConfig,
    w: &PointMaeWeights<'_>,
    points: &[f32],
    centers: &[u32],
    groups: &[u32],
) -> Vec<f32> {
    let [c1, c2, c3] = cfg.encoder_widths.map(|v| v as usize);
    let (m, s, d) = (
        cfg.num_groups as usize,
        cfg.group_size as usize,
        cfg.dim as usize,
    );
    let pool = Pool::new(1);
    let rows = m * s;
    let mut rel = vec![0f32; rows * 3];
    for g in 0..m {
        let c = centers[g] as usize;
        for j in 0..s {
            let p = groups[g * s + j] as usize;
            for a in 0..3 {
                rel[(g * s + j) * 3 + a] = points[3 * p + a] - points[3 * c + a];
            }
        }
    }
    let [(w1, b1), (w2, b2), (w3, b3), (w4, b4)] = w.conv;
    let lin = |a: &[f32], k: usize, wt: Mat<'_>, b: Option<&[f32]>, epi: Epilogue| {
        let r = a.len() / k;
        let mut out = vec![0f32; r * wt.rows];
        linear(&pool, Mat::new(a, r, k), wt, b, &mut out, wt.rows, epi);
        out
    };
    let group_max = |h: &[f32], width: usize| -> Vec<f32> {
        let mut out = vec![0f32; m * width];
        for g in 0..m {
            let t = &mut out[g * width..(g + 1) * width];
            t.copy_from_slice(&h[g * s * width..(g * s + 1) * width]);
            for j in 1..s {
                let row = &h[(g * s + j) * width..(g * s + j + 1) * width];
                for (a, &v) in t.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            }
        }
        out
    };
    let h1 = lin(&rel, 3, Mat::new(w1, c1, 3), Some(b1), Epilogue::Relu);
    let h2 = lin(&h1, c1, Mat::new(w2, c2, c1), Some(b2), Epilogue::None);
    let half = |offset: usize| Mat {
        data: &w3[offset..],
        rows: c3,
        cols: c2,
        stride: 2 * c2,
    };
    let gterm = lin(&group_max(&h2, c2), c2, half(0), Some(b3), Epilogue::None);
    let mut h3 = lin(&h2, c2, half(c2), None, Epilogue::None);
    for (r, row) in h3.chunks_exact_mut(c3).enumerate() {
        let g = r / s;
        for (v, &b) in row.iter_mut().zip(&gterm[g * c3..(g + 1) * c3]) {
            *v = (*v + b).max(0.0);
        }
    }
    let h4 = lin(&h3, c3, Mat::new(w4, d, c3), Some(b4), Epilogue::None);
    group_max(&h4, d)
}

/// The fused, chunked group encoder gives the bits of its layers one by one
/// ([`group_encoder_reference`]), with weights packed or not, on 1 and 2 threads: groups
/// of 40 points (not a divisor of the encoder's chunk of rows, so groups straddle
/// chunks) and a group count that leaves the last task short.
#[test]
fn group_encoder_gives_the_bits_of_its_layers_one_by_one() {
    let t = fixture();
    let mut cfg = PointConfig::small();
    cfg.group_size = 40;
    cfg.num_groups = 21;
    let w = PointMaeWeights::load(&t, &cfg).unwrap();
    let n = 700;
    let mut rng = Rng::new(9);
    let points: Vec<f32> = (0..3 * n).map(|_| rng.normal()).collect();
    let (m, s, d) = (
        cfg.num_groups as usize,
        cfg.group_size as usize,
        cfg.dim as usize,
    );
    let centers: Vec<u32> = (0..m).map(|_| rng.below(n as u64) as u32).collect();
    let groups: Vec<u32> = (0..m * s).map(|_| rng.below(n as u64) as u32).collect();
    let want = group_encoder_reference(&cfg, &w, &points, &centers, &groups);
    let packed = PointMaePacked::new(&cfg, &w, DensePrecision::F32).expect("f32 packs");
    for threads in [1usize, 2] {
        let pool = Pool::new(threads);
        for p in [None, Some(&packed)] {
            let mut x = vec![f32::NAN; m * d];
            let mut scratch = vec![f32::NAN; group_encoder_scratch_len(&cfg, threads)];
            group_encoder(
                &pool,
                &cfg,
                &w,
                p,
                &points,
                n,
                &centers,
                &groups,
                &mut x,
                &mut scratch,
            );
            assert!(
                x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} thread(s), packed {}: bits differ from the layer-by-layer encoder",
                p.is_some()
            );
        }
    }
}
