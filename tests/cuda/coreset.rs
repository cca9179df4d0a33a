//! GPU coreset selection (kernels/coreset.cu) against the CPU oracle: the indices must be
//! *identical* to `cpu::coreset::greedy` (and `greedy_plain`, `coreset`), ties included,
//! on random data with duplicated rows and exact ties, clustered data (pruning active),
//! constant data, rows with NaN/inf, sizes around the 1024-row block boundary.
//!
//! Without a GPU the device tests run on the simulated device (feature `cuda-sim`, smaller
//! cases), or print a SKIP line and pass; the plan checks need no device and always run.
//! On a GPU machine:
//! `cargo test --release --features cuda --test cuda coreset:: -- --nocapture`. The timing at
//! the scale is `coreset` in bench/cuda/.

use miad::config::{BankConfig, LinearSvm};
use miad::cpu::coreset::{coreset, greedy, greedy_plain, jl_min_dim};
use miad::cpu::pool::Pool;
use miad::cuda::ops::coreset::{coreset_on_device, CoresetPlan, GpuCoreset};
use miad::cuda::Device;
use miad::fit::banks::{fit, FeatureExtractor, FeatureLayout, FitOptions};
use miad::util::rng::Rng;

fn device() -> Option<Device> {
    crate::test_device("cuda_coreset")
}

/// Whether a selection of `work` = rows × dim × steps distance terms runs in seconds on
/// `dev`: always on a GPU; on the simulated device (the kernels emulated on the CPU) the
/// small cases only, which still cover single-block and multi-block grids, ties and m = n.
fn fits_the_device(dev: &Device, work: usize) -> bool {
    !dev.is_simulated() || work <= 4_000_000
}

/// Clusters make the pruning effective and near-ties likely.
fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal() * 5.0).collect();
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        let c = rng.below(clusters as u64) as usize;
        for k in 0..dim {
            x[i * dim + k] = centres[c * dim + k] + rng.normal() * 0.3;
        }
    }
    x
}

/// Small integers (many exactly equal distances between different rows) and about a
/// fifth of the rows copies of earlier rows (distance 0).
fn with_ties(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = vec![0f32; n * dim];
    for i in 0..n {
        if i > 0 && rng.below(5) == 0 {
            let j = rng.below(i as u64) as usize;
            x.copy_within(j * dim..(j + 1) * dim, i * dim);
        } else {
            for v in &mut x[i * dim..(i + 1) * dim] {
                *v = rng.below(5) as f32 - 2.0;
            }
        }
    }
    x
}

fn check_same(gpu: &GpuCoreset, dev: &Device, pool: &Pool, x: &[f32], dim: usize, m: usize) {
    let n = x.len() / dim;
    let want = greedy(pool, x, dim, m);
    let got = gpu.select(dev, x, dim, m).expect("GPU coreset");
    assert_eq!(got.len(), m.min(n), "n {n} dim {dim} m {m}");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "n {n} dim {dim} m {m}: first difference at step {i}: gpu {} cpu {}",
            got[i], want[i]
        );
    }
    assert_eq!(got, want);
    if n * m <= 4_000_000 {
        assert_eq!(got, greedy_plain(x, dim, m), "plain, n {n} dim {dim} m {m}");
    }
}

#[test]
fn plan_checks_need_no_gpu() {
    assert!(CoresetPlan::new(0, 4, 1).is_err());
    assert!(CoresetPlan::new(4, 4, 5).is_err());
    let p = CoresetPlan::new(1_250_000, jl_min_dim(1_250_000, 0.9), 125_000).unwrap();
    assert!(p.device_bytes() > 1_250_000 * 4 * 300);
    let e = p.check_fits(1 << 30, 80 << 30).unwrap_err().to_string();
    assert!(e.contains("needs") && e.contains("free"), "{e}");
}

#[test]
fn same_indices_as_cpu_on_ties_and_duplicates() {
    let Some(dev) = device() else { return };
    let gpu = GpuCoreset::new(&dev).unwrap();
    let pool = Pool::new(2);
    let cases: &[(usize, usize, usize)] = &[
        (1, 3, 1),
        (2, 1, 5),
        (7, 1, 7),
        (64, 2, 64),
        (1000, 3, 1000),
        (1023, 8, 200),
        (1024, 8, 300),
        (1025, 8, 300),
        (3000, 1, 3000),
        (5000, 33, 700),
        (20_000, 64, 2000),
    ];
    for &(n, dim, m) in cases
        .iter()
        .filter(|c| fits_the_device(&dev, c.0 * c.1 * c.2))
    {
        check_same(&gpu, &dev, &pool, &with_ties(n, dim, n as u64 + 7), dim, m);
    }
    // The example of the CPU test: ties go to the lowest index.
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 4.0, -4.0];
    assert_eq!(gpu.select(&dev, &x, 1, 3).unwrap(), vec![0, 4, 6]);
}

#[test]
fn same_indices_as_cpu_on_clustered_data() {
    let Some(dev) = device() else { return };
    let gpu = GpuCoreset::new(&dev).unwrap();
    let pool = Pool::new(2);
    let cases: &[(usize, usize, usize, usize)] = &[
        (500, 3, 8, 60),
        (1100, 16, 8, 100),
        (600, 64, 8, 50),
        (3000, 16, 8, 300),
        (2100, 64, 8, 150),
        (10_000, 128, 64, 1000),
        (30_000, 346, 256, 3000),
        (70_001, 24, 512, 7001),
    ];
    for &(n, dim, clusters, m) in cases
        .iter()
        .filter(|c| fits_the_device(&dev, c.0 * c.1 * c.3))
    {
        check_same(
            &gpu,
            &dev,
            &pool,
            &clustered(n, dim, clusters, n as u64),
            dim,
            m,
        );
    }
}

#[test]
fn constant_and_non_finite_rows_match_the_cpu() {
    let Some(dev) = device() else { return };
    let gpu = GpuCoreset::new(&dev).unwrap();
    let pool = Pool::new(2);
    // All rows equal: every distance is 0, row 0 wins every step.
    let x = vec![1.5f32; 3000 * 5];
    let got = gpu.select(&dev, &x, 5, 10).unwrap();
    assert_eq!(got, vec![0; 10]);
    check_same(&gpu, &dev, &pool, &x, 5, 10);
    // A NaN row and an infinite row among random ones.
    let mut x = clustered(4000, 12, 8, 3);
    x[1500 * 12 + 3] = f32::NAN;
    x[2500 * 12 + 7] = f32::INFINITY;
    check_same(&gpu, &dev, &pool, &x, 12, 50);
}

#[test]
fn bad_shapes_are_errors() {
    let Some(dev) = device() else { return };
    let gpu = GpuCoreset::new(&dev).unwrap();
    assert!(gpu.select(&dev, &[1.0, 2.0, 3.0], 2, 1).is_err());
    assert!(gpu.select(&dev, &[1.0, 2.0], 0, 1).is_err());
    assert!(gpu.select(&dev, &[], 4, 3).unwrap().is_empty());
    assert!(gpu.select(&dev, &[1.0; 8], 4, 0).unwrap().is_empty());
}

#[test]
fn projected_coreset_matches_cpu_coreset() {
    let Some(dev) = device() else { return };
    let pool = Pool::new(2);
    // (n, d): projected (JL dim < d) and unprojected (JL dim ≥ d).
    let cases: &[(usize, usize, usize, u64)] = &[
        (6000, 512, 600, 11),
        (3000, 64, 300, 12),
        (9000, 768, 900, 13),
    ];
    // On the simulated device one projected and one unprojected case.
    let cases = if dev.is_simulated() {
        &cases[..2]
    } else {
        cases
    };
    for &(n, d, m, seed) in cases {
        let x = clustered(n, d, 32, seed);
        let want = coreset(&pool, &x, d, m, 0.9, seed);
        let got = coreset_on_device(&dev, &pool, &x, d, m, 0.9, seed).unwrap();
        assert_eq!(got, want, "n {n} d {d} (JL dim {})", jl_min_dim(n, 0.9));
    }
}

#[test]
fn cpu_oracle_agrees_on_the_tricky_test_data() {
    // The GPU tests compare with `greedy` and `greedy_plain`; on the tie, constant and
    // non-finite data the two CPU versions must agree first (cheap sizes, no GPU needed).
    let pool = Pool::new(2);
    for (n, dim, m) in [(64, 2, 64), (1025, 8, 300), (3000, 1, 300)] {
        let x = with_ties(n, dim, n as u64 + 7);
        assert_eq!(greedy(&pool, &x, dim, m), greedy_plain(&x, dim, m));
    }
    let x = vec![1.5f32; 3000 * 5];
    assert_eq!(greedy(&pool, &x, 5, 10), vec![0; 10]);
    let mut x = clustered(4000, 12, 8, 3);
    x[1500 * 12 + 3] = f32::NAN;
    x[2500 * 12 + 7] = f32::INFINITY;
    assert_eq!(greedy(&pool, &x, 12, 50), greedy_plain(&x, 12, 50));
}

/// Random patch features for the fit test (xyz border cells zero, as background).
struct FakeParts {
    layout: FeatureLayout,
    parts: usize,
}

impl FeatureExtractor for FakeParts {
    fn layout(&self) -> FeatureLayout {
        self.layout
    }
    fn parts(&self) -> usize {
        self.parts
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> miad::Result<()> {
        let mut rng = Rng::new(500 + part as u64);
        for out in [&mut *xyz, &mut *rgb, &mut *fused] {
            for v in out.iter_mut() {
                *v = 3.0 + rng.normal();
            }
        }
        let (g, d) = (self.layout.xyz_grid, self.layout.xyz_dim);
        for c in 0..g * g {
            if c < g || c % g == 0 {
                xyz[c * d..(c + 1) * d].fill(0.0);
            }
        }
        Ok(())
    }
}

#[test]
fn fit_with_gpu_coreset_gives_the_cpu_banks() {
    // On a GPU the selection runs there; without one the fit falls back to the CPU (and
    // says why). Either way the banks are the CPU's.
    let dir = crate::common::scratch_dir("cuda-coreset-fit");
    let layout = FeatureLayout {
        rgb_grid: 8,
        rgb_dim: 48,
        xyz_grid: 8,
        xyz_dim: 24,
        fused_dim: 40,
    };
    let svm = |_: &[[f32; 3]]| {
        Ok(LinearSvm {
            w: [1.0; 3],
            offset: 0.0,
        })
    };
    let pool = Pool::new(2);
    let run = |gpu: bool| {
        let opts = FitOptions {
            map_size: 16,
            scratch_dir: dir.clone(),
            backend: if gpu {
                miad::backend::Backend::Cuda
            } else {
                miad::backend::Backend::Cpu
            },
            radar: false,
            ..FitOptions::default()
        };
        let mut ex = FakeParts { layout, parts: 6 };
        let base = BankConfig::empty([3; 16], "fake", "widget");
        fit(&pool, &mut ex, base, &opts, &svm, &mut |_| {}).unwrap()
    };
    let (cpu, gpu) = (run(false), run(true));
    assert_eq!(cpu.tensors.len(), gpu.tensors.len());
    for (a, b) in cpu.tensors.iter().zip(&gpu.tensors) {
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1, "{}", a.0);
        assert!(a.2 == b.2, "{} differs", a.0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
