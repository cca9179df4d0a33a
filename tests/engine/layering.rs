//! The inspection path never depends on offline code: nothing under `runtime/engine*`,
//! `runtime/pipeline`, `runtime/cpu` or `runtime/cuda` names `crate::fit` or `crate::eval`
//! (they are features a controller's library builds without), and neither backend names
//! the engine (it drives them, not the other way round).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The places under `roots` (relative to `runtime/`) whose source names one of `names`.
fn offenders(roots: &[&str], names: &[&str]) -> Vec<String> {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
    let mut files = Vec::new();
    for root in roots {
        let path = runtime.join(root);
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
    }
    assert!(files.len() > 10, "too few sources found: {files:?}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if names.iter().any(|name| line.contains(name)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_inspection_path_imports_no_fitting_or_evaluation_code() {
    let found = offenders(
        &["engine.rs", "engine", "pipeline", "cpu", "cuda"],
        &["crate::fit", "crate::eval"],
    );
    assert!(
        found.is_empty(),
        "offline code on the inspection path:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_backends_do_not_import_the_engine() {
    let found = offenders(&["cpu", "cuda"], &["crate::engine"]);
    assert!(
        found.is_empty(),
        "a backend names the engine:\n{}",
        found.join("\n")
    );
}
