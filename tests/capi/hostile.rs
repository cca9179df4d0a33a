//! The hostile C harness (`tests/c/hostile.c`), built with AddressSanitizer and
//! UndefinedBehaviorSanitizer and run against the library: bad arguments to every export,
//! forged and stale handles, hostile files (written here, checksums recomputed so they
//! reach the range checks), hostile parts, files changed in place, fork, threads.

use crate::fixture;
use crate::reliability::rewrite_bank;
use miad::config::ModelConfig;
use miad::format::{ModelFile, OpenOptions, Writer};
use miad::util::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `src` model rewritten with its configuration changed (checksums recomputed).
fn rewrite_model(src: &Path, dst: &Path, edit: impl FnOnce(&mut ModelConfig)) {
    let m = ModelFile::open(src, &OpenOptions::default()).unwrap();
    let mut cfg = m.config().clone();
    edit(&mut cfg);
    let mut w = Writer::model(cfg);
    for t in &m.container().manifest().tensors {
        let (e, bytes) = m.container().raw(&t.name).unwrap();
        let shape: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        w.add(t.name.clone(), e.dtype, &shape, bytes);
    }
    w.write(dst).unwrap();
}

/// One file per defect of issue 16 (and a few plain corruptions) in `dir`.
fn hostile_files(f: &fixture::Files, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let b = |name: &str, edit: &dyn Fn(&mut miad::config::BankConfig)| {
        rewrite_bank(&f.bank, &dir.join(name), edit, |_, _| {});
    };
    b("map_size_65600.bank", &|c| c.map_size = 65600);
    b("map_size_4294967104.bank", &|c| c.map_size = 4294967104);
    b("nan_pixel_weight.bank", &|c| c.pixel_svm.w[1] = f32::NAN);
    b("tiny_std.bank", &|c| c.xyz_norm.std = 1e-30);
    b("denormal_mean.bank", &|c| c.rgb_norm.mean = 1e-40);
    b("nan_threshold.bank", &|c| c.thresholds.part = f32::NAN);
    b("inf_weight.bank", &|c| c.score_weights[0] = f32::INFINITY);
    b("zero_blur.bank", &|c| c.blur_sigma = 0.0);
    b("huge_dim.bank", &|c| c.xyz_dim = u32::MAX);
    b("zero_grid.bank", &|c| c.rgb_grid = 0);
    b("rows_mismatch.bank", &|c| c.fused_rows += 1);
    b("other_model_id.bank", &|c| c.model_id[3] ^= 1);
    b("long_category.bank", &|c| c.category = "c".repeat(100_000));
    rewrite_bank(
        &f.bank,
        &dir.join("nan_radar.bank"),
        |_| {},
        |name, bytes| {
            if name == "radar.rgb_only.score_affine" {
                bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        },
    );
    rewrite_bank(
        &f.bank,
        &dir.join("nan_rows.bank"),
        |_| {},
        |name, bytes| {
            if name == "bank.rgb" {
                bytes.fill(0xff);
            }
        },
    );
    let m = |name: &str, edit: &dyn Fn(&mut ModelConfig)| {
        rewrite_model(&f.model, &dir.join(name), edit);
    };
    m("pad_multiple.miad", &|c| {
        c.preprocess.pad_multiple = 1 << 30
    });
    m("ransac.miad", &|c| {
        c.preprocess.ransac_iterations = u32::MAX
    });
    m("rgb_std.miad", &|c| c.preprocess.rgb_std[1] = 1e-39);
    m("nan_eps.miad", &|c| {
        if let Some(v) = &mut c.vit {
            v.ln_eps = f32::NAN
        }
    });
    let model = std::fs::read(&f.model).unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    let mut trailing = model.clone();
    trailing.extend_from_slice(&[0u8; 17]);
    write("trailing.miad", &trailing);
    write("half.miad", &model[..model.len() / 2]);
    write("header_only.miad", &model[..127]);
    write("empty.miad", &[]);
    let mut rng = Rng::new(16);
    let noise: Vec<u8> = (0..1 << 16).map(|_| rng.below(256) as u8).collect();
    write("noise.miad", &noise);
    for i in 0..6 {
        let mut flipped = model.clone();
        let at = 128 + rng.below(4096) as usize;
        flipped[at] ^= 1 << (i % 8);
        write(&format!("flipped_manifest_{i}.miad"), &flipped);
    }
}

fn library_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let lib = [
        deps.join("libmiad.so"),
        deps.parent().unwrap().join("libmiad.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libmiad.so next to the test");
    std::fs::copy(&lib, dir.join("libmiad.so")).unwrap();
    let soname = dir.join("libmiad.so.0");
    let _ = std::fs::remove_file(&soname);
    std::os::unix::fs::symlink("libmiad.so", &soname).unwrap();
    dir.to_path_buf()
}

#[test]
fn the_hostile_c_harness_passes_under_asan_and_ubsan() {
    let f = fixture::files("hostile");
    let dir = fixture::tmpdir("hostile-run");
    let files = dir.join("files");
    hostile_files(&f, &files);
    let lib = library_dir(&dir.join("lib"));
    let exe = dir.join("hostile");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-O1",
            "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
        ])
        .arg("-I")
        .arg(Path::new(ROOT).join("runtime/include"))
        .arg(Path::new(ROOT).join("tests/c/hostile.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lmiad", "-lpthread", "-lm", "-ldl"])
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(&exe)
        .env_remove("LD_LIBRARY_PATH")
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=0:abort_on_error=0:allocator_may_return_null=1",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .args([&f.model, &f.bank, &f.other_model, &files, &work])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("hostile: ok"),
        "status {:?}:\n{text}",
        out.status
    );
}
