//! The container format: model and bank files, checkpoint conversion, validation of every field.

mod checkpoints;
mod convert;
mod files;
