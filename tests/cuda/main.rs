//! The CUDA backend on a real GPU (feature `cuda`): every kernel against the CPU stage it replaces. Each test skips, saying why, without a driver or device.
#![cfg(feature = "cuda")]

#[path = "../common/mod.rs"]
mod common;

#[path = "../common/oracles.rs"]
mod oracles;

mod bank;
mod coreset;
mod embed;
mod engine;
mod forward;
mod gemm;
mod maps;
mod point;
mod point_branch;
mod transformer;
