//! Opening model and bank files safely: regular files only, opened without blocking (a
//! FIFO or device never hangs the caller), read into owned memory on request, and
//! watched for changes in place while mapped.

use super::error::FormatError;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What `fstat` said about an open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub len: u64,
    dev: u64,
    ino: u64,
    /// Modification time (s, ns). Not the change time: renaming a new file over this
    /// one (the supported replacement) unlinks it, which changes its ctime only.
    mtime: (i64, i64),
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// Opens `path` read-only with `O_NONBLOCK` (so a FIFO without a writer or a device
/// does not block) and refuses anything but a regular file, naming what it is.
pub fn open_regular(path: &Path) -> Result<(File, Stat), FormatError> {
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = kind {
        return Err(FormatError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok((file, Stat::of(&meta)))
}

/// Reads the whole file (`len` bytes) into page-aligned memory the caller owns.
pub fn read_owned(path: &Path, file: &File, len: u64) -> Result<memmap2::Mmap, FormatError> {
    use std::io::Read;
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let n = usize::try_from(len).map_err(|_| FormatError::Truncated {
        path: path.to_path_buf(),
        what: "memory for the file",
        needed: len,
        actual: usize::MAX as u64,
    })?;
    let mut buf = memmap2::MmapMut::map_anon(n).map_err(io)?;
    let mut f = file;
    f.read_exact(&mut buf[..]).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FormatError::Changed {
                path: path.to_path_buf(),
                what: format!("it became shorter than {len} bytes while being read"),
            }
        } else {
            io(e)
        }
    })?;
    buf.make_read_only().map_err(io)
}

/// A mapped file and its `fstat` at open.
#[derive(Debug)]
pub struct Watch {
    file: File,
    at_open: Stat,
}

impl Watch {
    pub fn new(file: File, at_open: Stat) -> Self {
        Watch { file, at_open }
    }

    /// One `fstat` of the open descriptor, compared with the one at open. No allocation
    /// on success.
    pub fn check(&self, path: &Path) -> Result<(), FormatError> {
        // SAFETY: an all-zero `stat` is a valid value; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the lifetime of `self`; `st` is writable.
        let rc = unsafe { libc::fstat(self.file.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(FormatError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        let now = Stat {
            len: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
        };
        if now == self.at_open {
            return Ok(());
        }
        let what = if now.len != self.at_open.len {
            format!(
                "its size changed from {} to {} bytes",
                self.at_open.len, now.len
            )
        } else {
            "it was modified in place (its modification time changed)".to_string()
        };
        Err(FormatError::Changed {
            path: path.to_path_buf(),
            what,
        })
    }
}
