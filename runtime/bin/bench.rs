//! `miad bench`: the latency report (see `miad::eval::latency`): per-stage percentiles,
//! max/p50, histogram, allocations during the run; JSON and PNG. With `--bank-rows`, the
//! banks are first synthesised at the given sizes from the fitted ones (see
//! `miad::eval::scaled_bank`); with `--reference`, the stages are printed next to the
//! PyTorch reference's (`bench/reference/m3dm_torch.py`).

use crate::bench_reference::Reference;
use crate::progress::bar;
use miad::cpu::pool::Pool;
use miad::eval::dataset::{list_good, list_test};
use miad::eval::latency::run as run_latency;
use miad::eval::scaled_bank::write_scaled_bank;
use miad::format::{BankFile, OpenOptions};
use miad::types::BANK_NAMES;
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
    /// Folder of latency.json and latency.png (and comparison.md with --reference).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Bench with banks of these sizes, e.g. `xyz=15870,rgb=23520,fused=94080` (a
    /// 300-part category): synthesised from the --bank file's banks (a prefix of their
    /// rows, or all of them plus noisy copies), written to OUT/scaled.bank for the run and
    /// removed after it. Banks not named keep their fitted size.
    #[arg(long, value_parser = parse_bank_rows)]
    pub bank_rows: Option<BankRows>,
    /// JSON of `bench/reference/m3dm_torch.py` (PyTorch's M3DM stages): prints miad's
    /// stages next to it with the ratios and writes OUT/comparison.md.
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

/// Requested rows per bank (xyz, rgb, fused).
#[derive(Clone, Copy, Debug)]
pub struct BankRows(pub [Option<usize>; 3]);

/// `xyz=N,rgb=N,fused=N`, any non-empty subset, each bank at most once.
fn parse_bank_rows(text: &str) -> Result<BankRows, String> {
    let mut rows = [None; 3];
    for item in text.split(',') {
        let (name, value) = item.split_once('=').ok_or_else(|| {
            format!("'{item}' is not BANK=ROWS (e.g. xyz=15870,rgb=23520,fused=94080)")
        })?;
        let b = BANK_NAMES
            .iter()
            .position(|n| *n == name.trim())
            .ok_or_else(|| format!("unknown bank '{name}' (xyz, rgb, fused)"))?;
        if rows[b].is_some() {
            return Err(format!("bank '{name}' given twice"));
        }
        let n: usize = value
            .trim()
            .parse()
            .map_err(|_| format!("rows of '{name}': '{value}' is not a whole number"))?;
        if n == 0 {
            return Err(format!("rows of '{name}' must be at least 1"));
        }
        rows[b] = Some(n);
    }
    Ok(BankRows(rows))
}

/// Removes the synthesised bank file when the bench ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Seed of the synthesised rows: fixed, so two benches search the same banks.
const SCALED_BANK_SEED: u64 = 0x6d69_6164;

pub fn run(mut a: Args) -> miad::Result<()> {
    // Checked before the (long) run.
    let reference = a.reference.as_deref().map(Reference::load).transpose()?;
    std::fs::create_dir_all(&a.out).map_err(|e| miad::Error::io(&a.out, e))?;
    let _scaled = match a.bank_rows {
        Some(BankRows(rows)) => {
            let path = a.out.join("scaled.bank");
            let guard = RemoveOnDrop(path.clone());
            let src = BankFile::open(&a.engine.bank, &OpenOptions::default(), None)?;
            let pool = match a.engine.threads {
                0 => Pool::with_available_cores(),
                t => Pool::new(t),
            };
            for i in write_scaled_bank(&pool, &src, rows, SCALED_BANK_SEED, &path)? {
                let search = match i.clusters {
                    0 => "unpruned search".to_string(),
                    k => format!("pruned search, {k} clusters"),
                };
                println!(
                    "{} bank: {} rows synthesised from {} fitted (nearest-row spacing {:.3}, noise σ {:.4} per value; {search})",
                    i.name, i.rows, i.fitted_rows, i.spacing, i.noise_std
                );
            }
            a.engine.bank = path;
            Some(guard)
        }
        None => None,
    };
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
    let json = a.out.join("latency.json");
    std::fs::write(&json, report.to_json()).map_err(|e| miad::Error::io(&json, e))?;
    let png = a.out.join("latency.png");
    report.plot().save_png(&png)?;
    println!("backend: {}", report.backend);
    let banks: Vec<String> = report
        .banks
        .iter()
        .map(|b| match b.clusters {
            0 => format!("{} {} × {} unpruned", b.name, b.rows, b.dim),
            k => format!("{} {} × {} pruned ({k} clusters)", b.name, b.rows, b.dim),
        })
        .collect();
    println!("banks: {} ({})", banks.join(", "), report.banks_origin);
    print!("{}", report.table());
    println!(
        "RGB branch {:.1} GFLOP/s = {:.2} of the measured peak {:.1} GFLOP/s ({} threads)",
        report.rgb_gflops,
        report.rgb_gflops / report.peak_gflops,
        report.peak_gflops,
        report.threads
    );
    println!("wrote {} and {}", json.display(), png.display());
    if let Some(r) = reference {
        let table = r.table(&report);
        let notes: Vec<String> = r
            .mismatches(&report)
            .into_iter()
            .map(|m| format!("note: {m}"))
            .collect();
        println!("\n{table}");
        for n in &notes {
            println!("{n}");
        }
        let md = a.out.join("comparison.md");
        let text = format!("{table}\n{}", notes.join("\n"));
        std::fs::write(&md, text).map_err(|e| miad::Error::io(&md, e))?;
        println!("wrote {}", md.display());
    }
    Ok(())
}
