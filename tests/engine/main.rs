//! The engine end to end: inspection of fitted synthetic parts, RADAR cases, device-network gates, zero allocations, the latency report.

#[path = "../common/mod.rs"]
mod common;

// Counts allocations for the zero-allocation tests (per thread, and process-wide for
// the tests that run alone in a child process: see `common::alone_in_process`).
#[global_allocator]
static ALLOCATOR: miad::util::alloc_counter::CountingAlloc =
    miad::util::alloc_counter::CountingAlloc;

mod alloc;
mod cpu_bf16;
mod device_network_gates;
mod e2e;
mod latency_report;
mod layering;
mod pruned_search;
