//! Bank search and coreset (`cargo bench --bench bank`):
//! - bank search: 3136 queries against a 40 000 × 1152 bank (M3DM xyz sizes; `MIAD_BANK_Q`,
//!   `MIAD_BANK_N`, `MIAD_BANK_D`), in GFLOP/s (2·q·n·d per search) on 1 and 2 threads;
//!   next to the plain GEMM of the same queries against the first 4096 bank rows and the
//!   FMA peak, both measured in the same run (target: search ≥ 0.8 of the GEMM);
//! - coreset: greedy selection, plain vs accelerated, identical indices, on projected
//!   features (`MIAD_CORESET_N` rows, default 20 000; `MIAD_CORESET_D`, default 301 = the
//!   JL dimension of 200 000 rows at ε 0.9; `MIAD_CORESET_M` centres, default N/10).

use miad::cpu::bank_search::{nearest, nearest_scratch_len, sq_norms, BankView};
use miad::cpu::coreset::{greedy, greedy_plain};
use miad::cpu::gemm::{linear, Epilogue, Mat};
use miad::cpu::pool::Pool;
use miad::util::peak::measure_peak_gflops;
use miad::util::rng::Rng;
use std::time::Instant;

mod timing;
use timing::{env_usize as env, time_runs};

fn bank_search_throughput() {
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
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        let mut dist = vec![0f32; nq];
        let mut idx = vec![0u32; nq];
        let mut s = vec![0f32; nearest_scratch_len(threads)];
        let t = time_runs(3, || {
            nearest(&pool, &q, bank, None, &mut dist, &mut idx, &mut s);
        });
        let flop = 2.0 * (nq * nb * d) as f64;
        t.print(
            &format!("bank search {nq}x{nb}x{d}, {threads} thread(s)"),
            Some((flop / 1e9, "GFLOP")),
        );
        let gn = nb.min(4096);
        let mut out = vec![0f32; nq * gn];
        let g = time_runs(3, || {
            linear(
                &pool,
                Mat::new(&q, nq, d),
                Mat::new(&b[..gn * d], gn, d),
                None,
                &mut out,
                gn,
                Epilogue::None,
            )
        });
        let peak = measure_peak_gflops(threads);
        let search = flop / t.median / 1e9;
        let gemm = 2.0 * (nq * gn * d) as f64 / g.median / 1e9;
        println!(
            "  search {search:.1} GFLOP/s = {:.2} of the GEMM {nq}x{gn}x{d} ({gemm:.1} GFLOP/s) \
             = {:.2} of the FMA peak {peak:.1}; load average {}",
            search / gemm,
            search / peak,
            timing::load_average()
        );
    }
}

fn coreset_plain_vs_accelerated() {
    let n = env("MIAD_CORESET_N", 20_000);
    let d = env("MIAD_CORESET_D", 301);
    let m = env("MIAD_CORESET_M", n / 10);
    let mut rng = Rng::new(2);
    let centres: Vec<f32> = (0..64 * d).map(|_| rng.normal() * 3.0).collect();
    let x: Vec<f32> = (0..n * d)
        .map(|i| centres[((i / d) % 64) * d + i % d] + rng.normal())
        .collect();
    let t = Instant::now();
    let a = greedy_plain(&x, d, m);
    let plain = t.elapsed().as_secs_f64();
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        let t = Instant::now();
        let b = greedy(&pool, &x, d, m);
        let acc = t.elapsed().as_secs_f64();
        assert_eq!(a, b);
        println!(
            "coreset {n}x{d} m {m}: plain {plain:.2} s, accelerated ({threads} threads) {acc:.2} s, x{:.1}",
            plain / acc
        );
    }
}

fn main() {
    bank_search_throughput();
    coreset_plain_vs_accelerated();
}
