//! `miad eval`: I-AUROC, P-AUROC, AUPRO of a fitted category, optionally with RADAR's
//! missing-modality protocol (a fraction of the test parts without RGB or cloud).

use crate::progress::bar;
use miad::engine::Engine;
use miad::eval::metrics::format_rows;
use miad::eval::missing::MissingModality;
use miad::eval::run::{evaluate, EvalOptions, EvalReport};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub engine: crate::args::EngineArgs,
    /// Category folder (holds test/).
    #[arg(long)]
    pub data: PathBuf,
    /// Missing rates to evaluate besides complete data, e.g. 0.3,0.5,0.7.
    #[arg(long, value_delimiter = ',')]
    pub missing_rate: Vec<f64>,
    /// What the missing parts lack: cloud, rgb or both (η/2 each).
    #[arg(long, default_value = "both")]
    pub drop: String,
    /// Seed of the choice of incomplete parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write heatmaps into this folder.
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
    /// With --heatmaps: only the N worst parts (missed defects and false alarms first).
    #[arg(long)]
    pub worst: Option<usize>,
    /// Write every test part's label, score, map and mask here (format: see
    /// `miad::eval::run`), to recompute the metrics elsewhere.
    #[arg(long)]
    pub save_predictions: Option<PathBuf>,
    /// Evaluate at most this many test parts.
    #[arg(long)]
    pub max_parts: Option<usize>,
}

/// [`evaluate`] with a progress bar labelled `label`.
pub fn evaluate_with_bar(
    engine: &mut Engine,
    data: &std::path::Path,
    opts: &EvalOptions,
    label: &str,
) -> miad::Result<EvalReport> {
    let pb = bar(0, label);
    let report = evaluate(engine, data, opts, &mut |d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    });
    pb.finish_and_clear();
    report
}

/// Prints the verdict counts and latency of a report.
pub fn print_summary(r: &EvalReport) {
    let (fr, good, esc, bad) = r.verdict_counts();
    let t = r.sorted_times();
    let q = |p: f64| miad::eval::latency::percentile(&t, p) * 1e3;
    println!(
        "{}: {fr}/{good} good parts rejected, {esc}/{bad} defective parts passed; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.row.category,
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

pub fn run(a: Args) -> miad::Result<()> {
    let drop: MissingModality = a.drop.parse().map_err(miad::Error::Config)?;
    let mut engine = a.engine.open()?;
    type Setting = (String, Option<(f64, MissingModality, u64)>);
    let mut settings: Vec<Setting> = vec![("complete".into(), None)];
    for &r in &a.missing_rate {
        settings.push((
            format!("{drop:?} {:.0}%", 100.0 * r),
            Some((r, drop, a.seed)),
        ));
    }
    let mut rows = Vec::new();
    for (name, missing) in settings {
        let opts = EvalOptions {
            missing,
            heatmaps: if missing.is_none() {
                a.heatmaps.clone()
            } else {
                None
            },
            max_parts: a.max_parts,
            complete_decision_only: false,
            worst: a.worst,
            save_predictions: if missing.is_none() {
                a.save_predictions.clone()
            } else {
                None
            },
        };
        let report = evaluate_with_bar(&mut engine, &a.data, &opts, &name)?;
        print_summary(&report);
        let mut row = report.row;
        row.category = format!("{} ({name})", row.category);
        rows.push(row);
    }
    // One category under several settings: no mean row across settings.
    print!("{}", format_rows(&rows, rows.len() == 1));
    Ok(())
}
