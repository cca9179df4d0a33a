//! What the device trainings' tests (train_uff, train_radar) share: the backend of the
//! test device, the tensor-wise comparison of two parameter vectors, and the check that a
//! device training follows the CPU's and is deterministic.

use miad::fit::train_fusion::{TrainBackend, TrainReport};
use miad::format::TensorSpec;

/// The training backend of the device `test_device` gave.
fn backend_of(dev: &miad::cuda::Device) -> TrainBackend {
    if dev.is_simulated() {
        TrainBackend::CudaSim
    } else {
        TrainBackend::Cuda
    }
}

/// Largest |a − b| over the largest |b| of each tensor, worst over the tensors.
pub fn worst_rel(specs: &[(TensorSpec, usize)], a: &[f32], b: &[f32]) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for (s, off) in specs {
        let len: usize = s.shape.iter().product();
        let (x, y) = (&a[*off..off + len], &b[*off..off + len]);
        let peak = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        let d = x.iter().zip(y).fold(0f32, |m, (u, v)| m.max((u - v).abs())) as f64;
        if d / peak > worst.0 {
            worst = (d / peak, s.name.clone());
        }
    }
    worst
}

/// One training: its tensors (offsets into the flat parameters), trained parameters and
/// report.
pub type Run = (Vec<(TensorSpec, usize)>, Vec<f32>, TrainReport);

/// Runs `train(backend, seed)` on the CPU and on `dev`'s backend (seed 21 twice, 22 once)
/// and asserts that the device training follows the CPU's (epoch losses within
/// `loss_tol` relative, the evaluation loss before training within 1e-5 relative, every
/// trained tensor within `param_tol` of its largest value), that the second device run
/// is bit-identical and that the other seed's weights differ; prints what it measured
/// and returns the device run's report.
pub fn check_device_training(
    what: &str,
    dev: miad::cuda::Device,
    train: impl Fn(TrainBackend, u64) -> Run,
    (loss_tol, param_tol): (f64, f64),
) -> TrainReport {
    let backend = backend_of(&dev);
    drop(dev);
    let (specs, pc, rc) = train(TrainBackend::Cpu, 21);
    let (_, pd, rd) = train(backend, 21);
    let (_, pd2, rd2) = train(backend, 21);
    let (_, pe, _) = train(backend, 22);
    let lrel = rc
        .epoch_losses
        .iter()
        .zip(&rd.epoch_losses)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() / a.abs()));
    let (pworst, pname) = worst_rel(&specs, &pd, &pc);
    eprintln!(
        "{what}, {} steps: CPU epoch losses {:?}, device {:?} (worst rel {lrel:.1e}); eval {:.4} -> {:.4} (CPU {:.4} -> {:.4}); parameters worst {pworst:.1e} ({pname})",
        rd.steps, rc.epoch_losses, rd.epoch_losses, rd.eval_before, rd.eval_after, rc.eval_before, rc.eval_after
    );
    assert!(lrel < loss_tol, "epoch losses differ by {lrel:.2e}");
    assert!((rd.eval_before - rc.eval_before).abs() < 1e-5 * rc.eval_before);
    assert!(
        pworst < param_tol,
        "trained parameters of {pname} differ by {pworst:.2e}"
    );
    assert!(
        pd == pd2 && rd.epoch_losses == rd2.epoch_losses,
        "two device runs with one seed differ"
    );
    assert!(pd != pe, "another seed gives the same weights");
    rd
}

/// Asserts one device step's parity with the CPU's step: the loss-only evaluation gives
/// the training step's loss bits, the loss is within 1e-6 relative, every gradient
/// tensor within 1e-5 of its largest value. Returns the loss's relative error, the worst
/// gradient error and its tensor.
pub fn check_step(
    specs: &[(TensorSpec, usize)],
    (loss, grad): (f64, &[f32]),
    (eval, dloss, dgrad): (f64, f64, &[f32]),
) -> (f64, f64, String) {
    assert_eq!(
        eval.to_bits(),
        dloss.to_bits(),
        "loss-only and training step differ"
    );
    let rel = (dloss - loss).abs() / loss.abs();
    let (gworst, gname) = worst_rel(specs, dgrad, grad);
    assert!(rel < 1e-6, "loss {dloss} vs {loss}");
    assert!(gworst < 1e-5, "gradient of {gname} off by {gworst:.2e}");
    (rel, gworst, gname)
}
