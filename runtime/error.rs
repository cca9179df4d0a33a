//! The crate-wide error type. Every fault a user can cause (a bad file, a bad input, a
//! bad option) is a value of this type, never a panic.

use std::path::PathBuf;

/// Any failure of miad, with enough context to name what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model or bank file is unreadable or invalid.
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A part's input (image, cloud, sizes, strides) is not usable.
    #[error("invalid input: {0}")]
    Input(String),
    /// A configuration value contradicts another or is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Neither the RGB image nor the point cloud of a part can be used.
    #[error("no usable modality: {0}")]
    NoUsableModality(String),
    /// A data file (image, cloud, mask) is not what it claims to be.
    #[error("{path}: {message}")]
    Decode { path: PathBuf, message: String },
    /// The CUDA backend (the device layer, a kernel wrapper or a device stage, on a GPU or
    /// the simulated device) is unavailable, failed or refused a call; see [`DeviceError`]
    /// (the engine falls back to the CPU when this happens at creation).
    #[error("CUDA: {0}")]
    Device(#[from] DeviceError),
    /// A result would hold NaN or infinity (never reported as a success).
    #[error("non-finite result: {0}")]
    NonFinite(String),
    /// The engine is used in a process other than the one that opened it (after fork).
    #[error("engine used after fork: {0}")]
    Forked(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the CUDA device layer reports (`runtime/cuda/device/`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No usable driver, device, library, or simulated device (a build without the
    /// feature): the engine runs on the CPU and says why.
    #[error("{0}")]
    Unavailable(String),
    /// A driver or library call returned an error code.
    #[error("{call}: {code}")]
    Call { call: String, code: String },
    /// The simulated device caught a misuse a GPU might not report (see [`Misuse`]).
    #[error("simulated device: {detail}")]
    Misuse { kind: Misuse, detail: String },
    /// This device or this plan cannot run a kernel variant that was asked for.
    #[error("{0}")]
    Unsupported(String),
    /// Not enough free device memory for a plan.
    #[error("{0}")]
    OutOfMemory(String),
    /// A device stage disagreed with the CPU (or gave non-finite values) in its creation
    /// self-check: the engine keeps that stage on the CPU.
    #[error("{0}")]
    SelfCheck(String),
    /// A kernel produced an impossible result (an index out of range).
    #[error("{0}")]
    Fault(String),
    /// A device stage called with sizes, or a bank, that its plan does not have.
    #[error("{0}")]
    BadCall(String),
    /// A launch whose argument list has another length than the kernel's prototype.
    #[error("kernel {kernel}: {passed} arguments passed, its prototype has {expected}")]
    ArgumentCount {
        kernel: &'static str,
        expected: usize,
        passed: usize,
    },
    /// A launch argument of another kind than the kernel's prototype says, named by its
    /// index and both kinds as C spells them (`float*`, `int`, `MapBanks`).
    #[error("kernel {kernel}: argument {index} is {passed}, its prototype says {expected}")]
    ArgumentKind {
        kernel: &'static str,
        index: usize,
        expected: String,
        passed: String,
    },
    /// Anything else the device layer refuses (wrong kind of device, internal state).
    #[error("{0}")]
    Other(String),
}

/// Kinds of misuse the simulated device detects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// A copy, memset or GEMM operand outside every live device allocation.
    OutOfBounds,
    /// Device memory read (downloaded, or a GEMM input) before anything wrote it.
    NeverWritten,
    /// A graph replayed after memory it was recorded with was freed (re-planning).
    StaleGraph,
    /// Kernel arguments that do not match the kernel's parameters, or a bad handle.
    LaunchArguments,
    /// Block size above `__launch_bounds__`, shared memory above the opt-in.
    LaunchConfig,
    /// GEMM operands whose shapes or leading dimensions contradict each other.
    GemmLayout,
    /// Capture begun twice, ended unbegun, or a replay during a capture.
    Capture,
    /// The kernel failed in the emulator (barrier, warp mask, deadlock, trap).
    Kernel,
    /// A recorded copy resized beyond the bytes it was recorded with, or a node of
    /// another graph or kind updated.
    GraphUpdate,
    /// A time mark read before any replay (or stream) reached it.
    UnrecordedMark,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
