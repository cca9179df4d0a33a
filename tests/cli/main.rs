//! The `miad` command: the fit/eval/inspect workflow and the model commands.

mod model_commands;
mod workflow;
