//! Offline: fitting banks and decision layers, metrics, the synthetic dataset and its pictures.

#[path = "../common/mod.rs"]
mod common;

mod fit_banks;
mod fit_features;
mod linked;
mod metrics_cases;
mod synth_dataset;
mod synth_pictures;
mod train_fusion;
mod train_radar;
