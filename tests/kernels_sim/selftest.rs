//! The emulator's own checks (kernels/sim/selftest.cu): each bug a GPU would not report is
//! reported, and collectives, cp.async and the m16n8k16 fragments compute what PTX says.

use half::{bf16, f16};

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, same, Gen, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("emulator_reports_partial_barrier", partial_barrier),
    ("emulator_reports_divergent_barrier", divergent_barrier),
    ("emulator_reports_wrong_warp_mask", bad_mask),
    ("emulator_reports_deadlock", deadlock),
    ("emulator_reports_global_out_of_bounds", global_oob),
    ("emulator_reports_dynamic_smem_overflow", dyn_smem),
    ("emulator_poison_exposes_uninitialised_smem", uninit_smem),
    ("emulator_cp_async_lands_only_at_wait", cp_async),
    ("emulator_reports_missing_mbarrier_arrive", mbarrier),
    ("emulator_collectives_match_ptx", collectives),
    ("emulator_mma_fragments_match_ptx", mma),
    ("emulator_classification_functions", classify),
    ("emulator_run_ahead_orders_expose_war_hazard", run_ahead),
];

/// Launches `kernel` with one int buffer of `threads` and expects an error containing `want`.
fn expect_err(kernel: &str, threads: u32, smem: u32, want: &str) -> Result<(), String> {
    let out = Buf::filled(threads as usize, 0i32);
    let mut a = Args::new().buf(&out);
    match sim().launch(kernel, &Cfg::new(1, threads).smem(smem), &mut a, 1) {
        Ok(()) => Err(format!("{kernel}: no error reported")),
        Err(e) if e.contains(want) => Ok(()),
        Err(e) => Err(format!(
            "{kernel}: expected an error with {want:?}, got: {e}"
        )),
    }
}

fn partial_barrier() -> Result<(), String> {
    expect_err("bad_partial_barrier", 64, 0, "only part of the block")
}

fn divergent_barrier() -> Result<(), String> {
    expect_err("bad_divergent_barrier", 64, 0, "divergent __syncthreads")
}

fn bad_mask() -> Result<(), String> {
    expect_err("bad_mask", 32, 0, "does not name the calling lane")
}

fn deadlock() -> Result<(), String> {
    expect_err("bad_deadlock", 64, 0, "deadlock")
}

fn dyn_smem() -> Result<(), String> {
    // 64 threads, room for 32 floats.
    let out = Buf::filled(64, 0f32);
    let mut a = Args::new().buf(&out);
    match sim().launch("bad_dyn_smem", &Cfg::new(1, 64).smem(128), &mut a, 1) {
        Err(e) if e.contains("AddressSanitizer") => {}
        r => return Err(format!("overflow not reported: {r:?}")),
    }
    // With enough dynamic shared memory the same kernel is fine.
    let mut a = Args::new().buf(&out);
    sim().launch("bad_dyn_smem", &Cfg::new(1, 64).smem(256), &mut a, 1)?;
    same("reversed ones", out.get(), &[1.0f32; 64])
}

fn global_oob() -> Result<(), String> {
    let n = 40;
    let inp = Buf::filled(n, 1f32);
    let out = Buf::filled(n, 0f32);
    let mut a = Args::new().buf(&inp).buf(&out).val(n as i32);
    match sim().launch("bad_global_oob", &Cfg::new(1, 64), &mut a, 1) {
        Err(e) if e.contains("AddressSanitizer") && e.contains("heap-buffer-overflow") => Ok(()),
        r => Err(format!("read past the buffer not reported: {r:?}")),
    }
}

fn uninit_smem() -> Result<(), String> {
    let mut seen = Vec::new();
    for s in SEEDS {
        let out = Buf::filled(64, 0f32);
        let mut a = Args::new().buf(&out);
        sim().launch("bad_uninit_smem", &Cfg::new(1, 64), &mut a, s)?;
        seen.push(out.get()[0].to_bits());
        if out.get()[32..].iter().any(|v| *v != 1.0) {
            return Err("written half wrong".into());
        }
    }
    seen.dedup();
    if seen.len() < 2 || seen.contains(&1.0f32.to_bits()) {
        return Err(format!("poison does not vary with the seed: {seen:x?}"));
    }
    Ok(())
}

fn cp_async() -> Result<(), String> {
    let v: Vec<f32> = (0..128).map(|i| i as f32 + 0.5).collect();
    let inp = Buf::from(&v);
    let out = Buf::filled(128, 0f32);
    let mut a = Args::new().buf(&inp).buf(&out);
    sim().launch("ok_cp_async", &Cfg::new(1, 32), &mut a, 2)?;
    let mut want = vec![0f32; 128];
    for t in 0..32 {
        for e in 0..4 {
            let src = 31 - t;
            want[4 * t + e] = if src == 5 && e >= 2 {
                0.0
            } else {
                v[4 * src + e]
            };
        }
    }
    same("cp.async with wait", out.get(), &want)?;
    let out = Buf::filled(128, 0f32);
    let mut a = Args::new().buf(&inp).buf(&out);
    sim().launch("bad_cp_async_no_wait", &Cfg::new(1, 32), &mut a, 2)?;
    if out.get() == want.as_slice() || out.get().iter().zip(&v).any(|(a, b)| a == b && *b > 1.0) {
        return Err("copies visible without cp.async.wait_group".into());
    }
    Ok(())
}

fn mbarrier() -> Result<(), String> {
    expect_err("bad_mbarrier", 32, 0, "deadlock")
}

fn collectives() -> Result<(), String> {
    let mut g = Gen::new(8);
    let n = 64usize;
    let v: Vec<i32> = (0..n).map(|_| g.below(41) as i32 - 20).collect();
    let inp = Buf::from(&v);
    let out = Buf::filled(n * 8, 0i32);
    let mut a = Args::new().buf(&inp).buf(&out);
    sim().launch("ok_collectives", &Cfg::new(1, n as u32), &mut a, 3)?;
    let mut want = vec![0i32; n * 8];
    for w in 0..n / 32 {
        let x = &v[w * 32..w * 32 + 32];
        let ballot = (0..32).fold(0u32, |b, l| b | ((x[l] > 0) as u32) << l) as i32;
        let any = x.contains(&7) as i32 + 2 * x.iter().all(|&y| y > -1000) as i32;
        let sum: i32 = x.iter().sum();
        let (mn, mx) = (*x.iter().min().unwrap(), *x.iter().max().unwrap());
        for l in 0..32 {
            let o = &mut want[(w * 32 + l) * 8..(w * 32 + l) * 8 + 8];
            o[0] = x[(l * 7) & 31];
            o[1] = x[l ^ 5];
            o[2] = if l >= 3 { x[l - 3] } else { x[l] };
            o[3] = if (l & 15) + 3 < 16 { x[l + 3] } else { x[l] };
            o[4] = ballot;
            o[5] = any;
            o[6] = sum ^ mn;
            o[7] = mx + 1;
        }
    }
    same("collectives", out.get(), &want)
}

fn mma() -> Result<(), String> {
    let mut g = Gen::new(9);
    for bf in [0i32, 1] {
        // Values exact in both formats: small integers and halves.
        let a: Vec<f32> = (0..256).map(|_| (g.below(17) as f32 - 8.0) * 0.5).collect();
        let b: Vec<f32> = (0..128).map(|_| g.below(9) as f32 - 4.0).collect(); // [k][n]
        let c: Vec<f32> = (0..128).map(|_| g.normal()).collect();
        let bits = |x: f32| {
            if bf == 1 {
                bf16::from_f32(x).to_bits()
            } else {
                f16::from_f32(x).to_bits()
            }
        };
        let ab: Vec<u16> = a.iter().map(|&x| bits(x)).collect();
        let bt: Vec<u16> = (0..128).map(|i| bits(b[(i % 16) * 8 + i / 16])).collect(); // [n][k]
        let bk: Vec<u16> = b.iter().map(|&x| bits(x)).collect();
        let mut want = vec![0f32; 128];
        for r in 0..16 {
            for n in 0..8 {
                let s: f64 = (0..16)
                    .map(|k| a[r * 16 + k] as f64 * b[k * 8 + n] as f64)
                    .sum();
                want[r * 8 + n] = (s + c[r * 8 + n] as f64) as f32;
            }
        }
        let (ab, bt, bk, cb) = (
            Buf::from(&ab),
            Buf::from(&bt),
            Buf::from(&bk),
            Buf::from(&c),
        );
        let d = Buf::filled(128, f32::NAN);
        let mut args = Args::new()
            .buf(&ab)
            .buf(&bt)
            .buf(&bk)
            .buf(&cb)
            .buf(&d)
            .val(bf);
        sim().launch("ok_mma", &Cfg::new(1, 32), &mut args, 1)?;
        close(&format!("mma (bf16 {bf})"), d.get(), &want, 0.0, 1e-6)?;
    }
    Ok(())
}

/// `isfinite`, `isnan`, `isinf` are global functions in CUDA (preprocess.cu uses them).
fn classify() -> Result<(), String> {
    let v = [
        0.0f32,
        -0.0,
        1.5,
        f32::MIN_POSITIVE / 4.0,
        f32::MAX,
        f32::INFINITY,
    ];
    let v: Vec<f32> = v
        .iter()
        .chain(&[f32::NEG_INFINITY, f32::NAN, -f32::NAN])
        .copied()
        .collect();
    let want: Vec<i32> = v
        .iter()
        .map(|f| {
            let b = f.is_finite() as i32 | (f.is_nan() as i32) << 1 | (f.is_infinite() as i32) << 2;
            b | b << 3
        })
        .collect();
    let inb = Buf::from(&v);
    let out = Buf::filled(v.len(), -1i32);
    let mut a = Args::new().buf(&inb).val(v.len() as i32).buf(&out);
    sim().launch("ok_classify", &Cfg::new(1, 32), &mut a, 1)?;
    same("isfinite/isnan/isinf", out.get(), &want)
}

/// Seed bits 32 and 33 run the lowest- / highest-numbered ready thread first: one warp
/// completes a phase before the other starts, so a write-after-read hazard with no barrier
/// in between is seen by every lane of the later warp, also when the write is a cp.async
/// (its destination is NaN from issue to wait).
fn run_ahead() -> Result<(), String> {
    for (seed, first) in [(1u64 << 32, 0usize), (2 << 32, 1)] {
        let out = Buf::filled(64, 0i32);
        let mut a = Args::new().buf(&out);
        sim().launch("bad_war", &Cfg::new(1, 64), &mut a, seed | 5)?;
        let want: Vec<i32> = (0..64)
            .map(|t| if t / 32 == first { (t ^ 32) as i32 } else { -1 })
            .collect();
        same(&format!("run-ahead order {}", seed >> 32), out.get(), &want)?;
        // With cp.async refilling the slot: NaN from issue to wait.
        let inp = Buf::filled(4 * 64, 100f32);
        let out = Buf::filled(4 * 64, 0f32);
        let mut a = Args::new().buf(&inp).buf(&out);
        sim().launch("bad_cp_async_war", &Cfg::new(1, 64), &mut a, seed | 5)?;
        for (t, v) in out.get().chunks(4).enumerate() {
            let ok = if t / 32 == first {
                v.iter().all(|x| *x == (t ^ 32) as f32)
            } else {
                v.iter().all(|x| x.is_nan())
            };
            if !ok {
                return Err(format!(
                    "cp.async refill, order {}: [{t}] {v:?}",
                    seed >> 32
                ));
            }
        }
    }
    Ok(())
}
