//! A fake feature extractor for the fusion trainings (tests/fit_eval, tests/cuda): parts
//! whose two modalities share per-patch information to find.

use miad::config::FusionConfig;
use miad::fit::banks::{FeatureExtractor, FeatureLayout};
use miad::fit::train_fusion::UffParams;
use miad::util::rng::Rng;

/// Parts whose xyz cells are a fixed linear image of the RGB cell above them plus noise
/// (so the modalities share per-patch information to find), with a zero border of xyz
/// cells (background, excluded from the loss). Without a modality (RADAR's training), the
/// pseudo input's features are fixed rows, the same for every part (as the all-ones image
/// and cloud give).
pub struct Linked {
    pub layout: FeatureLayout,
    pub parts: usize,
    pub seed: u64,
}

impl FeatureExtractor for Linked {
    fn layout(&self) -> FeatureLayout {
        self.layout
    }
    fn parts(&self) -> usize {
        self.parts
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> miad::Result<()> {
        let l = self.layout;
        let mut fixed = Rng::new(self.seed);
        let map: Vec<f32> = (0..l.xyz_dim * l.rgb_dim).map(|_| fixed.normal()).collect();
        let mut rng = Rng::new(self.seed + 100 + part as u64);
        rgb.iter_mut().for_each(|v| *v = rng.normal());
        let s = l.xyz_grid / l.rgb_grid;
        for j in 0..l.xyz_grid * l.xyz_grid {
            let (y, x) = (j / l.xyz_grid, j % l.xyz_grid);
            let c = (y / s) * l.rgb_grid + x / s;
            let border = y == 0 || x == 0 || y + 1 == l.xyz_grid || x + 1 == l.xyz_grid;
            for k in 0..l.xyz_dim {
                let lin: f32 = (0..l.rgb_dim)
                    .map(|i| map[k * l.rgb_dim + i] * rgb[c * l.rgb_dim + i])
                    .sum();
                xyz[j * l.xyz_dim + k] = if border {
                    0.0
                } else {
                    lin + 0.3 * rng.normal() + 0.01
                };
            }
        }
        fused.fill(0.0);
        Ok(())
    }
    fn extract_without(
        &mut self,
        part: usize,
        drop: miad::eval::missing::MissingModality,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> miad::Result<bool> {
        use miad::eval::missing::MissingModality as M;
        self.extract(part, xyz, rgb, fused)?;
        let mut pseudo = Rng::new(self.seed + 7);
        match drop {
            M::Cloud => xyz
                .iter_mut()
                .for_each(|v| *v = 0.5 + 0.1 * pseudo.normal()),
            M::Rgb => rgb
                .iter_mut()
                .for_each(|v| *v = 0.5 + 0.1 * pseudo.normal()),
            M::Both => return Ok(false),
        }
        Ok(true)
    }
}

pub fn linked_layout(cfg: &FusionConfig) -> FeatureLayout {
    FeatureLayout {
        rgb_grid: 4,
        rgb_dim: cfg.rgb_dim as usize,
        xyz_grid: 8,
        xyz_dim: cfg.xyz_dim as usize,
        fused_dim: cfg.fused_dim(),
    }
}

/// Random parameters with non-trivial LayerNorm affines.
pub fn jittered(cfg: &FusionConfig, seed: u64) -> UffParams {
    let mut p = UffParams::init(cfg, seed);
    let mut rng = Rng::new(seed + 7);
    for v in p.data.iter_mut() {
        *v += 0.2 * rng.normal();
    }
    p
}
