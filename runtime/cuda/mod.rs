//! CUDA backend (feature `cuda`).
//!
//! Shared plumbing for every CUDA stage (kernels in `kernels/*.cu`):
//! - [`device::Device`]: driver detection without panicking ([`device::Device::new`]
//!   returns [`crate::Error::Cuda`] when there is no driver or GPU, so the engine can fall
//!   back to the CPU and log why), one context and one stream per engine, device facts
//!   (compute capability, multiprocessors, shared-memory limit), events for timing,
//!   synchronous upload/download helpers for creation time, and the launch helpers:
//!   [`device::Device::launch`] (raw `cuLaunchKernel` on the engine's stream with a fixed
//!   argument array, no heap allocation) and [`device::Device::launch_cluster`]
//!   (`cuLaunchKernelEx` with a thread-block-cluster dimension, sm_90).
//! - [`module::Module`]: one loaded kernel module. build.rs generates
//!   [`module::KERNEL_MODULES`], one entry per `kernels/*.cu` (name, inlined source,
//!   cubins for sm_87/sm_90/sm_90a when NVRTC was available at build time). A new `.cu`
//!   file needs no edit here: `Module::load(&dev, "name")` picks the cubin for the device's
//!   compute capability or compiles the source with NVRTC (at engine creation only), and
//!   `module.function("kernel_name")` looks a kernel up once, to be kept in a fixed struct.
//! - [`arena::ArenaPlan`] / [`arena::Arena`]: one device allocation per engine, planned
//!   from typed slots ([`arena::Slot`]); `arena.ptr(slot)` gives a typed [`arena::DevPtr`]
//!   that is passed to kernels by address (`arg!`-style `&ptr as *const _ as *mut c_void`).
//! - [`graph::Graph`] / [`graph::Pinned`]: per-part work recorded once into a CUDA graph
//!   and replayed, reading and writing pinned host buffers.
//! - Stages, each a struct of kernels looked up once plus `unsafe` launch methods on
//!   [`arena::DevPtr`]s, with a GPU parity test in `tests/cuda_<stage>.rs`:
//!   [`point`] (preprocess, FPS, kNN grouping, group encoder, feature alignment),
//!   [`embed`] (RGB input, patch and position embeddings, LayerNorm, output layout),
//!   [`gemm`] (cuBLASLt dense layers), [`transformer`] (fused attention, elementwise),
//!   [`bank`] (nearest bank rows), [`maps`] (re-weighting, upsampling, blur, decision,
//!   regions), [`coreset`] (fit-time greedy selection).
//! - The engine's device stages today, each self-checked against the CPU when the engine
//!   is created: [`rgb`] (the ViT) and [`scoring`] (bank search); see [`crate::backend`]
//!   for how an engine chooses and falls back.
//!
//! - [`sim`]: the simulated device behind [`device::Device::simulated`] (backend
//!   `cuda-sim`; its kernels are built by build.rs with the `cuda-sim` feature): the same
//!   methods run the kernels in the SIMT emulator (`kernels/sim`), the GEMMs on the CPU,
//!   and check bounds, reads of never-written memory and graph replays after re-planning.
//!   Only the device layer (`device`, `arena`, `graph`, `module`, `gemm`) knows the
//!   difference; the stages are the same code on both.
//! - One device per engine: the engine opens one [`device::Device`] (context and stream)
//!   and shares it (`Arc`) with its device stages (`*::on_device`).
//!
//! Lifetimes: drop every `Module` and `Arena` before the `Device` that made them (struct
//! fields drop in declaration order: put the device last).
//!
//! Launch pattern (no allocation on the hot path):
//! ```ignore
//! let mut args = [kptr(&src), kptr(&dst), kptr(&n)];
//! unsafe { dev.launch(func, (blocks, 1, 1), (256, 1, 1), 0, &mut args)? };
//! ```

pub mod arena;
pub mod bank;
pub mod coreset;
pub mod device;
pub mod embed;
pub mod forward;
pub mod gemm;
pub mod graph;
pub mod maps;
pub mod module;
pub mod point;
pub mod point_branch;
pub mod rgb;
pub mod scoring;
pub mod sim;
pub mod transformer;

pub use arena::{Arena, ArenaPlan, DevPtr, Slot};
pub use device::Device;
pub use graph::{Graph, Pinned};
pub use module::KERNEL_MODULES;
