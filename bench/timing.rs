//! Timing for the bench programs (`cargo bench --bench NAME`): a warm-up run, then
//! repeated runs; the median and the best run, printed with the work rate when the work
//! per run is known. The numbers are for ratios (to the machine's measured peak, or to a
//! peer timed in the same program), never bare times to compare across machines.

#![allow(dead_code)] // each bench program uses part of it

use std::time::Instant;

/// Seconds per run: the median and the best of the timed runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median: f64,
    pub best: f64,
    pub runs: usize,
}

/// Runs `f` once to warm up, then `runs` times (at least one), timing each.
pub fn time_runs(runs: usize, mut f: impl FnMut()) -> Timing {
    f();
    let runs = runs.max(1);
    let mut secs: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    Timing {
        median: secs[runs / 2],
        best: secs[0],
        runs,
    }
}

impl Timing {
    /// `name: median X ms (best Y ms, N runs)`, plus `rate unit/s` for `work` units per run.
    pub fn print(&self, name: &str, work: Option<(f64, &str)>) {
        let rate = work
            .map(|(w, unit)| format!(", {:.2} {unit}/s", w / self.median))
            .unwrap_or_default();
        println!(
            "{name}: median {:.3} ms (best {:.3} ms, {} runs){rate}",
            self.median * 1e3,
            self.best * 1e3,
            self.runs
        );
    }
}

/// A size from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1-minute load average, for the record next to a measurement on a shared machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds of this process so far (user + system, all threads; from
/// `/proc/self/stat`, 0 where it cannot be read).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}
