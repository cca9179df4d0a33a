//! The CPU backend: the reference implementation of every stage of SPEC.md.

pub mod bank_neighbours;
pub mod bank_proj;
pub mod bank_prune;
pub mod bank_search;
pub mod coreset;
pub mod dense;
pub mod fps;
pub mod fusion;
pub mod gemm;
pub mod gemm_bf16;
pub mod knn;
pub mod lanes;
pub mod maps;
pub mod pfa;
pub mod point_kdtree;
pub mod point_mae;
pub mod pool;
pub mod products;
pub mod radar_fusion;
pub mod regions;
pub mod transformer;
pub mod vit;
pub mod vmath;
