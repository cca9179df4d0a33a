//! The C ABI over [`Engine`]. `runtime/include/miad.h` is its contract and documents every
//! export; this file keeps to it (a test compares the two).
//!
//! Shape (after rustls-ffi): opaque handles with explicit ownership, stable numeric status
//! codes, messages written into the caller's buffer, and a panic boundary at every export.
//!
//! Handles are not pointers to engine memory but tokens (`slot index + 1` and a
//! generation) looked up in a table. A closed or never-opened handle is therefore always
//! detected, even after the memory was reused, and a second `miad_engine_close` is
//! harmless. Each slot carries a state (idle / busy / poisoned): a call claims the engine
//! under the table lock, so two threads calling into one engine get `MIAD_BUSY` instead of
//! a data race, and a close during a call is refused.

#![allow(non_camel_case_types)]

use crate::backend::{Backend, Precision};
use crate::engine::{Engine, EngineOptions};
use crate::format::FormatError;
use crate::pipeline::input::{CloudView, RgbView};
use crate::pipeline::preprocess::Unusable;
use crate::types::{Case, InspectOptions, Verdict, MAX_INPUT_SIDE, MAX_REGIONS, MAX_THREADS};
use crate::Error;
use std::borrow::Cow;
use std::cell::UnsafeCell;
use std::ffi::{c_char, CStr};
use std::fmt::{self, Write as _};
use std::mem::{align_of, offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

// ---------------------------------------------------------------------------------------
// Status codes and other constants (numbers are part of the ABI: never renumber).

/// The return type of every export that can fail.
pub type miad_status = i32;

/// Status codes. `#[repr(i32)]` only for the cast; C callers see plain `int32_t`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NullArgument = 1,
    InvalidArgument = 2,
    InvalidInput = 3,
    NoUsableModality = 4,
    FileFormat = 5,
    ModelMismatch = 6,
    Io = 7,
    Config = 8,
    Decode = 9,
    Cuda = 10,
    BufferTooSmall = 11,
    InvalidHandle = 12,
    Busy = 13,
    Panic = 14,
    FileChanged = 15,
    NonFinite = 16,
    Forked = 17,
}

impl Status {
    pub const ALL: [Status; 18] = [
        Status::Ok,
        Status::NullArgument,
        Status::InvalidArgument,
        Status::InvalidInput,
        Status::NoUsableModality,
        Status::FileFormat,
        Status::ModelMismatch,
        Status::Io,
        Status::Config,
        Status::Decode,
        Status::Cuda,
        Status::BufferTooSmall,
        Status::InvalidHandle,
        Status::Busy,
        Status::Panic,
        Status::FileChanged,
        Status::NonFinite,
        Status::Forked,
    ];

    pub fn name(self) -> &'static CStr {
        match self {
            Status::Ok => c"MIAD_OK",
            Status::NullArgument => c"MIAD_NULL_ARGUMENT",
            Status::InvalidArgument => c"MIAD_INVALID_ARGUMENT",
            Status::InvalidInput => c"MIAD_INVALID_INPUT",
            Status::NoUsableModality => c"MIAD_NO_USABLE_MODALITY",
            Status::FileFormat => c"MIAD_FILE_FORMAT",
            Status::ModelMismatch => c"MIAD_MODEL_MISMATCH",
            Status::Io => c"MIAD_IO",
            Status::Config => c"MIAD_CONFIG",
            Status::Decode => c"MIAD_DECODE",
            Status::Cuda => c"MIAD_CUDA",
            Status::BufferTooSmall => c"MIAD_BUFFER_TOO_SMALL",
            Status::InvalidHandle => c"MIAD_INVALID_HANDLE",
            Status::Busy => c"MIAD_BUSY",
            Status::Panic => c"MIAD_PANIC",
            Status::FileChanged => c"MIAD_FILE_CHANGED",
            Status::NonFinite => c"MIAD_NON_FINITE",
            Status::Forked => c"MIAD_FORKED",
        }
    }

    /// The status of a library error. Exhaustive on purpose: a new variant must be given a
    /// code here before the crate compiles.
    pub fn of(e: &Error) -> Status {
        match e {
            Error::Format(FormatError::Io { .. })
            | Error::Format(FormatError::NotRegular { .. })
            | Error::Io { .. } => Status::Io,
            Error::Format(FormatError::Changed { .. }) => Status::FileChanged,
            Error::Format(FormatError::ModelMismatch { .. }) => Status::ModelMismatch,
            Error::Format(_) => Status::FileFormat,
            Error::Input(_) => Status::InvalidInput,
            Error::Config(_) => Status::Config,
            Error::NoUsableModality(_) => Status::NoUsableModality,
            Error::Decode { .. } => Status::Decode,
            Error::Device(_) => Status::Cuda,
            Error::NonFinite(_) => Status::NonFinite,
            Error::Forked(_) => Status::Forked,
        }
    }
}

pub const MIAD_VERDICT_PASS: u32 = 0;
pub const MIAD_VERDICT_FAIL: u32 = 1;
pub const MIAD_VERDICT_UNCERTAIN: u32 = 2;

pub const MIAD_CASE_COMPLETE: u32 = 0;
pub const MIAD_CASE_RGB_ONLY: u32 = 1;
pub const MIAD_CASE_CLOUD_ONLY: u32 = 2;

pub const MIAD_USED_RGB: u32 = 1;
pub const MIAD_USED_CLOUD: u32 = 2;

pub const MIAD_MODALITY_USABLE: u32 = 0;
pub const MIAD_MODALITY_MISSING: u32 = 1;
pub const MIAD_MODALITY_BLANK: u32 = 2;
pub const MIAD_MODALITY_NO_POINTS: u32 = 3;
pub const MIAD_MODALITY_NON_FINITE: u32 = 4;
pub const MIAD_MODALITY_EMPTY_AFTER_CLEANING: u32 = 5;
pub const MIAD_MODALITY_TOO_FEW_POINTS: u32 = 6;

pub const MIAD_WROTE_MAP: u32 = 1;
pub const MIAD_WROTE_INPUT_MAP: u32 = 2;

pub const MIAD_MAX_REGIONS: u32 = MAX_REGIONS as u32;
/// Largest `max_width` / `max_height` an engine may be planned for: the workspace grows
/// with their product and a failed allocation at planning would abort the process.
pub const MIAD_MAX_SIDE: u32 = MAX_INPUT_SIDE as u32;
pub const MIAD_MAX_THREADS: u32 = MAX_THREADS as u32;
/// A message buffer this long holds every message miad writes in practice.
pub const MIAD_ERR_BUF_LEN: u32 = 1024;
const CATEGORY_LEN: usize = 64;
pub const MIAD_CATEGORY_LEN: u32 = CATEGORY_LEN as u32;
const BACKEND_NOTE_LEN: usize = 256;
pub const MIAD_BACKEND_NOTE_LEN: u32 = BACKEND_NOTE_LEN as u32;
/// `miad_engine_options.backend` values (see [`crate::backend::Backend`]).
pub const MIAD_BACKEND_CPU: u32 = 0;
pub const MIAD_BACKEND_CUDA: u32 = 1;
pub const MIAD_BACKEND_AUTO: u32 = 2;
pub const MIAD_BACKEND_CUDA_SIM: u32 = 3;
/// `miad_engine_options.precision` values (see [`crate::backend::Precision`]).
pub const MIAD_PRECISION_F32: u32 = 0;
pub const MIAD_PRECISION_BF16: u32 = 1;

/// Every numeric constant the header must define, with its value (the drift test reads
/// the header and compares both ways).
pub const HEADER_CONSTANTS: &[(&str, i64)] = &[
    ("MIAD_VERDICT_PASS", MIAD_VERDICT_PASS as i64),
    ("MIAD_VERDICT_FAIL", MIAD_VERDICT_FAIL as i64),
    ("MIAD_VERDICT_UNCERTAIN", MIAD_VERDICT_UNCERTAIN as i64),
    ("MIAD_CASE_COMPLETE", MIAD_CASE_COMPLETE as i64),
    ("MIAD_CASE_RGB_ONLY", MIAD_CASE_RGB_ONLY as i64),
    ("MIAD_CASE_CLOUD_ONLY", MIAD_CASE_CLOUD_ONLY as i64),
    ("MIAD_USED_RGB", MIAD_USED_RGB as i64),
    ("MIAD_USED_CLOUD", MIAD_USED_CLOUD as i64),
    ("MIAD_MODALITY_USABLE", MIAD_MODALITY_USABLE as i64),
    ("MIAD_MODALITY_MISSING", MIAD_MODALITY_MISSING as i64),
    ("MIAD_MODALITY_BLANK", MIAD_MODALITY_BLANK as i64),
    ("MIAD_MODALITY_NO_POINTS", MIAD_MODALITY_NO_POINTS as i64),
    ("MIAD_MODALITY_NON_FINITE", MIAD_MODALITY_NON_FINITE as i64),
    (
        "MIAD_MODALITY_EMPTY_AFTER_CLEANING",
        MIAD_MODALITY_EMPTY_AFTER_CLEANING as i64,
    ),
    (
        "MIAD_MODALITY_TOO_FEW_POINTS",
        MIAD_MODALITY_TOO_FEW_POINTS as i64,
    ),
    ("MIAD_WROTE_MAP", MIAD_WROTE_MAP as i64),
    ("MIAD_WROTE_INPUT_MAP", MIAD_WROTE_INPUT_MAP as i64),
    ("MIAD_MAX_REGIONS", MIAD_MAX_REGIONS as i64),
    ("MIAD_MAX_SIDE", MIAD_MAX_SIDE as i64),
    ("MIAD_MAX_THREADS", MIAD_MAX_THREADS as i64),
    ("MIAD_ERR_BUF_LEN", MIAD_ERR_BUF_LEN as i64),
    ("MIAD_CATEGORY_LEN", MIAD_CATEGORY_LEN as i64),
    ("MIAD_BACKEND_NOTE_LEN", MIAD_BACKEND_NOTE_LEN as i64),
    ("MIAD_BACKEND_CPU", MIAD_BACKEND_CPU as i64),
    ("MIAD_BACKEND_CUDA", MIAD_BACKEND_CUDA as i64),
    ("MIAD_BACKEND_AUTO", MIAD_BACKEND_AUTO as i64),
    ("MIAD_BACKEND_CUDA_SIM", MIAD_BACKEND_CUDA_SIM as i64),
    ("MIAD_PRECISION_F32", MIAD_PRECISION_F32 as i64),
    ("MIAD_PRECISION_BF16", MIAD_PRECISION_BF16 as i64),
];

// ---------------------------------------------------------------------------------------
// The structs of the header. Sizes and a few offsets are asserted here and, with the same
// numbers, in miad.h.

/// Opaque engine handle (a token, see the module doc; never dereferenced).
pub struct miad_engine {
    _opaque: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miad_engine_options {
    /// sizeof(miad_engine_options) as the caller compiled it (set by the default).
    pub struct_size: u32,
    pub threads: u32,
    pub max_width: u32,
    pub max_height: u32,
    pub preprocessed: u32,
    pub verify_checksums: u32,
    pub backend: u32,
    pub device: u32,
    pub precision: u32,
    pub in_memory: u32,
    /// Added after the first header (`struct_size` 44); a struct of the first header
    /// (40 bytes) gets the default, 1.
    pub pruned_search: u32,
}

/// `struct_size` of each earlier layout of `miad_engine_options` still accepted (the fields
/// it lacks take their defaults): the first header's, before `pruned_search`.
const ENGINE_OPTIONS_EARLIER_SIZES: &[usize] = &[40];

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miad_part {
    pub rgb: *const u8,
    pub rgb_width: usize,
    pub rgb_height: usize,
    /// Bytes.
    pub rgb_stride: usize,
    pub cloud: *const f32,
    pub cloud_width: usize,
    pub cloud_height: usize,
    /// Floats.
    pub cloud_stride: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miad_inspect_options {
    /// sizeof(miad_inspect_options) as the caller compiled it (set by the default).
    pub struct_size: u32,
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    pub grey_band_low: f32,
    pub grey_band_high: f32,
    pub want_map: u32,
    pub want_regions: u32,
    pub map: *mut f32,
    pub map_len: usize,
    pub input_map: *mut f32,
    pub input_map_len: usize,
}

/// The engine's region, already `#[repr(C)]`: the C struct `miad_region`.
pub type miad_region = crate::types::Region;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct miad_result {
    pub score: f32,
    pub verdict: u32,
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    pub bank_scores: [f32; 3],
    pub modality_case: u32,
    pub modalities_used: u32,
    pub rgb_status: u32,
    pub cloud_status: u32,
    pub case_calibrated: u32,
    pub map_size: u32,
    pub outputs_written: u32,
    pub input_width: u32,
    pub input_height: u32,
    pub regions_found: u32,
    pub regions_count: u32,
    pub time_preprocess_s: f64,
    pub time_rgb_s: f64,
    pub time_point_s: f64,
    pub time_fusion_s: f64,
    pub time_score_s: f64,
    pub time_total_s: f64,
    pub regions: [miad_region; MAX_REGIONS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct miad_engine_info {
    pub map_size: u32,
    pub threads: u32,
    pub max_width: u32,
    pub max_height: u32,
    pub preprocessed: u32,
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    pub grey_band_low: f32,
    pub grey_band_high: f32,
    pub cases_calibrated: u32,
    pub category: [c_char; CATEGORY_LEN],
    pub backend_used: u32,
    pub backend_note: [c_char; BACKEND_NOTE_LEN],
}

// The same numbers as the MIAD_STATIC_ASSERT lines of miad.h.
const _: () = {
    assert!(size_of::<miad_engine_options>() == 44);
    assert!(offset_of!(miad_engine_options, pruned_search) == 40);
    assert!(size_of::<miad_part>() == size_of::<[usize; 8]>());
    assert!(size_of::<usize>() != 8 || offset_of!(miad_inspect_options, map) == 32);
    assert!(size_of::<usize>() != 8 || size_of::<miad_inspect_options>() == 64);
    assert!(size_of::<miad_region>() == 28);
    assert!(size_of::<miad_result>() == 1912);
    assert!(align_of::<miad_result>() == 8);
    assert!(offset_of!(miad_result, regions_count) == 68);
    assert!(offset_of!(miad_result, time_preprocess_s) == 72);
    assert!(offset_of!(miad_result, regions) == 120);
    assert!(size_of::<miad_engine_info>() == 364);
    assert!(offset_of!(miad_engine_info, category) == 40);
    assert!(offset_of!(miad_engine_info, backend_note) == 108);
    assert!(MAX_REGIONS == 64);
};
// The slot table moves engines between threads.
static_assertions::assert_impl_all!(Engine: Send);

// ---------------------------------------------------------------------------------------
// Messages into the caller's buffer.

/// Writes UTF-8 text into a caller's `char` buffer: truncated at a character boundary,
/// always NUL-terminated, nothing written without a buffer. Never allocates.
struct MsgBuf {
    ptr: *mut u8,
    /// Bytes of text that fit (the buffer length minus the NUL).
    cap: usize,
    len: usize,
    truncated: bool,
}

impl MsgBuf {
    /// # Safety
    /// `ptr` is null or valid for writes of `len` bytes.
    unsafe fn new(ptr: *mut c_char, len: usize) -> Option<MsgBuf> {
        if ptr.is_null() || len == 0 {
            return None;
        }
        let b = MsgBuf {
            ptr: ptr.cast(),
            cap: len - 1,
            len: 0,
            truncated: false,
        };
        // SAFETY: len ≥ 1 bytes are writable.
        unsafe { *b.ptr = 0 };
        Some(b)
    }
}

impl fmt::Write for MsgBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.truncated {
            return Ok(());
        }
        let room = self.cap - self.len;
        let mut n = s.len().min(room);
        if n < s.len() {
            self.truncated = true;
            while !s.is_char_boundary(n) {
                n -= 1;
            }
        }
        // SAFETY: len + n ≤ cap < buffer length, and the source is a live &str.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), self.ptr.add(self.len), n);
            self.len += n;
            *self.ptr.add(self.len) = 0;
        }
        Ok(())
    }
}

/// Why an export failed: a status and what to tell the caller.
enum Fail {
    Msg(Status, Cow<'static, str>),
    Lib(Error),
}

impl Fail {
    fn new(status: Status, msg: impl Into<Cow<'static, str>>) -> Fail {
        Fail::Msg(status, msg.into())
    }
    fn status(&self) -> Status {
        match self {
            Fail::Msg(s, _) => *s,
            Fail::Lib(e) => Status::of(e),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Msg(_, m) => f.write_str(m),
            Fail::Lib(e) => write!(f, "{e}"),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Lib(e)
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// The panic boundary and message plumbing of every export with a message buffer: runs
/// `body`, clears the buffer on success, writes the message on failure.
///
/// # Safety
/// `err_buf` is null or valid for writes of `err_len` bytes.
unsafe fn export(
    err_buf: *mut c_char,
    err_len: usize,
    body: impl FnOnce() -> Result<(), Fail>,
) -> miad_status {
    let outcome = quietly(body);
    // SAFETY: the caller's contract on err_buf.
    let mut msg = unsafe { MsgBuf::new(err_buf, err_len) };
    let status = match &outcome {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(fail)) => {
            if let Some(m) = &mut msg {
                let _ = write!(m, "{fail}");
            }
            fail.status()
        }
        Err(payload) => {
            if let Some(m) = &mut msg {
                let _ = write!(
                    m,
                    "internal error (panic, please report): {}",
                    panic_text(payload.as_ref())
                );
            }
            Status::Panic
        }
    };
    status as miad_status
}

/// The panic boundary of exports without a message buffer.
fn export_quiet(body: impl FnOnce() -> Status) -> miad_status {
    quietly(body).unwrap_or(Status::Panic) as miad_status
}

thread_local! {
    /// Set while this thread runs inside an export.
    static IN_EXPORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `body` behind the panic boundary without the standard panic hook printing to
/// stderr: the library never writes to the caller's stdout or stderr (the message goes
/// to the caller's buffer). A hook is installed once; it stays silent for panics on a
/// thread inside an export and on miad's worker threads, and hands every other panic
/// of the process to the hook that was there before.
fn quietly<R>(body: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = IN_EXPORT.with(|f| f.get())
                || std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("miad-worker-"));
            if !ours {
                previous(info);
            }
        }));
    });
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_EXPORT.with(|f| f.set(self.0));
        }
    }
    let _reset = Reset(IN_EXPORT.with(|f| f.replace(true)));
    catch_unwind(AssertUnwindSafe(body))
}

// ---------------------------------------------------------------------------------------
// The handle table.

const IDLE: u8 = 0;
const BUSY: u8 = 1;
/// A call panicked while holding the engine: its buffers may be half-written.
const POISONED: u8 = 2;

/// Bits of a handle that hold `slot index + 1` (the rest is the slot's generation).
const INDEX_BITS: u32 = 16;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const GENERATION_MASK: usize = usize::MAX >> INDEX_BITS;

struct Entry {
    state: AtomicU8,
    /// The process that opened the engine: a forked child must not join its threads.
    pid: u32,
    /// Accessed only by the call that moved `state` from IDLE to BUSY.
    engine: UnsafeCell<Engine>,
}

// SAFETY: the engine is only reached through a claim (exclusive, see `Claim`), and Engine
// is Send (asserted above).
unsafe impl Sync for Entry {}

struct Slot {
    generation: usize,
    entry: Option<Box<Entry>>,
}

static TABLE: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

fn table() -> MutexGuard<'static, Vec<Slot>> {
    // Nothing panics while holding the lock, but never let poisoning wedge the ABI.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A per-process random key mixed into every handle (its low `INDEX_BITS` are zero, so
/// a handle is never NULL): handles are neither small integers nor predictable from one
/// process to the next, and a forged value is refused unless it guesses both the key
/// and the slot's generation.
fn handle_key() -> usize {
    static KEY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| random_word() & !INDEX_MASK)
}

/// A random word from the standard library's OS-seeded hasher keys (no dependency).
fn random_word() -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(&h as *const _ as usize);
    h.finish() as usize
}

fn encode(index: usize, generation: usize) -> *mut miad_engine {
    ((((generation & GENERATION_MASK) << INDEX_BITS) | (index + 1)) ^ handle_key())
        as *mut miad_engine
}

/// The live slot a handle names, if any.
fn find(table: &[Slot], handle: *const miad_engine) -> Result<usize, Fail> {
    if handle.is_null() {
        return Err(Fail::new(Status::NullArgument, "engine handle is NULL"));
    }
    let raw = handle as usize ^ handle_key();
    let index = (raw & INDEX_MASK).wrapping_sub(1);
    let generation = raw >> INDEX_BITS;
    match table.get(index) {
        Some(s) if s.entry.is_some() && s.generation == generation => Ok(index),
        _ => Err(Fail::new(
            Status::InvalidHandle,
            "engine handle is not open (already closed, or not from miad_engine_open)",
        )),
    }
}

/// Exclusive use of one engine for the duration of a call.
struct Claim {
    entry: *const Entry,
}

impl Claim {
    fn engine(&mut self) -> &mut Engine {
        // SAFETY: the entry stays alive while BUSY (close refuses busy engines), and only
        // this claim holds BUSY.
        unsafe { &mut *(*self.entry).engine.get() }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let state = if std::thread::panicking() {
            POISONED
        } else {
            IDLE
        };
        // SAFETY: see `engine`. This store is the claim's last access to the entry.
        unsafe { (*self.entry).state.store(state, Ordering::Release) };
    }
}

fn claim(handle: *const miad_engine) -> Result<Claim, Fail> {
    let t = table();
    let index = find(&t, handle)?;
    let entry: &Entry = t[index]
        .entry
        .as_deref()
        .ok_or_else(|| Fail::new(Status::InvalidHandle, "engine handle is not open"))?;
    match entry
        .state
        .compare_exchange(IDLE, BUSY, Ordering::Acquire, Ordering::Relaxed)
    {
        Ok(_) => Ok(Claim {
            entry: entry as *const Entry,
        }),
        Err(BUSY) => Err(Fail::new(
            Status::Busy,
            "engine is in use by another call (calls on one engine must be serialised)",
        )),
        Err(_) => Err(Fail::new(
            Status::Panic,
            "engine is unusable after an internal error in an earlier call; close it",
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Conversions.

fn path_arg<'a>(p: *const c_char, what: &'static str) -> Result<&'a Path, Fail> {
    if p.is_null() {
        return Err(Fail::new(Status::NullArgument, format!("{what} is NULL")));
    }
    // SAFETY: the header requires a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| {
        Fail::new(
            Status::InvalidArgument,
            format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if s.is_empty() {
        return Err(Fail::new(
            Status::InvalidArgument,
            format!("{what} is empty"),
        ));
    }
    Ok(Path::new(s))
}

/// Largest `struct_size` accepted (a newer header's struct, with room to grow).
const MAX_STRUCT_SIZE: usize = 4096;

/// Reads a caller's option struct whose first field is its own size (`struct_size`):
/// refuses a size of 0 (not filled by the `_default` function), a size smaller than this
/// library's struct unless it is one of the `earlier` layouts (then the fields that layout
/// lacks keep their values in `defaults`), and a larger struct (a newer header) that sets
/// fields this library does not know (non-zero bytes past ours).
///
/// # Safety
/// `p` is non-null, aligned, and readable for `struct_size` bytes (the caller's contract).
unsafe fn read_sized<T: Copy>(
    p: *const T,
    what: &str,
    earlier: &[usize],
    defaults: T,
) -> Result<T, Fail> {
    let ours = size_of::<T>();
    // SAFETY: every option struct starts with a u32 `struct_size`; `p` is aligned for T.
    let size = unsafe { p.cast::<u32>().read() } as usize;
    let bad = |m: String| Err(Fail::new(Status::InvalidArgument, m));
    if size == 0 {
        return bad(format!(
            "{what}.struct_size is 0: fill the struct with {what}_default() before setting fields"
        ));
    }
    if size < ours && earlier.contains(&size) {
        let mut out = defaults;
        // SAFETY: the caller declares `size` readable bytes; `size` < size_of::<T>() ends
        // on a field boundary of the earlier layout, and T is plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), size)
        };
        return Ok(out);
    }
    if size < ours {
        return bad(format!(
            "{what}.struct_size is {size}, smaller than this library's {ours} bytes and no \
             earlier layout's (rebuild against this miad.h and fill it with {what}_default())"
        ));
    }
    if size > MAX_STRUCT_SIZE {
        return bad(format!(
            "{what}.struct_size is {size}, not a struct size (at most {MAX_STRUCT_SIZE})"
        ));
    }
    if size > ours {
        // SAFETY: the caller declares `size` readable bytes.
        let tail = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(ours), size - ours) };
        if tail.iter().any(|&b| b != 0) {
            return bad(format!(
                "{what} sets fields past byte {ours} that this library ({}) does not know",
                env!("CARGO_PKG_VERSION")
            ));
        }
    }
    // SAFETY: as above; T is plain data.
    Ok(unsafe { p.read() })
}

fn engine_options(o: &miad_engine_options) -> Result<EngineOptions, Fail> {
    for (name, v) in [("max_width", o.max_width), ("max_height", o.max_height)] {
        if v == 0 || v > MIAD_MAX_SIDE {
            return Err(Fail::new(
                Status::InvalidArgument,
                format!("engine option {name} = {v} is outside 1..={MIAD_MAX_SIDE}"),
            ));
        }
    }
    if o.threads > MIAD_MAX_THREADS {
        return Err(Fail::new(
            Status::InvalidArgument,
            format!(
                "engine option threads = {} is above {MIAD_MAX_THREADS}",
                o.threads
            ),
        ));
    }
    let backend = match o.backend {
        MIAD_BACKEND_CPU => Backend::Cpu,
        MIAD_BACKEND_CUDA => Backend::Cuda,
        MIAD_BACKEND_AUTO => Backend::Auto,
        MIAD_BACKEND_CUDA_SIM => Backend::CudaSim,
        other => {
            return Err(Fail::new(
                Status::InvalidArgument,
                format!(
                    "engine option backend = {other} is none of MIAD_BACKEND_CPU (0), \
                     MIAD_BACKEND_CUDA (1), MIAD_BACKEND_AUTO (2), MIAD_BACKEND_CUDA_SIM (3)"
                ),
            ))
        }
    };
    let precision = match o.precision {
        MIAD_PRECISION_F32 => Precision::F32,
        MIAD_PRECISION_BF16 => Precision::Bf16,
        other => {
            return Err(Fail::new(
                Status::InvalidArgument,
                format!(
                    "engine option precision = {other} is neither MIAD_PRECISION_F32 (0) \
                     nor MIAD_PRECISION_BF16 (1)"
                ),
            ))
        }
    };
    Ok(EngineOptions {
        threads: o.threads as usize,
        max_width: o.max_width as usize,
        max_height: o.max_height as usize,
        preprocessed: o.preprocessed != 0,
        verify_checksums: o.verify_checksums != 0,
        backend,
        device: o.device as usize,
        precision,
        in_memory: o.in_memory != 0,
        pruned_search: o.pruned_search != 0,
    })
}

fn default_engine_options() -> miad_engine_options {
    let d = EngineOptions::default();
    miad_engine_options {
        struct_size: size_of::<miad_engine_options>() as u32,
        threads: d.threads as u32,
        max_width: d.max_width as u32,
        max_height: d.max_height as u32,
        preprocessed: d.preprocessed as u32,
        verify_checksums: d.verify_checksums as u32,
        backend: MIAD_BACKEND_CPU,
        device: d.device as u32,
        precision: MIAD_PRECISION_F32,
        in_memory: d.in_memory as u32,
        pruned_search: d.pruned_search as u32,
    }
}

fn default_inspect_options() -> miad_inspect_options {
    let d = InspectOptions::default();
    miad_inspect_options {
        struct_size: size_of::<miad_inspect_options>() as u32,
        part_threshold: f32::NAN,
        pixel_threshold: f32::NAN,
        grey_band_low: f32::NAN,
        grey_band_high: f32::NAN,
        want_map: d.map as u32,
        want_regions: d.regions as u32,
        map: std::ptr::null_mut(),
        map_len: 0,
        input_map: std::ptr::null_mut(),
        input_map_len: 0,
    }
}

fn inspect_options(o: &miad_inspect_options) -> Result<InspectOptions, Fail> {
    let set = |v: f32| (!v.is_nan()).then_some(v);
    let grey_band = match (set(o.grey_band_low), set(o.grey_band_high)) {
        (None, None) => None,
        (Some(lo), Some(hi)) if lo <= hi => Some([lo, hi]),
        (Some(lo), Some(hi)) => {
            return Err(Fail::new(
                Status::InvalidArgument,
                format!("grey band [{lo}, {hi}) has its low end above its high end"),
            ))
        }
        _ => {
            return Err(Fail::new(
                Status::InvalidArgument,
                "grey band: set both ends or neither (NaN = not set)",
            ))
        }
    };
    if o.want_map == 0 && (!o.map.is_null() || !o.input_map.is_null()) {
        return Err(Fail::new(
            Status::InvalidArgument,
            "a map buffer is given but want_map is 0",
        ));
    }
    for (name, p) in [("map", o.map), ("input_map", o.input_map)] {
        if !p.is_null() && !p.is_aligned() {
            return Err(Fail::new(
                Status::InvalidArgument,
                format!("{name} buffer is not aligned for float"),
            ));
        }
    }
    Ok(InspectOptions {
        part_threshold: set(o.part_threshold),
        pixel_threshold: set(o.pixel_threshold),
        grey_band,
        map: o.want_map != 0,
        regions: o.want_regions != 0,
        ..InspectOptions::default()
    })
}

/// Elements a `width × height` view with `stride` spans, checked against the address
/// space (a slice may not exceed `isize::MAX` bytes).
fn view_len(
    what: &str,
    unit: &str,
    elem: usize,
    width: usize,
    height: usize,
    stride: usize,
) -> Result<usize, Fail> {
    let bad = |m: String| Fail::new(Status::InvalidInput, m);
    if width == 0 || height == 0 {
        return Err(bad(format!("{what}: zero size {width}×{height}")));
    }
    let row = width
        .checked_mul(3)
        .ok_or_else(|| bad(format!("{what}: width {width} overflows")))?;
    if stride < row {
        return Err(bad(format!(
            "{what}: row stride {stride} {unit} is smaller than a row of {width} pixels ({row} {unit})"
        )));
    }
    (height - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(row))
        .filter(|&n| {
            n.checked_mul(elem)
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| {
            bad(format!(
                "{what}: {width}×{height} with stride {stride} {unit} overflows the address space"
            ))
        })
}

/// The part's views. The data lengths come from the sizes (the caller's contract).
fn part_views(p: &miad_part) -> Result<(Option<RgbView<'_>>, Option<CloudView<'_>>), Fail> {
    let rgb = if p.rgb.is_null() {
        None
    } else {
        let n = view_len(
            "RGB image",
            "bytes",
            1,
            p.rgb_width,
            p.rgb_height,
            p.rgb_stride,
        )?;
        Some(RgbView {
            // SAFETY: the header requires `rgb` to be readable over the span of its sizes.
            data: unsafe { std::slice::from_raw_parts(p.rgb, n) },
            width: p.rgb_width,
            height: p.rgb_height,
            stride: p.rgb_stride,
        })
    };
    let cloud = if p.cloud.is_null() {
        None
    } else {
        let n = view_len(
            "point cloud",
            "floats",
            size_of::<f32>(),
            p.cloud_width,
            p.cloud_height,
            p.cloud_stride,
        )?;
        if !p.cloud.is_aligned() {
            return Err(Fail::new(
                Status::InvalidInput,
                "point cloud pointer is not aligned for float",
            ));
        }
        Some(CloudView {
            // SAFETY: as for `rgb`; alignment checked above.
            data: unsafe { std::slice::from_raw_parts(p.cloud, n) },
            width: p.cloud_width,
            height: p.cloud_height,
            stride: p.cloud_stride,
        })
    };
    Ok((rgb, cloud))
}

fn modality_code(u: Option<Unusable>) -> u32 {
    match u {
        None => MIAD_MODALITY_USABLE,
        Some(Unusable::Missing) => MIAD_MODALITY_MISSING,
        Some(Unusable::Blank) => MIAD_MODALITY_BLANK,
        Some(Unusable::AllZero) => MIAD_MODALITY_NO_POINTS,
        Some(Unusable::NonFinite) => MIAD_MODALITY_NON_FINITE,
        Some(Unusable::EmptyAfterCleaning) => MIAD_MODALITY_EMPTY_AFTER_CLEANING,
        Some(Unusable::TooFewPoints) => MIAD_MODALITY_TOO_FEW_POINTS,
    }
}

fn too_small(what: &str, have: usize, need: usize, shape: fmt::Arguments<'_>) -> Fail {
    Fail::new(
        Status::BufferTooSmall,
        format!("{what} buffer holds {have} floats, the map needs {shape} = {need}"),
    )
}

// ---------------------------------------------------------------------------------------
// Exports. Every one is `unsafe` for Rust callers (raw pointers); the contracts are those
// of miad.h.

/// The library version, a static NUL-terminated string (never freed).
#[no_mangle]
pub extern "C" fn miad_version() -> *const c_char {
    // Nothing here can panic; the boundary is there so that no export lacks one.
    catch_unwind(|| concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
        .unwrap_or(c"?".as_ptr())
}

/// The name of a status code (`"MIAD_OK"`, …), or `"MIAD_UNKNOWN_STATUS"`: static.
#[no_mangle]
pub extern "C" fn miad_status_name(status: miad_status) -> *const c_char {
    catch_unwind(|| {
        Status::ALL
            .iter()
            .find(|s| **s as miad_status == status)
            .map_or(c"MIAD_UNKNOWN_STATUS", |s| s.name())
    })
    .unwrap_or(c"MIAD_UNKNOWN_STATUS")
    .as_ptr()
}

/// Writes the version and the compiled-in backends into `buf`.
///
/// # Safety
/// `buf` is null or valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn miad_build_info(buf: *mut c_char, len: usize) -> miad_status {
    export_quiet(|| {
        if buf.is_null() {
            return Status::NullArgument;
        }
        // SAFETY: the caller's contract.
        let Some(mut m) = (unsafe { MsgBuf::new(buf, len) }) else {
            return Status::BufferTooSmall;
        };
        let _ = write!(m, "miad {} backends=cpu", env!("CARGO_PKG_VERSION"));
        #[cfg(feature = "cuda")]
        {
            let _ = m.write_str(",cuda cuda_cubins=");
            let mut first = true;
            for (code, name) in [(87, "sm_87"), (90, "sm_90"), (900, "sm_90a")] {
                let built = crate::cuda::device::module::KERNEL_MODULES
                    .iter()
                    .any(|k| k.cubins.iter().any(|(a, _)| *a == code));
                if built {
                    let _ = write!(m, "{}{name}", if first { "" } else { "," });
                    first = false;
                }
            }
            if first {
                let _ = m.write_str("none");
            }
            let _ = m.write_str(" cuda_nvrtc=yes");
        }
        if m.truncated {
            Status::BufferTooSmall
        } else {
            Status::Ok
        }
    })
}

/// Fills `out` with the default engine options.
///
/// # Safety
/// `out` is null or points to a writable `miad_engine_options`.
#[no_mangle]
pub unsafe extern "C" fn miad_engine_options_default(out: *mut miad_engine_options) -> miad_status {
    export_quiet(|| {
        if out.is_null() {
            return Status::NullArgument;
        }
        // SAFETY: the caller's contract; `write` does not read the old value.
        unsafe { out.write(default_engine_options()) };
        Status::Ok
    })
}

/// Fills `out` with the default inspection options.
///
/// # Safety
/// `out` is null or points to a writable `miad_inspect_options`.
#[no_mangle]
pub unsafe extern "C" fn miad_inspect_options_default(
    out: *mut miad_inspect_options,
) -> miad_status {
    export_quiet(|| {
        if out.is_null() {
            return Status::NullArgument;
        }
        // SAFETY: the caller's contract.
        unsafe { out.write(default_inspect_options()) };
        Status::Ok
    })
}

/// Opens a model file and a bank file and plans an engine.
///
/// # Safety
/// Paths are null or NUL-terminated; `options` is null or readable; `out` is null or
/// writable; `err_buf` is null or valid for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn miad_engine_open(
    model_path: *const c_char,
    bank_path: *const c_char,
    options: *const miad_engine_options,
    out: *mut *mut miad_engine,
    err_buf: *mut c_char,
    err_len: usize,
) -> miad_status {
    let body = || {
        if out.is_null() {
            return Err(Fail::new(
                Status::NullArgument,
                "out (where the handle goes) is NULL",
            ));
        }
        // SAFETY: checked non-null; the caller's contract. NULL until success.
        unsafe { out.write(std::ptr::null_mut()) };
        let model = path_arg(model_path, "model path")?;
        let bank = path_arg(bank_path, "bank path")?;
        let opts = if options.is_null() {
            default_engine_options()
        } else {
            // SAFETY: the caller's contract.
            unsafe {
                read_sized(
                    options,
                    "miad_engine_options",
                    ENGINE_OPTIONS_EARLIER_SIZES,
                    default_engine_options(),
                )?
            }
        };
        let engine = Engine::open(model, bank, &engine_options(&opts)?)?;
        let entry = Box::new(Entry {
            state: AtomicU8::new(IDLE),
            pid: std::process::id(),
            engine: UnsafeCell::new(engine),
        });
        let mut t = table();
        let index = match t.iter().position(|s| s.entry.is_none()) {
            Some(i) => i,
            None if t.len() < INDEX_MASK => {
                t.push(Slot {
                    // A random first generation: a stale or forged handle of a fresh slot
                    // is no more predictable than one of an old slot.
                    generation: random_word() & GENERATION_MASK,
                    entry: None,
                });
                t.len() - 1
            }
            None => {
                return Err(Fail::new(
                    Status::InvalidArgument,
                    format!("too many engines open at once (at most {INDEX_MASK})"),
                ))
            }
        };
        t[index].entry = Some(entry);
        // SAFETY: as above.
        unsafe { out.write(encode(index, t[index].generation)) };
        Ok(())
    };
    // SAFETY: the caller's contract on err_buf.
    unsafe { export(err_buf, err_len, body) }
}

/// Closes an engine (joins its worker threads, unmaps its files). NULL is a no-op.
///
/// Returns `MIAD_INVALID_HANDLE` for a handle that is not open and `MIAD_BUSY` while a
/// call on the engine is running (it stays open).
#[no_mangle]
pub extern "C" fn miad_engine_close(engine: *mut miad_engine) -> miad_status {
    export_quiet(|| {
        if engine.is_null() {
            return Status::Ok;
        }
        let entry = {
            let mut t = table();
            let index = match find(&t, engine) {
                Ok(i) => i,
                Err(f) => return f.status(),
            };
            let slot = &mut t[index];
            let busy = slot
                .entry
                .as_ref()
                .is_some_and(|e| e.state.load(Ordering::Acquire) == BUSY);
            if busy {
                return Status::Busy;
            }
            slot.generation = (slot.generation + 1) & GENERATION_MASK;
            slot.entry.take()
        };
        match entry {
            // In a child after fork() the worker threads do not exist: joining them would
            // hang. The child's copy of the engine is left as it is (its memory is the
            // child's to lose at exit); the handle is closed.
            Some(e) if e.pid != std::process::id() => std::mem::forget(e),
            // Dropped outside the lock: joining worker threads takes a while.
            other => drop(other),
        }
        Status::Ok
    })
}

/// What an engine was opened with and what its bank file holds.
///
/// # Safety
/// `out` is null or writable; `err_buf` is null or valid for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn miad_engine_get_info(
    engine: *mut miad_engine,
    out: *mut miad_engine_info,
    err_buf: *mut c_char,
    err_len: usize,
) -> miad_status {
    let body = || {
        if out.is_null() {
            return Err(Fail::new(Status::NullArgument, "info is NULL"));
        }
        let mut c = claim(engine)?;
        let e = c.engine();
        let cfg = e.bank_config();
        let band = cfg.thresholds.grey_band.unwrap_or([f32::NAN; 2]);
        let cases = e.case_decisions();
        let mut info = miad_engine_info {
            map_size: e.map_size() as u32,
            threads: e.threads() as u32,
            max_width: e.options().max_width as u32,
            max_height: e.options().max_height as u32,
            preprocessed: e.options().preprocessed as u32,
            part_threshold: cfg.thresholds.part,
            pixel_threshold: cfg.thresholds.pixel,
            grey_band_low: band[0],
            grey_band_high: band[1],
            cases_calibrated: (1 << MIAD_CASE_COMPLETE)
                | Case::ALL
                    .iter()
                    .filter(|&&k| cases[k as usize].is_some())
                    .fold(0, |bits, &k| bits | 1 << k as u32),
            category: [0; CATEGORY_LEN],
            backend_used: match e.backend().used {
                Backend::Cuda => MIAD_BACKEND_CUDA,
                Backend::CudaSim => MIAD_BACKEND_CUDA_SIM,
                _ => MIAD_BACKEND_CPU,
            },
            backend_note: [0; BACKEND_NOTE_LEN],
        };
        let mut m = MsgBuf {
            ptr: info.category.as_mut_ptr().cast(),
            cap: CATEGORY_LEN - 1,
            len: 0,
            truncated: false,
        };
        let _ = m.write_str(&cfg.category);
        let mut note = MsgBuf {
            ptr: info.backend_note.as_mut_ptr().cast(),
            cap: BACKEND_NOTE_LEN - 1,
            len: 0,
            truncated: false,
        };
        let _ = note.write_str(&e.backend().describe());
        if let Some(search) = e.search_description() {
            let _ = write!(note, "; {search}");
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(info) };
        Ok(())
    };
    // SAFETY: the caller's contract on err_buf.
    unsafe { export(err_buf, err_len, body) }
}

/// Inspects one part. No heap allocation when it succeeds.
///
/// # Safety
/// `part`, `options` and `out` are null or valid; the part's pixel pointers are readable
/// over the span their sizes give; map buffers are writable for their lengths;
/// `err_buf` is null or valid for `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn miad_inspect(
    engine: *mut miad_engine,
    part: *const miad_part,
    options: *const miad_inspect_options,
    out: *mut miad_result,
    err_buf: *mut c_char,
    err_len: usize,
) -> miad_status {
    let body = || {
        if engine.is_null() {
            return Err(Fail::new(Status::NullArgument, "engine handle is NULL"));
        }
        if part.is_null() {
            return Err(Fail::new(Status::NullArgument, "part is NULL"));
        }
        if out.is_null() {
            return Err(Fail::new(Status::NullArgument, "result is NULL"));
        }
        // SAFETY: checked non-null; the caller's contract.
        let part = unsafe { &*part };
        let o = if options.is_null() {
            default_inspect_options()
        } else {
            // SAFETY: the caller's contract.
            unsafe {
                read_sized(
                    options,
                    "miad_inspect_options",
                    &[],
                    default_inspect_options(),
                )?
            }
        };
        let opts = inspect_options(&o)?;
        let (rgb, cloud) = part_views(part)?;
        let (w, h) = match (&rgb, &cloud) {
            (Some(r), _) => (r.width, r.height),
            (None, Some(c)) => (c.width, c.height),
            (None, None) => (0, 0),
        };
        let mut c = claim(engine)?;
        let e = c.engine();
        // Buffers are checked before the work, so a bad one costs nothing.
        let s = e.map_size();
        if !o.map.is_null() && o.map_len < s * s {
            return Err(too_small("map", o.map_len, s * s, format_args!("{s}×{s}")));
        }
        let input_len = w.saturating_mul(h);
        if !o.input_map.is_null() && o.input_map_len < input_len {
            return Err(too_small(
                "input_map",
                o.input_map_len,
                input_len,
                format_args!("{w}×{h}"),
            ));
        }
        let r = e.inspect(rgb, cloud, &opts)?;
        let mut res = miad_result {
            score: r.score,
            verdict: match r.verdict {
                Verdict::Pass => MIAD_VERDICT_PASS,
                Verdict::Fail => MIAD_VERDICT_FAIL,
                Verdict::Uncertain => MIAD_VERDICT_UNCERTAIN,
            },
            part_threshold: r.part_threshold,
            pixel_threshold: r.pixel_threshold,
            bank_scores: r.bank_scores,
            modality_case: match r.case {
                Case::Complete => MIAD_CASE_COMPLETE,
                Case::RgbOnly => MIAD_CASE_RGB_ONLY,
                Case::CloudOnly => MIAD_CASE_CLOUD_ONLY,
            },
            modalities_used: if r.status.rgb_usable() {
                MIAD_USED_RGB
            } else {
                0
            } | if r.status.cloud_usable() {
                MIAD_USED_CLOUD
            } else {
                0
            },
            rgb_status: modality_code(r.status.rgb),
            cloud_status: modality_code(r.status.cloud),
            case_calibrated: r.case_calibrated as u32,
            map_size: r.map_size as u32,
            outputs_written: 0,
            input_width: w as u32,
            input_height: h as u32,
            regions_found: r.regions_found.min(u32::MAX as usize) as u32,
            regions_count: r.regions.len().min(MAX_REGIONS) as u32,
            time_preprocess_s: r.times.preprocess,
            time_rgb_s: r.times.rgb,
            time_point_s: r.times.point,
            time_fusion_s: r.times.fusion,
            time_score_s: r.score_time,
            time_total_s: r.total_time,
            regions: [miad_region::default(); MAX_REGIONS],
        };
        for (d, g) in res.regions.iter_mut().zip(r.regions) {
            *d = *g;
        }
        if let (Some(map), false) = (r.map, o.map.is_null()) {
            // SAFETY: map_len ≥ s² checked above; the caller's contract on the buffer.
            unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), o.map, s * s) };
            res.outputs_written |= MIAD_WROTE_MAP;
        }
        if !o.input_map.is_null() {
            // SAFETY: input_map_len ≥ w·h checked above, which inspect() bounded by the
            // engine's maximum input size; alignment checked in inspect_options.
            let dst = unsafe { std::slice::from_raw_parts_mut(o.input_map, input_len) };
            e.map_at_input(w, h, dst)?;
            res.outputs_written |= MIAD_WROTE_INPUT_MAP;
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(res) };
        Ok(())
    };
    // SAFETY: the caller's contract on err_buf.
    unsafe { export(err_buf, err_len, body) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buf: &[c_char]) -> &str {
        // SAFETY: MsgBuf always terminates what it writes.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap()
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary_and_terminated() {
        let msg = "size 0×120 ok";
        for len in 1..=msg.len() + 3 {
            let mut buf = [0x55 as c_char; 32];
            // SAFETY: buf holds 32 ≥ len bytes.
            let mut m = unsafe { MsgBuf::new(buf.as_mut_ptr(), len) }.unwrap();
            m.write_str(msg).unwrap();
            let t = text(&buf);
            assert!(msg.starts_with(t) && t.len() < len, "{len}: {t:?}");
            assert!(
                t.len() + 2 >= (len - 1).min(msg.len()),
                "{len}: {t:?} too short"
            );
            assert_eq!(m.truncated, len <= msg.len());
            assert!(buf[len..].iter().all(|&b| b == 0x55), "wrote past {len}");
        }
        // SAFETY: null and zero length are refused before any write.
        assert!(unsafe { MsgBuf::new(std::ptr::null_mut(), 10) }.is_none());
        let mut one = [0x55 as c_char; 1];
        assert!(unsafe { MsgBuf::new(one.as_mut_ptr(), 0) }.is_none());
        assert_eq!(one[0], 0x55);
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let mut buf = [0 as c_char; 128];
        // SAFETY: buf is 128 bytes.
        let st = unsafe {
            export(buf.as_mut_ptr(), buf.len(), || {
                panic!("stage {} broke", 3);
            })
        };
        assert_eq!(st, Status::Panic as miad_status);
        assert!(text(&buf).contains("stage 3 broke"), "{}", text(&buf));
        assert_eq!(
            export_quiet(|| panic!("quiet")),
            Status::Panic as miad_status
        );
        // Success clears an old message.
        let st = unsafe { export(buf.as_mut_ptr(), buf.len(), || Ok(())) };
        assert_eq!((st, text(&buf)), (0, ""));
    }

    /// A panic inside an export prints nothing (the default hook would write its message
    /// and a backtrace to stderr); a panic elsewhere in the process still reaches the
    /// process's hook. Run in a child process (this test binary, this test only) so that
    /// its stderr can be read and no other test's panic interferes.
    #[test]
    fn a_panic_inside_an_export_writes_nothing_to_stderr() {
        if std::env::var_os("MIAD_QUIET_PANIC_CHILD").is_some() {
            let mut buf = [0 as c_char; 64];
            // SAFETY: buf is 64 bytes.
            let st = unsafe {
                export(buf.as_mut_ptr(), buf.len(), || {
                    panic!("inside-export-{}", 7);
                })
            };
            assert_eq!(st, Status::Panic as miad_status);
            assert_eq!(
                export_quiet(|| panic!("quiet-export-8")),
                Status::Panic as i32
            );
            let outside = catch_unwind(|| panic!("outside-export-{}", 9));
            assert!(outside.is_err());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "capi::tests::a_panic_inside_an_export_writes_nothing_to_stderr",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MIAD_QUIET_PANIC_CHILD", "1")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            !err.contains("inside-export-7"),
            "export panic printed:\n{err}"
        );
        assert!(
            !err.contains("quiet-export-8"),
            "export panic printed:\n{err}"
        );
        assert!(
            err.contains("outside-export-9"),
            "the host's hook was lost:\n{err}"
        );
    }

    #[test]
    fn every_error_variant_has_its_status() {
        let p = || std::path::PathBuf::from("f");
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases = [
            (Error::io(p(), io()), Status::Io),
            (
                Error::Format(FormatError::Io {
                    path: p(),
                    source: io(),
                }),
                Status::Io,
            ),
            (
                Error::Format(FormatError::BadMagic { path: p() }),
                Status::FileFormat,
            ),
            (
                Error::Format(FormatError::ModelMismatch {
                    path: p(),
                    model_path: p(),
                    model_name: "m".into(),
                    expected: "a".into(),
                    found: "b".into(),
                }),
                Status::ModelMismatch,
            ),
            (Error::Input("x".into()), Status::InvalidInput),
            (Error::Config("x".into()), Status::Config),
            (
                Error::NoUsableModality("x".into()),
                Status::NoUsableModality,
            ),
            (
                Error::Decode {
                    path: p(),
                    message: "x".into(),
                },
                Status::Decode,
            ),
            (
                Error::Device(crate::DeviceError::Other("x".into())),
                Status::Cuda,
            ),
            (Error::NonFinite("x".into()), Status::NonFinite),
            (Error::Forked("x".into()), Status::Forked),
            (
                Error::Format(FormatError::Changed {
                    path: p(),
                    what: "x".into(),
                }),
                Status::FileChanged,
            ),
            (
                Error::Format(FormatError::NotRegular {
                    path: p(),
                    kind: "a FIFO",
                }),
                Status::Io,
            ),
            (
                Error::Format(FormatError::TrailingBytes {
                    path: p(),
                    recorded: 1,
                    actual: 2,
                }),
                Status::FileFormat,
            ),
        ];
        for (e, s) in cases {
            assert_eq!(Status::of(&e), s, "{e}");
        }
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "codes are dense and in order");
        }
    }

    #[test]
    fn handles_that_were_never_issued_are_refused() {
        let t = vec![Slot {
            generation: 4,
            entry: None,
        }];
        let k = handle_key();
        assert_ne!(k, 0, "the key is random (zero has odds 2^-48)");
        for h in [
            encode(0, 4),
            encode(0, 3),
            encode(5, 0),
            0x10000 as *mut miad_engine,
            0x1_0001 as *mut miad_engine,
        ] {
            let e = find(&t, h).err().map(|f| f.status());
            assert_eq!(e, Some(Status::InvalidHandle), "{h:p}");
        }
        assert_eq!(
            find(&t, std::ptr::null()).err().map(|f| f.status()),
            Some(Status::NullArgument)
        );
        for g in [0, 1, GENERATION_MASK] {
            assert_ne!(encode(0, g) as usize, 0, "handles are never NULL");
            assert!(
                encode(0, g) as usize > 1 << 20,
                "handles are not small integers"
            );
        }
    }
}
