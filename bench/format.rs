//! Container format speed: opening a full-size (M3DM preset) model file without checksum
//! verification (target < 50 ms) and checksum verification throughput (target ≥ 1 GB/s).
//! The file is written once into a temporary directory; the page cache is warm, as on a
//! controller that boots the same model again.
//!
//! `cargo bench --bench format`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use miad::config::ModelConfig;
use miad::format::{random_model, write_model, ModelFile, OpenOptions};
use std::time::Duration;

fn bench_format(c: &mut Criterion) {
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

    let mut g = c.benchmark_group("format");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("open_m3dm_no_verify", |b| {
        b.iter(|| ModelFile::open(&path, &no_verify).map(|m| m.id()))
    });
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
    g.throughput(Throughput::Bytes(data_bytes));
    g.bench_function("verify_checksums_m3dm", |b| {
        b.iter(|| model.container().verify_checksums())
    });
    g.finish();
    drop(model);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_format);
criterion_main!(benches);
