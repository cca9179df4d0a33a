//! RADAR's decision statistics per modality case (SPEC §9): for each case {complete,
//! rgb-only, cloud-only}, the mean and covariance of the training parts' score vectors
//! scored with that case's modalities removed; a part's image score is the Mahalanobis
//! distance of its score vector to its case's distribution.

use crate::util::linalg::invert_spd;

pub use crate::pipeline::decide::informative;

/// Mean and inverse covariance of one case's score vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseStats {
    pub mean: Vec<f64>,
    /// Row-major inverse of the regularised covariance.
    pub inv_cov: Vec<f64>,
}

impl CaseStats {
    /// Fits from `vectors` (n × dim, row-major). The covariance gets `ridge` times its
    /// mean diagonal (plus a tiny absolute floor) added to the diagonal, so it is always
    /// invertible, also with fewer parts than dimensions or constant scores.
    pub fn fit(vectors: &[f64], dim: usize, ridge: f64) -> Result<Self, String> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(format!(
                "{} values are not a whole number of {dim}-d vectors",
                vectors.len()
            ));
        }
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err("score vectors contain NaN or infinity".into());
        }
        let n = vectors.len() / dim;
        let mut mean = vec![0.0; dim];
        for row in vectors.chunks_exact(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, v)| *m += v / n as f64);
        }
        let mut cov = vec![0.0; dim * dim];
        let denom = (n.max(2) - 1) as f64;
        for row in vectors.chunks_exact(dim) {
            for r in 0..dim {
                let dr = row[r] - mean[r];
                for c in 0..dim {
                    cov[r * dim + c] += dr * (row[c] - mean[c]) / denom;
                }
            }
        }
        let mean_diag = (0..dim).map(|i| cov[i * dim + i]).sum::<f64>() / dim as f64;
        let add = ridge * mean_diag + 1e-12;
        for i in 0..dim {
            cov[i * dim + i] += add;
        }
        let inv_cov =
            invert_spd(&cov, dim).ok_or("covariance is not invertible after regularisation")?;
        Ok(CaseStats { mean, inv_cov })
    }

    /// Mahalanobis distance of `x` to the fitted distribution. No allocation.
    pub fn mahalanobis(&self, x: &[f64]) -> f64 {
        let dim = self.mean.len();
        let mut acc = 0.0;
        for (r, row) in self.inv_cov.chunks_exact(dim).enumerate() {
            let dr = x[r] - self.mean[r];
            let inner: f64 = row
                .iter()
                .zip(x.iter().zip(&self.mean))
                .map(|(w, (xc, mc))| w * (xc - mc))
                .sum();
            acc += dr * inner;
        }
        acc.max(0.0).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn recovers_a_known_gaussian() {
        // x = A z with z standard normal: covariance A Aᵀ; Mahalanobis of A·(1,0,0) is 1.
        let a = [[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.3]];
        let mut rng = Rng::new(5);
        let n = 40_000;
        let mut v = Vec::with_capacity(3 * n);
        for _ in 0..n {
            let z = [
                rng.normal() as f64,
                rng.normal() as f64,
                rng.normal() as f64,
            ];
            for row in &a {
                v.push(10.0 + row.iter().zip(&z).map(|(p, q)| p * q).sum::<f64>());
            }
        }
        let s = CaseStats::fit(&v, 3, 0.0).unwrap();
        assert!((s.mean[0] - 10.0).abs() < 0.05);
        let x: Vec<f64> = a.iter().map(|row| 10.0 + row[0]).collect();
        assert!(
            (s.mahalanobis(&x) - 1.0).abs() < 0.03,
            "{}",
            s.mahalanobis(&x)
        );
        assert!(s.mahalanobis(&s.mean.clone()) < 1e-9);
    }

    #[test]
    fn degenerate_inputs_stay_invertible_or_fail_clearly() {
        // constant scores and a single part: regularisation keeps it invertible
        let s = CaseStats::fit(&[1.0, 2.0, 3.0, 1.0, 2.0, 3.0], 3, 0.01).unwrap();
        assert!(s.mahalanobis(&[1.0, 2.0, 3.0]).is_finite());
        assert!(s.mahalanobis(&[1.0, 2.0, 4.0]) > 1.0);
        assert!(CaseStats::fit(&[1.0, 2.0], 3, 0.01).is_err());
        assert!(CaseStats::fit(&[f64::NAN, 1.0, 1.0], 3, 0.01).is_err());
    }
}
