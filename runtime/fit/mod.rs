//! Offline fitting: features of the training parts, coreset, banks, decision layers,
//! calibration, RADAR's per-case statistics.

pub mod banks;
pub mod calibrate;
pub mod category;
pub mod features;
pub mod ocsvm;
pub mod radar;
pub mod scratch;
