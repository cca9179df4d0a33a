//! Feature extraction of one part, SPEC §1–5 in order: preprocess, RGB branch (ViT),
//! point branch (FPS, grouping, Point-MAE), point feature alignment, fusion.
//!
//! [`Extractor`] plans every buffer when it is created (for a declared maximum input
//! size) and allocates nothing afterwards. A modality that is missing or unusable is
//! replaced by the features of a constant pseudo input (SPEC §9), computed once here:
//! - RGB: the network input of all ones (3×S×S), through the ViT;
//! - cloud: every point at (1, 1, 1). All groups are then the same point repeated, so
//!   every group token, and after alignment every patch, carries the same feature:
//!   one Point-MAE pass over a single repeated point gives it, without FPS or grouping.

use crate::config::ModelConfig;
use crate::cpu::dense::DensePrecision;
use crate::cpu::fps::{farthest_point_sample, fps_scratch_len};
use crate::cpu::fusion::{fuse_with, fusion_scratch_len, FusionPacked, FusionWeights};
use crate::cpu::knn::{group_knn, knn_scratch_len};
use crate::cpu::pfa::{check_pfa_config, pfa_scratch_len, point_feature_align};
use crate::cpu::point_mae::{
    point_mae_forward, point_mae_forward_with, point_mae_scratch_len, PointMaePacked,
    PointMaeWeights,
};
use crate::cpu::pool::Pool;
use crate::cpu::radar_fusion;
use crate::cpu::transformer::BlockPacked;
use crate::cpu::vit::{vit_forward, vit_forward_with, vit_scratch_len, VitWeights};
use crate::format::ModelFile;
use crate::pipeline::input::{CloudView, RgbView};
use crate::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, ModalityStatus, PreprocessMode, PreprocessOutput,
};
use crate::types::{FeatureLayout, MAX_INPUT_SIDE};
use crate::{DeviceError, Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// Features of the constant pseudo inputs (computed once).
#[derive(Clone, Debug)]
struct PseudoFeatures {
    /// `rgb_grid² × rgb_dim`
    rgb: Vec<f32>,
    /// `xyz_grid² × xyz_dim`
    xyz: Vec<f32>,
}

/// The weights of the three networks, borrowed from the model file.
struct Networks<'m> {
    vit: VitWeights<'m>,
    point: PointMaeWeights<'m>,
    fusion: FusionWeights<'m>,
    /// The dense layers packed once ([`Extractor::pack_networks`]), else `None`: packed as
    /// the products go. Shared with the extractor's siblings ([`Extractor::sibling`]).
    packed: Option<Arc<PackedNetworks>>,
}

/// The three networks' dense layers packed once, in one precision.
struct PackedNetworks {
    vit: Vec<BlockPacked>,
    point: PointMaePacked,
    fusion: FusionPacked,
}

/// Wall-clock time of each stage of the last part, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    pub preprocess: f64,
    pub rgb: f64,
    pub point: f64,
    pub fusion: f64,
}

/// A network of another backend that the extractor runs instead of the CPU's
/// ([`Extractor::use_network`]).
pub enum DeviceNetwork {
    Rgb(Box<dyn RgbNetwork + Send>),
    Point(Box<dyn PointNetwork + Send>),
    Fusion(Box<dyn FusionNetwork + Send>),
}

/// max |Δ| over max |reference|: how far a device network's outputs are from the CPU's.
fn relative_difference(reference: &[f32], got: &[f32]) -> f32 {
    let peak = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = reference
        .iter()
        .zip(got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / peak.max(f32::MIN_POSITIVE)
}

/// The RGB network run by another backend (the CUDA backend's ViT): from the normalised
/// network input (`3 × S × S`, as [`PreprocessOutput::rgb_input`]) to the patch features
/// (`rgb_grid² × rgb_dim`), exactly what the CPU ViT computes.
pub trait RgbNetwork {
    fn forward(&mut self, input: &[f32], features: &mut [f32]) -> Result<()>;
}

/// Where the point branch writes one part's results.
pub struct PointOutputs<'a> {
    /// `num_groups` center indices into the points (farthest point sampling).
    pub centers: &'a mut [u32],
    /// `num_groups × group_size` member indices, each group sorted by (distance, index).
    pub groups: &'a mut [u32],
    /// `xyz_grid² × xyz_dim` patch features after the point feature alignment.
    pub xyz: &'a mut [f32],
}

/// The point branch run by another backend (the CUDA backend): FPS, kNN grouping,
/// Point-MAE and the feature alignment of SPEC §3–4, from the preprocessed valid points
/// (`n × 3`) and their pixel indices (row·S + column), exactly what the CPU computes.
pub trait PointNetwork {
    fn forward(
        &mut self,
        points: &[f32],
        n: usize,
        pixels: &[u32],
        out: PointOutputs<'_>,
    ) -> Result<()>;
}

/// Where another backend's networks write one part's features
/// ([`Extractor::run_networks_with`]).
pub struct NetworkOutputs<'a> {
    /// `rgb_grid² × rgb_dim` RGB patch features.
    pub rgb: &'a mut [f32],
    /// The point branch's centers, groups and xyz patch features.
    pub point: PointOutputs<'a>,
}

/// The fusion run by another backend (the CUDA backend): from the xyz features
/// (`xyz_grid² × xyz_dim`) and the RGB features (`rgb_grid² × rgb_dim`), a missing
/// modality's already the pseudo input's, and the part's case (which RADAR's instructions
/// depend on; UFF ignores it) to the fused features (`xyz_grid² × fused_dim`), exactly what
/// the CPU fusion computes.
pub trait FusionNetwork {
    fn forward(
        &mut self,
        xyz: &[f32],
        rgb: &[f32],
        case: radar_fusion::Case,
        fused: &mut [f32],
    ) -> Result<()>;
}

/// RADAR's fusion: its weights and planned buffers.
struct RadarFusion<'m> {
    weights: radar_fusion::RadarWeights<'m>,
    scratch: radar_fusion::RadarScratch,
}

/// Plans and runs the feature extraction of parts (module doc).
pub struct Extractor<'m> {
    cfg: ModelConfig,
    nets: Networks<'m>,
    /// RADAR's adaptive instruction fusion instead of UFF (models with `radar`).
    radar: Option<RadarFusion<'m>>,
    mode: PreprocessMode,
    max_width: usize,
    max_height: usize,
    pre: PreprocessOutput,
    pre_scratch: Vec<f32>,
    centers: Vec<u32>,
    center_xyz: Vec<f32>,
    groups: Vec<u32>,
    /// `num_groups × point feature dim`: the Point-MAE output.
    pub group_features: Vec<f32>,
    /// `rgb_grid² × rgb_dim`
    pub rgb: Vec<f32>,
    /// `xyz_grid² × xyz_dim`
    pub xyz: Vec<f32>,
    /// `xyz_grid² × (xyz_dim + rgb_dim)`
    pub fused: Vec<f32>,
    scratch: Vec<f32>,
    pseudo: PseudoFeatures,
    /// Runs the ViT instead of the CPU when set ([`Extractor::use_network`]).
    rgb_network: Option<Box<dyn RgbNetwork + Send>>,
    /// Runs the point branch instead of the CPU when set
    /// ([`Extractor::use_network`]).
    point_network: Option<Box<dyn PointNetwork + Send>>,
    /// Runs the fusion instead of the CPU when set ([`Extractor::use_network`]).
    fusion_network: Option<Box<dyn FusionNetwork + Send>>,
    /// Which modalities the last part had, and why one was not used.
    pub status: ModalityStatus,
    /// Stage times of the last part.
    pub times: StageTimes,
}

impl<'m> Extractor<'m> {
    /// Loads the networks of `model`, plans the buffers for inputs up to
    /// `max_width × max_height`, and computes the pseudo-input features.
    pub fn new(
        pool: &Pool,
        model: &'m ModelFile,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Self> {
        let mut ex = Self::plan(pool.threads(), model, max_width, max_height, mode)?;
        // Also warms every worker thread of the pool on the networks' code paths.
        ex.pseudo = ex.pseudo_features(pool)?;
        Ok(ex)
    }

    /// Another extractor of the same `model` (the one this extractor was created from),
    /// planned for the same inputs and for pools of `threads` threads: it shares the packed
    /// networks (no second copy) and takes the pseudo-input features (the same bits at
    /// every thread count), so it is ready at once. For running parts side by side (the
    /// fit's feature phase). Device networks are not carried over.
    pub fn sibling(&self, model: &'m ModelFile, threads: usize) -> Result<Self> {
        if model.config() != &self.cfg {
            return Err(Error::Config(format!(
                "{}: a sibling extractor needs the model of the first one",
                model.path().display()
            )));
        }
        let mut ex = Self::plan(threads, model, self.max_width, self.max_height, self.mode)?;
        ex.nets.packed = self.nets.packed.clone();
        ex.pseudo = self.pseudo.clone();
        Ok(ex)
    }

    /// [`Extractor::new`] without the pseudo-input features.
    fn plan(
        threads: usize,
        model: &'m ModelFile,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Self> {
        let cfg = model.config().clone();
        let (Some(vc), Some(pc), Some(fc)) = (&cfg.vit, &cfg.point, &cfg.fusion) else {
            return Err(Error::Config(format!(
                "{}: the inspection pipeline needs the ViT, Point-MAE and fusion networks; \
                 this model has vit={}, point={}, fusion={}",
                model.path().display(),
                cfg.vit.is_some(),
                cfg.point.is_some(),
                cfg.fusion.is_some()
            )));
        };
        if !(1..=MAX_INPUT_SIDE).contains(&max_width) || !(1..=MAX_INPUT_SIDE).contains(&max_height)
        {
            return Err(Error::Config(format!(
                "maximum input size {max_width}×{max_height} is not in 1..={MAX_INPUT_SIDE}"
            )));
        }
        let pre_cfg = &cfg.preprocess;
        check_pfa_config(pre_cfg)?;
        let s = pre_cfg.image_size as usize;
        if vc.image_size as usize != s {
            return Err(Error::Config(format!(
                "ViT input {} differs from the preprocessing size {s}",
                vc.image_size
            )));
        }
        let rgb_grid = vc.grid();
        let xyz_grid = pre_cfg.xyz_grid as usize;
        if !xyz_grid.is_multiple_of(rgb_grid) {
            return Err(Error::Config(format!(
                "xyz grid {xyz_grid} is not a multiple of the RGB grid {rgb_grid}"
            )));
        }
        let (rgb_dim, xyz_dim) = (vc.dim as usize, pc.feature_dim());
        if fc.rgb_dim as usize != rgb_dim || fc.xyz_dim as usize != xyz_dim {
            return Err(Error::Config(format!(
                "fusion expects rgb {} / xyz {} features, the networks give {rgb_dim} / {xyz_dim}",
                fc.rgb_dim, fc.xyz_dim
            )));
        }
        let nets = Networks {
            vit: VitWeights::load(model, vc)?,
            point: PointMaeWeights::load(model, pc)?,
            fusion: FusionWeights::load(model, fc)?,
            packed: None,
        };
        let radar = match &cfg.radar {
            Some(rc) => Some(RadarFusion {
                weights: radar_fusion::load_weights(model, fc, rc)?,
                scratch: radar_fusion::RadarScratch::new(radar_fusion::Dims::new(
                    fc,
                    rc,
                    cfg.preprocess.xyz_grid as usize,
                )),
            }),
            None => None,
        };
        let threads = threads.max(1);
        let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
        let max_points = s * s;
        let scratch_len = vit_scratch_len(vc, threads)
            .max(fps_scratch_len(max_points))
            .max(knn_scratch_len(max_points, k, threads))
            .max(point_mae_scratch_len(pc, threads))
            .max(pfa_scratch_len(pre_cfg, m, max_points, threads))
            .max(fusion_scratch_len(fc, rgb_grid, xyz_grid));
        Ok(Extractor {
            mode,
            max_width,
            max_height,
            pre: PreprocessOutput::for_point_branch(pre_cfg, pc),
            pre_scratch: vec![0.0; preprocess_scratch_len(pre_cfg, max_width, max_height)],
            centers: vec![0; m],
            center_xyz: vec![0.0; 3 * m],
            groups: vec![0; m * k],
            group_features: vec![0.0; m * xyz_dim],
            rgb: vec![0.0; rgb_grid * rgb_grid * rgb_dim],
            xyz: vec![0.0; xyz_grid * xyz_grid * xyz_dim],
            fused: vec![0.0; xyz_grid * xyz_grid * (xyz_dim + rgb_dim)],
            scratch: vec![0.0; scratch_len],
            rgb_network: None,
            point_network: None,
            fusion_network: None,
            pseudo: PseudoFeatures {
                rgb: Vec::new(),
                xyz: Vec::new(),
            },
            status: ModalityStatus {
                rgb: None,
                cloud: None,
            },
            times: StageTimes::default(),
            nets,
            radar,
            cfg,
        })
    }

    /// Packs the CPU networks' dense layers once (the ViT's and Point-MAE's blocks, the
    /// group encoder's conv2–conv4, UFF's MLPs; as much memory again as those weights)
    /// in `precision`: f32 gives the same bits as packing them in every product, without
    /// that work; bf16 is the `--precision bf16` path (error bound in `cpu::gemm_bf16`).
    /// The pseudo-input features stay those of the f32 path computed at creation.
    /// Returns false, packing nothing, for bf16 where the CPU has no AVX512-BF16.
    pub fn pack_networks(&mut self, precision: DensePrecision) -> bool {
        // `new` refuses a model without these; without one there is nothing to pack.
        let (Some(vc), Some(pc)) = (self.cfg.vit.as_ref(), self.cfg.point.as_ref()) else {
            return false;
        };
        let nets = &self.nets;
        let packed = (|| {
            Some(PackedNetworks {
                vit: nets.vit.packed(vc, precision)?,
                point: PointMaePacked::new(pc, &nets.point, precision)?,
                fusion: FusionPacked::new(&nets.fusion, precision)?,
            })
        })();
        let done = packed.is_some();
        if done {
            self.nets.packed = packed.map(Arc::new);
        }
        done
    }

    fn pseudo_features(&mut self, pool: &Pool) -> Result<PseudoFeatures> {
        let vc = self.cfg.vit.as_ref().expect("checked in new");
        let pc = self.cfg.point.as_ref().expect("checked in new");
        let ones = vec![1.0f32; self.pre.rgb_input.len()];
        let mut rgb = vec![0.0; self.rgb.len()];
        vit_forward(pool, vc, &self.nets.vit, &ones, &mut rgb, &mut self.scratch)?;
        let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
        let one_point = [1.0f32; 3];
        let zeros_m = vec![0u32; m];
        let zeros_mk = vec![0u32; m * k];
        point_mae_forward(
            pool,
            pc,
            &self.nets.point,
            &one_point,
            1,
            &zeros_m,
            &zeros_mk,
            &mut self.group_features,
            &mut self.scratch,
        );
        let f = pc.feature_dim();
        let token = self.group_features[..f].to_vec();
        let patches = self.xyz.len() / f;
        let xyz = token.repeat(patches);
        Ok(PseudoFeatures { rgb, xyz })
    }

    /// Runs `network`'s stage on it from now on, after its check against the CPU
    /// ([`Extractor::check_rgb_network`], [`Extractor::check_point_network`],
    /// [`Extractor::check_fusion_network`]). Returns the relative difference found (max
    /// |Δ| over max |CPU|); a network that fails or differs by more than `tolerance` is
    /// refused and the CPU stays in use.
    pub fn use_network(
        &mut self,
        pool: &Pool,
        mut network: DeviceNetwork,
        tolerance: f32,
    ) -> Result<f32> {
        let rel = match &mut network {
            DeviceNetwork::Rgb(n) => self.check_rgb_network(n.as_mut(), tolerance),
            DeviceNetwork::Point(n) => self.check_point_network(pool, n.as_mut(), tolerance),
            DeviceNetwork::Fusion(n) => self.check_fusion_network(pool, n.as_mut(), tolerance),
        }?;
        match network {
            DeviceNetwork::Rgb(n) => self.rgb_network = Some(n),
            DeviceNetwork::Point(n) => self.point_network = Some(n),
            DeviceNetwork::Fusion(n) => self.fusion_network = Some(n),
        }
        Ok(rel)
    }

    /// Checks an RGB network against the CPU ViT on the pseudo input (whose CPU features
    /// were computed at creation): its relative difference, refused above `tolerance`.
    /// The network is not kept ([`Extractor::use_network`] keeps it; the CUDA backend's
    /// one-graph part runs it in its own way).
    pub fn check_rgb_network(
        &mut self,
        network: &mut (dyn RgbNetwork + Send),
        tolerance: f32,
    ) -> Result<f32> {
        let ones = vec![1.0f32; self.pre.rgb_input.len()];
        let mut got = vec![0.0f32; self.rgb.len()];
        network.forward(&ones, &mut got)?;
        if let Some(i) = got.iter().position(|v| !v.is_finite()) {
            return Err(Error::Device(DeviceError::SelfCheck(format!(
                "self-check of the RGB network failed: feature {i} is {} (NaN or infinite)",
                got[i]
            ))));
        }
        let rel = relative_difference(&self.pseudo.rgb, &got);
        if rel > tolerance {
            return Err(Error::Device(DeviceError::SelfCheck(format!(
                "self-check of the RGB network failed: its features differ from the CPU ViT's \
                 by {rel:.2e} of their peak (tolerance {tolerance:.0e})"
            ))));
        }
        Ok(rel)
    }

    /// Checks a point network against the CPU on a probe cloud (a smooth surface over the
    /// image grid): the same centers and groups, and xyz features within `tolerance` of
    /// their peak. Returns the relative difference found. Not kept (see
    /// [`Extractor::check_rgb_network`]).
    pub fn check_point_network(
        &mut self,
        pool: &Pool,
        network: &mut (dyn PointNetwork + Send),
        tolerance: f32,
    ) -> Result<f32> {
        self.write_probe_cloud();
        self.point_branch(pool);
        let n = self.pre.n_points;
        let (mut centers, mut groups) = (
            vec![0u32; self.centers.len()],
            vec![0u32; self.groups.len()],
        );
        let mut xyz = vec![0f32; self.xyz.len()];
        let outputs = PointOutputs {
            centers: &mut centers,
            groups: &mut groups,
            xyz: &mut xyz,
        };
        let ran = network.forward(
            &self.pre.points[..3 * n],
            n,
            &self.pre.point_pixels[..n],
            outputs,
        );
        self.pre.n_points = 0;
        ran?;
        let fail = |what: String| {
            Err(Error::Device(DeviceError::SelfCheck(format!(
                "self-check of the point network failed: {what}"
            ))))
        };
        if let Some(i) = (0..centers.len()).find(|&i| centers[i] != self.centers[i]) {
            return fail(format!(
                "center {i} is point {}, the CPU's is {}",
                centers[i], self.centers[i]
            ));
        }
        if let Some(i) = (0..groups.len()).find(|&i| groups[i] != self.groups[i]) {
            return fail(format!(
                "group member {i} is point {}, the CPU's is {}",
                groups[i], self.groups[i]
            ));
        }
        if let Some(i) = xyz.iter().position(|v| !v.is_finite()) {
            return fail(format!("xyz feature {i} is {}", xyz[i]));
        }
        let rel = relative_difference(&self.xyz, &xyz);
        if rel > tolerance {
            return fail(format!(
                "its xyz features differ from the CPU's by {rel:.2e} of their peak \
                 (tolerance {tolerance:.0e})"
            ));
        }
        Ok(rel)
    }

    /// Checks a fusion network against the CPU fusion on probe features (the pseudo
    /// features plus a smooth pattern, so that every row differs) in every case the
    /// model's fusion distinguishes (RADAR: the three; UFF: one). Returns the largest
    /// relative difference found. Not kept (see [`Extractor::check_rgb_network`]).
    pub fn check_fusion_network(
        &mut self,
        pool: &Pool,
        network: &mut (dyn FusionNetwork + Send),
        tolerance: f32,
    ) -> Result<f32> {
        let probe = |base: &[f32], freq: f32| -> Vec<f32> {
            base.iter()
                .enumerate()
                .map(|(i, v)| v + 0.5 * (freq * i as f32).sin())
                .collect()
        };
        self.xyz = probe(&self.pseudo.xyz, 0.37);
        self.rgb = probe(&self.pseudo.rgb, 0.61);
        let cases: &[radar_fusion::Case] = if self.radar.is_some() {
            &[
                radar_fusion::Case::Complete,
                radar_fusion::Case::RgbOnly,
                radar_fusion::Case::CloudOnly,
            ]
        } else {
            &[radar_fusion::Case::Complete]
        };
        let fail = |what: String| {
            Err(Error::Device(DeviceError::SelfCheck(format!(
                "self-check of the fusion network failed: {what}"
            ))))
        };
        let mut got = vec![0f32; self.fused.len()];
        let mut worst_rel = 0f32;
        for &case in cases {
            self.fuse_on_cpu(pool, case);
            network.forward(&self.xyz, &self.rgb, case, &mut got)?;
            if let Some(i) = got.iter().position(|v| !v.is_finite()) {
                return fail(format!("fused feature {i} is {} ({case:?})", got[i]));
            }
            let rel = relative_difference(&self.fused, &got);
            if rel > tolerance {
                return fail(format!(
                    "its fused features ({case:?}) differ from the CPU's by {rel:.2e} of their \
                     peak (tolerance {tolerance:.0e})"
                ));
            }
            worst_rel = worst_rel.max(rel);
        }
        Ok(worst_rel)
    }

    /// Writes the probe cloud of [`Extractor::check_point_network`] into the preprocessed
    /// points: a smooth, non-planar surface over a disk of the S×S grid (the whole grid
    /// when the disk holds too few points for the branch), in pixel order.
    fn write_probe_cloud(&mut self) {
        let s = self.pre.size;
        let need = self.pre.min_points.max(1);
        // The disk (radius 0.9 of the half side) covers about 64% of the grid.
        let disk = 0.6 * (s * s) as f32 >= 2.0 * need as f32;
        let mut n = 0;
        for r in 0..s {
            for c in 0..s {
                let x = (c as f32 + 0.5) / s as f32 * 2.0 - 1.0;
                let y = (r as f32 + 0.5) / s as f32 * 2.0 - 1.0;
                if disk && x * x + y * y > 0.81 {
                    continue;
                }
                let z =
                    0.1 * (3.0 * x).sin() * (2.0 * y).cos() + 0.05 * (-8.0 * (x * x + y * y)).exp();
                self.pre.points[3 * n..3 * n + 3].copy_from_slice(&[x, y, 1.0 + z]);
                self.pre.point_pixels[n] = (r * s + c) as u32;
                n += 1;
            }
        }
        self.pre.n_points = n;
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The declared maximum input size.
    pub fn max_input(&self) -> (usize, usize) {
        (self.max_width, self.max_height)
    }

    /// Shapes of the features this extractor writes.
    pub fn layout(&self) -> FeatureLayout {
        let vc = self.cfg.vit.as_ref().expect("checked in new");
        let pc = self.cfg.point.as_ref().expect("checked in new");
        FeatureLayout {
            rgb_grid: vc.grid(),
            rgb_dim: vc.dim as usize,
            xyz_grid: self.cfg.preprocess.xyz_grid as usize,
            xyz_dim: pc.feature_dim(),
            fused_dim: pc.feature_dim() + vc.dim as usize,
        }
    }

    /// The preprocessed part of the last [`Extractor::run`].
    pub fn preprocessed(&self) -> &PreprocessOutput {
        &self.pre
    }

    /// The same, for a backend that preprocessed the part itself (pictures).
    pub fn preprocessed_mut(&mut self) -> &mut PreprocessOutput {
        &mut self.pre
    }

    /// Member indices (into the preprocessed points) of the last part's groups,
    /// `num_groups × group_size`, each group sorted by distance to its center.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// Center indices (into the preprocessed points) of the last part's groups.
    pub fn centers(&self) -> &[u32] {
        &self.centers
    }

    /// The pseudo inputs' features (RGB `rgb_grid² × rgb_dim`, xyz `xyz_grid² × xyz_dim`),
    /// computed once at creation.
    pub fn pseudo_input_features(&self) -> (&[f32], &[f32]) {
        (&self.pseudo.rgb, &self.pseudo.xyz)
    }

    /// The buffers of the last part's features, for another backend that computed them
    /// (and the fused features): see [`Extractor::run_networks_with`].
    pub fn outputs_mut(&mut self) -> (NetworkOutputs<'_>, &mut [f32]) {
        let out = NetworkOutputs {
            rgb: &mut self.rgb,
            point: PointOutputs {
                centers: &mut self.centers,
                groups: &mut self.groups,
                xyz: &mut self.xyz,
            },
        };
        (out, &mut self.fused)
    }

    /// Runs both networks of the last preprocessed part ([`Extractor::preprocess_part`])
    /// through `networks`, another backend's: it gets the preprocessed part and its status
    /// and writes the RGB and xyz features (the pseudo inputs' for an unusable modality),
    /// the centers and the groups. Their time is counted under `times.rgb` (the two
    /// branches run at the same time there). No allocation.
    pub fn run_networks_with(
        &mut self,
        networks: impl FnOnce(&PreprocessOutput, ModalityStatus, NetworkOutputs<'_>) -> Result<()>,
    ) -> Result<()> {
        let t0 = Instant::now();
        let out = NetworkOutputs {
            rgb: &mut self.rgb,
            point: PointOutputs {
                centers: &mut self.centers,
                groups: &mut self.groups,
                xyz: &mut self.xyz,
            },
        };
        networks(&self.pre, self.status, out)?;
        self.times.rgb = t0.elapsed().as_secs_f64();
        self.times.point = 0.0;
        Ok(())
    }

    /// Features of one part into [`Extractor::rgb`], [`Extractor::xyz`] and
    /// [`Extractor::fused`]. A missing or unusable modality gets the pseudo-input
    /// features; the returned status says which. Both unusable is not an error here
    /// (the features are then all pseudo); the engine refuses such parts.
    /// No allocation.
    pub fn run(
        &mut self,
        pool: &Pool,
        rgb: Option<RgbView<'_>>,
        cloud: Option<CloudView<'_>>,
    ) -> Result<ModalityStatus> {
        let status = self.preprocess_part(rgb, cloud)?;
        let t1 = Instant::now();
        let vc = self.cfg.vit.as_ref().expect("checked in new");
        if let (true, Some(net)) = (status.rgb_usable(), self.rgb_network.as_mut()) {
            net.forward(&self.pre.rgb_input, &mut self.rgb)?;
        } else if status.rgb_usable() {
            vit_forward_with(
                pool,
                vc,
                &self.nets.vit,
                self.nets.packed.as_ref().map_or(&[], |p| &p.vit),
                &self.pre.rgb_input,
                &mut self.rgb,
                &mut self.scratch,
            )?;
        } else {
            self.rgb.copy_from_slice(&self.pseudo.rgb);
        }
        let t2 = Instant::now();
        if let (true, Some(net)) = (status.cloud_usable(), self.point_network.as_mut()) {
            let n = self.pre.n_points;
            let outputs = PointOutputs {
                centers: &mut self.centers,
                groups: &mut self.groups,
                xyz: &mut self.xyz,
            };
            net.forward(
                &self.pre.points[..3 * n],
                n,
                &self.pre.point_pixels[..n],
                outputs,
            )?;
        } else if status.cloud_usable() {
            self.point_branch(pool);
        } else {
            self.xyz.copy_from_slice(&self.pseudo.xyz);
        }
        let t3 = Instant::now();
        self.times.rgb = (t2 - t1).as_secs_f64();
        self.times.point = (t3 - t2).as_secs_f64();
        self.fuse_part(pool)?;
        Ok(status)
    }

    /// The first step of [`Extractor::run`]: checks the input sizes, preprocesses the part
    /// and returns (and keeps) its status. No allocation.
    pub fn preprocess_part(
        &mut self,
        rgb: Option<RgbView<'_>>,
        cloud: Option<CloudView<'_>>,
    ) -> Result<ModalityStatus> {
        self.check_input_sizes(rgb.as_ref(), cloud.as_ref())?;
        let t0 = Instant::now();
        let status = preprocess(
            &self.cfg.preprocess,
            rgb,
            cloud,
            self.mode,
            &mut self.pre,
            &mut self.pre_scratch,
        )?;
        self.status = status;
        self.times.preprocess = t0.elapsed().as_secs_f64();
        Ok(status)
    }

    /// Refuses inputs larger than the engine was planned for (the first check of
    /// [`Extractor::preprocess_part`], also for a backend that preprocesses itself).
    pub fn check_input_sizes(
        &self,
        rgb: Option<&RgbView<'_>>,
        cloud: Option<&CloudView<'_>>,
    ) -> Result<()> {
        for (w, h) in [
            rgb.map(|v| (v.width, v.height)),
            cloud.map(|v| (v.width, v.height)),
        ]
        .into_iter()
        .flatten()
        {
            if w > self.max_width || h > self.max_height {
                return Err(Error::Input(format!(
                    "input of {w}×{h} is larger than the {}×{} the engine was planned for",
                    self.max_width, self.max_height
                )));
            }
        }
        Ok(())
    }

    /// The last step of [`Extractor::run`]: fuses the RGB and xyz features of the part
    /// (UFF, or RADAR with the instruction of its case) into [`Extractor::fused`], on the
    /// fusion network when one is set ([`Extractor::use_network`]).
    pub fn fuse_part(&mut self, pool: &Pool) -> Result<()> {
        let t0 = Instant::now();
        let status = self.status;
        // The case of the part (RADAR's instruction); a missing modality's features are
        // already the pseudo input's.
        let case = match (status.rgb_usable(), status.cloud_usable()) {
            (true, false) => radar_fusion::Case::RgbOnly,
            (false, true) => radar_fusion::Case::CloudOnly,
            _ => radar_fusion::Case::Complete,
        };
        if let Some(net) = self.fusion_network.as_mut() {
            net.forward(&self.xyz, &self.rgb, case, &mut self.fused)?;
        } else {
            self.fuse_on_cpu(pool, case);
        }
        self.times.fusion = t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// [`Extractor::fused`] from [`Extractor::xyz`] and [`Extractor::rgb`] on the CPU:
    /// RADAR's fusion with the instruction of `case` when the model has it, else UFF.
    fn fuse_on_cpu(&mut self, pool: &Pool, case: radar_fusion::Case) {
        let rgb_grid = self.cfg.vit.as_ref().expect("checked in new").grid();
        if let Some(r) = self.radar.as_mut() {
            r.scratch.fuse(
                pool,
                &r.weights,
                &self.xyz,
                &self.rgb,
                case,
                &mut self.fused,
            );
        } else {
            fuse_with(
                pool,
                &self.nets.fusion,
                self.nets.packed.as_ref().map(|p| &p.fusion),
                &self.rgb,
                rgb_grid,
                &self.xyz,
                self.cfg.preprocess.xyz_grid as usize,
                &mut self.fused,
                &mut self.scratch,
            );
        }
    }

    fn point_branch(&mut self, pool: &Pool) {
        let pc = self.cfg.point.as_ref().expect("checked in new");
        let n = self.pre.n_points;
        let (m, k) = (pc.num_groups as usize, pc.group_size as usize);
        let points = &self.pre.points;
        farthest_point_sample(points, n, m, &mut self.centers, &mut self.scratch);
        group_knn(
            pool,
            points,
            n,
            &self.centers,
            k,
            &mut self.groups,
            &mut self.scratch,
        );
        for (c, &i) in self.center_xyz.chunks_exact_mut(3).zip(&self.centers) {
            let i = i as usize;
            c.copy_from_slice(&points[3 * i..3 * i + 3]);
        }
        point_mae_forward_with(
            pool,
            pc,
            &self.nets.point,
            self.nets.packed.as_ref().map(|p| &p.point),
            points,
            n,
            &self.centers,
            &self.groups,
            &mut self.group_features,
            &mut self.scratch,
        );
        point_feature_align(
            pool,
            &self.cfg.preprocess,
            points,
            n,
            &self.pre.point_pixels,
            &self.center_xyz,
            &self.group_features,
            pc.feature_dim(),
            &mut self.xyz,
            &mut self.scratch,
        );
    }
}
