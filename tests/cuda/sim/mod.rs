//! The CUDA backend on the simulated device (feature `cuda-sim`): the device layer and its
//! misuse checks, and the engine's whole CUDA path against the CPU backend. These run in
//! CI (`cargo test --features cuda-sim`); the modules beside this one need a real GPU.

mod activity;
mod alloc;
mod device;
mod engine;
mod eval;
mod part;
