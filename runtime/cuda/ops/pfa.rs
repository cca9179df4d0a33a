//! Launch wrappers of `kernels/pfa.cu`: point feature alignment, the 3-NN interpolation
//! weights of every point among the centers and the projection of group features onto the
//! patch grid. Part of [`PointKernels`].

use super::point::{PointKernels, PointPlan};
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::Device;
use crate::kernel_args;
use crate::Result;

impl PointPlan {
    /// Side of the square receptive field of one grid cell on the map.
    pub fn field(&self) -> usize {
        (self.side - 2).div_ceil(self.grid) + 3
    }
    pub fn project_smem(&self) -> u32 {
        (3 * self.field() * self.field() * 8) as u32
    }
}

impl PointKernels {
    /// 3-NN of every point among the centers, with normalised inverse-distance weights.
    ///
    /// # Safety
    /// Pointers valid for max_points points and the plan's groups.
    pub unsafe fn nn3(
        &self,
        dev: &Device,
        pts: DevPtr<f32>,
        n: DevPtr<i32>,
        centers: DevPtr<f32>,
        nn_idx: DevPtr<i32>,
        nn_w: DevPtr<f32>,
    ) -> Result<()> {
        let m = self.plan.groups as i32;
        let mut a = kernel_args![pts, n, centers, m, nn_idx, nn_w,];
        let blocks = self.plan.max_points.div_ceil(256) as u32;
        dev.launch(
            self.nn3,
            (blocks, 1, 1),
            (256, 1, 1),
            (12 * m) as u32,
            &mut a,
        )
    }

    /// Sparse projection of `f`-wide group features onto the grid² cells.
    ///
    /// # Safety
    /// Pointers valid for the plan's sizes and `f`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn project(
        &self,
        dev: &Device,
        pix_to_point: DevPtr<i32>,
        nn_idx: DevPtr<i32>,
        nn_w: DevPtr<f32>,
        g: DevPtr<f32>,
        f: i32,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let side = self.plan.side as i32;
        let grid = self.plan.grid as i32;
        let field = self.plan.field() as i32;
        let mut a = kernel_args![pix_to_point, nn_idx, nn_w, g, f, side, grid, field, out,];
        let cells = (self.plan.grid * self.plan.grid) as u32;
        dev.launch(
            self.project,
            (cells, 1, 1),
            (256, 1, 1),
            self.plan.project_smem(),
            &mut a,
        )
    }
}
