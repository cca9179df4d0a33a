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
    /// The CUDA backend is unavailable or a CUDA call failed (the engine falls back to the
    /// CPU when this happens at creation).
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A result would hold NaN or infinity (never reported as a success).
    #[error("non-finite result: {0}")]
    NonFinite(String),
    /// The engine is used in a process other than the one that opened it (after fork).
    #[error("engine used after fork: {0}")]
    Forked(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
