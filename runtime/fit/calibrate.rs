//! Threshold calibration from the scores of defect-free training parts.
//!
//! Part threshold: the `(1 − frr)` quantile of the training part scores, so that at most
//! a fraction `frr` of defect-free parts like the training ones are rejected (default
//! frr = 1 %). Quantile: the smallest training score `t` such that at most
//! `floor(frr · n)` scores are strictly above `t` (no interpolation: with few parts the
//! threshold is the maximum training score).
//! Pixel threshold: the same quantile over the per-part maxima of the training maps,
//! so that at most `frr` of defect-free parts show any defect region.

/// The `(1 − frr)` quantile as described in the module doc. `scores` must be non-empty.
pub fn reject_quantile(scores: &[f32], frr: f32) -> f32 {
    let mut s: Vec<f32> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return f32::INFINITY;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let allowed = ((frr.clamp(0.0, 1.0) as f64) * s.len() as f64).floor() as usize;
    let idx = s.len() - 1 - allowed.min(s.len() - 1);
    s[idx]
}

/// Mean, standard deviation (population) and maximum.
pub fn stats(scores: &[f32]) -> (f32, f32, f32) {
    if scores.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = scores
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (mean as f32, var.sqrt() as f32, max)
}
