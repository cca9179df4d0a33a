//! Launch wrapper of `kernels/group_encoder.cu`: the Point-MAE group encoder (two
//! shared-memory MLP stages with max-pooling) from grouped points to group tokens. Part of
//! [`PointKernels`].

use super::point::{PointKernels, PointPlan};
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::Device;
use crate::kernel_args;
use crate::Result;

const ENC_THREADS: u32 = 256;

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
