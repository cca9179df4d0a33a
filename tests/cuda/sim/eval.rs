//! Evaluation on the simulated device gives the CPU's metrics, complete data and RADAR's
//! missing-modality protocol, to 1e-3: `miad eval --backend cuda-sim` against `--backend
//! cpu` from the command line (or the library's `evaluate` when the command is not built).

use crate::common;

use miad::backend::{Backend, Precision};
use miad::engine::Engine;
use miad::eval::missing::MissingModality;
use miad::eval::run::{evaluate, EvalOptions};
use miad::eval::synth::Category;

use super::engine::{assert_on_the_simulated_device, options};

fn metrics(backend: Backend, fx: &common::Fixture, missing: Option<f64>) -> [Option<f64>; 3] {
    let mut e = Engine::open(&fx.model, &fx.bank, &options(backend, Precision::F32)).unwrap();
    if backend == Backend::CudaSim {
        assert_on_the_simulated_device(&e);
    }
    let opts = EvalOptions {
        missing: missing.map(|r| (r, MissingModality::Both, 3)),
        heatmaps: None,
        worst: None,
        save_predictions: None,
        max_parts: None,
        complete_decision_only: false,
    };
    let r = evaluate(&mut e, &fx.category, &opts, &mut |_, _| {}).unwrap();
    [r.row.i_auroc, r.row.p_auroc, r.row.aupro]
}

fn assert_close(cpu: [Option<f64>; 3], sim: [Option<f64>; 3], what: &str) {
    for (k, (a, b)) in cpu.iter().zip(&sim).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-3, "{what} metric {k}: {a} {b}"),
            _ => assert_eq!(a, b, "{what} metric {k}"),
        }
    }
}

/// Six test parts: with four, AUPRO under 50 % missing data differed by 1.2e-3 (a coarse
/// step function of few regions, and cloud-only maps differ by up to ~1e-3 of their
/// peak: see `engine::parity`). Complete data and 50 % missing: through `miad eval`
/// when the command is built (it calls the library's `evaluate`), else the library's
/// `evaluate` directly; each evaluation on the simulated device runs once (time).
#[test]
fn evaluation_on_the_simulated_device_gives_the_cpu_metrics() {
    let fx = common::fitted_with(
        common::for_the_emulator(common::small_hd64()),
        "sim-eval",
        Category::Disc,
        21,
        4,
        3,
    );
    if miad_eval_with_backend_cuda_sim_prints_the_cpu_metrics(&fx) {
        return;
    }
    for missing in [None, Some(0.5)] {
        let cpu = metrics(Backend::Cpu, &fx, missing);
        let sim = metrics(Backend::CudaSim, &fx, missing);
        assert!(cpu.iter().any(Option::is_some));
        assert_close(cpu, sim, &format!("missing {missing:?}"));
    }
}

/// The numbers of the metrics table `miad eval` prints (I-AUROC, P-AUROC, AUPRO per row).
fn table_numbers(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.parse::<f64>().ok())
        .filter(|v| (0.0..=1.0).contains(v))
        .collect()
}

/// `miad eval --backend cuda-sim` prints the metrics `--backend cpu` prints (complete
/// data and 50 % missing). False when the command is not built (feature `cli` off).
fn miad_eval_with_backend_cuda_sim_prints_the_cpu_metrics(fx: &common::Fixture) -> bool {
    let Some(exe) = option_env!("CARGO_BIN_EXE_miad") else {
        return false;
    };
    let run = |backend: &str| {
        let out = std::process::Command::new(exe)
            .args([
                "eval",
                "--threads",
                "2",
                "--backend",
                backend,
                "--missing-rate",
                "0.5",
                // The incomplete parts the library comparison chose before (seed 3).
                "--seed",
                "3",
            ])
            .arg("--model")
            .arg(&fx.model)
            .arg("--bank")
            .arg(&fx.bank)
            .arg("--data")
            .arg(&fx.category)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "miad eval --backend {backend}: {stderr}"
        );
        (stdout, stderr)
    };
    let (cpu, _) = run("cpu");
    let (sim, note) = run("cuda-sim");
    // Every stage on the simulated device, nothing left on the CPU.
    assert!(
        note.contains("backend: cuda-sim on simulated device")
            && note.contains("point branch, rgb branch, fusion, bank search")
            && !note.contains("the rest on the CPU"),
        "{note}"
    );
    let (a, b) = (table_numbers(&cpu), table_numbers(&sim));
    assert!(!a.is_empty(), "{cpu}");
    assert_eq!(a.len(), b.len(), "{cpu}\n{sim}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-3, "{cpu}\n{sim}");
    }
    true
}
