//! Memory-mapped scratch files: training features are streamed to disk instead of held
//! in RAM (a 400-part category has ~1.25 M fused patch vectors of 1920 floats), and the
//! kernel pages them in and out as the fit walks them.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A file of `len` f32 values mapped read-write; removed when dropped.
pub struct ScratchFile {
    path: PathBuf,
    file: std::fs::File,
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
        Ok(ScratchFile {
            path,
            file,
            map,
            len,
        })
    }
    /// Writes `values` at float `offset` through the file (`pwrite`), not the map: the
    /// page cache takes whole pages without a page fault per page of the sparse file
    /// (which reads and zero-fills the hole first); the map sees the values after it.
    /// Callable from several threads at once on disjoint ranges.
    pub fn write_at(&self, offset: usize, values: &[f32]) -> Result<()> {
        assert!(
            offset + values.len() <= self.len,
            "scratch write past the end"
        );
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let at = (offset * 4) as u64;
        #[cfg(unix)]
        let written = std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, at);
        #[cfg(windows)]
        let written = {
            let mut done = 0usize;
            let mut result = Ok(());
            while done < bytes.len() {
                match std::os::windows::fs::FileExt::seek_write(
                    &self.file,
                    &bytes[done..],
                    at + done as u64,
                ) {
                    Ok(0) => {
                        result = Err(std::io::ErrorKind::WriteZero.into());
                        break;
                    }
                    Ok(n) => done += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        };
        #[cfg(not(any(unix, windows)))]
        let written: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
        written.map_err(|e| Error::io(&self.path, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values written through the file from two threads at once are what the map reads,
    /// and the ranges not written stay zero.
    #[test]
    fn writes_through_the_file_are_seen_by_the_map() {
        let dir = std::env::temp_dir();
        let name = format!("miad-scratch-test-{}", std::process::id());
        let f = ScratchFile::create(&dir, &name, 3000).unwrap();
        let a: Vec<f32> = (0..1000).map(|i| i as f32 + 0.5).collect();
        let b: Vec<f32> = (0..1000).map(|i| -(i as f32)).collect();
        std::thread::scope(|s| {
            s.spawn(|| f.write_at(0, &a).unwrap());
            s.spawn(|| f.write_at(2000, &b).unwrap());
        });
        let all = f.as_slice();
        assert_eq!(&all[..1000], &a[..]);
        assert!(all[1000..2000].iter().all(|&v| v == 0.0));
        assert_eq!(&all[2000..], &b[..]);
        let path = f.path().to_path_buf();
        drop(f);
        assert!(!path.exists());
    }
}
