//! The point-branch kernels (preprocess, FPS, kNN grouping, group encoder, feature
//! alignment): modules loaded and functions looked up once, shared-memory limits set once,
//! launches with fixed argument arrays (no allocation).

use std::ffi::c_void;

use cudarc::driver::sys::CUfunction;

use super::arena::DevPtr;
use super::device::{kptr, Device};
use super::module::Module;
use crate::config::PointConfig;
use crate::{Error, Result};

/// Blocks in the FPS thread-block cluster on sm_90+ (portable cluster size).
pub const FPS_CLUSTER: u32 = 8;
const FPS_THREADS: u32 = 1024;
const KNN_WARPS: u32 = 4;
const KNN_TILE: u32 = 1024;
const ENC_THREADS: u32 = 256;
const PRE_THREADS: u32 = 1024;

/// Sizes the point kernels are planned for.
#[derive(Clone, Debug)]
pub struct PointPlan {
    /// Most points a part can have (out_side², 50 176 at 224).
    pub max_points: usize,
    pub groups: usize,
    pub group_size: usize,
    /// Encoder widths c1, c2, c3 and token width d.
    pub widths: [usize; 4],
    /// Points per chunk in the encoder's conv3/conv4 stage.
    pub chunk: usize,
    /// Side of the resized map (224) and of the patch grid (56).
    pub side: usize,
    pub grid: usize,
}

impl PointPlan {
    pub fn new(pc: &PointConfig, side: usize, grid: usize) -> Result<PointPlan> {
        let s = pc.group_size as usize;
        let [c1, c2, c3] = pc.encoder_widths.map(|w| w as usize);
        let d = pc.dim as usize;
        let chunk = [32, 16, 8]
            .into_iter()
            .find(|c| s.is_multiple_of(*c))
            .unwrap_or(0);
        if chunk == 0 || [c1, c2, c3, d].iter().any(|w| w % 8 != 0) {
            return Err(Error::Config(format!(
                "CUDA group encoder needs group size and widths that are multiples of 8 (S {s}, widths {c1} {c2} {c3} {d})"
            )));
        }
        if side < 3 || grid == 0 {
            return Err(Error::Config(format!("alignment map {side} / grid {grid}")));
        }
        Ok(PointPlan {
            max_points: side * side,
            groups: pc.num_groups as usize,
            group_size: s,
            widths: [c1, c2, c3, d],
            chunk,
            side,
            grid,
        })
    }

    pub fn fps_smem(&self, cluster: u32) -> u32 {
        (self.max_points.div_ceil(cluster as usize) * 16) as u32
    }
    pub fn knn_smem(&self) -> u32 {
        (KNN_WARPS as usize * 32 * self.group_size * 8 + KNN_TILE as usize * 12) as u32
    }
    pub fn encoder_smem(&self) -> u32 {
        let [c1, c2, c3, d] = self.widths;
        let (s, pc) = (self.group_size, self.chunk);
        ((c1 * s).max(c3 * pc) + c2 * s + c2 + c3 + (pc / 8) * d + d) as u32 * 4
    }
    /// Side of the square receptive field of one grid cell on the map.
    pub fn field(&self) -> usize {
        (self.side - 2).div_ceil(self.grid) + 3
    }
    pub fn project_smem(&self) -> u32 {
        (3 * self.field() * self.field() * 8) as u32
    }
}

/// The point kernels of one engine.
pub struct PointKernels {
    _modules: Vec<Module>,
    pub preprocess: CUfunction,
    pub fps: CUfunction,
    pub knn: CUfunction,
    pub encoder: CUfunction,
    pub nn3: CUfunction,
    pub project: CUfunction,
    /// FPS cluster size (0: the single-block path, before sm_90).
    pub fps_cluster: u32,
    pub plan: PointPlan,
}

impl PointKernels {
    pub fn new(dev: &Device, plan: PointPlan) -> Result<PointKernels> {
        let pre = Module::load(dev, "preprocess")?;
        let fps_m = Module::load(dev, "fps")?;
        let knn_m = Module::load(dev, "knn")?;
        let enc_m = Module::load(dev, "group_encoder")?;
        let pfa_m = Module::load(dev, "pfa")?;
        let k = PointKernels {
            preprocess: pre.function("preprocess_cloud_f32")?,
            fps: fps_m.function("fps_f32")?,
            knn: knn_m.function("knn_f32")?,
            encoder: enc_m.function("group_encoder_f32")?,
            nn3: pfa_m.function("pfa_nn3_f32")?,
            project: pfa_m.function("pfa_project_f32")?,
            fps_cluster: if dev.cc.0 >= 9 { FPS_CLUSTER } else { 0 },
            _modules: vec![pre, fps_m, knn_m, enc_m, pfa_m],
            plan,
        };
        if k.fps_cluster > 0 {
            dev.set_max_dynamic_smem(k.fps, k.plan.fps_smem(k.fps_cluster))?;
        }
        dev.set_max_dynamic_smem(k.knn, k.plan.knn_smem())?;
        dev.set_max_dynamic_smem(k.encoder, k.plan.encoder_smem())?;
        dev.set_max_dynamic_smem(k.project, k.plan.project_smem())?;
        Ok(k)
    }

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
        let mut a: [*mut c_void; 15] = [
            kptr(&cloud),
            kptr(&h),
            kptr(&w),
            kptr(&stride),
            kptr(&plane),
            kptr(&plane_dist),
            kptr(&keep),
            kptr(&pad_side),
            kptr(&off_r),
            kptr(&off_c),
            kptr(&side),
            kptr(&pts),
            kptr(&pix),
            kptr(&pix_to_point),
            kptr(&count),
        ];
        dev.launch(self.preprocess, (1, 1, 1), (PRE_THREADS, 1, 1), 0, &mut a)
    }

    /// FPS of `groups` centers over `*n` points. `work` (max_points float4) is used only on
    /// the single-block path.
    ///
    /// # Safety
    /// Pointers valid for max_points points and `groups` centers; `*n ≥ groups`.
    pub unsafe fn fps(
        &self,
        dev: &Device,
        pts: DevPtr<f32>,
        n: DevPtr<i32>,
        work: DevPtr<[f32; 4]>,
        out_idx: DevPtr<u32>,
        out_xyz: DevPtr<f32>,
    ) -> Result<()> {
        let m = self.plan.groups as i32;
        let in_smem: i32 = (self.fps_cluster > 0) as i32;
        let mut a: [*mut c_void; 7] = [
            kptr(&pts),
            kptr(&n),
            kptr(&m),
            kptr(&work),
            kptr(&in_smem),
            kptr(&out_idx),
            kptr(&out_xyz),
        ];
        if self.fps_cluster > 0 {
            let c = self.fps_cluster;
            let smem = self.plan.fps_smem(c);
            dev.launch_cluster(self.fps, (c, 1, 1), (FPS_THREADS, 1, 1), smem, c, &mut a)
        } else {
            dev.launch(self.fps, (1, 1, 1), (FPS_THREADS, 1, 1), 0, &mut a)
        }
    }

    /// kNN grouping: `group_size` nearest points of each center, sorted; indices and
    /// coordinates relative to the center.
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
        let m = self.plan.groups as i32;
        let k = self.plan.group_size as i32;
        let mut a: [*mut c_void; 7] = [
            kptr(&pts),
            kptr(&n),
            kptr(&centers),
            kptr(&m),
            kptr(&k),
            kptr(&out_idx),
            kptr(&out_rel),
        ];
        let blocks = self.plan.groups.div_ceil(32) as u32;
        dev.launch(
            self.knn,
            (blocks, 1, 1),
            (KNN_WARPS * 32, 1, 1),
            self.plan.knn_smem(),
            &mut a,
        )
    }

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
        let mut a: [*mut c_void; 16] = [
            kptr(&rel),
            kptr(&s),
            kptr(&c1),
            kptr(&c2),
            kptr(&c3),
            kptr(&d),
            kptr(&pc),
            kptr(&w[0]),
            kptr(&w[1]),
            kptr(&w[2]),
            kptr(&w[3]),
            kptr(&w[4]),
            kptr(&w[5]),
            kptr(&w[6]),
            kptr(&w[7]),
            kptr(&out),
        ];
        dev.launch(
            self.encoder,
            (self.plan.groups as u32, 1, 1),
            (ENC_THREADS, 1, 1),
            self.plan.encoder_smem(),
            &mut a,
        )
    }

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
        let mut a: [*mut c_void; 6] = [
            kptr(&pts),
            kptr(&n),
            kptr(&centers),
            kptr(&m),
            kptr(&nn_idx),
            kptr(&nn_w),
        ];
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
        let mut a: [*mut c_void; 9] = [
            kptr(&pix_to_point),
            kptr(&nn_idx),
            kptr(&nn_w),
            kptr(&g),
            kptr(&f),
            kptr(&side),
            kptr(&grid),
            kptr(&field),
            kptr(&out),
        ];
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
