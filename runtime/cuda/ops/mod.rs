//! Launch wrappers of the kernels in `kernels/*.cu`: kernels looked up once per engine,
//! `unsafe` launch methods on device pointers, argument checks on the host.

pub mod bank;
pub mod coreset;
pub mod embed;
pub mod maps;
pub mod point;
pub mod transformer;
