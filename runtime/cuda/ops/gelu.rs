//! Launch wrapper of `kernels/gelu.cu`: bias + exact (erf) GELU after the fc1 GEMM,
//! launched by the stages and by the GEMM plans' exact-GELU epilogue.

use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

/// Largest grid x dimension.
const MAX_GRID_X: usize = i32::MAX as usize;
const FLAT_THREADS: usize = 256;

/// Bias + exact GELU (`kernels/gelu.cu`).
pub struct Elementwise {
    bias_gelu: Kernel,
    // Declared last: the functions above belong to it.
    _module: Module,
}

// SAFETY: as for `Attention`.
unsafe impl Send for Elementwise {}

/// Grid of a flat kernel over `n` elements (one thread each).
fn flat_grid(what: &str, n: usize) -> Result<(u32, u32, u32)> {
    let blocks = n.div_ceil(FLAT_THREADS);
    if n == 0 || blocks > MAX_GRID_X || n > i64::MAX as usize {
        return Err(Error::Config(format!(
            "{what}: {n} elements is not a launchable size"
        )));
    }
    Ok((blocks as u32, 1, 1))
}

/// Checks a bias + GELU shape: `rows` x `cols` with a bias of `cols`.
pub fn bias_gelu_check(rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 || cols > i32::MAX as usize {
        return Err(Error::Config(format!(
            "bias_gelu: invalid shape {rows} x {cols}"
        )));
    }
    rows.checked_mul(cols)
        .ok_or_else(|| Error::Config(format!("bias_gelu: {rows} x {cols} overflows")))?;
    Ok(())
}

/// Launches `bias_gelu_f32` (function `f` of `kernels/gelu.cu`) on `y`, `rows` x
/// `cols`: `y = gelu(y + bias)`, exact erf GELU. Shared with the GEMM plans.
///
/// # Safety
/// `f` must be `bias_gelu_f32` of a live module; `y` must hold rows x cols and `bias` cols
/// f32 values on `dev`.
pub(crate) unsafe fn launch_bias_gelu(
    dev: &Device,
    f: Kernel,
    y: DevPtr<f32>,
    bias: DevPtr<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    bias_gelu_check(rows, cols)?;
    let n = rows * cols;
    let grid = flat_grid("bias_gelu", n)?;
    let (n, c) = (n as i64, cols as i32);
    let mut a = kernel_args![y, bias, n, c];
    dev.launch(f, grid, (FLAT_THREADS as u32, 1, 1), 0, &mut a)
}

impl Elementwise {
    /// Loads `gelu` for `dev` and looks its kernel up (creation time).
    pub fn new(dev: &Device) -> Result<Self> {
        let module = Module::load(dev, "gelu")?;
        Ok(Self {
            bias_gelu: Kernel::find(&module, "bias_gelu_f32")?,
            _module: module,
        })
    }

    /// The `bias_gelu_f32` handle, for plans that launch it after a GEMM. Valid while
    /// `self` lives.
    pub fn bias_gelu_function(&self) -> Kernel {
        self.bias_gelu
    }

    /// `y = gelu(y + bias)` (exact erf GELU), `y` `rows` x `cols`, `bias` `cols`.
    ///
    /// # Safety
    /// `y` must hold rows x cols and `bias` cols f32 values on `dev`.
    pub unsafe fn bias_gelu_f32(
        &self,
        dev: &Device,
        y: DevPtr<f32>,
        bias: DevPtr<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        launch_bias_gelu(dev, self.bias_gelu, y, bias, rows, cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_shapes_are_checked_on_the_host() {
        assert!(bias_gelu_check(785, 3072).is_ok());
        assert!(bias_gelu_check(785, 0).is_err());
        assert!(bias_gelu_check(usize::MAX, 2).is_err());
        assert!(flat_grid("t", 0).is_err());
        assert_eq!(flat_grid("t", 257).unwrap(), (2, 1, 1));
    }
}
