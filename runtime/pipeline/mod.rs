//! The stages of SPEC.md in order: preprocess, rgb, point, align, fuse, score, decide.
//! Backend-neutral: each stage calls its backend.

pub mod extract;
pub mod input;
pub mod preprocess;
