//! The CUDA backend (feature `cuda`): every kernel and device stage against the CPU stage
//! it replaces, on a GPU when one is present, else on the simulated device (feature
//! `cuda-sim`: the kernel tests through [`test_device`], with smaller cases where the
//! emulator would take minutes), else skipped with a line saying why; the launch checks
//! (`launch`); and on the simulated device (module `sim`) the device layer and the whole
//! engine against the CPU engine.
#![cfg(feature = "cuda")]

#[path = "../common/mod.rs"]
mod common;

#[path = "../common/oracles.rs"]
mod oracles;

#[path = "../fit_eval/linked.rs"]
mod linked;

mod bank;
mod coreset;
mod embed;
mod engine;
mod forward;
mod fusion;
mod gemm;
mod launch;
mod maps;
mod point;
mod point_branch;
mod preprocess;
mod shared;
mod train_uff;
mod transformer;

#[cfg(feature = "cuda-sim")]
mod sim;

use miad::cuda::Device;

/// The device the kernel tests run on: a GPU when one is present; without one, in a build
/// with `cuda-sim`, the simulated device; else `None`, and the test passes after a SKIP
/// line. `who` names the test file in that line.
pub fn test_device(who: &str) -> Option<Device> {
    let gpu_error = match Device::new(0) {
        Ok(d) => {
            eprintln!("{who}: {} (sm_{})", d.name, d.sm());
            return Some(d);
        }
        Err(e) => e,
    };
    if cfg!(feature = "cuda-sim") {
        match Device::simulated() {
            Ok(d) => {
                eprintln!("{who}: no GPU ({gpu_error}), on the {}", d.name);
                return Some(d);
            }
            Err(e) => eprintln!("{who}: the simulated device does not open: {e}"),
        }
    }
    eprintln!("{who}: SKIP, no usable GPU: {gpu_error}");
    None
}

// Counts allocations for the zero-allocation test of `sim` (process-wide: it runs alone in
// a child process, see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;
