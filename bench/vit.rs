//! The RGB branch on the CPU: one full ViT-B/8 forward pass at 224×224 (SPEC §2) with
//! seeded random weights, on a pool of every core: the achieved GFLOP/s next to the
//! machine's peak FMA rate measured by `measure_peak_gflops` in the same run, and their
//! ratio (target ≥ 0.7).
//!
//! `cargo bench --bench vit` (set `MIAD_BENCH_THREADS` to use another thread count).

mod timing;
use miad::config::{ModelConfig, VitConfig};
use miad::cpu::pool::Pool;
use miad::cpu::vit::{vit_flops, vit_forward, vit_scratch_len, VitWeights};
use miad::format::random_model;
use miad::util::peak::measure_peak_gflops;
use miad::util::rng::Rng;

fn threads() -> usize {
    std::env::var("MIAD_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn main() {
    let cfg = VitConfig::base8();
    // Only the ViT's tensors: the point and fusion branches are not needed here.
    let model = ModelConfig {
        point: None,
        fusion: None,
        radar: None,
        ..ModelConfig::m3dm()
    };
    let tensors = random_model(&model, 1);
    let w = VitWeights::load(&tensors, &cfg).expect("random weights match the configuration");
    let s = cfg.image_size as usize;
    let mut input = vec![0f32; cfg.in_chans as usize * s * s];
    Rng::new(2).fill_normal(&mut input, 1.0);
    let threads = threads();
    let pool = Pool::new(threads);
    let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
    let mut scratch = vec![0f32; vit_scratch_len(&cfg, threads)];
    let flops = vit_flops(&cfg);
    // The peak is measured just before and just after (the higher counts): on a shared
    // machine, other load lowers both numbers alike only when they are taken close together.
    let peak_before = measure_peak_gflops(threads);
    let t = timing::time_runs(5, || {
        vit_forward(&pool, &cfg, &w, &input, &mut out, &mut scratch).expect("forward pass");
    });
    let (median, reps) = (t.median, t.runs);
    let gflops = flops / median / 1e9;
    let best = flops / t.best / 1e9;
    let peak = measure_peak_gflops(threads).max(peak_before);
    let load = timing::load_average();
    println!(
        "vit_b8_224_forward_{threads}t: {:.3} s median of {reps} ({:.1} GFLOP per pass): \
         {gflops:.1} GFLOP/s (best {best:.1}) = {:.2} of the measured peak {peak:.1} GFLOP/s \
         (best pass: {:.2}); load average {}",
        median,
        flops / 1e9,
        gflops / peak,
        best / peak,
        load
    );
}
