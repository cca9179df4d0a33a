//! The `miad` command. Each subcommand lives in its own file with its arguments and a `run`.

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod bench_reference;
mod demo;
mod eval;
mod extract;
mod fit;
mod inspect;
mod model;
mod progress;
mod radar;
mod synth;
mod train_fusion;

#[derive(Parser)]
#[command(
    name = "miad",
    version,
    about = "Multimodal (RGB + 3-D) industrial anomaly detection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model and bank files: info, random, convert.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Same as `miad model convert`: published checkpoints → one model file.
    Convert(model::ConvertArgs),
    /// Write the stage outputs of one part to a safetensors file.
    Extract(extract::Args),
    /// Build the memory banks and decision layers of one product category.
    Fit(fit::Args),
    /// Train the learned fusion (M3DM's UFF) on a category and write a new model file.
    TrainFusion(train_fusion::Args),
    /// Inspect parts: score, verdict, regions, heatmap.
    Inspect(inspect::Args),
    /// Evaluate on a dataset: I-AUROC, P-AUROC, AUPRO.
    Eval(eval::Args),
    /// RADAR study: missing modalities in training and testing, per-case vs complete-case decisions.
    Radar(radar::Args),
    /// Write a synthetic dataset in the MVTec 3D-AD layout.
    Synth(synth::Args),
    /// Latency report: per-stage percentiles, histogram, JSON and PNG.
    Bench(bench::Args),
    /// Synthesise data, make a small model, fit, evaluate, print metrics and timings.
    Demo(demo::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(c) => model::run(c),
        Command::Convert(a) => model::run(model::ModelCommand::Convert(a)),
        Command::Extract(a) => extract::run(a),
        Command::Fit(a) => fit::run(a),
        Command::TrainFusion(a) => train_fusion::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Radar(a) => radar::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("miad: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
