//! Evaluation: dataset readers and writers, metrics (I-AUROC, P-AUROC, AUPRO), the
//! synthetic dataset, the modality-incomplete protocol, pictures.

pub mod dataset;
pub mod io;
pub mod latency;
pub mod metrics;
pub mod missing;
pub mod picture;
pub mod run;
pub mod scaled_bank;
pub mod synth;
