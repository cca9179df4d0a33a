//! The `miad` command: the fit/eval/inspect workflow, the model commands, the bench options.

mod bench_options;
#[path = "../common/mod.rs"]
mod common;
#[path = "../capi/fixture.rs"]
mod fixture;
mod model_commands;
mod reliability;
mod workflow;
