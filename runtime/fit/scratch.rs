//! Memory-mapped scratch files: training features are streamed to disk instead of held
//! in RAM (a 400-part category has ~1.25 M fused patch vectors of 1920 floats), and the
//! kernel pages them in and out as the fit walks them.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A file of `len` f32 values mapped read-write; removed when dropped.
pub struct ScratchFile {
    path: PathBuf,
    map: memmap2::MmapMut,
    len: usize,
}

impl ScratchFile {
    /// Creates `dir/name` sized for `len` floats (zero-filled, sparse on most file systems).
    pub fn create(dir: &Path, name: &str, len: usize) -> Result<Self> {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let bytes = (len.max(1) * 4) as u64;
        file.set_len(bytes).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the file was just created by us and is not shared with other processes.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(ScratchFile { path, map, len })
    }
    pub fn as_slice(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.map[..])[..self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.map[..])[..self.len]
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` of /proc/self/status), where
/// the system reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
