//! `miad fit`: build the memory banks, decision layers and thresholds of one category.

use crate::progress::FitBars;
use miad::config::BankVariant;
use miad::fit::banks::FitOptions;
use miad::fit::category::{fit_category, CategoryFit};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (`miad model convert` or `miad model random`).
    #[arg(long)]
    pub model: PathBuf,
    /// Category folder in the MVTec 3D-AD layout (holds train/good).
    #[arg(long)]
    pub data: PathBuf,
    /// Bank file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Use at most this many training parts.
    #[arg(long)]
    pub max_parts: Option<usize>,
    /// Few-shot fit: the same as --max-parts.
    #[arg(long, conflicts_with = "max_parts")]
    pub shots: Option<usize>,
    /// Fraction of each bank kept by the greedy coreset.
    #[arg(long, default_value_t = 0.1)]
    pub coreset_ratio: f64,
    /// False-reject rate the thresholds are calibrated at.
    #[arg(long, default_value_t = 0.01)]
    pub frr: f32,
    /// Banks to build: full, rgb, xyz, fused, rgbxyz.
    #[arg(long, default_value = "full")]
    pub variant: String,
    /// Seed of the coreset projection.
    #[arg(long, default_value_t = 0x6d69_6164)]
    pub seed: u64,
    /// The data are already cleaned (plane removed, padded): only resize.
    #[arg(long)]
    pub preprocessed: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Skip RADAR's per-case statistics (rgb-only, cloud-only).
    #[arg(long)]
    pub no_radar: bool,
    /// Remove a modality from this fraction of the training parts (RADAR's protocol).
    #[arg(long)]
    pub missing_rate: Option<f64>,
    /// What those parts lack: cloud, rgb or both (half each).
    #[arg(long, default_value = "cloud")]
    pub drop: String,
    /// Seed of the choice of incomplete training parts.
    #[arg(long, default_value_t = 0)]
    pub missing_seed: u64,
    /// Folder of the scratch files (default: the system temp folder).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Where the coreset selection runs: cpu, cuda (falls back to the CPU, saying why) or
    /// auto.
    #[arg(long, default_value = "cpu")]
    pub backend: miad::backend::Backend,
}

pub fn run(a: Args) -> miad::Result<()> {
    let variant = BankVariant::parse(&a.variant).ok_or_else(|| {
        miad::Error::Config(format!(
            "unknown bank variant '{}' (full, rgb, xyz, fused, rgbxyz)",
            a.variant
        ))
    })?;
    let opts = FitOptions {
        variant,
        coreset_ratio: a.coreset_ratio,
        frr: a.frr,
        seed: a.seed,
        radar: !a.no_radar,
        scratch_dir: a.scratch.clone().unwrap_or_else(std::env::temp_dir),
        backend: a.backend,
        ..FitOptions::default()
    };
    let drop: miad::eval::missing::MissingModality = a.drop.parse().map_err(miad::Error::Config)?;
    let cat = CategoryFit {
        missing: a.missing_rate.map(|r| (r, drop, a.missing_seed)),
        max_parts: a.max_parts.or(a.shots),
        preprocessed: a.preprocessed,
        threads: a.threads,
        ..CategoryFit::default()
    };
    let t0 = std::time::Instant::now();
    let mut bars = FitBars::new();
    let fitted = fit_category(&a.model, &a.data, &a.out, &cat, &opts, &mut |p| {
        bars.update(p)
    })?;
    let c = &fitted.config;
    println!(
        "fitted {} from {} parts in {:.1} s: banks xyz {} rgb {} fused {} rows",
        c.category,
        c.fit.parts,
        t0.elapsed().as_secs_f64(),
        c.xyz_rows,
        c.rgb_rows,
        c.fused_rows
    );
    println!(
        "thresholds at {:.1}% false rejects: part {:.4}, pixel {:.4}; peak memory {}",
        100.0 * c.thresholds.false_reject_rate,
        c.thresholds.part,
        c.thresholds.pixel,
        fitted
            .peak_rss_kib
            .map_or("unknown".to_string(), |k| format!(
                "{:.0} MiB",
                k as f64 / 1024.0
            ))
    );
    for ph in &fitted.phases {
        println!(
            "  phase {:<44} {:>9.1} s  {:>10.1} {}/s",
            ph.phase,
            ph.seconds,
            ph.items as f64 / ph.seconds.max(1e-9),
            ph.unit
        );
    }
    for (b, (asked, computed)) in fitted.search_pairs.iter().enumerate() {
        if *asked > 0 {
            println!(
                "  leave-one-out search {:<6} {computed} of {asked} distances computed ({:.1}%)",
                miad::types::BANK_NAMES[b],
                100.0 * *computed as f64 / *asked as f64
            );
        }
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
