//! The `miad` command: the fit/eval/inspect workflow and the model commands.

#[path = "../common/mod.rs"]
mod common;
#[path = "../capi/fixture.rs"]
mod fixture;
mod model_commands;
mod reliability;
mod workflow;
