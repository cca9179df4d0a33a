//! Why a model or bank file was refused. Every variant names the file and, where there is
//! one, the tensor; none of them is ever a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: truncated file: {what} needs {needed} bytes, the file has {actual}")]
    Truncated {
        path: PathBuf,
        what: &'static str,
        needed: u64,
        actual: u64,
    },
    #[error("{path}: not a miad file (wrong magic bytes)")]
    BadMagic { path: PathBuf },
    #[error("{path}: format version {found} is newer than this miad supports ({supported}); upgrade miad")]
    NewerVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: written on a machine of the other endianness; miad files are little-endian")]
    WrongEndianness { path: PathBuf },
    #[error("{path}: header checksum mismatch (the header is corrupt)")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: this is a {found} file, a {expected} file was expected")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path}: invalid manifest: {reason}")]
    InvalidManifest { path: PathBuf, reason: String },
    #[error(
        "{path}: tensor {tensor}: bytes {offset}..{end} lie outside the file ({file_len} bytes)"
    )]
    OutOfBounds {
        path: PathBuf,
        tensor: String,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("{path}: tensor {tensor}: offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        path: PathBuf,
        tensor: String,
        offset: u64,
        align: u64,
    },
    #[error("{path}: tensor {tensor} overlaps tensor {other}")]
    Overlap {
        path: PathBuf,
        tensor: String,
        other: String,
    },
    #[error("{path}: tensor {tensor} appears twice")]
    DuplicateTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: tensor {tensor}: {bytes} bytes stored, but its dtype and shape need {expected}"
    )]
    SizeMismatch {
        path: PathBuf,
        tensor: String,
        bytes: u64,
        expected: u64,
    },
    #[error("{path}: tensor {tensor}: checksum mismatch (data corrupt)")]
    ChecksumMismatch { path: PathBuf, tensor: String },
    #[error("{path}: missing tensor {tensor}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: unknown tensor {tensor} (not part of this configuration)")]
    UnknownTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor {tensor} has shape {found:?}, the configuration needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor {tensor} has dtype {found}, {expected} is needed")]
    DtypeMismatch {
        path: PathBuf,
        tensor: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{path}: this bank file was built for model {expected} ({model_name}), not for {model_path} ({found})")]
    ModelMismatch {
        path: PathBuf,
        model_path: PathBuf,
        model_name: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {kind}, not a regular file (model and bank files must be regular files)")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: {recorded} bytes recorded in the header but the file has {actual}: trailing bytes after the last tensor")]
    TrailingBytes {
        path: PathBuf,
        recorded: u64,
        actual: u64,
    },
    #[error("{path}: the file changed under the open engine ({what}); files must be replaced by renaming a new file over them, never rewritten in place; reopen the engine")]
    Changed { path: PathBuf, what: String },
    #[error("{0}")]
    Invalid(String),
}
