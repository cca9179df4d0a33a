//! Training of RADAR's adaptive instruction fusion (docs/RADAR-FUSION.md §9b): the
//! hand-derived gradient of every tensor against finite differences (all three cases in
//! one batch), loss decrease and determinism on linked fake features, and a synthetic
//! category through `train_fusion_category --method radar` (provenance, no leftovers).

use miad::config::{FusionConfig, RadarConfig};
use miad::cpu::pool::Pool;
use miad::cpu::radar_fusion::Case;
use miad::fit::banks::{FeatureExtractor, FeatureLayout};
use miad::fit::train_radar::{
    radar_loss_and_grad, train_radar, PartSample, RadarParams, RadarTrainOptions, RadarWorkspace,
};
use miad::util::rng::Rng;

fn tiny() -> (FusionConfig, RadarConfig) {
    (
        FusionConfig {
            rgb_dim: 5,
            xyz_dim: 7,
            mlp_ratio: 2,
            ln_eps: 1e-5,
            head_dim: 4,
        },
        RadarConfig {
            dim: 8,
            depth: 2,
            heads: 2,
            instruction_len: 3,
            hyper_dim: 4,
            token_grid: 2,
            ln_eps: 1e-5,
        },
    )
}

fn normal_rows(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() + 0.3).collect()
}

#[test]
fn gradient_of_every_tensor_matches_finite_differences() {
    let (f, r) = tiny();
    let pool = Pool::new(2);
    let grid_x = 4;
    let mut rng = Rng::new(5);
    let mut p = RadarParams::init(&f, &r, 3);
    // Jitter everything (zero-initialised context and HyperNetwork outputs included) so
    // that no gradient is trivially zero.
    for v in p.data.iter_mut() {
        *v += 0.2 * rng.normal();
    }
    let xyz: Vec<Vec<f32>> = (0..3)
        .map(|_| normal_rows(grid_x * grid_x * 7, &mut rng))
        .collect();
    let rgb: Vec<Vec<f32>> = (0..3).map(|_| normal_rows(4 * 5, &mut rng)).collect();
    let cells: [Vec<u32>; 3] = [vec![0, 5, 10, 15, 3], vec![1, 2, 12], vec![7, 6, 9, 13]];
    let cases = [Case::Complete, Case::RgbOnly, Case::CloudOnly];
    let batch: Vec<PartSample<'_>> = (0..3)
        .map(|i| PartSample {
            xyz: &xyz[i],
            rgb: &rgb[i],
            case: cases[i],
            cells: &cells[i],
        })
        .collect();
    let mut ws = RadarWorkspace::new(&p, grid_x, 5);
    let mut grad = vec![0f32; p.len()];
    let loss = radar_loss_and_grad(&pool, &p, &batch, 1.0, Some(&mut grad), &mut ws);
    assert!(loss.is_finite() && loss > 0.0);
    let again = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
    assert_eq!(loss, again, "the loss without gradient differs");
    let specs = p.specs.clone();
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for (s, off) in &specs {
        let n: usize = s.shape.iter().product();
        // Up to 8 entries per tensor, spread over it.
        let picks: Vec<usize> = (0..n.min(8)).map(|i| i * n / n.min(8)).collect();
        let mut nonzero = false;
        for i in picks {
            let at = off + i;
            let v = p.data[at];
            let h = 1e-2f32;
            p.data[at] = v + h;
            let up = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
            p.data[at] = v - h;
            let down = radar_loss_and_grad(&pool, &p, &batch, 1.0, None, &mut ws);
            p.data[at] = v;
            let num = (up - down) / (2.0 * h as f64);
            let ana = grad[at] as f64;
            let err = (num - ana).abs() / (2e-3 + num.abs().max(ana.abs()));
            worst = worst.max(err);
            nonzero |= ana.abs() > 1e-6;
            assert!(
                err < 3e-2,
                "{}[{i}]: analytic {ana:.6}, finite difference {num:.6}",
                s.name
            );
            checked += 1;
        }
        // Instructions of a case not in the batch would be zero; all three are here.
        assert!(nonzero, "{}: no entry has a gradient", s.name);
    }
    eprintln!(
        "worst relative error {worst:.2e} over {checked} entries of {} tensors",
        specs.len()
    );
}
