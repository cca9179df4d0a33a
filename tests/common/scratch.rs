//! Scratch folders of the tests: under cargo's target/tmp (`CARGO_TARGET_TMPDIR`), one per
//! test and process, so that concurrent runs never share one, and those of processes that
//! have ended are removed when a new one is made, so that nothing piles up. std only: the
//! `format` binary, built without the offline features, includes this file too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The names of the folders start with this, then the process id and the test's name.
const PREFIX: &str = "miad-scratch-";

/// The names this process has made a folder for.
static MADE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The folder `target/tmp/miad-scratch-PID-NAME` for the test `name` of this process:
/// made empty on the first call with `name` (after removing the scratch folders of
/// processes that no longer run), the same folder, made again if it was removed, on later
/// calls (helpers that return one file of a shared folder call it for every file).
pub fn scratch_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join(format!("{PREFIX}{}-{name}", std::process::id()));
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if !made.iter().any(|n| n == name) {
        remove_ended(root);
        // What a process that had this id before left there.
        let _ = std::fs::remove_dir_all(&dir);
        made.push(name.to_string());
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("scratch folder {}: {e}", dir.display()));
    dir
}

/// The process id in a scratch folder's name, if it is one.
fn owner(folder: &str) -> Option<u32> {
    folder.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes the scratch folders under `root` whose process has no /proc entry any more.
/// Another process may remove the same folder at the same time: errors are ignored.
fn remove_ended(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
