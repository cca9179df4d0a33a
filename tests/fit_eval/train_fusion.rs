//! Training of M3DM's UFF (docs/RADAR-FUSION.md §5b): the hand-derived gradient against
//! finite differences, AdamW and the schedule, loss decrease and determinism on fake
//! features and on a synthetic category through `train_fusion_category`, the model file's
//! provenance, the authors' checkpoint layout read back by the converter, and the InfoNCE
//! of one batch against PyTorch (fixture from tests/reference/infonce_reference.py).

use crate::linked::{jittered, linked_layout, Linked};
use miad::config::FusionConfig;
use miad::cpu::pool::Pool;
use miad::fit::train_fusion::{
    learning_rate, train_uff, uff_loss_and_grad, AdamW, UffParams, UffTrainOptions, Workspace,
};
use miad::util::rng::Rng;

fn tiny_cfg() -> FusionConfig {
    FusionConfig {
        rgb_dim: 5,
        xyz_dim: 7,
        mlp_ratio: 2,
        ln_eps: 1e-5,
        head_dim: 4,
    }
}

fn rows(n: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n * d).map(|_| rng.normal() + 0.5).collect()
}

#[test]
fn gradient_matches_finite_differences() {
    let cfg = tiny_cfg();
    let pool = Pool::new(2);
    let mut rng = Rng::new(3);
    let n = 9;
    let x = rows(n, cfg.xyz_dim as usize, &mut rng);
    let r = rows(n, cfg.rgb_dim as usize, &mut rng);
    let mut ws = Workspace::default();
    for t in [1.0f32, 0.3] {
        let mut p = jittered(&cfg, 11);
        let mut grad = vec![0f32; p.len()];
        let loss = uff_loss_and_grad(&pool, &p, &x, &r, n, t, Some(&mut grad), &mut ws);
        assert!(loss.is_finite() && loss > 0.0);
        let mut worst: f64 = 0.0;
        for (i, &ana) in grad.iter().enumerate() {
            let v = p.data[i];
            let h = 2e-3f32;
            p.data[i] = v + h;
            let up = uff_loss_and_grad(&pool, &p, &x, &r, n, t, None, &mut ws);
            p.data[i] = v - h;
            let down = uff_loss_and_grad(&pool, &p, &x, &r, n, t, None, &mut ws);
            p.data[i] = v;
            let num = (up - down) / (2.0 * h as f64);
            let ana = ana as f64;
            let err = (num - ana).abs() / (1e-2 + num.abs().max(ana.abs()));
            worst = worst.max(err);
            assert!(
                err < 2e-2,
                "T {t}: parameter {i}: analytic {ana:.6}, finite difference {num:.6}"
            );
        }
        eprintln!(
            "T {t}: worst relative gradient error {worst:.2e} over {} parameters",
            p.len()
        );
    }
}

fn small_cfg() -> FusionConfig {
    FusionConfig {
        rgb_dim: 12,
        xyz_dim: 16,
        mlp_ratio: 2,
        ln_eps: 1e-5,
        head_dim: 8,
    }
}

#[test]
fn loss_decreases_on_linked_features() {
    let cfg = small_cfg();
    let pool = Pool::new(2);
    let mut f = Linked {
        layout: linked_layout(&cfg),
        parts: 12,
        seed: 5,
    };
    let opts = UffTrainOptions {
        epochs: 30,
        batch: 4,
        patches: 16,
        seed: 1,
        ..UffTrainOptions::default()
    };
    let mut p = UffParams::init(&cfg, opts.seed);
    let dir = crate::common::scratch_dir("uff-train");
    let r = train_uff(&pool, &mut f, &mut p, &opts, &dir, &mut |_| {}).unwrap();
    eprintln!(
        "epochs {:?}\nfixed batch {} rows: {:.4} -> {:.4}",
        r.epoch_losses, r.eval_rows, r.eval_before, r.eval_after
    );
    assert!(r.eval_after < r.eval_before - 0.5);
}

/// A synthetic category and a small random model whose Point-MAE blocks are damped
/// (residual branches × 0.05): deep random transformers collapse every token onto one
/// direction (measured: the LayerNormed xyz patch features of `ModelConfig::small` vary
/// across patches by < 1 % of their norm), which leaves a fusion nothing to align; a
/// pretrained backbone, or these near-identity blocks, keep the geometry of the groups.
pub(crate) struct SynthCategory {
    pub dir: std::path::PathBuf,
    pub model: std::path::PathBuf,
    pub category: std::path::PathBuf,
}

#[cfg(feature = "cuda-sim")]
impl SynthCategory {
    /// Fits the banks of `model` on this category (2 threads) into `name` in its folder.
    pub fn fit_bank(&self, model: &std::path::Path, name: &str) -> std::path::PathBuf {
        use miad::fit::banks::FitOptions;
        use miad::fit::category::{fit_category, CategoryFit};
        let bank = self.dir.join(name);
        let fit = FitOptions {
            scratch_dir: self.dir.clone(),
            ..FitOptions::default()
        };
        let threads = CategoryFit {
            threads: 2,
            ..CategoryFit::default()
        };
        fit_category(model, &self.category, &bank, &threads, &fit, &mut |_| {}).unwrap();
        bank
    }
}

impl Drop for SynthCategory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn synth_category(name: &str, train: usize) -> SynthCategory {
    synth_category_with(name, train, miad::config::ModelConfig::small())
}

/// [`synth_category`] for tests that inspect on the simulated device
/// (`common::for_the_emulator`).
#[cfg(feature = "cuda-sim")]
pub(crate) fn synth_category_for_the_emulator(name: &str, train: usize) -> SynthCategory {
    let cfg = crate::common::for_the_emulator(miad::config::ModelConfig::small());
    synth_category_with(name, train, cfg)
}

fn synth_category_with(name: &str, train: usize, cfg: miad::config::ModelConfig) -> SynthCategory {
    use miad::eval::synth::{write_dataset, Category, SynthOptions};
    use miad::format::{random_model, write_model};
    let dir = crate::common::scratch_dir(&format!("uff-{name}"));
    write_dataset(&SynthOptions {
        out: dir.join("data"),
        seed: 4,
        categories: vec![Category::Disc],
        train,
        validation: 0,
        test_good: 0,
        test_bad: 0,
        size: 96,
    })
    .unwrap();
    let mut t = random_model(&cfg, 9);
    for (name, (_, data)) in t.tensors.iter_mut() {
        if name.starts_with("point.blocks.")
            && (name.ends_with("attn.proj.weight") || name.ends_with("mlp.fc2.weight"))
        {
            data.iter_mut().for_each(|v| *v *= 0.05);
        }
    }
    let model = dir.join("model.miad");
    write_model(&cfg, &t, &[("source", "test")], &model).unwrap();
    SynthCategory {
        category: dir.join("data").join(Category::Disc.name()),
        model,
        dir,
    }
}

#[test]
fn trains_on_a_synthetic_category_and_writes_a_model() {
    use miad::fit::train_fusion::{train_fusion_category, CategoryTrain};
    use miad::format::{Container, ModelFile, OpenOptions};
    let s = synth_category("train", 8);
    let opts = UffTrainOptions {
        epochs: 12,
        batch: 4,
        patches: 32,
        lr: 0.003,
        seed: 3,
        ..UffTrainOptions::default()
    };
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let out = s.dir.join("trained.miad");
    let r = train_fusion_category(&s.model, &s.category, &out, &cat, &opts, &mut |_| {}).unwrap();
    eprintln!(
        "synthetic disc, {} parts, {} steps in {:.2} s: epoch losses {:?}; fixed batch of {} rows {:.4} -> {:.4}",
        r.parts, r.steps, r.seconds, r.epoch_losses, r.eval_rows, r.eval_before, r.eval_after
    );
    assert_eq!((r.parts, r.steps), (8, 24));
    assert!(
        r.eval_after < r.eval_before - 0.05,
        "loss {:.4} -> {:.4}",
        r.eval_before,
        r.eval_after
    );
    // The written model: opens, keeps every other tensor, holds the trained fusion, and
    // says how it was made.
    let before = ModelFile::open(&s.model, &OpenOptions::default()).unwrap();
    let after = ModelFile::open(&out, &OpenOptions::default()).unwrap();
    let (mut same, mut changed) = (0, 0);
    for spec in miad::format::model_tensor_specs(before.config()) {
        let a = miad::format::TensorSource::f32(&before, &spec.name, &spec.shape).unwrap();
        let b = miad::format::TensorSource::f32(&after, &spec.name, &spec.shape).unwrap();
        if spec.name.starts_with("fusion.") {
            changed += usize::from(a != b);
        } else {
            assert_eq!(a, b, "{} must be copied unchanged", spec.name);
            same += 1;
        }
    }
    assert!(same > 20 && changed == 16, "same {same}, changed {changed}");
    let c = Container::open(&out, &OpenOptions::default()).unwrap();
    let prov: std::collections::BTreeMap<_, _> = c.manifest().provenance.iter().cloned().collect();
    assert_eq!(prov["train.method"], "uff");
    assert_eq!(prov["train.seed"], "3");
    assert_eq!(prov["train.epochs"], "12");
    assert_eq!(prov["train.data"], s.category.display().to_string());
    let last: f64 = prov["train.loss_final"].parse().unwrap();
    assert!((last - r.epoch_losses[11]).abs() < 1e-5);
    assert!(prov["train.from"].contains("model.miad"));
    // No temporary file is left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// UFF trained on the simulated device from a synthetic category (`--backend cuda-sim`):
/// the epoch losses of the CPU training of the same seed within 1e-6 relative (measured
/// 4.9e-8) and its fusion tensors within a tenth of one AdamW step (f32 parity: the
/// products sum in another order), the provenance names the backend, and the model fits
/// banks and inspects parts on the CPU.
#[cfg(feature = "cuda-sim")]
#[test]
fn trains_on_the_simulated_device_as_on_the_cpu() {
    use miad::backend::Backend;
    use miad::engine::{Engine, EngineOptions, InspectOptions};
    use miad::eval::synth::{synth_part, Category, Defect};
    use miad::fit::train_fusion::{train_fusion_category, CategoryTrain, TrainBackend};
    use miad::format::{Container, OpenOptions};
    use miad::pipeline::input::{CloudView, RgbView};
    let s = synth_category_for_the_emulator("train-sim", 4);
    let cat = CategoryTrain {
        threads: 2,
        scratch_dir: s.dir.clone(),
        ..CategoryTrain::default()
    };
    let run = |backend, name: &str| {
        let opts = UffTrainOptions {
            epochs: 3,
            batch: 3,
            patches: 16,
            seed: 3,
            backend,
            ..UffTrainOptions::default()
        };
        let out = s.dir.join(name);
        let r =
            train_fusion_category(&s.model, &s.category, &out, &cat, &opts, &mut |_| {}).unwrap();
        (out, r)
    };
    let (cpu, rc) = run(TrainBackend::Cpu, "cpu.miad");
    let (dev, rd) = run(TrainBackend::CudaSim, "sim.miad");
    let (lrel, worst, worst_abs, name) = compare_trainings(&cpu, &rc, &dev, &rd);
    eprintln!(
        "synthetic disc, {} steps: epoch losses CPU {:?}, device {:?} (worst rel {lrel:.1e}); fusion tensors worst {worst:.1e} of the peak ({name}), {worst_abs:.1e} absolute",
        rd.steps, rc.epoch_losses, rd.epoch_losses
    );
    assert!(lrel < 1e-6, "epoch losses differ by {lrel:.2e}");
    // Adam divides each gradient by its own magnitude: where a component is as small as
    // the products' rounding (the random backbone's xyz features are nearly collinear)
    // the two updates differ, by at most a step of lr each. Measured: 7.2e-5 after 6
    // steps at lr ≤ 3e-3 (1.5e-3 of the xyz fc2 weights' peak).
    assert!(
        worst_abs < 3e-4,
        "fusion tensors differ by {worst_abs:.2e} ({name})"
    );
    let c = Container::open(&dev, &OpenOptions::default()).unwrap();
    let prov: std::collections::BTreeMap<_, _> = c.manifest().provenance.iter().cloned().collect();
    assert_eq!(prov["train.backend"], "cuda-sim");
    // The device-trained model fits banks and inspects parts on the CPU.
    let bank = s.fit_bank(&dev, "sim.bank");
    let o = EngineOptions {
        threads: 2,
        max_width: 96,
        max_height: 96,
        backend: Backend::Cpu,
        ..EngineOptions::default()
    };
    let mut e = Engine::open(&dev, &bank, &o).unwrap();
    for (k, defect) in [None, Some(Defect::Dent)].into_iter().enumerate() {
        let p = synth_part(Category::Disc, defect, 96, 40 + k as u64).unwrap();
        let (r, c) = (
            RgbView::packed(&p.rgb, 96, 96),
            CloudView::packed(&p.xyz, 96, 96),
        );
        let score = e
            .inspect(Some(r), Some(c), &InspectOptions::default())
            .unwrap()
            .score;
        assert!(score.is_finite(), "part {k}: score {score}");
    }
}

fn train_linked(threads: usize, seed: u64) -> (UffParams, Vec<f64>) {
    let cfg = small_cfg();
    let pool = Pool::new(threads);
    let mut f = Linked {
        layout: linked_layout(&cfg),
        parts: 6,
        seed: 8,
    };
    let opts = UffTrainOptions {
        epochs: 3,
        batch: 4,
        patches: 8,
        seed,
        ..UffTrainOptions::default()
    };
    let mut p = UffParams::init(&cfg, seed);
    let r = train_uff(
        &pool,
        &mut f,
        &mut p,
        &opts,
        &crate::common::scratch_dir("uff-linked"),
        &mut |_| {},
    )
    .unwrap();
    (p, r.epoch_losses)
}

/// `train(threads, seed)` (trained parameters, epoch losses) gives the same bits twice for
/// a seed, on 1 and 2 threads, and other weights for another seed.
pub(crate) fn assert_deterministic_per_seed(train: impl Fn(usize, u64) -> (Vec<f32>, Vec<f64>)) {
    let (a, la) = train(2, 21);
    let (b, lb) = train(2, 21);
    let (c, lc) = train(1, 21);
    let (d, _) = train(2, 22);
    assert!(a == b && la == lb, "two runs with one seed differ");
    assert!(a == c && la == lc, "1 and 2 threads differ");
    assert!(a != d, "another seed gives the same weights");
}

#[test]
fn training_is_deterministic_for_a_seed_whatever_the_thread_count() {
    assert_deterministic_per_seed(|threads, seed| {
        let (p, losses) = train_linked(threads, seed);
        (p.data, losses)
    });
}

#[test]
fn adamw_and_schedule_follow_pytorch() {
    // One AdamW step by hand (torch.optim.AdamW: decay, then bias-corrected Adam).
    let mut p = vec![1.0f32, -2.0];
    let g = [0.5f32, -0.25];
    let mut o = AdamW::new(2, 0.9, 0.95, 1e-8, 0.01);
    o.step(&mut p, &g, 0.1);
    for (i, (&p0, &gi)) in [1.0f32, -2.0].iter().zip(&g).enumerate() {
        let decayed = p0 * (1.0 - 0.1 * 0.01);
        let (m, v) = (0.1 * gi, 0.05 * gi * gi);
        let (mh, vh) = (m / 0.1, v / 0.05);
        let want = decayed - 0.1 * mh / (vh.sqrt() + 1e-8);
        assert!((p[i] - want).abs() < 1e-6, "{} vs {want}", p[i]);
    }
    // Warm-up to the peak, then a half cosine to 0.
    let lr = |s| learning_rate(0.003, s, 750, 250);
    assert!((lr(0) - 0.003 / 250.0).abs() < 1e-9);
    assert!((lr(249) - 0.003).abs() < 1e-9);
    assert!((lr(250) - 0.003).abs() < 1e-9);
    assert!((lr(500) - 0.0015).abs() < 1e-6);
    assert!(lr(749) < 1e-6 && lr(749) > 0.0);
    assert!((1..750).all(|s| s <= 250 || lr(s) <= lr(s - 1)));
}

/// The fixture of tests/reference/infonce_reference.py: a tiny fusion, 300 patch pairs,
/// PyTorch's loss, gradients and one AdamW step.
fn torch_fixture() -> (miad::format::OwnedTensors, FusionConfig) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/infonce_uff.safetensors"
    );
    let t = miad::format::OwnedTensors::from_safetensors_file(std::path::Path::new(path)).unwrap();
    let cfg = FusionConfig {
        rgb_dim: 5,
        xyz_dim: 7,
        mlp_ratio: 2,
        ln_eps: 1e-5,
        head_dim: 4,
    };
    (t, cfg)
}

fn close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}[{i}]: miad {g}, torch {w} (scale {scale})"
        );
    }
}

#[test]
fn infonce_loss_gradient_and_adamw_match_pytorch() {
    let (t, cfg) = torch_fixture();
    let pool = Pool::new(2);
    let p = UffParams::from_source(&t, &cfg).unwrap();
    let (xyz, rgb) = (&t.tensors["xyz"].1, &t.tensors["rgb"].1);
    let n = t.tensors["xyz"].0[0];
    assert!(
        n > miad::fit::infonce::BLOCK_ROWS,
        "the fixture spans two logit blocks"
    );
    let mut grad = vec![0f32; p.len()];
    let mut ws = Workspace::default();
    let loss = uff_loss_and_grad(&pool, &p, xyz, rgb, n, 1.0, Some(&mut grad), &mut ws);
    let want = t.tensors["loss"].1[0] as f64;
    assert!(
        (loss - want).abs() < 2e-6 * want,
        "loss: miad {loss}, torch {want}"
    );
    let mut stepped = p.clone();
    AdamW::new(p.len(), 0.9, 0.95, 1e-8, 0.01).step(&mut stepped.data, &grad, 0.01);
    for (i, (spec, off)) in p.specs.iter().enumerate() {
        let len: usize = spec.shape.iter().product();
        close(
            &format!("grad {}", spec.name),
            &grad[*off..off + len],
            &t.tensors[&format!("grad.{}", spec.name)].1,
            2e-4,
        );
        close(
            &format!("AdamW step {}", spec.name),
            stepped.tensor(i),
            &t.tensors[&format!("step.{}", spec.name)].1,
            1e-5,
        );
    }
}

#[test]
fn trained_fusion_round_trips_through_the_authors_layout() {
    use miad::format::convert::{convert, ConvertOptions};
    let cfg = small_cfg();
    let (p, _) = train_linked(2, 5);
    let dir = crate::common::scratch_dir("uff-export");
    let path = dir.join("uff_checkpoint.safetensors");
    miad::fit::train_fusion::export_reference(&p, &path).unwrap();
    // Named as the authors' checkpoint: under `model.`, no `fusion.` prefix.
    let ck = miad::format::OwnedTensors::from_safetensors_file(&path).unwrap();
    assert!(ck.tensors.contains_key("model.xyz_mlp.fc1.weight"));
    assert!(ck.tensors.contains_key("model.rgb_head.bias"));
    assert!(ck
        .tensors
        .keys()
        .all(|k| k.starts_with("model.") && !k.contains("fusion")));
    let conv = convert(None, None, Some(&ck), &ConvertOptions::default()).unwrap();
    assert!(conv.unknown.is_empty() && conv.ignored.is_empty());
    assert_eq!(conv.config.fusion.as_ref(), Some(&cfg));
    let back = UffParams::from_source(&conv.tensors, &cfg).unwrap();
    assert!(
        back.data == p.data,
        "the converter changed the trained weights"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// How far a training's output model `dev` (report `rd`) is from the CPU's `cpu` (`rc`):
/// the worst relative difference of the epoch losses, and over the fusion tensors
/// (`fusion.*`, `radar.*`) the worst difference relative to the tensor's peak, the worst
/// absolute one and the tensor of the latter.
#[cfg(feature = "cuda-sim")]
pub(crate) fn compare_trainings(
    cpu: &std::path::Path,
    rc: &miad::fit::train_fusion::TrainReport,
    dev: &std::path::Path,
    rd: &miad::fit::train_fusion::TrainReport,
) -> (f64, f64, f32, String) {
    use miad::format::{ModelFile, OpenOptions, TensorSource};
    let lrel = rc
        .epoch_losses
        .iter()
        .zip(&rd.epoch_losses)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() / a.abs()));
    let open = |p: &std::path::Path| ModelFile::open(p, &OpenOptions::default()).unwrap();
    let (a, b) = (open(cpu), open(dev));
    let (mut worst, mut worst_abs, mut name) = (0f64, 0f32, String::new());
    for spec in miad::format::model_tensor_specs(a.config()) {
        if !(spec.name.starts_with("fusion.") || spec.name.starts_with("radar.")) {
            continue;
        }
        let (x, y) = (
            a.f32(&spec.name, &spec.shape).unwrap(),
            b.f32(&spec.name, &spec.shape).unwrap(),
        );
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        let d = x.iter().zip(y).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
        worst = worst.max(d as f64 / peak);
        if d > worst_abs {
            (worst_abs, name) = (d, spec.name.clone());
        }
    }
    (lrel, worst, worst_abs, name)
}
