//! Launch wrappers of `kernels/fusion.cu`: the element-wise steps of RADAR's fusion
//! between its GEMMs and attention (`cuda::stages::fusion`): a copy of one of several
//! sources chosen by a device int (the part's case, read when the graph runs), column
//! means per group of rows (the HyperNetwork's token means), the generated scales
//! (`gelu(z ⊙ s₁)`, `y ⊙ s₂`) and an f32 → bf16 conversion for the fast path.

use half::bf16;

use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

const THREADS: u32 = 256;

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("fusion kernels: {msg}"))
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| cfg_err(format!("{what} = {v} does not fit a kernel int")))
}

/// Grid of a flat kernel over `n` elements (one thread each); `n` may not be 0.
fn grid(n: usize, what: &str) -> Result<(u32, u32, u32)> {
    if n == 0 || n > i64::MAX as usize {
        return Err(cfg_err(format!("{what}: {n} elements")));
    }
    let b = u32::try_from(n.div_ceil(THREADS as usize))
        .map_err(|_| cfg_err(format!("{what}: {n} elements, too many blocks")))?;
    Ok((b, 1, 1))
}

/// The kernels of `kernels/fusion.cu`, looked up once.
pub struct FusionKernels {
    copy_selected: Kernel,
    column_means: Kernel,
    scale_gelu_f32: Kernel,
    scale_gelu_bf16: Kernel,
    scale_cols: Kernel,
    to_bf16: Kernel,
    // Declared last: the functions above belong to it.
    _module: Module,
}

// SAFETY: as for the other kernel sets: handles used from one thread at a time.
unsafe impl Send for FusionKernels {}

impl FusionKernels {
    pub fn new(dev: &Device) -> Result<Self> {
        let m = Module::load(dev, "fusion")?;
        Ok(FusionKernels {
            copy_selected: Kernel::find(&m, "copy_selected_u32")?,
            column_means: Kernel::find(&m, "column_means_f32")?,
            scale_gelu_f32: Kernel::find(&m, "scale_gelu_f32")?,
            scale_gelu_bf16: Kernel::find(&m, "scale_gelu_bf16")?,
            scale_cols: Kernel::find(&m, "scale_cols_f32")?,
            to_bf16: Kernel::find(&m, "to_bf16")?,
            _module: m,
        })
    }

    /// `dst[..words] = src[k·stride ..][..words]` (32-bit words) with
    /// `k = clamp(*sel, 0, max_sel)` read on the device when the work runs.
    ///
    /// # Safety
    /// `src` valid for `max_sel·stride + words` words, `sel` for one int, `dst` for `words`
    /// words, not overlapping the sources.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn copy_selected(
        &self,
        dev: &Device,
        src: DevPtr<u32>,
        stride: usize,
        sel: DevPtr<i32>,
        max_sel: usize,
        dst: DevPtr<u32>,
        words: usize,
    ) -> Result<()> {
        let g = grid(words, "copy_selected")?;
        let max_sel = int(max_sel, "max_sel")?;
        let (stride, n) = (stride as i64, words as i64);
        let mut a = kernel_args![src, stride, sel, max_sel, dst, n,];
        dev.launch(self.copy_selected, g, (THREADS, 1, 1), 0, &mut a)
    }

    /// `out[g][c]` = the mean of column `c` over rows `g·rows ..` of `x` (`groups·rows ×
    /// cols`, packed), summed in row order then divided once (the CPU's order).
    ///
    /// # Safety
    /// `x` valid for `groups·rows·cols` floats, `out` for `groups·cols`.
    pub unsafe fn column_means(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        (groups, rows, cols): (usize, usize, usize),
        out: DevPtr<f32>,
    ) -> Result<()> {
        int(groups * rows * cols, "column means input")?;
        let g = grid(groups * cols, "column_means")?;
        let (r, c, gs) = (
            int(rows, "rows")?,
            int(cols, "cols")?,
            int(groups, "groups")?,
        );
        let mut a = kernel_args![x, r, c, gs, out,];
        dev.launch(self.column_means, g, (THREADS, 1, 1), 0, &mut a)
    }

    /// `out = gelu(z ⊙ s)` (exact erf GELU; `s` per column) over `rows × cols`, f32 out.
    ///
    /// # Safety
    /// `z` and `out` valid for `rows·cols` floats, `s` for `cols`.
    pub unsafe fn scale_gelu(
        &self,
        dev: &Device,
        z: DevPtr<f32>,
        s: DevPtr<f32>,
        (rows, cols): (usize, usize),
        out: DevPtr<f32>,
    ) -> Result<()> {
        let g = grid(rows * cols, "scale_gelu")?;
        let (n, c) = ((rows * cols) as i64, int(cols, "cols")?);
        let mut a = kernel_args![z, s, n, c, out,];
        dev.launch(self.scale_gelu_f32, g, (THREADS, 1, 1), 0, &mut a)
    }

    /// [`FusionKernels::scale_gelu`] with bf16 output.
    ///
    /// # Safety
    /// As [`FusionKernels::scale_gelu`].
    pub unsafe fn scale_gelu_bf16(
        &self,
        dev: &Device,
        z: DevPtr<f32>,
        s: DevPtr<f32>,
        (rows, cols): (usize, usize),
        out: DevPtr<bf16>,
    ) -> Result<()> {
        let g = grid(rows * cols, "scale_gelu_bf16")?;
        let (n, c) = ((rows * cols) as i64, int(cols, "cols")?);
        let mut a = kernel_args![z, s, n, c, out,];
        dev.launch(self.scale_gelu_bf16, g, (THREADS, 1, 1), 0, &mut a)
    }

    /// `dst[r][c] = src[r][c] · s[c]` for `rows × cols`, rows `ld_src` / `ld_dst` apart.
    ///
    /// # Safety
    /// `src`, `dst` valid for their rows, `s` for `cols` floats; no overlap.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scale_cols(
        &self,
        dev: &Device,
        src: DevPtr<f32>,
        ld_src: usize,
        s: DevPtr<f32>,
        (rows, cols): (usize, usize),
        dst: DevPtr<f32>,
        ld_dst: usize,
    ) -> Result<()> {
        if ld_src < cols || ld_dst < cols {
            return Err(cfg_err(format!(
                "scale_cols: rows {ld_src} / {ld_dst} apart for {cols} columns"
            )));
        }
        int(rows * ld_src.max(ld_dst), "scale_cols extent")?;
        let g = grid(rows * cols, "scale_cols")?;
        let (ls, ld) = (int(ld_src, "ld_src")?, int(ld_dst, "ld_dst")?);
        let (r, c) = (int(rows, "rows")?, int(cols, "cols")?);
        let mut a = kernel_args![src, ls, s, r, c, dst, ld,];
        dev.launch(self.scale_cols, g, (THREADS, 1, 1), 0, &mut a)
    }

    /// `dst = bf16(src)` (round to nearest even) for `n` values.
    ///
    /// # Safety
    /// `src` and `dst` valid for `n` values.
    pub unsafe fn to_bf16(
        &self,
        dev: &Device,
        src: DevPtr<f32>,
        dst: DevPtr<bf16>,
        n: usize,
    ) -> Result<()> {
        let g = grid(n, "to_bf16")?;
        let n = n as i64;
        let mut a = kernel_args![src, dst, n,];
        dev.launch(self.to_bf16, g, (THREADS, 1, 1), 0, &mut a)
    }
}
