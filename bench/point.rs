//! Point branch benches: FPS (1024 of 50 000, one core; the plain O(N·M) loop beside it),
//! kNN grouping (1024 × 128), and the point feature alignment at full size.
//! The full Point-MAE encoder is reported as GFLOP/s and its fraction of the machine's
//! measured FMA peak. Run: `cargo bench --bench point`. FPS and grouping are memory/branch
//! bound, not GEMM bound, so they are reported as times and as the speed-up over the plain
//! algorithm.
//!
//! `MIAD_POINT_CPU=RUNS` instead runs only the packed f32 encoder on one thread (as the
//! fit extracts each part), RUNS times whole and RUNS times its blocks alone, and prints
//! the process CPU seconds per run of each and of the rest (group encoder + position
//! embedding): figures for comparing two builds run alternately on a loaded machine.

mod timing;
use miad::config::{ModelConfig, PointConfig, PreprocessConfig};
use miad::cpu::dense::DensePrecision;
use miad::cpu::fps::{farthest_point_sample, fps_plain, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_mae::{
    block_shape as point_block_shape, point_mae_flops, point_mae_forward, point_mae_forward_with,
    point_mae_scratch_len, PointMaePacked, PointMaeWeights,
};
use miad::cpu::pool::Pool;
use miad::cpu::transformer::{block_forward_with, block_scratch_len};
use miad::format::random_model;
use miad::util::peak::{measure_peak_gflops, measure_peak_gflops_per_cpu_second};
use miad::util::rng::Rng;
use timing::{cpu_seconds, env_usize, load_average, time_runs};

/// A smooth organized surface: 50 000 points on a 224×224 grid (a typical part covers
/// about this many pixels), row-major like the preprocessed point set.
fn surface(n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(1);
    let mut pts = Vec::with_capacity(3 * n);
    let mut pix = Vec::with_capacity(n);
    let s = 224usize;
    let skip = s * s - n;
    let mut i = 0usize;
    while pix.len() < n {
        if i >= skip / 2 {
            let (r, c) = (i / s, i % s);
            let (x, y) = (c as f32 / 224.0, r as f32 / 224.0);
            let z = 0.1 * (6.0 * x).sin() * (4.0 * y).cos() + 0.001 * rng.uniform();
            pts.extend([x * 0.1, y * 0.1, 0.5 + z * 0.1]);
            pix.push(i as u32);
        }
        i += 1;
    }
    (pts, pix)
}

/// CPU seconds per call of `f` over `runs` calls (after one warm-up call).
fn cpu_per_run(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = cpu_seconds();
    for _ in 0..runs {
        f();
    }
    (cpu_seconds() - t0) / runs as f64
}

/// The `MIAD_POINT_CPU` mode (module doc).
fn encoder_cpu_seconds(runs: usize, pts: &[f32], n: usize, centers: &[u32]) {
    let cfg = PointConfig::m3dm();
    let (m, k) = (cfg.num_groups as usize, cfg.group_size as usize);
    let pool = Pool::new(1);
    let mut groups = vec![0u32; m * k];
    let mut ks = vec![0f32; knn_scratch_len(n, k, 1)];
    group_knn(&pool, pts, n, centers, k, &mut groups, &mut ks);
    let weights = random_model(&ModelConfig::m3dm(), 7);
    let w = PointMaeWeights::load(&weights, &cfg).expect("random weights match");
    let packed = PointMaePacked::new(&cfg, &w, DensePrecision::F32).expect("f32 packs");
    let mut out = vec![0f32; m * cfg.feature_dim()];
    let mut scratch = vec![0f32; point_mae_scratch_len(&cfg, 1)];
    let whole = cpu_per_run(runs, || {
        point_mae_forward_with(
            &pool,
            &cfg,
            &w,
            Some(&packed),
            pts,
            n,
            centers,
            &groups,
            &mut out,
            &mut scratch,
        )
    });
    // The output's bits, to compare builds.
    let bits = out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
    });
    println!("point_mae packed f32 output FNV-1a of the bits: {bits:016x}");
    let shape = point_block_shape(&cfg);
    let mut x: Vec<f32> = out[..m * cfg.dim as usize].to_vec();
    let mut bs = vec![0f32; block_scratch_len(&shape, 1)];
    let blocks = cpu_per_run(runs, || {
        for (bw, bp) in w.blocks.iter().zip(&packed.blocks) {
            block_forward_with(&pool, &shape, bw, Some(bp), &mut x, &mut bs);
        }
    });
    let peak = measure_peak_gflops_per_cpu_second();
    let gf = |flops: f64, secs: f64| flops / secs / 1e9;
    let block_flops = cfg.depth as f64 * shape.flops();
    let rest = whole - blocks;
    println!(
        "point_mae packed f32 1t, CPU s per run over {runs} runs: whole {whole:.3}, blocks {blocks:.3}, group encoder + pos {rest:.3}; GFLOP per CPU s: {:.1}, {:.1}, {:.1} = {:.2}, {:.2}, {:.2} of the FMA peak {peak:.1} (load {})",
        gf(point_mae_flops(&cfg), whole),
        gf(block_flops, blocks),
        gf(point_mae_flops(&cfg) - block_flops, rest),
        gf(point_mae_flops(&cfg), whole) / peak,
        gf(block_flops, blocks) / peak,
        gf(point_mae_flops(&cfg) - block_flops, rest) / peak,
        load_average()
    );
}

fn main() {
    let cfg = PointConfig::m3dm();
    let pre = PreprocessConfig::default();
    let n = 50_000;
    let (m, k) = (cfg.num_groups as usize, cfg.group_size as usize);
    let (pts, pix) = surface(n);
    let mut centers = vec![0u32; m];
    let mut scratch = vec![0f32; fps_scratch_len(n)];
    let tree = time_runs(5, || {
        farthest_point_sample(&pts, n, m, &mut centers, &mut scratch)
    });
    let cpu_runs = env_usize("MIAD_POINT_CPU", 0);
    if cpu_runs > 0 {
        encoder_cpu_seconds(cpu_runs, &pts, n, &centers);
        return;
    }
    tree.print("fps 1024 of 50000, tree", None);
    let mut plain = vec![0u32; m];
    let mut dist = vec![0f32; n];
    let plain_t = time_runs(2, || fps_plain(&pts, &mut plain, &mut dist));
    plain_t.print("fps 1024 of 50000, plain", None);
    assert_eq!(plain, centers, "tree FPS differs from plain FPS");
    println!(
        "fps speed-up over plain: {:.1}x",
        plain_t.median / tree.median
    );
    for threads in [1usize, 2] {
        let pool = Pool::new(threads);
        let mut groups = vec![0u32; m * k];
        let mut ks = vec![0f32; knn_scratch_len(n, k, threads)];
        time_runs(3, || {
            group_knn(&pool, &pts, n, &centers, k, &mut groups, &mut ks)
        })
        .print(&format!("knn 1024x128 of 50000, {threads} thread(s)"), None);
        let f = cfg.feature_dim();
        let gs = pre.xyz_grid as usize;
        let center_xyz: Vec<f32> = centers
            .iter()
            .flat_map(|&i| pts[3 * i as usize..3 * i as usize + 3].to_vec())
            .collect();
        let mut rng = Rng::new(3);
        let feats: Vec<f32> = (0..m * f).map(|_| rng.normal()).collect();
        let mut out = vec![0f32; gs * gs * f];
        let mut ps = vec![0f32; pfa_scratch_len(&pre, m, n, threads)];
        time_runs(3, || {
            point_feature_align(
                &pool,
                &pre,
                &pts,
                n,
                &pix,
                &center_xyz,
                &feats,
                f,
                &mut out,
                &mut ps,
            )
        })
        .print(&format!("pfa 56x56x1152, {threads} thread(s)"), None);
        // The full Point-MAE encoder (random weights): its compute rate as a fraction of
        // the machine's FMA peak measured right after it.
        let model_cfg = ModelConfig::m3dm();
        let weights = random_model(&model_cfg, 7);
        let w = PointMaeWeights::load(&weights, &cfg).expect("random weights match");
        let mut feats_out = vec![0f32; m * f];
        let mut ms = vec![0f32; point_mae_scratch_len(&cfg, threads)];
        let secs = time_runs(5, || {
            point_mae_forward(
                &pool,
                &cfg,
                &w,
                &pts,
                n,
                &centers,
                &groups,
                &mut feats_out,
                &mut ms,
            )
        })
        .median;
        let gflops = point_mae_flops(&cfg) / secs / 1e9;
        let peak = measure_peak_gflops(threads);
        println!(
            "point_mae_encoder_{threads}t: {:.1} ms, {gflops:.1} GFLOP/s = {:.2} of the measured peak {peak:.1} GFLOP/s",
            secs * 1e3,
            gflops / peak
        );
        // The same with the weights packed once (what inspection and the fit run), split
        // into its transformer blocks (timed alone on the encoder's output) and the rest
        // (group encoder, position embedding, norms: the whole minus the blocks).
        let packed = PointMaePacked::new(&cfg, &w, DensePrecision::F32).expect("f32 packs");
        let whole = time_runs(5, || {
            point_mae_forward_with(
                &pool,
                &cfg,
                &w,
                Some(&packed),
                &pts,
                n,
                &centers,
                &groups,
                &mut feats_out,
                &mut ms,
            )
        });
        let shape = point_block_shape(&cfg);
        let d = cfg.dim as usize;
        let mut x: Vec<f32> = feats_out[..m * d].to_vec();
        let mut bs = vec![0f32; block_scratch_len(&shape, threads)];
        let blocks = time_runs(5, || {
            for (bw, bp) in w.blocks.iter().zip(&packed.blocks) {
                block_forward_with(&pool, &shape, bw, Some(bp), &mut x, &mut bs);
            }
        });
        let peak = measure_peak_gflops(threads);
        let block_flops = cfg.depth as f64 * shape.flops();
        let rest_flops = point_mae_flops(&cfg) - block_flops;
        let rest_best = whole.best - blocks.best;
        for (what, flops, t) in [
            ("whole (packed)", point_mae_flops(&cfg), whole.best),
            ("blocks", block_flops, blocks.best),
            ("group encoder + pos", rest_flops, rest_best),
        ] {
            println!(
                "point_mae {what} {threads}t: best {:.1} ms, {:.1} GFLOP/s = {:.2} of the peak {peak:.1} GFLOP/s measured after it",
                t * 1e3,
                flops / t / 1e9,
                flops / t / 1e9 / peak
            );
        }
    }
}
