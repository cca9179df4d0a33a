//! Launch wrapper of `kernels/preprocess.cu`: plane removal, padding, nearest resize and
//! compaction of an organized point cloud in one block. Part of [`PointKernels`].

use super::point::PointKernels;
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::Device;
use crate::kernel_args;
use crate::Result;

const PRE_THREADS: u32 = 1024;

impl PointKernels {
    /// Plane mask, pad, nearest resize to `side`², compaction. `plane` (a, b, c, d) and
    /// `keep` (h×w bytes) may be null. Outputs: `pts` (≤ side²×3), `pix`, `pix_to_point`
    /// (side²), `count` (1 int).
    ///
    /// # Safety
    /// Every pointer must be valid for the sizes above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn preprocess(
        &self,
        dev: &Device,
        cloud: DevPtr<f32>,
        (h, w, stride): (i32, i32, i32),
        plane: DevPtr<f32>,
        plane_dist: f32,
        keep: DevPtr<u8>,
        (pad_side, off_r, off_c): (i32, i32, i32),
        pts: DevPtr<f32>,
        pix: DevPtr<i32>,
        pix_to_point: DevPtr<i32>,
        count: DevPtr<i32>,
    ) -> Result<()> {
        let side = self.plan.side as i32;
        let mut a = kernel_args![
            cloud,
            h,
            w,
            stride,
            plane,
            plane_dist,
            keep,
            pad_side,
            off_r,
            off_c,
            side,
            pts,
            pix,
            pix_to_point,
            count,
        ];
        dev.launch(self.preprocess, (1, 1, 1), (PRE_THREADS, 1, 1), 0, &mut a)
    }
}
