//! The patch-wise InfoNCE of M3DM's UFF training (docs/RADAR-FUSION.md §5b); the dense
//! products its backward pass needs are `cpu::products` (re-exported here).
//!
//! `L = 2T · (1/N) Σ_i (log Σ_j exp(q_i·k_j / T) − q_i·k_i / T)` for `N` L2-normalised
//! queries `q` (RGB) and keys `k` (xyz): PyTorch's `CrossEntropyLoss(q kᵀ / T, arange(N)) ·
//! 2T`, one direction, as the reference code. Computed in blocks of [`BLOCK_ROWS`] queries
//! so the logits never take more than `BLOCK_ROWS × N` floats.
//!
//! Every product goes through `cpu::gemm` on fixed output tiles inside the [`Pool`]: a tile's bits depend on its position only, so results do not depend on
//! the thread count; reductions over rows happen inside one tile's sequential matmul or
//! in a fixed order on the calling thread.

use crate::cpu::gemm::{self, Epilogue, Mat};
use crate::cpu::pool::Pool;
pub use crate::cpu::products::{matmul_nn, matmul_tn, normalize_rows, normalize_rows_backward};

/// Queries per block of logits.
pub const BLOCK_ROWS: usize = 256;

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
