//! `miad bench --reference FILE.json`: miad's stages next to the PyTorch reference's
//! (the JSON `bench/reference/m3dm_torch.py` writes), with the ratio per stage and for the
//! whole part.

use miad::eval::latency::LatencyReport;
use miad::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// miad's stages and the reference stage each one is compared with. The reference has no
/// preprocessing (M3DM preprocesses offline); its total is rgb + point + fusion + score.
const COMPARED: [(&str, Option<&str>); 6] = [
    ("preprocess", None),
    ("rgb", Some("rgb")),
    ("point", Some("point")),
    ("fusion", Some("fusion")),
    ("score", Some("score")),
    ("total", Some("total")),
];

/// The reference's p50 per stage, and what it ran.
#[derive(Debug)]
pub struct Reference {
    /// `(stage, p50 ms)` for every compared stage, plus `rgb_bf16` when present.
    p50_ms: Vec<(String, f64)>,
    threads: usize,
    /// `(bank, rows)` the reference searched, when the file says.
    bank_rows: Vec<(String, usize)>,
    /// "torch X, timm Y".
    versions: String,
}

impl Reference {
    /// Reads and checks a reference file: it must hold `threads` and a number for each of
    /// `stages_p50_ms.{rgb, point, fusion, score, total}`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| {
            Error::Input(format!(
                "--reference {}: {why} (expected the JSON of bench/reference/m3dm_torch.py)",
                path.display()
            ))
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let stages = json
            .get("stages_p50_ms")
            .and_then(|s| s.as_object())
            .ok_or_else(|| bad("no object 'stages_p50_ms'".into()))?;
        let mut p50_ms = Vec::new();
        let wanted = COMPARED.iter().filter_map(|(_, r)| *r);
        for name in wanted.chain(["rgb_bf16"]) {
            match stages.get(name).map(|v| v.as_f64()) {
                Some(Some(v)) if v.is_finite() && v >= 0.0 => p50_ms.push((name.to_string(), v)),
                None if name == "rgb_bf16" => {}
                _ => {
                    return Err(bad(format!(
                        "stages_p50_ms.{name} is missing or not a non-negative number"
                    )))
                }
            }
        }
        let threads = json
            .get("threads")
            .and_then(|t| t.as_u64())
            .ok_or_else(|| bad("no whole number 'threads'".into()))? as usize;
        let bank_rows = json
            .get("banks")
            .and_then(|b| b.as_object())
            .map(|banks| {
                banks
                    .iter()
                    .filter_map(|(name, b)| Some((name.clone(), b.get("rows")?.as_u64()? as usize)))
                    .collect()
            })
            .unwrap_or_default();
        let version = |k: &str| {
            json.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        Ok(Reference {
            p50_ms,
            threads,
            bank_rows,
            versions: format!("torch {}, timm {}", version("torch"), version("timm")),
        })
    }

    fn p50(&self, stage: &str) -> Option<f64> {
        self.p50_ms
            .iter()
            .find(|(n, _)| n == stage)
            .map(|(_, v)| *v)
    }

    /// Lines saying where the two runs differ in what they measured (threads, bank rows);
    /// empty when they match.
    pub fn mismatches(&self, report: &LatencyReport) -> Vec<String> {
        let mut out = Vec::new();
        if self.threads != report.threads {
            out.push(format!(
                "threads differ: miad {}, reference {}",
                report.threads, self.threads
            ));
        }
        for b in &report.banks {
            match self.bank_rows.iter().find(|(n, _)| n == b.name) {
                Some((_, rows)) if *rows == b.rows => {}
                Some((_, rows)) => out.push(format!(
                    "{} bank rows differ: miad {}, reference {rows}",
                    b.name, b.rows
                )),
                None => out.push(format!(
                    "the reference does not say its {} bank size",
                    b.name
                )),
            }
        }
        out
    }

    /// The side-by-side table (markdown): p50 of each stage, and miad / reference.
    pub fn table(&self, report: &LatencyReport) -> String {
        let miad = |stage: &str| {
            report
                .stages
                .iter()
                .find(|s| s.name == stage)
                .map(|s| s.p50)
        };
        let mut t = format!(
            "| stage | miad p50 ms | PyTorch p50 ms ({}) | miad / PyTorch |\n| --- | ---: | ---: | ---: |\n",
            self.versions
        );
        let mut row = |label: &str, ours: Option<f64>, theirs: Option<f64>| {
            let cell = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                t,
                "| {label} | {} | {} | {ratio} |",
                cell(ours),
                cell(theirs)
            );
        };
        for (stage, reference) in COMPARED {
            let theirs = reference.and_then(|r| self.p50(r));
            let label = if stage == "total" {
                "whole part (total)"
            } else {
                stage
            };
            row(label, miad(stage), theirs);
        }
        if let Some(bf16) = self.p50("rgb_bf16") {
            row("rgb vs PyTorch bf16 autocast", miad("rgb"), Some(bf16));
        }
        t
    }
}
