//! The fit's greedy coreset selection alone, on a fit's own projected rows
//! (`cargo bench --bench coreset`): `miad fit` with `MIAD_FIT_PROJECTED_DUMP=FOLDER`
//! writes each bank's projected rows there as `{bank}-{n}x{dim}-m{m}.f32`; this program
//! selects from such files as the fit does (`cpu::coreset::select_in_place`), so a change
//! to the selection is timed without re-extracting features. Ratios only (the machine is
//! shared): time two builds in one script, alternating.
//!
//! Arguments: the `.f32` files. Environment: `MIAD_CORESET_THREADS` (default 2),
//! `MIAD_CORESET_ROUNDS` (default 1; the best round is printed with the median),
//! `MIAD_CORESET_M` (select this many instead of the file's `m`), `MIAD_CORESET_OUT` (a
//! folder: the selected indices written there as `{file stem}.idx`, little-endian u32,
//! to `cmp` between builds). Each line also gives a hash of the indices.

use miad::cpu::coreset::{select_in_place, tiled_len};
use miad::cpu::pool::Pool;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod timing;
use timing::env_usize as env;

/// `n`, `dim` and `m` from a name `{bank}-{n}x{dim}-m{m}.f32`.
fn shape_of(path: &Path) -> Option<(usize, usize, usize)> {
    let stem = path.file_stem()?.to_str()?;
    let mut parts = stem.rsplitn(3, '-');
    let m = parts.next()?.strip_prefix('m')?.parse().ok()?;
    let (n, dim) = parts.next()?.split_once('x')?;
    Some((n.parse().ok()?, dim.parse().ok()?, m))
}

fn main() {
    let files: Vec<PathBuf> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        eprintln!("coreset: name the projected-row files (see the program's doc)");
        std::process::exit(2);
    }
    let threads = env("MIAD_CORESET_THREADS", 2);
    let rounds = env("MIAD_CORESET_ROUNDS", 1).max(1);
    let out_dir = std::env::var_os("MIAD_CORESET_OUT").map(PathBuf::from);
    let pool = Pool::new(threads);
    for file in &files {
        let (n, dim, file_m) = shape_of(file).expect("a name {bank}-{n}x{dim}-m{m}.f32");
        let m = env("MIAD_CORESET_M", file_m);
        let bytes = std::fs::read(file).expect("readable rows");
        assert_eq!(bytes.len(), n * dim * 4, "{}: size", file.display());
        let rows: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut buf = vec![0f32; tiled_len(n, dim)];
        let mut secs = Vec::new();
        let mut first: Option<Vec<u32>> = None;
        for _ in 0..rounds {
            buf[..n * dim].copy_from_slice(&rows);
            let t = Instant::now();
            let idx = select_in_place(&pool, &mut buf, n, dim, m, &mut |_, _| {});
            secs.push(t.elapsed().as_secs_f64());
            match &first {
                Some(f) => assert_eq!(f, &idx, "the selection differs between rounds"),
                None => first = Some(idx),
            }
        }
        let idx = first.unwrap_or_default();
        secs.sort_by(f64::total_cmp);
        let hash = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&idx));
        println!(
            "{}: {n} → {m} ({dim} dims, {threads} threads): median {:.2} s (best {:.2} s, \
             {rounds} rounds), {:.1} centres/s, indices {hash:016x}",
            file.display(),
            secs[rounds / 2],
            secs[0],
            m as f64 / secs[rounds / 2]
        );
        if let Some(dir) = &out_dir {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("rows");
            let bytes: Vec<u8> = idx.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{stem}.idx")), bytes).expect("writable folder");
        }
    }
}
