//! One device allocation per engine, carved into typed slots planned at creation: the
//! engine plans every stage's needs into one arena ([`super::Device::plan_engine_arena`])
//! and each stage works in its region, an [`Arena`] that does not own its memory.

use std::marker::PhantomData;

use cudarc::driver::sys;

use super::context::dev_err;
use super::context::{check, Device};
use super::sim::{self, HostMem};
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
#[derive(Clone, Debug, Default)]
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

/// Who frees an arena's memory.
enum Owner {
    /// A driver allocation, freed on drop.
    Driver,
    /// The host memory standing for it on the simulated device (freed when dropped).
    Sim { _memory: HostMem },
    /// A region of another arena (the engine's), which the device owns; on the simulated
    /// device registered as a region of its own, so that bounds checks stop at its end.
    Region { simulated: bool },
}

/// The device memory of a plan: an allocation freed on drop, or a region of the engine's
/// arena.
pub struct Arena {
    base: sys::CUdeviceptr,
    size: usize,
    owner: Owner,
}

impl Arena {
    /// Allocates the memory of `plan` (counted on `dev`: one per engine).
    pub fn new(dev: &Device, plan: &ArenaPlan) -> Result<Arena> {
        let size = plan.bytes();
        dev.count_arena();
        if dev.is_simulated() {
            let mem = HostMem::device(size)?;
            return Ok(Arena {
                base: mem.addr(),
                size,
                owner: Owner::Sim { _memory: mem },
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
            owner: Owner::Driver,
        })
    }
    /// Slot `s` of this arena as an arena of its own that does not own its memory (valid
    /// while this arena lives: the device keeps the engine's).
    pub(crate) fn region(&self, s: Slot<u8>) -> Result<Arena> {
        if s.offset + s.len > self.size {
            return Err(dev_err(format!(
                "arena region of {} bytes at {} in an arena of {}",
                s.len, s.offset, self.size
            )));
        }
        let base = self.base + s.offset as u64;
        let simulated = matches!(self.owner, Owner::Sim { .. });
        if simulated {
            sim::register_region(base, s.len)?;
        }
        Ok(Arena {
            base,
            size: s.len,
            owner: Owner::Region { simulated },
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
        // The host memory frees itself; a region belongs to the engine's arena.
        match self.owner {
            Owner::Driver => unsafe {
                sys::cuMemFree_v2(self.base);
            },
            Owner::Region { simulated: true } => sim::unregister_region(self.base),
            Owner::Region { simulated: false } | Owner::Sim { .. } => {}
        }
    }
}
