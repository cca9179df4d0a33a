//! A fixed pool of pre-started worker threads that runs numbered tasks.
//!
//! Why not rayon: rayon allocates per job, and the inspection path must not allocate.
//! Here a job is a borrowed closure handed to parked workers through a mutex and a
//! condition variable (neither allocates after creation). Tasks are handed out with an
//! atomic counter, so any thread may run any task: callers make each task's result
//! depend only on its task number (a fixed partition of the work), never on the thread
//! or the thread count, which keeps results bit-identical for 1, 2 or N threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A task body: `(task, worker)`. `worker` is in `0..pool.threads()` and is meant for
/// indexing per-worker scratch buffers; results must not depend on it.
type TaskFn<'a> = dyn Fn(usize, usize) + Sync + 'a;

struct Job {
    /// Borrowed for the duration of [`Pool::run`], which waits for every worker.
    body: *const TaskFn<'static>,
    tasks: usize,
    next: *const AtomicUsize,
}

// The raw pointers in `Job` point to data that outlives the job (see `Pool::run`).
unsafe impl Send for Job {}

struct State {
    generation: u64,
    job: Option<Job>,
    busy_workers: usize,
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    finished: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    entry: Mutex<()>,
}

thread_local! {
    static INSIDE_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pool {
    /// A pool of `threads` threads in all (the calling thread is one of them).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                busy_workers: 0,
                panicked: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|worker| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("miad-worker-{worker}"))
                    .spawn(move || worker_loop(&shared, worker))
                    .expect("failed to start a worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            entry: Mutex::new(()),
        }
    }

    /// A pool with one thread per available core.
    pub fn with_available_cores() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `body(task, worker)` for every task in `0..tasks` and returns when all are
    /// done. A call from inside a task runs its tasks inline on that thread.
    /// A panic in a task is re-raised here after every worker has stopped.
    pub fn run(&self, tasks: usize, body: &TaskFn<'_>) {
        if tasks == 0 {
            return;
        }
        // Whichever thread a task lands on, its first matrix product must not allocate.
        super::gemm::warm_up_thread();
        if self.workers.is_empty() || tasks == 1 || INSIDE_POOL.with(|f| f.get()) {
            (0..tasks).for_each(|t| body(t, 0));
            return;
        }
        let _entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let next = AtomicUsize::new(0);
        // SAFETY: the lifetime is erased only while this function waits below for every
        // worker to drop its use of `body` and `next`.
        let body_static: *const TaskFn<'static> = unsafe { std::mem::transmute(body) };
        {
            let mut state = self.lock_state();
            state.job = Some(Job {
                body: body_static,
                tasks,
                next: &next,
            });
            state.generation = state.generation.wrapping_add(1);
            state.busy_workers = self.workers.len();
            state.panicked = false;
        }
        self.shared.wake.notify_all();

        INSIDE_POOL.with(|f| f.set(true));
        let caller = catch_unwind(AssertUnwindSafe(|| drain(body, tasks, &next, 0)));
        INSIDE_POOL.with(|f| f.set(false));

        let mut state = self.lock_state();
        while state.busy_workers > 0 {
            state = self
                .shared
                .finished
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.job = None;
        let worker_panicked = state.panicked;
        drop(state);
        if let Err(payload) = caller {
            std::panic::resume_unwind(payload);
        }
        if worker_panicked {
            panic!("a miad worker thread panicked");
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn drain(body: &TaskFn<'_>, tasks: usize, next: &AtomicUsize, worker: usize) {
    loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        body(t, worker);
    }
}

fn worker_loop(shared: &Shared, worker: usize) {
    INSIDE_POOL.with(|f| f.set(true));
    super::gemm::warm_up_thread();
    let mut seen = 0u64;
    loop {
        let (body, tasks, next) = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !state.shutdown && (state.generation == seen || state.job.is_none()) {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            let job = state.job.as_ref().expect("job present when woken");
            (job.body, job.tasks, job.next)
        };
        // SAFETY: `Pool::run` keeps `body` and `next` alive until `busy_workers` is 0.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe {
            drain(&*body, tasks, &*next, worker)
        }));
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_err() {
            state.panicked = true;
        }
        state.busy_workers -= 1;
        if state.busy_workers == 0 {
            shared.finished.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.lock_state().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that tasks may share to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(slice: &mut [T]) -> Self {
        SharedMut(slice.as_mut_ptr())
    }
    /// The start of the slice (a method, so closures capture the whole `Sync` wrapper).
    pub fn ptr(&self) -> *mut T {
        self.0
    }
    /// # Safety
    /// `start..start + len` must lie inside the original slice and no other task may
    /// access it at the same time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for tasks in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                pool.run(tasks, &|t, w| {
                    assert!(w < threads);
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn nested_runs_execute_inline() {
        let pool = Pool::new(2);
        let count = AtomicU64::new(0);
        pool.run(4, &|_, _| {
            pool.run(3, &|_, _| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|t, _| {
                if t == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicU64::new(0);
        pool.run(8, &|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
