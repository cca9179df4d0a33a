//! Rough timings of the point branch stages at full size, printed, not asserted (the
//! machine is shared). `cargo bench --bench point_stages`. The criterion bench is bench/point.rs.

use miad::config::{PointConfig, PreprocessConfig};
use miad::cpu::fps::{farthest_point_sample, fps_plain, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_mae::{
    point_mae_flops, point_mae_forward, point_mae_scratch_len, PointMaeWeights,
};
use miad::cpu::pool::Pool;
use miad::util::rng::Rng;
use std::time::Instant;

fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let cfg = PointConfig::m3dm();
    let pre = PreprocessConfig::default();
    let n = 50_000;
    let (m, k) = (cfg.num_groups as usize, cfg.group_size as usize);
    let mut rng = Rng::new(1);
    let mut pts = Vec::with_capacity(3 * n);
    let mut pix = Vec::with_capacity(n);
    for i in 0..n {
        let (r, c) = (i / 224 + 1, i % 224);
        let (x, y) = (c as f32 / 224.0, r as f32 / 224.0);
        let z = 0.1 * (6.0 * x).sin() * (4.0 * y).cos() + 0.001 * rng.uniform();
        pts.extend([x * 0.1, y * 0.1, 0.5 + z * 0.1]);
        pix.push((r * 224 + c) as u32);
    }
    let mut centers = vec![0u32; m];
    let mut scratch = vec![0f32; fps_scratch_len(n)];
    let tree = best_ms(5, || {
        farthest_point_sample(&pts, n, m, &mut centers, &mut scratch)
    });
    let mut plain = vec![0u32; m];
    let mut dist = vec![0f32; n];
    let pl = best_ms(2, || fps_plain(&pts, &mut plain, &mut dist));
    assert_eq!(plain, centers);
    println!(
        "fps 1024 of 50000: tree {tree:.2} ms, plain {pl:.2} ms, speed-up {:.1}x",
        pl / tree
    );
    for threads in [1usize, 2] {
        let pool = Pool::new(threads);
        let mut groups = vec![0u32; m * k];
        let mut ks = vec![0f32; knn_scratch_len(n, k, threads)];
        let t = best_ms(3, || {
            group_knn(&pool, &pts, n, &centers, k, &mut groups, &mut ks)
        });
        let f = cfg.feature_dim();
        let g = pre.xyz_grid as usize;
        let cxyz: Vec<f32> = centers
            .iter()
            .flat_map(|&i| pts[3 * i as usize..3 * i as usize + 3].to_vec())
            .collect();
        let feats: Vec<f32> = (0..m * f).map(|_| rng.normal()).collect();
        let mut out = vec![0f32; g * g * f];
        let mut ps = vec![0f32; pfa_scratch_len(&pre, m, n, threads)];
        let p = best_ms(3, || {
            point_feature_align(
                &pool, &pre, &pts, n, &pix, &cxyz, &feats, f, &mut out, &mut ps,
            )
        });
        println!("{threads} thread(s): knn 1024x128 {t:.2} ms, pfa 56x56x1152 {p:.2} ms");
        let model = miad::format::model::random_model(&miad::config::ModelConfig::m3dm(), 5);
        let w = PointMaeWeights::load(&model, &cfg).unwrap();
        let mut feats = vec![0f32; m * f];
        let mut ms = vec![0f32; point_mae_scratch_len(&cfg, threads)];
        let e = best_ms(2, || {
            point_mae_forward(
                &pool, &cfg, &w, &pts, n, &centers, &groups, &mut feats, &mut ms,
            )
        });
        let gf = point_mae_flops(&cfg) / (e * 1e-3) / 1e9;
        println!(
            "{threads} thread(s): point-mae 1024x128 -> 1024x1152 {e:.1} ms, {:.1} GFLOP, {gf:.1} GFLOP/s",
            point_mae_flops(&cfg) / 1e9
        );
    }
}
