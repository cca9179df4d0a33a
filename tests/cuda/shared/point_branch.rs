//! The CPU point branch, a temporary model file and the GPU check, for the parity tests
//! (tests/cuda/point_branch.rs) and the bench (bench/cuda/point_branch.rs).

use std::path::PathBuf;

use miad::backend::Precision;
use miad::config::ModelConfig;
use miad::cpu::fps::{farthest_point_sample, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::cuda::device::gemm::cublaslt_present;
use miad::cuda::Device;
use miad::format::{random_model, write_model, ModelFile, OpenOptions};
use miad::pipeline::extract::PointOutputs;

pub const POINT_NETWORK_TOLERANCE: f32 = Precision::F32.feature_tolerance();

/// A model file in a temp folder, removed on drop.
pub struct TempModel {
    dir: PathBuf,
    pub model: ModelFile,
}

impl TempModel {
    /// A random model of `cfg` written to `dir` (made anew) and opened.
    pub fn new(dir: PathBuf, cfg: &ModelConfig, seed: u64) -> TempModel {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.miad");
        write_model(cfg, &random_model(cfg, seed), &[], &path).unwrap();
        let model = ModelFile::open(&path, &OpenOptions::default()).unwrap();
        TempModel { dir, model }
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One part's point-branch results.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub centers: Vec<u32>,
    pub groups: Vec<u32>,
    pub xyz: Vec<f32>,
}

impl Branch {
    pub fn zeros(cfg: &ModelConfig) -> Branch {
        let pc = cfg.point.as_ref().unwrap();
        let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
        let g = cfg.preprocess.xyz_grid as usize;
        Branch {
            centers: vec![0; m],
            groups: vec![0; m * k],
            xyz: vec![0.0; g * g * pc.feature_dim()],
        }
    }
    pub fn outputs(&mut self) -> PointOutputs<'_> {
        PointOutputs {
            centers: &mut self.centers,
            groups: &mut self.groups,
            xyz: &mut self.xyz,
        }
    }
}

/// The CPU point branch, the calls of `Extractor::point_branch` in its order.
pub fn cpu_branch(
    pool: &Pool,
    model: &ModelFile,
    points: &[f32],
    n: usize,
    pixels: &[u32],
) -> Branch {
    let cfg = model.config();
    let pc = cfg.point.as_ref().unwrap();
    let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
    let s = cfg.preprocess.image_size as usize;
    let threads = pool.threads();
    let len = fps_scratch_len(s * s)
        .max(knn_scratch_len(s * s, k, threads))
        .max(point_mae_scratch_len(pc, threads))
        .max(pfa_scratch_len(&cfg.preprocess, m, s * s, threads));
    let mut scratch = vec![0f32; len];
    let w = PointMaeWeights::load(model, pc).unwrap();
    let mut out = Branch::zeros(cfg);
    farthest_point_sample(points, n, m, &mut out.centers, &mut scratch);
    group_knn(
        pool,
        points,
        n,
        &out.centers,
        k,
        &mut out.groups,
        &mut scratch,
    );
    let center_xyz: Vec<f32> = out
        .centers
        .iter()
        .flat_map(|&i| points[3 * i as usize..3 * i as usize + 3].to_vec())
        .collect();
    let mut features = vec![0f32; m * pc.feature_dim()];
    point_mae_forward(
        pool,
        pc,
        &w,
        points,
        n,
        &out.centers,
        &out.groups,
        &mut features,
        &mut scratch,
    );
    point_feature_align(
        pool,
        &cfg.preprocess,
        points,
        n,
        pixels,
        &center_xyz,
        &features,
        pc.feature_dim(),
        &mut out.xyz,
        &mut scratch,
    );
    out
}

/// max |Δ| / max |ref|; panics on a non-finite value.
pub fn rel_max(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut r) = (0f32, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "xyz feature {i} is {g}");
        d = d.max((g - w).abs());
        r = r.max(w.abs());
    }
    assert!(r > 0.0, "all-zero reference");
    d / r
}

pub fn check(what: &str, got: &Branch, want: &Branch) -> f32 {
    check_within(what, got, want, POINT_NETWORK_TOLERANCE)
}

/// [`check`] with xyz features within `tol` (max |Δ| / max |ref|).
pub fn check_within(what: &str, got: &Branch, want: &Branch, tol: f32) -> f32 {
    assert!(got.centers == want.centers, "{what}: centers differ");
    if got.groups != want.groups {
        let i = got
            .groups
            .iter()
            .zip(&want.groups)
            .position(|(a, b)| a != b)
            .unwrap();
        let k = got.groups.len() / got.centers.len();
        panic!(
            "{what}: groups differ first at group {} member {}: {} vs {}",
            i / k,
            i % k,
            got.groups[i],
            want.groups[i]
        );
    }
    let rel = rel_max(&got.xyz, &want.xyz);
    println!("{what}: centers and groups identical, xyz max|Δ|/max|ref| {rel:.3e}");
    assert!(
        rel <= tol,
        "{what}: xyz features differ by {rel:.3e} (tolerance {tol:e})"
    );
    rel
}

/// `ModelConfig::m3dm()` without the ViT and the fusion (a smaller file).
pub fn m3dm_point() -> ModelConfig {
    ModelConfig {
        name: "m3dm-point".into(),
        vit: None,
        fusion: None,
        ..ModelConfig::m3dm()
    }
}

/// Whether a GPU with cuBLASLt is here; prints the SKIP line when not.
pub fn gpu(test: &str) -> bool {
    match Device::new(0) {
        Ok(d) if cublaslt_present() => {
            eprintln!("cuda_point_branch {test}: {} (sm_{})", d.name, d.sm());
            true
        }
        Ok(d) => {
            eprintln!(
                "cuda_point_branch {test}: SKIP, {} has a driver but the cuBLASLt library cannot be loaded",
                d.name
            );
            false
        }
        Err(e) => {
            eprintln!("cuda_point_branch {test}: SKIP, no usable GPU: {e}");
            false
        }
    }
}
/// Points of an organized scan in row-major pixel order, pixels 0..n of a `side`-wide
/// map: a wavy surface (what preprocessing produces for a large part).
pub fn scan_points(n: usize, side: usize) -> (Vec<f32>, Vec<u32>) {
    let pts = (0..n)
        .flat_map(|q| {
            let (r, c) = ((q / side) as f32, (q % side) as f32);
            let (x, y) = (c * 4.5e-4, r * 4.5e-4);
            [x, y, 0.5 + 0.01 * (40.0 * x).sin() * (30.0 * y).cos()]
        })
        .collect();
    (pts, (0..n as u32).collect())
}
