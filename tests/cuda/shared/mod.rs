//! Helpers of the kernel tests that the CUDA bench (bench/cuda/) uses too: that program
//! includes these files with `#[path]`, so each piece of setup and reference is written once.

pub mod bank;
pub mod forward;
pub mod gemm;
pub mod point;
pub mod point_branch;
pub mod transformer;
