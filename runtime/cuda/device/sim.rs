//! The simulated device behind [`super::context::Device`] (backend `cuda-sim`): device
//! memory is host memory, copies are `memcpy`, launches run the real `kernels/*.cu` in the
//! SIMT emulator (`kernels/sim`, built by build.rs with the `cuda-sim` feature), the
//! stream executes in order at once, graph capture records the work and replay re-runs it,
//! and cuBLASLt plans run a CPU GEMM ([`super::gemm`]). Only the device layer (`device`,
//! `arena`, `graph`, `module`, `gemm`) calls in here: stage code is the same for a GPU and
//! for the simulator.
//!
//! Misuse the simulated device reports (each an [`crate::DeviceError::Misuse`] of a
//! [`crate::Misuse`] kind, naming it):
//! - a copy, memset or GEMM operand outside every live device allocation (bounds);
//! - reading device memory that nothing wrote: every allocation starts filled with the
//!   NaN word [`POISON`] (a quiet NaN whose payload x86 arithmetic propagates), and every
//!   download and GEMM input is scanned for it;
//! - replaying a graph after memory it recorded was freed (the engine re-planned);
//! - a kernel argument list whose sizes do not match the kernel's parameters as g++
//!   compiled them (the emulator's registration; count and kinds are checked against the
//!   prototype for every device), more threads than `__launch_bounds__`, dynamic
//!   shared memory above 48 KiB without `set_max_dynamic_smem`, and everything the
//!   emulator itself checks (barriers, warp masks, deadlocks, `__trap`);
//! - resizing a recorded copy beyond the bytes it was recorded with, or a node that is
//!   not a copy of that graph (the exec-graph update of `cuGraphExecMemcpyNodeSetParams`);
//! - reading a time mark (an event record node) that no replay reached.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::kernel::KernelArgs;
use crate::{DeviceError, Error, Misuse, Result};

/// The word every new simulated allocation is filled with (f32: a quiet NaN).
pub const POISON: u32 = 0x7FF4_DEAD;

/// Dynamic shared memory a kernel may use without an opt-in, bytes (as on a GPU).
pub const DEFAULT_DYN_SMEM: u32 = 48 * 1024;

/// Largest dynamic shared memory of a block on the simulated sm_90 (the emulator's window).
pub const MAX_DYN_SMEM: i32 = 232_448;

/// The simulated device is missing or cannot load a module.
fn unavailable(msg: impl Into<String>) -> Error {
    DeviceError::Unavailable(format!("simulated device: {}", msg.into())).into()
}

/// Internal state the simulated device cannot use (a poisoned lock, no memory).
fn err(msg: impl Into<String>) -> Error {
    DeviceError::Other(format!("simulated device: {}", msg.into())).into()
}

/// A misuse the simulated device caught.
fn misuse(kind: Misuse, msg: impl Into<String>) -> Error {
    DeviceError::Misuse {
        kind,
        detail: msg.into(),
    }
    .into()
}

type KernelFn = unsafe extern "C" fn(*mut *mut c_void);
type TlsFn = unsafe extern "C" fn(*mut *mut c_void, *mut usize, *mut *mut c_void);
type LaunchFn = unsafe extern "C" fn(
    KernelFn,
    TlsFn,
    *const u32,
    *const u32,
    *const u32,
    u32,
    *mut *mut c_void,
    u64,
    *mut c_char,
    usize,
) -> i32;

/// The emulator's runtime library, loaded once per process.
struct Runtime {
    launch: LaunchFn,
    _lib: libloading::Library,
}

fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        let path = super::module::SIM_RUNTIME;
        if path.is_empty() {
            return Err("this miad was built without the `cuda-sim` feature".into());
        }
        // SAFETY: the emulator's runtime, built by build.rs; its initialisers are plain.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: the symbol has this signature (kernels/sim/simt.cpp, C ABI).
        let launch = unsafe { lib.get::<LaunchFn>(b"miad_sim_launch\0") }
            .map(|s| *s)
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(Runtime { launch, _lib: lib })
    });
    rt.as_ref().map_err(|e| unavailable(e.clone()))
}

/// Whether the simulated device can be opened (the feature was on at build time and the
/// emulator's runtime loads).
pub fn available() -> Result<()> {
    runtime().map(|_| ())
}

const KERNEL_MAGIC: u64 = 0x5349_4d4b_524e_4c31; // "SIMKRNL1"

/// One kernel of an emulated module; its address is the simulated `CUfunction`.
pub struct SimKernel {
    magic: u64,
    pub name: String,
    run: KernelFn,
    tls: TlsFn,
    /// `sizeof` of every parameter, as g++ compiled them.
    sizes: Vec<usize>,
    /// `__launch_bounds__` maximum threads (0: none).
    bounds: u32,
    /// Dynamic shared memory allowed (raised by `set_max_dynamic_smem`).
    max_dyn: AtomicU32,
}

/// A loaded emulated module (one `kernels/<name>.cu`).
pub struct SimModule {
    // Boxed: the kernels' addresses are handed out as function handles and must not move
    // when the list grows.
    #[allow(clippy::vec_box)]
    kernels: Mutex<Vec<Box<SimKernel>>>,
    lib: libloading::Library,
}

impl SimModule {
    pub fn load(name: &str, path: &str) -> Result<SimModule> {
        runtime()?;
        if path.is_empty() {
            return Err(unavailable(format!("module {name}: no emulated build")));
        }
        // SAFETY: a module built by build.rs against the emulator.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| unavailable(format!("module {name}: {e}")))?;
        Ok(SimModule {
            kernels: Mutex::new(Vec::new()),
            lib,
        })
    }

    /// The kernel's handle (valid while this module lives).
    pub fn function(&self, kernel: &str) -> Result<*const SimKernel> {
        let sym = |prefix: &str| format!("miad_sim_{prefix}_{kernel}\0");
        let missing = |e: libloading::Error| unavailable(format!("no kernel {kernel}: {e}"));
        // SAFETY: the registration file defines these with these signatures
        // (kernels/sim/simt_register.h).
        let (run, sizes_fn, bounds_fn, tls) = unsafe {
            (
                *self
                    .lib
                    .get::<KernelFn>(sym("k").as_bytes())
                    .map_err(missing)?,
                *self
                    .lib
                    .get::<unsafe extern "C" fn(*mut usize, i32) -> i32>(sym("a").as_bytes())
                    .map_err(missing)?,
                *self
                    .lib
                    .get::<unsafe extern "C" fn() -> i32>(sym("b").as_bytes())
                    .map_err(missing)?,
                *self
                    .lib
                    .get::<TlsFn>(b"miad_sim_module_tls\0")
                    .map_err(missing)?,
            )
        };
        let mut sizes = vec![0usize; 64];
        // SAFETY: writes at most 64 sizes.
        let n = unsafe { sizes_fn(sizes.as_mut_ptr(), 64) }.clamp(0, 64) as usize;
        sizes.truncate(n);
        let k = Box::new(SimKernel {
            magic: KERNEL_MAGIC,
            name: kernel.to_string(),
            run,
            tls,
            sizes,
            // SAFETY: a plain query.
            bounds: unsafe { bounds_fn() }.max(0) as u32,
            max_dyn: AtomicU32::new(DEFAULT_DYN_SMEM),
        });
        let p = &*k as *const SimKernel;
        self.kernels
            .lock()
            .map_err(|_| err("module lock poisoned"))?
            .push(k);
        Ok(p)
    }
}

/// The kernel behind a simulated function handle.
///
/// # Safety
/// `f` must be null or a handle from [`SimModule::function`] whose module is alive.
unsafe fn kernel<'a>(f: *const c_void) -> Result<&'a SimKernel> {
    let k = f as *const SimKernel;
    if k.is_null() || (*k).magic != KERNEL_MAGIC {
        return Err(err(
            "launch of a function handle that is not an emulated kernel",
        ));
    }
    Ok(&*k)
}

/// Allows `f` up to `bytes` of dynamic shared memory.
///
/// # Safety
/// As [`kernel`].
pub unsafe fn set_max_dyn(f: *const c_void, bytes: u32) -> Result<()> {
    kernel(f)?.max_dyn.store(bytes, Ordering::Relaxed);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory.

/// Live device allocations and, inside them, the regions stages work in (the engine's
/// arena): (base, [`ALLOCATION`] or [`REGION`]) → (bytes, id). Ids are never reused, so a
/// graph can tell an allocation from a later one at the same address. Bounds are checked
/// against the innermost entry holding an address: a stage's copy that runs past its
/// region is out of bounds, though the engine's arena continues.
static REGISTRY: Mutex<BTreeMap<(u64, u8), (usize, u64)>> = Mutex::new(BTreeMap::new());
const ALLOCATION: u8 = 0;
const REGION: u8 = 1;
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Alignment of simulated allocations (the driver's `cuMemAlloc` gives at least 256).
pub const ALLOC_ALIGN: usize = 256;

/// Aligned host memory standing for device memory (registered, poisoned) or for pinned
/// host memory (zeroed, not registered).
pub struct HostMem {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    /// Registry id when this is device memory.
    id: Option<u64>,
}

// Plain memory owned by this value.
unsafe impl Send for HostMem {}
unsafe impl Sync for HostMem {}

impl HostMem {
    /// Device memory of `bytes` bytes, every 4-byte word [`POISON`].
    pub fn device(bytes: usize) -> Result<HostMem> {
        let mut m = Self::alloc(bytes)?;
        let words = m.layout.size() / 4;
        // SAFETY: the allocation holds `words` aligned u32.
        unsafe { std::slice::from_raw_parts_mut(m.ptr as *mut u32, words).fill(POISON) };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        REGISTRY
            .lock()
            .map_err(|_| err("registry lock poisoned"))?
            .insert((m.ptr as u64, ALLOCATION), (bytes, id));
        m.id = Some(id);
        Ok(m)
    }

    /// Pinned host memory of `bytes` bytes, zeroed.
    pub fn pinned(bytes: usize) -> Result<HostMem> {
        let m = Self::alloc(bytes)?;
        // SAFETY: freshly allocated, `size` bytes.
        unsafe { std::ptr::write_bytes(m.ptr, 0, m.layout.size()) };
        Ok(m)
    }

    fn alloc(bytes: usize) -> Result<HostMem> {
        let size = bytes.max(1).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN;
        let layout = std::alloc::Layout::from_size_align(size, ALLOC_ALIGN)
            .map_err(|_| err(format!("allocation of {bytes} bytes")))?;
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(err(format!("out of host memory ({bytes} bytes)")));
        }
        Ok(HostMem {
            ptr,
            layout,
            id: None,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if self.id.is_some() {
            if let Ok(mut r) = REGISTRY.lock() {
                r.remove(&(self.ptr as u64, ALLOCATION));
            }
        }
        // SAFETY: allocated in `alloc` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Registers `[addr, addr + bytes)`, inside a live allocation, as a region of its own (a
/// stage's part of the engine's arena): bounds checks stop at its end. Returns its id.
pub fn register_region(addr: u64, bytes: usize) -> Result<u64> {
    check_range(addr, bytes, "arena region")?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGISTRY
        .lock()
        .map_err(|_| err("registry lock poisoned"))?
        .insert((addr, REGION), (bytes, id));
    Ok(id)
}

/// Ends the region registered at `addr` (its allocation stays).
pub fn unregister_region(addr: u64) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.remove(&(addr, REGION));
    }
}

/// The innermost live allocation or region holding `[addr, addr + bytes)`: (base, id),
/// or an error naming `what` (bounds check).
pub fn check_range(addr: u64, bytes: usize, what: &str) -> Result<(u64, u64)> {
    let r = REGISTRY.lock().map_err(|_| err("registry lock poisoned"))?;
    // From the nearest base down (a region before its allocation at the same base): the
    // first entry that holds `addr` is the innermost.
    let holding = r
        .range(..=(addr, REGION))
        .rev()
        .find(|(&(base, _), &(len, _))| {
            let end = base + len as u64;
            addr < end || (bytes == 0 && addr == end)
        });
    if let Some((&(base, _), &(len, id))) = holding {
        if addr + bytes as u64 <= base + len as u64 {
            return Ok((base, id));
        }
        return Err(misuse(
            Misuse::OutOfBounds,
            format!(
                "{what}: {bytes} bytes at offset {} of an allocation of {len} bytes \
                 (out of bounds by {})",
                addr - base,
                addr + bytes as u64 - base - len as u64
            ),
        ));
    }
    Err(misuse(
        Misuse::OutOfBounds,
        format!("{what}: {bytes} bytes at {addr:#x}, outside every device allocation"),
    ))
}

/// Fails when `[addr, addr + bytes)` (device memory, bounds already checked) holds a
/// word nothing wrote ([`POISON`]): a read of never-written memory.
pub fn check_written(addr: u64, bytes: usize, what: &str) -> Result<()> {
    let first = addr.div_ceil(4) * 4;
    let end = addr + bytes as u64;
    if end < first + 4 {
        return Ok(());
    }
    let words = ((end - first) / 4) as usize;
    // SAFETY: inside a live allocation (checked by the caller), 4-aligned.
    let s = unsafe { std::slice::from_raw_parts(first as *const u32, words) };
    if let Some(i) = s.iter().position(|&w| w == POISON) {
        let (base, _) = check_range(addr, bytes, what)?;
        return Err(misuse(
            Misuse::NeverWritten,
            format!(
                "{what}: reads device memory that was never written (offset {} of the \
             allocation at {base:#x}, word {i} of {words})",
                first + 4 * i as u64 - base
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Work: launches, copies and GEMMs, run at once or recorded into a graph.

/// One column-major matrix operand of a [`GemmCall`].
#[derive(Clone, Copy, Debug)]
pub struct GemmOperand {
    pub ptr: u64,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub trans: bool,
    /// bf16 (`u16` bits) rather than f32.
    pub bf16: bool,
}

impl GemmOperand {
    fn bytes(&self) -> usize {
        let e = if self.bf16 { 2 } else { 4 };
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        ((self.cols - 1) as usize * self.ld as usize + self.rows as usize) * e
    }
    /// Element (r, c) of the stored matrix, as f32.
    ///
    /// # Safety
    /// `ptr` holds the matrix (checked by [`run_gemm`]).
    #[inline(always)]
    unsafe fn get(&self, r: u64, c: u64) -> f32 {
        let i = (r + c * self.ld as u64) as usize;
        if self.bf16 {
            half::bf16::from_bits(*(self.ptr as *const u16).add(i)).to_f32()
        } else {
            *(self.ptr as *const f32).add(i)
        }
    }
}

/// One cuBLASLt matmul as the descriptors say: `D = epi(alpha·op(A)·op(B) + beta·C +
/// bias)` with C = D, column-major operands, bias one value per row of D.
#[derive(Clone, Copy, Debug)]
pub struct GemmCall {
    pub a: GemmOperand,
    pub b: GemmOperand,
    pub d: GemmOperand,
    pub alpha: f32,
    pub beta: f32,
    /// Bias pointer (0: none), of D's element type.
    pub bias: u64,
    /// cuBLASLt's GELU epilogue: the tanh approximation.
    pub gelu_tanh: bool,
}

/// cuBLASLt's GELU epilogue (tanh approximation).
fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (K * (x + 0.044715 * x * x * x)).tanh())
}

fn run_gemm(g: &GemmCall) -> Result<()> {
    let (ar, ac) = if g.a.trans {
        (g.a.cols, g.a.rows)
    } else {
        (g.a.rows, g.a.cols)
    };
    let (br, bc) = if g.b.trans {
        (g.b.cols, g.b.rows)
    } else {
        (g.b.rows, g.b.cols)
    };
    if ac != br || g.d.rows != ar || g.d.cols != bc {
        return Err(misuse(
            Misuse::GemmLayout,
            format!(
                "gemm: op(A) {ar}x{ac} · op(B) {br}x{bc} into D {}x{}",
                g.d.rows, g.d.cols
            ),
        ));
    }
    for (what, m) in [("gemm A", &g.a), ("gemm B", &g.b)] {
        if m.ld < m.rows as i64 {
            return Err(misuse(
                Misuse::GemmLayout,
                format!("{what}: ld {} < rows {}", m.ld, m.rows),
            ));
        }
        check_range(m.ptr, m.bytes(), what)?;
        check_written(m.ptr, m.bytes(), what)?;
    }
    check_range(g.d.ptr, g.d.bytes(), "gemm D")?;
    if g.beta != 0.0 {
        check_written(g.d.ptr, g.d.bytes(), "gemm C (accumulate)")?;
    }
    let eb = if g.d.bf16 { 2 } else { 4 };
    if g.bias != 0 {
        let n = g.d.rows as usize * eb;
        check_range(g.bias, n, "gemm bias")?;
        check_written(g.bias, n, "gemm bias")?;
    }
    // The element types are fixed per call: one loop body for each pair (the element
    // type tests in the innermost loop were most of an emulated part's time).
    // SAFETY: every operand's extent was checked against the live allocations above.
    unsafe {
        match (g.a.bf16, g.b.bf16) {
            (false, false) => gemm_body::<f32, f32>(g, ac),
            (false, true) => gemm_body::<f32, half::bf16>(g, ac),
            (true, false) => gemm_body::<half::bf16, f32>(g, ac),
            (true, true) => gemm_body::<half::bf16, half::bf16>(g, ac),
        }
    }
    Ok(())
}

/// An element type a GEMM operand may hold, read as f32.
trait GemmElement {
    /// # Safety
    /// `ptr` holds at least `i + 1` elements.
    unsafe fn load(ptr: u64, i: usize) -> f32;
}

impl GemmElement for f32 {
    #[inline(always)]
    unsafe fn load(ptr: u64, i: usize) -> f32 {
        *(ptr as *const f32).add(i)
    }
}

impl GemmElement for half::bf16 {
    #[inline(always)]
    unsafe fn load(ptr: u64, i: usize) -> f32 {
        half::bf16::from_bits(*(ptr as *const u16).add(i)).to_f32()
    }
}

/// Where row `i` of op(M) (or column `i`, for the right operand: `right`) starts in
/// memory and how far apart its successive elements along the shared dimension lie.
fn gemm_walk(m: &GemmOperand, i: u64, right: bool) -> (usize, usize) {
    let ld = m.ld as usize;
    let i = i as usize;
    // op(A) row i runs along A's columns unless A is transposed; op(B) column j runs
    // along B's rows unless B is transposed.
    if m.trans != right {
        (i * ld, 1)
    } else {
        (i, ld)
    }
}

/// Rows of D computed together by [`gemm_body`]: independent accumulators, so the adds of
/// one output do not wait on one another's latency (the order of each sum is unchanged).
const GEMM_ROWS: usize = 8;

/// `D = epi(alpha·op(A)·op(B) + beta·C + bias)`, each element summed over the shared
/// dimension `k` in ascending order into an f32 accumulator (the reference order).
///
/// # Safety
/// The operands' extents were checked by [`run_gemm`].
unsafe fn gemm_body<A: GemmElement, B: GemmElement>(g: &GemmCall, k: u64) {
    let k = k as usize;
    let rows = g.d.rows as usize;
    for j in 0..g.d.cols {
        let (b0, bs) = gemm_walk(&g.b, j, true);
        let mut i = 0usize;
        while i < rows {
            let n = GEMM_ROWS.min(rows - i);
            let mut starts = [0usize; GEMM_ROWS];
            let mut a_step = 0;
            for (r, s) in starts.iter_mut().enumerate().take(n) {
                (*s, a_step) = gemm_walk(&g.a, (i + r) as u64, false);
            }
            let mut acc = [0f32; GEMM_ROWS];
            if n == GEMM_ROWS {
                for p in 0..k {
                    let b = B::load(g.b.ptr, b0 + p * bs);
                    let at = p * a_step;
                    for r in 0..GEMM_ROWS {
                        acc[r] += A::load(g.a.ptr, starts[r] + at) * b;
                    }
                }
            } else {
                for (r, a) in acc.iter_mut().enumerate().take(n) {
                    for p in 0..k {
                        *a += A::load(g.a.ptr, starts[r] + p * a_step)
                            * B::load(g.b.ptr, b0 + p * bs);
                    }
                }
            }
            for (r, &sum) in acc.iter().enumerate().take(n) {
                gemm_store(g, (i + r) as u64, j, sum);
            }
            i += n;
        }
    }
}

/// The epilogue of one element of D: scale, C, bias, GELU, the store.
#[inline(always)]
unsafe fn gemm_store(g: &GemmCall, i: u64, j: u64, acc: f32) {
    let mut v = g.alpha * acc;
    if g.beta != 0.0 {
        v += g.beta * g.d.get(i, j);
    }
    if g.bias != 0 {
        v += if g.d.bf16 {
            half::bf16::load(g.bias, i as usize)
        } else {
            f32::load(g.bias, i as usize)
        };
    }
    if g.gelu_tanh {
        v = gelu_tanh(v);
    }
    let at = (i + j * g.d.ld as u64) as usize;
    if g.d.bf16 {
        *(g.d.ptr as *mut u16).add(at) = half::bf16::from_f32(v).to_bits();
    } else {
        *(g.d.ptr as *mut f32).add(at) = v;
    }
}

/// Where a copy's ends lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

enum Op {
    Launch {
        k: *const SimKernel,
        grid: [u32; 3],
        block: [u32; 3],
        cluster: [u32; 3],
        smem: u32,
        /// The argument values, each at `offsets[i]` (8-aligned) in `bytes`.
        bytes: Vec<u64>,
        offsets: Vec<usize>,
    },
    Copy {
        dst: u64,
        src: u64,
        /// The bytes a replay copies: `recorded` unless resized
        /// ([`SimGraph::set_copy_bytes`]).
        bytes: AtomicUsize,
        recorded: usize,
        kind: CopyKind,
    },
    /// A time mark (an event record node): the replay notes the host time.
    Mark {
        marks: Arc<SimMarks>,
        index: usize,
    },
    Memset {
        dst: u64,
        value: u8,
        bytes: usize,
    },
    Gemm(GemmCall),
}

/// Most kernel parameters a launch may have.
const MAX_ARGS: usize = 64;

/// A recorded graph: the work and the allocations it refers to.
pub struct SimGraph {
    ops: Vec<Op>,
    /// (base, id) of every allocation the work touches, checked at replay.
    memory: Vec<(u64, u64)>,
}

impl SimGraph {
    /// Sets the bytes the recorded copy `node` (as [`SimStream::copy`] returned it while
    /// capturing) moves on the next replays: at most the bytes it was recorded with.
    pub fn set_copy_bytes(&self, node: usize, bytes: usize) -> Result<()> {
        match self.ops.get(node) {
            Some(Op::Copy {
                bytes: b, recorded, ..
            }) => {
                if bytes > *recorded {
                    return Err(misuse(
                        Misuse::GraphUpdate,
                        format!(
                            "recorded copy resized to {bytes} bytes, beyond the {recorded} \
                             it was recorded with"
                        ),
                    ));
                }
                b.store(bytes, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(misuse(
                Misuse::GraphUpdate,
                format!("graph node {node} is not a copy of this graph"),
            )),
        }
    }
}

/// The host times a replay notes when it reaches each mark (the simulated device's event
/// record nodes): nanoseconds since `base`, 0 until a replay reached it.
pub struct SimMarks {
    base: Instant,
    ns: Vec<AtomicU64>,
}

impl SimMarks {
    pub fn new(n: usize) -> SimMarks {
        SimMarks {
            base: Instant::now(),
            ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn note(&self, index: usize) {
        if let Some(t) = self.ns.get(index) {
            // At least 1: 0 means never reached.
            let now = self.base.elapsed().as_nanos().max(1) as u64;
            t.store(now, Ordering::Relaxed);
        }
    }

    /// Seconds from mark `from` to mark `to`, as a replay last noted them.
    pub fn elapsed_s(&self, from: usize, to: usize) -> Result<f64> {
        let read = |i: usize| match self.ns.get(i).map(|t| t.load(Ordering::Relaxed)) {
            Some(t) if t > 0 => Ok(t),
            _ => Err(misuse(
                Misuse::UnrecordedMark,
                format!("time mark {i} read before a replay reached it"),
            )),
        };
        let (a, b) = (read(from)?, read(to)?);
        Ok((b as f64 - a as f64) * 1e-9)
    }
}

// The kernel handles point into modules that outlive the graph (the stages' drop order).
unsafe impl Send for SimGraph {}
unsafe impl Sync for SimGraph {}

/// The simulated device's stream state.
pub struct SimStream {
    capture: Mutex<Option<Vec<Op>>>,
    /// The emulator's error message buffer (allocated once).
    err: Mutex<Vec<c_char>>,
    /// Seed of the emulator's scheduling (a launch is a pure function of it).
    pub seed: u64,
}

// The ops hold kernel handles (pointers into live modules).
unsafe impl Send for SimStream {}
unsafe impl Sync for SimStream {}

impl SimStream {
    pub fn new() -> Result<SimStream> {
        runtime()?;
        Ok(SimStream {
            capture: Mutex::new(None),
            err: Mutex::new(vec![0; 16384]),
            seed: 1,
        })
    }

    fn capturing<R>(&self, f: impl FnOnce(Option<&mut Vec<Op>>) -> R) -> Result<R> {
        let mut c = self
            .capture
            .lock()
            .map_err(|_| err("stream lock poisoned"))?;
        Ok(f(c.as_mut()))
    }

    /// # Safety
    /// As `Device::launch`.
    pub unsafe fn launch(
        &self,
        f: *const c_void,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        cluster: u32,
        smem: u32,
        args: &mut KernelArgs<'_>,
    ) -> Result<()> {
        let k = kernel(f)?;
        if args.sizes() != k.sizes.as_slice() {
            return Err(misuse(
                Misuse::LaunchArguments,
                format!(
                    "{}: argument sizes {:?} passed, the compiled kernel's are {:?}",
                    k.name,
                    args.sizes(),
                    k.sizes
                ),
            ));
        }
        let args = args.pointers();
        let (grid, block, cluster) = (
            [grid.0, grid.1, grid.2],
            [block.0, block.1, block.2],
            [cluster, 1, 1],
        );
        let capturing = self.capturing(|c| c.is_some())?;
        if !capturing {
            return self.run_launch(k, grid, block, cluster, smem, args);
        }
        // Recording: the argument values are copied now, as cuStreamBeginCapture does.
        let mut offsets = Vec::with_capacity(args.len());
        let mut at = 0usize;
        for &s in &k.sizes {
            offsets.push(at);
            at += s.div_ceil(8).max(1);
        }
        let mut bytes = vec![0u64; at];
        for (i, (&a, &s)) in args.iter().zip(&k.sizes).enumerate() {
            if a.is_null() {
                return Err(misuse(
                    Misuse::LaunchArguments,
                    format!("{}: argument {i} is a null pointer", k.name),
                ));
            }
            std::ptr::copy_nonoverlapping(
                a as *const u8,
                bytes.as_mut_ptr().add(offsets[i]) as *mut u8,
                s,
            );
        }
        let op = Op::Launch {
            k,
            grid,
            block,
            cluster,
            smem,
            bytes,
            offsets,
        };
        self.capturing(|c| {
            if let Some(ops) = c {
                ops.push(op);
            }
        })
    }

    unsafe fn run_launch(
        &self,
        k: &SimKernel,
        grid: [u32; 3],
        block: [u32; 3],
        cluster: [u32; 3],
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let threads = block[0] * block[1] * block[2];
        if k.bounds > 0 && threads > k.bounds {
            return Err(misuse(
                Misuse::LaunchConfig,
                format!(
                    "{}: block of {threads} threads above __launch_bounds__({})",
                    k.name, k.bounds
                ),
            ));
        }
        let allowed = k.max_dyn.load(Ordering::Relaxed);
        if smem > allowed {
            return Err(misuse(
                Misuse::LaunchConfig,
                format!(
                    "{}: {smem} bytes of dynamic shared memory, {allowed} allowed \
                 (set_max_dynamic_smem first)",
                    k.name
                ),
            ));
        }
        let rt = runtime()?;
        let mut e = self.err.lock().map_err(|_| err("stream lock poisoned"))?;
        let rc = (rt.launch)(
            k.run,
            k.tls,
            grid.as_ptr(),
            block.as_ptr(),
            cluster.as_ptr(),
            smem,
            args.as_mut_ptr(),
            self.seed,
            e.as_mut_ptr(),
            e.len(),
        );
        if rc != 0 {
            let msg = CStr::from_ptr(e.as_ptr()).to_string_lossy().into_owned();
            return Err(misuse(Misuse::Kernel, format!("{}: {msg}", k.name)));
        }
        Ok(())
    }

    /// A copy on the stream; `kind` says which ends are device memory. While capturing,
    /// returns the recorded node (for [`SimGraph::set_copy_bytes`]).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize, kind: CopyKind) -> Result<Option<usize>> {
        let op = Op::Copy {
            dst,
            src,
            bytes: AtomicUsize::new(bytes),
            recorded: bytes,
            kind,
        };
        let node = self.capturing(|c| c.map(|ops| ops.len()))?;
        if self.record(op)? {
            return Ok(node);
        }
        run_copy(dst, src, bytes, kind).map(|_| None)
    }

    /// A time mark: noted now, or by every replay when capturing.
    pub fn mark(&self, marks: &Arc<SimMarks>, index: usize) -> Result<()> {
        let op = Op::Mark {
            marks: marks.clone(),
            index,
        };
        if !self.record(op)? {
            marks.note(index);
        }
        Ok(())
    }

    pub fn memset(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        if self.record(Op::Memset { dst, value, bytes })? {
            return Ok(());
        }
        run_memset(dst, value, bytes)
    }

    pub fn gemm(&self, g: GemmCall) -> Result<()> {
        if self.record(Op::Gemm(g))? {
            return Ok(());
        }
        run_gemm(&g)
    }

    /// Whether a capture is under way.
    pub fn is_capturing(&self) -> Result<bool> {
        self.capturing(|c| c.is_some())
    }

    /// Records `op` when capturing; returns whether it did.
    fn record(&self, op: Op) -> Result<bool> {
        self.capturing(|c| match c {
            Some(ops) => {
                ops.push(op);
                true
            }
            None => false,
        })
    }

    pub fn begin_capture(&self) -> Result<()> {
        let mut c = self
            .capture
            .lock()
            .map_err(|_| err("stream lock poisoned"))?;
        if c.is_some() {
            return Err(misuse(Misuse::Capture, "a capture is already under way"));
        }
        *c = Some(Vec::new());
        Ok(())
    }

    /// Ends the capture: the graph of what was recorded.
    pub fn end_capture(&self) -> Result<SimGraph> {
        let ops = self
            .capture
            .lock()
            .map_err(|_| err("stream lock poisoned"))?
            .take()
            .ok_or_else(|| misuse(Misuse::Capture, "end of a capture that was not begun"))?;
        let mut memory: Vec<(u64, u64)> = Vec::new();
        fn add(memory: &mut Vec<(u64, u64)>, m: (u64, u64)) {
            if !memory.contains(&m) {
                memory.push(m);
            }
        }
        let note = |memory: &mut Vec<(u64, u64)>, addr: u64, bytes: usize, what: &str| {
            check_range(addr, bytes, what).map(|m| add(memory, m))
        };
        for op in &ops {
            match op {
                Op::Launch {
                    bytes, offsets, k, ..
                } => {
                    // SAFETY: recorded from a live kernel handle.
                    let k = unsafe { &**k };
                    // Pointer-sized arguments that point into device memory.
                    for (i, &s) in k.sizes.iter().enumerate() {
                        if s == 8 {
                            let v = bytes[offsets[i]];
                            if let Ok(m) = check_range(v, 0, "") {
                                add(&mut memory, m);
                            }
                        }
                    }
                }
                Op::Mark { .. } => {}
                Op::Copy {
                    dst,
                    src,
                    recorded: bytes,
                    kind,
                    ..
                } => {
                    if *kind != CopyKind::DeviceToHost {
                        note(&mut memory, *dst, *bytes, "graph copy destination")?;
                    }
                    if *kind != CopyKind::HostToDevice {
                        note(&mut memory, *src, *bytes, "graph copy source")?;
                    }
                }
                Op::Memset { dst, bytes, .. } => note(&mut memory, *dst, *bytes, "graph memset")?,
                Op::Gemm(g) => {
                    note(&mut memory, g.a.ptr, g.a.bytes(), "graph gemm A")?;
                    note(&mut memory, g.b.ptr, g.b.bytes(), "graph gemm B")?;
                    note(&mut memory, g.d.ptr, g.d.bytes(), "graph gemm D")?;
                }
            }
        }
        Ok(SimGraph { ops, memory })
    }

    /// Abandons a capture (after an error while recording).
    pub fn abort_capture(&self) {
        if let Ok(mut c) = self.capture.lock() {
            *c = None;
        }
    }

    /// Re-runs a recorded graph in order, with the recorded arguments. Returns the bytes
    /// it copied host → device.
    pub fn replay(&self, g: &SimGraph) -> Result<u64> {
        if self.capturing(|c| c.is_some())? {
            return Err(misuse(Misuse::Capture, "graph replay while capturing"));
        }
        {
            let r = REGISTRY.lock().map_err(|_| err("registry lock poisoned"))?;
            for &(base, id) in &g.memory {
                let live = r
                    .range((base, ALLOCATION)..=(base, REGION))
                    .any(|(_, &(_, i))| i == id);
                if !live {
                    return Err(misuse(
                        Misuse::StaleGraph,
                        format!(
                            "graph replay after re-planning: the device memory at {base:#x} \
                         it was recorded with has been freed"
                        ),
                    ));
                }
            }
        }
        let mut uploaded = 0u64;
        for op in &g.ops {
            match op {
                Op::Launch {
                    k,
                    grid,
                    block,
                    cluster,
                    smem,
                    bytes,
                    offsets,
                } => {
                    let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
                    if offsets.len() > MAX_ARGS {
                        return Err(misuse(
                            Misuse::LaunchArguments,
                            "more than 64 kernel arguments",
                        ));
                    }
                    for (p, &o) in ptrs.iter_mut().zip(offsets) {
                        *p = bytes[o..].as_ptr() as *mut c_void;
                    }
                    // SAFETY: the arguments recorded for this kernel, whose memory is
                    // still live (checked above).
                    unsafe {
                        self.run_launch(
                            &**k,
                            *grid,
                            *block,
                            *cluster,
                            *smem,
                            &mut ptrs[..offsets.len()],
                        )?
                    };
                }
                Op::Copy {
                    dst,
                    src,
                    bytes,
                    kind,
                    ..
                } => {
                    let bytes = bytes.load(Ordering::Relaxed);
                    run_copy(*dst, *src, bytes, *kind)?;
                    if *kind == CopyKind::HostToDevice {
                        uploaded += bytes as u64;
                    }
                }
                Op::Mark { marks, index } => marks.note(*index),
                Op::Memset { dst, value, bytes } => run_memset(*dst, *value, *bytes)?,
                Op::Gemm(gc) => run_gemm(gc)?,
            }
        }
        Ok(uploaded)
    }
}

fn run_copy(dst: u64, src: u64, bytes: usize, kind: CopyKind) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    if kind != CopyKind::DeviceToHost {
        check_range(dst, bytes, "copy destination")?;
    }
    if kind != CopyKind::HostToDevice {
        check_range(src, bytes, "copy source")?;
        if kind == CopyKind::DeviceToHost {
            check_written(src, bytes, "download")?;
        }
    }
    // SAFETY: device ends checked against live allocations; host ends are the caller's
    // (pinned buffers and slices of the stated length).
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
    Ok(())
}

fn run_memset(dst: u64, value: u8, bytes: usize) -> Result<()> {
    check_range(dst, bytes, "memset")?;
    // SAFETY: checked above.
    unsafe { std::ptr::write_bytes(dst as *mut u8, value, bytes) };
    Ok(())
}
