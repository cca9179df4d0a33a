//! UFF training on the device (`miad::fit::device::uff`, `train-fusion --backend
//! cuda`) against the CPU trainer (`fit::train_fusion`), on the device of `test_device`
//! (the simulated one without a GPU):
//! - one step on a batch smaller than the plan (padding rows) and split into several
//!   blocks of logits: the loss within 1e-6 relative, every gradient tensor within 1e-5 of
//!   its largest value (f32 both; the products sum in another order), the parameters after
//!   the AdamW update within 1e-5 absolute (lr 3e-3); the loss-only path gives the
//!   training step's loss bits. Measured on the simulated device: loss 3.8e-9, gradient
//!   1.1e-6, parameters 1.5e-8;
//! - whole trainings (`train_uff` with the device backend, same seeded batches as the CPU,
//!   8 steps): epoch losses within 1e-6 relative, every trained tensor within 1e-4 of its
//!   largest value, the evaluation loss down by 0.1; two device runs bit-identical;
//!   another seed differs. Measured on the simulated device: losses 2.5e-9, parameters
//!   2.5e-7, evaluation loss 6.93 → 6.56;
//! - bad batches refused; after the first step, steps and loss evaluations allocate
//!   nothing on the host (simulated device, counting allocator).

use std::sync::Arc;

use miad::config::FusionConfig;
use miad::cpu::pool::Pool;
use miad::fit::device::uff::DeviceUffStep;
use miad::fit::train_fusion::{
    train_uff, uff_loss_and_grad, AdamW, TrainBackend, UffParams, UffStep, UffTrainOptions,
    Workspace,
};
use miad::util::rng::Rng;

use crate::linked::{jittered, linked_layout, Linked};
use crate::test_device;
use crate::train_check::{check_device_training, check_step};

/// Widths that are no multiple of 4 (the device pads each tensor to 256 bytes).
fn cfg() -> FusionConfig {
    FusionConfig {
        rgb_dim: 10,
        xyz_dim: 18,
        mlp_ratio: 2,
        ln_eps: 1e-5,
        head_dim: 8,
    }
}

fn device_step(
    dev: miad::cuda::Device,
    p: &UffParams,
    opts: &UffTrainOptions,
    max_rows: usize,
    block: usize,
) -> DeviceUffStep {
    DeviceUffStep::with_block(Arc::new(dev), p, opts, max_rows, block).unwrap()
}

#[test]
fn one_step_matches_the_cpu_step() {
    let Some(dev) = test_device("train_uff") else {
        return;
    };
    let c = cfg();
    let (dx, dr) = (c.xyz_dim as usize, c.rgb_dim as usize);
    let mut rng = Rng::new(4);
    // 21 pairs in a plan of 27 rows, blocks of 8 queries: 32 rows, the last block padding.
    let n = 21;
    let x: Vec<f32> = (0..n * dx).map(|_| rng.normal() + 0.5).collect();
    let r: Vec<f32> = (0..n * dr).map(|_| rng.normal()).collect();
    let p = jittered(&c, 9);
    let opts = UffTrainOptions {
        temperature: 0.5,
        ..UffTrainOptions::default()
    };
    let pool = Pool::new(2);
    let mut grad = vec![0f32; p.len()];
    let loss = uff_loss_and_grad(
        &pool,
        &p,
        &x,
        &r,
        n,
        opts.temperature,
        Some(&mut grad),
        &mut Workspace::default(),
    );
    let mut step = device_step(dev, &p, &opts, 27, 8);
    assert_eq!(step.rows(), 32);
    let eval = step.loss(&x, &r, n).unwrap();
    let lr = 3e-3;
    let dloss = step.train(&x, &r, n, lr, 0).unwrap();
    let dgrad = step.gradient().unwrap();
    let (rel, gworst, gname) = check_step(&p.specs, (loss, &grad), (eval, dloss, &dgrad));
    // The CPU's update of the same parameters.
    let mut want = p.clone();
    let mut adam = AdamW::new(p.len(), opts.betas.0, opts.betas.1, opts.adam_eps, 0.01);
    adam.step(&mut want.data, &grad, lr);
    let mut got = p.clone();
    step.params_into(&mut got).unwrap();
    let pworst = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "one step, {n} pairs: loss {loss:.6} vs {dloss:.6} (rel {rel:.1e}); gradient worst {gworst:.1e} ({gname}); parameters after AdamW max |Δ| {pworst:.1e} (lr {lr})"
    );
    // Adam's first step moves every parameter by about lr·sign(g): a gradient within 1e-5
    // moves it the same unless the gradient is ~0 (none is here).
    assert!(pworst < 1e-5, "parameters off by {pworst}");
    assert!(got.data != p.data, "the update changed nothing");
}

#[test]
fn bad_batches_are_refused() {
    let Some(dev) = test_device("train_uff") else {
        return;
    };
    let c = cfg();
    let p = UffParams::init(&c, 1);
    let mut step = device_step(dev, &p, &UffTrainOptions::default(), 8, 1024);
    let (x, r) = (vec![0.5f32; 9 * 18], vec![0.5f32; 9 * 10]);
    assert!(
        step.train(&x, &r, 9, 1e-3, 0).is_err(),
        "more rows than planned"
    );
    assert!(step.train(&x[..18], &r, 2, 1e-3, 0).is_err(), "short input");
    assert!(step.loss(&x, &r, 8).unwrap().is_finite());
    let bad = vec![f32::NAN; 8 * 18];
    let e = step.train(&bad, &r, 8, 1e-3, 3).unwrap_err();
    assert!(e.to_string().contains("diverged at step 3"), "{e}");
}

fn train(backend: TrainBackend, seed: u64) -> (UffParams, miad::fit::train_fusion::TrainReport) {
    let pool = Pool::new(2);
    // 6 parts in batches of 4: the last batch of each epoch is smaller than the plan.
    let mut f = Linked {
        layout: linked_layout(&cfg()),
        parts: 6,
        seed: 8,
    };
    let opts = UffTrainOptions {
        epochs: 4,
        batch: 4,
        patches: 8,
        seed,
        backend,
        ..UffTrainOptions::default()
    };
    let mut p = UffParams::init(&cfg(), seed);
    let dir = crate::common::scratch_dir("uff-device-train");
    let r = train_uff(&pool, &mut f, &mut p, &opts, &dir, &mut |_| {}).unwrap();
    (p, r)
}

#[test]
fn training_on_the_device_follows_the_cpu_and_is_deterministic() {
    let Some(dev) = test_device("train_uff") else {
        return;
    };
    let rd = check_device_training(
        "UFF",
        dev,
        |backend, seed| {
            let (p, r) = train(backend, seed);
            (p.specs, p.data, r)
        },
        (1e-6, 1e-4),
    );
    assert!(
        rd.eval_after < rd.eval_before - 0.1,
        "the loss did not decrease"
    );
}

/// After the first step, steps of any batch size up to the plan and loss evaluations
/// allocate nothing on the host (the emulator's C++ runtime is outside the counting
/// allocator, as a GPU driver would be). Run alone in a child process.
#[cfg(feature = "cuda-sim")]
#[test]
fn device_steps_allocate_nothing_after_the_first() {
    if !crate::common::alone_in_process!(device_steps_allocate_nothing_after_the_first) {
        return;
    }
    use miad::util::alloc_counter::total_counts;
    let c = cfg();
    let (dx, dr) = (c.xyz_dim as usize, c.rgb_dim as usize);
    let mut rng = Rng::new(6);
    let rows = 24;
    let x: Vec<f32> = (0..rows * dx).map(|_| rng.normal()).collect();
    let r: Vec<f32> = (0..rows * dr).map(|_| rng.normal()).collect();
    let p = UffParams::init(&c, 2);
    let dev = miad::cuda::Device::simulated().unwrap();
    let mut step = device_step(dev, &p, &UffTrainOptions::default(), rows, 8);
    step.train(&x, &r, rows, 1e-3, 0).unwrap();
    let mut losses = [0f64; 8];
    let before = total_counts();
    for (i, n) in [24usize, 17, 9, 24].into_iter().enumerate() {
        losses[2 * i] = step.train(&x, &r, n, 1e-3, i + 1).unwrap();
        losses[2 * i + 1] = step.loss(&x, &r, n).unwrap();
    }
    let after = total_counts();
    assert_eq!(after, before, "device steps allocated (allocations, frees)");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
}
