//! Bank search, f32 and exact fast (f16) paths, on a 784 x 150 000 x 1920 bank (random and
//! clustered): milliseconds, TFLOP/s, the fast path's index agreement (1 by construction)
//! and how many queries needed an exact split scan.

use crate::shared::bank::{data, run_both, Gpu};

pub fn bank_search() -> bool {
    let Some(dev) = crate::gpu("bank_search") else {
        return false;
    };
    let g = Gpu::new(dev);
    let (nq, nb, dim) = (784, 150_000, 1920);
    for clustered in [false, true] {
        let (q, bank) = data(nq, nb, dim, clustered, 31);
        {
            let r = run_both(&g, &q, &bank, dim, 5);
            let same = r.f16_i.iter().zip(&r.f32_i).filter(|(a, b)| a == b).count();
            let max_rel = r
                .f16_d
                .iter()
                .zip(&r.f32_d)
                .map(|(a, b)| ((a - b).abs() / b.max(1e-30)) as f64)
                .fold(0.0, f64::max);
            let flop = 2.0 * (nq * nb * dim) as f64;
            println!(
                "BENCH bank {nq}x{nb}x{dim} {}: f32 {:.3} ms ({:.1} TFLOP/s eq.), f16 {:.3} ms ({:.1} TFLOP/s), f16 same index {:.5}, max rel dist diff {max_rel:.2e}, queries with an exact split scan {}, splits scanned {}",
                if clustered { "clustered" } else { "random" },
                r.f32_ms,
                flop / (r.f32_ms * 1e-3) / 1e12,
                r.f16_ms,
                flop / (r.f16_ms * 1e-3) / 1e12,
                same as f64 / nq as f64,
                r.scanned.iter().filter(|&&s| s > 0).count(),
                r.scanned.iter().map(|&s| s as i64).sum::<i64>()
            );
        }
    }
    true
}
