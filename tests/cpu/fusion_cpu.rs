//! Fusion (SPEC §5) against an f64 reference computed here from the same random weights.

use miad::backend::Precision;
use miad::config::FusionConfig;
use miad::cpu::dense::DensePrecision;
use miad::cpu::fusion::{
    adaptive_avg_pool, fuse, fuse_with, fusion_scratch_len, FusionPacked, FusionWeights,
};
use miad::cpu::pool::Pool;
use miad::format::{random_model, OwnedTensors, TensorSource};
use miad::util::rng::Rng;

fn small_cfg() -> FusionConfig {
    FusionConfig {
        rgb_dim: 24,
        xyz_dim: 40,
        mlp_ratio: 4,
        ln_eps: 1e-5,
        head_dim: 8,
    }
}

fn weights(cfg: &FusionConfig, seed: u64) -> OwnedTensors {
    let mut m = miad::config::ModelConfig::small();
    m.fusion = Some(cfg.clone());
    random_model(&m, seed)
}

fn ln_mlp_f64(
    src: &OwnedTensors,
    prefix: &str,
    x: &[f32],
    d: usize,
    h: usize,
    eps: f64,
) -> Vec<f64> {
    let g = |n: &str, s: &[usize]| src.f32(&format!("fusion.{prefix}{n}"), s).unwrap().to_vec();
    let (nw, nb) = (g("_norm.weight", &[d]), g("_norm.bias", &[d]));
    let (w1, b1) = (g("_mlp.fc1.weight", &[h, d]), g("_mlp.fc1.bias", &[h]));
    let (w2, b2) = (g("_mlp.fc2.weight", &[d, h]), g("_mlp.fc2.bias", &[d]));
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
    let n: Vec<f64> = (0..d)
        .map(|i| (x[i] as f64 - mean) / (var + eps).sqrt() * nw[i] as f64 + nb[i] as f64)
        .collect();
    let hid: Vec<f64> = (0..h)
        .map(|o| {
            let z = b1[o] as f64 + (0..d).map(|i| w1[o * d + i] as f64 * n[i]).sum::<f64>();
            0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
        })
        .collect();
    (0..d)
        .map(|o| b2[o] as f64 + (0..h).map(|i| w2[o * h + i] as f64 * hid[i]).sum::<f64>())
        .collect()
}

#[test]
fn fused_features_match_f64_reference() {
    let cfg = small_cfg();
    let src = weights(&cfg, 3);
    let w = FusionWeights::load(&src, &cfg).unwrap();
    let (rg, xg) = (4usize, 8usize);
    let (r, x) = (cfg.rgb_dim as usize, cfg.xyz_dim as usize);
    let mut rng = Rng::new(9);
    let mut rgb = vec![0f32; rg * rg * r];
    let mut xyz = vec![0f32; xg * xg * x];
    rng.fill_normal(&mut rgb, 1.0);
    rng.fill_normal(&mut xyz, 2.0);
    let fd = r + x;
    let mut out = vec![f32::NAN; xg * xg * fd];
    let mut scratch = vec![0f32; fusion_scratch_len(&cfg, rg, xg)];
    let pool = Pool::new(2);
    fuse(&pool, &w, &rgb, rg, &xyz, xg, &mut out, &mut scratch);

    // Reference: pool the RGB grid first (PyTorch adaptive pooling), then per row.
    let mut rgb56 = vec![0f32; xg * xg * r];
    adaptive_avg_pool(&rgb, rg, r, xg, &mut rgb56);
    let mut worst = 0f64;
    for j in 0..xg * xg {
        let a = ln_mlp_f64(&src, "xyz", &xyz[j * x..(j + 1) * x], x, 4 * x, 1e-5);
        let b = ln_mlp_f64(&src, "rgb", &rgb56[j * r..(j + 1) * r], r, 4 * r, 1e-5);
        for (k, want) in a.iter().chain(b.iter()).enumerate() {
            let got = out[j * fd + k] as f64;
            worst = worst.max((got - want).abs() / (1.0 + want.abs()));
        }
    }
    assert!(worst < 1e-4, "worst relative error {worst}");
}

#[test]
fn adaptive_pool_repeats_cells_and_averages_when_shrinking() {
    // 2×2 → 4×4: each cell repeated 2×2.
    let g = [1.0f32, 2.0, 3.0, 4.0];
    let mut out = [0f32; 16];
    adaptive_avg_pool(&g, 2, 1, 4, &mut out);
    assert_eq!(
        out,
        [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
    );
    // 3×3 → 2×2: overlapping PyTorch bins [0,2) and [1,3).
    let g: Vec<f32> = (0..9).map(|v| v as f32).collect();
    let mut out = [0f32; 4];
    adaptive_avg_pool(&g, 3, 1, 2, &mut out);
    assert_eq!(out, [2.0, 3.0, 5.0, 6.0]);
}

#[test]
fn fusion_bits_do_not_depend_on_threads_and_missing_weights_are_errors() {
    let cfg = small_cfg();
    let src = weights(&cfg, 4);
    let w = FusionWeights::load(&src, &cfg).unwrap();
    let (rg, xg) = (2usize, 4usize);
    let (r, x) = (cfg.rgb_dim as usize, cfg.xyz_dim as usize);
    let mut rng = Rng::new(1);
    let mut rgb = vec![0f32; rg * rg * r];
    let mut xyz = vec![0f32; xg * xg * x];
    rng.fill_normal(&mut rgb, 1.0);
    rng.fill_normal(&mut xyz, 1.0);
    let run = |t| {
        let mut out = vec![0f32; xg * xg * (r + x)];
        let mut s = vec![0f32; fusion_scratch_len(&cfg, rg, xg)];
        fuse(&Pool::new(t), &w, &rgb, rg, &xyz, xg, &mut out, &mut s);
        out
    };
    assert_eq!(run(1), run(3));
    let mut broken = src.clone();
    broken.tensors.remove("fusion.rgb_mlp.fc2.bias");
    assert!(FusionWeights::load(&broken, &cfg).is_err());
}

/// UFF with its MLPs packed once: in f32 the same bits as packing them in every product;
/// in bf16 (AVX512-BF16 CPUs) within `Precision::Bf16.feature_tolerance()` of max |f32|
/// and deterministic over thread counts.
#[test]
fn packed_fusion_keeps_f32_bits_and_bf16_within_its_tolerance() {
    let cfg = FusionConfig {
        rgb_dim: 96,
        xyz_dim: 160,
        ..small_cfg()
    };
    let src = weights(&cfg, 5);
    let w = FusionWeights::load(&src, &cfg).unwrap();
    let (rg, xg) = (4usize, 8usize);
    let (r, x) = (cfg.rgb_dim as usize, cfg.xyz_dim as usize);
    let mut rng = Rng::new(2);
    let mut rgb = vec![0f32; rg * rg * r];
    let mut xyz = vec![0f32; xg * xg * x];
    rng.fill_normal(&mut rgb, 1.0);
    rng.fill_normal(&mut xyz, 1.0);
    let run = |t, packed: Option<&FusionPacked>| {
        let mut out = vec![0f32; xg * xg * (r + x)];
        let mut s = vec![0f32; fusion_scratch_len(&cfg, rg, xg)];
        let pool = Pool::new(t);
        fuse_with(&pool, &w, packed, &rgb, rg, &xyz, xg, &mut out, &mut s);
        out
    };
    let plain = run(2, None);
    let f32_packed = FusionPacked::new(&w, DensePrecision::F32).expect("f32 packs");
    assert_eq!(plain, run(2, Some(&f32_packed)), "packed f32 changed bits");
    let Some(bf16) = FusionPacked::new(&w, DensePrecision::Bf16) else {
        assert!(!miad::cpu::gemm_bf16::available());
        println!("no AVX512-BF16 on this CPU: the bf16 path is not built, nothing to check");
        return;
    };
    let got = run(1, Some(&bf16));
    assert_eq!(
        got,
        run(3, Some(&bf16)),
        "bf16 bits depend on the thread count"
    );
    let ref_max = plain.iter().fold(0f32, |e, v| e.max(v.abs()));
    let err = got
        .iter()
        .zip(&plain)
        .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
    let tol = Precision::Bf16.feature_tolerance();
    assert!(err > 0.0, "the bf16 kernels did not run");
    assert!(
        err <= tol * ref_max,
        "bf16: max |Δ| {err} exceeds {tol} × max|f32| {ref_max}"
    );
    println!(
        "UFF bf16 vs f32: max |Δ| {err:.3e} = {:.3e} of max |f32|",
        err / ref_max
    );
}

/// The xyz rows that are all +0.0 go through the MLP once and are copied (`fusion.rs`):
/// the output must be the bits of computing every row. Rows of -0.0 are not skipped but
/// normalise to the same input as +0.0 rows, so a grid with its zero rows negated is the
/// full computation. The grid spans more than one chunk of `CHUNK_ROWS` rows, and the
/// zero rows' output also matches the f64 reference.
#[test]
fn zero_xyz_rows_computed_once_give_the_bits_of_every_row() {
    let cfg = small_cfg();
    let src = weights(&cfg, 6);
    let w = FusionWeights::load(&src, &cfg).unwrap();
    let (rg, xg) = (12usize, 24usize);
    assert!(xg * xg > miad::cpu::fusion::CHUNK_ROWS);
    let (r, x) = (cfg.rgb_dim as usize, cfg.xyz_dim as usize);
    let mut rng = Rng::new(7);
    let mut rgb = vec![0f32; rg * rg * r];
    let mut xyz = vec![0f32; xg * xg * x];
    rng.fill_normal(&mut rgb, 1.0);
    rng.fill_normal(&mut xyz, 1.0);
    let zero_rows: Vec<usize> = (0..xg * xg).filter(|j| (j * 7 + j / 5) % 10 < 7).collect();
    let mut negated = xyz.clone();
    for &j in &zero_rows {
        xyz[j * x..(j + 1) * x].fill(0.0);
        negated[j * x..(j + 1) * x].fill(-0.0);
    }
    let run = |t, xyz: &[f32], packed: Option<&FusionPacked>| {
        let mut out = vec![f32::NAN; xg * xg * (r + x)];
        let mut s = vec![0f32; fusion_scratch_len(&cfg, rg, xg)];
        fuse_with(
            &Pool::new(t),
            &w,
            packed,
            &rgb,
            rg,
            xyz,
            xg,
            &mut out,
            &mut s,
        );
        out
    };
    let skipped = run(2, &xyz, None);
    assert_eq!(
        skipped,
        run(2, &negated, None),
        "f32: skipping zero rows changed bits"
    );
    assert_eq!(skipped, run(1, &xyz, None), "f32: bits depend on threads");
    let want = ln_mlp_f64(&src, "xyz", &vec![0f32; x], x, 4 * x, 1e-5);
    let fd = r + x;
    for &j in &zero_rows {
        for (k, want) in want.iter().enumerate() {
            let got = skipped[j * fd + k] as f64;
            assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "row {j}");
        }
    }
    if let Some(bf16) = FusionPacked::new(&w, DensePrecision::Bf16) {
        let skipped = run(2, &xyz, Some(&bf16));
        assert_eq!(skipped, run(2, &negated, Some(&bf16)), "bf16: bits changed");
    }
}
