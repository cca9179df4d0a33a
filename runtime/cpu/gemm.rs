//! Dense layers on the CPU: `out = a · wᵀ + bias`, then an optional epilogue, with the
//! weight in PyTorch's `[out_features, in_features]` row-major layout.
//!
//! GEMM crate: `faer` (0.24) `matmul` with `Par::Seq`. Measured on the project's 2-core
//! machine (ARCHITECTURE.md): 0 allocations per call after warm-up and ≈186 GFLOP/s per
//! core; `gemm` 0.19 allocates on every call and faer's own rayon mode allocates too.
//! So faer runs sequentially inside our own pre-started [`Pool`], over a fixed grid of
//! output tiles: a tile's bits depend only on its position, never on the thread count.
//! The epilogue (bias, GELU, ReLU, residual add) runs on each tile right after it is
//! computed, while it is still in cache, instead of as a separate pass.

use super::pool::{Pool, SharedMut};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Rows of the output per tile.
pub const TILE_ROWS: usize = 64;
/// Columns of the output per tile.
pub const TILE_COLS: usize = 256;

/// What happens to a tile after `a · wᵀ + bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Store the result.
    None,
    /// Store GELU (exact, erf) of the result.
    Gelu,
    /// Store ReLU of the result.
    Relu,
    /// Add the result to what `out` holds (residual connection).
    Accumulate,
}

/// A row-major matrix view: `rows × cols`, rows `stride` elements apart.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            stride: cols,
        }
    }
    fn check(&self, what: &str) {
        assert!(
            self.rows == 0 || self.data.len() >= (self.rows - 1) * self.stride + self.cols,
            "{what}: {}×{} (stride {}) does not fit in {} elements",
            self.rows,
            self.cols,
            self.stride,
            self.data.len()
        );
        assert!(self.stride >= self.cols, "{what}: stride below width");
    }
}

/// Exact GELU: x · Φ(x) with Φ through erf, as PyTorch's default `nn.GELU()`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out[rows × w.rows]` (row stride `out_stride`) ⟵ epilogue(a · wᵀ + bias).
///
/// `w` is `[n, k]` row-major (`w.cols == a.cols`). Sizes are checked (a mismatch is a bug
/// in the caller, not a user error, hence a panic).
pub fn linear(
    pool: &Pool,
    a: Mat<'_>,
    w: Mat<'_>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    let (m, k, n) = (a.rows, a.cols, w.rows);
    assert_eq!(
        w.cols, k,
        "linear: weight has {} inputs, activations {}",
        w.cols, k
    );
    a.check("linear input");
    w.check("linear weight");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias length");
    }
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    let tiles_m = m.div_ceil(TILE_ROWS);
    let tiles_n = n.div_ceil(TILE_COLS);
    let out_ptr = SharedMut::new(out);
    pool.run(tiles_m * tiles_n, &|task, _| {
        let (tm, tn) = (task / tiles_n, task % tiles_n);
        let r0 = tm * TILE_ROWS;
        let c0 = tn * TILE_COLS;
        let rows = TILE_ROWS.min(m - r0);
        let cols = TILE_COLS.min(n - c0);
        let lhs =
            MatRef::from_row_major_slice_with_stride(&a.data[r0 * a.stride..], rows, k, a.stride);
        // wᵀ restricted to columns c0..c0+cols: rows of w, viewed transposed.
        let rhs =
            MatRef::from_row_major_slice_with_stride(&w.data[c0 * w.stride..], cols, k, w.stride)
                .transpose();
        // SAFETY: tiles are disjoint; the tile spans rows r0..r0+rows, columns c0..c0+cols.
        let tile = unsafe { out_ptr.slice(r0 * out_stride + c0, (rows - 1) * out_stride + cols) };
        let accumulate = epilogue == Epilogue::Accumulate;
        // SAFETY: the view covers exactly `tile`. Runtime (isize) strides on purpose:
        // faer 0.24's contiguous-stride destination path crashed in its AVX-512 store
        // kernel for row-major outputs (seen with 64×96·96×256).
        let dst = unsafe {
            MatMut::from_raw_parts_mut(tile.as_mut_ptr(), rows, cols, out_stride as isize, 1isize)
        };
        matmul(
            dst,
            if accumulate {
                Accum::Add
            } else {
                Accum::Replace
            },
            lhs.as_dyn_stride(),
            rhs.as_dyn_stride(),
            1.0f32,
            Par::Seq,
        );
        for r in 0..rows {
            let row = &mut tile[r * out_stride..r * out_stride + cols];
            if let Some(b) = bias {
                for (v, b) in row.iter_mut().zip(&b[c0..c0 + cols]) {
                    *v += b;
                }
            }
            match epilogue {
                Epilogue::Gelu => row.iter_mut().for_each(|v| *v = gelu(*v)),
                Epilogue::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
                Epilogue::None | Epilogue::Accumulate => {}
            }
        }
    });
}

/// Gives the calling thread faer's per-thread packing buffers, which faer allocates on a
/// thread's first packed product (one allocation, whatever the shape, measured with the
/// counting allocator). The pool calls this on every thread it runs tasks on, so that with
/// dynamic task assignment no product inside `inspect` allocates, whichever thread runs
/// it. Cheap after the first call (one thread-local flag).
pub fn warm_up_thread() {
    thread_local! {
        static WARM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if WARM.get() {
        return;
    }
    WARM.set(true);
    // The smallest shape measured to take faer's packed path.
    const M: usize = 64;
    const K: usize = 64;
    const N: usize = 256;
    let (a, b, mut out) = (vec![0f32; M * K], vec![0f32; N * K], vec![0f32; M * N]);
    matmul_seq(
        &mut out,
        N,
        Mat::new(&a, M, K),
        Mat::new(&b, N, K),
        true,
        1.0,
        false,
    );
}

/// `out[m×n] = alpha · a[m×k] · b` on the calling thread, where `b` is `[k×n]` or, with
/// `b_transposed`, `[n×k]` read as its transpose. For use inside pool tasks.
pub fn matmul_seq(
    out: &mut [f32],
    out_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    b_transposed: bool,
    alpha: f32,
    accumulate: bool,
) {
    a.check("matmul lhs");
    b.check("matmul rhs");
    let (m, k) = (a.rows, a.cols);
    let n = if b_transposed { b.rows } else { b.cols };
    assert_eq!(
        if b_transposed { b.cols } else { b.rows },
        k,
        "matmul: inner sizes"
    );
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    if m == 0 || n == 0 {
        return;
    }
    let lhs = MatRef::from_row_major_slice_with_stride(a.data, m, k, a.stride);
    let rhs = if b_transposed {
        MatRef::from_row_major_slice_with_stride(b.data, n, k, b.stride)
            .transpose()
            .as_dyn_stride()
    } else {
        MatRef::from_row_major_slice_with_stride(b.data, k, n, b.stride).as_dyn_stride()
    };
    // SAFETY: the view covers rows 0..m of `out` with the checked stride (see `linear`
    // for why runtime strides).
    let dst =
        unsafe { MatMut::from_raw_parts_mut(out.as_mut_ptr(), m, n, out_stride as isize, 1isize) };
    matmul(
        dst,
        if accumulate {
            Accum::Add
        } else {
            Accum::Replace
        },
        lhs.as_dyn_stride(),
        rhs,
        alpha,
        Par::Seq,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn reference(a: &[f32], w: &[f32], bias: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[j] as f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * w[j * k + p] as f64;
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    #[test]
    fn matches_f64_reference_with_every_epilogue() {
        let mut rng = Rng::new(11);
        let (m, k, n) = (130, 77, 300);
        let mut a = vec![0f32; m * k];
        let mut w = vec![0f32; n * k];
        let mut b = vec![0f32; n];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut w, 0.1);
        rng.fill_normal(&mut b, 0.1);
        let want = reference(&a, &w, &b, m, k, n);
        let pool = Pool::new(2);
        for epi in [
            Epilogue::None,
            Epilogue::Gelu,
            Epilogue::Relu,
            Epilogue::Accumulate,
        ] {
            let mut out = vec![1.0f32; m * n];
            linear(
                &pool,
                Mat::new(&a, m, k),
                Mat::new(&w, n, k),
                Some(&b),
                &mut out,
                n,
                epi,
            );
            for (o, r) in out.iter().zip(&want) {
                let r = *r as f32;
                let expect = match epi {
                    Epilogue::None => r,
                    Epilogue::Gelu => gelu(r),
                    Epilogue::Relu => r.max(0.0),
                    Epilogue::Accumulate => r + 1.0,
                };
                assert!((o - expect).abs() < 1e-4, "{epi:?}: {o} vs {expect}");
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_thread_count() {
        let mut rng = Rng::new(5);
        let (m, k, n) = (200, 96, 520);
        let mut a = vec![0f32; m * k];
        let mut w = vec![0f32; n * k];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut w, 1.0);
        let run = |threads| {
            let mut out = vec![0f32; m * n];
            linear(
                &Pool::new(threads),
                Mat::new(&a, m, k),
                Mat::new(&w, n, k),
                None,
                &mut out,
                n,
                Epilogue::None,
            );
            out
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn gelu_matches_known_values() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.])) in float64
        let want = [
            -0.15865525393145707,
            0.34573123063700656,
            1.9544997361036416,
        ];
        for (x, w) in [-1.0f32, 0.5, 2.0].iter().zip(want) {
            assert!((gelu(*x) as f64 - w).abs() < 1e-6);
        }
    }
}
