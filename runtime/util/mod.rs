//! Small helpers shared by every part of the crate.

pub mod alloc_counter;
pub mod peak;
pub mod rng;
