//! miad: a runtime for multimodal (RGB + 3-D) industrial anomaly detection.
//!
//! It implements M3DM (DINO ViT-B/8 + Point-MAE features, point feature alignment, fused
//! features, three PatchCore memory banks, one-class-SVM decision fusion) and RADAR
//! (inspection when a modality is missing). The numbers every stage computes are in
//! `SPEC.md`; the data flow is in [`pipeline`]; the CPU backend in [`cpu`] is the
//! reference for every other backend.

pub mod backend;
pub mod capi;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
#[cfg(feature = "fit")]
pub mod fit;
pub mod format;
pub mod pipeline;
pub mod types;
pub mod util;

pub use error::{DeviceError, Error, Misuse, Result};
