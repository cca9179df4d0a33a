//! The machine's peak single-precision FMA rate, measured: independent chains of fused
//! multiply-adds on the SIMD registers of the CPU kernels' instruction set
//! (`cpu::gemm::isa`: AVX-512, else AVX2+FMA; a scalar fallback elsewhere). Benches report their throughput
//! as a fraction of this number. Beside it the bf16 peak of the bf16 path
//! (`cpu::gemm_bf16`): the same chains of `vdpbf16ps` (AVX512-BF16), 2 FLOP per bf16
//! product, so 64 per instruction against an f32 FMA's 32.

use std::hint::black_box;
use std::time::Instant;

/// Independent accumulator chains: enough to cover FMA latency × FMA ports (4 × 2 on
/// current cores), few enough to stay in registers (32 with AVX-512, 16 with AVX2).
const CHAINS: usize = 16;
/// The AVX2 kernel's chains: 16 of them and the two operands spill out of the 16 ymm
/// registers (measured: loads, stores and moves in the loop, half the real peak).
#[cfg(target_arch = "x86_64")]
const CHAINS_AVX2: usize = 12;

/// The operation whose peak is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// f32 fused multiply-add on the widest vectors of `cpu::gemm::isa`.
    F32Fma,
    /// The bf16 dot product of the bf16 path (AVX512-BF16 only).
    Bf16Dot,
}

/// Runs `iters` iterations of `CHAINS` dependent operations per chain; returns FLOPs done.
fn kernel(op: Op, iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if op == Op::Bf16Dot {
        if crate::cpu::gemm_bf16::available() {
            // SAFETY: `available` checked AVX-512F and AVX512-BF16.
            unsafe { x86::dpbf16_512(iters) };
            return iters as f64 * (CHAINS * 32 * 2) as f64;
        }
        return 0.0;
    }
    #[cfg(not(target_arch = "x86_64"))]
    if op == Op::Bf16Dot {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::gemm::{isa, Isa};
        match isa() {
            Isa::Avx512 => {
                // SAFETY: `isa` names only instruction sets this CPU runs.
                unsafe { x86::fma512(iters) };
                return iters as f64 * (CHAINS * 16 * 2) as f64;
            }
            Isa::Avx2 => {
                // SAFETY: as above.
                unsafe { x86::fma256(iters) };
                return iters as f64 * (CHAINS_AVX2 * 8 * 2) as f64;
            }
            Isa::Portable => {}
        }
    }
    scalar(iters);
    iters as f64 * (CHAINS * 2) as f64
}

fn scalar(iters: u64) {
    let mut acc = [0f32; CHAINS];
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(a, b);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, CHAINS_AVX2};
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) {
        let a = _mm512_set1_ps(black_box(0.999_999));
        let b = _mm512_set1_ps(black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        black_box(acc);
    }

    /// # Safety
    /// The CPU must support AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16_512(iters: u64) {
        let a: __m512bh = _mm512_cvtne2ps_pbh(
            _mm512_set1_ps(black_box(1e-3)),
            _mm512_set1_ps(black_box(1e-3)),
        );
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, a);
            }
        }
        black_box(acc);
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) {
        let a = _mm256_set1_ps(black_box(0.999_999));
        let b = _mm256_set1_ps(black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); CHAINS_AVX2];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        black_box(acc);
    }
}

/// Peak single-precision GFLOP/s (an FMA counts 2) of `threads` threads running FMA
/// chains at once; the best of a few ≈50 ms runs.
pub fn measure_peak_gflops(threads: usize) -> f64 {
    measure(Op::F32Fma, threads)
}

/// Peak bf16 GFLOP/s (2 per bf16 product) of `threads` threads running `vdpbf16ps`
/// chains at once, as [`measure_peak_gflops`]; `None` without AVX512-BF16.
pub fn measure_bf16_peak_gflops(threads: usize) -> Option<f64> {
    bf16_available().then(|| measure(Op::Bf16Dot, threads))
}

fn bf16_available() -> bool {
    crate::cpu::gemm_bf16::available()
}

fn measure(op: Op, threads: usize) -> f64 {
    let threads = threads.max(1);
    let iters = 20_000_000u64;
    kernel(op, iters / 10); // warm up clocks and the dispatch
    let mut best = 0f64;
    for _ in 0..3 {
        let barrier = std::sync::Barrier::new(threads);
        let start = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        kernel(op, iters)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        let secs = start.elapsed().as_secs_f64();
        best = best.max(flops / secs / 1e9);
    }
    best
}

/// CPU time of `clock` in seconds (NaN where the clock cannot be read, or off Linux).
fn cpu_seconds(clock: i32) -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write.
        if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    let _ = clock;
    f64::NAN
}

/// Seconds of CPU time this process has used, all threads together.
pub fn process_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
    #[cfg(not(target_os = "linux"))]
    {
        cpu_seconds(0)
    }
}

/// Peak GFLOP per second of CPU time of one thread running FMA chains (best of a few
/// runs): unlike [`measure_peak_gflops`] it does not fall when other processes take the
/// cores, so a rate per CPU-second of a measured program compares to it on a loaded
/// machine (what it leaves out: time a program's threads sit idle).
pub fn measure_peak_gflops_per_cpu_second() -> f64 {
    measure_per_cpu_second(Op::F32Fma)
}

/// [`measure_peak_gflops_per_cpu_second`] for the bf16 dot product (2 FLOP per bf16
/// product); `None` without AVX512-BF16.
pub fn measure_bf16_peak_gflops_per_cpu_second() -> Option<f64> {
    bf16_available().then(|| measure_per_cpu_second(Op::Bf16Dot))
}

fn measure_per_cpu_second(op: Op) -> f64 {
    let iters = 20_000_000u64;
    kernel(op, iters / 10);
    let mut best = 0f64;
    for _ in 0..3 {
        let (flops, secs) = std::thread::scope(|s| {
            s.spawn(|| {
                #[cfg(target_os = "linux")]
                let clock = libc::CLOCK_THREAD_CPUTIME_ID;
                #[cfg(not(target_os = "linux"))]
                let clock = 0;
                let t0 = cpu_seconds(clock);
                let flops = kernel(op, iters);
                (flops, cpu_seconds(clock) - t0)
            })
            .join()
            .unwrap_or((0.0, f64::NAN))
        });
        if secs > 0.0 {
            best = best.max(flops / secs / 1e9);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_is_positive_and_plausible() {
        let g = super::measure_peak_gflops(1);
        // A core does at least one scalar FMA per ns and at most 2×16-lane FMAs at 6 GHz.
        assert!(g > 1.0 && g < 400.0, "{g}");
    }

    #[test]
    fn bf16_peak_is_there_exactly_with_the_bf16_path() {
        let bf16 = super::measure_bf16_peak_gflops(1);
        assert_eq!(bf16.is_some(), crate::cpu::gemm_bf16::available());
        if let Some(g) = bf16 {
            // 32 products per instruction: about twice the f32 FMA rate (half of it leaves
            // room for a loaded machine), at most 2 instructions a cycle at 6 GHz.
            let f32_peak = super::measure_peak_gflops(1);
            assert!(g > 0.5 * f32_peak && g < 800.0, "{g} vs f32 {f32_peak}");
        }
    }
}
