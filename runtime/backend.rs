//! Which compute backend an engine runs on, and why.
//!
//! The CPU backend ([`crate::cpu`]) is complete and is the reference. The CUDA backend
//! (feature `cuda`) is chosen per engine: [`Backend::Cuda`] asks for it, [`Backend::Auto`]
//! takes it when a usable GPU is present. Neither ever fails the engine for want of a GPU:
//! when the driver, the device or a kernel module is missing, the engine runs on the CPU
//! and [`BackendChoice::fallback`] says why (also printed once to stderr when the caller
//! asked for CUDA explicitly). [`Backend::CudaSim`] runs the same CUDA stages on the
//! simulated device (feature `cuda-sim`), for tests and CI without a GPU.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::Error;

/// The backend an engine is asked to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The CPU backend (the reference).
    #[default]
    Cpu,
    /// The CUDA backend; falls back to the CPU (with the reason) when no GPU can be used.
    Cuda,
    /// CUDA when a usable GPU is present, otherwise the CPU, silently.
    Auto,
    /// The CUDA backend on the simulated device (feature `cuda-sim`): the same device
    /// stages, with the kernels in the SIMT emulator and the GEMMs on the CPU. For tests
    /// and CI; falls back to the CPU, saying why, in a build without the feature.
    CudaSim,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Auto => "auto",
            Backend::CudaSim => "cuda-sim",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Backend::Cpu),
            "cuda" | "gpu" => Ok(Backend::Cuda),
            "auto" => Ok(Backend::Auto),
            "cuda-sim" | "cuda_sim" => Ok(Backend::CudaSim),
            other => Err(Error::Config(format!(
                "unknown backend {other:?}: expected cpu, cuda, auto or cuda-sim"
            ))),
        }
    }
}

/// Arithmetic of the device networks (the CPU backend is always f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 everywhere: the parity path (features within 1e-4 of the CPU's).
    #[default]
    F32,
    /// bf16 storage, f32 accumulation: the fast path (features within 1e-2).
    Bf16,
}

impl Precision {
    /// Bytes of one stored element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Largest relative difference (max |Δ| over max |reference|) between a device
    /// network's features and the CPU's that the engine accepts at creation.
    pub const fn feature_tolerance(self) -> f32 {
        match self {
            Precision::F32 => 1e-4,
            Precision::Bf16 => 1e-2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Config(format!(
                "unknown precision {other:?}: expected f32 or bf16"
            ))),
        }
    }
}

/// What an engine ended up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendChoice {
    pub requested: Backend,
    /// [`Backend::Cpu`], [`Backend::Cuda`] or [`Backend::CudaSim`], never `Auto`.
    pub used: Backend,
    /// The GPU (or the simulated device), when one is used: name and compute capability.
    pub device: Option<String>,
    /// Arithmetic of the device networks.
    pub precision: Precision,
    /// Why CUDA was not used although it was asked for (`Cuda` or `Auto`), or, on the
    /// CUDA backend, why a stage that could run on the device stays on the CPU.
    pub fallback: Option<String>,
    /// The pipeline stages that run on the device (empty on the CPU backend).
    pub device_stages: Vec<&'static str>,
    /// What the engine's one device object created (CUDA backends only).
    pub device_counts: Option<DeviceCounts>,
    /// The device's running counts of graph launches and host synchronisations (CUDA
    /// backends only): read before and after inspections for the per-part figures.
    pub device_activity: Option<ActivityProbe>,
}

/// The stages of one inspection, in SPEC order, as [`BackendChoice::device_stages`] and
/// [`BackendChoice::cpu_stages`] name them.
pub const PIPELINE_STAGES: [&str; 6] = [
    "preprocessing",
    "rgb branch",
    "point branch",
    "fusion",
    "bank search",
    "maps and decision",
];

/// Counts of what the host asks of a device while inspecting: graph launches and host
/// synchronisations (waits for the stream). The target is one of each per part.
#[derive(Debug, Default)]
pub struct DeviceActivity {
    pub graph_launches: AtomicU64,
    pub host_syncs: AtomicU64,
    /// Bytes the graph replays copied host → device (counted by the simulated device,
    /// which sees every copy a replay makes; 0 on a GPU).
    pub bytes_to_device: AtomicU64,
}

/// A shared handle to a device's [`DeviceActivity`]; two probes are equal when they read
/// the same device.
#[derive(Clone, Debug, Default)]
pub struct ActivityProbe(pub Arc<DeviceActivity>);

impl ActivityProbe {
    /// (graph launches, host synchronisations) so far.
    pub fn read(&self) -> (u64, u64) {
        (
            self.0.graph_launches.load(Ordering::Relaxed),
            self.0.host_syncs.load(Ordering::Relaxed),
        )
    }
}

impl ActivityProbe {
    /// Host → device bytes of the graph replays so far (simulated device only).
    pub fn bytes_to_device(&self) -> u64 {
        self.0.bytes_to_device.load(Ordering::Relaxed)
    }
}

impl PartialEq for ActivityProbe {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ActivityProbe {}

/// What one device object (one per engine) created, counted where it is created: a test
/// asserts one arena, one stream, one cuBLASLt handle and each kernel module once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Device allocations made for arenas: the engine's one (a stage used alone makes its
    /// own).
    pub arenas: usize,
    /// Streams created: the engine's one (no stage forks a stream today).
    pub streams: usize,
    /// cuBLASLt handles created (the simulated device counts its stand-in too).
    pub cublaslt_handles: usize,
    /// Kernel modules loaded, per `kernels/*.cu` name, in load order.
    pub modules: Vec<(&'static str, usize)>,
}

impl BackendChoice {
    /// The CPU backend, as asked.
    pub fn cpu() -> Self {
        BackendChoice {
            requested: Backend::Cpu,
            used: Backend::Cpu,
            device: None,
            precision: Precision::F32,
            fallback: None,
            device_stages: Vec::new(),
            device_counts: None,
            device_activity: None,
        }
    }

    /// The CPU backend because CUDA could not be used. The library prints nothing: the
    /// reason is in `fallback` (`describe`, the C ABI's `backend_note`), and the command
    /// line prints it.
    pub fn fell_back(requested: Backend, reason: String) -> Self {
        BackendChoice {
            requested,
            used: Backend::Cpu,
            device: None,
            precision: Precision::F32,
            fallback: Some(reason),
            device_stages: Vec::new(),
            device_counts: None,
            device_activity: None,
        }
    }

    /// The stages that run on the CPU: every stage of [`PIPELINE_STAGES`] not on the device.
    pub fn cpu_stages(&self) -> Vec<&'static str> {
        PIPELINE_STAGES
            .iter()
            .copied()
            .filter(|s| !self.device_stages.contains(s))
            .collect()
    }

    /// One line for reports: `cpu`, `cuda on NVIDIA H100 (sm_90): bank search`,
    /// `cuda-sim on simulated device (SIMT emulator) (sm_90), f32: ...`, or
    /// `cpu (cuda asked for: no CUDA driver ...)`.
    pub fn describe(&self) -> String {
        match (&self.device, &self.fallback) {
            (Some(dev), None) => format!(
                "{} on {dev}, {}: {}",
                self.used,
                self.precision,
                self.device_stages.join(", ")
            ),
            (Some(dev), Some(why)) => format!(
                "{} on {dev}, {}: {} (the rest on the CPU: {why})",
                self.used,
                self.precision,
                self.device_stages.join(", ")
            ),
            (None, Some(why)) => format!("cpu ({} asked for: {why})", self.requested),
            (None, None) if self.precision == Precision::Bf16 => {
                "cpu, bf16 (AVX512-BF16): networks, and the bank search where it pays".into()
            }
            (None, None) => "cpu".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_refused() {
        for b in [Backend::Cpu, Backend::Cuda, Backend::Auto, Backend::CudaSim] {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(b.to_string().to_uppercase().parse::<Backend>().unwrap(), b);
        }
        let e = "tpu".parse::<Backend>().unwrap_err().to_string();
        assert!(
            e.contains("tpu") && e.contains("cpu, cuda, auto or cuda-sim"),
            "{e}"
        );
    }

    #[test]
    fn descriptions_say_what_runs_where_and_why() {
        assert_eq!(BackendChoice::cpu().describe(), "cpu");
        let bf16 = BackendChoice {
            precision: Precision::Bf16,
            ..BackendChoice::cpu()
        };
        assert_eq!(
            bf16.describe(),
            "cpu, bf16 (AVX512-BF16): networks, and the bank search where it pays"
        );
        let f = BackendChoice::fell_back(Backend::Auto, "no driver".into());
        assert_eq!(f.used, Backend::Cpu);
        assert_eq!(f.describe(), "cpu (auto asked for: no driver)");
        let g = BackendChoice {
            requested: Backend::Cuda,
            used: Backend::Cuda,
            device: Some("GPU (sm_90)".into()),
            precision: Precision::F32,
            fallback: None,
            device_stages: vec!["bank search"],
            device_counts: None,
            device_activity: None,
        };
        assert_eq!(g.describe(), "cuda on GPU (sm_90), f32: bank search");
        let h = BackendChoice {
            fallback: Some("no ViT".into()),
            ..g
        };
        assert_eq!(
            h.describe(),
            "cuda on GPU (sm_90), f32: bank search (the rest on the CPU: no ViT)"
        );
        let sim = BackendChoice {
            requested: Backend::CudaSim,
            used: Backend::CudaSim,
            device: Some("simulated device (SIMT emulator) (sm_90)".into()),
            fallback: None,
            ..h
        };
        assert_eq!(
            sim.describe(),
            "cuda-sim on simulated device (SIMT emulator) (sm_90), f32: bank search"
        );
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("f8".parse::<Precision>().is_err());
        assert!(Precision::F32.feature_tolerance() < Precision::Bf16.feature_tolerance());
    }
}
