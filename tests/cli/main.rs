//! The `miad` command: the fit/eval/inspect workflow and the model commands.
#![cfg(feature = "cli")]

mod model_commands;
mod workflow;
