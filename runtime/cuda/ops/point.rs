//! The point-branch kernels (preprocess, FPS, kNN grouping, group encoder, feature
//! alignment): modules loaded and functions looked up once, shared-memory limits set once,
//! launches with typed argument lists (no allocation).

use crate::config::PointConfig;
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

/// Blocks in the FPS thread-block cluster on sm_90+ (portable cluster size).
pub const FPS_CLUSTER: u32 = 8;
const FPS_THREADS: u32 = 1024;
const KNN_WARPS: u32 = 4;
const KNN_TILE: u32 = 1024;
const ENC_THREADS: u32 = 256;
const PRE_THREADS: u32 = 1024;

/// Threads per block of the register FPS kernels (`FPS_REGS_THREADS` in kernels/fps.cu).
pub const FPS_REGS_THREADS: u32 = 512;
/// Register-resident points per thread of the register FPS instances `fps_regs_p{8,16}_f32`.
pub const FPS_REGS_PPT: [u32; 2] = [8, 16];
/// Cluster sizes tried for register FPS, in order: 16 needs the non-portable cluster size (sm_90
/// allows it when a GPC can hold 16 blocks), 8 is portable.
pub const FPS_REGS_CLUSTERS: [u32; 2] = [16, 8];
/// Centers per block, threads per block and candidate capacity per center of select kNN
/// (`KNN_SELECT_C`, `KNN_SELECT_T`, `KNN_SELECT_CAP` in kernels/knn.cu).
pub const KNN_SELECT_CENTERS: u32 = 8;
pub const KNN_SELECT_THREADS: u32 = 512;
pub const KNN_SELECT_CAP: u32 = 1024;

/// Which FPS kernel a launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpsKernel {
    /// `fps_smem_f32`: points in shared memory (cluster of 8 on sm_90, one block before).
    SharedMemory,
    /// `fps_regs_*`: points in registers, winners exchanged with one cluster barrier per step.
    RegistersBarrier,
    /// `fps_regs_*`: winners pushed with `st.async` and awaited on an mbarrier (no cluster
    /// barrier in the loop).
    RegistersMbarrier,
}

/// Which kNN grouping kernel a launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnnKernel {
    /// `knn_heap_f32`: a lane per center with shared-memory heaps.
    LaneHeaps,
    /// `knn_select_f32`: 8 centers per block, bound from slice minima, filter, bitonic sort.
    BoundSelect,
}

/// Kernel choices for [`PointKernels::with_options`]; `None` takes the device default
/// ([`default_kernels`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointOptions {
    pub fps: Option<FpsKernel>,
    pub knn: Option<KnnKernel>,
    /// Cluster size of register FPS (8 or 16); `None`: 16 when the device can co-schedule it,
    /// else 8.
    pub fps_regs_cluster: Option<u32>,
}

/// The default kernels for compute capability `sm` (87, 90, ...): register FPS and
/// bound-select kNN on sm_90 and later (register FPS needs thread-block clusters), the
/// shared-memory FPS and heap kNN before.
pub fn default_kernels(sm: u32) -> (FpsKernel, KnnKernel) {
    if sm >= 90 {
        (FpsKernel::RegistersBarrier, KnnKernel::BoundSelect)
    } else {
        (FpsKernel::SharedMemory, KnnKernel::LaneHeaps)
    }
}

/// Launch geometry of register FPS for one cluster size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fps2Geometry {
    /// Blocks in the cluster (= the grid).
    pub cluster: u32,
    /// Points per thread of the instance to use (one of [`FPS_REGS_PPT`]).
    pub ppt: u32,
    /// Dynamic shared memory per block: the block's chunk of points as float4.
    pub smem: u32,
}

/// The register FPS launch chosen at creation.
#[derive(Clone, Copy, Debug)]
struct FpsRegs {
    f: Kernel,
    geo: Fps2Geometry,
}

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
    /// register FPS geometry for a cluster of `cluster` blocks, or `None` when that cluster size is
    /// not one of [`FPS_REGS_CLUSTERS`] or cannot hold `max_points` in registers.
    pub fn fps_regs_geometry(&self, cluster: u32) -> Option<Fps2Geometry> {
        if !FPS_REGS_CLUSTERS.contains(&cluster) || self.max_points == 0 {
            return None;
        }
        let chunk = self.max_points.div_ceil(cluster as usize);
        let ppt = FPS_REGS_PPT
            .into_iter()
            .find(|&p| chunk <= (p * FPS_REGS_THREADS) as usize)?;
        Some(Fps2Geometry {
            cluster,
            ppt,
            smem: (chunk * 16) as u32,
        })
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

/// Looks the register FPS instance up and picks its cluster size: the requested one, else the
/// first of [`FPS_REGS_CLUSTERS`] that the device can co-schedule (checked with
/// `cuOccupancyMaxActiveClusters`). `Ok(None)`: no cluster size fits (register FPS unavailable).
fn setup_fps_regs(
    dev: &Device,
    module: &Module,
    plan: &PointPlan,
    want: Option<u32>,
) -> Result<Option<FpsRegs>> {
    let tries: &[u32] = match &want {
        Some(c) => std::slice::from_ref(c),
        None => &FPS_REGS_CLUSTERS,
    };
    for &c in tries {
        let Some(geo) = plan.fps_regs_geometry(c) else {
            continue;
        };
        // One instance per entry of FPS_REGS_PPT.
        let f = match geo.ppt {
            8 => Kernel::find(module, "fps_regs_p8_f32")?,
            16 => Kernel::find(module, "fps_regs_p16_f32")?,
            other => {
                return Err(Error::Cuda(format!(
                    "no register FPS instance for {other} points per thread"
                )))
            }
        };
        match fps_regs_fits(dev, f, geo) {
            Ok(true) => return Ok(Some(FpsRegs { f, geo })),
            Ok(false) => {}
            Err(e) if want.is_some() => return Err(e),
            Err(_) => {}
        }
    }
    match want {
        Some(c) => Err(Error::Cuda(format!(
            "register FPS with a cluster of {c} blocks cannot run here ({} points)",
            plan.max_points
        ))),
        None => Ok(None),
    }
}

/// Sets `f`'s shared-memory limit (and the non-portable cluster size when above 8) and asks
/// the device whether one cluster of `geo` can be resident.
fn fps_regs_fits(dev: &Device, f: Kernel, geo: Fps2Geometry) -> Result<bool> {
    dev.cluster_fits(f, geo.cluster, FPS_REGS_THREADS, geo.smem)
}

/// The point kernels of one engine.
pub struct PointKernels {
    _modules: Vec<Module>,
    pub preprocess: Kernel,
    pub fps: Kernel,
    pub knn: Kernel,
    pub encoder: Kernel,
    pub nn3: Kernel,
    pub project: Kernel,
    /// FPS cluster size (0: the single-block path, before sm_90).
    pub fps_cluster: u32,
    /// Kernels that [`PointKernels::fps`] and [`PointKernels::knn`] launch (may be changed
    /// between launches to any available kind, see [`PointKernels::fps_available`]).
    pub fps_kernel: FpsKernel,
    pub knn_kernel: KnnKernel,
    fps_regs: Option<FpsRegs>,
    knn_select: Option<Kernel>,
    pub plan: PointPlan,
}

impl PointKernels {
    /// The kernels with the device's default choices ([`default_kernels`]).
    pub fn new(dev: &Device, plan: PointPlan) -> Result<PointKernels> {
        Self::with_options(dev, plan, PointOptions::default())
    }

    /// The kernels with explicit choices; asking for a register FPS or bound-select kNN kernel the device or plan cannot
    /// run is an error.
    pub fn with_options(dev: &Device, plan: PointPlan, opts: PointOptions) -> Result<PointKernels> {
        let pre = Module::load(dev, "preprocess")?;
        let fps_m = Module::load(dev, "fps")?;
        let knn_m = Module::load(dev, "knn")?;
        let enc_m = Module::load(dev, "group_encoder")?;
        let pfa_m = Module::load(dev, "pfa")?;
        let fps_regs = if dev.cc.0 >= 9 {
            setup_fps_regs(dev, &fps_m, &plan, opts.fps_regs_cluster)?
        } else {
            None
        };
        let knn_select = if plan.knn_select_supported() {
            let f = Kernel::find(&knn_m, "knn_select_f32")?;
            dev.set_max_dynamic_smem(f, plan.knn_select_smem())?;
            Some(f)
        } else {
            None
        };
        let (dfps, dknn) = default_kernels(dev.sm());
        let fps_kernel = match opts.fps {
            Some(k) => k,
            None if fps_regs.is_none() => FpsKernel::SharedMemory,
            None => dfps,
        };
        let knn_kernel = match opts.knn {
            Some(k) => k,
            None if knn_select.is_none() => KnnKernel::LaneHeaps,
            None => dknn,
        };
        let k = PointKernels {
            preprocess: Kernel::find(&pre, "preprocess_cloud_f32")?,
            fps: Kernel::find(&fps_m, "fps_smem_f32")?,
            knn: Kernel::find(&knn_m, "knn_heap_f32")?,
            encoder: Kernel::find(&enc_m, "group_encoder_f32")?,
            nn3: Kernel::find(&pfa_m, "pfa_nn3_f32")?,
            project: Kernel::find(&pfa_m, "pfa_project_f32")?,
            fps_cluster: if dev.cc.0 >= 9 { FPS_CLUSTER } else { 0 },
            fps_kernel,
            knn_kernel,
            fps_regs,
            knn_select,
            _modules: vec![pre, fps_m, knn_m, enc_m, pfa_m],
            plan,
        };
        if !k.fps_available(fps_kernel) || !k.knn_available(knn_kernel) {
            return Err(Error::Cuda(format!(
                "point kernels {fps_kernel:?} / {knn_kernel:?} not available on sm_{} for {} points, k {}",
                dev.sm(),
                k.plan.max_points,
                k.plan.group_size
            )));
        }
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

    /// Whether FPS kind `k` can be launched by these kernels.
    pub fn fps_available(&self, k: FpsKernel) -> bool {
        k == FpsKernel::SharedMemory || self.fps_regs.is_some()
    }
    /// Whether kNN kind `k` can be launched by these kernels.
    pub fn knn_available(&self, k: KnnKernel) -> bool {
        k == KnnKernel::LaneHeaps || self.knn_select.is_some()
    }
    /// The register FPS launch geometry chosen at creation (`None`: register FPS unavailable).
    pub fn fps_regs_geometry(&self) -> Option<Fps2Geometry> {
        self.fps_regs.map(|f| f.geo)
    }

    /// FPS of `groups` centers over `*n` points with [`PointKernels::fps_kernel`]. `work`
    /// (max_points float4) is used only by the shared-memory FPS on the single-block path.
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
        self.fps_with(self.fps_kernel, dev, pts, n, work, out_idx, out_xyz)
    }

    /// FPS with an explicit kernel kind (same contract as [`PointKernels::fps`]).
    ///
    /// # Safety
    /// As [`PointKernels::fps`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fps_with(
        &self,
        kind: FpsKernel,
        dev: &Device,
        pts: DevPtr<f32>,
        n: DevPtr<i32>,
        work: DevPtr<[f32; 4]>,
        out_idx: DevPtr<u32>,
        out_xyz: DevPtr<f32>,
    ) -> Result<()> {
        let m = self.plan.groups as i32;
        if kind != FpsKernel::SharedMemory {
            let Some(f2) = self.fps_regs else {
                return Err(Error::Cuda(format!("{kind:?} is not available here")));
            };
            let xmode: i32 = (kind == FpsKernel::RegistersMbarrier) as i32;
            let mut a = kernel_args![pts, n, m, xmode, out_idx, out_xyz,];
            let c = f2.geo.cluster;
            return dev.launch_cluster(
                f2.f,
                (c, 1, 1),
                (FPS_REGS_THREADS, 1, 1),
                f2.geo.smem,
                c,
                &mut a,
            );
        }
        let in_smem: i32 = (self.fps_cluster > 0) as i32;
        let mut a = kernel_args![pts, n, m, work, in_smem, out_idx, out_xyz,];
        if self.fps_cluster > 0 {
            let c = self.fps_cluster;
            let smem = self.plan.fps_smem(c);
            dev.launch_cluster(self.fps, (c, 1, 1), (FPS_THREADS, 1, 1), smem, c, &mut a)
        } else {
            dev.launch(self.fps, (1, 1, 1), (FPS_THREADS, 1, 1), 0, &mut a)
        }
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
                return Err(Error::Cuda(
                    "select kNN is not available for this plan".into(),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::device::module::find_module;

    fn plan(side: usize, k: u32) -> PointPlan {
        let mut pc = PointConfig::m3dm();
        pc.group_size = k;
        PointPlan::new(&pc, side, 56).unwrap()
    }

    #[test]
    fn fps_regs_geometry_fits_the_default_cloud() {
        let p = plan(224, 128);
        assert_eq!(p.max_points, 50_176);
        // 16 blocks: 3136 points per block, 7 per thread -> the 8-point instance.
        assert_eq!(
            p.fps_regs_geometry(16),
            Some(Fps2Geometry {
                cluster: 16,
                ppt: 8,
                smem: 3136 * 16
            })
        );
        // 8 blocks: 6272 per block, 13 per thread -> the 16-point instance.
        assert_eq!(
            p.fps_regs_geometry(8),
            Some(Fps2Geometry {
                cluster: 8,
                ppt: 16,
                smem: 6272 * 16
            })
        );
        // Only the sizes the kernels are written for.
        for c in [0, 1, 4, 12, 32] {
            assert_eq!(p.fps_regs_geometry(c), None, "cluster {c}");
        }
    }

    #[test]
    fn fps_regs_geometry_capacity_limits() {
        // 16 blocks hold up to 16 * 512 * 16 = 131072 points; 8 blocks half of that.
        let p = plan(362, 128); // 131044 points
        assert_eq!(p.fps_regs_geometry(16).map(|g| g.ppt), Some(16));
        assert_eq!(p.fps_regs_geometry(8), None);
        let p = plan(363, 128); // 131769 points: too many for either
        assert_eq!(p.fps_regs_geometry(16), None);
        // Every geometry fits the register capacity and a 227 KiB shared-memory block.
        for side in [3usize, 10, 100, 224, 256, 362] {
            let p = plan(side, 128);
            for c in FPS_REGS_CLUSTERS {
                if let Some(g) = p.fps_regs_geometry(c) {
                    let chunk = p.max_points.div_ceil(c as usize);
                    assert!(chunk <= (g.ppt * FPS_REGS_THREADS) as usize);
                    assert_eq!(g.smem as usize, chunk * 16);
                    assert!(g.smem <= 227 * 1024);
                    // The smallest instance that fits.
                    if g.ppt > FPS_REGS_PPT[0] {
                        assert!(chunk > (FPS_REGS_PPT[0] * FPS_REGS_THREADS) as usize);
                    }
                }
            }
        }
    }

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
    fn default_kernels_by_arch() {
        assert_eq!(
            default_kernels(87),
            (FpsKernel::SharedMemory, KnnKernel::LaneHeaps)
        );
        assert_eq!(
            default_kernels(90),
            (FpsKernel::RegistersBarrier, KnnKernel::BoundSelect)
        );
        assert_eq!(
            default_kernels(100),
            (FpsKernel::RegistersBarrier, KnnKernel::BoundSelect)
        );
        assert_eq!(PointOptions::default().fps, None);
    }

    #[test]
    fn host_constants_match_the_kernels() {
        let fps = find_module("fps").unwrap().source;
        assert!(fps.contains(&format!("#define FPS_REGS_THREADS {FPS_REGS_THREADS}\n")));
        assert!(fps.contains(&format!(
            "#define FPS_REGS_MAXCL {}\n",
            FPS_REGS_CLUSTERS[0]
        )));
        for p in FPS_REGS_PPT {
            assert!(fps.contains(&format!("fps_regs_p{p}_f32(")), "instance {p}");
            assert!(
                fps.contains(&format!("fps_regs_body<{p}>(")),
                "instance {p}"
            );
        }
        let knn = find_module("knn").unwrap().source;
        assert!(knn.contains(&format!("#define KNN_SELECT_C {KNN_SELECT_CENTERS}\n")));
        assert!(knn.contains(&format!("#define KNN_SELECT_T {KNN_SELECT_THREADS}\n")));
        assert!(knn.contains(&format!("#define KNN_SELECT_CAP {KNN_SELECT_CAP}\n")));
        assert!(knn.contains("knn_select_f32("));
    }
}
