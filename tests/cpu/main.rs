//! The CPU backend stage by stage: parity with PyTorch/timm, sklearn and PIL fixtures, allocation-free hot paths.

#[path = "../common/mod.rs"]
mod common;

// Counts allocations for the zero-allocation tests (per thread, and process-wide for
// the tests that run alone in a child process: see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;

mod bank_prune;
mod bank_search;
mod coreset_greedy;
mod fusion_cpu;
mod maps_cpu;
mod ocsvm_sklearn;
mod point_alloc;
mod point_mae_parity;
mod point_parity;
mod pool_gemm;
mod preprocess_synthetic;
mod vit_alloc;
mod vit_parity;
