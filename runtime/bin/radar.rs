//! `miad radar`: RADAR's missing-modality study on one category. For each missing rate,
//! the same fraction of training and of test parts loses a modality; the banks are
//! fitted on that training set, and the test set is scored twice: incomplete parts decided
//! with their case's statistics (SPEC §9) and with the complete-data decision layers.

use crate::eval::evaluate_with_bar;
use crate::progress::FitBars;
use miad::engine::{Engine, EngineOptions};
use miad::eval::missing::MissingModality;
use miad::eval::run::EvalOptions;
use miad::fit::banks::FitOptions;
use miad::fit::category::{fit_category, CategoryFit};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub model: PathBuf,
    /// Category folder (train/ and test/).
    #[arg(long)]
    pub data: PathBuf,
    /// Missing rates, applied to training and test parts alike.
    #[arg(long, value_delimiter = ',', default_values_t = [0.3, 0.5, 0.7])]
    pub rates: Vec<f64>,
    /// What the incomplete parts lack: cloud, rgb or both.
    #[arg(long, default_value = "cloud")]
    pub drop: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for the bank files of each rate.
    #[arg(long, default_value = "radar-out")]
    pub out: PathBuf,
    #[arg(long)]
    pub preprocessed: bool,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: Args) -> miad::Result<()> {
    let drop: MissingModality = a.drop.parse().map_err(miad::Error::Config)?;
    std::fs::create_dir_all(&a.out).map_err(|e| miad::Error::io(&a.out, e))?;
    let mut lines = Vec::new();
    // (I-AUROC, P-AUROC) sums and counts per decider over the missing rates.
    let mut sums = [[0.0f64; 2]; 2];
    let mut counts = [0usize; 2];
    let rates: Vec<f64> = std::iter::once(0.0)
        .chain(a.rates.iter().copied())
        .collect();
    for rate in rates {
        let bank = a.out.join(format!("missing-{:.0}.bank", 100.0 * rate));
        let missing = (rate > 0.0).then_some((rate, drop, a.seed));
        let mut bars = FitBars::new();
        fit_category(
            &a.model,
            &a.data,
            &bank,
            &CategoryFit {
                threads: a.threads,
                preprocessed: a.preprocessed,
                missing,
                ..CategoryFit::default()
            },
            &FitOptions::default(),
            &mut |p| bars.update(p),
        )?;
        let mut engine = Engine::open(
            &a.model,
            &bank,
            &EngineOptions {
                threads: a.threads,
                preprocessed: a.preprocessed,
                ..EngineOptions::default()
            },
        )?;
        let test_missing = missing.map(|(r, d, s)| (r, d, s.wrapping_add(1)));
        let deciders: &[(bool, &str)] = if rate > 0.0 {
            &[(false, "per-case (RADAR)"), (true, "complete-case")]
        } else {
            &[(false, "complete data")]
        };
        for &(complete_only, name) in deciders {
            let r = evaluate_with_bar(
                &mut engine,
                &a.data,
                &EvalOptions {
                    missing: test_missing,
                    heatmaps: None,
                    max_parts: None,
                    complete_decision_only: complete_only,
                    worst: None,
                    save_predictions: None,
                },
                &format!("{:.0}% {name}", 100.0 * rate),
            )?;
            if rate > 0.0 {
                let k = usize::from(complete_only);
                sums[k][0] += r.row.i_auroc.unwrap_or(f64::NAN);
                sums[k][1] += r.row.p_auroc.unwrap_or(f64::NAN);
                counts[k] += 1;
            }
            let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
            lines.push(format!(
                "{:>7} | {:<17} | {:>7} | {:>7} | {:>7}",
                format!("{:.0}%", 100.0 * rate),
                name,
                f(r.row.i_auroc),
                f(r.row.p_auroc),
                f(r.row.aupro)
            ));
        }
    }
    println!(
        "RADAR study, {} missing in training and testing ({}):",
        match drop {
            MissingModality::Cloud => "point clouds",
            MissingModality::Rgb => "RGB images",
            MissingModality::Both => "point clouds or RGB images (half each)",
        },
        a.data.display()
    );
    println!(
        "{:>7} | {:<17} | {:>7} | {:>7} | {:>7}",
        "missing", "decision", "I-AUROC", "P-AUROC", "AUPRO"
    );
    println!("{}", "-".repeat(59));
    for l in lines {
        println!("{l}");
    }
    println!("{}", "-".repeat(59));
    for (k, name) in ["per-case (RADAR)", "complete-case"].iter().enumerate() {
        if counts[k] > 0 {
            let n = counts[k] as f64;
            println!(
                "{:>7} | {:<17} | {:>7.3} | {:>7.3} |",
                "mean",
                name,
                sums[k][0] / n,
                sums[k][1] / n
            );
        }
    }
    Ok(())
}
