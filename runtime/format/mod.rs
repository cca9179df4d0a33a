//! The container format of model and bank files, documented byte by byte in
//! `weights/FORMAT.md`: a fixed header, an rkyv manifest validated on open, tensors
//! aligned to 4096 bytes with a checksum each, memory-mapped and borrowed without copying.

pub mod container;
pub mod convert;
pub mod error;
pub mod file;
pub mod limits;
pub mod model;
pub mod source;

pub use container::{
    Container, Dtype, Element, FileConfig, Manifest, OpenOptions, TensorEntry, Writer,
};
pub use error::FormatError;
pub use model::{
    hex, model_tensor_specs, random_model, validate_model_config, write_model, BankFile, ModelFile,
    TensorSpec,
};
pub use source::{write_safetensors, OwnedTensors, StTensor, TensorSource};
