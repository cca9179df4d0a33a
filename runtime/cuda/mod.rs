//! CUDA backend (feature `cuda`), in three layers:
//!
//! - [`device`]: the only code that talks to the driver, and its simulated twin.
//!   [`device::Device`]: driver detection without panicking ([`device::Device::new`]
//!   returns [`crate::Error::Device`] when there is no driver or GPU, so the engine can fall
//!   back to the CPU and say why), one context and one stream per engine, device facts
//!   (compute capability, multiprocessors, shared-memory limit), timers, synchronous
//!   upload/download helpers for creation time, and the launches:
//!   [`device::Device::launch`] (`cuLaunchKernel` on the engine's stream, no heap
//!   allocation) and [`device::Device::launch_cluster`] (`cuLaunchKernelEx` with a
//!   thread-block-cluster dimension, sm_90). [`device::kernel`]: the parsed prototype of
//!   every `__global__` function, kernels looked up with their prototype
//!   ([`device::Kernel`]) and typed argument lists ([`device::KernelArgs`],
//!   [`crate::kernel_args!`]); every launch checks the count and kind of its arguments
//!   against the prototype, on a GPU and on the simulated device.
//!   [`device::module`]: kernel modules; build.rs generates [`KERNEL_MODULES`], one entry
//!   per `kernels/*.cu` (name, inlined source, cubins for sm_87/sm_90/sm_90a when NVRTC
//!   was available at build time, and the emulated build with `cuda-sim`); a new `.cu`
//!   file needs no edit here. [`device::arena`]: device memory planned from typed slots,
//!   [`device::graph`]: per-part work recorded once into a CUDA graph and replayed through
//!   pinned host buffers, [`device::gemm`]: cuBLASLt dense layers.
//!   [`device::sim`]: the simulated device behind [`device::Device::simulated`] (backend
//!   `cuda-sim`): the same methods run the kernels in the SIMT emulator (`kernels/sim`)
//!   and the GEMMs on the CPU, and check bounds, reads of never-written memory and graph
//!   replays after re-planning.
//! - [`ops`]: the launch wrappers of the kernels, one file per `kernels/*.cu` file of the
//!   same name, each a struct of kernels looked up once plus `unsafe` launch methods on
//!   [`DevPtr`]s, with a parity test in `tests/cuda/` (on a GPU, or on the simulated
//!   device): [`ops::preprocess`], [`ops::fps`], [`ops::knn`], [`ops::group_encoder`],
//!   [`ops::pfa`] (the point branch, whose kernel set and plan are [`ops::point`]),
//!   [`ops::embed`] (RGB input, patch and position embeddings, LayerNorm, output layout),
//!   [`ops::attention`] (fused attention), [`ops::gelu`] (bias + GELU),
//!   [`ops::fusion`] (RADAR's element-wise steps), [`ops::bank_search`] (nearest bank
//!   rows), [`ops::maps`] (re-weighting, upsampling, blur, decision, regions),
//!   [`ops::coreset`] (fit-time greedy selection).
//! - [`stages`]: the engine's device stages, named like their CPU counterparts, each
//!   self-checked against the CPU when the engine is created: [`stages::vit`] (the RGB
//!   branch), [`stages::point_branch`] (with the bf16 group encoder,
//!   [`stages::group_encoder`]), [`stages::fusion`] (UFF and RADAR),
//!   [`stages::bank_search`], and the transformer forwards they run
//!   ([`stages::forward`]); see [`crate::backend`] for how an engine
//!   chooses and falls back. Stage code is the same for a GPU and the simulator.
//!
//! One device object per engine: the engine opens one [`Device`] (context and stream) and
//! shares it (`Arc`) with every stage (`*::on_device`). The device owns what the stages
//! share: the module table ([`Device::module`]: each `kernels/*.cu` loaded at most once;
//! `Module::load` asks it), the cuBLASLt handle ([`Device::cublaslt`]), and the engine's
//! one arena: every stage states its memory (`*::arena_needs`, host only), the engine
//! plans them together ([`Device::plan_engine_arena`], with one GEMM workspace for all)
//! and each stage takes its region ([`Device::stage_arena`]). A stage used alone (tests,
//! tools) allocates its own arena. [`Device::counts`] says what was created (arenas,
//! streams, cuBLASLt handles, module loads); `BackendChoice::device_counts` reports it.
//!
//! Lifetimes: drop every `Arena` of its own, graph and pinned buffer before the `Device`
//! that made them (struct fields drop in declaration order: put the device last); the
//! device unloads its modules, destroys its cuBLASLt handle and frees the engine's arena
//! before its context.
//!
//! Launch pattern (no allocation on the hot path):
//! ```ignore
//! let kernel = Kernel::find(&module, "row_sqnorm_f32")?; // creation time
//! let (rows, dim) = (rows as i32, dim as i32);
//! let mut args = kernel_args![x, out, rows, dim];
//! unsafe { dev.launch(kernel, (blocks, 1, 1), (256, 1, 1), 0, &mut args)? };
//! ```

pub mod device;
pub mod ops;
pub mod stages;

pub use device::arena::{Arena, ArenaPlan, DevPtr, Slot};
pub use device::graph::{CopyNode, Graph, Pinned, TimeMarks};
pub use device::module::KERNEL_MODULES;
pub use device::Device;
