//! Fused attention (kernels/attention.cu: attention_f32, attention_bf16 for heads of 64,
//! attention_f32_d32, attention_bf16_d32 for heads of 32), launched as
//! runtime/cuda/ops/attention.rs does, against the f64 softmax attention of
//! tests/cuda/transformer.rs (the CPU stage, `miad::cpu::transformer`'s attention, is
//! private; it computes the same function with the same qkv layout). Tolerances (Frobenius
//! relative error, and largest error over the largest reference value):
//! - f32: 5e-6 and 1e-5 (the GPU test allows 1e-5 and 1e-4; the emulator shows 2e-6 and
//!   3e-6 at most, with scores up to 24; glibc's expf differs from CUDA's by a few ulps);
//! - bf16: 5e-3 and 1e-2 against the reference on the bf16-rounded inputs, 8e-3 and 2e-2
//!   on the f32 inputs (the GPU test allows 1e-2 on both; the emulator shows 2.2e-3 and
//!   4.6e-3; tensor-core accumulation order is not modelled exactly).
//!
//! The bf16 kernels also run with their keys split over grid.z (1, 2, 3 and 4 splits where
//! the key tiles allow), the splits merged by attention_combine_bf16(_d32) as
//! runtime/cuda/ops/attention.rs launches them; every split count meets the same tolerances,
//! and split outputs stay within 4e-3 (relative, Frobenius; bf16 outputs round differently)
//! of the unsplit ones.
//!
//! Every output is written (the buffers start as NaN, the partial results too), and the
//! bits are the same for every scheduling seed (no atomics: one writer per element).

use half::bf16;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{same, Gen, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("attention_f32_matches_f64_reference", || {
        att_f32("attention_f32", 64)
    }),
    ("attention_bf16_matches_f64_reference", || {
        att_bf16("attention_bf16", "attention_combine_bf16", 64)
    }),
    ("attention_f32_d32_matches_f64_reference", || {
        att_f32("attention_f32_d32", 32)
    }),
    ("attention_bf16_d32_matches_f64_reference", || {
        att_bf16("attention_bf16_d32", "attention_combine_bf16_d32", 32)
    }),
];

// runtime/cuda/ops/attention.rs
const TILE: usize = 64;
/// Rows (token, head) per block of the combine kernel.
const COMBINE_ROWS: usize = 8;
/// Seeds that run the lowest- (bit 32) or highest-numbered (bit 33) ready thread first:
/// one warp finishes a K/V tile before the others start it, exposing a stage that is
/// refilled while still being read.
const RUN_AHEAD: [u64; 2] = [1 << 32 | 1, 2 << 32 | 2];

/// Inputs `n` x 3·heads·d (token, {q,k,v}, head, dim). `peaked`: the scores grow with
/// the key index (the running maximum changes in every tile: the online softmax rescales)
/// and some keys/values repeat 64 tokens later (exact score ties across tiles).
fn inputs(n: usize, heads: usize, d: usize, peaked: bool, seed: u64) -> Vec<f32> {
    let w = heads * d;
    let mut g = Gen::new(seed);
    let mut x: Vec<f32> = (0..n * 3 * w).map(|_| 1.5 * g.normal()).collect();
    if peaked {
        for j in 0..n {
            for c in 0..w {
                x[j * 3 * w + c] = x[j * 3 * w + c].abs() * 0.5 + 0.5;
                x[j * 3 * w + w + c] += 3.0 * j as f32 / n as f32;
            }
        }
        for j in (0..n.saturating_sub(TILE)).step_by(7) {
            let (src, dst) = (j * 3 * w + w, (j + TILE) * 3 * w + w);
            x.copy_within(src..src + 2 * w, dst);
        }
    }
    x
}

/// f64 softmax attention, the layout of the kernels.
fn reference(qkv: &[f32], n: usize, heads: usize, d: usize, scale: f64) -> Vec<f64> {
    let w = heads * d;
    let mut out = vec![0.0f64; n * w];
    let mut p = vec![0.0f64; n];
    for i in 0..n {
        for h in 0..heads {
            let q = &qkv[i * 3 * w + h * d..][..d];
            let mut mx = f64::NEG_INFINITY;
            for (j, pj) in p.iter_mut().enumerate() {
                let k = &qkv[j * 3 * w + w + h * d..][..d];
                let s: f64 = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                *pj = s * scale;
                mx = mx.max(*pj);
            }
            let mut sum = 0.0;
            for pj in p.iter_mut() {
                *pj = (*pj - mx).exp();
                sum += *pj;
            }
            let o = &mut out[i * w + h * d..][..d];
            for (j, pj) in p.iter().enumerate() {
                let v = &qkv[j * 3 * w + 2 * w + h * d..][..d];
                for (oc, vc) in o.iter_mut().zip(v) {
                    *oc += pj / sum * *vc as f64;
                }
            }
        }
    }
    out
}

/// (Frobenius relative error, largest error / largest reference value); an unwritten
/// (NaN) or non-finite output is an error.
fn rel_err(what: &str, got: &[f32], want: &[f64], fro: f64, max: f64) -> Result<(), String> {
    let (mut num, mut den, mut max_abs, mut max_ref) = (0.0, 0.0, 0.0f64, 0.0f64);
    let mut worst = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() {
            return Err(format!("{what}: output [{i}] is {g} (unwritten?)"));
        }
        let e = *g as f64 - w;
        num += e * e;
        den += w * w;
        if e.abs() > max_abs {
            max_abs = e.abs();
            worst = i;
        }
        max_ref = max_ref.max(w.abs());
    }
    let (r, m) = ((num / den).sqrt(), max_abs / max_ref);
    if r > fro || m > max {
        return Err(format!(
            "{what}: relative error {r:.2e} (limit {fro:.0e}), max {m:.2e} (limit {max:.0e}); worst [{worst}] {} vs {}",
            got[worst], want[worst]
        ));
    }
    Ok(())
}

fn cfg(n: usize, heads: usize, block: u32) -> Cfg {
    let mut c = Cfg::new(n.div_ceil(TILE) as u32, block);
    c.grid[1] = heads as u32;
    c
}

fn scale(d: usize) -> f32 {
    (d as f32).powf(-0.5)
}

/// Seeds for a shape: every seed and the run-ahead orders on the smaller shapes; the
/// largest (ViT's 785 tokens, for the tile arithmetic) once: schedules are what the seeds
/// vary, and the small shapes cover them (time).
fn seeds_for(n: usize) -> Vec<u64> {
    let (seeds, orders): (&[u64], &[u64]) = match n {
        0..=200 => (&SEEDS, &RUN_AHEAD),
        201..=300 => (&SEEDS, &[]),
        _ => (&SEEDS[..1], &[]),
    };
    seeds.iter().chain(orders).copied().collect()
}

/// Runs `run(seed)` for every seed of shape `n`; the outputs must agree bit for bit.
/// Returns them.
fn every_seed<T: Copy + PartialEq + std::fmt::Debug>(
    what: &str,
    n: usize,
    run: impl Fn(u64) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, String> {
    let mut first: Option<Vec<T>> = None;
    for s in seeds_for(n) {
        let o = run(s)?;
        match &first {
            None => first = Some(o),
            Some(f) => same(&format!("{what}: seed {s} vs seed 1"), &o, f)?,
        }
    }
    Ok(first.unwrap())
}

/// Runs f32 `kernel` (bit patterns) for every seed and run-ahead order.
fn launch_f32(
    kernel: &str,
    qkv: &[u32],
    n: usize,
    heads: usize,
    d: usize,
) -> Result<Vec<u32>, String> {
    every_seed(kernel, n, |s| {
        let x = Buf::from(qkv);
        let o = Buf::filled(n * heads * d, f32::NAN.to_bits());
        let mut a = Args::new()
            .buf(&x)
            .buf(&o)
            .val(n as i32)
            .val(heads as i32)
            .val(scale(d));
        sim().launch(kernel, &cfg(n, heads, 64), &mut a, s)?;
        Ok(o.get().to_vec())
    })
}

/// Runs bf16 `kernel` with its key tiles in `splits` groups (grid.z), then, with more than
/// one, `combine` on the partial results, for every seed and run-ahead order.
fn launch_bf16(
    (kernel, combine): (&str, &str),
    qkv: &[u16],
    (n, heads, d): (usize, usize, usize),
    splits: usize,
) -> Result<Vec<u16>, String> {
    let per_split = n.div_ceil(TILE).div_ceil(splits);
    every_seed(&format!("{kernel} in {splits} splits"), n, |s| {
        let x = Buf::from(qkv);
        let o = Buf::filled(n * heads * d, 0x7fc0u16);
        // Exactly the partial results' size (AddressSanitizer), NaN until written.
        let parts = Buf::filled((splits * n * heads * (d + 2)).max(1), f32::NAN);
        let mut a = Args::new()
            .buf(&x)
            .buf(&o)
            .buf(&parts)
            .val(n as i32)
            .val(heads as i32)
            .val(scale(d))
            .val(per_split as i32);
        let mut c = cfg(n, heads, 128);
        c.grid[2] = splits as u32;
        sim().launch(kernel, &c, &mut a, s)?;
        if splits > 1 {
            let mut a = Args::new()
                .buf(&parts)
                .buf(&o)
                .val(n as i32)
                .val(heads as i32)
                .val(splits as i32);
            let c = Cfg::new(
                (n * heads).div_ceil(COMBINE_ROWS) as u32,
                32 * COMBINE_ROWS as u32,
            );
            sim().launch(combine, &c, &mut a, s.wrapping_add(7))?;
        }
        Ok(o.get().to_vec())
    })
}

/// (tokens, heads, peaked): ragged (77: one full and one partial tile), a tile multiple,
/// a single token, growing scores over several tiles, Point-MAE's 6 heads, and one head
/// of ViT-B/8's 785 tokens (13 tiles, the last with one key).
const SHAPES: [(usize, usize, bool); 6] = [
    (77, 3, false),
    (64, 2, false),
    (1, 1, false),
    (200, 2, true),
    (300, 6, false),
    (785, 1, false),
];

/// Kernel `name` (heads of `d`) on every shape.
fn att_f32(name: &str, d: usize) -> Result<(), String> {
    for (i, &(n, heads, peaked)) in SHAPES.iter().enumerate() {
        let qkv = inputs(n, heads, d, peaked, 50 + i as u64);
        let what = format!("{name} n {n} heads {heads}");
        let bits: Vec<u32> = qkv.iter().map(|v| v.to_bits()).collect();
        let got: Vec<f32> = launch_f32(name, &bits, n, heads, d)
            .map_err(|e| format!("{what}: {e}"))?
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let want = reference(&qkv, n, heads, d, scale(d) as f64);
        rel_err(&what, &got, &want, 5e-6, 1e-5)?;
        if n == 1 {
            // One key: the softmax weight is exactly 1, the output exactly v.
            let w = heads * d;
            crate::util::same_bits(&what, &got, &qkv[2 * w..3 * w])?;
        }
    }
    Ok(())
}

/// Kernel `name` (heads of `d`) with its combine kernel on every shape, in every split
/// count from 1 to 4 that leaves each split a key tile.
fn att_bf16(name: &str, combine: &str, d: usize) -> Result<(), String> {
    for (i, &(n, heads, peaked)) in SHAPES.iter().enumerate() {
        let qkv = inputs(n, heads, d, peaked, 60 + i as u64);
        let q16: Vec<u16> = qkv.iter().map(|v| bf16::from_f32(*v).to_bits()).collect();
        let rounded: Vec<f32> = q16.iter().map(|b| bf16::from_bits(*b).to_f32()).collect();
        let want_r = reference(&rounded, n, heads, d, scale(d) as f64);
        let want = reference(&qkv, n, heads, d, scale(d) as f64);
        let tiles = n.div_ceil(TILE);
        let mut unsplit: Option<Vec<f64>> = None;
        // The large shape: the unsplit and the ViT-B/8 choice (2) only (time).
        let counts: &[usize] = if n > 300 { &[1, 2] } else { &[1, 2, 3, 4] };
        for &splits in counts
            .iter()
            .filter(|&&s| s == 1 || tiles.div_ceil(tiles.div_ceil(s)) == s)
        {
            let what = format!("{name} n {n} heads {heads} splits {splits}");
            let got: Vec<f32> = launch_bf16((name, combine), &q16, (n, heads, d), splits)
                .map_err(|e| format!("{what}: {e}"))?
                .into_iter()
                .map(|b| bf16::from_bits(b).to_f32())
                .collect();
            rel_err(&format!("{what} (bf16 inputs)"), &got, &want_r, 5e-3, 1e-2)?;
            rel_err(&format!("{what} (f32 inputs)"), &got, &want, 8e-3, 2e-2)?;
            match &unsplit {
                None => unsplit = Some(got.iter().map(|&v| v as f64).collect()),
                Some(u) => rel_err(&format!("{what} vs unsplit"), &got, u, 4e-3, 1e-2)?,
            }
        }
    }
    Ok(())
}
