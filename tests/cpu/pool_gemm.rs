//! `cpu::gemm` allocates per-thread packing buffers on a thread's first product; the pool
//! gives each of its threads those buffers before it runs a task there, so the first
//! product on any pool thread allocates nothing (dynamic task assignment would otherwise
//! let a thread meet its first product, and allocate, on some later part).

use miad::cpu::gemm::{matmul_seq, Mat};
use miad::cpu::pool::Pool;
use miad::util::alloc_counter::counts;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn the_first_product_on_any_pool_thread_allocates_nothing() {
    let (m, k, n) = (96, 128, 300);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let tasks = 8;
    let outs: Vec<std::sync::Mutex<Vec<f32>>> = (0..tasks)
        .map(|_| std::sync::Mutex::new(vec![0f32; m * n]))
        .collect();
    let pool = Pool::new(3);
    let allocations = AtomicU64::new(0);
    pool.run(tasks, &|t, _worker| {
        let mut out = outs[t].lock().unwrap();
        let before = counts();
        matmul_seq(
            &mut out,
            n,
            Mat::new(&a, m, k),
            Mat::new(&b, n, k),
            true,
            1.0,
            false,
        );
        let after = counts();
        allocations.fetch_add(after.0 - before.0, Ordering::Relaxed);
    });
    assert_eq!(allocations.load(Ordering::Relaxed), 0);
    assert!(outs
        .iter()
        .all(|o| o.lock().unwrap()[0] == 0.5 * 0.25 * k as f32));
}
