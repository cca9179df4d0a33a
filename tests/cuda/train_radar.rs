//! RADAR's training on the device (`miad::fit::device::radar`, `train-fusion
//! --method radar --backend cuda`) against the CPU trainer (`fit::train_radar`), on the
//! device of `test_device` (the simulated one without a GPU):
//! - one step on three parts, one per case (the hybrid block's mask in two of them), with
//!   fewer loss rows than planned (padding rows) and the InfoNCE in several blocks: the
//!   loss within 1e-6 relative, every gradient tensor within 1e-5 of its largest value
//!   (f32 both; products and softmax sums in another order), the parameters after both
//!   AdamW updates within 1e-5 absolute; the loss-only path gives the training step's
//!   loss bits;
//! - whole trainings (`train_radar` with the device backend, the same seeded batches and
//!   cases as the CPU): epoch losses within 1e-5 relative, every trained tensor within
//!   1e-3 of its largest value, two device runs bit-identical, another seed differs;
//! - bad batches refused; after the first step, steps and loss evaluations allocate
//!   nothing on the host (simulated device, counting allocator).

use std::sync::Arc;

use miad::config::{FusionConfig, RadarConfig};
use miad::cpu::pool::Pool;
use miad::cpu::radar_fusion::Case;
use miad::fit::banks::FeatureLayout;
use miad::fit::device::radar::DeviceRadarStep;
use miad::fit::train_fusion::{AdamW, TrainBackend};
use miad::fit::train_radar::{
    radar_loss_and_grad, train_radar, PartSample, RadarParams, RadarStep, RadarTrainOptions,
    RadarWorkspace,
};
use miad::util::rng::Rng;

use crate::linked::Linked;
use crate::test_device;
use crate::train_check::{check_device_training, check_step};

/// Branch widths that are no multiple of 4 (the device pads each tensor to 256 bytes).
fn cfg(hybrid: bool) -> (FusionConfig, RadarConfig) {
    (
        FusionConfig {
            rgb_dim: 6,
            xyz_dim: 7,
            mlp_ratio: 2,
            ln_eps: 1e-5,
            head_dim: 8,
        },
        RadarConfig {
            dim: 16,
            depth: 2,
            heads: 2,
            instruction_len: 3,
            hyper_dim: 8,
            token_grid: 2,
            ln_eps: 1e-5,
            hybrid,
        },
    )
}

const GRID_X: usize = 4;

/// Jittered parameters (zero-initialised context and HyperNetwork outputs included) so
/// that every gradient is non-zero.
fn jittered(seed: u64, hybrid: bool) -> RadarParams {
    let (f, r) = cfg(hybrid);
    let mut p = RadarParams::init(&f, &r, seed);
    let mut rng = Rng::new(seed + 50);
    p.data.iter_mut().for_each(|v| *v += 0.2 * rng.normal());
    p
}

struct Batch {
    xyz: Vec<Vec<f32>>,
    rgb: Vec<Vec<f32>>,
    cells: [Vec<u32>; 3],
}

fn batch_data() -> Batch {
    let (f, _) = cfg(true);
    let mut rng = Rng::new(5);
    let mut rows = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() + 0.3).collect() };
    Batch {
        xyz: (0..3)
            .map(|_| rows(GRID_X * GRID_X * f.xyz_dim as usize))
            .collect(),
        rgb: (0..3).map(|_| rows(4 * f.rgb_dim as usize)).collect(),
        cells: [vec![0, 5, 10, 15, 3], vec![1, 2, 12], vec![7, 6, 9, 13]],
    }
}

fn samples(b: &Batch) -> Vec<PartSample<'_>> {
    let cases = [Case::Complete, Case::RgbOnly, Case::CloudOnly];
    (0..3)
        .map(|i| PartSample {
            xyz: &b.xyz[i],
            rgb: &b.rgb[i],
            case: cases[i],
            cells: &b.cells[i],
        })
        .collect()
}

fn opts() -> RadarTrainOptions {
    RadarTrainOptions {
        temperature: 0.5,
        ..RadarTrainOptions::default()
    }
}

#[test]
fn one_step_matches_the_cpu_step() {
    let Some(dev) = test_device("train_radar") else {
        return;
    };
    let dev = Arc::new(dev);
    let data = batch_data();
    let batch = samples(&data);
    let o = opts();
    let pool = Pool::new(2);
    for hybrid in [true, false] {
        let p = jittered(9, hybrid);
        let mut grad = vec![0f32; p.len()];
        let mut ws = RadarWorkspace::new(&p, GRID_X, 6);
        let t = o.temperature;
        let loss = radar_loss_and_grad(&pool, &p, &batch, t, Some(&mut grad), &mut ws);
        // 12 loss rows of 3 parts planned for 6 each (padding rows in every part), the
        // logits in 3 blocks of 8 queries (the last one all padding).
        let mut step = DeviceRadarStep::with_block(dev.clone(), &p, &o, GRID_X, (3, 6), 8).unwrap();
        let eval = step.loss(&batch).unwrap();
        let (lr, lr_i) = (1e-3, 1e-2);
        let dloss = step.train(&batch, lr, lr_i, 0).unwrap();
        let dgrad = step.gradient().unwrap();
        let (rel, gworst, gname) = check_step(&p.specs, (loss, &grad), (eval, dloss, &dgrad));
        // The CPU's two updates applied to the device's gradient: the optimiser alone (a
        // gradient within 1e-5 of its tensor's peak still differs in sign where it is ~0,
        // and Adam's first step moves such a parameter by ±lr either way).
        let mut want = p.clone();
        let n_i = p.instructions_len();
        let adam = |len| AdamW::new(len, o.betas.0, o.betas.1, o.adam_eps, o.weight_decay);
        let (pi, pr) = want.data.split_at_mut(n_i);
        adam(n_i).step(pi, &dgrad[..n_i], lr_i);
        adam(p.len() - n_i).step(pr, &dgrad[n_i..], lr);
        let mut got = p.clone();
        step.params_into(&mut got).unwrap();
        let pworst = got
            .data
            .iter()
            .zip(&want.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "one RADAR step (hybrid {hybrid}), 3 parts, 12 rows: loss {loss:.6} vs {dloss:.6} (rel {rel:.1e}); gradient worst {gworst:.1e} ({gname}); parameters after AdamW on the device's gradient max |Δ| {pworst:.1e}"
        );
        assert!(pworst < 1e-7, "parameters off by {pworst}");
        assert!(got.data != p.data, "the update changed nothing");
    }
}

#[test]
fn bad_batches_are_refused() {
    let Some(dev) = test_device("train_radar") else {
        return;
    };
    let data = batch_data();
    let batch = samples(&data);
    let p = jittered(2, true);
    let mut step = DeviceRadarStep::new(Arc::new(dev), &p, &opts(), GRID_X, 2, 4).unwrap();
    assert!(step.loss(&batch).is_err(), "more parts than planned");
    assert!(step.loss(&batch[1..]).unwrap().is_finite());
    let too_many = [PartSample {
        cells: &data.cells[0],
        ..batch[0]
    }];
    assert!(step.loss(&too_many).is_err(), "more rows than planned");
    let bad_cell = [99u32];
    let outside = [PartSample {
        cells: &bad_cell,
        ..batch[1]
    }];
    assert!(step.loss(&outside).is_err(), "a cell outside the grid");
    let nan = vec![f32::NAN; data.xyz[1].len()];
    let diverged = [PartSample {
        xyz: &nan,
        ..batch[1]
    }];
    let e = step.train(&diverged, 1e-3, 1e-2, 3).unwrap_err();
    assert!(e.to_string().contains("diverged at step 3"), "{e}");
}

fn train(backend: TrainBackend, seed: u64) -> (RadarParams, miad::fit::train_fusion::TrainReport) {
    let (f, r) = cfg(true);
    let pool = Pool::new(2);
    // 6 parts in batches of 4: the last batch of each epoch is smaller than the plan.
    let mut feats = Linked {
        layout: FeatureLayout {
            rgb_grid: 2,
            rgb_dim: f.rgb_dim as usize,
            xyz_grid: GRID_X,
            xyz_dim: f.xyz_dim as usize,
            fused_dim: f.fused_dim(),
        },
        parts: 6,
        seed: 8,
    };
    let opts = RadarTrainOptions {
        epochs: 3,
        batch: 4,
        patches: 3,
        seed,
        backend,
        ..RadarTrainOptions::default()
    };
    let mut p = RadarParams::init(&f, &r, seed);
    let dir = crate::common::scratch_dir("radar-device-train");
    let rep = train_radar(&pool, &mut feats, &mut p, &opts, &dir, &mut |_| {}).unwrap();
    (p, rep)
}

#[test]
fn training_on_the_device_follows_the_cpu_and_is_deterministic() {
    let Some(dev) = test_device("train_radar") else {
        return;
    };
    check_device_training(
        "RADAR",
        dev,
        |backend, seed| {
            let (p, r) = train(backend, seed);
            (p.specs, p.data, r)
        },
        (1e-5, 1e-3),
    );
}

/// After the first step, steps and loss evaluations allocate nothing on the host (the
/// emulator's C++ runtime is outside the counting allocator, as a GPU driver would be).
/// Run alone in a child process.
#[cfg(feature = "cuda-sim")]
#[test]
fn device_radar_steps_allocate_nothing_after_the_first() {
    if !crate::common::alone_in_process!(device_radar_steps_allocate_nothing_after_the_first) {
        return;
    }
    use miad::util::alloc_counter::total_counts;
    let data = batch_data();
    let batch = samples(&data);
    let p = jittered(3, true);
    let dev = miad::cuda::Device::simulated().unwrap();
    let mut step = DeviceRadarStep::new(Arc::new(dev), &p, &opts(), GRID_X, 3, 6).unwrap();
    step.train(&batch, 1e-3, 1e-2, 0).unwrap();
    let mut losses = [0f64; 6];
    let before = total_counts();
    for (i, parts) in [3usize, 2, 3].into_iter().enumerate() {
        losses[2 * i] = step.train(&batch[..parts], 1e-3, 1e-2, i + 1).unwrap();
        losses[2 * i + 1] = step.loss(&batch[..parts]).unwrap();
    }
    let after = total_counts();
    assert_eq!(after, before, "device steps allocated (allocations, frees)");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
}
