//! Launch wrappers of `kernels/group_encoder.cu`: the Point-MAE group encoder (two
//! shared-memory MLP stages with max-pooling) from grouped points to group tokens, part of
//! [`PointKernels`]; and [`EncoderBf16Kernels`], the small kernels around the bf16 GEMMs of
//! the fast path (`crate::cuda::stages::group_encoder`).

use half::bf16;

use super::point::{PointKernels, PointPlan};
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

const ENC_THREADS: u32 = 256;
/// Threads of the fast path's one-value-per-thread kernels (`ENC_EW_THREADS`).
const EW_THREADS: u32 = 256;

impl PointPlan {
    pub fn encoder_smem(&self) -> u32 {
        let [c1, c2, c3, d] = self.widths;
        let (s, pc) = (self.group_size, self.chunk);
        ((c1 * s).max(c3 * pc) + c2 * s + c2 + c3 + (pc / 8) * d + d) as u32 * 4
    }
}

impl PointKernels {
    /// Group encoder: `rel` (groups × S × 3) → `out` (groups × d). Weights transposed
    /// (`[in][out]`), see kernels/group_encoder.cu.
    ///
    /// # Safety
    /// Pointers valid for the plan's sizes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn encoder(
        &self,
        dev: &Device,
        rel: DevPtr<f32>,
        w: [DevPtr<f32>; 8],
        out: DevPtr<f32>,
    ) -> Result<()> {
        let s = self.plan.group_size as i32;
        let [c1, c2, c3, d] = self.plan.widths.map(|x| x as i32);
        let pc = self.plan.chunk as i32;
        let mut a = kernel_args![
            rel, s, c1, c2, c3, d, pc, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], out,
        ];
        dev.launch(
            self.encoder,
            (self.plan.groups as u32, 1, 1),
            (ENC_THREADS, 1, 1),
            self.plan.encoder_smem(),
            &mut a,
        )
    }
}

/// The fast path's kernels of `kernels/group_encoder.cu` (module doc there): conv1, the two
/// max-over-group reductions and conv3's per-group bias with ReLU. Activations are
/// row-major `[row][channel]`, `rows = groups × s`.
pub struct EncoderBf16Kernels {
    _module: Module,
    conv1: Kernel,
    max_bf16: Kernel,
    max_bias: Kernel,
    bias_relu: Kernel,
}

fn blocks(n: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(EW_THREADS as usize))
        .map_err(|_| Error::Config(format!("group encoder: {n} values, too many blocks")))
}

fn int(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Config(format!("group encoder: size {n} beyond int")))
}

impl EncoderBf16Kernels {
    pub fn new(dev: &Device) -> Result<Self> {
        let m = Module::load(dev, "group_encoder")?;
        Ok(EncoderBf16Kernels {
            conv1: Kernel::find(&m, "group_conv1_bf16")?,
            max_bf16: Kernel::find(&m, "group_max_bf16")?,
            max_bias: Kernel::find(&m, "group_max_bias_f32")?,
            bias_relu: Kernel::find(&m, "group_bias_relu_bf16")?,
            _module: m,
        })
    }

    /// `h1` (`rows × c1`) = bf16(relu(rel·W1ᵀ + b1)), `w1t` transposed (`[3][c1]`).
    ///
    /// # Safety
    /// `rel` valid for `3 rows`, `w1t` for `3 c1`, `b1` for `c1`, `h1` for `rows × c1`.
    pub unsafe fn conv1(
        &self,
        dev: &Device,
        rel: DevPtr<f32>,
        rows: usize,
        (w1t, b1): (DevPtr<f32>, DevPtr<f32>),
        c1: usize,
        h1: DevPtr<bf16>,
    ) -> Result<()> {
        let (r, c) = (int(rows)?, int(c1)?);
        let mut a = kernel_args![rel, r, c, w1t, b1, h1];
        dev.launch(
            self.conv1,
            (blocks(rows * c1)?, 1, 1),
            (EW_THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// `out` (`groups × c`, bf16) = the max of `x` (`groups·s × c`) over each group's rows.
    ///
    /// # Safety
    /// `x` valid for `groups × s × c`, `out` for `groups × c`.
    pub unsafe fn group_max(
        &self,
        dev: &Device,
        x: DevPtr<bf16>,
        (groups, s, c): (usize, usize, usize),
        out: DevPtr<bf16>,
    ) -> Result<()> {
        let (g, si, ci) = (int(groups)?, int(s)?, int(c)?);
        let mut a = kernel_args![x, g, si, ci, out];
        dev.launch(
            self.max_bf16,
            (blocks(groups * c)?, 1, 1),
            (EW_THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// `out` (`groups × c`, f32) = the max of `x` over each group's rows, plus `bias` (`c`).
    ///
    /// # Safety
    /// `x` valid for `groups × s × c`, `bias` for `c`, `out` for `groups × c`.
    pub unsafe fn group_max_bias(
        &self,
        dev: &Device,
        x: DevPtr<bf16>,
        (groups, s, c): (usize, usize, usize),
        bias: DevPtr<f32>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let (g, si, ci) = (int(groups)?, int(s)?, int(c)?);
        let mut a = kernel_args![x, g, si, ci, bias, out];
        dev.launch(
            self.max_bias,
            (blocks(groups * c)?, 1, 1),
            (EW_THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// In place: `h` (`rows × c`) = bf16(relu(h + u[row / s])), `u` (`rows / s × c`, f32).
    ///
    /// # Safety
    /// `h` valid for `rows × c`, `u` for `rows / s × c` (`rows` a multiple of `s`).
    pub unsafe fn bias_relu(
        &self,
        dev: &Device,
        h: DevPtr<bf16>,
        (rows, s, c): (usize, usize, usize),
        u: DevPtr<f32>,
    ) -> Result<()> {
        let (r, si, ci) = (int(rows)?, int(s)?, int(c)?);
        let mut a = kernel_args![h, r, si, ci, u];
        dev.launch(
            self.bias_relu,
            (blocks(rows * c)?, 1, 1),
            (EW_THREADS, 1, 1),
            0,
            &mut a,
        )
    }
}
