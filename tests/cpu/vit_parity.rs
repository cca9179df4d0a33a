//! The RGB branch's ViT against the timm reference (tests/reference/vit_reference.py,
//! fixture tests/fixtures/vit_small.safetensors: timm's `vit_base_patch8_224.dino`
//! architecture resized to `VitConfig::small()`, seeded random weights, reference output
//! computed in float64): max abs error ≤ 1e-4 × max |reference|, and identical bits for
//! 1 and 2 threads and over repeated runs.
//!
//! Full size: `tests/reference/vit_reference.py --full` writes a ViT-B/8 fixture (not
//! committed); `MIAD_VIT_FULL_FIXTURE=/tmp/miad_vit_full.safetensors cargo test --test
//! vit_parity -- --nocapture` checks it too and prints the error.

use miad::config::VitConfig;
use miad::cpu::dense::DensePrecision;
use miad::cpu::pool::Pool;
use miad::cpu::vit::{vit_forward, vit_forward_with, vit_scratch_len, VitWeights};
use miad::format::{OwnedTensors, TensorSource};
use std::path::Path;

const REL_TOL: f32 = 1e-4;

fn get<'a>(t: &'a OwnedTensors, name: &str) -> &'a [f32] {
    let (shape, _) = &t.tensors[name];
    t.f32(name, shape).unwrap()
}

fn forward(pool: &Pool, cfg: &VitConfig, w: &VitWeights<'_>, input: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
    let mut scratch = vec![0f32; vit_scratch_len(cfg, pool.threads())];
    vit_forward(pool, cfg, w, input, &mut out, &mut scratch).unwrap();
    out
}

/// (max abs error, max |reference|, index of the worst element).
fn max_error(got: &[f32], want: &[f32]) -> (f32, f32, usize) {
    assert_eq!(got.len(), want.len(), "output length");
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(a.is_finite(), "non-finite output at {i}: {a}");
        let e = (a - b).abs();
        if e > worst.0 {
            worst = (e, i);
        }
    }
    let ref_max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    (worst.0, ref_max, worst.1)
}

/// Runs the fixture with 1 and 2 threads (twice each), checks the bounds, returns
/// (max abs error, max |reference|).
fn check_fixture(path: &Path, cfg: &VitConfig) -> (f32, f32) {
    let t = OwnedTensors::from_safetensors_file(path).expect("fixture");
    let w = VitWeights::load(&t, cfg).expect("fixture weights");
    let input = get(&t, "input");
    let want = get(&t, "output");
    let s = cfg.image_size as usize;
    assert_eq!(
        input.len(),
        cfg.in_chans as usize * s * s,
        "fixture input size"
    );
    assert_eq!(
        want.len(),
        cfg.patches() * cfg.dim as usize,
        "fixture output size"
    );

    let pool1 = Pool::new(1);
    let first = forward(&pool1, cfg, &w, input);
    let (err, ref_max, at) = max_error(&first, want);
    assert!(ref_max > 0.5, "degenerate reference: max |ref| = {ref_max}");
    assert!(
        err <= REL_TOL * ref_max,
        "{}: max abs error {err} at {at} ({} vs {}) exceeds {REL_TOL} × max|ref| {ref_max}",
        path.display(),
        first[at],
        want[at]
    );
    assert_eq!(
        first,
        forward(&pool1, cfg, &w, input),
        "a second run differs"
    );
    let pool2 = Pool::new(2);
    for _ in 0..2 {
        assert_eq!(
            first,
            forward(&pool2, cfg, &w, input),
            "2 threads give other bits than 1"
        );
    }
    // The weights packed once (as the engine runs them) give the same bits.
    let packed = w.packed(cfg, DensePrecision::F32).expect("f32 packs");
    let mut out = vec![0f32; first.len()];
    let mut scratch = vec![0f32; vit_scratch_len(cfg, 2)];
    vit_forward_with(&pool2, cfg, &w, &packed, input, &mut out, &mut scratch).unwrap();
    assert_eq!(first, out, "packed f32 weights give other bits");
    (err, ref_max)
}

#[test]
fn small_vit_matches_timm_and_is_deterministic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_small.safetensors");
    let (err, ref_max) = check_fixture(&path, &VitConfig::small());
    println!(
        "small ViT: max abs error {err:.3e}, max |ref| {ref_max:.4}, ratio {:.3e}",
        err / ref_max
    );
}

#[test]
fn full_vit_b8_matches_timm_when_the_fixture_is_given() {
    let Some(path) = std::env::var_os("MIAD_VIT_FULL_FIXTURE") else {
        println!("MIAD_VIT_FULL_FIXTURE not set: full-size ViT-B/8 parity skipped");
        return;
    };
    let (err, ref_max) = check_fixture(Path::new(&path), &VitConfig::base8());
    println!(
        "ViT-B/8 224×224: max abs error {err:.3e}, max |ref| {ref_max:.4}, ratio {:.3e}",
        err / ref_max
    );
}

/// The bf16 path (`--precision bf16` on the CPU: the blocks' dense layers through
/// AVX512-BF16) against the float64 timm reference: max abs error within the bf16
/// feature tolerance (`Precision::Bf16.feature_tolerance()`, 1e-2 × max |reference|, the
/// bound the CUDA bf16 path is held to), identical bits for 1 and 2 threads, and further
/// from the reference than the f32 path (so the bf16 kernels did run).
#[test]
fn small_vit_bf16_path_is_within_its_tolerance_and_deterministic() {
    if !miad::cpu::gemm_bf16::available() {
        println!("no AVX512-BF16 on this CPU: the bf16 path is not built, nothing to check");
        return;
    }
    let cfg = VitConfig::small();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_small.safetensors");
    let t = OwnedTensors::from_safetensors_file(&path).expect("fixture");
    let w = VitWeights::load(&t, &cfg).expect("fixture weights");
    let bf16 = w
        .packed(&cfg, DensePrecision::Bf16)
        .expect("AVX512-BF16 present");
    let (input, want) = (get(&t, "input"), get(&t, "output"));
    let forward_bf16 = |pool: &Pool| {
        let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
        let mut scratch = vec![0f32; vit_scratch_len(&cfg, pool.threads())];
        vit_forward_with(pool, &cfg, &w, &bf16, input, &mut out, &mut scratch).unwrap();
        out
    };
    let pool1 = Pool::new(1);
    let got = forward_bf16(&pool1);
    let (err, ref_max, at) = max_error(&got, want);
    let tol = miad::backend::Precision::Bf16.feature_tolerance();
    assert!(
        err <= tol * ref_max,
        "bf16: max abs error {err} at {at} exceeds {tol} × max|ref| {ref_max}"
    );
    let (f32_err, _, _) = max_error(&forward(&pool1, &cfg, &w, input), want);
    assert!(
        err > f32_err,
        "bf16 error {err} not above the f32 path's {f32_err}"
    );
    assert_eq!(got, forward_bf16(&Pool::new(2)), "threads");
    println!(
        "small ViT bf16: max abs error {err:.3e}, max |ref| {ref_max:.4}, ratio {:.3e} (f32 path {:.3e})",
        err / ref_max,
        f32_err / ref_max
    );
}
