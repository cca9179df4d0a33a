//! `miad train-fusion`: train the learned fusion of a model on one category's training
//! parts and write a new model file (docs/RADAR-FUSION.md §5b).

use crate::progress::TrainBar;
use miad::config::RadarConfig;
use miad::fit::train_fusion::{
    train_fusion_category, CategoryTrain, Init, TrainBackend, UffTrainOptions,
};
use miad::fit::train_radar::{train_radar_category, RadarTrainOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file whose fusion is trained (its other networks compute the features).
    #[arg(long)]
    pub model: PathBuf,
    /// Category folder in the MVTec 3D-AD layout (holds train/good).
    #[arg(long)]
    pub data: PathBuf,
    /// Fusion to train: uff (M3DM's, §5b) or radar (RADAR's adaptive instruction fusion,
    /// docs/RADAR-FUSION.md §9b; the output model gains the `radar` configuration).
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
    /// Peak learning rate (AdamW); default 0.003 for uff, 0.001 for radar (everything
    /// but the instructions).
    #[arg(long)]
    pub lr: Option<f32>,
    /// radar: peak learning rate of the instructions.
    #[arg(long, default_value_t = 0.01)]
    pub lr_instructions: f32,
    /// radar: token width (default 256, or the input RADAR model's).
    #[arg(long)]
    pub radar_dim: Option<u32>,
    /// radar: transformer blocks, one instruction set each (default 4).
    #[arg(long)]
    pub radar_depth: Option<u32>,
    /// radar: attention heads (default 4).
    #[arg(long)]
    pub radar_heads: Option<u32>,
    /// radar: instruction tokens per case and layer (default 16).
    #[arg(long)]
    pub instruction_len: Option<u32>,
    /// radar: without the Real-Pseudo Hybrid Module (docs/RADAR-FUSION.md §9c).
    #[arg(long)]
    pub no_hybrid: bool,
    /// radar: this fraction of the training parts loses a modality for the whole
    /// training (RADAR's protocol, as `miad fit --missing-rate`).
    #[arg(long)]
    pub missing_rate: Option<f64>,
    /// What the incomplete training parts lack: cloud, rgb or both (half each).
    #[arg(long, default_value = "cloud")]
    pub drop: String,
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
    /// Where the training steps run: cpu, cuda (the first GPU) or cuda-sim (the simulated
    /// device); the device backends need a build with the cuda (cuda-sim) feature and
    /// train uff only. The features are computed on the CPU either way.
    #[arg(long, default_value = "cpu")]
    pub backend: TrainBackend,
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
    if a.method != "uff" && a.method != "radar" {
        return Err(miad::Error::Config(format!(
            "--method {}: uff or radar",
            a.method
        )));
    }
    if a.method == "radar" && a.backend != TrainBackend::Cpu {
        return Err(miad::Error::Config(format!(
            "--backend {}: RADAR's fusion trains on the CPU only (the device trains uff)",
            a.backend.name()
        )));
    }
    if a.method == "radar" && a.export_checkpoint.is_some() {
        return Err(miad::Error::Config(
            "--export-checkpoint writes the authors' UFF layout: --method uff only".into(),
        ));
    }
    let opts = UffTrainOptions {
        epochs: a.epochs,
        batch: a.batch,
        patches: a.patches,
        lr: a.lr.unwrap_or(0.003),
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        seed: a.seed,
        init: a.init,
        backend: a.backend,
        ..UffTrainOptions::default()
    };
    let cat = CategoryTrain {
        max_parts: a.max_parts,
        preprocessed: a.preprocessed,
        threads: a.threads,
        scratch_dir: a.scratch.clone().unwrap_or_else(std::env::temp_dir),
        export: a.export_checkpoint.clone(),
        missing: match a.missing_rate {
            Some(rate) => Some((rate, a.drop.parse().map_err(miad::Error::Config)?, a.seed)),
            None => None,
        },
        ..CategoryTrain::default()
    };
    let mut bar = TrainBar::new();
    let r = if a.method == "radar" {
        let ropts = RadarTrainOptions {
            epochs: a.epochs,
            batch: a.batch,
            patches: a.patches,
            lr: a.lr.unwrap_or(0.001),
            lr_instructions: a.lr_instructions,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            seed: a.seed,
            init: a.init,
            ..RadarTrainOptions::default()
        };
        let sizes = radar_sizes(&a)?;
        train_radar_category(&a.model, &a.data, &a.out, &cat, &ropts, sizes, &mut |p| {
            bar.update(p)
        })?
    } else {
        train_fusion_category(&a.model, &a.data, &a.out, &cat, &opts, &mut |p| {
            bar.update(p)
        })?
    };
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    let on = match a.backend {
        TrainBackend::Cpu => format!("on {threads} threads"),
        b => format!("on {}", b.name()),
    };
    println!(
        "trained {} on {} parts: features {:.1} s; {} steps ({} patch pairs) in {:.2} s = {:.3} s/step, {:.1} GFLOP/s {on}",
        a.method,
        r.parts,
        r.extract_seconds,
        r.steps,
        r.rows,
        r.train_seconds,
        r.train_seconds / r.steps.max(1) as f64,
        r.flops / r.train_seconds.max(1e-9) / 1e9,
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

/// The RADAR sizes asked for on the command line (§9b's for the rest; `None` when none
/// is given: the input model's, or §9b's).
fn radar_sizes(a: &Args) -> miad::Result<Option<RadarConfig>> {
    if a.radar_dim.is_none()
        && a.radar_depth.is_none()
        && a.radar_heads.is_none()
        && a.instruction_len.is_none()
        && !a.no_hybrid
    {
        return Ok(None);
    }
    let model = miad::format::ModelFile::open(&a.model, &Default::default())?;
    let grid = model.config().vit.as_ref().map_or(0, |v| v.grid() as u32);
    let base = model
        .config()
        .radar
        .clone()
        .unwrap_or_else(|| RadarConfig::paper(grid));
    Ok(Some(RadarConfig {
        dim: a.radar_dim.unwrap_or(base.dim),
        depth: a.radar_depth.unwrap_or(base.depth),
        heads: a.radar_heads.unwrap_or(base.heads),
        instruction_len: a.instruction_len.unwrap_or(base.instruction_len),
        hybrid: base.hybrid && !a.no_hybrid,
        ..base
    }))
}
