//! Launch wrappers of `kernels/knn.cu`: kNN grouping of the points around each FPS
//! center, the lane-heap kernel and the bound-select kernel, with their shared-memory
//! sizes. Part of [`PointKernels`].

use super::point::{PointKernels, PointPlan};
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::Device;
use crate::kernel_args;
use crate::{DeviceError, Error, Result};

const KNN_WARPS: u32 = 4;
const KNN_TILE: u32 = 1024;
/// Centers per block, threads per block and candidate capacity per center of select kNN
/// (`KNN_SELECT_C`, `KNN_SELECT_T`, `KNN_SELECT_CAP` in kernels/knn.cu).
pub const KNN_SELECT_CENTERS: u32 = 8;
pub const KNN_SELECT_THREADS: u32 = 512;
pub const KNN_SELECT_CAP: u32 = 1024;

/// Which kNN grouping kernel a launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnnKernel {
    /// `knn_heap_f32`: a lane per center with shared-memory heaps.
    LaneHeaps,
    /// `knn_select_f32`: 8 centers per block, bound from slice minima, filter, bitonic sort.
    BoundSelect,
}

impl PointPlan {
    pub fn knn_smem(&self) -> u32 {
        (KNN_WARPS as usize * 32 * self.group_size * 8 + KNN_TILE as usize * 12) as u32
    }
    /// Whether select kNN can serve this plan: k within one slice minimum per thread, and the
    /// candidate buffer at least twice k (so each overflow round drops >= k candidates).
    pub fn knn_select_supported(&self) -> bool {
        self.group_size >= 1
            && self.group_size <= KNN_SELECT_THREADS as usize
            && 2 * self.group_size <= KNN_SELECT_CAP as usize
    }
    /// Dynamic shared memory of select kNN: the candidate buffers (u64 keys).
    pub fn knn_select_smem(&self) -> u32 {
        KNN_SELECT_CENTERS * KNN_SELECT_CAP * 8
    }
    /// Blocks of a select kNN launch.
    pub fn knn_select_blocks(&self) -> u32 {
        self.groups.div_ceil(KNN_SELECT_CENTERS as usize) as u32
    }
}

impl PointKernels {
    /// Whether kNN kind `k` can be launched by these kernels.
    pub fn knn_available(&self, k: KnnKernel) -> bool {
        k == KnnKernel::LaneHeaps || self.knn_select.is_some()
    }

    /// kNN grouping with [`PointKernels::knn_kernel`]: `group_size` nearest points of each
    /// center, sorted by (distance, index); indices and coordinates relative to the center.
    ///
    /// # Safety
    /// Pointers valid for the plan's sizes; `*n ≥ group_size`.
    pub unsafe fn knn(
        &self,
        dev: &Device,
        pts: DevPtr<f32>,
        n: DevPtr<i32>,
        centers: DevPtr<f32>,
        out_idx: DevPtr<u32>,
        out_rel: DevPtr<f32>,
    ) -> Result<()> {
        self.knn_with(self.knn_kernel, dev, pts, n, centers, out_idx, out_rel)
    }

    /// kNN grouping with an explicit kernel kind (same contract as [`PointKernels::knn`]).
    ///
    /// # Safety
    /// As [`PointKernels::knn`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn knn_with(
        &self,
        kind: KnnKernel,
        dev: &Device,
        pts: DevPtr<f32>,
        n: DevPtr<i32>,
        centers: DevPtr<f32>,
        out_idx: DevPtr<u32>,
        out_rel: DevPtr<f32>,
    ) -> Result<()> {
        let m = self.plan.groups as i32;
        let k = self.plan.group_size as i32;
        if kind == KnnKernel::BoundSelect {
            let Some(f) = self.knn_select else {
                return Err(Error::Device(DeviceError::Unsupported(
                    "select kNN is not available for this plan".into(),
                )));
            };
            let mut a = kernel_args![pts, n, centers, m, k, out_idx, out_rel,];
            let blocks = self.plan.knn_select_blocks();
            return dev.launch(
                f,
                (blocks, 1, 1),
                (KNN_SELECT_THREADS, 1, 1),
                self.plan.knn_select_smem(),
                &mut a,
            );
        }
        let mut a = kernel_args![pts, n, centers, m, k, out_idx, out_rel,];
        let blocks = self.plan.groups.div_ceil(32) as u32;
        dev.launch(
            self.knn,
            (blocks, 1, 1),
            (KNN_WARPS * 32, 1, 1),
            self.plan.knn_smem(),
            &mut a,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::point::m3dm_plan as plan;
    use crate::cuda::device::module::find_module;

    #[test]
    fn knn_select_plan() {
        let p = plan(224, 128);
        assert!(p.knn_select_supported());
        assert_eq!(p.knn_select_blocks(), 128);
        assert_eq!(p.knn_select_smem(), 65_536);
        assert!(plan(224, 512).knn_select_supported());
        assert!(!plan(224, 520).knn_select_supported());
        let mut q = plan(224, 128);
        q.groups = 1001;
        assert_eq!(q.knn_select_blocks(), 126);
    }

    #[test]
    fn host_constants_match_the_kernels() {
        let knn = find_module("knn").unwrap().source;
        assert!(knn.contains(&format!("#define KNN_SELECT_C {KNN_SELECT_CENTERS}\n")));
        assert!(knn.contains(&format!("#define KNN_SELECT_T {KNN_SELECT_THREADS}\n")));
        assert!(knn.contains(&format!("#define KNN_SELECT_CAP {KNN_SELECT_CAP}\n")));
        assert!(knn.contains("knn_select_f32("));
    }
}
