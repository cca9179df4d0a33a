//! Range checks of every configuration value a model or bank file carries, against the
//! limits the engine can plan for. A file that passes them cannot make a later call
//! abort on an allocation, overflow a size, spin for hours or produce a non-finite
//! number from its configuration alone (the engine still checks its outputs: see
//! `engine::check_finite`). Every message names the field.
//!
//! Floats must be finite and not subnormal (a subnormal scale or standard deviation
//! overflows to infinity once inverted); each has a range that generously contains every
//! value the fit stage writes.

use crate::config::{BankConfig, FeatureNorm, LinearSvm, ModelConfig, PreprocessConfig};

/// Largest anomaly map side (`BankConfig::map_size`): the engine plans about eight
/// `map_size²` float buffers (≈ 130 MB at this side).
pub const MAX_MAP_SIZE: u32 = 2048;
/// Largest patch grid side of a bank.
pub const MAX_GRID: u32 = 1024;
/// Largest Gaussian σ of the map blur (the blur's radius is capped at 4·16).
pub const MAX_BLUR_SIGMA: f32 = 16.0;
/// Smallest Gaussian σ (σ = 0 would divide by zero in the kernel).
pub const MIN_BLUR_SIGMA: f32 = 0.1;
/// Largest magnitude of a weight, mean, threshold or score statistic.
pub const MAX_MAGNITUDE: f32 = 1e6;
/// Range of a feature normalisation's standard deviation.
pub const MIN_STD: f32 = 1e-6;
pub const MAX_STD: f32 = 1e6;
/// Longest free-text field (names, category, provenance keys and values).
pub const MAX_TEXT: usize = 4096;
/// Most free-form key/value pairs in `FitInfo::extra`.
pub const MAX_EXTRA: usize = 1024;
/// Padding multiple of preprocessing (`pad_multiple`): bounds the padded square.
pub const MAX_PAD_MULTIPLE: u32 = 1024;
/// RANSAC work per part: iterations and points per hypothesis.
pub const MAX_RANSAC_ITERATIONS: u32 = 10_000;
pub const MAX_RANSAC_POINTS: u32 = 1_000;
/// Width of the border frame the plane is fitted on.
pub const MAX_BORDER: u32 = 4096;
/// Largest distance-like preprocessing constant (in the cloud's units).
pub const MAX_DISTANCE: f32 = 1e6;

/// A float that is finite and not subnormal (zero is fine).
fn plain(field: &str, v: f32) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!("{field} = {v} is not a finite number"));
    }
    if v != 0.0 && !v.is_normal() {
        return Err(format!("{field} = {v:e} is subnormal (too close to zero)"));
    }
    Ok(())
}

/// [`plain`] and `lo ≤ v ≤ hi`.
fn within(field: &str, v: f32, lo: f32, hi: f32) -> Result<(), String> {
    plain(field, v)?;
    if v < lo || v > hi {
        return Err(format!("{field} = {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

fn magnitude(field: &str, v: f32) -> Result<(), String> {
    within(field, v, -MAX_MAGNITUDE, MAX_MAGNITUDE)
}

fn count(field: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{field} = {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

fn text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!(
            "{field} is {} bytes long, at most {MAX_TEXT}",
            s.len()
        ));
    }
    Ok(())
}

fn norm(field: &str, n: &FeatureNorm) -> Result<(), String> {
    magnitude(&format!("{field}.mean"), n.mean)?;
    within(&format!("{field}.std"), n.std, MIN_STD, MAX_STD)
}

fn svm(field: &str, s: &LinearSvm) -> Result<(), String> {
    for (i, &w) in s.w.iter().enumerate() {
        magnitude(&format!("{field}.w[{i}]"), w)?;
    }
    magnitude(&format!("{field}.offset"), s.offset)
}

/// Checks every value of a bank file's configuration (see the module doc).
pub fn check_bank_config(c: &BankConfig) -> Result<(), String> {
    text("model_name", &c.model_name)?;
    text("category", &c.category)?;
    norm("rgb_norm", &c.rgb_norm)?;
    norm("xyz_norm", &c.xyz_norm)?;
    norm("fused_norm", &c.fused_norm)?;
    for (field, rows, dim, grid) in [
        ("xyz", c.xyz_rows, c.xyz_dim, c.xyz_grid),
        ("rgb", c.rgb_rows, c.rgb_dim, c.rgb_grid),
        ("fused", c.fused_rows, c.fused_dim, c.xyz_grid),
    ] {
        if rows > 0 {
            // Rows and widths are checked against the bank tensors' shapes (which the file
            // must hold) and against the model when the engine is planned.
            count(&format!("{field}_dim"), dim, 1, 1 << 20)?;
            let g = if field == "rgb" {
                "rgb_grid"
            } else {
                "xyz_grid"
            };
            count(g, grid, 1, MAX_GRID)?;
        }
    }
    count("map_size", c.map_size, 1, MAX_MAP_SIZE)?;
    within("blur_sigma", c.blur_sigma, MIN_BLUR_SIGMA, MAX_BLUR_SIGMA)?;
    for (i, &w) in c.score_weights.iter().enumerate() {
        magnitude(&format!("score_weights[{i}]"), w)?;
    }
    svm("part_svm", &c.part_svm)?;
    svm("pixel_svm", &c.pixel_svm)?;
    let t = &c.thresholds;
    magnitude("thresholds.part", t.part)?;
    magnitude("thresholds.pixel", t.pixel)?;
    if let Some([lo, hi]) = t.grey_band {
        magnitude("thresholds.grey_band[0]", lo)?;
        magnitude("thresholds.grey_band[1]", hi)?;
        if lo > hi {
            return Err(format!(
                "thresholds.grey_band [{lo}, {hi}] has its low end above its high end"
            ));
        }
    }
    within(
        "thresholds.false_reject_rate",
        t.false_reject_rate,
        0.0,
        1.0,
    )?;
    magnitude("thresholds.train_score_mean", t.train_score_mean)?;
    within(
        "thresholds.train_score_std",
        t.train_score_std,
        0.0,
        MAX_MAGNITUDE,
    )?;
    magnitude("thresholds.train_score_max", t.train_score_max)?;
    within("fit.coreset_ratio", c.fit.coreset_ratio, 0.0, 1.0)?;
    text("fit.scoring", &c.fit.scoring)?;
    if c.fit.extra.len() > MAX_EXTRA {
        return Err(format!(
            "fit.extra has {} entries, at most {MAX_EXTRA}",
            c.fit.extra.len()
        ));
    }
    for kv in &c.fit.extra {
        text("fit.extra key", &kv.key)?;
        text(&format!("fit.extra[{}]", kv.key), &kv.value)?;
    }
    Ok(())
}

/// Checks the numbers of a model configuration that the size checks of
/// `validate_model_config` do not cover: preprocessing constants and the free text.
pub fn check_model_numbers(c: &ModelConfig) -> Result<(), String> {
    text("name", &c.name)?;
    check_preprocess(&c.preprocess)
}

fn check_preprocess(p: &PreprocessConfig) -> Result<(), String> {
    count("preprocess.border", p.border, 0, MAX_BORDER)?;
    within(
        "preprocess.ransac_threshold",
        p.ransac_threshold,
        0.0,
        MAX_DISTANCE,
    )?;
    count(
        "preprocess.ransac_points",
        p.ransac_points,
        0,
        MAX_RANSAC_POINTS,
    )?;
    count(
        "preprocess.ransac_iterations",
        p.ransac_iterations,
        0,
        MAX_RANSAC_ITERATIONS,
    )?;
    within(
        "preprocess.plane_distance",
        p.plane_distance,
        0.0,
        MAX_DISTANCE,
    )?;
    count(
        "preprocess.pad_multiple",
        p.pad_multiple,
        1,
        MAX_PAD_MULTIPLE,
    )?;
    within("preprocess.cluster_eps", p.cluster_eps, 0.0, MAX_DISTANCE)?;
    for i in 0..3 {
        magnitude(&format!("preprocess.rgb_mean[{i}]"), p.rgb_mean[i])?;
        within(
            &format!("preprocess.rgb_std[{i}]"),
            p.rgb_std[i],
            MIN_STD,
            MAX_STD,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bad_value_names_its_field() {
        let good = BankConfig::empty([0; 16], "m", "c");
        check_bank_config(&good).unwrap();
        check_model_numbers(&ModelConfig::small()).unwrap();
        type Edit = Box<dyn Fn(&mut BankConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("map_size", Box::new(|c| c.map_size = 65600)),
            ("map_size", Box::new(|c| c.map_size = 0)),
            ("xyz_norm.std", Box::new(|c| c.xyz_norm.std = 1e-40)),
            ("rgb_norm.mean", Box::new(|c| c.rgb_norm.mean = f32::NAN)),
            ("pixel_svm.w[1]", Box::new(|c| c.pixel_svm.w[1] = f32::NAN)),
            ("blur_sigma", Box::new(|c| c.blur_sigma = 0.0)),
            (
                "thresholds.part",
                Box::new(|c| c.thresholds.part = f32::INFINITY),
            ),
            (
                "thresholds.grey_band",
                Box::new(|c| c.thresholds.grey_band = Some([2.0, 1.0])),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = good.clone();
            mutate(&mut c);
            let e = check_bank_config(&c).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
        let mut m = ModelConfig::small();
        m.preprocess.pad_multiple = 1 << 30;
        assert!(check_model_numbers(&m)
            .unwrap_err()
            .contains("pad_multiple"));
        let mut m = ModelConfig::small();
        m.preprocess.rgb_std[2] = 1e-39;
        assert!(check_model_numbers(&m).unwrap_err().contains("rgb_std[2]"));
    }
}
