//! Launch wrappers of `kernels/fps.cu`: farthest point sampling, the shared-memory kernel
//! (a thread-block cluster on sm_90, one block before) and the register kernels
//! `fps_regs_p{8,16}_f32` (one cluster, winners exchanged by cluster barrier or mbarrier),
//! with their launch geometry. Part of [`PointKernels`].

use super::point::{PointKernels, PointPlan};
use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{DeviceError, Error, Result};

/// Blocks in the FPS thread-block cluster on sm_90+ (portable cluster size).
pub const FPS_CLUSTER: u32 = 8;
const FPS_THREADS: u32 = 1024;
/// Threads per block of the register FPS kernels (`FPS_REGS_THREADS` in kernels/fps.cu).
pub const FPS_REGS_THREADS: u32 = 512;
/// Register-resident points per thread of the register FPS instances `fps_regs_p{8,16}_f32`.
pub const FPS_REGS_PPT: [u32; 2] = [8, 16];
/// Cluster sizes tried for register FPS, in order: 16 needs the non-portable cluster size (sm_90
/// allows it when a GPC can hold 16 blocks), 8 is portable.
pub const FPS_REGS_CLUSTERS: [u32; 2] = [16, 8];

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
pub(super) struct FpsRegs {
    f: Kernel,
    geo: Fps2Geometry,
}

impl PointPlan {
    pub fn fps_smem(&self, cluster: u32) -> u32 {
        (self.max_points.div_ceil(cluster as usize) * 16) as u32
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
}

/// Looks the register FPS instance up and picks its cluster size: the requested one, else the
/// first of [`FPS_REGS_CLUSTERS`] that the device can co-schedule (checked with
/// `cuOccupancyMaxActiveClusters`). `Ok(None)`: no cluster size fits (register FPS unavailable).
pub(super) fn setup_fps_regs(
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
                return Err(Error::Device(DeviceError::Unsupported(format!(
                    "no register FPS instance for {other} points per thread"
                ))))
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
        Some(c) => Err(Error::Device(DeviceError::Unsupported(format!(
            "register FPS with a cluster of {c} blocks cannot run here ({} points)",
            plan.max_points
        )))),
        None => Ok(None),
    }
}

/// Sets `f`'s shared-memory limit (and the non-portable cluster size when above 8) and asks
/// the device whether one cluster of `geo` can be resident.
fn fps_regs_fits(dev: &Device, f: Kernel, geo: Fps2Geometry) -> Result<bool> {
    dev.cluster_fits(f, geo.cluster, FPS_REGS_THREADS, geo.smem)
}

impl PointKernels {
    /// Whether FPS kind `k` can be launched by these kernels.
    pub fn fps_available(&self, k: FpsKernel) -> bool {
        k == FpsKernel::SharedMemory || self.fps_regs.is_some()
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
                return Err(Error::Device(DeviceError::Unsupported(format!(
                    "{kind:?} is not available here"
                ))));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::point::m3dm_plan as plan;
    use crate::cuda::device::module::find_module;

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
    }
}
