//! CUDA graphs and pinned host buffers.
//!
//! The per-part work of the CUDA backend is a fixed sequence of copies and launches on the
//! engine's stream with fixed buffers, so it is recorded once at engine creation
//! ([`Graph::capture`]) and replayed per part ([`Graph::replay`]: one driver call, no
//! allocation, no per-launch CPU overhead). The part's inputs are written into pinned
//! host buffers ([`Pinned`]) that the recorded copies read, and the results come back into
//! pinned buffers the recorded copies write: a replay sees whatever the buffers hold when
//! it runs.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;

use super::arena::DevPtr;
use super::context::dev_err;
use super::context::{check, Device};
use super::sim::{CopyKind, HostMem, SimGraph};
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

    /// Enqueues one replay on `dev`'s stream (asynchronous; synchronise to read results).
    pub fn replay(&self, dev: &Device) -> Result<()> {
        dev.count_graph_launch();
        match (&self.sim, dev.sim()) {
            (Some(g), Some(s)) => return s.replay(g),
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
