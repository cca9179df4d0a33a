//! The latency report of `miad bench`: N inspections after a warm-up, per stage and in
//! total p50 / p90 / p99 / p99.9 / max and max/p50, a histogram of the totals, the
//! allocations counted during the timed run (when the process counts them), and the RGB
//! branch's compute rate as a fraction of the machine's measured peak. On the CUDA
//! backend with the whole part on the device the stage times are the device's own, from
//! time marks between the stages in the part's graph (see
//! `cuda::stages::part::DevicePart::stage_times`; the two networks overlap on a GPU).
//! Written as JSON
//! (schema in [`LatencyReport::to_json`]) and as a PNG a certification engineer can file.

use super::dataset::LoadedPart;
use super::picture::{histogram_plot, Canvas};
use crate::engine::{Engine, InspectOptions};
use crate::{Error, Result};
use std::fmt::Write as _;

/// Percentiles of one stage, milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct StageStats {
    pub name: &'static str,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// max / p50: how far the worst part strays from the typical one.
    pub max_over_p50: f64,
}

impl StageStats {
    /// Stats of `ms` (any order).
    pub fn of(name: &'static str, ms: &[f64]) -> Self {
        let mut s = ms.to_vec();
        s.sort_by(f64::total_cmp);
        let p50 = percentile(&s, 0.5);
        let max = s.last().copied().unwrap_or(0.0);
        StageStats {
            name,
            mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
            p50,
            p90: percentile(&s, 0.9),
            p99: percentile(&s, 0.99),
            p999: percentile(&s, 0.999),
            max,
            max_over_p50: if p50 > 0.0 { max / p50 } else { 0.0 },
        }
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `q` of the
/// values at or below it (the max for q = 1; p99.9 of fewer than 1000 values is the max).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The report (see the module doc).
#[derive(Clone, Debug)]
pub struct LatencyReport {
    pub model: String,
    /// What ran where: `cpu`, `cuda on <device>: <stages>`, or the CPU with the reason
    /// CUDA was not used.
    pub backend: String,
    pub threads: usize,
    pub parts: usize,
    pub warmup: usize,
    pub stages: Vec<StageStats>,
    /// Totals of every timed inspection, milliseconds, in run order.
    pub totals_ms: Vec<f64>,
    /// Heap allocations during the timed run (None when the process does not count).
    pub allocations: Option<u64>,
    /// GFLOP/s of the RGB branch at its p50 time, and the machine's measured peak.
    pub rgb_gflops: f64,
    pub peak_gflops: f64,
    /// The banks searched (present ones, score-vector order): the score stage's size.
    pub banks: Vec<BankSize>,
    /// How the banks were made: `fitted`, or the provenance of banks synthesised at
    /// other sizes (`miad bench --bank-rows`, see [`super::scaled_bank`]).
    pub banks_origin: String,
    /// What the host asks of the device per timed part: graph launches and host
    /// synchronisations (CUDA backends; None on the CPU).
    pub graph_launches_per_part: Option<f64>,
    pub host_syncs_per_part: Option<f64>,
    /// The stages that run on the CPU (all of them on the CPU backend).
    pub cpu_stages: Vec<&'static str>,
    /// The device's fast bank search (bf16, the whole part on the device): exact split
    /// scans per timed part, and the fraction of its queries that scanned at least one
    /// split (None elsewhere).
    pub exact_scans_per_part: Option<f64>,
    pub queries_scanning_fraction: Option<f64>,
}

/// Rows and width of one bank, and how it is searched.
#[derive(Clone, Debug, PartialEq)]
pub struct BankSize {
    pub name: &'static str,
    pub rows: usize,
    pub dim: usize,
    /// Clusters of the pruned CPU search (0: unpruned; see [`Engine::search_clusters`]).
    pub clusters: usize,
}

/// The present banks of the engine's bank file and where they came from.
fn bank_sizes(engine: &Engine) -> (Vec<BankSize>, String) {
    let c = engine.bank_config();
    let sizes = [
        (c.xyz_rows, c.xyz_dim),
        (c.rgb_rows, c.rgb_dim),
        (c.fused_rows, c.fused_dim),
    ];
    let clusters = engine.search_clusters();
    let banks = crate::types::BANK_NAMES
        .iter()
        .zip(sizes)
        .zip(clusters)
        .filter(|((_, (rows, _)), _)| *rows > 0)
        .map(|((&name, (rows, dim)), clusters)| BankSize {
            name,
            rows: rows as usize,
            dim: dim as usize,
            clusters,
        })
        .collect();
    let origin = engine
        .bank_file()
        .container()
        .manifest()
        .provenance
        .iter()
        .find(|(k, _)| k == super::scaled_bank::PROVENANCE_KEY)
        .map_or_else(|| "fitted".to_string(), |(_, v)| v.clone());
    (banks, origin)
}

/// Runs `warmup` untimed then `n` timed inspections over `parts` (cycled).
/// `count_allocations` reads a process-wide allocation counter, when there is one.
pub fn run(
    engine: &mut Engine,
    parts: &[LoadedPart],
    n: usize,
    warmup: usize,
    count_allocations: Option<&dyn Fn() -> u64>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LatencyReport> {
    if parts.is_empty() || n == 0 {
        return Err(Error::Input("a latency run needs parts and n ≥ 1".into()));
    }
    let opts = InspectOptions::default();
    for i in 0..warmup {
        let (r, c) = parts[i % parts.len()].views();
        engine.inspect(r, c, &opts)?;
    }
    let names = ["preprocess", "rgb", "point", "fusion", "score", "total"];
    let mut ms: Vec<Vec<f64>> = (0..names.len()).map(|_| Vec::with_capacity(n)).collect();
    let before = count_allocations.map(|f| f());
    let activity = engine.backend().device_activity.clone();
    let activity_before = activity.as_ref().map(|a| a.read());
    let scans_before = exact_scans(engine);
    for i in 0..n {
        let (r, c) = parts[i % parts.len()].views();
        let res = engine.inspect(r, c, &opts)?;
        let t = res.times;
        for (k, v) in [
            t.preprocess,
            t.rgb,
            t.point,
            t.fusion,
            res.score_time,
            res.total_time,
        ]
        .into_iter()
        .enumerate()
        {
            // Capacity reserved above: no allocation inside the timed loop.
            ms[k].push(v * 1e3);
        }
        progress(i + 1, n);
    }
    let per_part = |count: fn((u64, u64)) -> u64| {
        let (a, b) = (activity.as_ref()?, activity_before?);
        Some((count(a.read()) - count(b)) as f64 / n as f64)
    };
    let scans = match (scans_before, exact_scans(engine)) {
        (Some(a), Some(b)) if b.0 > a.0 => Some((
            (b.2 - a.2) as f64 / n as f64,
            (b.1 - a.1) as f64 / (b.0 - a.0) as f64,
        )),
        _ => None,
    };
    let graph_launches_per_part = per_part(|c| c.0);
    let host_syncs_per_part = per_part(|c| c.1);
    let allocations = match (before, count_allocations) {
        (Some(b), Some(f)) => Some(f() - b),
        _ => None,
    };
    let stages: Vec<StageStats> = names
        .iter()
        .zip(&ms)
        .map(|(name, v)| StageStats::of(name, v))
        .collect();
    let cfg = engine.model_file().config();
    let rgb_flops = cfg.vit.as_ref().map_or(0.0, crate::cpu::vit::vit_flops);
    let rgb_p50_s = stages[1].p50 / 1e3;
    let (banks, banks_origin) = bank_sizes(engine);
    Ok(LatencyReport {
        model: cfg.name.clone(),
        backend: engine.backend().describe(),
        threads: engine.threads(),
        parts: n,
        warmup,
        totals_ms: ms[5].clone(),
        stages,
        allocations,
        rgb_gflops: if rgb_p50_s > 0.0 {
            rgb_flops / rgb_p50_s / 1e9
        } else {
            0.0
        },
        peak_gflops: crate::util::peak::measure_peak_gflops(engine.threads()),
        banks,
        banks_origin,
        graph_launches_per_part,
        host_syncs_per_part,
        cpu_stages: engine.backend().cpu_stages(),
        exact_scans_per_part: scans.map(|s| s.0),
        queries_scanning_fraction: scans.map(|s| s.1),
    })
}

/// (queries, queries scanning, splits scanned) of the device's fast bank search so far.
fn exact_scans(engine: &Engine) -> Option<(u64, u64, u64)> {
    #[cfg(feature = "cuda")]
    {
        let s = engine.device_exact_scans()?;
        Some((s.queries, s.queries_scanning, s.splits_scanned))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = engine;
        None
    }
}

impl LatencyReport {
    /// The report as JSON: `{"model", "backend", "threads", "parts", "warmup",
    /// "allocations" (number or null), "rgb_gflops", "peak_gflops", "rgb_fraction_of_peak",
    /// "banks": [{"name", "rows", "dim", "clusters" (0: unpruned search)}], "banks_origin", "graph_launches_per_part" and
    /// "host_syncs_per_part" (numbers, null on the CPU), "cpu_stages": [names],
    /// "exact_scans_per_part" and "queries_scanning_fraction" (numbers, null without the
    /// device's fast bank search),
    /// "stages": [{"name", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms",
    /// "max_over_p50"}], "histogram": {"lo_ms", "hi_ms", "counts": [...]}, "totals_ms": [...]}`.
    pub fn to_json(&self) -> String {
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v:.6}")
            } else {
                "null".into()
            }
        };
        let mut j = String::from("{\n");
        let _ = writeln!(j, "  \"model\": \"{}\",", self.model.replace('"', "'"));
        let _ = writeln!(
            j,
            "  \"backend\": \"{}\",",
            self.backend.replace('\\', "/").replace('"', "'")
        );
        let _ = writeln!(j, "  \"threads\": {},", self.threads);
        let _ = writeln!(j, "  \"parts\": {},", self.parts);
        let _ = writeln!(j, "  \"warmup\": {},", self.warmup);
        let _ = writeln!(
            j,
            "  \"allocations\": {},",
            self.allocations.map_or("null".into(), |a| a.to_string())
        );
        let _ = writeln!(j, "  \"rgb_gflops\": {},", num(self.rgb_gflops));
        let _ = writeln!(j, "  \"peak_gflops\": {},", num(self.peak_gflops));
        let _ = writeln!(
            j,
            "  \"rgb_fraction_of_peak\": {},",
            num(self.rgb_gflops / self.peak_gflops)
        );
        let banks: Vec<String> = self
            .banks
            .iter()
            .map(|b| {
                format!(
                    "{{\"name\": \"{}\", \"rows\": {}, \"dim\": {}, \"clusters\": {}}}",
                    b.name, b.rows, b.dim, b.clusters
                )
            })
            .collect();
        let _ = writeln!(j, "  \"banks\": [{}],", banks.join(", "));
        let _ = writeln!(
            j,
            "  \"banks_origin\": \"{}\",",
            self.banks_origin.replace('\\', "/").replace('"', "'")
        );
        let opt = |v: Option<f64>| v.map_or("null".into(), num);
        let _ = writeln!(
            j,
            "  \"graph_launches_per_part\": {},",
            opt(self.graph_launches_per_part)
        );
        let _ = writeln!(
            j,
            "  \"host_syncs_per_part\": {},",
            opt(self.host_syncs_per_part)
        );
        let cpu: Vec<String> = self.cpu_stages.iter().map(|s| format!("\"{s}\"")).collect();
        let _ = writeln!(j, "  \"cpu_stages\": [{}],", cpu.join(", "));
        let _ = writeln!(
            j,
            "  \"exact_scans_per_part\": {},",
            opt(self.exact_scans_per_part)
        );
        let _ = writeln!(
            j,
            "  \"queries_scanning_fraction\": {},",
            opt(self.queries_scanning_fraction)
        );
        j.push_str("  \"stages\": [\n");
        for (i, s) in self.stages.iter().enumerate() {
            let _ = write!(
                j,
                "    {{\"name\": \"{}\", \"mean_ms\": {}, \"p50_ms\": {}, \"p90_ms\": {}, \"p99_ms\": {}, \
                 \"p99_9_ms\": {}, \"max_ms\": {}, \"max_over_p50\": {}}}",
                s.name,
                num(s.mean),
                num(s.p50),
                num(s.p90),
                num(s.p99),
                num(s.p999),
                num(s.max),
                num(s.max_over_p50)
            );
            j.push_str(if i + 1 < self.stages.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        j.push_str("  ],\n");
        let (lo, hi, counts) = self.histogram(20);
        let list = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            j,
            "  \"histogram\": {{\"lo_ms\": {}, \"hi_ms\": {}, \"counts\": [{}]}},",
            num(lo),
            num(hi),
            list(&mut counts.iter().map(|c| c.to_string()))
        );
        let _ = writeln!(
            j,
            "  \"totals_ms\": [{}]",
            list(&mut self.totals_ms.iter().map(|&v| num(v)))
        );
        j.push_str("}\n");
        j
    }

    /// Equal-width histogram of the totals between their min and max.
    pub fn histogram(&self, bins: usize) -> (f64, f64, Vec<usize>) {
        let lo = self.totals_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self
            .totals_ms
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let mut counts = vec![0; bins.max(1)];
        let width = (hi - lo).max(1e-9);
        for &v in &self.totals_ms {
            let k = (((v - lo) / width) * counts.len() as f64) as usize;
            let last = counts.len() - 1;
            counts[k.min(last)] += 1;
        }
        (lo, hi, counts)
    }

    /// A table of the stages, for the terminal.
    pub fn table(&self) -> String {
        let mut t = format!(
            "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
            "stage (ms)", "p50", "p90", "p99", "p99.9", "max", "max/p50"
        );
        for s in &self.stages {
            let _ = writeln!(
                t,
                "{:<11} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8.3}",
                s.name, s.p50, s.p90, s.p99, s.p999, s.max, s.max_over_p50
            );
        }
        if let (Some(g), Some(h)) = (self.graph_launches_per_part, self.host_syncs_per_part) {
            let _ = writeln!(t, "per part: {g} graph launches, {h} host synchronisations");
        }
        let _ = writeln!(t, "on the CPU: {}", self.cpu_stages.join(", "));
        if let (Some(s), Some(f)) = (self.exact_scans_per_part, self.queries_scanning_fraction) {
            let _ = writeln!(
                t,
                "fast bank search: {s} exact split scans per part ({:.1} % of queries)",
                100.0 * f
            );
        }
        t
    }

    /// The histogram of total latency as a picture, with the key figures in its title.
    pub fn plot(&self) -> Canvas {
        let total = self.stages.last().expect("stages");
        let title = format!(
            "{} N={} P50 {:.1} P99 {:.1} MAX {:.1} MS",
            self.model, self.parts, total.p50, total.p99, total.max
        );
        histogram_plot(&self.totals_ms, 30, &title, "TOTAL LATENCY (MS)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.9), 90.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.999), 100.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        let s = StageStats::of("x", &[2.0, 1.0, 4.0]);
        assert_eq!((s.p50, s.max, s.max_over_p50), (2.0, 4.0, 2.0));
    }
}
