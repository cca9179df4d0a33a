//! Launch wrappers of the kernels, one file per `kernels/*.cu` file of the same name:
//! kernels looked up once per engine with their prototypes, `unsafe` launch methods on
//! device pointers with typed argument lists, argument checks on the host. [`point`] is the
//! point branch's kernel set (plan, kernel choices, creation) whose launches are in
//! [`preprocess`], [`fps`], [`knn`], [`group_encoder`] and [`pfa`].

pub mod attention;
pub mod bank_search;
pub mod coreset;
pub mod embed;
pub mod fps;
pub mod fusion;
pub mod gelu;
pub mod group_encoder;
pub mod knn;
pub mod maps;
pub mod pfa;
pub mod point;
pub mod preprocess;
