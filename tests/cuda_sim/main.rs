//! The CUDA backend on the simulated device (feature `cuda-sim`): the device layer and
//! its misuse checks, and the engine's whole CUDA path against the CPU backend.

#[path = "../common/mod.rs"]
mod common;

mod device;
mod engine;
