//! The engine's point branch at M3DM sizes on the device, graph and direct launches, next to
//! the CPU branch in this process.

use std::time::Instant;

use miad::cpu::pool::Pool;
use miad::cuda::stages::point_branch::{BranchOptions, DevicePointBranch};
use miad::pipeline::extract::PointNetwork;

use crate::shared::point_branch::{
    check, cpu_branch, gpu, m3dm_point, scan_points, Branch, TempModel,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The whole branch at M3DM sizes (1024 groups of 128, Point-MAE 12 × 384, 56×56 grid),
/// ~50 000 points: device (graph and direct, wall clock per part including the copies)
/// next to the CPU in this process (the CPU time is printed also without a GPU).
pub fn point_branch() -> bool {
    let cfg = m3dm_point();
    let dir = std::env::temp_dir().join(format!("miad-bench-point-branch-{}", std::process::id()));
    let t = TempModel::new(dir, &cfg, 31);
    let side = cfg.preprocess.image_size as usize;
    let n = 50_000;
    let (pts, pix) = scan_points(n, side);
    let pool = Pool::with_available_cores();
    let time = |f: &mut dyn FnMut(), reps: usize| -> (f64, f64, f64) {
        f();
        let v: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0f64, f64::max);
        (median(v), lo, hi)
    };
    let mut want = None;
    let cpu = time(
        &mut || want = Some(cpu_branch(&pool, &t.model, &pts, n, &pix)),
        3,
    );
    let want = want.unwrap();
    println!(
        "point branch, M3DM sizes, {n} points ({} CPU threads)",
        pool.threads()
    );
    println!(
        "{:28} {:9.3} ms  [{:.3} .. {:.3}]",
        "CPU", cpu.0, cpu.1, cpu.2
    );
    // The CPU time is printed also without a GPU.
    if !gpu("point_branch") {
        return false;
    }
    for graph in [true, false] {
        let opts = BranchOptions {
            graph,
            ..BranchOptions::default()
        };
        let t0 = Instant::now();
        let mut net = DevicePointBranch::with_options(0, &t.model, opts).unwrap();
        let created = t0.elapsed().as_secs_f64();
        let mut out = Branch::zeros(&cfg);
        net.forward(&pts, n, &pix, out.outputs()).unwrap();
        let rel = check("bench output", &out, &want);
        let dev = time(
            &mut || net.forward(&pts, n, &pix, out.outputs()).unwrap(),
            20,
        );
        let name = format!(
            "{} {:?}",
            if graph {
                "device graph"
            } else {
                "device direct"
            },
            net.kernel_choice()
        );
        println!(
            "{name:28} {:9.3} ms  [{:.3} .. {:.3}]  CPU/device {:.1}x, xyz error {rel:.2e}, created in {created:.2} s, {} MiB on {}",
            dev.0,
            dev.1,
            dev.2,
            cpu.0 / dev.0,
            net.device_bytes() >> 20,
            net.device().name
        );
    }
    true
}
