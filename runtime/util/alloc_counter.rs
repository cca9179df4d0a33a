//! A counting global allocator for tests that prove the hot path does not allocate.
//!
//! A test binary installs it with
//! `#[global_allocator] static A: miad::util::alloc_counter::CountingAlloc = miad::util::alloc_counter::CountingAlloc;`
//! and reads [`counts`] around the code under test. Counts are per thread, so other
//! test threads running at the same time do not disturb a measurement; worker threads
//! of a [`crate::cpu::pool::Pool`] are counted too, through [`total_counts`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}
static TOTAL_ALLOCS: AtomicU64 = AtomicU64::new(0);
static TOTAL_FREES: AtomicU64 = AtomicU64::new(0);

fn bump(cell: &'static std::thread::LocalKey<Cell<u64>>, total: &AtomicU64) {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = cell.try_with(|c| c.set(c.get() + 1));
    total.fetch_add(1, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS, &TOTAL_ALLOCS);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS, &TOTAL_ALLOCS);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS, &TOTAL_ALLOCS);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES, &TOTAL_FREES);
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// (allocations, frees) made by the calling thread so far.
pub fn counts() -> (u64, u64) {
    (
        ALLOCS.try_with(|c| c.get()).unwrap_or(0),
        FREES.try_with(|c| c.get()).unwrap_or(0),
    )
}

/// (allocations, frees) made by all threads so far. Use it when the code under test
/// runs on worker threads and nothing else runs in the process at the same time
/// (a test binary with a single test, or `--test-threads=1`).
pub fn total_counts() -> (u64, u64) {
    (
        TOTAL_ALLOCS.load(Ordering::Relaxed),
        TOTAL_FREES.load(Ordering::Relaxed),
    )
}
