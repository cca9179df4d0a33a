//! A dense layer's weight packed once for the products of `inspect` ([`PackedWeight`]),
//! in f32 ([`PackedF32`]: the same bits as packing it in every call) or in bf16
//! ([`PackedBf16`]: the bf16 path and its error bound, AVX512-BF16 CPUs only), and the one
//! function that runs a dense layer on whichever form it has ([`dense`]).

use super::gemm::{linear, linear_packed, linear_packed_seq, Epilogue, Mat, PackedF32};
use super::gemm_bf16::{linear_bf16, PackedBf16};
use super::pool::Pool;

/// Arithmetic of the packed dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DensePrecision {
    F32,
    Bf16,
}

/// A weight `[n, k]` (PyTorch layout) packed for one of the kernels.
pub enum PackedWeight {
    F32(PackedF32),
    Bf16(PackedBf16),
}

impl PackedWeight {
    /// `w` packed for `precision`; `None` for bf16 where the CPU has no AVX512-BF16.
    pub fn new(w: Mat<'_>, precision: DensePrecision) -> Option<PackedWeight> {
        match precision {
            DensePrecision::F32 => Some(PackedWeight::F32(PackedF32::new(w))),
            DensePrecision::Bf16 => PackedBf16::new(w).map(PackedWeight::Bf16),
        }
    }
}

/// `out ⟵ epilogue(a · wᵀ + bias)` (as [`linear`]) through `packed` when given, else
/// through `w` packed on the fly. `packed` must hold `w`.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    pool: &Pool,
    a: Mat<'_>,
    w: Mat<'_>,
    packed: Option<&PackedWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    match packed {
        Some(PackedWeight::F32(p)) => linear_packed(pool, a, p, bias, out, out_stride, epilogue),
        Some(PackedWeight::Bf16(p)) => linear_bf16(pool, a, p, bias, out, out_stride, epilogue),
        None => linear(pool, a, w, bias, out, out_stride, epilogue),
    }
}

/// [`dense`] for use inside a pool task: a packed f32 weight's product runs on this
/// thread as one region ([`linear_packed_seq`]; the same bits), the other forms as
/// [`dense`] (whose pool runs them inline there).
#[allow(clippy::too_many_arguments)]
pub fn dense_in_task(
    pool: &Pool,
    a: Mat<'_>,
    w: Mat<'_>,
    packed: Option<&PackedWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    match packed {
        Some(PackedWeight::F32(p)) => linear_packed_seq(a, p, bias, out, out_stride, epilogue),
        _ => dense(pool, a, w, packed, bias, out, out_stride, epilogue),
    }
}
