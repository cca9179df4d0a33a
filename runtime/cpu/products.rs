//! Dense products and row normalisation with their backward, shared by the fusion
//! trainings (`fit::infonce`, `fit::train_fusion`) and the CPU RADAR network's backward
//! pass (`cpu::radar_fusion`). Every product goes through `cpu::gemm` on fixed output
//! tiles inside the [`Pool`], so the bits do not depend on the thread count.

use crate::cpu::gemm::{self, Kernel, Mat, Operand};
/// Rows and columns of the output per task of the products below.
use crate::cpu::gemm::{TASK_COLS as TILE_COLS, TASK_ROWS as TILE_ROWS};
use crate::cpu::pool::{Pool, SharedMut};

/// `out[m×n] (+)= a[m×k] · b[k×n]` (all row-major, `out` contiguous).
pub fn matmul_nn(pool: &Pool, a: Mat<'_>, b: Mat<'_>, out: &mut [f32], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul_nn: inner sizes");
    assert!(out.len() >= m * n, "matmul_nn: output");
    gemm::matmul_tiled(pool, out, n, a, b, false, 1.0, accumulate);
}

/// `out[p×q] (+)= aᵀ · b` for `a[m×p]`, `b[m×q]` (row-major): weight gradients `δᵀ x`.
pub fn matmul_tn(pool: &Pool, a: Mat<'_>, b: Mat<'_>, out: &mut [f32], accumulate: bool) {
    let (m, p, q) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, m, "matmul_tn: inner sizes");
    assert!(out.len() >= p * q, "matmul_tn: output");
    if m == 0 {
        if !accumulate {
            out[..p * q].fill(0.0);
        }
        return;
    }
    let tiles_p = p.div_ceil(TILE_ROWS);
    let tiles_q = q.div_ceil(TILE_COLS);
    let ptr = SharedMut::new(out);
    pool.run(tiles_p * tiles_q, &|task, _| {
        let (tp, tq) = (task / tiles_q, task % tiles_q);
        let (r0, c0) = (tp * TILE_ROWS, tq * TILE_COLS);
        let rows = TILE_ROWS.min(p - r0);
        let cols = TILE_COLS.min(q - c0);
        // SAFETY: disjoint tiles of `out`, as in `matmul_nn`.
        let tile = unsafe { ptr.slice(r0 * q + c0, (rows - 1) * q + cols) };
        // aᵀ restricted to rows r0..r0+rows: columns r0.. of a, read transposed.
        let lhs = Operand::transposed(Mat {
            data: &a.data[r0..],
            rows: m,
            cols: rows,
            stride: a.stride,
        });
        let rhs = Operand::plain(Mat {
            data: &b.data[c0..],
            rows: m,
            cols,
            stride: b.stride,
        });
        gemm::product_seq(Kernel::best(), tile, q, lhs, rhs, 1.0, accumulate);
    });
}

/// `out[i] = p[i] / max(‖p[i]‖, 1e-12)` per `e`-row; `norms[i] = ‖p[i]‖` (PyTorch
/// `F.normalize`).
pub fn normalize_rows(p: &[f32], e: usize, out: &mut [f32], norms: &mut [f32]) {
    for ((pr, or), n) in p
        .chunks_exact(e)
        .zip(out.chunks_exact_mut(e))
        .zip(norms.iter_mut())
    {
        let norm = pr.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt() as f32;
        *n = norm;
        let inv = 1.0 / norm.max(1e-12);
        or.iter_mut().zip(pr).for_each(|(o, v)| *o = v * inv);
    }
}

/// Backward of [`normalize_rows`]: `dp = (g − u (u·g)) / ‖p‖` (`g / 1e-12` when clamped).
pub fn normalize_rows_backward(u: &[f32], norms: &[f32], e: usize, g: &[f32], dp: &mut [f32]) {
    for (((ur, gr), dr), &n) in u
        .chunks_exact(e)
        .zip(g.chunks_exact(e))
        .zip(dp.chunks_exact_mut(e))
        .zip(norms)
    {
        if n > 1e-12 {
            let dot: f32 = ur.iter().zip(gr).map(|(a, b)| a * b).sum();
            let inv = 1.0 / n;
            for i in 0..e {
                dr[i] = (gr[i] - ur[i] * dot) * inv;
            }
        } else {
            dr.iter_mut().zip(gr).for_each(|(d, v)| *d = v / 1e-12);
        }
    }
}
