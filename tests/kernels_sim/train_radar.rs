//! train_radar.cu, the steps of RADAR's backward pass on the device, against the CPU's
//! `cpu::radar_fusion` (its public functions, or its loops written out in the CPU's
//! operation order) or an f64 reference:
//! - layernorm_stats_f32 / layernorm_backward_f32: `ln_forward` / `ln_backward`, bitwise
//!   (statistics, `u`, `1/σ`, the affine output, `dx` added onto a non-zero `dx`);
//! - train.cu's ln_param_grads_f32 and col_sums_f32 (the gradients of several parts),
//!   scale_backward_f32 of `y = z ⊙ s`, gather_rows_f32, scatter_add_rows_f32,
//!   add_row_scaled_f32: the CPU's row order onto non-zero accumulators, bitwise;
//! - scale_backward_f32 of `y = GELU(z ⊙ s)`: the CPU's loop with `gelu_grad`, within 1e-6;
//! - softmax_rows_f32 (with and without eq. 7's split, heads stacked) and
//!   softmax_backward_f32: f64 within 1e-6 relative + 1e-7; the masked entries are exact
//!   zeros.

use miad::cpu::radar_fusion::{gelu_grad, ln_backward, ln_forward};

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same_bits, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[
    (
        "train_radar_layernorm_forward_backward_match_the_cpu",
        layernorm,
    ),
    (
        "train_radar_accumulating_sums_and_scale_gradients_match_the_cpu",
        sums_and_scales,
    ),
    (
        "train_radar_row_gather_scatter_and_broadcast_match_the_cpu",
        gather_scatter,
    ),
    (
        "train_radar_masked_softmax_and_its_backward_match_f64",
        softmax,
    ),
];

fn flat(n: usize) -> Cfg {
    Cfg::new((n as u32).div_ceil(256).max(1), 256)
}

fn normals(g: &mut Gen, n: usize, scale: f32, shift: f32) -> Vec<f32> {
    (0..n).map(|_| shift + scale * g.normal()).collect()
}

fn layernorm() -> Result<(), String> {
    let mut g = Gen::new(31);
    // 300 rows: more than one block of threads.
    let (rows, cols, eps) = (300usize, 77usize, 1e-5f32);
    let n = rows * cols;
    let x = normals(&mut g, n, 3.0, 0.5);
    let gamma = normals(&mut g, cols, 0.2, 1.0);
    let beta = normals(&mut g, cols, 0.2, 0.0);
    let da = normals(&mut g, n, 1.0, 0.0);
    let dx0 = normals(&mut g, n, 1.0, 0.0);
    let (mut u, mut rstd, mut out) = (vec![0f32; n], vec![0f32; rows], vec![0f32; n]);
    ln_forward(&x, cols, &gamma, &beta, eps, &mut u, &mut rstd, &mut out);
    let mut dx = dx0.clone();
    let (mut dg, mut db) = (vec![0f32; cols], vec![0f32; cols]);
    ln_backward(
        &da,
        &u,
        &rstd,
        &gamma,
        cols,
        &mut dg,
        &mut db,
        Some(&mut dx),
    );
    for_seeds(|s| {
        let (xb, gb, bb) = (Buf::from(&x), Buf::from(&gamma), Buf::from(&beta));
        let (ub, rb, ob) = (
            Buf::filled(n, f32::NAN),
            Buf::filled(rows, f32::NAN),
            Buf::filled(n, f32::NAN),
        );
        let mut a = Args::new()
            .buf(&xb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&gb)
            .buf(&bb)
            .val(eps)
            .buf(&ub)
            .buf(&rb)
            .buf(&ob);
        sim().launch("layernorm_stats_f32", &flat(rows), &mut a, s)?;
        same_bits("layernorm_stats_f32 u", ub.get(), &u)?;
        same_bits("layernorm_stats_f32 rstd", rb.get(), &rstd)?;
        same_bits("layernorm_stats_f32 out", ob.get(), &out)?;
        let (dab, dxb) = (Buf::from(&da), Buf::from(&dx0));
        let mut a = Args::new()
            .buf(&dab)
            .buf(&ub)
            .buf(&rb)
            .buf(&gb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&dxb);
        sim().launch("layernorm_backward_f32", &flat(rows), &mut a, s)?;
        same_bits("layernorm_backward_f32 dx", dxb.get(), &dx)
    })
}

fn sums_and_scales() -> Result<(), String> {
    let mut g = Gen::new(32);
    let (rows, cols) = (41usize, 300usize);
    let n = rows * cols;
    let da = normals(&mut g, n, 1.0, 0.0);
    let u = normals(&mut g, n, 1.0, 0.0);
    let z = normals(&mut g, n, 2.0, 0.0);
    let sc = normals(&mut g, cols, 0.3, 1.0);
    // Accumulators that already hold the gradients of earlier parts.
    let (acc_g, acc_b, acc_s) = (
        normals(&mut g, cols, 1.0, 0.0),
        normals(&mut g, cols, 1.0, 0.0),
        normals(&mut g, cols, 1.0, 0.0),
    );
    // The CPU's loops (`ln_backward`'s parameter sums, `add_col_sums`, the `⊙ s₂` and
    // `gelu(· ⊙ s₁)` steps of `branch_backward`), rows in order onto the accumulators.
    let (mut dg, mut db, mut cs) = (acc_g.clone(), acc_b.clone(), acc_b.clone());
    let (mut ds2, mut dy) = (acc_s.clone(), da.clone());
    let (mut ds1, mut dgl) = (acc_s.clone(), da.clone());
    for r in 0..rows {
        for i in 0..cols {
            let k = r * cols + i;
            dg[i] += da[k] * u[k];
            db[i] += da[k];
            cs[i] += da[k];
            ds2[i] += dy[k] * z[k];
            dy[k] *= sc[i];
            let pre = dgl[k] * gelu_grad(z[k] * sc[i]);
            ds1[i] += pre * z[k];
            dgl[k] = pre * sc[i];
        }
    }
    for_seeds(|s| {
        let (dab, ubb) = (Buf::from(&da), Buf::from(&u));
        let (gb, bb) = (Buf::from(&acc_g), Buf::from(&acc_b));
        let mut a = Args::new()
            .buf(&dab)
            .buf(&ubb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&gb)
            .buf(&bb);
        sim().launch("ln_param_grads_f32", &flat(cols), &mut a, s)?;
        same_bits("ln_param_grads_f32 dgamma", gb.get(), &dg)?;
        same_bits("ln_param_grads_f32 dbeta", bb.get(), &db)?;
        let ob = Buf::from(&acc_b);
        let mut a = Args::new()
            .buf(&dab)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&ob);
        sim().launch("col_sums_f32", &flat(cols), &mut a, s)?;
        same_bits("col_sums_f32", ob.get(), &cs)?;
        let (zb, sb) = (Buf::from(&z), Buf::from(&sc));
        for (gelu, want_dy, want_ds) in [(0i32, &dy, &ds2), (1, &dgl, &ds1)] {
            let (dyb, dsb) = (Buf::from(&da), Buf::from(&acc_s));
            let mut a = Args::new()
                .buf(&dyb)
                .buf(&zb)
                .buf(&sb)
                .val(rows as i32)
                .val(cols as i32)
                .val(gelu)
                .buf(&dsb);
            sim().launch("scale_backward_f32", &flat(cols), &mut a, s)?;
            if gelu == 0 {
                same_bits("scale_backward_f32 dy", dyb.get(), want_dy)?;
                same_bits("scale_backward_f32 ds", dsb.get(), want_ds)?;
            } else {
                close("scale_backward_f32 gelu dy", dyb.get(), want_dy, 1e-6, 1e-6)?;
                close("scale_backward_f32 gelu ds", dsb.get(), want_ds, 1e-5, 1e-6)?;
            }
        }
        Ok(())
    })
}

fn gather_scatter() -> Result<(), String> {
    let mut g = Gen::new(33);
    // 300 loss rows whose targets are 50 tokens (with repeats, some tokens never hit).
    let (n, tokens, cols) = (300usize, 50usize, 33usize);
    let idx: Vec<u32> = (0..n).map(|_| g.below(tokens - 5) as u32).collect();
    let src = normals(&mut g, tokens * cols, 1.0, 0.0);
    let rows_in = normals(&mut g, n * cols, 1.0, 0.0);
    let dst0 = normals(&mut g, tokens * cols, 1.0, 0.0);
    let v = normals(&mut g, cols, 1.0, 0.0);
    let inv = 1.0 / tokens as f32;
    let gathered: Vec<f32> = (0..n * cols)
        .map(|k| src[idx[k / cols] as usize * cols + k % cols])
        .collect();
    // `scatter_add_contexts`: rows in order onto the token of their cell.
    let mut scattered = dst0.clone();
    for (i, &t) in idx.iter().enumerate() {
        for c in 0..cols {
            scattered[t as usize * cols + c] += rows_in[i * cols + c];
        }
    }
    // The token mean's gradient: `*a += b * inv` on every row.
    let broadcast: Vec<f32> = (0..tokens * cols)
        .map(|k| dst0[k] + v[k % cols] * inv)
        .collect();
    for_seeds(|s| {
        let (sb, ib, ob) = (
            Buf::from(&src),
            Buf::from(&idx),
            Buf::filled(n * cols, f32::NAN),
        );
        let mut a = Args::new()
            .buf(&sb)
            .val(cols as i32)
            .buf(&ib)
            .val(n as i32)
            .buf(&ob);
        sim().launch("gather_rows_f32", &flat(n * cols), &mut a, s)?;
        same_bits("gather_rows_f32", ob.get(), &gathered)?;
        let (rb, db) = (Buf::from(&rows_in), Buf::from(&dst0));
        let mut a = Args::new()
            .buf(&rb)
            .val(cols as i32)
            .buf(&ib)
            .val(n as i32)
            .buf(&db)
            .val(tokens as i32);
        sim().launch("scatter_add_rows_f32", &flat(tokens * cols), &mut a, s)?;
        same_bits("scatter_add_rows_f32", db.get(), &scattered)?;
        let (db, vb) = (Buf::from(&dst0), Buf::from(&v));
        let mut a = Args::new()
            .buf(&db)
            .val(tokens as i32)
            .val(cols as i32)
            .buf(&vb)
            .val(inv);
        sim().launch("add_row_scaled_f32", &flat(tokens * cols), &mut a, s)?;
        same_bits("add_row_scaled_f32", db.get(), &broadcast)
    })
}

/// Row softmax in f64 of `rows` rows of length `t` (row `b` is row `b % t` of its head),
/// with eq. 7's groups when `split > 0`.
fn softmax_f64(x: &[f32], rows: usize, t: usize, split: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; rows * t];
    for b in 0..rows {
        let i = b % t;
        let group = match split {
            0 => 0..t,
            s if i < s => 0..s,
            s => s..t,
        };
        let v: Vec<f64> = group
            .clone()
            .map(|c| x[b * t + c] as f64 * scale as f64)
            .collect();
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = v.iter().map(|a| (a - m).exp()).sum();
        for (k, c) in group.enumerate() {
            out[b * t + c] = ((v[k] - m).exp() / sum) as f32;
        }
    }
    out
}

fn softmax() -> Result<(), String> {
    let mut g = Gen::new(34);
    // Two heads of 264 tokens: rows longer than a block of threads.
    let (heads, t, scale) = (2usize, 264usize, 0.125f32);
    let rows = heads * t;
    let s_in = normals(&mut g, rows * t, 8.0, 0.0);
    let ds_in = normals(&mut g, rows * t, 1.0, 0.0);
    for_seeds(|s| {
        for split in [0usize, 100] {
            let want = softmax_f64(&s_in, rows, t, split, scale);
            let pb = Buf::from(&s_in);
            let mut a = Args::new()
                .buf(&pb)
                .val(rows as i32)
                .val(t as i32)
                .val(split as i32)
                .val(scale);
            sim().launch("softmax_rows_f32", &Cfg::new(rows as u32, 256), &mut a, s)?;
            let what = format!("softmax_rows_f32 split {split}");
            close(&what, pb.get(), &want, 1e-7, 1e-6)?;
            if let Some(k) = (0..rows * t).find(|&k| want[k] == 0.0 && pb.get()[k] != 0.0) {
                return Err(format!("{what}: masked entry {k} = {}", pb.get()[k]));
            }
            // Backward on the device's probabilities, against f64 on the same ones.
            let p = pb.get().to_vec();
            let want_ds: Vec<f32> = (0..rows)
                .flat_map(|b| {
                    let (pr, dr) = (&p[b * t..(b + 1) * t], &ds_in[b * t..(b + 1) * t]);
                    let dot: f64 = pr.iter().zip(dr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    pr.iter()
                        .zip(dr)
                        .map(move |(&pv, &dv)| {
                            (pv as f64 * (dv as f64 - dot) * scale as f64) as f32
                        })
                        .collect::<Vec<f32>>()
                })
                .collect();
            let db = Buf::from(&ds_in);
            let mut a = Args::new()
                .buf(&db)
                .buf(&pb)
                .val(rows as i32)
                .val(t as i32)
                .val(scale);
            sim().launch(
                "softmax_backward_f32",
                &Cfg::new(rows as u32, 256),
                &mut a,
                s,
            )?;
            close(
                &format!("softmax_backward_f32 split {split}"),
                db.get(),
                &want_ds,
                1e-7,
                1e-5,
            )?;
        }
        Ok(())
    })
}
