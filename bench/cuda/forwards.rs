//! The full ViT-B/8 at 224×224 and Point-MAE with 1024 groups on the device, graph-replayed,
//! both precisions: milliseconds and TFLOP/s per forward, the GEMM and attention shares,
//! the error against the CPU at full size.

use miad::backend::Precision;
use miad::config::ModelConfig;
use miad::cpu::pool::Pool;
use miad::cuda::stages::forward::{DevicePointMae, DeviceVit, Kinds};
use miad::cuda::{Device, Graph};
use miad::format::random_model;
use miad::util::rng::Rng;

use crate::shared::forward::{
    cpu_point_blocks, cpu_vit, device, errors, normal, F32_TOL, PRECISIONS,
};

/// Milliseconds per replay of `graph`: warm replays, then the median of 5 rounds.
fn time_graph(dev: &Device, graph: &Graph, reps: usize) -> f64 {
    for _ in 0..3 {
        graph.replay(dev).unwrap();
    }
    dev.synchronize().unwrap();
    let timer = dev.timer().unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            timer.start().unwrap();
            for _ in 0..reps {
                graph.replay(dev).unwrap();
            }
            timer.stop_ms().unwrap() as f64 / reps as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[2]
}

/// (all, gemm, attention) milliseconds of the three graphs.
fn report(what: &str, p: Precision, flops: f64, arena: usize, ms: [f64; 3], err: (f64, f64)) {
    let [all, gemm, att] = ms;
    println!(
        "BENCH forward {what} {p:?}: {all:.3} ms/forward ({:.1} TFLOP/s), GEMM {gemm:.3} ms ({:.0}%), attention {att:.3} ms ({:.0}%), other ~{:.3} ms; arena {:.0} MiB; vs CPU ‖Δ‖/‖ref‖ {:.2e}, max {:.2e}",
        flops / (all * 1e-3) / 1e12,
        100.0 * gemm / all,
        100.0 * att / all,
        (all - gemm - att).max(0.0),
        arena as f64 / (1 << 20) as f64,
        err.0,
        err.1
    );
}

pub fn forwards() -> bool {
    let Some(dev) = device("forwards") else {
        return false;
    };
    let reps = 20;
    let pool = Pool::with_available_cores();
    let cfg = ModelConfig::m3dm();
    let t = random_model(&cfg, 41);
    let mut rng = Rng::new(42);
    let vc = cfg.vit.clone().unwrap();
    let side = vc.image_size as usize;
    let input = normal(&mut rng, 3 * side * side, 1.0);
    let vit_ref = cpu_vit(&pool, &vc, &t, &input);
    let pc = cfg.point.clone().unwrap();
    let (m, d) = (pc.num_groups as usize, pc.dim as usize);
    let tokens = normal(&mut rng, m * d, 1.0);
    let centers = normal(&mut rng, m * 3, 0.3);
    let point_ref = cpu_point_blocks(&pool, &pc, &t, &tokens, &centers);
    for p in PRECISIONS {
        let vit = DeviceVit::from_source(&dev, &cfg, &t, side, side, p).unwrap();
        let err = errors(&vit.run_input(&dev, &input).unwrap(), &vit_ref);
        let graphs = [
            Graph::capture(&dev, |d| unsafe {
                vit.record_input(d, vit.input_ptr(), vit.output_ptr())
            }),
            Graph::capture(&dev, |d| unsafe { vit.record_kinds(d, Kinds::GEMM) }),
            Graph::capture(&dev, |d| unsafe { vit.record_kinds(d, Kinds::ATTENTION) }),
        ]
        .map(Result::unwrap);
        let ms = graphs.each_ref().map(|g| time_graph(&dev, g, reps));
        report(
            &format!("ViT-B/8 {side}×{side}"),
            p,
            vit.flops(),
            vit.arena_bytes(),
            ms,
            err,
        );
        if p == Precision::F32 {
            assert!(err.0 <= F32_TOL && err.1 <= F32_TOL, "{err:?}");
        }
        drop(graphs);
        drop(vit);

        let pm = DevicePointMae::from_source(&dev, &cfg, &t, p).unwrap();
        let err = errors(&pm.run(&dev, &tokens, &centers).unwrap(), &point_ref);
        let graphs = [
            Graph::capture(&dev, |d| unsafe {
                pm.record(d, pm.tokens_ptr(), pm.centers_ptr(), pm.output_ptr())
            }),
            Graph::capture(&dev, |d| unsafe { pm.record_kinds(d, Kinds::GEMM) }),
            Graph::capture(&dev, |d| unsafe { pm.record_kinds(d, Kinds::ATTENTION) }),
        ]
        .map(Result::unwrap);
        let ms = graphs.each_ref().map(|g| time_graph(&dev, g, reps));
        report(
            &format!("Point-MAE {m} groups"),
            p,
            pm.flops(),
            pm.arena_bytes(),
            ms,
            err,
        );
        if p == Precision::F32 {
            assert!(err.0 <= F32_TOL && err.1 <= F32_TOL, "{err:?}");
        }
    }
    true
}
