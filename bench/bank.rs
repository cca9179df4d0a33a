//! Bank search and coreset benches.
//!
//! - `bank_search`: 3136 queries against a 40 000 × 1152 bank (M3DM xyz sizes); criterion
//!   reports elements/s = FLOP/s (2·q·n·d per search). Compare with the GEMM peak of the
//!   machine (`cpu::gemm` bench / ARCHITECTURE.md: ≈186 GFLOP/s per core on Zen 5).
//! - `coreset`: greedy selection plain vs accelerated on projected features. Sizes from
//!   `MIAD_CORESET_N` (rows, default 20 000), `MIAD_CORESET_D` (projected dim, default
//!   301 = JL dim of 200 000 rows at ε 0.9), `MIAD_CORESET_M` (centres, default 1/10 of N).
//!   The full 200 000-row case: `MIAD_CORESET_N=200000 cargo bench --bench bank -- coreset`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use miad::cpu::bank_search::{nearest, nearest_scratch_len, sq_norms, BankView};
use miad::cpu::coreset::{greedy, greedy_plain};
use miad::cpu::pool::Pool;
use miad::util::rng::Rng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bank_search(c: &mut Criterion) {
    let (nq, nb, d) = (
        env("MIAD_BANK_Q", 3136),
        env("MIAD_BANK_N", 40_000),
        env("MIAD_BANK_D", 1152),
    );
    let mut rng = Rng::new(1);
    let mut q = vec![0f32; nq * d];
    let mut b = vec![0f32; nb * d];
    rng.fill_normal(&mut q, 1.0);
    rng.fill_normal(&mut b, 1.0);
    let mut norms = vec![0f32; nb];
    sq_norms(&b, d, &mut norms);
    let bank = BankView::new(&b, &norms, d);
    let mut g = c.benchmark_group("bank_search");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * nq * nb * d) as u64));
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        let mut dist = vec![0f32; nq];
        let mut idx = vec![0u32; nq];
        let mut s = vec![0f32; nearest_scratch_len(threads)];
        g.bench_function(format!("{nq}x{nb}x{d}/threads{threads}"), |bch| {
            bch.iter(|| nearest(&pool, &q, bank, None, &mut dist, &mut idx, &mut s))
        });
    }
    g.finish();
}

fn coreset(c: &mut Criterion) {
    let n = env("MIAD_CORESET_N", 20_000);
    let d = env("MIAD_CORESET_D", 301);
    let m = env("MIAD_CORESET_M", n / 10);
    let mut rng = Rng::new(2);
    // Clustered rows, as patch features are.
    let centres: Vec<f32> = (0..64 * d).map(|_| rng.normal() * 3.0).collect();
    let x: Vec<f32> = (0..n * d)
        .map(|i| centres[((i / d) % 64) * d + i % d] + rng.normal())
        .collect();
    let mut g = c.benchmark_group("coreset");
    g.sample_size(10);
    g.bench_function(format!("plain/{n}x{d}/m{m}"), |b| {
        b.iter(|| greedy_plain(&x, d, m))
    });
    let pool = Pool::new(1);
    g.bench_function(format!("accelerated/1thread/{n}x{d}/m{m}"), |b| {
        b.iter(|| greedy(&pool, &x, d, m))
    });
    let pool = Pool::with_available_cores();
    g.bench_function(
        format!("accelerated/{}threads/{n}x{d}/m{m}", pool.threads()),
        |b| b.iter(|| greedy(&pool, &x, d, m)),
    );
    g.finish();
}

criterion_group!(benches, bank_search, coreset);
criterion_main!(benches);
