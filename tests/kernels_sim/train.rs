//! train.cu, the element-wise steps and reductions of UFF training on the device
//! (runtime/fit/device/uff.rs), against the CPU trainer (`fit::train_fusion`,
//! `fit::infonce`) or an f64 reference:
//! - affine_cols_f32, col_sums_f32, ln_param_grads_f32: the CPU's operation order, bitwise;
//! - gelu_f32 / gelu_backward_f32: `cpu::gemm::gelu` / `gelu_grad` within 1e-6;
//! - l2_normalize_rows_f32 / _backward_f32: `infonce::normalize_rows{,_backward}`,
//!   bitwise, a zero row (the clamp) included;
//! - infonce_softmax_f32 + infonce_total_f64: per-row loss terms and the gradient scale
//!   `(2/n)(softmax(S/T) − I)` against f64 within 1e-6, on a block of rows that starts
//!   past row 0, with padding rows and columns (exact zeros);
//! - adamw_f32: `train_fusion::AdamW::step` bitwise over three steps, and a non-finite
//!   gradient raises the flag.

use miad::cpu::gemm::gelu;
use miad::cpu::radar_fusion::gelu_grad;
use miad::fit::infonce::{normalize_rows, normalize_rows_backward};
use miad::fit::train_fusion::AdamW;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same, same_bits, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("train_affine_and_column_sums_match_the_cpu", affine_sums),
    ("train_gelu_and_its_gradient_match_the_cpu", gelu_kernels),
    (
        "train_l2_normalize_forward_backward_match_the_cpu",
        normalize,
    ),
    ("train_infonce_softmax_and_total_match_f64", softmax),
    ("train_adamw_matches_the_cpu_optimiser", adamw),
];

fn flat(n: usize) -> Cfg {
    Cfg::new((n as u32).div_ceil(256).max(1), 256)
}

fn affine_sums() -> Result<(), String> {
    let mut g = Gen::new(21);
    let (rows, cols) = (37usize, 300usize);
    let n = rows * cols;
    let u: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let da: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let gamma: Vec<f32> = (0..cols).map(|_| 1.0 + 0.2 * g.normal()).collect();
    let beta: Vec<f32> = (0..cols).map(|_| 0.2 * g.normal()).collect();
    let want_a: Vec<f32> = (0..n)
        .map(|i| u[i] * gamma[i % cols] + beta[i % cols])
        .collect();
    let (mut sums, mut dg, mut db) = (vec![0f32; cols], vec![0f32; cols], vec![0f32; cols]);
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            sums[c] += u[i];
            dg[c] += da[i] * u[i];
            db[c] += da[i];
        }
    }
    for_seeds(|s| {
        let (ub, gb, bb, ab) = (
            Buf::from(&u),
            Buf::from(&gamma),
            Buf::from(&beta),
            Buf::filled(n, f32::NAN),
        );
        let mut a = Args::new()
            .buf(&ub)
            .buf(&gb)
            .buf(&bb)
            .val(n as i64)
            .val(cols as i32)
            .buf(&ab);
        sim().launch("affine_cols_f32", &flat(n), &mut a, s)?;
        same_bits("affine_cols_f32", ab.get(), &want_a)?;
        // Accumulating: from zero, one tensor's sums.
        let ob = Buf::filled(cols, 0f32);
        let mut a = Args::new()
            .buf(&ub)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&ob);
        sim().launch("col_sums_f32", &flat(cols), &mut a, s)?;
        same_bits("col_sums_f32", ob.get(), &sums)?;
        let (dab, dgb, dbb) = (
            Buf::from(&da),
            Buf::filled(cols, 0f32),
            Buf::filled(cols, 0f32),
        );
        let mut a = Args::new()
            .buf(&dab)
            .buf(&ub)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&dgb)
            .buf(&dbb);
        sim().launch("ln_param_grads_f32", &flat(cols), &mut a, s)?;
        same_bits("ln_param_grads_f32 dgamma", dgb.get(), &dg)?;
        same_bits("ln_param_grads_f32 dbeta", dbb.get(), &db)
    })
}

fn gelu_kernels() -> Result<(), String> {
    let mut g = Gen::new(22);
    let n = 2000usize;
    let z: Vec<f32> = (0..n).map(|_| 4.0 * g.normal()).collect();
    let up: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let want: Vec<f32> = z.iter().map(|&v| gelu(v)).collect();
    let want_grad: Vec<f32> = (0..n).map(|i| up[i] * gelu_grad(z[i])).collect();
    for_seeds(|s| {
        let (zb, ob) = (Buf::from(&z), Buf::filled(n, f32::NAN));
        let mut a = Args::new().buf(&zb).val(n as i64).buf(&ob);
        sim().launch("gelu_f32", &flat(n), &mut a, s)?;
        close("gelu_f32", ob.get(), &want, 1e-6, 1e-6)?;
        let db = Buf::from(&up);
        let mut a = Args::new().buf(&db).buf(&zb).val(n as i64);
        sim().launch("gelu_backward_f32", &flat(n), &mut a, s)?;
        close("gelu_backward_f32", db.get(), &want_grad, 1e-6, 1e-6)
    })
}

fn normalize() -> Result<(), String> {
    let mut g = Gen::new(23);
    let (rows, cols) = (300usize, 19usize);
    let mut p: Vec<f32> = (0..rows * cols).map(|_| g.normal()).collect();
    p[5 * cols..6 * cols].fill(0.0); // the clamp branch
    let gr: Vec<f32> = (0..rows * cols).map(|_| g.normal()).collect();
    let (mut q, mut norms, mut dp) = (
        vec![0f32; rows * cols],
        vec![0f32; rows],
        vec![0f32; rows * cols],
    );
    normalize_rows(&p, cols, &mut q, &mut norms);
    normalize_rows_backward(&q, &norms, cols, &gr, &mut dp);
    for_seeds(|s| {
        let (pb, qb, nb) = (
            Buf::from(&p),
            Buf::filled(rows * cols, f32::NAN),
            Buf::filled(rows, f32::NAN),
        );
        let mut a = Args::new()
            .buf(&pb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&qb)
            .buf(&nb);
        sim().launch("l2_normalize_rows_f32", &flat(rows), &mut a, s)?;
        same_bits("l2_normalize_rows_f32 q", qb.get(), &q)?;
        same_bits("l2_normalize_rows_f32 norms", nb.get(), &norms)?;
        let (gb, db) = (Buf::from(&gr), Buf::filled(rows * cols, f32::NAN));
        let mut a = Args::new()
            .buf(&qb)
            .buf(&nb)
            .buf(&gb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&db);
        sim().launch("l2_normalize_backward_f32", &flat(rows), &mut a, s)?;
        same_bits("l2_normalize_backward_f32", db.get(), &dp)
    })
}

fn softmax() -> Result<(), String> {
    let mut g = Gen::new(24);
    // A block of 40 rows starting at row 280 of a batch of n = 300 valid rows, planned
    // for 320 (ld): rows 300.. of the block and columns 300.. are padding.
    let (ld, n, r0, block) = (320usize, 300usize, 280usize, 40usize);
    let t = 0.7f32;
    let s_in: Vec<f32> = (0..block * ld).map(|_| g.range(-1.0, 1.0)).collect();
    let scale = 2.0 / n as f32;
    let mut want_g = vec![0f32; block * ld];
    let mut want_loss = vec![f64::NAN; ld];
    for i in 0..block {
        let row = r0 + i;
        if row >= n {
            continue;
        }
        let x: Vec<f64> = (0..n).map(|c| s_in[i * ld + c] as f64 / t as f64).collect();
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = x.iter().map(|v| (v - m).exp()).sum();
        want_loss[row] = sum.ln() + m - x[row];
        for c in 0..n {
            let p = (x[c] - m).exp() / sum;
            want_g[i * ld + c] = (scale as f64 * (p - f64::from(c == row))) as f32;
        }
    }
    let first_loss: Vec<f64> = (0..n)
        .map(|r| {
            if r >= r0 {
                want_loss[r]
            } else {
                1.0 + r as f64 * 1e-3
            }
        })
        .collect();
    let want_total = 2.0 * t as f64 * first_loss.iter().sum::<f64>() / n as f64;
    for_seeds(|s| {
        let sb = Buf::from(&s_in);
        let init: Vec<u64> = (0..ld).map(|r| (1.0 + r as f64 * 1e-3).to_bits()).collect();
        let lb = Buf::from(&init);
        let mut a = Args::new()
            .buf(&sb)
            .val(ld as i32)
            .val(r0 as i32)
            .val(n as i32)
            .val(1.0 / t)
            .val(scale)
            .buf(&lb);
        sim().launch(
            "infonce_softmax_f32",
            &Cfg::new(block as u32, 256),
            &mut a,
            s,
        )?;
        close("infonce gradient", sb.get(), &want_g, 1e-7, 1e-5)?;
        // Padding: exact zeros.
        for i in 0..block {
            for c in 0..ld {
                if (r0 + i >= n || c >= n) && sb.get()[i * ld + c].to_bits() != 0 {
                    return Err(format!("padding [{i}][{c}] = {}", sb.get()[i * ld + c]));
                }
            }
        }
        let got: Vec<f64> = lb.get()[r0..n].iter().map(|&b| f64::from_bits(b)).collect();
        for (k, (&gv, &wv)) in got.iter().zip(&want_loss[r0..n]).enumerate() {
            if (gv - wv).abs() > 1e-6 * wv.abs().max(1.0) {
                return Err(format!("loss row {}: {gv} vs {wv}", r0 + k));
            }
        }
        let ob = Buf::filled(1, 0u64);
        let mut a = Args::new().buf(&lb).val(n as i32).val(t).buf(&ob);
        sim().launch("infonce_total_f64", &Cfg::new(1, 1), &mut a, s)?;
        let total = f64::from_bits(ob.get()[0]);
        if (total - want_total).abs() > 1e-6 * want_total.abs() {
            return Err(format!("infonce_total_f64: {total} vs {want_total}"));
        }
        Ok(())
    })
}

fn adamw() -> Result<(), String> {
    let mut g = Gen::new(25);
    let n = 1000usize;
    let (b1, b2, eps, wd) = (0.9f32, 0.95f32, 1e-8f32, 0.01f32);
    let p0: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..n).map(|_| 0.1 * g.normal()).collect())
        .collect();
    let lrs = [1e-3f32, 3e-3, 2e-3];
    let mut want = p0.clone();
    let mut opt = AdamW::new(n, b1, b2, eps, wd);
    for (gr, &lr) in grads.iter().zip(&lrs) {
        opt.step(&mut want, gr, lr);
    }
    for_seeds(|s| {
        let (pb, mb, vb, bad) = (
            Buf::from(&p0),
            Buf::filled(n, 0f32),
            Buf::filled(n, 0f32),
            Buf::filled(1, 0i32),
        );
        for (t, (gr, &lr)) in grads.iter().zip(&lrs).enumerate() {
            let t = t as i32 + 1;
            let step = lr / (1.0 - b1.powi(t));
            let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
            let gb = Buf::from(gr);
            let mut a = Args::new()
                .buf(&pb)
                .buf(&gb)
                .buf(&mb)
                .buf(&vb)
                .val(n as i64)
                .val(step)
                .val(1.0 - lr * wd)
                .val(b1)
                .val(b2)
                .val(bc2_sqrt)
                .val(eps)
                .buf(&bad);
            sim().launch("adamw_f32", &flat(n), &mut a, s)?;
        }
        same_bits("adamw_f32", pb.get(), &want)?;
        same("adamw_f32 flag", bad.get(), &[0])?;
        let mut gr = grads[0].clone();
        gr[7] = f32::NAN;
        let gb = Buf::from(&gr);
        let mut a = Args::new()
            .buf(&pb)
            .buf(&gb)
            .buf(&mb)
            .buf(&vb)
            .val(n as i64)
            .val(1e-3f32)
            .val(1.0f32)
            .val(b1)
            .val(b2)
            .val(1.0f32)
            .val(eps)
            .buf(&bad);
        sim().launch("adamw_f32", &flat(n), &mut a, s)?;
        same("adamw_f32 flag on NaN", bad.get(), &[1])
    })
}
