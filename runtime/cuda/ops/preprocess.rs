//! Launch wrappers of `kernels/preprocess.cu`: [`PointKernels::preprocess`] (plane removal
//! with a given plane, padding, nearest resize and compaction of an organized point cloud
//! in one block), and [`PreprocessKernels`], the `pre_*` kernels of the whole
//! preprocessing of a part driven by a [`PartHeader`] in device memory (used by
//! [`crate::cuda::stages::preprocess::DevicePreprocess`]).

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

// ---------------------------------------------------------------------------------------
// The whole preprocessing of a part (kernels `pre_*`, used by
// `crate::cuda::stages::preprocess::DevicePreprocess`): layouts shared with the kernels
// and one launch method per kernel. Sizes of the part come from the header in device
// memory; the grids are sized by the caller for the largest part.

use bytemuck::{Pod, Zeroable};

use crate::cuda::device::kernel::{CType, DeviceElem};
use crate::cuda::device::module::Module;
use crate::cuda::device::Kernel;

/// Threads per block of the per-pixel kernels (`PRE_BLOCK`).
pub const PRE_BLOCK: u32 = 256;
/// Threads of the single-block kernels (`PRE_THREADS`).
pub const PRE_SINGLE_BLOCK: u32 = PRE_THREADS;

/// One part's sizes as the kernels read them (`PreHeader`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PartHeader {
    /// Input size (1×1 when neither modality is given).
    pub width: i32,
    pub height: i32,
    /// Bytes between RGB rows.
    pub rgb_stride: i32,
    /// Floats between cloud rows.
    pub cloud_stride: i32,
    pub has_rgb: i32,
    pub has_cloud: i32,
    /// The working image: the padded square (Full) or the input size (AlreadyClean).
    pub work_width: i32,
    pub work_height: i32,
    /// Position of the input in the working image.
    pub top: i32,
    pub left: i32,
    pub pad: [i32; 2],
}

/// A plane `n·p + d = 0` with its inlier count (`PrePlane`; `ok` 0: no plane).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PlaneRec {
    pub n: [f64; 3],
    pub d: f64,
    pub count: u32,
    pub ok: u32,
}

/// The per-part scratch the kernels share (`PreState`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PreState {
    pub any_valid: u32,
    pub any_nonfinite: u32,
    pub rgb_differs: u32,
    pub n_border: u32,
    pub emptied: u32,
    pub pad: u32,
    /// `(size << 32) | (0xffffffff − root)` of the largest cluster (0: none).
    pub best_cluster: u64,
    /// The background plane removed (`ok` 0: none).
    pub plane: PlaneRec,
}

static_assertions::const_assert_eq!(std::mem::size_of::<PartHeader>(), 48);
static_assertions::const_assert_eq!(std::mem::size_of::<PlaneRec>(), 40);
static_assertions::const_assert_eq!(std::mem::size_of::<PreState>(), 72);

unsafe impl DeviceElem for PartHeader {
    const C_TYPE: CType = CType::Struct("PreHeader");
}
unsafe impl DeviceElem for PlaneRec {
    const C_TYPE: CType = CType::Struct("PrePlane");
}
unsafe impl DeviceElem for PreState {
    const C_TYPE: CType = CType::Struct("PreState");
}
/// Blocks of `PRE_BLOCK` threads covering `n` items.
pub fn blocks_for(n: usize) -> u32 {
    n.div_ceil(PRE_BLOCK as usize).max(1) as u32
}

/// The `pre_*` kernels, looked up once.
pub struct PreprocessKernels {
    reset: Kernel,
    load: Kernel,
    border: Kernel,
    ransac_hyp: Kernel,
    ransac_refit: Kernel,
    plane_remove: Kernel,
    cluster_merge: Kernel,
    cluster_resolve: Kernel,
    cluster_best: Kernel,
    cluster_keep: Kernel,
    rgb_coeffs: Kernel,
    rgb_h: Kernel,
    rgb_v: Kernel,
    compact: Kernel,
    // Declared after its kernels: dropped last.
    _module: Module,
}

impl PreprocessKernels {
    pub fn new(dev: &Device) -> Result<Self> {
        let m = Module::load(dev, "preprocess")?;
        Ok(PreprocessKernels {
            reset: Kernel::find(&m, "pre_reset")?,
            load: Kernel::find(&m, "pre_load")?,
            border: Kernel::find(&m, "pre_border")?,
            ransac_hyp: Kernel::find(&m, "pre_ransac_hyp")?,
            ransac_refit: Kernel::find(&m, "pre_ransac_refit")?,
            plane_remove: Kernel::find(&m, "pre_plane_remove")?,
            cluster_merge: Kernel::find(&m, "pre_cluster_merge")?,
            cluster_resolve: Kernel::find(&m, "pre_cluster_resolve")?,
            cluster_best: Kernel::find(&m, "pre_cluster_best")?,
            cluster_keep: Kernel::find(&m, "pre_cluster_keep")?,
            rgb_coeffs: Kernel::find(&m, "pre_rgb_coeffs")?,
            rgb_h: Kernel::find(&m, "pre_rgb_h")?,
            rgb_v: Kernel::find(&m, "pre_rgb_v")?,
            compact: Kernel::find(&m, "pre_compact")?,
            _module: m,
        })
    }

    /// `pre_reset`: the state zeroed.
    ///
    /// # Safety
    /// `st` valid for one [`PreState`].
    pub unsafe fn reset(&self, dev: &Device, st: DevPtr<PreState>) -> Result<()> {
        let mut a = kernel_args![st];
        dev.launch(self.reset, (1, 1, 1), (1, 1, 1), 0, &mut a)
    }

    /// `pre_load` over `max_work_pixels` threads.
    ///
    /// # Safety
    /// `cloud` and `rgb` valid for the header's sizes, `wcloud` for 3 floats per working
    /// pixel, `header` and `st` for one element.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn load(
        &self,
        dev: &Device,
        max_work_pixels: usize,
        header: DevPtr<PartHeader>,
        cloud: DevPtr<f32>,
        rgb: DevPtr<u8>,
        wcloud: DevPtr<f32>,
        st: DevPtr<PreState>,
    ) -> Result<()> {
        let mut a = kernel_args![header, cloud, rgb, wcloud, st];
        let g = blocks_for(max_work_pixels);
        dev.launch(self.load, (g, 1, 1), (PRE_BLOCK, 1, 1), 0, &mut a)
    }

    /// `pre_border`: the frame's points into `border`.
    ///
    /// # Safety
    /// `border` valid for every frame pixel of the largest part.
    pub unsafe fn border(
        &self,
        dev: &Device,
        header: DevPtr<PartHeader>,
        border_px: i32,
        wcloud: DevPtr<f32>,
        border: DevPtr<i32>,
        st: DevPtr<PreState>,
    ) -> Result<()> {
        let mut a = kernel_args![header, border_px, wcloud, border, st];
        dev.launch(self.border, (1, 1, 1), (PRE_SINGLE_BLOCK, 1, 1), 0, &mut a)
    }

    /// `pre_ransac_hyp`: `iterations` hypotheses into `hyps`.
    ///
    /// # Safety
    /// `hyps` valid for `iterations` planes; the other buffers as for [`Self::border`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn ransac_hyp(
        &self,
        dev: &Device,
        iterations: u32,
        wcloud: DevPtr<f32>,
        border: DevPtr<i32>,
        st: DevPtr<PreState>,
        seed: u64,
        draws: i32,
        threshold: f32,
        hyps: DevPtr<PlaneRec>,
    ) -> Result<()> {
        let mut a = kernel_args![wcloud, border, st, seed, draws, threshold, hyps];
        dev.launch(
            self.ransac_hyp,
            (iterations.max(1), 1, 1),
            (PRE_BLOCK, 1, 1),
            0,
            &mut a,
        )
    }

    /// `pre_ransac_refit`: the plane into the state.
    ///
    /// # Safety
    /// As [`Self::ransac_hyp`]; `inliers` valid for 3 floats per frame pixel.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn ransac_refit(
        &self,
        dev: &Device,
        wcloud: DevPtr<f32>,
        border: DevPtr<i32>,
        hyps: DevPtr<PlaneRec>,
        iterations: i32,
        threshold: f32,
        inliers: DevPtr<f32>,
        st: DevPtr<PreState>,
    ) -> Result<()> {
        let mut a = kernel_args![wcloud, border, hyps, iterations, threshold, inliers, st];
        dev.launch(
            self.ransac_refit,
            (1, 1, 1),
            (PRE_SINGLE_BLOCK, 1, 1),
            0,
            &mut a,
        )
    }

    /// `pre_plane_remove`, `pre_cluster_merge`, `pre_cluster_resolve`, `pre_cluster_best`
    /// and `pre_cluster_keep` in order: plane removal and the largest cluster.
    ///
    /// # Safety
    /// `labels` and `sizes` valid for every working pixel of the largest part.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn clean(
        &self,
        dev: &Device,
        max_work_pixels: usize,
        header: DevPtr<PartHeader>,
        st: DevPtr<PreState>,
        (plane_distance, eps2, min_points): (f32, f32, i32),
        wcloud: DevPtr<f32>,
        labels: DevPtr<u32>,
        sizes: DevPtr<u32>,
    ) -> Result<()> {
        let g = (blocks_for(max_work_pixels), 1, 1);
        let b = (PRE_BLOCK, 1, 1);
        let mut a = kernel_args![header, st, plane_distance, wcloud, labels, sizes];
        dev.launch(self.plane_remove, g, b, 0, &mut a)?;
        let mut a = kernel_args![header, wcloud, eps2, labels];
        dev.launch(self.cluster_merge, g, b, 0, &mut a)?;
        let mut a = kernel_args![header, labels, sizes];
        dev.launch(self.cluster_resolve, g, b, 0, &mut a)?;
        let mut a = kernel_args![header, sizes, st];
        dev.launch(self.cluster_best, g, b, 0, &mut a)?;
        let mut a = kernel_args![header, labels, min_points, wcloud, st];
        dev.launch(self.cluster_keep, g, b, 0, &mut a)
    }

    /// `pre_rgb_coeffs`, `pre_rgb_h`, `pre_rgb_v`: the network's RGB input.
    ///
    /// # Safety
    /// Tables valid for `out` entries (`out · taps` weights), `tmp` for `max_work_rows ·
    /// out · 3` floats, `dst` for `3 · out²`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rgb(
        &self,
        dev: &Device,
        header: DevPtr<PartHeader>,
        (rgb, cloud, wcloud, st): (DevPtr<u8>, DevPtr<f32>, DevPtr<f32>, DevPtr<PreState>),
        clean: bool,
        (out, taps, max_work_rows): (usize, usize, usize),
        (first_x, w_x, first_y, w_y): (DevPtr<i32>, DevPtr<f32>, DevPtr<i32>, DevPtr<f32>),
        tmp: DevPtr<f32>,
        (mean, std): ([f32; 3], [f32; 3]),
        dst: DevPtr<f32>,
    ) -> Result<()> {
        let (o, t) = (out as i32, taps as i32);
        let mut a = kernel_args![header, o, t, first_x, w_x, first_y, w_y];
        dev.launch(
            self.rgb_coeffs,
            (blocks_for(out), 2, 1),
            (PRE_BLOCK, 1, 1),
            0,
            &mut a,
        )?;
        let clean = i32::from(clean);
        let mut a = kernel_args![header, rgb, cloud, wcloud, st, clean, o, t, first_x, w_x, tmp];
        let g = blocks_for(max_work_rows * out);
        dev.launch(self.rgb_h, (g, 1, 1), (PRE_BLOCK, 1, 1), 0, &mut a)?;
        let [m0, m1, m2] = mean;
        let [s0, s1, s2] = std;
        let mut a = kernel_args![header, tmp, o, t, first_y, w_y, m0, m1, m2, s0, s1, s2, dst];
        dev.launch(
            self.rgb_v,
            (blocks_for(out * out), 1, 1),
            (PRE_BLOCK, 1, 1),
            0,
            &mut a,
        )
    }

    /// `pre_compact`: points, pixels, pixel map, count and status word.
    ///
    /// # Safety
    /// `pts` valid for `3 · out²` floats, `pix` and `pixel_map` for `out²`, `count` and
    /// `status` for one.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn compact(
        &self,
        dev: &Device,
        header: DevPtr<PartHeader>,
        wcloud: DevPtr<f32>,
        st: DevPtr<PreState>,
        out: usize,
        min_points: i32,
        (pts, pix, pixel_map, count): (DevPtr<f32>, DevPtr<i32>, DevPtr<i32>, DevPtr<i32>),
        status: DevPtr<u32>,
    ) -> Result<()> {
        let o = out as i32;
        let mut a =
            kernel_args![header, wcloud, st, o, min_points, pts, pix, pixel_map, count, status];
        dev.launch(self.compact, (1, 1, 1), (PRE_SINGLE_BLOCK, 1, 1), 0, &mut a)
    }
}
