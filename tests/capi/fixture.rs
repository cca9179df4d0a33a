//! Files and parts shared by the C ABI tests: a small random model, a bank file of random
//! features for it (the engine only needs the right shapes) with RADAR statistics for the
//! RGB-only case, a second model the bank does not belong to, and a synthetic part.

#![allow(dead_code)]

use miad::config::{BankConfig, ModelConfig, PointConfig, VitConfig};
use miad::cpu::bank_prune::BankPartition;
use miad::cpu::bank_search::BankView;
use miad::cpu::pool::Pool;
use miad::engine::{Case, CaseDecision};
use miad::format::{random_model, write_model, Writer};
use miad::pipeline::score::add_partition;
use miad::util::rng::Rng;
use std::path::{Path, PathBuf};

pub const W: usize = 150;
pub const H: usize = 120;
/// Side of the anomaly map of the test bank.
pub const MAP: usize = 64;

pub struct Files {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub bank: PathBuf,
    /// A valid model file of other weights: `bank` does not belong to it.
    pub other_model: PathBuf,
}

/// The scratch folder of the tag (see `common::scratch`).
pub fn tmpdir(tag: &str) -> PathBuf {
    crate::common::scratch_dir(&format!("capi-{tag}"))
}

/// Random normalised rows and their squared norms.
fn bank_rows(rng: &mut Rng, rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut data = vec![0f32; rows * dim];
    rng.fill_normal(&mut data, 1.0);
    let norms = data
        .chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    (data, norms)
}

/// A bank file for a `ModelConfig::small()` model of identity `model_id`.
pub fn write_bank(model_id: [u8; 16], path: &Path) {
    let (vit, point) = (VitConfig::small(), PointConfig::small());
    let rgb_dim = vit.dim as usize;
    let xyz_dim = point.feature_dim();
    let fused_dim = rgb_dim + xyz_dim;
    let mut cfg = BankConfig::empty(model_id, "small", "capi_widget");
    let rows = 192;
    cfg.rgb_rows = rows as u32;
    cfg.xyz_rows = rows as u32;
    cfg.fused_rows = rows as u32;
    cfg.rgb_dim = rgb_dim as u32;
    cfg.xyz_dim = xyz_dim as u32;
    cfg.fused_dim = fused_dim as u32;
    cfg.rgb_grid = vit.grid() as u32;
    cfg.xyz_grid = 16;
    cfg.map_size = MAP as u32;
    cfg.blur_sigma = 4.0;
    cfg.score_weights = [1.0, 0.1, 1.0];
    cfg.part_svm.w = [1.0; 3];
    cfg.pixel_svm.w = [1.0; 3];
    cfg.thresholds.part = 1.0;
    cfg.thresholds.pixel = 1.0;
    let mut rng = Rng::new(11);
    let mut w = Writer::bank(cfg);
    let pool = Pool::new(2);
    for (b, (name, dim)) in [("xyz", xyz_dim), ("rgb", rgb_dim), ("fused", fused_dim)]
        .into_iter()
        .enumerate()
    {
        let (data, norms) = bank_rows(&mut rng, rows, dim);
        w.add_f32(format!("bank.{name}"), &[rows, dim], &data);
        w.add_f32(format!("bank.{name}_norms"), &[rows], &norms);
        // The partition of the pruned search, as the fit stores it.
        let view = BankView::new(&data, &norms, dim);
        let part = BankPartition::build(&pool, view, BankPartition::clusters_for(rows))
            .expect("a partition of the fixture bank");
        add_partition(&mut w, b, &part, dim);
    }
    // RADAR statistics for the RGB-only case (not for cloud-only): the distance to the
    // origin with identity precision, no re-scaling.
    let [mean, precision, threshold, pixel_w, pixel_threshold, score_affine, map_affine] =
        CaseDecision::tensor_names(Case::RgbOnly);
    let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    w.add_f32(mean, &[3], &[0.0; 3])
        .add_f32(precision, &[3, 3], &identity)
        .add_f32(threshold, &[1], &[1.0])
        .add_f32(pixel_w, &[3], &[0.0, 1.0, 1.0])
        .add_f32(pixel_threshold, &[1], &[1.0])
        .add_f32(score_affine, &[2], &[1.0, 0.0])
        .add_f32(map_affine, &[2], &[1.0, 0.0]);
    w.write(path).expect("write the bank file");
}

pub fn files(tag: &str) -> Files {
    let dir = tmpdir(tag);
    let cfg = ModelConfig::small();
    let model = dir.join("small.miad");
    let id = write_model(&cfg, &random_model(&cfg, 1), &[], &model).expect("write model");
    let other_model = dir.join("other.miad");
    write_model(&cfg, &random_model(&cfg, 2), &[], &other_model).expect("write model");
    let bank = dir.join("small.bank");
    write_bank(id, &bank);
    Files {
        dir,
        model,
        bank,
        other_model,
    }
}

/// A tilted plane with a dome on it, `W × H`, and a noisy RGB image of it.
pub fn part() -> (Vec<u8>, Vec<f32>) {
    let mut rng = Rng::new(2);
    let mut cloud = vec![0f32; W * H * 3];
    let mut rgb = vec![0u8; W * H * 3];
    for r in 0..H {
        for c in 0..W {
            let (x, y) = (c as f32 * 0.001, r as f32 * 0.001);
            let (u, v) = ((c as f32 - 75.0) / 40.0, (r as f32 - 60.0) / 35.0);
            let mut z = 0.4 + 0.05 * x;
            if u * u + v * v < 1.0 {
                z += 0.03 * (1.0 - u * u - v * v).sqrt() + 0.02;
            }
            let i = 3 * (r * W + c);
            cloud[i..i + 3].copy_from_slice(&[x, y, z]);
            for ch in 0..3 {
                rgb[i + ch] = (rng.below(200) + 20) as u8;
            }
        }
    }
    (rgb, cloud)
}
