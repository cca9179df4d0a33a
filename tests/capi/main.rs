//! The C ABI: every export and error path, the header, the C example, zero allocations.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

// Counts allocations for the zero-allocation tests (per thread, and process-wide for
// the tests that run alone in a child process: see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;

mod abi;
mod alloc;
mod hostile;
mod install;
mod manifest_fuzz;
mod reliability;
