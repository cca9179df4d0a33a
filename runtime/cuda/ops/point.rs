//! The point branch's kernel set: the plan its kernels are sized for, the kernel choices,
//! and [`PointKernels`], which loads `preprocess`, `fps`, `knn`, `group_encoder` and `pfa`
//! once, looks their kernels up and sets their shared-memory limits. The launches are in
//! the file of each kernel source: [`super::preprocess`], [`super::fps`], [`super::knn`],
//! [`super::group_encoder`], [`super::pfa`] (typed argument lists, no allocation).

use super::fps::{setup_fps_regs, FpsKernel, FpsRegs, FPS_CLUSTER};
use super::knn::KnnKernel;
use crate::config::PointConfig;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::{DeviceError, Error, Result};

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

/// The default kernels for compute capability `sm` (87, 90, ...), from the roofline argument
/// in bench/gpu/ROOFLINE.md until a GPU measures them: register FPS on sm_90 and later (it
/// needs thread-block clusters), the shared-memory FPS before; bound-select kNN everywhere
/// (the lane-heap kernel fills 32 blocks only: on sm_87 one 140 KiB block per SM, and it
/// cannot launch on sm_86/89, 99 KiB a block).
pub fn default_kernels(sm: u32) -> (FpsKernel, KnnKernel) {
    let fps = if sm >= 90 {
        FpsKernel::RegistersBarrier
    } else {
        FpsKernel::SharedMemory
    };
    (fps, KnnKernel::BoundSelect)
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
    pub(super) fps_regs: Option<FpsRegs>,
    pub(super) knn_select: Option<Kernel>,
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
            return Err(Error::Device(DeviceError::Unsupported(format!(
                "point kernels {fps_kernel:?} / {knn_kernel:?} not available on sm_{} for {} points, k {}",
                dev.sm(),
                k.plan.max_points,
                k.plan.group_size
            ))));
        }
        if k.fps_cluster > 0 {
            dev.set_max_dynamic_smem(k.fps, k.plan.fps_smem(k.fps_cluster))?;
        }
        dev.set_max_dynamic_smem(k.knn, k.plan.knn_smem())?;
        dev.set_max_dynamic_smem(k.encoder, k.plan.encoder_smem())?;
        dev.set_max_dynamic_smem(k.project, k.plan.project_smem())?;
        Ok(k)
    }
}

/// The M3DM point plan of a `side`² cloud with `k` points a group on a 56-grid, the
/// geometry the unit tests of the point kernels check.
#[cfg(test)]
pub(super) fn m3dm_plan(side: usize, k: u32) -> PointPlan {
    let mut pc = PointConfig::m3dm();
    pc.group_size = k;
    PointPlan::new(&pc, side, 56).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kernels_by_arch() {
        // Jetson Orin (sm_87) and the other pre-cluster archs: no register FPS, select kNN.
        for sm in [80, 86, 87, 89] {
            assert_eq!(
                default_kernels(sm),
                (FpsKernel::SharedMemory, KnnKernel::BoundSelect),
                "sm_{sm}"
            );
        }
        for sm in [90, 100, 120] {
            assert_eq!(
                default_kernels(sm),
                (FpsKernel::RegistersBarrier, KnnKernel::BoundSelect),
                "sm_{sm}"
            );
        }
        assert_eq!(PointOptions::default().fps, None);
    }
}
