//! Offline fitting: features of the training parts, coreset, banks, decision layers,
//! calibration, RADAR's per-case statistics, training of the learned fusion.

pub mod banks;
pub mod calibrate;
pub mod category;
/// The fusion trainings' steps on the CUDA device (`train-fusion --backend cuda`).
#[cfg(feature = "cuda")]
pub mod device;
pub mod features;
pub mod infonce;
pub mod ocsvm;
pub mod radar;
pub mod scratch;
pub mod train_fusion;
pub mod train_radar;
