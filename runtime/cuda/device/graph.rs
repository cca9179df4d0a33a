//! CUDA graphs and pinned host buffers.
//!
//! The per-part work of the CUDA backend is a fixed sequence of copies and launches on the
//! engine's stream with fixed buffers, so it is recorded once at engine creation
//! ([`Graph::capture`]) and replayed per part ([`Graph::replay`]: one driver call, no
//! allocation, no per-launch CPU overhead). The part's inputs are written into pinned
//! host buffers ([`Pinned`]) that the recorded copies read, and the results come back into
//! pinned buffers the recorded copies write: a replay sees whatever the buffers hold when
//! it runs. A copy recorded with [`Pinned::copy_to_resizable`] moves only the bytes the
//! part uses: [`Graph::set_copy_len`] updates its size in the instantiated graph before
//! the replay (`cuGraphExecMemcpyNodeSetParams`, no re-recording). [`TimeMarks`] are
//! event record nodes between stages: their times are read after the replay's one wait.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::sys;

use super::arena::DevPtr;
use super::context::dev_err;
use super::context::{check, Device, RecordedCopy};
use super::sim::{CopyKind, HostMem, SimGraph, SimMarks};
use crate::Result;

/// Page-locked host memory of `len` values of `T`, zeroed; freed on drop. Drop it before
/// the [`Device`] whose context allocated it.
pub struct Pinned<T: bytemuck::Pod> {
    ptr: *mut T,
    len: usize,
    /// Plain aligned host memory on the simulated device.
    sim: Option<HostMem>,
    _t: PhantomData<T>,
}

// The buffer is plain memory owned by this value.
unsafe impl<T: bytemuck::Pod + Send> Send for Pinned<T> {}

impl<T: bytemuck::Pod> Pinned<T> {
    /// Allocates (creation time only).
    pub fn new(dev: &Device, len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b > 0)
            .ok_or_else(|| dev_err(format!("pinned buffer of {len} values")))?;
        if dev.is_simulated() {
            let mem = HostMem::pinned(bytes)?;
            return Ok(Pinned {
                ptr: mem.as_ptr() as *mut T,
                len,
                sim: Some(mem),
                _t: PhantomData,
            });
        }
        dev.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        unsafe {
            check(
                sys::cuMemHostAlloc(&mut p, bytes, 0),
                &format!("cuMemHostAlloc({bytes} bytes)"),
            )?;
            std::ptr::write_bytes(p as *mut u8, 0, bytes);
        }
        Ok(Pinned {
            ptr: p as *mut T,
            len,
            sim: None,
            _t: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `len` zero-initialised values of a Pod type, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Enqueues a copy of the first `n` values to `dst` on the device's stream (recorded
    /// into a graph when issued during [`Graph::capture`]).
    pub fn copy_to(&self, dev: &Device, dst: DevPtr<T>, n: usize) -> Result<()> {
        self.check_len(n)?;
        let bytes = n * std::mem::size_of::<T>();
        dev.copy_async(dst.raw(), self.ptr as u64, bytes, CopyKind::HostToDevice)
    }

    /// Records (inside [`Graph::capture`]) a copy of the first `n` values to `dst` whose
    /// length [`Graph::set_copy_len`] changes before a replay (up to `n`).
    pub fn copy_to_resizable(&self, dev: &Device, dst: DevPtr<T>, n: usize) -> Result<CopyNode> {
        self.check_len(n)?;
        let elem = std::mem::size_of::<T>();
        let node = dev.copy_node(dst.raw(), self.ptr as u64, n * elem, CopyKind::HostToDevice)?;
        Ok(CopyNode {
            node,
            max_bytes: n * elem,
            elem,
        })
    }

    /// Enqueues a copy of `n` values from `src` into the first `n` values of this buffer.
    pub fn copy_from(&mut self, dev: &Device, src: DevPtr<T>, n: usize) -> Result<()> {
        self.check_len(n)?;
        let bytes = n * std::mem::size_of::<T>();
        dev.copy_async(self.ptr as u64, src.raw(), bytes, CopyKind::DeviceToHost)
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(dev_err(format!(
                "copy of {n} values through a pinned buffer of {}",
                self.len
            )));
        }
        Ok(())
    }
}

impl<T: bytemuck::Pod> Drop for Pinned<T> {
    fn drop(&mut self) {
        if self.sim.is_some() {
            return; // the host memory frees itself
        }
        unsafe {
            sys::cuMemFreeHost(self.ptr as *mut c_void);
        }
    }
}

/// A copy recorded by [`Pinned::copy_to_resizable`], resized by [`Graph::set_copy_len`].
#[derive(Clone, Copy, Debug)]
pub struct CopyNode {
    node: RecordedCopy,
    max_bytes: usize,
    /// Bytes of one value.
    elem: usize,
}

/// A recorded, instantiated sequence of stream work. Drop it before its [`Device`].
pub struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    /// The recorded work on the simulated device.
    sim: Option<SimGraph>,
}

// Driver handles, used from the engine's thread.
unsafe impl Send for Graph {}

impl Graph {
    /// Records everything `record` enqueues on `dev`'s stream (nothing executes while
    /// recording) and instantiates it. A failure inside `record` ends the capture and is
    /// returned; the stream is usable afterwards.
    pub fn capture(dev: &Device, record: impl FnOnce(&Device) -> Result<()>) -> Result<Graph> {
        if let Some(s) = dev.sim() {
            s.begin_capture()?;
            if let Err(e) = record(dev) {
                s.abort_capture();
                return Err(e);
            }
            return Ok(Graph {
                graph: std::ptr::null_mut(),
                exec: std::ptr::null_mut(),
                sim: Some(s.end_capture()?),
            });
        }
        dev.bind()?;
        let stream = dev.stream();
        unsafe {
            check(
                sys::cuStreamBeginCapture_v2(
                    stream,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                ),
                "cuStreamBeginCapture",
            )?;
        }
        let recorded = record(dev);
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        let ended = unsafe {
            check(
                sys::cuStreamEndCapture(stream, &mut graph),
                "cuStreamEndCapture",
            )
        };
        if let Err(e) = recorded.and(ended) {
            if !graph.is_null() {
                unsafe { sys::cuGraphDestroy(graph) };
            }
            return Err(e);
        }
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        if let Err(e) = unsafe {
            check(
                sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0),
                "cuGraphInstantiate",
            )
        } {
            unsafe { sys::cuGraphDestroy(graph) };
            return Err(e);
        }
        Ok(Graph {
            graph,
            exec,
            sim: None,
        })
    }

    /// Sets how many values (at least one, at most the recorded count) the recorded copy
    /// `copy` of this graph moves from the next replay on: an update of the instantiated
    /// graph, no re-recording, no allocation. Call it only while no replay runs (after
    /// the wait for the last one).
    pub fn set_copy_len(&self, dev: &Device, copy: &CopyNode, n: usize) -> Result<()> {
        let bytes = n.max(1) * copy.elem;
        match (&self.sim, copy.node) {
            // The simulated device checks the size against the recorded one itself.
            (Some(g), RecordedCopy::Sim(i)) => g.set_copy_bytes(i, bytes),
            (None, RecordedCopy::Driver(node)) => {
                if bytes > copy.max_bytes {
                    return Err(dev_err(format!(
                        "a recorded copy of {} bytes resized to {bytes}",
                        copy.max_bytes
                    )));
                }
                dev.bind()?;
                // SAFETY: `node` is a memcpy node of this graph (recorded while capturing
                // it); its parameters are read back and only the width changes.
                unsafe {
                    let mut p: sys::CUDA_MEMCPY3D = std::mem::zeroed();
                    check(
                        sys::cuGraphMemcpyNodeGetParams(node, &mut p),
                        "cuGraphMemcpyNodeGetParams",
                    )?;
                    p.WidthInBytes = bytes;
                    check(
                        sys::cuGraphExecMemcpyNodeSetParams(self.exec, node, &p, dev.context()),
                        "cuGraphExecMemcpyNodeSetParams",
                    )
                }
            }
            _ => Err(dev_err(
                "a recorded copy of another kind of device than the graph's".into(),
            )),
        }
    }

    /// Enqueues one replay on `dev`'s stream (asynchronous; synchronise to read results).
    pub fn replay(&self, dev: &Device) -> Result<()> {
        dev.count_graph_launch();
        match (&self.sim, dev.sim()) {
            (Some(g), Some(s)) => {
                dev.count_uploaded(s.replay(g)?);
                return Ok(());
            }
            (None, None) => {}
            _ => {
                return Err(dev_err(
                    "graph replayed on a device of another kind than it was recorded on".into(),
                ))
            }
        }
        unsafe { check(sys::cuGraphLaunch(self.exec, dev.stream()), "cuGraphLaunch") }
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.sim.is_some() {
            return;
        }
        unsafe {
            sys::cuGraphExecDestroy(self.exec);
            sys::cuGraphDestroy(self.graph);
        }
    }
}

/// Points in recorded stream work where the device notes the time (event record nodes;
/// on the simulated device the host clock when the replay reaches them), read after the
/// replay's wait: per-stage device times with no extra synchronisation. Drop before the
/// [`Device`].
pub struct TimeMarks {
    events: Vec<sys::CUevent>,
    sim: Option<Arc<SimMarks>>,
}

// Driver handles, used from the engine's thread.
unsafe impl Send for TimeMarks {}

impl TimeMarks {
    /// `n` marks (creation time only).
    pub fn new(dev: &Device, n: usize) -> Result<TimeMarks> {
        if dev.is_simulated() {
            return Ok(TimeMarks {
                events: Vec::new(),
                sim: Some(Arc::new(SimMarks::new(n))),
            });
        }
        dev.bind()?;
        let mut marks = TimeMarks {
            events: Vec::with_capacity(n),
            sim: None,
        };
        for _ in 0..n {
            let mut e: sys::CUevent = std::ptr::null_mut();
            // Flags 0: timing enabled (the fork and join events disable it).
            unsafe { check(sys::cuEventCreate(&mut e, 0), "cuEventCreate")? };
            marks.events.push(e);
        }
        Ok(marks)
    }

    /// Records mark `i` on `dev`'s current stream, inside [`Graph::capture`] (an event
    /// record node: `CU_EVENT_RECORD_EXTERNAL`).
    pub fn record(&self, dev: &Device, i: usize) -> Result<()> {
        if let (Some(m), Some(s)) = (&self.sim, dev.sim()) {
            return s.mark(m, i);
        }
        let e = *self
            .events
            .get(i)
            .ok_or_else(|| dev_err(format!("time mark {i} of {}", self.events.len())))?;
        let external = sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as std::ffi::c_uint;
        unsafe {
            check(
                sys::cuEventRecordWithFlags(e, dev.stream(), external),
                "cuEventRecordWithFlags",
            )
        }
    }

    /// Seconds from mark `from` to mark `to` of the last replay (after its wait).
    pub fn elapsed_s(&self, from: usize, to: usize) -> Result<f64> {
        if let Some(m) = &self.sim {
            return m.elapsed_s(from, to);
        }
        let (Some(&a), Some(&b)) = (self.events.get(from), self.events.get(to)) else {
            return Err(dev_err(format!(
                "time marks {from} and {to} of {}",
                self.events.len()
            )));
        };
        let mut ms = 0f32;
        unsafe { check(sys::cuEventElapsedTime(&mut ms, a, b), "cuEventElapsedTime")? };
        Ok(f64::from(ms) * 1e-3)
    }
}

impl Drop for TimeMarks {
    fn drop(&mut self) {
        for &e in &self.events {
            unsafe {
                sys::cuEventDestroy_v2(e);
            }
        }
    }
}
