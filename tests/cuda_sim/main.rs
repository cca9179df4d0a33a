//! The CUDA backend on the simulated device (feature `cuda-sim`): the device layer and
//! its misuse checks, and the engine's whole CUDA path against the CPU backend.

#[path = "../common/mod.rs"]
mod common;

// Counts allocations for the zero-allocation test (process-wide: it runs alone in a
// child process, see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;

mod alloc;
mod device;
mod engine;
mod eval;
