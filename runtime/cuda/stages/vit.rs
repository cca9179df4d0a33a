//! The engine's RGB branch on the device: the ViT of [`super::forward::DeviceVit`] (f32,
//! the parity path, or bf16, the fast path) recorded once into a CUDA graph: copy the CPU-preprocessed network
//! input from a pinned buffer, the whole forward, copy the patch features back. Per part,
//! [`RgbNetwork::forward`] fills the pinned input, replays and waits: no allocation.
//! The extractor accepts it only after checking it against the CPU ViT
//! ([`crate::pipeline::extract::Extractor::use_network`]).

use std::sync::Arc;

use super::forward::DeviceVit;
use crate::backend::Precision;
use crate::cuda::device::arena::ArenaPlan;
use crate::cuda::device::graph::{Graph, Pinned};
use crate::cuda::device::Device;
use crate::format::ModelFile;
use crate::pipeline::extract::RgbNetwork;
use crate::{DeviceError, Error, Result};

/// The ViT on the device, with its recorded graph (module doc).
pub struct DeviceRgb {
    // Field order is drop order: the graph and buffers, the model, the device last.
    /// The stage's own graph (pinned input → features → pinned output), kept besides the
    /// one-graph part: the engine's self-check at creation runs it against the CPU ViT,
    /// and an engine whose point branch stays on the CPU runs the ViT through it.
    graph: Graph,
    host_input: Pinned<f32>,
    host_features: Pinned<f32>,
    /// Owns the weights and buffers the graph reads and writes.
    _vit: DeviceVit,
    dev: Arc<Device>,
}

impl DeviceRgb {
    /// Opens device `ordinal` and uploads the ViT of `model` for `precision`.
    pub fn new(ordinal: usize, model: &ModelFile, precision: Precision) -> Result<Self> {
        Self::on_device(Arc::new(Device::new(ordinal)?), model, precision)
    }

    /// The device memory the ViT of `model` needs, per arena region (host only: the
    /// engine plans its arena from it).
    pub fn arena_needs(
        model: &ModelFile,
        precision: Precision,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let side = model.config().preprocess.image_size as usize;
        Ok(vec![(
            DeviceVit::ARENA_REGION,
            DeviceVit::arena_plan(model, side, side, precision)?,
        )])
    }

    /// The ViT on the engine's device (shared with its other device stages).
    pub fn on_device(dev: Arc<Device>, model: &ModelFile, precision: Precision) -> Result<Self> {
        let side = model.config().preprocess.image_size as usize;
        let vit = DeviceVit::new(&dev, model, side, side, precision)?;
        let (n_in, n_out) = (vit.plan().input_len(), vit.plan().features_len());
        let host_input = Pinned::<f32>::new(&dev, n_in)?;
        let mut host_features = Pinned::<f32>::new(&dev, n_out)?;
        let graph = Graph::capture(&dev, |d| {
            host_input.copy_to(d, vit.input_ptr(), n_in)?;
            // SAFETY: the model's own input and output buffers, sized by its plan.
            unsafe { vit.record_input(d, vit.input_ptr(), vit.output_ptr())? };
            host_features.copy_from(d, vit.output_ptr(), n_out)
        })?;
        Ok(DeviceRgb {
            graph,
            host_input,
            host_features,
            _vit: vit,
            dev,
        })
    }
}

impl DeviceRgb {
    /// The ViT on the device, for a stage that records it into its own graph.
    pub fn vit(&self) -> &DeviceVit {
        &self._vit
    }
}

impl RgbNetwork for DeviceRgb {
    fn forward(&mut self, input: &[f32], features: &mut [f32]) -> Result<()> {
        let (n_in, n_out) = (self.host_input.len(), self.host_features.len());
        if input.len() != n_in || features.len() != n_out {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "device ViT: {} input and {} feature values for a plan of {n_in} and {n_out}",
                input.len(),
                features.len()
            ))));
        }
        self.host_input.as_mut_slice().copy_from_slice(input);
        self.dev.bind()?;
        self.graph.replay(&self.dev)?;
        self.dev.synchronize()?;
        features.copy_from_slice(self.host_features.as_slice());
        Ok(())
    }
}
