//! Evaluation of one category's test split through an [`Engine`] (SPEC §10): part
//! scores and maps of every test part, I-AUROC, P-AUROC and AUPRO, verdict counts,
//! latency, and optionally heatmap pictures and RADAR's missing-modality protocol.
//!
//! Saved predictions (`miad eval --save-predictions DIR`), for recomputing the metrics
//! elsewhere: `DIR/predictions.csv` with one line per test part
//! `name,label,defect,score,verdict,case` (label 1 = defective; name as
//! `test/<kind>/<stem>`), and per part `DIR/<name with / as _>.safetensors` holding
//! `map` (S×S f32, the anomaly map over the network input, row-major) and `mask`
//! (S×S u8, the ground truth resized like the input, 1 = defect).

use super::dataset::{list_test, PartFiles};
use super::metrics::{i_auroc, Aupro, MetricsRow, PixelAuroc};
use super::missing::{sample_missing, Availability, MissingModality};
use super::picture::heatmap_panel_range;
use crate::engine::{Case, Engine, InspectOptions, Verdict};
use crate::pipeline::preprocess::{preprocess_mask, PreprocessMode};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Options of [`evaluate`].
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Removes a modality from a fraction of the test parts (RADAR protocol): (rate, what, seed).
    pub missing: Option<(f64, MissingModality, u64)>,
    /// Write heatmap PNGs here: of every test part, or of the `worst` ones.
    pub heatmaps: Option<PathBuf>,
    /// Only the heatmaps of this many worst parts: the defective parts with the lowest
    /// scores and the good parts with the highest, alternately.
    pub worst: Option<usize>,
    /// Write every part's score, map and mask here (module doc).
    pub save_predictions: Option<PathBuf>,
    /// Evaluate at most this many test parts (the first by name, good ones first).
    pub max_parts: Option<usize>,
    /// Decide incomplete parts with the complete-data decision layers instead of their
    /// case's statistics (the baseline RADAR's per-case layers are compared with).
    pub complete_decision_only: bool,
}

/// One test part's outcome.
#[derive(Clone, Debug)]
pub struct PartOutcome {
    pub name: String,
    pub defective: bool,
    pub score: f32,
    pub verdict: Verdict,
    pub case: Case,
    pub seconds: f64,
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug)]
pub struct EvalReport {
    pub row: MetricsRow,
    pub parts: Vec<PartOutcome>,
}

impl EvalReport {
    /// (false rejects of good parts, good parts, escapes of defective parts, defective parts).
    pub fn verdict_counts(&self) -> (usize, usize, usize, usize) {
        let good = self.parts.iter().filter(|p| !p.defective).count();
        let fr = self
            .parts
            .iter()
            .filter(|p| !p.defective && p.verdict == Verdict::Fail)
            .count();
        let bad = self.parts.len() - good;
        let esc = self
            .parts
            .iter()
            .filter(|p| p.defective && p.verdict == Verdict::Pass)
            .count();
        (fr, good, esc, bad)
    }

    /// Inspection times in seconds, sorted.
    pub fn sorted_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.parts.iter().map(|p| p.seconds).collect();
        t.sort_by(f64::total_cmp);
        t
    }
}

/// Indices of the `n` worst parts: defective parts by ascending score and good parts by
/// descending score, taken alternately (the misses and false alarms first).
pub fn worst_parts(outcomes: &[PartOutcome], n: usize) -> Vec<usize> {
    let mut bad: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].defective)
        .collect();
    let mut good: Vec<usize> = (0..outcomes.len())
        .filter(|&i| !outcomes[i].defective)
        .collect();
    bad.sort_by(|&a, &b| outcomes[a].score.total_cmp(&outcomes[b].score));
    good.sort_by(|&a, &b| outcomes[b].score.total_cmp(&outcomes[a].score));
    let mut out = Vec::with_capacity(n);
    let (mut b, mut g) = (bad.into_iter(), good.into_iter());
    while out.len() < n {
        let before = out.len();
        out.extend(b.next());
        if out.len() < n {
            out.extend(g.next());
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// Evaluates the test split of `category` (a folder with `test/`). `progress(done, total)`.
pub fn evaluate(
    engine: &mut Engine,
    category: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let mut parts: Vec<PartFiles> = list_test(category)?;
    if let Some(m) = opts.max_parts {
        parts.truncate(m);
    }
    if parts.is_empty() {
        return Err(Error::Input(format!(
            "{}: no test parts (expected test/<kind>/rgb|xyz)",
            category.display()
        )));
    }
    let availability = match opts.missing {
        Some((rate, drop, seed)) => {
            sample_missing(parts.len(), rate, drop, seed).map_err(Error::Config)?
        }
        None => vec![Availability::Complete; parts.len()],
    };
    for dir in [&opts.heatmaps, &opts.save_predictions]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut csv = String::from("name,label,defect,score,verdict,case\n");

    let s = engine.map_size();
    let mode = if engine.options().preprocessed {
        PreprocessMode::AlreadyClean
    } else {
        PreprocessMode::Full
    };
    let pre = engine.model_file().config().preprocess.clone();
    let color_range = (0.0, 2.0 * engine.bank_config().thresholds.pixel.max(1e-6));
    let mut pixel_auroc = PixelAuroc::new();
    let mut aupro = Aupro::new(s, s);
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    let mut outcomes = Vec::new();
    let mut mask_s = vec![0u8; s * s];
    let opts_inspect = InspectOptions {
        regions: false,
        case_statistics: !opts.complete_decision_only,
        ..InspectOptions::default()
    };
    for (i, (files, avail)) in parts.iter().zip(&availability).enumerate() {
        let p = files.load()?;
        let (rgb, cloud) = p.views_as(*avail);
        let r = match engine.inspect(rgb, cloud, &opts_inspect) {
            Ok(r) => r,
            Err(e) => return Err(Error::Input(format!("{}: {e}", files.name))),
        };
        let map = r.map.expect("asked for the map");
        match &p.mask {
            Some(m) => preprocess_mask(&pre, &m.data, m.width, m.height, mode, &mut mask_s)?,
            None => mask_s.fill(0),
        }
        if files.is_defective() && p.mask.is_none() {
            return Err(Error::Input(format!(
                "{}: a defective test part without a gt/ mask",
                files.name
            )));
        }
        pixel_auroc.push(map, &mask_s)?;
        aupro.push(map, &mask_s)?;
        scores.push(r.score);
        labels.push(files.is_defective());
        outcomes.push(PartOutcome {
            name: files.name.clone(),
            defective: files.is_defective(),
            score: r.score,
            verdict: r.verdict,
            case: r.case,
            seconds: r.total_time,
        });
        if let Some(dir) = &opts.save_predictions {
            use crate::format::{write_safetensors, StTensor};
            let file = dir.join(format!("{}.safetensors", files.name.replace('/', "_")));
            write_safetensors(
                &file,
                &[
                    StTensor::F32("map", vec![s, s], map),
                    StTensor::U8("mask", vec![s, s], &mask_s),
                ],
            )?;
            let o = outcomes.last().expect("pushed above");
            csv.push_str(&format!(
                "{},{},{},{},{:?},{}\n",
                files.name,
                u8::from(o.defective),
                files.defect.as_deref().unwrap_or("good"),
                o.score,
                o.verdict,
                o.case.name()
            ));
        }
        if let (Some(dir), None) = (&opts.heatmaps, opts.worst) {
            let title = format!(
                "{} score {:.3} {:?} ({})",
                files.name,
                r.score,
                r.verdict,
                r.case.name()
            );
            let has_mask = p.mask.is_some();
            let rgb8 = engine.preview_image();
            let map = engine.last_map().expect("evaluation asks for the map");
            let panel = heatmap_panel_range(
                &rgb8,
                map,
                has_mask.then_some(&mask_s[..]),
                &title,
                color_range,
            )?;
            let file = dir.join(format!("{}.png", files.name.replace('/', "_")));
            panel.save_png(&file)?;
        }
        progress(i + 1, parts.len());
    }
    if let Some(dir) = &opts.save_predictions {
        let f = dir.join("predictions.csv");
        std::fs::write(&f, csv).map_err(|e| Error::io(&f, e))?;
    }
    if let (Some(dir), Some(n)) = (&opts.heatmaps, opts.worst) {
        for i in worst_parts(&outcomes, n) {
            let files = &parts[i];
            let p = files.load()?;
            let (rgb, cloud) = p.views_as(availability[i]);
            let r = engine.inspect(rgb, cloud, &opts_inspect)?;
            let title = format!("{} score {:.3} {:?}", files.name, r.score, r.verdict);
            match &p.mask {
                Some(m) => preprocess_mask(&pre, &m.data, m.width, m.height, mode, &mut mask_s)?,
                None => mask_s.fill(0),
            }
            let panel = heatmap_panel_range(
                &engine.preview_image(),
                engine.last_map().expect("evaluation asks for the map"),
                p.mask.is_some().then_some(&mask_s[..]),
                &title,
                color_range,
            )?;
            panel.save_png(dir.join(format!("{}.png", files.name.replace('/', "_"))))?;
        }
    }
    let has_both = labels.iter().any(|&l| l) && labels.iter().any(|&l| !l);
    let category_name = category
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("category")
        .to_string();
    let row = MetricsRow {
        category: category_name,
        i_auroc: if has_both {
            Some(i_auroc(&scores, &labels)?)
        } else {
            None
        },
        p_auroc: pixel_auroc.finish().ok(),
        aupro: aupro.finish().ok(),
    };
    Ok(EvalReport {
        row,
        parts: outcomes,
    })
}
