//! The modality-incomplete protocol of the RADAR paper (its "MIIAD" setting): for a
//! missing rate η, a seeded sampler removes the point cloud (or the RGB image) from η of
//! the parts, or, when both modalities go missing, the RGB image from η/2 of the parts
//! and the point cloud from another η/2, leaving 1 − η of the parts complete.

use crate::util::rng::Rng;

/// Which modality the protocol removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingModality {
    /// Point clouds missing at rate η.
    Cloud,
    /// RGB images missing at rate η.
    Rgb,
    /// RGB missing for η/2 of the parts, clouds for another η/2.
    Both,
}

impl std::str::FromStr for MissingModality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cloud" | "xyz" | "3d" => Ok(MissingModality::Cloud),
            "rgb" | "image" => Ok(MissingModality::Rgb),
            "both" => Ok(MissingModality::Both),
            other => Err(format!(
                "unknown modality to drop '{other}' (cloud, rgb, both)"
            )),
        }
    }
}

/// What one part keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    Complete,
    RgbOnly,
    CloudOnly,
}

impl Availability {
    pub fn has_rgb(self) -> bool {
        self != Availability::CloudOnly
    }
    pub fn has_cloud(self) -> bool {
        self != Availability::RgbOnly
    }
    /// The modality this availability removes, if any.
    pub fn removed(self) -> Option<MissingModality> {
        match self {
            Availability::Complete => None,
            Availability::RgbOnly => Some(MissingModality::Cloud),
            Availability::CloudOnly => Some(MissingModality::Rgb),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Availability::Complete => "complete",
            Availability::RgbOnly => "rgb-only",
            Availability::CloudOnly => "cloud-only",
        }
    }
}

/// The availability of each of `parts` parts at missing rate `rate` (0..=1): exactly
/// round(rate · parts) parts lose a modality (half each way, RGB first, for `Both`),
/// chosen by a seeded shuffle so the same seed always drops the same parts.
pub fn sample_missing(
    parts: usize,
    rate: f64,
    drop: MissingModality,
    seed: u64,
) -> Result<Vec<Availability>, String> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("missing rate {rate} is outside 0..1"));
    }
    let missing = (rate * parts as f64).round() as usize;
    let mut order: Vec<usize> = (0..parts).collect();
    let mut rng = Rng::new(seed);
    for i in (1..parts).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut out = vec![Availability::Complete; parts];
    for (k, &p) in order.iter().take(missing).enumerate() {
        out[p] = match drop {
            MissingModality::Cloud => Availability::RgbOnly,
            MissingModality::Rgb => Availability::CloudOnly,
            MissingModality::Both if k < missing / 2 => Availability::CloudOnly,
            MissingModality::Both => Availability::RgbOnly,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_halves_are_exact_and_seeded() {
        let a = sample_missing(100, 0.3, MissingModality::Cloud, 1).unwrap();
        assert_eq!(
            a.iter().filter(|&&x| x == Availability::RgbOnly).count(),
            30
        );
        assert_eq!(
            a.iter().filter(|&&x| x == Availability::Complete).count(),
            70
        );
        let b = sample_missing(100, 0.7, MissingModality::Both, 2).unwrap();
        assert_eq!(
            b.iter().filter(|&&x| x == Availability::CloudOnly).count(),
            35
        );
        assert_eq!(
            b.iter().filter(|&&x| x == Availability::RgbOnly).count(),
            35
        );
        assert_eq!(
            b,
            sample_missing(100, 0.7, MissingModality::Both, 2).unwrap()
        );
        assert_ne!(
            b,
            sample_missing(100, 0.7, MissingModality::Both, 3).unwrap()
        );
        let r = sample_missing(10, 0.5, MissingModality::Rgb, 0).unwrap();
        assert_eq!(
            r.iter().filter(|&&x| x == Availability::CloudOnly).count(),
            5
        );
        assert!(sample_missing(10, 1.5, MissingModality::Rgb, 0).is_err());
        assert!(sample_missing(0, 0.5, MissingModality::Rgb, 0)
            .unwrap()
            .is_empty());
    }
}
