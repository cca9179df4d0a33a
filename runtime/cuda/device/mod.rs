//! The device layer: the only code that talks to the CUDA driver and libraries (context,
//! stream, memory, copies, launches, timers, graphs, modules, cuBLASLt), with the
//! simulated device ([`sim`]) behind the same types.

pub mod arena;
mod context;
pub mod gemm;
pub mod graph;
pub mod kernel;
pub mod module;
pub mod sim;

pub use crate::backend::DeviceCounts;
pub use context::{Device, Timer, DEVICES_OPENED, SIDE_STREAM_GEMM_REGIONS};
pub use kernel::{Kernel, KernelArgs};
