//! Greedy coreset (kernels/coreset.cu: coreset_init_f32, coreset_cc_f32, coreset_update_f32,
//! launched per step as runtime/cuda/ops/coreset.rs does) against
//! `miad::cpu::coreset::greedy_plain`: the selected rows identical.

use miad::cpu::coreset::greedy_plain;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{same, Gen, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[("coreset_kernels_match_cpu_greedy", coreset)];

const SEGMENT: usize = 1024;
const THREADS: u32 = 256;
const PAD: usize = 32;
/// `1 + PRUNE_MARGIN` of the CPU (runtime/cuda/ops/coreset.rs PRUNE_FACTOR).
const FACTOR: f32 = 1.0 + 1e-3;

fn select(x: &[f32], k: usize, m: usize, seed: u64) -> Result<Vec<u32>, String> {
    let n = x.len() / k;
    let (ld, ldc) = (k.div_ceil(PAD) * PAD, m.div_ceil(PAD) * PAD);
    let blocks = n.div_ceil(SEGMENT);
    let mut rows = vec![0f32; n * ld];
    for (d, s) in rows.chunks_mut(ld).zip(x.chunks(k)) {
        d[..k].copy_from_slice(s);
    }
    let rows = Buf::from(&rows);
    let min_d = Buf::filled(n, f32::NAN);
    let owner = Buf::filled(n, 0xabcdu32);
    let centres = Buf::filled(k * ldc, f32::NAN);
    let cc = Buf::filled(m, f32::NAN);
    let out = Buf::filled(m, u32::MAX);
    let keys = Buf::filled(blocks, 0x5555_5555_5555_5555u64);
    let state = Buf::filled(2, 0x7777u32);
    let (nn, kk, mm, ldu, ldcu) = (n as u32, k as u32, m as u32, ld as u32, ldc as u32);
    let mut a = Args::new()
        .buf(&rows)
        .val(nn)
        .val(kk)
        .buf(&min_d)
        .buf(&owner)
        .buf(&centres)
        .val(ldcu)
        .buf(&out)
        .buf(&state);
    let s = sim();
    s.launch(
        "coreset_init_f32",
        &Cfg::new(n.div_ceil(256) as u32, 256),
        &mut a,
        seed,
    )?;
    for step in 0..mm - 1 {
        if step > 0 {
            let mut a = Args::new()
                .buf(&rows)
                .val(kk)
                .val(ldu)
                .buf(&centres)
                .val(ldcu)
                .buf(&state)
                .val(step)
                .buf(&cc);
            let cfg = Cfg::new(step.div_ceil(256), 256);
            s.launch("coreset_cc_f32", &cfg, &mut a, seed + step as u64)?;
            // cc[j] = |centre j - newest centre|², summed in dimension order (the CPU's
            // squared distance): bit-identical.
            let row = |i: u32| &x[i as usize * k..i as usize * k + k];
            let q = row(out.get()[step as usize]);
            let want: Vec<f32> = out.get()[..step as usize]
                .iter()
                .map(|&c| row(c).iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum())
                .collect();
            crate::util::same_bits(
                &format!("cc at step {step}"),
                &cc.get()[..step as usize],
                &want,
            )?;
        }
        let mut a = Args::new()
            .buf(&rows)
            .val(nn)
            .val(kk)
            .val(ldu)
            .val(step)
            .val(mm)
            .buf(&cc)
            .val(FACTOR)
            .buf(&min_d)
            .buf(&owner)
            .buf(&centres)
            .val(ldcu)
            .buf(&out)
            .buf(&keys)
            .buf(&state);
        let cfg = Cfg::new(blocks as u32, THREADS);
        s.launch("coreset_update_f32", &cfg, &mut a, seed + step as u64)?;
    }
    Ok(out.get().to_vec())
}

fn coreset() -> Result<(), String> {
    // Ragged n (not a multiple of the 1024-row segment), k not a multiple of 32, duplicated
    // rows (distance ties), clustered rows (pruning active), and m = n on a small set.
    let mut g = Gen::new(21);
    let (n, k) = (2500usize, 19usize);
    let mut x: Vec<f32> = Vec::with_capacity(n * k);
    for i in 0..n {
        let c = (i % 7) as f32;
        for _ in 0..k {
            x.push(c + 0.05 * g.normal());
        }
    }
    for i in (0..n).step_by(5).skip(1) {
        let src = (g.below(i) * k)..(g.below(i) * k + k);
        let row = x[src.start..src.start + k].to_vec();
        x[i * k..i * k + k].copy_from_slice(&row);
    }
    for (i, m) in [60usize, 33].into_iter().enumerate() {
        let seed = SEEDS[i % SEEDS.len()];
        let got = select(&x, k, m, seed).map_err(|e| format!("m {m}: {e}"))?;
        same(
            &format!("n {n} k {k} m {m}, seed {seed}"),
            &got,
            &greedy_plain(&x, k, m),
        )?;
    }
    // More dimensions than coreset_cc_f32's 256-wide query chunk (two chunks).
    let (n2, k2) = (1100usize, 300usize);
    let x2: Vec<f32> = (0..n2 * k2)
        .map(|i| ((i / k2) % 13) as f32 + 0.1 * g.normal())
        .collect();
    let got = select(&x2, k2, 12, 2).map_err(|e| format!("k {k2}: {e}"))?;
    same(
        &format!("n {n2} k {k2} m 12"),
        &got,
        &greedy_plain(&x2, k2, 12),
    )?;
    let small: Vec<f32> = [0.0f32, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0, 1.0, 1.0, 0.0].repeat(3);
    let got = select(&small, 3, 10, 3)?;
    same("10 rows, m = n, ties", &got, &greedy_plain(&small, 3, 10))
}
