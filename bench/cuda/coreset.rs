//! GPU coreset at the scale: projection + selection of 1.25 M × 1920 rows to the JL
//! dimension, 10 % kept (`MIAD_CORESET_ROWS` overrides the rows; halved until it fits the
//! device), then GPU and CPU selection on a 50 000-row slice, identical indices.

use std::time::Instant;

use miad::cpu::coreset::{greedy, jl_min_dim, project_rows, projection_matrix};
use miad::cpu::pool::Pool;
use miad::cuda::ops::coreset::{device_memory, CoresetPlan, GpuCoreset};
use miad::util::rng::Rng;

/// `n × d` clustered rows, generated on all cores (SplitMix per chunk).
fn big_clustered(n: usize, d: usize, clusters: usize) -> Vec<f32> {
    let mut rng = Rng::new(99);
    let centres: Vec<f32> = (0..clusters * d).map(|_| rng.normal() * 3.0).collect();
    let mut x = vec![0f32; n * d];
    let threads = std::thread::available_parallelism().map_or(4, |t| t.get());
    let rows_per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in x.chunks_mut(rows_per * d).enumerate() {
            let centres = &centres;
            s.spawn(move || {
                let mut rng = Rng::new(1000 + t as u64);
                for row in chunk.chunks_mut(d) {
                    let c = rng.below(clusters as u64) as usize;
                    let spread = 0.2 + rng.uniform();
                    for (v, &cv) in row.iter_mut().zip(&centres[c * d..(c + 1) * d]) {
                        *v = cv + (rng.uniform() - 0.5) * spread;
                    }
                }
            });
        }
    });
    x
}

pub fn coreset() -> bool {
    let Some(dev) = crate::gpu("coreset") else {
        return false;
    };
    let pool = Pool::with_available_cores();
    let d = 1920;
    let mut n: usize = std::env::var("MIAD_CORESET_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_250_000);
    let (free, total) = device_memory(&dev).unwrap();
    // The largest size that fits (halving), 10 % kept.
    loop {
        let k = jl_min_dim(n, 0.9).min(d);
        let plan = CoresetPlan::new(n, k, n.div_ceil(10)).unwrap();
        if plan.check_fits(free, total).is_ok() || n < 20_000 {
            break;
        }
        n /= 2;
    }
    let m = n.div_ceil(10);
    let k = jl_min_dim(n, 0.9);
    assert!(k < d);
    let t = Instant::now();
    let x = big_clustered(n, d, 4096);
    let gen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let r = projection_matrix(k, d, 7);
    let mut p = vec![0f32; n * k];
    project_rows(&pool, &x, d, &r, k, &mut p);
    let proj_s = t.elapsed().as_secs_f64();
    drop(x);
    let gpu = GpuCoreset::new(&dev).unwrap();
    let t = Instant::now();
    let idx = gpu.select(&dev, &p, k, m).unwrap();
    let sel_s = t.elapsed().as_secs_f64();
    assert_eq!(idx.len(), m);
    let total_s = proj_s + sel_s;
    println!(
        "BENCH coreset {n}x{d} -> k {k}, m {m} on {}: data {gen_s:.1} s, CPU projection \
         ({} threads) {proj_s:.2} s, GPU selection (incl. upload) {sel_s:.2} s \
         ({:.1} us/step), total {total_s:.2} s = {:.2} of the 60 s target",
        dev.name,
        pool.threads(),
        sel_s * 1e6 / m as f64,
        total_s / 60.0
    );
    // GPU vs CPU selection, identical indices, on the first 50 000 projected rows.
    let ns = n.min(50_000);
    let ms = ns / 10;
    let sub = &p[..ns * k];
    let t = Instant::now();
    let g = gpu.select(&dev, sub, k, ms).unwrap();
    let g_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let c = greedy(&pool, sub, k, ms);
    let c_s = t.elapsed().as_secs_f64();
    assert_eq!(g, c);
    println!(
        "BENCH coreset slice {ns}x{k}, m {ms}: GPU {g_s:.2} s, CPU greedy ({} threads) {c_s:.2} s, \
         GPU/CPU time {:.3}, indices identical",
        pool.threads(),
        g_s / c_s
    );
    true
}
