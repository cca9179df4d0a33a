//! Small helpers shared by every part of the crate.

#[cfg(feature = "eval")]
pub mod alloc_counter;
pub mod linalg;
pub mod peak;
pub mod rng;
pub mod row_table;
