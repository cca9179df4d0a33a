//! The container format: model and bank files, checkpoint conversion, validation of every field.

#[path = "../common/scratch.rs"]
mod scratch;

mod checkpoints;
mod convert;
mod files;
mod scratch_dirs;
