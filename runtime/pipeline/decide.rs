//! The decision policy (SPEC §8–9), written once for every backend: which decision
//! layers decide a part of a given modality case (the complete-data OCSVMs, or the
//! case's RADAR statistics), the per-call overrides, the grey band, the part score, the
//! verdict, and the fused pixel map with its affine alignment.
//!
//! The CPU engine applies a [`Decision`] directly; the CUDA maps stage turns the same
//! [`Decision`] into its kernels' parameter blocks; fit scores training parts with
//! [`linear_part_score`] and [`fuse_map`].

use crate::config::BankConfig;
use crate::format::BankFile;
use crate::types::{Case, InspectOptions, Verdict, FUSED};
use crate::Result;

/// The decision statistics of one modality case (RADAR, SPEC §9), from the bank file's
/// `radar.<case>.*` tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaseDecision {
    /// Mean of the training score vectors of this case.
    pub mean: [f32; 3],
    /// Inverse of their (regularised) covariance, row-major.
    pub precision: [f32; 9],
    /// Part threshold, in aligned units (see `score_affine`).
    pub threshold: f32,
    /// Pixel OCSVM weights of this case (0 for the dropped modality's bank).
    pub pixel_w: [f32; 3],
    /// Pixel threshold, in aligned units.
    pub pixel_threshold: f32,
    /// `score = a·distance + b`: maps the case's training distances onto the mean and
    /// spread of the complete parts' training scores, so that scores of all cases compare.
    pub score_affine: [f32; 2],
    /// The same alignment for the case's pixel map.
    pub map_affine: [f32; 2],
}

impl CaseDecision {
    /// Mahalanobis distance of a score vector to the case's distribution.
    pub fn distance(&self, v: &[f32; 3]) -> f32 {
        let d: [f64; 3] = std::array::from_fn(|i| (v[i] - self.mean[i]) as f64);
        let mut q = 0.0f64;
        for i in 0..3 {
            for j in 0..3 {
                q += d[i] * self.precision[3 * i + j] as f64 * d[j];
            }
        }
        q.max(0.0).sqrt() as f32
    }

    /// Tensor names of a case in a bank file.
    pub fn tensor_names(case: Case) -> [String; 7] {
        let c = case.name();
        [
            format!("radar.{c}.mean"),
            format!("radar.{c}.precision"),
            format!("radar.{c}.threshold"),
            format!("radar.{c}.pixel_w"),
            format!("radar.{c}.pixel_threshold"),
            format!("radar.{c}.score_affine"),
            format!("radar.{c}.map_affine"),
        ]
    }

    /// The aligned part score of a score vector.
    pub fn score(&self, v: &[f32; 3]) -> f32 {
        self.score_affine[0] * self.distance(v) + self.score_affine[1]
    }

    /// The statistics of `case` in a bank file, `None` when it has none.
    pub fn load(bank: &BankFile, case: Case) -> Result<Option<Self>> {
        let [mean, precision, threshold, pixel_w, pixel_threshold, score_affine, map_affine] =
            Self::tensor_names(case);
        if bank.container().entry(&mean).is_none() {
            return Ok(None);
        }
        let get = |name: &str, n: usize| -> Result<Vec<f32>> {
            Ok(bank.typed::<f32>(name, Some(&[n]))?.to_vec())
        };
        let m = get(&mean, 3)?;
        let p = bank.typed::<f32>(&precision, Some(&[3, 3]))?;
        let w = get(&pixel_w, 3)?;
        let sa = get(&score_affine, 2)?;
        let ma = get(&map_affine, 2)?;
        Ok(Some(CaseDecision {
            score_affine: [sa[0], sa[1]],
            map_affine: [ma[0], ma[1]],
            mean: [m[0], m[1], m[2]],
            precision: std::array::from_fn(|i| p[i]),
            threshold: get(&threshold, 1)?[0],
            pixel_w: [w[0], w[1], w[2]],
            pixel_threshold: get(&pixel_threshold, 1)?[0],
        }))
    }
}

/// The part of a score vector that carries information about a part whose `dropped_bank`
/// modality was replaced by the pseudo input: that bank and the fused bank (half pseudo
/// input) are zeroed.
pub fn informative(dropped_bank: usize, v: [f32; 3]) -> [f32; 3] {
    std::array::from_fn(|b| {
        if b == dropped_bank || b == FUSED {
            0.0
        } else {
            v[b]
        }
    })
}

/// The complete-data part score: the linear part OCSVM `part_w · a`.
pub fn linear_part_score(part_w: &[f32; 3], vector: &[f32; 3]) -> f32 {
    (0..3).map(|b| part_w[b] * vector[b]).sum()
}

/// The fused pixel map `map = affine[0]·(c · bank_maps) + affine[1]`, pixel by pixel, from
/// the three per-bank maps of `s2` pixels each laid end to end.
pub fn fuse_map(c: &[f32; 3], affine: [f32; 2], bank_maps: &[f32], map: &mut [f32]) {
    let s2 = map.len();
    let [a, b] = affine;
    for (i, o) in map.iter_mut().enumerate() {
        *o =
            a * (c[0] * bank_maps[i] + c[1] * bank_maps[s2 + i] + c[2] * bank_maps[2 * s2 + i]) + b;
    }
}

/// The decision layers and thresholds that decide one part: resolved once per part from
/// the bank configuration, the part's modality case, the bank file's case statistics and
/// the call's overrides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub case: Case,
    /// The case's RADAR statistics when they decide the part; `None`: the complete-data
    /// layers do.
    pub statistics: Option<CaseDecision>,
    /// The bank whose modality the pseudo input replaced (see [`Case::dropped_bank`]).
    pub dropped_bank: usize,
    /// Complete-data part OCSVM weights.
    pub part_w: [f32; 3],
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    /// Scores in `[lo, hi)` are uncertain.
    pub grey_band: Option<[f32; 2]>,
    /// Pixel map coefficients `pixel_w[b] · score_weights[b]`.
    pub pixel_c: [f32; 3],
    /// Affine alignment of the pixel map.
    pub map_affine: [f32; 2],
    /// Whether the part is decided with layers fitted for its case (false: an incomplete
    /// part decided with the complete-data layers on pseudo-input features).
    pub case_calibrated: bool,
    /// The part is incomplete, statistics were asked for and the bank file has none for
    /// its case (fitted with `--no-radar`): the bank cannot decide it, so the verdict is
    /// uncertain (never pass or fail from the complete-data thresholds) and no region
    /// is reported.
    pub lacks_statistics: bool,
}

impl Decision {
    /// The case's statistics decide an incomplete part when the bank file has them and
    /// the call asks for them; otherwise the complete-data layers. A NaN override is no
    /// override (the bank file's value stays).
    pub fn resolve(
        cfg: &BankConfig,
        case: Case,
        cases: &[Option<CaseDecision>; 3],
        opts: &InspectOptions,
    ) -> Decision {
        let th = &cfg.thresholds;
        let statistics = match case {
            Case::Complete => None,
            _ if !opts.case_statistics => None,
            c => cases[c as usize],
        };
        let (mut part_threshold, pixel_w, mut pixel_threshold, map_affine) = match &statistics {
            Some(d) => (d.threshold, d.pixel_w, d.pixel_threshold, d.map_affine),
            None => (th.part, cfg.pixel_svm.w, th.pixel, [1.0, 0.0]),
        };
        if let Some(t) = opts.part_threshold.filter(|t| !t.is_nan()) {
            part_threshold = t;
        }
        if let Some(t) = opts.pixel_threshold.filter(|t| !t.is_nan()) {
            pixel_threshold = t;
        }
        Decision {
            case,
            statistics,
            dropped_bank: case.dropped_bank(),
            part_w: cfg.part_svm.w,
            part_threshold,
            pixel_threshold,
            grey_band: opts.grey_band.or(th.grey_band),
            pixel_c: std::array::from_fn(|b| pixel_w[b] * cfg.score_weights[b]),
            map_affine,
            case_calibrated: case == Case::Complete || statistics.is_some(),
            lacks_statistics: case != Case::Complete
                && opts.case_statistics
                && statistics.is_none(),
        }
    }

    /// The part score of the weighted score vector `a`.
    pub fn part_score(&self, vector: &[f32; 3]) -> f32 {
        match &self.statistics {
            Some(d) => d.score(&informative(self.dropped_bank, *vector)),
            None => linear_part_score(&self.part_w, vector),
        }
    }

    /// Pass, fail (strictly above the threshold) or uncertain (inside the grey band, or a
    /// case the bank file has no statistics for). A score that is not a number never
    /// passes.
    pub fn verdict(&self, score: f32) -> Verdict {
        match self.grey_band {
            _ if self.lacks_statistics => Verdict::Uncertain,
            _ if score.is_nan() => Verdict::Fail,
            Some([lo, hi]) if score >= lo && score < hi => Verdict::Uncertain,
            _ if score > self.part_threshold => Verdict::Fail,
            _ => Verdict::Pass,
        }
    }

    /// The part's pixel map from its three per-bank maps (see [`fuse_map`]).
    pub fn pixel_map(&self, bank_maps: &[f32], map: &mut [f32]) {
        fuse_map(&self.pixel_c, self.map_affine, bank_maps, map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{RGB, XYZ};

    fn case_stats() -> CaseDecision {
        CaseDecision {
            mean: [1.0, 2.0, 3.0],
            precision: [2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            threshold: 7.0,
            pixel_w: [0.0, 4.0, 0.0],
            pixel_threshold: 0.9,
            score_affine: [2.0, 1.0],
            map_affine: [3.0, -1.0],
        }
    }

    fn config() -> BankConfig {
        let mut cfg = BankConfig::empty([0; 16], "m", "c");
        cfg.score_weights = [1.0, 0.1, 1.0];
        cfg.part_svm.w = [0.5, 2.0, 0.25];
        cfg.pixel_svm.w = [0.3, 0.7, 1.5];
        cfg.thresholds.part = 1.25;
        cfg.thresholds.pixel = 0.5;
        cfg.thresholds.grey_band = Some([1.0, 1.5]);
        cfg
    }

    #[test]
    fn mahalanobis_with_identity_precision_is_euclidean() {
        let d = CaseDecision {
            precision: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            map_affine: [1.0, 0.0],
            ..case_stats()
        };
        assert!((d.distance(&[4.0, 6.0, 3.0]) - 5.0).abs() < 1e-6);
        assert!((d.score(&[4.0, 6.0, 3.0]) - 11.0).abs() < 1e-5);
    }

    #[test]
    fn complete_parts_use_the_complete_data_layers() {
        let cfg = config();
        let cases = [None, Some(case_stats()), None];
        let d = Decision::resolve(&cfg, Case::Complete, &cases, &InspectOptions::default());
        assert!(d.statistics.is_none() && d.case_calibrated);
        assert_eq!((d.part_threshold, d.pixel_threshold), (1.25, 0.5));
        assert_eq!(d.grey_band, Some([1.0, 1.5]));
        assert_eq!(d.pixel_c, [0.3 * 1.0, 0.7 * 0.1, 1.5 * 1.0]);
        assert_eq!(d.map_affine, [1.0, 0.0]);
        assert_eq!(d.part_score(&[2.0, 1.0, 4.0]), 0.5 * 2.0 + 2.0 + 0.25 * 4.0);
    }

    #[test]
    fn incomplete_parts_use_their_case_statistics_when_present() {
        let cfg = config();
        let stats = case_stats();
        let cases = [None, Some(stats), None];
        let opts = InspectOptions::default();
        let d = Decision::resolve(&cfg, Case::RgbOnly, &cases, &opts);
        assert_eq!(d.dropped_bank, XYZ);
        assert_eq!(d.statistics, Some(stats));
        assert_eq!((d.part_threshold, d.pixel_threshold), (7.0, 0.9));
        assert_eq!(d.pixel_c, [0.0, 4.0 * 0.1, 0.0]);
        assert_eq!(d.map_affine, [3.0, -1.0]);
        let v = [5.0, 3.0, 9.0];
        assert_eq!(d.part_score(&v), stats.score(&[0.0, 3.0, 0.0]));
        // No statistics for cloud-only: the complete-data layers, not calibrated.
        let d = Decision::resolve(&cfg, Case::CloudOnly, &cases, &opts);
        assert_eq!(d.dropped_bank, RGB);
        assert!(d.statistics.is_none() && !d.case_calibrated);
        assert_eq!(d.part_threshold, 1.25);
    }

    #[test]
    fn overrides_replace_the_bank_values_but_nan_is_no_override() {
        let cfg = config();
        let cases = [None, Some(case_stats()), None];
        let o = InspectOptions {
            part_threshold: Some(f32::NAN),
            pixel_threshold: Some(0.1),
            grey_band: Some([2.0, 3.0]),
            case_statistics: false,
            ..InspectOptions::default()
        };
        let d = Decision::resolve(&cfg, Case::RgbOnly, &cases, &o);
        assert!(d.statistics.is_none());
        assert_eq!((d.part_threshold, d.pixel_threshold), (1.25, 0.1));
        assert_eq!(d.grey_band, Some([2.0, 3.0]));
    }

    #[test]
    fn verdicts_fail_strictly_above_the_threshold_and_never_pass_nan() {
        let cfg = config();
        let mut d = Decision::resolve(&cfg, Case::Complete, &[None; 3], &Default::default());
        assert_eq!(d.verdict(1.2), Verdict::Uncertain);
        assert_eq!(d.verdict(1.5), Verdict::Fail);
        assert_eq!(d.verdict(0.5), Verdict::Pass);
        assert_eq!(d.verdict(f32::NAN), Verdict::Fail);
        d.grey_band = None;
        assert_eq!(d.verdict(1.25), Verdict::Pass);
        assert_eq!(d.verdict(1.2501), Verdict::Fail);
    }

    #[test]
    fn the_pixel_map_is_the_aligned_weighted_sum_of_the_bank_maps() {
        let bank_maps = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
        let mut map = [0.0; 2];
        fuse_map(&[1.0, 0.5, 0.25], [2.0, -1.0], &bank_maps, &mut map);
        assert_eq!(
            map,
            [
                2.0 * (1.0 + 5.0 + 25.0) - 1.0,
                2.0 * (2.0 + 10.0 + 50.0) - 1.0
            ]
        );
    }
}
