//! GPU benchmarks of the CUDA backend (feature `cuda`), each a named function:
//!
//!   cargo bench --features cuda --bench cuda [NAME...]
//!
//! runs the named ones (all when none is named). Each opens GPU 0 itself; without a usable
//! GPU (or, where it needs one, the cuBLASLt library) it prints a SKIP line and the program
//! still exits 0. The numbers are for ratios (against the device's peaks, or a peer timed
//! in the same run), never bare times to compare across machines. On the device machine
//! bench/gpu/all.sh runs the executable that bench/gpu/build.sh builds.
//! The setup and CPU references they share with the parity tests live in tests/cuda/shared/.

#[path = "../../tests/cuda/shared/mod.rs"]
mod shared;

mod attention;
mod bank_search;
mod coreset;
mod forwards;
mod gemm;
mod point_branch;
mod point_kernels;

use miad::cuda::Device;

/// A benchmark: whether it timed the device (false after its SKIP line).
type Bench = fn() -> bool;

/// Every benchmark, by the name that selects it on the command line.
const BENCHES: [(&str, Bench); 7] = [
    ("attention", attention::attention),
    ("bank_search", bank_search::bank_search),
    ("coreset", coreset::coreset),
    ("forwards", forwards::forwards),
    ("gemm", gemm::gemm),
    ("point_branch", point_branch::point_branch),
    ("point_kernels", point_kernels::point_kernels),
];

/// GPU 0, or `None` after a SKIP line naming the benchmark `who`. A GPU only: on the
/// simulated device the kernels run in the emulator, and a timing would measure nothing.
pub fn gpu(who: &str) -> Option<Device> {
    match Device::new(0) {
        Ok(d) => {
            eprintln!("{who}: {} (sm_{})", d.name, d.sm());
            Some(d)
        }
        Err(e) => {
            eprintln!("{who}: SKIP, no usable GPU: {e}");
            None
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; every other argument names a benchmark.
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !BENCHES.iter().any(|(name, _)| name == n))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = BENCHES.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "unknown benchmark(s) {unknown:?}; known: {}",
            known.join(" ")
        );
        std::process::exit(2);
    }
    let (mut ran, mut skipped) = (Vec::new(), Vec::new());
    for (name, run) in BENCHES {
        if names.is_empty() || names.iter().any(|n| n == name) {
            println!("== {name}");
            if run() {
                ran.push(name);
            } else {
                skipped.push(name);
            }
        }
    }
    // The line bench/gpu/all.sh puts in its summary.
    println!(
        "bench result: ran [{}], skipped [{}]",
        ran.join(" "),
        skipped.join(" ")
    );
}
