//! The stages of SPEC.md in order: [`preprocess`] (§1), [`extract`] (the networks,
//! alignment and fusion, §2–5, each calling its backend), [`score`] (the bank search and
//! maps, §6–7) and [`decide`] (the one decision policy, §8–9). Backend-neutral; nothing
//! here depends on the offline `fit` and `eval` modules.

pub mod decide;
pub mod extract;
pub mod input;
pub mod preprocess;
pub mod score;
