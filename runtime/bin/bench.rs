//! `miad bench`: the latency report (see `miad::eval::latency`): per-stage percentiles,
//! max/p50, histogram, allocations during the run; JSON and PNG.

use crate::progress::bar;
use miad::eval::dataset::{list_good, list_test};
use miad::eval::latency::run as run_latency;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub engine: crate::args::EngineArgs,
    /// Category folder whose test (or else train) parts are inspected in turn.
    #[arg(long)]
    pub data: PathBuf,
    /// Timed inspections.
    #[arg(long, default_value_t = 1000)]
    pub parts: usize,
    /// Untimed inspections first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Folder of latency.json and latency.png.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

pub fn run(a: Args) -> miad::Result<()> {
    let mut engine = a.engine.open()?;
    let mut files = list_test(&a.data).unwrap_or_default();
    if files.is_empty() {
        files = list_good(&a.data, "train")?;
    }
    let parts = files
        .iter()
        .take(16)
        .map(|p| p.load())
        .collect::<miad::Result<Vec<_>>>()?;
    let pb = bar(a.parts, "inspect");
    let report = run_latency(&mut engine, &parts, a.parts, a.warmup, None, &mut |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).map_err(|e| miad::Error::io(&a.out, e))?;
    let json = a.out.join("latency.json");
    std::fs::write(&json, report.to_json()).map_err(|e| miad::Error::io(&json, e))?;
    let png = a.out.join("latency.png");
    report.plot().save_png(&png)?;
    println!("backend: {}", report.backend);
    print!("{}", report.table());
    println!(
        "RGB branch {:.1} GFLOP/s = {:.2} of the measured peak {:.1} GFLOP/s ({} threads)",
        report.rgb_gflops,
        report.rgb_gflops / report.peak_gflops,
        report.peak_gflops,
        report.threads
    );
    println!("wrote {} and {}", json.display(), png.display());
    Ok(())
}
