//! Bank search, f32 and f16 paths, on a 784 x 150 000 x 1920 bank (random and clustered;
//! rerank 1 and 8): milliseconds, TFLOP/s and the f16 path's index agreement.

use crate::shared::bank::{data, run_both, Gpu};

pub fn bank_search() -> bool {
    let Some(dev) = crate::gpu("bank_search") else {
        return false;
    };
    let g = Gpu::new(dev);
    let (nq, nb, dim) = (784, 150_000, 1920);
    for clustered in [false, true] {
        let (q, bank) = data(nq, nb, dim, clustered, 31);
        for rerank in [1usize, 8] {
            let r = run_both(&g, &q, &bank, dim, rerank, 5);
            let same = r.f16_i.iter().zip(&r.f32_i).filter(|(a, b)| a == b).count();
            let max_rel = r
                .f16_d
                .iter()
                .zip(&r.f32_d)
                .map(|(a, b)| ((a - b).abs() / b.max(1e-30)) as f64)
                .fold(0.0, f64::max);
            let flop = 2.0 * (nq * nb * dim) as f64;
            println!(
                "BENCH bank {nq}x{nb}x{dim} {} rerank {rerank}: f32 {:.3} ms ({:.1} TFLOP/s eq.), f16 {:.3} ms ({:.1} TFLOP/s), f16 same index {:.5}, max rel dist diff {max_rel:.2e}",
                if clustered { "clustered" } else { "random" },
                r.f32_ms,
                flop / (r.f32_ms * 1e-3) / 1e12,
                r.f16_ms,
                flop / (r.f16_ms * 1e-3) / 1e12,
                same as f64 / nq as f64
            );
        }
    }
    true
}
