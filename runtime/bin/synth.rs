//! `miad synth`: write a synthetic dataset in the MVTec 3D-AD layout.

use std::path::PathBuf;

use miad::eval::synth::{write_dataset, Category, SynthOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (one sub-folder per category).
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed and options give byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Categories to write (disc, torus, block).
    #[arg(long, value_delimiter = ',', default_values_t = ["disc".to_string(), "torus".to_string(), "block".to_string()])]
    categories: Vec<String>,
    /// Training parts (train/good) per category.
    #[arg(long, default_value_t = 20)]
    train: usize,
    /// Validation parts (validation/good) per category.
    #[arg(long, default_value_t = 5)]
    validation: usize,
    /// Defect-free test parts (test/good) per category.
    #[arg(long, default_value_t = 10)]
    test_good: usize,
    /// Defective test parts per category, spread over dent, bump, hole, crack, stain.
    #[arg(long, default_value_t = 10)]
    test_bad: usize,
    /// Image side in pixels (the field of view stays 0.12 m).
    #[arg(long, default_value_t = 224)]
    size: usize,
}

pub fn run(args: Args) -> miad::Result<()> {
    let categories = args
        .categories
        .iter()
        .map(|s| Category::parse(s.trim()))
        .collect::<miad::Result<Vec<_>>>()?;
    let opts = SynthOptions {
        out: args.out,
        seed: args.seed,
        categories,
        train: args.train,
        validation: args.validation,
        test_good: args.test_good,
        test_bad: args.test_bad,
        size: args.size,
    };
    let t0 = std::time::Instant::now();
    let summary = write_dataset(&opts)?;
    println!(
        "wrote {} parts to {} in {:.1} s (largest defect: {:.1}% of its part)",
        summary.parts,
        opts.out.display(),
        t0.elapsed().as_secs_f64(),
        100.0 * summary.max_defect_fraction
    );
    Ok(())
}
