//! `miad demo`: the whole method end to end on data it makes itself. Synthesises a small
//! dataset in the MVTec 3D-AD layout, writes a model with seeded random weights, fits
//! every category, evaluates (complete data and RADAR's missing-modality protocol), and
//! writes heatmaps. Random weights are not the published networks: the demo shows the
//! machinery and its speed; accuracy on real parts needs the real checkpoints.

use crate::eval::{evaluate_with_bar, print_summary};
use crate::progress::FitBars;
use miad::config::ModelConfig;
use miad::engine::{Engine, EngineOptions};
use miad::eval::metrics::{format_table, MetricsRow};
use miad::eval::missing::MissingModality;
use miad::eval::run::EvalOptions;
use miad::eval::synth::{write_dataset, Category, SynthOptions};
use miad::fit::banks::FitOptions;
use miad::fit::category::{fit_category, CategoryFit};
use miad::format::{random_model, write_model};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Working folder: dataset, model, banks, heatmaps.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Seed of the dataset and of the model weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training parts per category.
    #[arg(long, default_value_t = 40)]
    pub train: usize,
    /// Defect-free and defective test parts per category (each).
    #[arg(long, default_value_t = 10)]
    pub test: usize,
    /// Categories (disc, torus, block).
    #[arg(long, value_delimiter = ',', default_values_t = ["disc".to_string(), "torus".to_string(), "block".to_string()])]
    pub categories: Vec<String>,
    /// Missing-modality rate of the RADAR evaluation (0 skips it).
    #[arg(long, default_value_t = 0.5)]
    pub missing_rate: f64,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: Args) -> miad::Result<()> {
    let t_all = Instant::now();
    let categories = a
        .categories
        .iter()
        .map(|s| Category::parse(s.trim()))
        .collect::<miad::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out).map_err(|e| miad::Error::io(&a.out, e))?;
    let data = a.out.join("data");
    let t = Instant::now();
    let summary = write_dataset(&SynthOptions {
        out: data.clone(),
        seed: a.seed,
        categories: categories.clone(),
        train: a.train,
        validation: 0,
        test_good: a.test,
        test_bad: a.test,
        size: 224,
    })?;
    println!(
        "1. synthetic dataset: {} parts in {} ({:.1} s; largest defect {:.1}% of its part)",
        summary.parts,
        data.display(),
        t.elapsed().as_secs_f64(),
        100.0 * summary.max_defect_fraction
    );
    let cfg = ModelConfig::demo();
    let model = a.out.join("model.miad");
    write_model(
        &cfg,
        &random_model(&cfg, a.seed),
        &[("source", "miad demo: seeded random weights")],
        &model,
    )?;
    println!(
        "2. model with seeded random weights: {} (ViT {}×{} depth {}, Point-MAE {} groups of {})",
        model.display(),
        cfg.preprocess.image_size,
        cfg.preprocess.image_size,
        cfg.vit.as_ref().map_or(0, |v| v.depth),
        cfg.point.as_ref().map_or(0, |p| p.num_groups),
        cfg.point.as_ref().map_or(0, |p| p.group_size)
    );
    let mut rows: Vec<MetricsRow> = Vec::new();
    let mut radar_rows: Vec<MetricsRow> = Vec::new();
    let heatmaps = a.out.join("heatmaps");
    for cat in &categories {
        let dir = data.join(cat.name());
        let bank = a.out.join(format!("{}.bank", cat.name()));
        let t = Instant::now();
        let mut bars = FitBars::new();
        let fitted = fit_category(
            &model,
            &dir,
            &bank,
            &CategoryFit {
                threads: a.threads,
                ..CategoryFit::default()
            },
            &FitOptions::default(),
            &mut |p| bars.update(p),
        )?;
        println!(
            "3. {}: fitted {} parts in {:.1} s (banks xyz {} / rgb {} / fused {} rows)",
            cat.name(),
            fitted.config.fit.parts,
            t.elapsed().as_secs_f64(),
            fitted.config.xyz_rows,
            fitted.config.rgb_rows,
            fitted.config.fused_rows
        );
        let mut engine = Engine::open(
            &model,
            &bank,
            &EngineOptions {
                threads: a.threads,
                ..EngineOptions::default()
            },
        )?;
        let mut settings = vec![(None, Some(heatmaps.join(cat.name())))];
        if a.missing_rate > 0.0 {
            settings.push((Some((a.missing_rate, MissingModality::Both, a.seed)), None));
        }
        for (missing, heat) in settings {
            let report = evaluate_with_bar(
                &mut engine,
                &dir,
                &EvalOptions {
                    missing,
                    heatmaps: heat,
                    max_parts: None,
                    complete_decision_only: false,
                    worst: None,
                    save_predictions: None,
                },
                &format!("eval {}", cat.name()),
            )?;
            print_summary(&report);
            match missing {
                None => rows.push(report.row),
                Some(_) => radar_rows.push(report.row),
            }
        }
    }
    println!("\n4. complete data (SPEC §10 metrics):");
    print!("{}", format_table(&rows));
    if !radar_rows.is_empty() {
        println!(
            "\n5. RADAR protocol: {:.0}% of the test parts miss the RGB image or the cloud (half each):",
            100.0 * a.missing_rate
        );
        print!("{}", format_table(&radar_rows));
    }
    println!(
        "\nheatmaps in {}; done in {:.1} s. Random weights: these numbers show the machinery, \
         not the accuracy of the published networks (see README).",
        heatmaps.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
