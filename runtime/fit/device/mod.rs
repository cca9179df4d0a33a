//! One training step of each learned fusion on the CUDA device, through the same device
//! layer as inspection: UFF's ([`uff`]) and RADAR's ([`radar`]), each checked against the
//! CPU step it replaces.

pub mod radar;
pub mod uff;
