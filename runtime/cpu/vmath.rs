//! Element-wise maths of the networks in a form that vectorises: `exp` for softmax and
//! GELU through `erfc`, branch free, without fused multiply-adds (so AVX-512, AVX2 and the
//! portable build give the same bits), each with its error against float64 stated and
//! tested. Row functions pick the widest instruction set once per call.

/// exp(x) in f32, within 4 ulp (relative 4·2⁻²³, tested) for −87 ≤ x ≤ 88; branch free
/// so it vectorises. Inputs below −87.3 give ≈1e-38 instead of an underflowing value
/// (irrelevant next to softmax's row maximum of 1 and GELU's other factors).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = x * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on |r| ≤ ln2/2.
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * pow2_of_shifted(shifted)
}

/// The range of the exponentials' inputs (clamped to it).
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.3;
/// Range reduction: `x = n·ln2 + r`, ln2 in two parts (`n·LN2_HI` exact).
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: `x·log2 e + SHIFTER` rounds `n = round(x·log2 e)` (to nearest even) into the
/// sum's low mantissa bits (offset by 2²²).
const SHIFTER: f32 = 12_582_912.0;

/// 2ⁿ from `shifted = n + SHIFTER`: its exponent bits come from the low mantissa bits with
/// integer operations, which vectorise where a float-to-int cast with Rust's saturation
/// does not.
#[inline(always)]
fn pow2_of_shifted(shifted: f32) -> f32 {
    let bits = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127)
        << 23;
    f32::from_bits(bits)
}

/// Exact GELU, `x·Φ(x) = ½·x·(1 + erf(x/√2))`, in a form that vectorises: `2Φ(x)` is
/// `erfc(|x|/√2)` for x < 0 and `2 − erfc(|x|/√2)` otherwise, with erfc from the
/// Chebyshev-fitted formula of Numerical Recipes (§6.2, fractional error below 1.2e-7 for
/// every z ≥ 0) and [`exp_f32`]. So the negative tail keeps its relative precision (no
/// `1 + erf` cancellation: the f32 `0.5·x·(1 + erff(x/√2))` of [`super::gemm::gelu`] loses
/// all of it below x ≈ −5). Error against float64, tested on a dense grid of [−20, 20]:
/// `|ĝ − g| ≤ gelu_error_bound(x, g)`, i.e. a relative `2⁻²¹·(1 + x²)` (the f32 rounding of
/// `z²` inside the exponential grows with it) plus 1e-30 (where exp's clamp at −87.3
/// stops the tail).
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    let erfc = t * exp_f32(p - z * z);
    let two_phi = if x < 0.0 { erfc } else { 2.0 - erfc };
    0.5 * x * two_phi
}

/// The stated error bound of [`gelu_fast`] at `x`, where GELU is `g`.
pub fn gelu_error_bound(x: f64, g: f64) -> f64 {
    2f64.powi(-21) * (1.0 + x * x) * g.abs() + 1e-30
}

/// The bf16 path's maths: its results are rounded to bf16 (relative 2⁻⁹) right after, so
/// a shorter exponential with fused multiply-adds (about half the operations of
/// [`exp_f32`]) is plenty. `mul_add` is exactly rounded wherever it runs, so these give the
/// same bits on every instruction set (fast where FMA hardware is: every CPU with
/// AVX512-BF16, the only one that runs the bf16 path).
///
/// exp(x) within a relative [`EXP_FOR_BF16_ERROR`] (2⁻¹⁷, tested against float64) for
/// −87 ≤ x ≤ 88: the range reduction of [`exp_f32`] in two fused steps and a degree-4
/// polynomial on |r| ≤ ln2/2 (a minimax fit of relative error 2.9e-6). Inputs below −87.3
/// give ≈1e-38, as [`exp_f32`].
#[inline(always)]
pub fn exp_for_bf16(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = x.mul_add(LOG2E, SHIFTER);
    let n = shifted - SHIFTER;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 0.041_450_158f32;
    p = p.mul_add(r, 0.167_958_9);
    p = p.mul_add(r, 0.500_047_15);
    p = p.mul_add(r, 0.999_960_4);
    p = p.mul_add(r, 0.999_999_17);
    p * pow2_of_shifted(shifted)
}

/// The relative error bound of [`exp_for_bf16`].
pub const EXP_FOR_BF16_ERROR: f64 = 1.0 / 131_072.0;

/// Exact GELU for the bf16 path: [`gelu_fast`]'s formula with fused multiply-adds and
/// [`exp_for_bf16`]; `|ĝ − g| ≤ gelu_for_bf16_error_bound(x, g)` (tested on a dense grid
/// of [−20, 20]): the exponential's 2⁻¹⁷ and the formula's 1.2e-7, plus the rounding of
/// the exponent `p − z²` (one rounding with the fused step: 2⁻²⁴·x²/2 relative to it).
#[inline(always)]
pub fn gelu_for_bf16(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / 0.5f32.mul_add(z, 1.0);
    let mut p = 0.170_872_77f32;
    p = p.mul_add(t, -0.822_152_23);
    p = p.mul_add(t, 1.488_515_9);
    p = p.mul_add(t, -1.135_204);
    p = p.mul_add(t, 0.278_868_07);
    p = p.mul_add(t, -0.186_288_06);
    p = p.mul_add(t, 0.096_784_18);
    p = p.mul_add(t, 0.374_091_96);
    p = p.mul_add(t, 1.000_023_7);
    p = p.mul_add(t, -1.265_512_2);
    let erfc = t * exp_for_bf16((-z).mul_add(z, p));
    let two_phi = if x < 0.0 { erfc } else { 2.0 - erfc };
    0.5 * x * two_phi
}

/// The stated error bound of [`gelu_for_bf16`] at `x`, where GELU is `g`.
pub fn gelu_for_bf16_error_bound(x: f64, g: f64) -> f64 {
    (2f64.powi(-16) + 2f64.powi(-23) * x * x) * g.abs() + 1e-30
}

/// Defines `pub fn $name(row: &mut [f32]) -> $ret` running `$body(row)` (an
/// `#[inline(always)]` function) compiled for AVX-512F or AVX2 as [`super::gemm::isa`] picks
/// at run time, else as the target builds it. The body uses fixed-shape partial sums and
/// no fused multiply-add but `mul_add` (exactly rounded wherever it runs: an instruction
/// with FMA hardware, a library call without), so every path gives the same bits.
macro_rules! dispatch_row {
    ($(#[$meta:meta])* $name:ident -> $ret:ty = $body:ident) => {
        $(#[$meta])*
        pub fn $name(row: &mut [f32]) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                // Every CPU `isa` ranks AVX-512 or AVX2 has FMA (checked for AVX2; all
                // AVX-512 CPUs have it).
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512(row: &mut [f32]) -> $ret {
                    $body(row)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(row: &mut [f32]) -> $ret {
                    $body(row)
                }
                match super::gemm::isa() {
                    // SAFETY: `isa` names only instruction sets this CPU runs.
                    super::gemm::Isa::Avx512 => return unsafe { avx512(row) },
                    // SAFETY: as above.
                    super::gemm::Isa::Avx2 => return unsafe { avx2(row) },
                    super::gemm::Isa::Portable => {}
                }
            }
            $body(row)
        }
    };
}

dispatch_row!(
    /// `row[i] ← gelu_fast(row[i])`.
    gelu_row -> () = gelu_row_generic
);

#[inline(always)]
fn gelu_row_generic(row: &mut [f32]) {
    row.iter_mut().for_each(|v| *v = gelu_fast(*v));
}

dispatch_row!(
    /// `row ← exp(row − max(row))` (softmax's numerators); returns the sum of the new row.
    exp_shifted_row -> f32 = exp_shifted_row_generic
);

/// Lanes of the fixed-shape partial sums; the same for every instruction set, so the
/// bits do not depend on which vector path runs.
const LANES: usize = 16;

/// The largest value of `row` (−∞ for an empty row; a NaN never wins).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    // `if v > m`, not `f32::max`: the same maximum, one vector max instruction a chunk
    // instead of a max, a NaN test and a blend.
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in mx.iter_mut().zip(c) {
            *m = larger(*m, v);
        }
    }
    let mut m = mx.iter().fold(f32::NEG_INFINITY, |a, &b| larger(a, b));
    for &v in chunks.remainder() {
        m = larger(m, v);
    }
    m
}

#[inline(always)]
fn exp_shifted_row_generic(row: &mut [f32]) -> f32 {
    exp_shifted_row_in_lanes::<LANES>(row, exp_f32, false)
}

/// `row ← exp(row − max(row))` through `exp`, returning the sum of the new row: `N`
/// fixed partial sums, then the tail's values added in order. `vector_tail`: the tail's
/// exponentials computed as one padded chunk of `N` (vectors, where one value at a time
/// would cost a third of a 785-value row with `N` = 64); the same values and sum.
#[inline(always)]
fn exp_shifted_row_in_lanes<const N: usize>(
    row: &mut [f32],
    exp: impl Fn(f32) -> f32,
    vector_tail: bool,
) -> f32 {
    let m = row_max(row);
    let mut acc = [0f32; N];
    let mut chunks = row.chunks_exact_mut(N);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            let e = exp(*v - m);
            *v = e;
            *a += e;
        }
    }
    let tail = chunks.into_remainder();
    if vector_tail {
        let mut padded = [0f32; N];
        padded[..tail.len()].copy_from_slice(tail);
        padded.iter_mut().for_each(|v| *v = exp(*v - m));
        tail.copy_from_slice(&padded[..tail.len()]);
    } else {
        tail.iter_mut().for_each(|v| *v = exp(*v - m));
    }
    let sum = tail.iter().fold(0f32, |sum, &e| sum + e);
    acc.iter().sum::<f32>() + sum
}

dispatch_row!(
    /// `row[i] ← gelu_for_bf16(row[i])` (the bf16 path's fc1 epilogue).
    gelu_row_for_bf16 -> () = gelu_row_for_bf16_generic
);

/// Values per step of the bf16 path's rows: four AVX-512 vectors, so that four
/// independent polynomial chains overlap (one chain a vector leaves the unit waiting on
/// each step's latency).
const STEP: usize = 64;

#[inline(always)]
fn gelu_row_for_bf16_generic(row: &mut [f32]) {
    let mut chunks = row.chunks_exact_mut(STEP);
    for c in &mut chunks {
        c.iter_mut().for_each(|v| *v = gelu_for_bf16(*v));
    }
    chunks
        .into_remainder()
        .iter_mut()
        .for_each(|v| *v = gelu_for_bf16(*v));
}

dispatch_row!(
    /// `row ← exp_for_bf16(row − max(row))` (bf16 attention's softmax numerators);
    /// returns the sum of the new row (f32, fixed-shape partial sums).
    exp_shifted_row_for_bf16 -> f32 = exp_shifted_row_for_bf16_generic
);

#[inline(always)]
fn exp_shifted_row_for_bf16_generic(row: &mut [f32]) -> f32 {
    exp_shifted_row_in_lanes::<STEP>(row, exp_for_bf16, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * (i as f32 / 200_000.0);
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
    }

    /// `½·x·erfc(−x/√2)`: the same as `½·x·(1 + erf(x/√2))` without its cancellation.
    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn gelu_is_within_its_stated_error_of_f64() {
        let mut worst_rel = 0f64;
        for i in 0..=4_000_000 {
            let x = -20.0 + 40.0 * (i as f64 / 4_000_000.0);
            let x = x as f32;
            let want = gelu_f64(x as f64);
            let got = gelu_fast(x) as f64;
            let err = (got - want).abs();
            assert!(
                err <= gelu_error_bound(x as f64, want),
                "gelu({x}): {got} vs {want}"
            );
            if want.abs() > 1e-30 {
                worst_rel = worst_rel.max(err / want.abs() / (1.0 + (x as f64).powi(2)));
            }
        }
        eprintln!("gelu_fast: worst relative error / (1 + x²) {worst_rel:.3e}");
        assert_eq!(gelu_fast(0.0), 0.0);
        assert!(gelu_fast(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_row_paths_agree_bitwise() {
        let row: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let mut a = row.clone();
        let mut b = row.clone();
        gelu_row(&mut a);
        gelu_row_generic(&mut b);
        assert_eq!(a, b);
        let scalar: Vec<f32> = row.iter().map(|&x| gelu_fast(x)).collect();
        assert_eq!(a, scalar);
    }

    #[test]
    fn exp_row_paths_agree_bitwise() {
        let mut rng = Rng::new(3);
        let mut row = vec![0f32; 785];
        rng.fill_normal(&mut row, 4.0);
        let mut a = row.clone();
        let mut b = row.clone();
        let sa = exp_shifted_row(&mut a);
        let sb = exp_shifted_row_generic(&mut b);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert_eq!(a, b);
    }

    #[test]
    fn exp_for_bf16_is_within_its_stated_error() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * (i as f32 / 2_000_000.0);
            let got = exp_for_bf16(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        eprintln!("exp_for_bf16: worst relative error {worst:.3e}");
        assert!(worst <= EXP_FOR_BF16_ERROR, "relative error {worst}");
        // Not the f32 exponential's bits (so the test above tests the short one).
        assert_ne!(exp_for_bf16(0.3).to_bits(), exp_f32(0.3).to_bits());
    }

    #[test]
    fn gelu_for_bf16_is_within_its_stated_error_of_f64() {
        let mut worst = 0f64;
        for i in 0..=4_000_000 {
            let x = (-20.0 + 40.0 * (i as f64 / 4_000_000.0)) as f32;
            let want = gelu_f64(x as f64);
            let got = gelu_for_bf16(x) as f64;
            let bound = gelu_for_bf16_error_bound(x as f64, want);
            let err = (got - want).abs();
            assert!(err <= bound, "gelu_for_bf16({x}): {got} vs {want}");
            worst = worst.max(err / bound);
        }
        eprintln!("gelu_for_bf16: worst error / bound {worst:.3}");
        assert_eq!(gelu_for_bf16(0.0), 0.0);
        assert!(gelu_for_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn bf16_row_paths_agree_bitwise() {
        let mut rng = Rng::new(5);
        let mut row = vec![0f32; 785];
        rng.fill_normal(&mut row, 4.0);
        let (mut a, mut b) = (row.clone(), row.clone());
        let sa = exp_shifted_row_for_bf16(&mut a);
        let sb = exp_shifted_row_for_bf16_generic(&mut b);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert_eq!(a, b);
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let scalar: Vec<f32> = row.iter().map(|&x| exp_for_bf16(x - m)).collect();
        assert_eq!(a, scalar);
        let (mut a, mut b) = (row.clone(), row.clone());
        gelu_row_for_bf16(&mut a);
        gelu_row_for_bf16_generic(&mut b);
        assert_eq!(a, b);
        let scalar: Vec<f32> = row.iter().map(|&x| gelu_for_bf16(x)).collect();
        assert_eq!(a, scalar);
    }
}
