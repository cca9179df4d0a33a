//! Arguments shared by the commands that open an engine (inspect, eval, bench).

use miad::engine::{Engine, EngineOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EngineArgs {
    /// Model file (`miad model convert` or `miad model random`).
    #[arg(long)]
    pub model: PathBuf,
    /// Bank file (`miad fit`).
    #[arg(long)]
    pub bank: PathBuf,
    /// The data are already cleaned (plane removed, padded): only resize.
    #[arg(long)]
    pub preprocessed: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl EngineArgs {
    pub fn open(&self) -> miad::Result<Engine> {
        Engine::open(
            &self.model,
            &self.bank,
            &EngineOptions {
                threads: self.threads,
                preprocessed: self.preprocessed,
                ..EngineOptions::default()
            },
        )
    }
}
