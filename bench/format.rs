//! Container format speed: opening a full-size (M3DM preset) model file without checksum
//! verification (target < 50 ms) and checksum verification throughput (target ≥ 1 GB/s).
//! The file is written once into a temporary directory; the page cache is warm, as on a
//! controller that boots the same model again.
//!
//! `cargo bench --bench format`

mod timing;

use miad::config::ModelConfig;
use miad::format::{random_model, write_model, ModelFile, OpenOptions};
use timing::time_runs;

fn main() {
    let dir = std::env::temp_dir().join(format!("miad-bench-format-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return;
    }
    let path = dir.join("m3dm-random.miad");
    let cfg = ModelConfig::m3dm();
    let tensors = random_model(&cfg, 1);
    if let Err(e) = write_model(&cfg, &tensors, &[("source", "bench")], &path) {
        eprintln!("cannot write {}: {e}", path.display());
        return;
    }
    drop(tensors);
    let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "model file: {} ({:.1} MB)",
        path.display(),
        file_len as f64 / 1e6
    );
    let no_verify = OpenOptions {
        verify_checksums: false,
        ..OpenOptions::default()
    };

    time_runs(20, || {
        let _ = ModelFile::open(&path, &no_verify).map(|m| m.id());
    })
    .print("open m3dm model, no checksum verification", None);
    let model = match ModelFile::open(&path, &no_verify) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let data_bytes: u64 = model
        .container()
        .manifest()
        .tensors
        .iter()
        .map(|t| t.nbytes)
        .sum();
    time_runs(10, || {
        let _ = model.container().verify_checksums();
    })
    .print(
        "verify checksums of the m3dm model",
        Some((data_bytes as f64 / 1e9, "GB")),
    );
    drop(model);
    let _ = std::fs::remove_dir_all(&dir);
}
