//! Linear one-class SVM (Schölkopf ν-formulation) trained by SGD: the decision layer of
//! SPEC §8. It solves the same problem, with the same schedule and stopping rule, as
//! scikit-learn's `SGDOneClassSVM` with its defaults (ν = 0.5, `learning_rate="optimal"`,
//! `max_iter=1000`, `tol=1e-3`, `n_iter_no_change=5`, shuffling, no averaging).
//!
//! ## Objective
//! With `ν` the only hyper-parameter, minimise over `w` and `ρ`
//! ```text
//!   ν/2 ‖w‖² + ν ρ' + (1/n) Σᵢ max(0, 1 − (w·xᵢ + ρ'))     with  ρ' = 1 − ρ
//! ```
//! which is scikit-learn's rewriting of the Schölkopf primal `½‖w‖² − ρ + 1/(νn) Σ max(0,
//! ρ − w·xᵢ)` (rescaled) as a hinge-loss linear model with all labels +1, L2 penalty
//! `alpha = ν` and intercept `b = 1 − offset` carrying the extra `+ν·b` term.
//!
//! ## SGD, one step per sample (t counts steps from 1, all in f64)
//! ```text
//!   typw = sqrt(1/sqrt(ν)),  t0 = 1/(typw·ν),  η_t = 1/(ν·(t0 + t − 1))
//!   p = w·x + b
//!   w ← w·max(0, 1 − η_t ν);  if p ≤ 1 { w ← w + η_t x;  b ← b + η_t }
//!   b ← b − η_t ν
//! ```
//! After each epoch (a fresh shuffle of the samples) the mean of
//! `hinge + ν/2‖w‖² + ν b` over the epoch's steps is compared with the best so far: five
//! epochs in a row without an improvement of more than `tol` stop the training. Finally
//! `offset = 1 − b`.
//!
//! ## Signs
//! scikit-learn's `decision_function(x) = w·x − offset` is positive for inliers and
//! `score_samples(x) = w·x`. [`OcSvm::decision`] is that decision function and
//! [`OcSvm::score`] is `w·x`. In miad the SVM is trained on vectors of *anomaly scores*
//! (each coordinate ≥ 0, larger = more anomalous) and separates them from the origin, so
//! `w` points into the positive orthant and `w·x` grows with every coordinate: following
//! M3DM (which uses `score_samples`), the final part score and map of SPEC §8 are
//! [`OcSvm::score`] = `w·x`, higher = more anomalous. The offset is kept for calibration
//! and for callers that want scikit-learn's inlier-positive decision value.
//!
//! Shuffling uses [`Rng`] (a Fisher–Yates shuffle per epoch), so the exact iterates differ
//! from scikit-learn's; the optimum and the ranking of scores agree (see
//! `tests/cpu/ocsvm_sklearn.rs`).

use crate::util::rng::Rng;
use crate::{Error, Result};

/// Training options; [`Default`] gives scikit-learn's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OcSvmParams {
    /// ν in (0, 1]: upper bound on the fraction of training outliers.
    pub nu: f64,
    /// Maximum number of epochs.
    pub max_iter: usize,
    /// Stopping tolerance on the epoch objective; `None` runs `max_iter` epochs.
    pub tol: Option<f64>,
    /// Epochs without improvement before stopping.
    pub n_iter_no_change: usize,
    /// Shuffle the samples before each epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
}

impl Default for OcSvmParams {
    fn default() -> Self {
        OcSvmParams {
            nu: 0.5,
            max_iter: 1000,
            tol: Some(1e-3),
            n_iter_no_change: 5,
            shuffle: true,
            seed: 0,
        }
    }
}

/// A trained linear one-class SVM.
#[derive(Debug, Clone, PartialEq)]
pub struct OcSvm {
    pub w: Vec<f32>,
    pub offset: f32,
}

/// What the training did, for logs.
#[derive(Debug, Clone, PartialEq)]
pub struct OcSvmReport {
    pub epochs: usize,
    pub final_objective: f64,
}

impl OcSvm {
    /// `w·x`, the miad score (higher = more anomalous; scikit-learn's `score_samples`).
    pub fn score(&self, x: &[f32]) -> f32 {
        let mut acc = 0.0f64;
        for (a, b) in self.w.iter().zip(x) {
            acc += *a as f64 * *b as f64;
        }
        acc as f32
    }

    /// `w·x − offset`: scikit-learn's `decision_function` (positive for inliers).
    pub fn decision(&self, x: &[f32]) -> f32 {
        (self.score(x) as f64 - self.offset as f64) as f32
    }
}

/// The decision-layer trainer of `fit` (SPEC §8): a linear OCSVM with scikit-learn's
/// defaults over 3-vectors (part score vectors or pixel map vectors).
pub fn train_linear3(vectors: &[[f32; 3]]) -> Result<crate::config::LinearSvm> {
    let flat: &[f32] = bytemuck::cast_slice(vectors);
    let m = fit(flat, 3, &OcSvmParams::default())?;
    Ok(crate::config::LinearSvm {
        w: [m.w[0], m.w[1], m.w[2]],
        offset: m.offset,
    })
}

/// Trains on `samples` (row-major, `dim` values per sample).
pub fn fit(samples: &[f32], dim: usize, params: &OcSvmParams) -> Result<OcSvm> {
    fit_with_report(samples, dim, params).map(|(m, _)| m)
}

/// [`fit`], also returning the epoch count and final objective.
pub fn fit_with_report(
    samples: &[f32],
    dim: usize,
    params: &OcSvmParams,
) -> Result<(OcSvm, OcSvmReport)> {
    if dim == 0 || samples.is_empty() || !samples.len().is_multiple_of(dim) {
        return Err(Error::Input(format!(
            "OCSVM: {} values do not form samples of dimension {dim}",
            samples.len()
        )));
    }
    if !(params.nu > 0.0 && params.nu <= 1.0) {
        return Err(Error::Config(format!(
            "OCSVM: nu must be in (0, 1], got {}",
            params.nu
        )));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "OCSVM: sample value {i} is not finite"
        )));
    }
    let n = samples.len() / dim;
    let alpha = params.nu;
    let typw = (1.0 / alpha.sqrt()).sqrt();
    // Hinge gradient at (y=1, p=-typw) is -1, so scikit-learn's max(1, dloss) is 1.
    let initial_eta0 = typw;
    let optimal_init = 1.0 / (initial_eta0 * alpha);

    let mut w = vec![0.0f64; dim];
    let mut b = 1.0f64; // intercept = 1 - offset, offset starts at 0
    let mut t = 1.0f64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(params.seed);
    let tol = params.tol.unwrap_or(f64::NEG_INFINITY);
    let mut best = f64::INFINITY;
    let mut no_improvement = 0usize;
    let mut epochs = 0usize;
    let mut last_objective = f64::NAN;

    for _ in 0..params.max_iter {
        epochs += 1;
        if params.shuffle {
            for i in (1..n).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        let mut objective_sum = 0.0f64;
        for &s in &order {
            let x = &samples[s * dim..(s + 1) * dim];
            let mut p = b;
            let mut sq = 0.0;
            for (wi, xi) in w.iter().zip(x) {
                p += wi * *xi as f64;
                sq += wi * wi;
            }
            let eta = 1.0 / (alpha * (optimal_init + t - 1.0));
            let hinge = if p <= 1.0 { 1.0 - p } else { 0.0 };
            objective_sum += hinge + alpha * 0.5 * sq + b * alpha;
            let update = if p <= 1.0 { eta } else { 0.0 };
            let scale = (1.0 - eta * alpha).max(0.0);
            for (wi, xi) in w.iter_mut().zip(x) {
                *wi = *wi * scale + update * *xi as f64;
            }
            b += update - eta * alpha;
            t += 1.0;
        }
        if !b.is_finite() || w.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(
                "OCSVM: training diverged (non-finite weights); scale the inputs".into(),
            ));
        }
        let objective = objective_sum / n as f64;
        last_objective = objective;
        if tol > f64::NEG_INFINITY && objective > best - tol {
            no_improvement += 1;
        } else {
            no_improvement = 0;
        }
        if objective < best {
            best = objective;
        }
        if no_improvement >= params.n_iter_no_change {
            break;
        }
    }
    Ok((
        OcSvm {
            w: w.iter().map(|&v| v as f32).collect(),
            offset: (1.0 - b) as f32,
        },
        OcSvmReport {
            epochs,
            final_objective: last_objective,
        },
    ))
}
