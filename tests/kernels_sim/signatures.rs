//! Inventory checks over kernels/*.cu: every `__global__` has an emulated test, and the
//! parsed prototypes agree with what g++ compiled (argument count and sizes).

use crate::sim::{kernel_files, prototypes, sim};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("every_global_function_has_an_emulated_test", coverage),
    (
        "parsed_prototypes_match_the_compiled_kernels",
        prototypes_match,
    ),
];

/// Kernels without an emulated test yet. This list may only shrink: the coverage test
/// fails when a kernel is neither tested nor listed, and when a listed one has a test.
const PENDING: &[&str] = &[];

/// The test sources that launch kernels (the self-tests and the runner do not count).
const TEST_SOURCES: &[&str] = &[
    include_str!("knn.rs"),
    include_str!("fps.rs"),
    include_str!("fusion.rs"),
    include_str!("coreset.rs"),
    include_str!("misc.rs"),
    include_str!("embed.rs"),
    include_str!("bank.rs"),
    include_str!("attention.rs"),
    include_str!("maps.rs"),
    include_str!("point.rs"),
    include_str!("preprocess.rs"),
    include_str!("train.rs"),
];

fn coverage() -> Result<(), String> {
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    let mut total = 0;
    for f in kernel_files() {
        let src = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
        for p in prototypes(&src) {
            total += 1;
            let quoted = format!("\"{}\"", p.name);
            let tested = TEST_SOURCES.iter().any(|t| t.contains(&quoted));
            let pending = PENDING.contains(&p.name.as_str());
            if !tested && !pending {
                missing.push(format!("{} ({})", p.name, f.display()));
            }
            if tested && pending {
                stale.push(p.name.clone());
            }
        }
    }
    if total < 40 {
        return Err(format!(
            "only {total} __global__ functions parsed: the parser is broken"
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "kernels without an emulated test: {}",
            missing.join(", ")
        ));
    }
    if !stale.is_empty() {
        return Err(format!(
            "tested kernels still listed as pending: {}",
            stale.join(", ")
        ));
    }
    Ok(())
}

/// Size of a parameter type as written in a prototype (the device ABI: 8-byte pointers).
fn size_of(ty: &str) -> Option<usize> {
    if ty.ends_with('*') {
        return Some(8);
    }
    Some(match ty {
        "int" | "u32" | "float" | "unsigned" | "unsigned int" => 4,
        "long" | "u64" | "double" | "long long" | "size_t" => 8,
        _ => return None, // a struct: its size is checked by the launches that pass it
    })
}

fn prototypes_match() -> Result<(), String> {
    let s = sim();
    let mut errs = Vec::new();
    for (module, p) in &s.protos {
        if module == "selftest" {
            continue;
        }
        let compiled = s.arg_sizes(&p.name)?;
        if compiled.len() != p.params.len() {
            errs.push(format!(
                "{}: {} parameters parsed, {} compiled",
                p.name,
                p.params.len(),
                compiled.len()
            ));
            continue;
        }
        for (i, (ty, &sz)) in p.params.iter().zip(&compiled).enumerate() {
            if let Some(want) = size_of(ty) {
                if want != sz {
                    errs.push(format!(
                        "{} parameter {i} ({ty}): {sz} bytes compiled",
                        p.name
                    ));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}
