//! Arguments shared by the commands that open an engine (inspect, eval, bench).

use miad::backend::{Backend, Precision};
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
    /// Compute backend: cpu, cuda (falls back to the CPU, saying why, when no GPU can be
    /// used), auto, or cuda-sim (the CUDA path on the simulated device; a build with the
    /// `cuda-sim` feature).
    #[arg(long, default_value = "cpu")]
    pub backend: Backend,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Arithmetic of the networks: f32 (the parity path) or bf16 (the fast path: on the
    /// CPU through AVX512-BF16 where the CPU has it, else f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Read the model and bank files into memory instead of mapping them (immune to the
    /// files being changed in place while the command runs).
    #[arg(long)]
    pub in_memory: bool,
    /// Search the banks without the partitions stored by `miad fit` (the same results,
    /// every distance computed; for comparison).
    #[arg(long)]
    pub unpruned_search: bool,
}

impl EngineArgs {
    pub fn open(&self) -> miad::Result<Engine> {
        let engine = Engine::open(
            &self.model,
            &self.bank,
            &EngineOptions {
                threads: self.threads,
                preprocessed: self.preprocessed,
                backend: self.backend,
                device: self.device,
                precision: self.precision,
                in_memory: self.in_memory,
                pruned_search: !self.unpruned_search,
                ..EngineOptions::default()
            },
        )?;
        let choice = engine.backend();
        if choice.used != Backend::Cpu || choice.requested != Backend::Cpu {
            eprintln!("backend: {}", choice.describe());
        }
        Ok(engine)
    }
}
