//! A device buffer and bf16 rounding, for the attention tests (tests/cuda/transformer.rs)
//! and the bench (bench/cuda/transformer.rs).

use miad::cuda::{Arena, ArenaPlan, Device, Slot};

/// A device copy of `data` (one arena per buffer; tests only).
pub struct Buf<T> {
    arena: Arena,
    slot: Slot<T>,
}

impl<T: bytemuck::Pod> Buf<T> {
    pub fn new(dev: &Device, data: &[T]) -> Self {
        let mut p = ArenaPlan::new();
        let slot = p.add::<T>(data.len());
        let arena = Arena::new(dev, &p).unwrap();
        arena.upload(dev, slot, data).unwrap();
        Buf { arena, slot }
    }
    pub fn ptr(&self) -> miad::cuda::DevPtr<T> {
        self.arena.ptr(self.slot)
    }
    // Read by the parity tests; the bench only times.
    #[allow(dead_code)]
    pub fn read(&self, dev: &Device) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.slot.len];
        dev.synchronize().unwrap();
        self.arena.download(dev, self.slot, &mut v).unwrap();
        v
    }
}

pub fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}
