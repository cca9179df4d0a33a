//! The CUDA device: driver detection, context, stream, launches; or the simulated device
//! ([`Device::simulated`], backend `cuda-sim`: see [`super::sim`]), behind the same
//! methods, so the stages cannot tell them apart.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use cudarc::driver::sys;

use super::arena::{Arena, ArenaPlan, Slot};
use super::gemm::{CublasLt, Workspace, GEMM_WORKSPACE_BYTES};
use super::kernel::{Kernel, KernelArgs};
use super::module::Module;
use super::sim::{self, CopyKind, SimStream};
use crate::backend::{ActivityProbe, DeviceCounts};
use crate::{DeviceError, Error, Result};

/// Devices (contexts with their stream) opened in this process, real or simulated: one
/// per engine (tests read it).
pub static DEVICES_OPENED: AtomicUsize = AtomicUsize::new(0);

/// A driver call's error as a miad error naming the call.
pub(crate) fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(DeviceError::Call {
            call: what.into(),
            code: format!("{r:?}"),
        }
        .into())
    }
}

/// A device-layer failure that is neither a driver call's nor a missing device's.
pub(crate) fn dev_err(msg: String) -> Error {
    DeviceError::Other(msg).into()
}

/// The arena regions whose GEMMs run on the side stream of [`Device::fork_join`] (the
/// point branch's: its transformer, `DevicePointMae::ARENA_REGION`, and its bf16 group
/// encoder, `DeviceGroupEncoderBf16::ARENA_REGION`): they get the second GEMM workspace
/// (one after the other on that stream), so that GEMMs running at the same time never
/// share one.
pub const SIDE_STREAM_GEMM_REGIONS: [&str; 2] = ["point-mae", "point group encoder bf16"];

/// What stands behind a [`Device`].
enum Inner {
    Driver {
        dev: sys::CUdevice,
        ctx: sys::CUcontext,
        stream: sys::CUstream,
        /// The second stream of [`Device::fork_join`], and its fork and join events.
        side: sys::CUstream,
        fork: sys::CUevent,
        join: sys::CUevent,
    },
    Sim(SimStream),
}

/// The engine's one arena: each stage's region, handed out once, and the shared GEMM
/// workspaces (one per stream: the engine's, and the side stream's).
struct EngineArena {
    arena: Arena,
    regions: Vec<Region>,
    workspaces: [Slot<u8>; 2],
}

struct Region {
    stage: &'static str,
    slot: Slot<u8>,
    taken: bool,
}

/// What the device owns on behalf of every stage: the module table, the cuBLASLt handle,
/// the engine's arena, and the counters.
#[derive(Default)]
struct Shared {
    modules: Mutex<Vec<Module>>,
    cublaslt: OnceLock<CublasLt>,
    engine_arena: Mutex<Option<EngineArena>>,
    arenas: AtomicUsize,
    streams: AtomicUsize,
    cublaslt_handles: AtomicUsize,
    module_loads: Mutex<Vec<(&'static str, usize)>>,
    activity: ActivityProbe,
}

/// One CUDA device with the engine's context and stream, real or simulated, and what the
/// engine's stages share on it: one arena, one module table, one cuBLASLt handle.
pub struct Device {
    inner: Inner,
    shared: Shared,
    /// Work is enqueued on the side stream (inside [`Device::fork_join`]).
    on_side: AtomicBool,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    pub sm_count: i32,
    /// Largest dynamic shared memory a block may opt in to, bytes.
    pub max_smem_optin: i32,
    pub name: String,
}

// The context and stream are used from one thread at a time (the engine's, which owns the
// stages that share the device), and CUDA handles may move between threads.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `ordinal`. Returns `Error::Device` (never panics) when the driver library
    /// is missing, no device is present, or any setup call fails.
    pub fn new(ordinal: usize) -> Result<Device> {
        // SAFETY: is_culib_present only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(DeviceError::Unavailable(
                "no CUDA driver library (libcuda.so) on this machine".into(),
            )
            .into());
        }
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            let mut count: c_int = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
            if ordinal as c_int >= count {
                return Err(DeviceError::Unavailable(format!(
                    "device {ordinal} requested, {count} present"
                ))
                .into());
            }
            let mut dev: sys::CUdevice = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as c_int), "cuDeviceGet")?;
            let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
                let mut v: c_int = 0;
                check(
                    sys::cuDeviceGetAttribute(&mut v, a, dev),
                    "cuDeviceGetAttribute",
                )?;
                Ok(v)
            };
            use sys::CUdevice_attribute as A;
            let cc = (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let sm_count = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let max_smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
            let mut buf = [0 as std::ffi::c_char; 128];
            check(
                sys::cuDeviceGetName(buf.as_mut_ptr(), 128, dev),
                "cuDeviceGetName",
            )?;
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            check(
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
                "cuDevicePrimaryCtxRetain",
            )?;
            if let Err(e) = check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent") {
                sys::cuDevicePrimaryCtxRelease_v2(dev);
                return Err(e);
            }
            let (stream, side, fork, join) = match create_streams() {
                Ok(s) => s,
                Err(e) => {
                    sys::cuDevicePrimaryCtxRelease_v2(dev);
                    return Err(e);
                }
            };
            DEVICES_OPENED.fetch_add(1, Ordering::Relaxed);
            let shared = Shared::default();
            shared.streams.fetch_add(2, Ordering::Relaxed);
            Ok(Device {
                inner: Inner::Driver {
                    dev,
                    ctx,
                    stream,
                    side,
                    fork,
                    join,
                },
                shared,
                on_side: AtomicBool::new(false),
                cc,
                sm_count,
                max_smem_optin,
                name,
            })
        }
    }

    /// The simulated device: an sm_90 whose kernels run in the SIMT emulator (feature
    /// `cuda-sim`; an error naming the feature without it).
    pub fn simulated() -> Result<Device> {
        let stream = SimStream::new()?;
        DEVICES_OPENED.fetch_add(1, Ordering::Relaxed);
        let shared = Shared::default();
        // The engine's stream and the side stream of `fork_join` (one in-order stream
        // stands for both).
        shared.streams.fetch_add(2, Ordering::Relaxed);
        Ok(Device {
            inner: Inner::Sim(stream),
            shared,
            on_side: AtomicBool::new(false),
            cc: (9, 0),
            sm_count: 132,
            max_smem_optin: sim::MAX_DYN_SMEM,
            name: "simulated device (SIMT emulator)".into(),
        })
    }

    /// What this device created so far (see [`DeviceCounts`]).
    pub fn counts(&self) -> DeviceCounts {
        DeviceCounts {
            arenas: self.shared.arenas.load(Ordering::Relaxed),
            streams: self.shared.streams.load(Ordering::Relaxed),
            cublaslt_handles: self.shared.cublaslt_handles.load(Ordering::Relaxed),
            modules: self
                .shared
                .module_loads
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        }
    }

    /// The running counts of graph launches and host synchronisations on this device.
    pub fn activity(&self) -> ActivityProbe {
        self.shared.activity.clone()
    }

    pub(crate) fn count_graph_launch(&self) {
        let a = &self.shared.activity.0;
        a.graph_launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Host → device bytes a replay on the simulated device copied.
    pub(crate) fn count_uploaded(&self, bytes: u64) {
        let a = &self.shared.activity.0;
        a.bytes_to_device.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_arena(&self) {
        self.shared.arenas.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_cublaslt_handle(&self) {
        self.shared.cublaslt_handles.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_module_load(&self, name: &'static str) {
        if let Ok(mut loads) = self.shared.module_loads.lock() {
            match loads.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => loads.push((name, 1)),
            }
        }
    }

    /// Kernel module `name` from this device's module table: loaded the first time a
    /// stage asks for it, shared afterwards (unloaded with the device).
    pub fn module(&self, name: &str) -> Result<Module> {
        let mut table = self
            .shared
            .modules
            .lock()
            .map_err(|_| dev_err("module table lock poisoned".into()))?;
        if let Some(m) = table.iter().find(|m| m.name == name) {
            return Ok(m.clone());
        }
        let m = Module::load_new(self, name)?;
        table.push(m.clone());
        Ok(m)
    }

    /// This device's cuBLASLt handle, created on first use.
    pub fn cublaslt(&self) -> Result<&CublasLt> {
        if let Some(lt) = self.shared.cublaslt.get() {
            return Ok(lt);
        }
        let lt = CublasLt::new(self)?;
        // One thread at a time uses the device (see the `Sync` note), so the cell is empty.
        let _ = self.shared.cublaslt.set(lt);
        self.shared
            .cublaslt
            .get()
            .ok_or_else(|| dev_err("cuBLASLt handle cell left empty".into()))
    }

    /// Plans and allocates the engine's one arena: a region per stage need (`(stage,
    /// plan)`, stage names unique) and two GEMM workspaces: one that the GEMMs on the
    /// engine's stream share (they run one after the other), one for those of
    /// [`SIDE_STREAM_GEMM_REGIONS`] on the side stream. Once per device.
    pub fn plan_engine_arena(&self, needs: &[(&'static str, ArenaPlan)]) -> Result<()> {
        let mut cell = self
            .shared
            .engine_arena
            .lock()
            .map_err(|_| dev_err("arena lock poisoned".into()))?;
        if cell.is_some() {
            return Err(dev_err(
                "the engine's arena is planned once per device".into(),
            ));
        }
        let mut whole = ArenaPlan::new();
        let mut regions: Vec<Region> = Vec::with_capacity(needs.len());
        for (stage, plan) in needs {
            if regions.iter().any(|r| r.stage == *stage) {
                return Err(dev_err(format!("two arena regions for stage {stage:?}")));
            }
            regions.push(Region {
                stage,
                slot: whole.add::<u8>(plan.bytes()),
                taken: false,
            });
        }
        let workspaces = [
            whole.add::<u8>(GEMM_WORKSPACE_BYTES),
            whole.add::<u8>(GEMM_WORKSPACE_BYTES),
        ];
        let arena = Arena::new(self, &whole)?;
        *cell = Some(EngineArena {
            arena,
            regions,
            workspaces,
        });
        Ok(())
    }

    /// The memory of `stage` for `plan`: its region of the engine's arena when the engine
    /// planned one (handed out once; an error when the engine did not plan this stage or
    /// planned it smaller), else a new arena of its own (a stage used alone).
    pub fn stage_arena(&self, stage: &'static str, plan: &ArenaPlan) -> Result<Arena> {
        let mut cell = self
            .shared
            .engine_arena
            .lock()
            .map_err(|_| dev_err("arena lock poisoned".into()))?;
        let Some(engine) = cell.as_mut() else {
            drop(cell);
            return Arena::new(self, plan);
        };
        let Some(region) = engine.regions.iter_mut().find(|r| r.stage == stage) else {
            return Err(dev_err(format!(
                "stage {stage:?} asks for device memory the engine did not plan"
            )));
        };
        if region.taken {
            return Err(dev_err(format!(
                "stage {stage:?} asks for its arena region a second time"
            )));
        }
        if plan.bytes() > region.slot.len {
            return Err(dev_err(format!(
                "stage {stage:?} needs {} bytes, the engine planned {}",
                plan.bytes(),
                region.slot.len
            )));
        }
        let arena = engine.arena.region(region.slot)?;
        region.taken = true;
        Ok(arena)
    }

    /// The GEMM workspace of the engine's arena for the engine's stream (`None` before
    /// the engine planned one: a stage used alone plans its own).
    pub fn shared_gemm_workspace(&self) -> Result<Option<Workspace>> {
        self.shared_gemm_workspace_for("")
    }

    /// The GEMM workspace of the engine's arena for the GEMMs of arena region `stage`:
    /// the side stream's for [`SIDE_STREAM_GEMM_REGIONS`], else the engine stream's.
    pub fn shared_gemm_workspace_for(&self, stage: &str) -> Result<Option<Workspace>> {
        let cell = self
            .shared
            .engine_arena
            .lock()
            .map_err(|_| dev_err("arena lock poisoned".into()))?;
        let which = SIDE_STREAM_GEMM_REGIONS.contains(&stage) as usize;
        Ok(cell.as_ref().map(|e| Workspace {
            ptr: e.arena.ptr(e.workspaces[which]),
            bytes: e.workspaces[which].len,
        }))
    }

    /// Enqueues `side` on the side stream and `main` on the engine's stream so that they
    /// may run at the same time: the side stream first waits for the work enqueued before
    /// (fork event), and the engine's stream waits for the side's work before anything
    /// enqueued after (join event). Inside [`super::graph::Graph::capture`] the two become
    /// parallel branches of the graph. The simulated device, which has one in-order
    /// stream, runs `side` then `main`. The join is enqueued even when either fails.
    pub fn fork_join(
        &self,
        side: impl FnOnce(&Device) -> Result<()>,
        main: impl FnOnce(&Device) -> Result<()>,
    ) -> Result<()> {
        let Inner::Driver {
            stream,
            side: side_stream,
            fork,
            join,
            ..
        } = self.inner
        else {
            side(self)?;
            return main(self);
        };
        // SAFETY: the events and streams belong to this device's context.
        unsafe {
            check(sys::cuEventRecord(fork, stream), "cuEventRecord(fork)")?;
            check(
                sys::cuStreamWaitEvent(side_stream, fork, 0),
                "cuStreamWaitEvent(fork)",
            )?;
        }
        self.on_side.store(true, Ordering::Relaxed);
        let side_done = side(self);
        self.on_side.store(false, Ordering::Relaxed);
        let main_done = main(self);
        // SAFETY: as above.
        let joined = unsafe {
            check(sys::cuEventRecord(join, side_stream), "cuEventRecord(join)").and_then(|_| {
                check(
                    sys::cuStreamWaitEvent(stream, join, 0),
                    "cuStreamWaitEvent(join)",
                )
            })
        };
        side_done.and(main_done).and(joined)
    }

    /// Whether this is the simulated device.
    pub fn is_simulated(&self) -> bool {
        matches!(self.inner, Inner::Sim(_))
    }

    /// The simulated stream (device layer only).
    pub(crate) fn sim(&self) -> Option<&SimStream> {
        match &self.inner {
            Inner::Sim(s) => Some(s),
            Inner::Driver { .. } => None,
        }
    }

    /// Makes this device's context current on the calling thread (needed once per thread
    /// before any other call when the engine moves between threads).
    pub fn bind(&self) -> Result<()> {
        match &self.inner {
            Inner::Driver { ctx, .. } => unsafe {
                check(sys::cuCtxSetCurrent(*ctx), "cuCtxSetCurrent")
            },
            Inner::Sim(_) => Ok(()),
        }
    }

    /// The driver stream work is enqueued on: the engine's, or the side stream inside
    /// [`Device::fork_join`] (null on the simulated device).
    pub fn stream(&self) -> sys::CUstream {
        match &self.inner {
            Inner::Driver { side, .. } if self.on_side.load(Ordering::Relaxed) => *side,
            Inner::Driver { stream, .. } => *stream,
            Inner::Sim(_) => std::ptr::null_mut(),
        }
    }

    /// The driver context (null on the simulated device).
    pub fn context(&self) -> sys::CUcontext {
        match &self.inner {
            Inner::Driver { ctx, .. } => *ctx,
            Inner::Sim(_) => std::ptr::null_mut(),
        }
    }

    /// Free and total device memory, bytes (the simulated device reports 16 GiB free).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        if self.is_simulated() {
            return Ok((16 << 30, 16 << 30));
        }
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        unsafe { check(sys::cuMemGetInfo_v2(&mut free, &mut total), "cuMemGetInfo")? };
        Ok((free, total))
    }

    /// Compute capability as one number: 87, 90, ...
    pub fn sm(&self) -> u32 {
        (self.cc.0 * 10 + self.cc.1) as u32
    }

    /// Launches kernel `k` on the engine's stream, after checking the count and kind of
    /// every argument against its prototype (a typed error naming the argument, before
    /// anything runs); nothing is allocated.
    ///
    /// # Safety
    /// Every device pointer among `args` must be valid for what the kernel accesses.
    #[inline]
    pub unsafe fn launch(
        &self,
        k: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut KernelArgs<'_>,
    ) -> Result<()> {
        k.check_args(args)?;
        if let Some(s) = self.sim() {
            return s.launch(k.function() as *const c_void, grid, block, 1, smem, args);
        }
        check(
            sys::cuLaunchKernel(
                k.function(),
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                smem,
                self.stream(),
                args.pointers().as_mut_ptr(),
                std::ptr::null_mut(),
            ),
            "cuLaunchKernel",
        )
    }

    /// Launches kernel `k` as thread-block clusters of `cluster` blocks along x (sm_90+),
    /// after the same argument check as [`Device::launch`].
    ///
    /// # Safety
    /// As [`Device::launch`].
    #[inline]
    pub unsafe fn launch_cluster(
        &self,
        k: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        cluster: u32,
        args: &mut KernelArgs<'_>,
    ) -> Result<()> {
        k.check_args(args)?;
        if let Some(s) = self.sim() {
            return s.launch(
                k.function() as *const c_void,
                grid,
                block,
                cluster,
                smem,
                args,
            );
        }
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim.x = cluster;
        attr.value.clusterDim.y = 1;
        attr.value.clusterDim.z = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: smem,
            hStream: self.stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        check(
            sys::cuLaunchKernelEx(
                &cfg,
                k.function(),
                args.pointers().as_mut_ptr(),
                std::ptr::null_mut(),
            ),
            "cuLaunchKernelEx",
        )
    }

    /// Allows kernel `k` up to `bytes` of dynamic shared memory (needed above 48 KiB).
    /// `k` must belong to a module loaded for this device.
    pub fn set_max_dynamic_smem(&self, k: Kernel, bytes: u32) -> Result<()> {
        let f = k.function();
        if bytes as i64 > self.max_smem_optin as i64 {
            return Err(dev_err(format!(
                "a kernel needs {bytes} bytes of shared memory, the device allows {}",
                self.max_smem_optin
            )));
        }
        if self.is_simulated() {
            // SAFETY: a handle from this device's modules (the function's contract).
            return unsafe { sim::set_max_dyn(f as *const c_void, bytes) };
        }
        unsafe {
            check(
                sys::cuFuncSetAttribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as c_int,
                ),
                "cuFuncSetAttribute(max dynamic shared memory)",
            )
        }
    }

    /// Waits for all work on the engine's stream (the simulated stream runs work as it is
    /// issued).
    pub fn synchronize(&self) -> Result<()> {
        // Counted on the simulated device too: it is where a GPU's host would wait.
        let a = &self.shared.activity.0;
        a.host_syncs.fetch_add(1, Ordering::Relaxed);
        match &self.inner {
            Inner::Driver { stream, .. } => unsafe {
                check(sys::cuStreamSynchronize(*stream), "cuStreamSynchronize")
            },
            Inner::Sim(_) => Ok(()),
        }
    }

    /// Synchronous copy host → device (creation time: weights, banks; and tests).
    pub fn upload<T: bytemuck::Pod>(&self, dst: sys::CUdeviceptr, src: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(src);
        self.copy_async(dst, src.as_ptr() as u64, bytes, CopyKind::HostToDevice)?;
        self.synchronize()
    }

    /// Synchronous copy device → host.
    pub fn download<T: bytemuck::Pod>(&self, dst: &mut [T], src: sys::CUdeviceptr) -> Result<()> {
        let bytes = std::mem::size_of_val(dst);
        self.copy_async(dst.as_mut_ptr() as u64, src, bytes, CopyKind::DeviceToHost)?;
        self.synchronize()
    }

    /// An asynchronous copy on the stream (recorded into a graph while capturing). Host
    /// ends must stay valid until the copy ran (pinned buffers for graphs).
    pub(crate) fn copy_async(
        &self,
        dst: u64,
        src: u64,
        bytes: usize,
        kind: CopyKind,
    ) -> Result<()> {
        let stream = match &self.inner {
            Inner::Sim(s) => return s.copy(dst, src, bytes, kind).map(|_| ()),
            Inner::Driver { .. } => self.stream(),
        };
        unsafe {
            match kind {
                CopyKind::HostToDevice => check(
                    sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, stream),
                    "cuMemcpyHtoDAsync",
                ),
                CopyKind::DeviceToHost => check(
                    sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, stream),
                    "cuMemcpyDtoHAsync",
                ),
                CopyKind::DeviceToDevice => check(
                    sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream),
                    "cuMemcpyDtoDAsync",
                ),
            }
        }
    }

    /// [`Device::copy_async`] inside [`super::graph::Graph::capture`], returning the
    /// recorded copy node (whose size [`super::graph::Graph::set_copy_len`] changes).
    pub(crate) fn copy_node(
        &self,
        dst: u64,
        src: u64,
        bytes: usize,
        kind: CopyKind,
    ) -> Result<RecordedCopy> {
        let outside = || dev_err("a resizable copy outside a graph capture".into());
        if let Inner::Sim(s) = &self.inner {
            if !s.is_capturing()? {
                return Err(outside());
            }
            return s
                .copy(dst, src, bytes, kind)?
                .map(RecordedCopy::Sim)
                .ok_or_else(outside);
        }
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: the engine's stream, in its current context.
        unsafe {
            check(
                sys::cuStreamIsCapturing(self.stream(), &mut status),
                "cuStreamIsCapturing",
            )?
        };
        if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE {
            return Err(outside());
        }
        self.copy_async(dst, src, bytes, kind)?;
        // The capture's current dependency is the copy just recorded.
        let mut deps: *const sys::CUgraphNode = std::ptr::null();
        let mut n = 0usize;
        unsafe {
            check(
                sys::cuStreamGetCaptureInfo_v2(
                    self.stream(),
                    &mut status,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    &mut deps,
                    &mut n,
                ),
                "cuStreamGetCaptureInfo",
            )?;
            if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE
                || n != 1
                || deps.is_null()
            {
                return Err(dev_err(format!(
                    "a resizable copy outside a graph capture ({n} capture dependencies)"
                )));
            }
            Ok(RecordedCopy::Driver(*deps))
        }
    }

    /// Fills `bytes` bytes at `dst` with `value` (asynchronous, on the stream).
    pub fn memset_u8(&self, dst: sys::CUdeviceptr, value: u8, bytes: usize) -> Result<()> {
        match &self.inner {
            Inner::Sim(s) => s.memset(dst, value, bytes),
            Inner::Driver { .. } => unsafe {
                check(
                    sys::cuMemsetD8Async(dst, value, bytes, self.stream()),
                    "cuMemsetD8Async",
                )
            },
        }
    }

    /// Device-to-device copy on the stream.
    pub fn copy_dtod(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: usize,
    ) -> Result<()> {
        self.copy_async(dst, src, bytes, CopyKind::DeviceToDevice)
    }

    /// Whether one thread-block cluster of `cluster` blocks of `threads` threads with
    /// `smem` bytes of dynamic shared memory each can be resident (sets `f`'s shared
    /// memory limit, and the non-portable cluster size above 8).
    pub fn cluster_fits(&self, k: Kernel, cluster: u32, threads: u32, smem: u32) -> Result<bool> {
        self.set_max_dynamic_smem(k, smem)?;
        let f = k.function();
        if self.is_simulated() {
            // The emulator runs clusters of up to 16 blocks, all resident.
            return Ok(cluster <= 16);
        }
        unsafe {
            if cluster > 8 {
                check(
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                        1,
                    ),
                    "cuFuncSetAttribute(non-portable cluster size)",
                )?;
            }
            let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attr.value.clusterDim.x = cluster;
            attr.value.clusterDim.y = 1;
            attr.value.clusterDim.z = 1;
            let cfg = sys::CUlaunchConfig {
                gridDimX: cluster,
                gridDimY: 1,
                gridDimZ: 1,
                blockDimX: threads,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem,
                hStream: self.stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            let mut clusters: c_int = 0;
            check(
                sys::cuOccupancyMaxActiveClusters(&mut clusters, f, &cfg),
                "cuOccupancyMaxActiveClusters",
            )?;
            Ok(clusters >= 1)
        }
    }

    /// Creates a timing event pair.
    pub fn timer(&self) -> Result<Timer> {
        if self.is_simulated() {
            return Ok(Timer {
                start: std::ptr::null_mut(),
                end: std::ptr::null_mut(),
                stream: std::ptr::null_mut(),
                host: Some(std::cell::Cell::new(None)),
            });
        }
        let mut a: sys::CUevent = std::ptr::null_mut();
        let mut b: sys::CUevent = std::ptr::null_mut();
        unsafe {
            check(sys::cuEventCreate(&mut a, 0), "cuEventCreate")?;
            if let Err(e) = check(sys::cuEventCreate(&mut b, 0), "cuEventCreate") {
                sys::cuEventDestroy_v2(a);
                return Err(e);
            }
        }
        Ok(Timer {
            start: a,
            end: b,
            stream: self.stream(),
            host: None,
        })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Inner::Driver { ctx, stream, .. } = self.inner {
            unsafe {
                sys::cuCtxSetCurrent(ctx);
                sys::cuStreamSynchronize(stream);
            }
        }
        // What the device owns goes before its context: modules, the cuBLASLt handle, the
        // engine's arena.
        let modules = match self.shared.modules.get_mut() {
            Ok(m) => std::mem::take(m),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for m in modules {
            m.unload();
        }
        drop(self.shared.cublaslt.take());
        if let Ok(a) = self.shared.engine_arena.get_mut() {
            drop(a.take());
        }
        if let Inner::Driver {
            dev,
            ctx,
            stream,
            side,
            fork,
            join,
        } = self.inner
        {
            unsafe {
                sys::cuCtxSetCurrent(ctx);
                sys::cuStreamSynchronize(side);
                sys::cuEventDestroy_v2(fork);
                sys::cuEventDestroy_v2(join);
                sys::cuStreamDestroy_v2(side);
                sys::cuStreamDestroy_v2(stream);
                sys::cuDevicePrimaryCtxRelease_v2(dev);
            }
        }
    }
}

/// The engine's stream, the side stream and the fork and join events of
/// [`Device::fork_join`], created in the current context; on failure what was made is
/// destroyed again.
///
/// # Safety
/// A context must be current.
unsafe fn create_streams() -> Result<(sys::CUstream, sys::CUstream, sys::CUevent, sys::CUevent)> {
    let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint;
    let no_timing = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint;
    let mut streams: [sys::CUstream; 2] = [std::ptr::null_mut(); 2];
    let mut events: [sys::CUevent; 2] = [std::ptr::null_mut(); 2];
    let mut made = Ok(());
    for s in streams.iter_mut() {
        made = made.and_then(|_| check(sys::cuStreamCreate(s, flags), "cuStreamCreate"));
    }
    for e in events.iter_mut() {
        made = made.and_then(|_| check(sys::cuEventCreate(e, no_timing), "cuEventCreate"));
    }
    if let Err(e) = made {
        for ev in events.into_iter().filter(|e| !e.is_null()) {
            sys::cuEventDestroy_v2(ev);
        }
        for s in streams.into_iter().filter(|s| !s.is_null()) {
            sys::cuStreamDestroy_v2(s);
        }
        return Err(e);
    }
    Ok((streams[0], streams[1], events[0], events[1]))
}

/// A copy recorded into a graph ([`Device::copy_node`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RecordedCopy {
    /// The op's index in the simulated graph.
    Sim(usize),
    Driver(sys::CUgraphNode),
}

/// Two events on the engine's stream, for timing device work (the host clock on the
/// simulated device, whose stream runs work as it is issued).
pub struct Timer {
    start: sys::CUevent,
    end: sys::CUevent,
    stream: sys::CUstream,
    host: Option<std::cell::Cell<Option<std::time::Instant>>>,
}

impl Timer {
    pub fn start(&self) -> Result<()> {
        if let Some(h) = &self.host {
            h.set(Some(std::time::Instant::now()));
            return Ok(());
        }
        unsafe { check(sys::cuEventRecord(self.start, self.stream), "cuEventRecord") }
    }
    /// Records the end, waits for it, returns milliseconds since `start`.
    pub fn stop_ms(&self) -> Result<f32> {
        if let Some(h) = &self.host {
            let t0 = h
                .get()
                .ok_or_else(|| dev_err("timer stopped before it started".into()))?;
            return Ok(t0.elapsed().as_secs_f32() * 1e3);
        }
        let mut ms = 0f32;
        unsafe {
            check(sys::cuEventRecord(self.end, self.stream), "cuEventRecord")?;
            check(sys::cuEventSynchronize(self.end), "cuEventSynchronize")?;
            check(
                sys::cuEventElapsedTime(&mut ms, self.start, self.end),
                "cuEventElapsedTime",
            )?;
        }
        Ok(ms)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.host.is_some() {
            return;
        }
        unsafe {
            sys::cuEventDestroy_v2(self.start);
            sys::cuEventDestroy_v2(self.end);
        }
    }
}
