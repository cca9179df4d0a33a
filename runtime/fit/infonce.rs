//! The patch-wise InfoNCE of M3DM's UFF training (docs/RADAR-FUSION.md §5b) and the dense
//! products its backward pass needs.
//!
//! `L = 2T · (1/N) Σ_i (log Σ_j exp(q_i·k_j / T) − q_i·k_i / T)` for `N` L2-normalised
//! queries `q` (RGB) and keys `k` (xyz): PyTorch's `CrossEntropyLoss(q kᵀ / T, arange(N)) ·
//! 2T`, one direction, as the reference code. Computed in blocks of [`BLOCK_ROWS`] queries
//! so the logits never take more than `BLOCK_ROWS × N` floats.
//!
//! Every product goes through `cpu::gemm` on fixed output tiles inside the [`Pool`]: a tile's bits depend on its position only, so results do not depend on
//! the thread count; reductions over rows happen inside one tile's sequential matmul or
//! in a fixed order on the calling thread.

use crate::cpu::gemm::{self, Epilogue, Kernel, Mat, Operand};
use crate::cpu::pool::{Pool, SharedMut};

/// Rows and columns of the output per task of the products below.
use crate::cpu::gemm::{TASK_COLS as TILE_COLS, TASK_ROWS as TILE_ROWS};

/// Queries per block of logits.
pub const BLOCK_ROWS: usize = 256;

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

/// InfoNCE of `n` normalised queries `q` and keys `k` (`n × e` each) at temperature
/// `t`. Returns the loss; with `grads = Some((dq, dk))` also writes its gradients.
/// `logits` is scratch of at least `BLOCK_ROWS.min(n) × n` floats.
#[allow(clippy::too_many_arguments)]
pub fn info_nce(
    pool: &Pool,
    q: &[f32],
    k: &[f32],
    n: usize,
    e: usize,
    t: f32,
    logits: &mut [f32],
    mut grads: Option<(&mut [f32], &mut [f32])>,
) -> f64 {
    assert!(q.len() >= n * e && k.len() >= n * e, "info_nce: inputs");
    if n == 0 {
        return 0.0;
    }
    let block = BLOCK_ROWS.min(n);
    assert!(logits.len() >= block * n, "info_nce: logits scratch");
    if let Some((_, dk)) = grads.as_mut() {
        dk[..n * e].fill(0.0);
    }
    let inv_t = 1.0 / t;
    // ∂L/∂S_ij · (1/T) = (2/N)(P_ij − δ_ij): the 2T/N of the loss times the 1/T of S.
    let scale = 2.0 / n as f32;
    let mut total = 0.0f64;
    let mut r0 = 0;
    while r0 < n {
        let rows = block.min(n - r0);
        let s = &mut logits[..rows * n];
        gemm::linear(
            pool,
            Mat::new(&q[r0 * e..(r0 + rows) * e], rows, e),
            Mat::new(&k[..n * e], n, e),
            None,
            s,
            n,
            Epilogue::None,
        );
        for (i, row) in s.chunks_exact_mut(n).enumerate() {
            row.iter_mut().for_each(|v| *v *= inv_t);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let diag = r0 + i;
            let pos = row[diag] as f64;
            let mut sum = 0.0f64;
            for v in row.iter_mut() {
                let x = (*v - max).exp();
                sum += x as f64;
                *v = x;
            }
            total += sum.ln() + max as f64 - pos;
            let inv_sum = (1.0 / sum) as f32;
            for v in row.iter_mut() {
                *v *= inv_sum * scale;
            }
            row[diag] -= scale;
        }
        if let Some((dq, dk)) = grads.as_mut() {
            // dq_blk = G_blk · k ; dk += G_blkᵀ · q_blk
            matmul_nn(
                pool,
                Mat::new(s, rows, n),
                Mat::new(&k[..n * e], n, e),
                &mut dq[r0 * e..(r0 + rows) * e],
                false,
            );
            matmul_tn(
                pool,
                Mat::new(s, rows, n),
                Mat::new(&q[r0 * e..(r0 + rows) * e], rows, e),
                &mut dk[..n * e],
                true,
            );
        }
        r0 += rows;
    }
    2.0 * t as f64 * total / n as f64
}
