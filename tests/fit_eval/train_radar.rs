//! Training of RADAR's adaptive instruction fusion (docs/RADAR-FUSION.md §9b): the
//! hand-derived gradient of every tensor against finite differences (all three cases in
//! one batch), loss decrease and determinism on linked fake features, and a synthetic
//! category through `train_fusion_category --method radar` (provenance, no leftovers);
//! with `cuda-sim`, a trained RADAR model inspecting on the simulated device as on the CPU,
//! and a training on the simulated device following the CPU run.

use crate::linked::Linked;
use miad::config::{FusionConfig, RadarConfig};
use miad::cpu::pool::Pool;
use miad::cpu::radar_fusion::Case;
use miad::fit::banks::FeatureLayout;
use miad::fit::train_radar::{
    radar_loss_and_grad, train_radar, PartSample, RadarParams, RadarTrainOptions, RadarWorkspace,
};
use miad::util::rng::Rng;

fn tiny() -> (FusionConfig, RadarConfig) {
    (
        FusionConfig {
            rgb_dim: 5,
            xyz_dim: 7,
            mlp_ratio: 2,
            ln_eps: 1e-5,
            head_dim: 4,
        },
        RadarConfig {
            dim: 8,
            depth: 2,
            heads: 2,
            instruction_len: 3,
            hyper_dim: 4,
            token_grid: 2,
            ln_eps: 1e-5,
            hybrid: true,
        },
    )
}

fn normal_rows(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() + 0.3).collect()
}

#[test]
fn gradient_of_every_tensor_matches_finite_differences() {
    let (f, r) = tiny();
    let pool = Pool::new(2);
    let grid_x = 4;
    let mut rng = Rng::new(5);
    let mut p = RadarParams::init(&f, &r, 3);
    // Jitter everything (zero-initialised context and HyperNetwork outputs included) so
    // that no gradient is trivially zero.
    for v in p.data.iter_mut() {
        *v += 0.2 * rng.normal();
    }
    let xyz: Vec<Vec<f32>> = (0..3)
        .map(|_| normal_rows(grid_x * grid_x * 7, &mut rng))
        .collect();
    let rgb: Vec<Vec<f32>> = (0..3).map(|_| normal_rows(4 * 5, &mut rng)).collect();
    let cells: [Vec<u32>; 3] = [vec![0, 5, 10, 15, 3], vec![1, 2, 12], vec![7, 6, 9, 13]];
    let cases = [Case::Complete, Case::RgbOnly, Case::CloudOnly];
    let batch: Vec<PartSample<'_>> = (0..3)
        .map(|i| PartSample {
            xyz: &xyz[i],
            rgb: &rgb[i],
            case: cases[i],
            cells: &cells[i],
        })
        .collect();
    let mut ws = RadarWorkspace::new(&p, grid_x, 5);
    let mut grad = vec![0f32; p.len()];
    let loss = radar_loss_and_grad(&pool, &p, &batch, 1.0, Some(&mut grad), &mut ws);
    assert!(loss.is_finite() && loss > 0.0);
    let again = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
    assert_eq!(loss, again, "the loss without gradient differs");
    let specs = p.specs.clone();
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for (s, off) in &specs {
        let n: usize = s.shape.iter().product();
        // Up to 8 entries per tensor, spread over it.
        let picks: Vec<usize> = (0..n.min(8)).map(|i| i * n / n.min(8)).collect();
        let mut nonzero = false;
        for i in picks {
            let at = off + i;
            let v = p.data[at];
            let h = 1e-2f32;
            p.data[at] = v + h;
            let up = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
            p.data[at] = v - h;
            let down = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
            p.data[at] = v;
            let num = (up - down) / (2.0 * h as f64);
            let ana = grad[at] as f64;
            let err = (num - ana).abs() / (2e-3 + num.abs().max(ana.abs()));
            worst = worst.max(err);
            nonzero |= ana.abs() > 1e-6;
            assert!(
                err < 3e-2,
                "{}[{i}]: analytic {ana:.6}, finite difference {num:.6}",
                s.name
            );
            checked += 1;
        }
        // Instructions of a case not in the batch would be zero; all three are here.
        assert!(nonzero, "{}: no entry has a gradient", s.name);
    }
    eprintln!(
        "worst relative error {worst:.2e} over {checked} entries of {} tensors",
        specs.len()
    );
}

fn small() -> (FusionConfig, RadarConfig) {
    (
        FusionConfig {
            rgb_dim: 12,
            xyz_dim: 16,
            mlp_ratio: 2,
            ln_eps: 1e-5,
            head_dim: 8,
        },
        RadarConfig {
            dim: 16,
            depth: 2,
            heads: 2,
            instruction_len: 4,
            hyper_dim: 8,
            token_grid: 4,
            ln_eps: 1e-5,
            hybrid: true,
        },
    )
}

fn linked(f: &FusionConfig, parts: usize, seed: u64) -> Linked {
    Linked {
        layout: FeatureLayout {
            rgb_grid: 4,
            rgb_dim: f.rgb_dim as usize,
            xyz_grid: 8,
            xyz_dim: f.xyz_dim as usize,
            fused_dim: f.fused_dim(),
        },
        parts,
        seed,
    }
}

#[test]
fn loss_decreases_on_linked_features() {
    let (f, r) = small();
    let pool = Pool::new(2);
    let mut feats = linked(&f, 12, 5);
    let opts = RadarTrainOptions {
        epochs: 30,
        batch: 4,
        patches: 16,
        lr: 3e-3,
        seed: 1,
        ..RadarTrainOptions::default()
    };
    let mut p = RadarParams::init(&f, &r, opts.seed);
    let rep = train_radar(
        &pool,
        &mut feats,
        &mut p,
        &opts,
        &crate::common::scratch_dir("radar-train-1"),
        &mut |_| {},
    )
    .unwrap();
    eprintln!(
        "epochs {:?}\nfixed batch {} rows: {:.4} -> {:.4}",
        rep.epoch_losses, rep.eval_rows, rep.eval_before, rep.eval_after
    );
    assert_eq!(rep.steps, 90);
    assert!(rep.eval_after < rep.eval_before - 0.5);
}

fn train_linked(threads: usize, seed: u64) -> (RadarParams, Vec<f64>) {
    let (f, r) = small();
    let pool = Pool::new(threads);
    let mut feats = linked(&f, 6, 8);
    let opts = RadarTrainOptions {
        epochs: 2,
        batch: 4,
        patches: 8,
        seed,
        ..RadarTrainOptions::default()
    };
    let mut p = RadarParams::init(&f, &r, seed);
    let rep = train_radar(
        &pool,
        &mut feats,
        &mut p,
        &opts,
        &crate::common::scratch_dir("radar-train-2"),
        &mut |_| {},
    )
    .unwrap();
    (p, rep.epoch_losses)
}

#[test]
fn training_is_deterministic_for_a_seed_whatever_the_thread_count() {
    super::train_fusion::assert_deterministic_per_seed(|threads, seed| {
        let (p, losses) = train_linked(threads, seed);
        (p.data, losses)
    });
}

fn small_radar() -> RadarConfig {
    RadarConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        instruction_len: 4,
        hyper_dim: 16,
        token_grid: 8,
        ln_eps: 1e-5,
        hybrid: true,
    }
}

#[test]
fn trains_on_a_synthetic_category_and_writes_a_radar_model() {
    use miad::fit::train_fusion::CategoryTrain;
    use miad::fit::train_radar::train_radar_category;
    use miad::format::{Container, ModelFile, OpenOptions, TensorSource};
    let s = super::train_fusion::synth_category("radar", 8);
    let opts = RadarTrainOptions {
        epochs: 10,
        batch: 4,
        patches: 32,
        lr: 3e-3,
        seed: 3,
        ..RadarTrainOptions::default()
    };
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let out = s.dir.join("radar.miad");
    let r = train_radar_category(
        &s.model,
        &s.category,
        &out,
        &cat,
        &opts,
        Some(small_radar()),
        &mut |_| {},
    )
    .unwrap();
    eprintln!(
        "synthetic disc, {} parts, {} steps in {:.2} s: epoch losses {:?}; fixed batch of {} rows {:.4} -> {:.4}",
        r.parts, r.steps, r.seconds, r.epoch_losses, r.eval_rows, r.eval_before, r.eval_after
    );
    assert_eq!((r.parts, r.steps), (8, 20));
    assert!(
        r.eval_after < r.eval_before - 0.05,
        "loss {:.4} -> {:.4}",
        r.eval_before,
        r.eval_after
    );
    let before = ModelFile::open(&s.model, &OpenOptions::default()).unwrap();
    let after = ModelFile::open(&out, &OpenOptions::default()).unwrap();
    assert_eq!(after.config().radar.as_ref(), Some(&small_radar()));
    for spec in miad::format::model_tensor_specs(before.config()) {
        if !spec.name.starts_with("fusion.") {
            let a = before.f32(&spec.name, &spec.shape).unwrap();
            let b = after.f32(&spec.name, &spec.shape).unwrap();
            assert_eq!(a, b, "{} must be copied unchanged", spec.name);
        }
    }
    assert!(after.contains("radar.instructions") && after.contains("radar.blocks.1.mlp.fc2.bias"));
    let c = Container::open(&out, &OpenOptions::default()).unwrap();
    let prov: std::collections::BTreeMap<_, _> = c.manifest().provenance.iter().cloned().collect();
    assert_eq!(prov["train.method"], "radar");
    assert_eq!(prov["train.seed"], "3");
    assert_eq!(prov["train.epochs"], "10");
    assert_eq!(prov["train.data"], s.category.display().to_string());
    let last: f64 = prov["train.loss_final"].parse().unwrap();
    assert!((last - r.epoch_losses[9]).abs() < 1e-5);
}

#[test]
fn an_interrupted_training_leaves_the_previous_output_intact() {
    use miad::fit::train_fusion::{CategoryTrain, TrainProgress};
    use miad::fit::train_radar::train_radar_category;
    let s = super::train_fusion::synth_category("radar-interrupt", 4);
    let out = s.dir.join("out.miad");
    // A previous output (here: a copy of the input model) must survive the interruption.
    std::fs::copy(&s.model, &out).unwrap();
    let old = std::fs::read(&out).unwrap();
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let opts = RadarTrainOptions {
        epochs: 3,
        batch: 2,
        patches: 8,
        ..RadarTrainOptions::default()
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_radar_category(
            &s.model,
            &s.category,
            &out,
            &cat,
            &opts,
            Some(small_radar()),
            &mut |p| {
                if let TrainProgress::Step { step: 3, .. } = p {
                    panic!("interrupted at step 3");
                }
            },
        )
    }));
    assert!(run.is_err(), "the run was not interrupted");
    assert_eq!(std::fs::read(&out).unwrap(), old, "the old output changed");
    let names: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "temporary files left: {names:?}"
    );
}

/// Inspection-time RADAR fusion (`RadarScratch::fuse`): with the context projections and
/// the HyperNetwork's outputs at their zero initialisation it is exactly M3DM's fusion of
/// the same `fusion.*` tensors (the independent `cpu::fusion::fuse`), whatever the
/// instructions; trained-like (jittered) weights make it depend on the case, and the
/// chunked inspection path (one block's buffers reused) equals the training path's rows
/// (every block's activations kept), bit for bit.
#[test]
fn inspection_fusion_reduces_to_uff_and_follows_the_case() {
    use miad::cpu::fusion::{fuse, fusion_scratch_len, FusionWeights};
    use miad::cpu::radar_fusion::{gather_rows, BranchActs, Dims, RadarScratch};
    let (f, r) = small();
    let pool = Pool::new(2);
    let grid_x = 8;
    let mut rng = Rng::new(9);
    let xyz = normal_rows(grid_x * grid_x * 16, &mut rng);
    let rgb = normal_rows(16 * 12, &mut rng);
    let fd = f.fused_dim();
    let mut p = RadarParams::init(&f, &r, 4);
    // Non-trivial UFF tensors and instructions; context and HyperNetwork outputs stay 0.
    for (s, off) in p.specs.clone() {
        if !(s.name.contains("_ctx.") || s.name.contains("hyper.out_")) {
            let n: usize = s.shape.iter().product();
            p.data[off..off + n]
                .iter_mut()
                .for_each(|v| *v += 0.1 * rng.normal());
        }
    }
    let dims = Dims::new(&f, &r, grid_x);
    let mut rs = RadarScratch::new(dims);
    let mut radar_out = vec![0f32; grid_x * grid_x * fd];
    rs.fuse(
        &pool,
        &p.weights(),
        &xyz,
        &rgb,
        Case::RgbOnly,
        &mut radar_out,
    );
    let tensors = p.to_tensors();
    let uff = FusionWeights::load(&tensors, &f).unwrap();
    let mut uff_out = vec![0f32; grid_x * grid_x * fd];
    let mut scratch = vec![0f32; fusion_scratch_len(&f, 4, grid_x)];
    fuse(
        &pool,
        &uff,
        &rgb,
        4,
        &xyz,
        grid_x,
        &mut uff_out,
        &mut scratch,
    );
    let diff = radar_out
        .iter()
        .zip(&uff_out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff < 1e-5,
        "RADAR with zero context differs from UFF by {diff}"
    );

    for v in p.data.iter_mut() {
        *v += 0.1 * rng.normal();
    }
    let w = p.weights();
    let mut by_case = Vec::new();
    for case in [Case::Complete, Case::RgbOnly, Case::CloudOnly] {
        let mut out = vec![0f32; grid_x * grid_x * fd];
        rs.fuse(&pool, &w, &xyz, &rgb, case, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        by_case.push(out);
    }
    assert!(by_case[0] != by_case[1] && by_case[1] != by_case[2] && by_case[0] != by_case[2]);
    // The training path's rows for a few cells equal the inspection output.
    let cells: Vec<u32> = vec![0, 9, 27, 63];
    let mut bx = BranchActs::new(cells.len(), 16, 32, 16, 8);
    let mut br = BranchActs::new(cells.len(), 12, 24, 16, 8);
    // (Training keeps every block's activations, inspection reuses one block's buffers.)
    let mut train_tokens = miad::cpu::radar_fusion::TokenActs::new(dims);
    train_tokens.forward(&pool, &w, &xyz, &rgb, Case::CloudOnly);
    gather_rows(&train_tokens, &xyz, &rgb, &cells, &mut bx, &mut br);
    let sc = &train_tokens.scale;
    bx.forward(
        &pool,
        &w.xyz,
        w.pc_ctx,
        &sc[0],
        &sc[1],
        cells.len(),
        &dims,
        false,
    );
    br.forward(
        &pool,
        &w.rgb,
        w.rgb_ctx,
        &sc[2],
        &sc[3],
        cells.len(),
        &dims,
        false,
    );
    for (i, &j) in cells.iter().enumerate() {
        let row = &by_case[2][j as usize * fd..(j as usize + 1) * fd];
        assert_eq!(
            &row[..16],
            &bx.y[i * 16..(i + 1) * 16],
            "xyz half of cell {j}"
        );
        assert_eq!(
            &row[16..],
            &br.y[i * 12..(i + 1) * 12],
            "rgb half of cell {j}"
        );
    }
}

/// The Real-Pseudo Hybrid Module (§9c, eq. 7): with the main blocks reduced to identities
/// (attention and MLP outputs zero), the RGB tokens reach the hybrid block untouched by
/// the cloud; in a cloud-missing part (pseudo cloud tokens) the hybrid block's RGB
/// outputs must then not depend on the cloud input at all, while in a complete part
/// (no mask) they do.
#[test]
fn hybrid_module_keeps_real_tokens_away_from_pseudo_ones() {
    use miad::cpu::radar_fusion::{Dims, TokenActs};
    let (f, r) = small();
    assert!(r.hybrid);
    let pool = Pool::new(2);
    let mut rng = Rng::new(12);
    let mut p = RadarParams::init(&f, &r, 6);
    for (s, off) in p.specs.clone() {
        let n: usize = s.shape.iter().product();
        let identity_block = s.name.starts_with("radar.blocks.")
            && (s.name.contains("attn.proj.") || s.name.contains("mlp.fc2."));
        for v in &mut p.data[off..off + n] {
            *v = if identity_block {
                0.0
            } else {
                *v + 0.1 * rng.normal()
            };
        }
    }
    let grid_x = 8;
    let rgb = normal_rows(16 * 12, &mut rng);
    let xyz_a = normal_rows(grid_x * grid_x * 16, &mut rng);
    let xyz_b = normal_rows(grid_x * grid_x * 16, &mut rng);
    let w = p.weights();
    let mut tok = TokenActs::new(Dims::new(&f, &r, grid_x));
    let mut f_rgb = |xyz: &[f32], case: Case| {
        tok.forward(&pool, &w, xyz, &rgb, case);
        tok.f_rgb().to_vec()
    };
    let masked = (f_rgb(&xyz_a, Case::RgbOnly), f_rgb(&xyz_b, Case::RgbOnly));
    assert_eq!(
        masked.0, masked.1,
        "real RGB tokens read the pseudo cloud tokens"
    );
    let open = (f_rgb(&xyz_a, Case::Complete), f_rgb(&xyz_b, Case::Complete));
    assert_ne!(open.0, open.1, "without the mask the cloud must matter");
}

/// RADAR's protocol on the training data: half the parts of a synthetic category lose a
/// modality (a quarter the cloud, a quarter the image) for the whole training; the run
/// trains, says so in the provenance, and gives other weights than complete data. UFF
/// refuses such data, and a wrong number of part cases is an error.
#[test]
fn trains_on_parts_that_miss_a_modality() {
    use miad::eval::missing::MissingModality;
    use miad::fit::train_fusion::{train_fusion_category, CategoryTrain, UffTrainOptions};
    use miad::fit::train_radar::train_radar_category;
    use miad::format::{Container, OpenOptions, TensorSource};
    let s = super::train_fusion::synth_category("radar-missing", 8);
    let opts = RadarTrainOptions {
        epochs: 2,
        batch: 4,
        patches: 16,
        seed: 2,
        ..RadarTrainOptions::default()
    };
    let mut cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let complete = s.dir.join("complete.miad");
    train_radar_category(
        &s.model,
        &s.category,
        &complete,
        &cat,
        &opts,
        Some(small_radar()),
        &mut |_| {},
    )
    .unwrap();
    cat.missing = Some((0.5, MissingModality::Both, 7));
    let out = s.dir.join("missing.miad");
    let r = train_radar_category(
        &s.model,
        &s.category,
        &out,
        &cat,
        &opts,
        Some(small_radar()),
        &mut |_| {},
    )
    .unwrap();
    assert!(r.epoch_losses.iter().all(|l| l.is_finite()));
    let c = Container::open(&out, &OpenOptions::default()).unwrap();
    let prov: std::collections::BTreeMap<_, _> = c.manifest().provenance.iter().cloned().collect();
    assert_eq!(prov["train.missing"], "rate 0.5, drop Both, seed 7");
    let open =
        |p: &std::path::Path| miad::format::ModelFile::open(p, &OpenOptions::default()).unwrap();
    let (a, b) = (open(&complete), open(&out));
    let shape = [3, 2, 4, 32];
    assert_ne!(
        a.f32("radar.instructions", &shape).unwrap(),
        b.f32("radar.instructions", &shape).unwrap(),
        "the missing parts changed nothing"
    );
    let uff = train_fusion_category(
        &s.model,
        &s.category,
        &out,
        &cat,
        &UffTrainOptions::default(),
        &mut |_| {},
    );
    assert!(uff.is_err_and(|e| e.to_string().contains("--method radar")));

    let (f, rc) = small();
    let mut feats = linked(&f, 3, 1);
    let mut p = RadarParams::init(&f, &rc, 1);
    let bad = RadarTrainOptions {
        part_cases: vec![Case::Complete; 2],
        ..RadarTrainOptions::default()
    };
    let e = train_radar(
        &Pool::new(1),
        &mut feats,
        &mut p,
        &bad,
        &crate::common::scratch_dir("radar-train-3"),
        &mut |_| {},
    );
    assert!(e.is_err_and(|e| e.to_string().contains("2 part cases for 3")));
}

/// A RADAR fusion trained by miad (heads of 32, a size the device attention kernels have)
/// inspects parts on the simulated device as on the CPU: the fusion runs on the device
/// (no stage falls back), features within the f32 self-check tolerance and scores within
/// the distances' rounding, in every case.
#[cfg(feature = "cuda-sim")]
#[test]
fn a_trained_radar_model_inspects_on_the_simulated_device_as_on_the_cpu() {
    use miad::backend::{Backend, Precision};
    use miad::engine::{Engine, EngineOptions, InspectOptions};
    use miad::eval::synth::{synth_part, Category, Defect};
    use miad::fit::train_fusion::CategoryTrain;
    use miad::fit::train_radar::train_radar_category;
    use miad::pipeline::input::{CloudView, RgbView};
    let s = super::train_fusion::synth_category_for_the_emulator("radar-sim", 6);
    let opts = RadarTrainOptions {
        epochs: 2,
        batch: 3,
        patches: 32,
        lr: 3e-3,
        seed: 5,
        ..RadarTrainOptions::default()
    };
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let model = s.dir.join("radar.miad");
    let radar = RadarConfig {
        heads: 1,
        ..small_radar()
    };
    train_radar_category(
        &s.model,
        &s.category,
        &model,
        &cat,
        &opts,
        Some(radar),
        &mut |_| {},
    )
    .unwrap();
    let bank = s.fit_bank(&model, "radar.bank");
    let open = |backend| {
        let o = EngineOptions {
            threads: 2,
            max_width: 96,
            max_height: 96,
            backend,
            precision: Precision::F32,
            ..EngineOptions::default()
        };
        Engine::open(&model, &bank, &o).unwrap()
    };
    let (mut cpu, mut sim) = (open(Backend::Cpu), open(Backend::CudaSim));
    let b = sim.backend();
    assert_eq!(b.used, Backend::CudaSim, "{}", b.describe());
    assert_eq!(b.fallback, None, "{}", b.describe());
    assert!(b.device_stages.contains(&"fusion"), "{}", b.describe());
    let rel_max = |a: &[f32], b: &[f32]| {
        let peak = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / peak
    };
    let opts = InspectOptions::default();
    for (k, defect) in [None, Some(Defect::Dent)].into_iter().enumerate() {
        let p = synth_part(Category::Disc, defect, 96, 40 + k as u64).unwrap();
        let (r, c) = (
            RgbView::packed(&p.rgb, 96, 96),
            CloudView::packed(&p.xyz, 96, 96),
        );
        for (r, c) in [(Some(r), Some(c)), (Some(r), None), (None, Some(c))] {
            let a = cpu.inspect(r, c, &opts).unwrap().score;
            let fa: Vec<Vec<f32>> = cpu.features().unwrap().iter().map(|f| f.to_vec()).collect();
            let b = sim.inspect(r, c, &opts).unwrap().score;
            let fused = rel_max(&fa[2], sim.features().unwrap()[2]);
            eprintln!(
                "part {k} ({}, {}): score {a} vs {b}, fused {fused:.2e}",
                r.is_some(),
                c.is_some()
            );
            assert!(
                fused <= Precision::F32.feature_tolerance(),
                "fused features differ by {fused}"
            );
            assert!(
                (a - b).abs() <= 2e-3 * a.abs().max(b.abs()),
                "score {a} vs {b}"
            );
        }
    }
}

/// `train_radar_category` with `--backend cuda-sim` on the synthetic disc, half of the
/// training parts missing a modality (their own case in every step), follows the CPU
/// run with the same seed: epoch losses within 1e-5 relative and every fusion tensor
/// within 1e-3 absolute, a third of one AdamW step at the peak lr 3e-3 (Adam divides
/// each gradient by its own magnitude, so where a component is as small as the
/// products' rounding the two updates differ by up to such a step). Measured: losses
/// 1.3e-8, tensors 3.3e-4 after 4 steps (batches of 3 and 1 parts). The provenance
/// names the backend.
#[cfg(feature = "cuda-sim")]
#[test]
fn trains_on_the_simulated_device_as_on_the_cpu() {
    use miad::eval::missing::MissingModality;
    use miad::fit::train_fusion::{CategoryTrain, TrainBackend};
    use miad::fit::train_radar::train_radar_category;
    use miad::format::{Container, OpenOptions};
    let s = super::train_fusion::synth_category("radar-device-train", 4);
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        missing: Some((0.5, MissingModality::Both, 7)),
        ..CategoryTrain::default()
    };
    let run = |backend, name: &str| {
        let opts = RadarTrainOptions {
            epochs: 2,
            batch: 3,
            patches: 8,
            lr: 3e-3,
            seed: 4,
            backend,
            ..RadarTrainOptions::default()
        };
        let out = s.dir.join(name);
        let radar = Some(small_radar());
        let r = train_radar_category(&s.model, &s.category, &out, &cat, &opts, radar, &mut |_| {})
            .unwrap();
        (out, r)
    };
    let (cpu, rc) = run(TrainBackend::Cpu, "cpu.miad");
    let (dev, rd) = run(TrainBackend::CudaSim, "sim.miad");
    let (lrel, _, worst_abs, name) = super::train_fusion::compare_trainings(&cpu, &rc, &dev, &rd);
    eprintln!(
        "synthetic disc, half the parts missing a modality, {} steps: epoch losses CPU {:?}, device {:?} (worst rel {lrel:.1e}); fusion tensors worst {worst_abs:.1e} absolute ({name})",
        rd.steps, rc.epoch_losses, rd.epoch_losses
    );
    assert!(lrel < 1e-5, "epoch losses differ by {lrel:.2e}");
    assert!(
        worst_abs < 1e-3,
        "fusion tensors differ by {worst_abs:.2e} ({name})"
    );
    let c = Container::open(&dev, &OpenOptions::default()).unwrap();
    let prov: std::collections::BTreeMap<_, _> = c.manifest().provenance.iter().cloned().collect();
    assert_eq!(prov["train.backend"], "cuda-sim");
    assert_eq!(prov["train.method"], "radar");
}
