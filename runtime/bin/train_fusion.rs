//! `miad train-fusion`: train the learned fusion of a model on one category's training
//! parts and write a new model file (docs/RADAR-FUSION.md §5b).

use crate::progress::TrainBar;
use miad::fit::train_fusion::{train_fusion_category, CategoryTrain, Init, UffTrainOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file whose fusion is trained (its other networks compute the features).
    #[arg(long)]
    pub model: PathBuf,
    /// Category folder in the MVTec 3D-AD layout (holds train/good).
    #[arg(long)]
    pub data: PathBuf,
    /// Fusion to train: uff (M3DM). radar is specified in docs/RADAR-FUSION.md §9b but
    /// not implemented yet.
    #[arg(long, default_value = "uff")]
    pub method: String,
    /// Model file to write (the input model with the trained fusion).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training parts.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Parts per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Non-empty patches drawn per part and step (0 = all, as the reference code).
    #[arg(long, default_value_t = 64)]
    pub patches: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 0.003)]
    pub lr: f32,
    /// Warm-up steps (default: a third of all steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,
    /// Seed of the initialisation, the shuffles and the patch draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial fusion weights: random (PyTorch's default initialisation) or model (the
    /// input model's, to fine-tune).
    #[arg(long, default_value = "random")]
    pub init: Init,
    /// Use at most this many training parts.
    #[arg(long)]
    pub max_parts: Option<usize>,
    /// The data are already cleaned (plane removed, padded): only resize.
    #[arg(long)]
    pub preprocessed: bool,
    /// Worker threads (0 = all cores). Results are the same for any count.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Folder of the scratch files (default: the system temp folder).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Also write the trained fusion as the authors' UFF checkpoint lays it out
    /// (safetensors; `miad model convert --fusion` reads it).
    #[arg(long)]
    pub export_checkpoint: Option<PathBuf>,
}

pub fn run(a: Args) -> miad::Result<()> {
    if a.method != "uff" {
        return Err(miad::Error::Config(format!(
            "--method {}: only uff is implemented (radar: docs/RADAR-FUSION.md §9b, not yet)",
            a.method
        )));
    }
    let opts = UffTrainOptions {
        epochs: a.epochs,
        batch: a.batch,
        patches: a.patches,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        seed: a.seed,
        init: a.init,
        ..UffTrainOptions::default()
    };
    let cat = CategoryTrain {
        max_parts: a.max_parts,
        preprocessed: a.preprocessed,
        threads: a.threads,
        scratch_dir: a.scratch.clone().unwrap_or_else(std::env::temp_dir),
        export: a.export_checkpoint.clone(),
        ..CategoryTrain::default()
    };
    let mut bar = TrainBar::new();
    let r = train_fusion_category(&a.model, &a.data, &a.out, &cat, &opts, &mut |p| {
        bar.update(p)
    })?;
    println!(
        "trained uff on {} parts: features {:.1} s; {} steps ({} patch pairs) in {:.2} s = {:.3} s/step, {:.1} GFLOP/s on {} threads",
        r.parts,
        r.extract_seconds,
        r.steps,
        r.rows,
        r.train_seconds,
        r.train_seconds / r.steps.max(1) as f64,
        r.flops / r.train_seconds.max(1e-9) / 1e9,
        if a.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            a.threads
        }
    );
    println!(
        "mean loss first epoch {:.4}, last epoch {:.4}; fixed batch of {} patches: {:.4} -> {:.4}",
        r.epoch_losses.first().copied().unwrap_or(f64::NAN),
        r.epoch_losses.last().copied().unwrap_or(f64::NAN),
        r.eval_rows,
        r.eval_before,
        r.eval_after
    );
    println!("wrote {}", a.out.display());
    if let Some(p) = &a.export_checkpoint {
        println!("wrote {} (the authors' checkpoint layout)", p.display());
    }
    Ok(())
}
