//! A tiny fitted category for the engine tests: a synthetic dataset, a small model with
//! seeded random weights, and a bank fitted on it, in a fresh scratch folder
//! ([`scratch_dir`], the folder helper of every test binary).

#![allow(dead_code)]

use miad::config::ModelConfig;
use miad::eval::synth::{write_dataset, Category, SynthOptions};
use miad::fit::banks::FitOptions;
use miad::fit::category::{fit_category, CategoryFit};
use miad::format::{random_model, write_model};
use std::path::PathBuf;

pub mod scratch;
pub use scratch::scratch_dir;

pub struct Fixture {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub bank: PathBuf,
    pub category: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `train` training parts and `test` good plus `test` defective test parts of one
/// category at 96×96, fitted with [`ModelConfig::small`].
pub fn fitted(name: &str, category: Category, seed: u64, train: usize, test: usize) -> Fixture {
    fitted_with(ModelConfig::small(), name, category, seed, train, test)
}

/// A reduced M3DM-shaped model for the device path: [`ModelConfig::small`] with the real
/// head dimension 64 in both transformers (M3DM's, and the device attention kernels'
/// main size; the small preset's heads are 32): ViT and Point-MAE width 128 with 2 heads,
/// 2 blocks each.
pub fn small_hd64() -> ModelConfig {
    let mut cfg = ModelConfig::small();
    cfg.name = "small-hd64".into();
    if let Some(v) = cfg.vit.as_mut() {
        v.dim = 128;
        v.heads = 2;
        v.mlp_dim = 512;
    }
    if let Some(p) = cfg.point.as_mut() {
        p.dim = 128;
        p.heads = 2;
        p.mlp_dim = 512;
    }
    let (rgb, xyz) = (
        cfg.vit.as_ref().map_or(0, |v| v.dim),
        cfg.point.as_ref().map_or(0, |p| p.feature_dim() as u32),
    );
    if let Some(f) = cfg.fusion.as_mut() {
        f.rgb_dim = rgb;
        f.xyz_dim = xyz;
        f.head_dim = 64;
    }
    cfg
}

/// [`ModelConfig::small`] with a small RADAR fusion (docs/RADAR-FUSION.md §9b: width 32,
/// 2 blocks of 2 heads, 4 instruction tokens), seeded random weights.
pub fn small_radar() -> ModelConfig {
    let mut cfg = ModelConfig::small();
    cfg.name = "small-radar".into();
    let grid = cfg.vit.as_ref().map_or(0, |v| v.grid() as u32);
    cfg.radar = Some(miad::config::RadarConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        instruction_len: 4,
        hyper_dim: 16,
        token_grid: grid,
        ln_eps: 1e-5,
        hybrid: true,
    });
    cfg
}

/// [`fitted`] with [`small_radar`]: banks and RADAR's per-case statistics (on by
/// default) fitted through the RADAR fusion.
pub fn fitted_radar(
    name: &str,
    category: Category,
    seed: u64,
    train: usize,
    test: usize,
) -> Fixture {
    fitted_with(small_radar(), name, category, seed, train, test)
}

/// [`fitted`] with the model configuration `cfg`.
pub fn fitted_with(
    cfg: ModelConfig,
    name: &str,
    category: Category,
    seed: u64,
    train: usize,
    test: usize,
) -> Fixture {
    let dir = scratch_dir(name);
    write_dataset(&SynthOptions {
        out: dir.join("data"),
        seed,
        categories: vec![category],
        train,
        validation: 0,
        test_good: test,
        test_bad: test,
        size: 96,
    })
    .unwrap();
    let model = dir.join("model.miad");
    write_model(&cfg, &random_model(&cfg, seed), &[], &model).unwrap();
    let category = dir.join("data").join(category.name());
    let bank = dir.join("category.bank");
    let opts = FitOptions {
        scratch_dir: dir.clone(),
        ..FitOptions::default()
    };
    let cat = CategoryFit {
        threads: 2,
        ..CategoryFit::default()
    };
    fit_category(&model, &category, &bank, &cat, &opts, &mut |_| {}).unwrap();
    Fixture {
        dir,
        model,
        bank,
        category,
    }
}

/// `cfg` for the tests that inspect on the simulated device: 16 point groups instead of
/// the small preset's 64. Each farthest-point-sampling step is a cluster of up to 8192
/// emulated threads (about four fifths of an emulated part was FPS); the groups change no
/// code path, and the kernels' own tests cover more of them.
#[allow(dead_code)] // used by the binaries with simulated-device tests only
pub fn for_the_emulator(mut cfg: ModelConfig) -> ModelConfig {
    if let Some(p) = cfg.point.as_mut() {
        p.num_groups = 16;
    }
    cfg
}

/// For a test that reads process-wide counters (allocations on worker threads): in the
/// test binary's own run it re-runs just that test in a child process of the same
/// binary, where nothing else runs beside it, checks that the child ran exactly that one
/// test and passed, and returns false; in the child it returns true (run the body).
/// `test` is the test's path as `module_path!()` gives it (see `alone_in_process!`).
pub fn rerun_alone(test: &str) -> bool {
    const CHILD: &str = "MIAD_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    // libtest names tests without the crate (binary) name that `module_path!` starts with.
    let name = test.split_once("::").map_or(test, |(_, rest)| rest);
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} alone in a child process: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// `alone_in_process!(test_fn)`: [`rerun_alone`] with the test's path filled in.
#[allow(unused_macros)]
macro_rules! alone_in_process {
    ($test:ident) => {
        $crate::common::rerun_alone(concat!(module_path!(), "::", stringify!($test)))
    };
}
#[allow(unused_imports)]
pub(crate) use alone_in_process;
