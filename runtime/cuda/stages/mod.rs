//! The engine's device stages, named like the CPU stages they replace: each planned once
//! on the engine's device, recorded into graphs, and checked against the CPU at engine
//! creation.

pub mod bank_search;
pub mod forward;
pub mod fusion;
pub mod group_encoder;
pub mod part;
pub mod point_branch;
pub mod preprocess;
pub mod vit;
