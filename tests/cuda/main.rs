//! The CUDA backend (feature `cuda`): on a real GPU, every kernel and device stage against
//! the CPU stage it replaces (each test skips, saying why, without a driver or device); on
//! the simulated device (feature `cuda-sim`, module `sim`), the device layer and the whole
//! engine against the CPU engine.
#![cfg(feature = "cuda")]

#[path = "../common/mod.rs"]
mod common;

#[path = "../common/oracles.rs"]
mod oracles;

mod bank;
mod coreset;
mod embed;
mod engine;
mod forward;
mod gemm;
mod launch;
mod maps;
mod point;
mod point_branch;
mod transformer;

#[cfg(feature = "cuda-sim")]
mod sim;

// Counts allocations for the zero-allocation test of `sim` (process-wide: it runs alone in
// a child process, see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;
