//! One device allocation per engine, carved into typed slots planned at creation.

use std::marker::PhantomData;

use cudarc::driver::sys;

use super::context::dev_err;
use super::context::{check, Device};
use super::sim::HostMem;
use crate::Result;

/// Alignment of every slot, bytes (enough for 16-byte vector access and TMA).
pub const ALIGN: usize = 256;

/// A typed region of the arena: `len` elements of `T` at byte `offset`.
#[derive(Debug)]
pub struct Slot<T> {
    pub offset: usize,
    pub len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slot<T> {}

impl<T> Slot<T> {
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// A typed device pointer; `#[repr(transparent)]` over `CUdeviceptr`, so its address is a
/// valid kernel argument for a `T*` parameter.
#[repr(transparent)]
#[derive(Debug)]
pub struct DevPtr<T>(pub sys::CUdeviceptr, PhantomData<T>);

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtr<T> {}

impl<T> DevPtr<T> {
    pub fn raw(self) -> sys::CUdeviceptr {
        self.0
    }
    /// The null pointer (for optional kernel inputs).
    pub fn null() -> Self {
        DevPtr(0, PhantomData)
    }
    /// The same address read as elements of `U` (bit patterns stored as `u16` passed to a
    /// kernel's `__half*` or `__nv_bfloat16*` parameter).
    pub fn cast<U>(self) -> DevPtr<U> {
        DevPtr(self.0, PhantomData)
    }
    /// Pointer `n` elements further.
    pub fn offset(self, n: usize) -> Self {
        DevPtr(self.0 + (n * std::mem::size_of::<T>()) as u64, PhantomData)
    }
}

/// Offsets computed once, before the single allocation.
#[derive(Debug, Default)]
pub struct ArenaPlan {
    size: usize,
}

impl ArenaPlan {
    pub fn new() -> Self {
        Self::default()
    }
    /// Reserves `len` elements of `T`.
    pub fn add<T>(&mut self, len: usize) -> Slot<T> {
        let offset = self.size.div_ceil(ALIGN) * ALIGN;
        self.size = offset + len * std::mem::size_of::<T>();
        Slot {
            offset,
            len,
            _t: PhantomData,
        }
    }
    pub fn bytes(&self) -> usize {
        self.size.max(1).div_ceil(ALIGN) * ALIGN
    }
}

/// The device memory of a plan; freed on drop.
pub struct Arena {
    base: sys::CUdeviceptr,
    size: usize,
    /// The host memory standing for it on the simulated device.
    sim: Option<HostMem>,
}

impl Arena {
    pub fn new(dev: &Device, plan: &ArenaPlan) -> Result<Arena> {
        let size = plan.bytes();
        if dev.is_simulated() {
            let mem = HostMem::device(size)?;
            return Ok(Arena {
                base: mem.addr(),
                size,
                sim: Some(mem),
            });
        }
        dev.bind()?;
        let mut base: sys::CUdeviceptr = 0;
        unsafe {
            check(
                sys::cuMemAlloc_v2(&mut base, size),
                &format!("cuMemAlloc({size} bytes)"),
            )?
        };
        Ok(Arena {
            base,
            size,
            sim: None,
        })
    }
    pub fn ptr<T>(&self, s: Slot<T>) -> DevPtr<T> {
        debug_assert!(s.offset + s.bytes() <= self.size);
        DevPtr(self.base + s.offset as u64, PhantomData)
    }
    pub fn bytes(&self) -> usize {
        self.size
    }
    /// Copies `src` into slot `s` (creation time and tests); `src` may be shorter.
    pub fn upload<T: bytemuck::Pod>(&self, dev: &Device, s: Slot<T>, src: &[T]) -> Result<()> {
        if src.len() > s.len {
            return Err(dev_err(format!(
                "upload of {} elements into a slot of {}",
                src.len(),
                s.len
            )));
        }
        dev.upload(self.ptr(s).raw(), src)
    }
    /// Copies slot `s` (its first `dst.len()` elements) into `dst`.
    pub fn download<T: bytemuck::Pod>(
        &self,
        dev: &Device,
        s: Slot<T>,
        dst: &mut [T],
    ) -> Result<()> {
        if dst.len() > s.len {
            return Err(dev_err(format!(
                "download of {} elements from a slot of {}",
                dst.len(),
                s.len
            )));
        }
        dev.download(dst, self.ptr(s).raw())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.sim.is_some() {
            return; // the host memory frees itself
        }
        unsafe {
            sys::cuMemFree_v2(self.base);
        }
    }
}
