//! The engine's point branch on the device: everything
//! `Extractor::point_branch` computes on the CPU (SPEC §3–4), from the preprocessed valid
//! points and their pixels to the centers, the groups and the xyz patch features, as one
//! [`PointNetwork`].
//!
//! Per part (nothing allocated):
//! 1. host: the points are copied into a pinned buffer, the point count into another, and
//!    the pixel → point map (`S²` entries, −1 where no point) is built in a third from the
//!    points' pixel indices (the alignment kernel reads the map, not the indices);
//! 2. device, on the stream: upload of the `3n` point coordinates, then the recorded work —
//!    upload of the count and the pixel map; FPS ([`PointKernels::fps`]: center indices and
//!    coordinates); kNN grouping ([`PointKernels::knn`]: member indices and coordinates
//!    relative to the center); the group encoder ([`PointKernels::encoder`], f32, weights
//!    transposed at creation; under bf16 [`DeviceGroupEncoderBf16`]: bf16 tensor-core
//!    GEMMs) writing its tokens straight into the Point-MAE residual stream
//!    ([`DevicePointMae::residual_ptr`]: no copy); the Point-MAE transformer
//!    ([`DevicePointMae::record`], in the branch's precision) on the tokens and the center
//!    coordinates; the 3-NN interpolation weights of every point ([`PointKernels::nn3`])
//!    and the sparse projection onto the patch grid ([`PointKernels::project`]); downloads of the
//!    centers, the groups and the xyz features into pinned buffers;
//! 3. host: wait, copy the results out.
//!
//! Every kernel reads the point count from device memory, so the recorded part of step 2
//! does not depend on the part: it is captured once into a CUDA graph at creation and
//! replayed ([`BranchOptions::graph`]; direct launches otherwise, same bits). Only the
//! point upload, whose size changes, is issued directly before each replay.
//!
//! Creation refuses, before touching the device, models the kernels cannot run
//! ([`BranchSizes::new`]): no point branch, a head dimension other than 32 or 64, encoder widths
//! or group sizes that are not multiples of 8, an alignment grid that does not fit the map,
//! more groups than the 3-NN kernel's shared memory holds, more groups or a larger group
//! than a part can have points.

use std::sync::Arc;

use super::forward::{DevicePointMae, EncoderDims};
use super::group_encoder::{DeviceGroupEncoderBf16, EncoderBf16Sizes};
use crate::backend::Precision;
use crate::config::ModelConfig;
use crate::cpu::pfa::check_pfa_config;
use crate::cpu::point_mae::PointMaeWeights;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::graph::{Graph, Pinned};
use crate::cuda::device::Device;
use crate::cuda::ops::fps::FpsKernel;
use crate::cuda::ops::knn::KnnKernel;
use crate::cuda::ops::point::{PointKernels, PointOptions, PointPlan};
use crate::format::ModelFile;
use crate::pipeline::extract::{PointNetwork, PointOutputs};
use crate::{Error, Result};

/// Dynamic shared memory the 3-NN kernel may use without an opt-in (it holds the centers,
/// 12 bytes each, and [`PointKernels`] does not raise its limit).
pub const NN3_SMEM_LIMIT: usize = 48 * 1024;

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("CUDA point branch: {msg}"))
}

fn input_err(msg: impl std::fmt::Display) -> Error {
    Error::Input(format!("CUDA point branch: {msg}"))
}

/// The sizes of one model's point branch, validated for the device kernels (host only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchSizes {
    /// S: side of the resized map (`image_size`); a part has at most S² points.
    pub side: usize,
    /// G: side of the xyz patch grid.
    pub grid: usize,
    /// M: groups (FPS centers).
    pub groups: usize,
    /// K: points per group.
    pub group_size: usize,
    /// Group encoder widths c1, c2, c3 and token width d.
    pub widths: [usize; 4],
    /// Width of one group feature / xyz patch feature (`dim × out_layers`).
    pub feature_dim: usize,
}

impl BranchSizes {
    /// The sizes of `cfg`'s point branch, or a `Config` error naming what the device
    /// kernels cannot run.
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        let pc = cfg.point.as_ref().ok_or_else(|| {
            cfg_err(format!(
                "model '{}' has no point branch (Point-MAE)",
                cfg.name
            ))
        })?;
        check_pfa_config(&cfg.preprocess)?;
        // Head dimension 64, token count and GEMM shapes of the transformer.
        EncoderDims::point(pc)?;
        let side = cfg.preprocess.image_size as usize;
        let grid = cfg.preprocess.xyz_grid as usize;
        // Group size and encoder widths multiples of 8, map and grid sizes.
        let plan = PointPlan::new(pc, side, grid)?;
        let s = BranchSizes {
            side,
            grid,
            groups: plan.groups,
            group_size: plan.group_size,
            widths: plan.widths,
            feature_dim: pc.feature_dim(),
        };
        let max_points = s.max_points();
        if s.groups > max_points || s.group_size > max_points {
            return Err(cfg_err(format!(
                "{} groups of {} points, but a part has at most {side}×{side} = {max_points} points",
                s.groups, s.group_size
            )));
        }
        if 12 * s.groups > NN3_SMEM_LIMIT {
            return Err(cfg_err(format!(
                "{} groups: the 3-NN kernel holds at most {} centers",
                s.groups,
                NN3_SMEM_LIMIT / 12
            )));
        }
        // Kernels index with 32-bit integers.
        let largest = [
            3 * max_points,
            3 * s.groups * s.group_size,
            s.groups * s.feature_dim,
            s.xyz_len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if largest > i32::MAX as usize {
            return Err(cfg_err(format!(
                "a buffer of {largest} values is beyond the kernels' 32-bit indices"
            )));
        }
        Ok(s)
    }

    /// The sizes of the bf16 group encoder.
    pub fn encoder_bf16(&self) -> Result<EncoderBf16Sizes> {
        EncoderBf16Sizes::new(self.groups, self.group_size, self.widths)
    }

    /// Most points a part can have (S²).
    pub fn max_points(&self) -> usize {
        self.side * self.side
    }
    /// Fewest points the branch accepts: max(M, K), as the CPU's FPS and grouping need.
    pub fn min_points(&self) -> usize {
        self.groups.max(self.group_size).max(1)
    }
    /// Length of [`PointOutputs::centers`] (M).
    pub fn centers_len(&self) -> usize {
        self.groups
    }
    /// Length of [`PointOutputs::groups`] (M × K).
    pub fn groups_len(&self) -> usize {
        self.groups * self.group_size
    }
    /// Length of [`PointOutputs::xyz`] (G² × feature width).
    pub fn xyz_len(&self) -> usize {
        self.grid * self.grid * self.feature_dim
    }

    /// Checks one call's arguments: `n` in `min_points..=max_points`, at least `3n` point
    /// values and `n` pixels (longer buffers are fine: only their start is read), and
    /// output buffers of exactly the planned lengths.
    pub fn check_call(
        &self,
        points_len: usize,
        n: usize,
        pixels_len: usize,
        out: &PointOutputs<'_>,
    ) -> Result<()> {
        let (lo, hi) = (self.min_points(), self.max_points());
        if n < lo {
            return Err(input_err(format!(
                "{n} points; at least {lo} needed ({} groups of {} points)",
                self.groups, self.group_size
            )));
        }
        if n > hi {
            return Err(input_err(format!(
                "{n} points; a {s}×{s} map holds at most {hi}",
                s = self.side
            )));
        }
        if points_len < 3 * n || pixels_len < n {
            return Err(input_err(format!(
                "{n} points given with {points_len} coordinates and {pixels_len} pixel indices \
                 ({} and {n} needed)",
                3 * n
            )));
        }
        for (what, got, want) in [
            ("center", out.centers.len(), self.centers_len()),
            ("group member", out.groups.len(), self.groups_len()),
            ("xyz feature", out.xyz.len(), self.xyz_len()),
        ] {
            if got != want {
                return Err(input_err(format!(
                    "output buffer of {got} {what} values, {want} expected"
                )));
            }
        }
        Ok(())
    }

    /// Fills `map` (S² entries) with the index of the point at each pixel, −1 where there
    /// is none, from the points' pixel indices. A pixel outside the map or shared by two
    /// points is an error (the preprocessing never produces either).
    pub fn fill_pixel_map(&self, pixels: &[u32], map: &mut [i32]) -> Result<()> {
        let s2 = self.max_points();
        if map.len() != s2 || pixels.len() > s2 {
            return Err(input_err(format!(
                "pixel map of {} entries for {} pixels; {s2} entries and at most {s2} pixels",
                map.len(),
                pixels.len()
            )));
        }
        map.fill(-1);
        for (i, &q) in pixels.iter().enumerate() {
            let Some(slot) = map.get_mut(q as usize) else {
                return Err(input_err(format!(
                    "point {i} at pixel {q}, outside the {s}×{s} map",
                    s = self.side
                )));
            };
            if *slot >= 0 {
                return Err(input_err(format!(
                    "points {} and {i} at the same pixel {q}",
                    *slot
                )));
            }
            *slot = i as i32;
        }
        Ok(())
    }
}

/// The per-part device buffers of the branch, in one arena.
#[derive(Clone, Copy, Debug)]
pub struct BranchSlots {
    /// S² × 3 point coordinates (the first `n` used).
    pub points: Slot<f32>,
    /// The point count (1).
    pub count: Slot<i32>,
    /// S² pixel → point map.
    pub pixel_map: Slot<i32>,
    /// S² float4: shared-memory FPS's work buffer on the single-block path.
    pub fps_work: Slot<[f32; 4]>,
    /// M center indices.
    pub centers: Slot<u32>,
    /// M × 3 center coordinates.
    pub center_xyz: Slot<f32>,
    /// M × K member indices.
    pub groups: Slot<u32>,
    /// M × K × 3 member coordinates relative to their center.
    pub group_rel: Slot<f32>,
    /// Group encoder weights, transposed (`[in][out]`), and biases: w1 b1 … w4 b4.
    pub encoder: [Slot<f32>; 8],
    /// M × feature width: the Point-MAE output.
    pub group_features: Slot<f32>,
    /// S² × 3 nearest centers of every point, and their weights.
    pub nn_idx: Slot<i32>,
    pub nn_w: Slot<f32>,
    /// G² × feature width: the xyz patch features.
    pub xyz: Slot<f32>,
}

impl BranchSlots {
    pub fn plan(s: &BranchSizes, arena: &mut ArenaPlan) -> Self {
        let np = s.max_points();
        let (m, k) = (s.groups, s.group_size);
        let [c1, c2, c3, d] = s.widths;
        BranchSlots {
            points: arena.add(3 * np),
            count: arena.add(1),
            pixel_map: arena.add(np),
            fps_work: arena.add(np),
            centers: arena.add(m),
            center_xyz: arena.add(3 * m),
            groups: arena.add(m * k),
            group_rel: arena.add(3 * m * k),
            encoder: [
                arena.add(3 * c1),
                arena.add(c1),
                arena.add(c1 * c2),
                arena.add(c2),
                arena.add(2 * c2 * c3),
                arena.add(c3),
                arena.add(c3 * d),
                arena.add(d),
            ],
            group_features: arena.add(m * s.feature_dim),
            nn_idx: arena.add(3 * np),
            nn_w: arena.add(3 * np),
            xyz: arena.add(s.xyz_len()),
        }
    }

    /// (offset, bytes) of every slot.
    pub fn spans(&self) -> Vec<(usize, usize)> {
        let mut v = vec![
            (self.points.offset, self.points.bytes()),
            (self.count.offset, self.count.bytes()),
            (self.pixel_map.offset, self.pixel_map.bytes()),
            (self.fps_work.offset, self.fps_work.bytes()),
            (self.centers.offset, self.centers.bytes()),
            (self.center_xyz.offset, self.center_xyz.bytes()),
            (self.groups.offset, self.groups.bytes()),
            (self.group_rel.offset, self.group_rel.bytes()),
            (self.group_features.offset, self.group_features.bytes()),
            (self.nn_idx.offset, self.nn_idx.bytes()),
            (self.nn_w.offset, self.nn_w.bytes()),
            (self.xyz.offset, self.xyz.bytes()),
        ];
        v.extend(self.encoder.iter().map(|s| (s.offset, s.bytes())));
        v
    }

    fn resolve(&self, a: &Arena) -> DevBufs {
        DevBufs {
            points: a.ptr(self.points),
            count: a.ptr(self.count),
            pixel_map: a.ptr(self.pixel_map),
            fps_work: a.ptr(self.fps_work),
            centers: a.ptr(self.centers),
            center_xyz: a.ptr(self.center_xyz),
            groups: a.ptr(self.groups),
            group_rel: a.ptr(self.group_rel),
            encoder: self.encoder.map(|s| a.ptr(s)),
            group_features: a.ptr(self.group_features),
            nn_idx: a.ptr(self.nn_idx),
            nn_w: a.ptr(self.nn_w),
            xyz: a.ptr(self.xyz),
        }
    }
}

/// The slots as device pointers.
#[derive(Clone, Copy, Debug)]
struct DevBufs {
    points: DevPtr<f32>,
    count: DevPtr<i32>,
    pixel_map: DevPtr<i32>,
    fps_work: DevPtr<[f32; 4]>,
    centers: DevPtr<u32>,
    center_xyz: DevPtr<f32>,
    groups: DevPtr<u32>,
    group_rel: DevPtr<f32>,
    encoder: [DevPtr<f32>; 8],
    group_features: DevPtr<f32>,
    nn_idx: DevPtr<i32>,
    nn_w: DevPtr<f32>,
    xyz: DevPtr<f32>,
}

/// `w` (`rows × cols`, row-major) transposed.
fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// The group encoder's tensors as the kernel reads them: w1ᵀ b1 w2ᵀ b2 w3ᵀ b3 w4ᵀ b4
/// (weights `[in][out]`), from PyTorch's `[out][in]`.
pub fn encoder_tensors(s: &BranchSizes, w: &PointMaeWeights<'_>) -> Result<[Vec<f32>; 8]> {
    let [c1, c2, c3, d] = s.widths;
    let shapes = [(c1, 3), (c2, c1), (c3, 2 * c2), (d, c3)];
    let mut out: [Vec<f32>; 8] = Default::default();
    for (i, ((wt, b), (o, inp))) in w.conv.iter().zip(shapes).enumerate() {
        if wt.len() != o * inp || b.len() != o {
            return Err(cfg_err(format!(
                "group encoder conv{}: {} weights and {} biases for {o}×{inp}",
                i + 1,
                wt.len(),
                b.len()
            )));
        }
        out[2 * i] = transposed(wt, o, inp);
        out[2 * i + 1] = b.to_vec();
    }
    Ok(out)
}

/// Choices for [`DevicePointBranch::with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchOptions {
    /// FPS and kNN kernel choices (default: the device's).
    pub kernels: PointOptions,
    /// Replay the per-part work as a CUDA graph (default) rather than launching it.
    pub graph: bool,
    /// Arithmetic of Point-MAE and of the group encoder (bf16: [`DeviceGroupEncoderBf16`]);
    /// FPS, kNN and the alignment are f32.
    pub precision: Precision,
}

impl Default for BranchOptions {
    fn default() -> Self {
        BranchOptions {
            kernels: PointOptions::default(),
            graph: true,
            precision: Precision::F32,
        }
    }
}

/// Pinned host buffers: inputs read and outputs written by the recorded copies.
struct HostBufs {
    points: Pinned<f32>,
    count: Pinned<i32>,
    pixel_map: Pinned<i32>,
    centers: Pinned<u32>,
    groups: Pinned<u32>,
    xyz: Pinned<f32>,
}

/// Enqueues the per-part work after the point upload (module doc, step 2).
///
/// # Safety
/// `b` must be the slots of an arena planned from `s` on `dev`; `k` and `mae` made on `dev`
/// for the same model; `host` sized from `s`.
unsafe fn record(
    dev: &Device,
    k: &PointKernels,
    mae: &DevicePointMae,
    enc_bf16: Option<&DeviceGroupEncoderBf16>,
    b: &DevBufs,
    host: &mut HostBufs,
    s: &BranchSizes,
) -> Result<()> {
    host.count.copy_to(dev, b.count, 1)?;
    host.pixel_map.copy_to(dev, b.pixel_map, s.max_points())?;
    record_device(dev, k, mae, enc_bf16, b, s)?;
    host.centers.copy_from(dev, b.centers, s.centers_len())?;
    host.groups.copy_from(dev, b.groups, s.groups_len())?;
    host.xyz.copy_from(dev, b.xyz, s.xyz_len())
}

/// The device work of one part, from the points, count and pixel map in the branch's
/// device buffers to its centers, groups and xyz features there.
///
/// # Safety
/// As [`record`].
unsafe fn record_device(
    dev: &Device,
    k: &PointKernels,
    mae: &DevicePointMae,
    enc_bf16: Option<&DeviceGroupEncoderBf16>,
    b: &DevBufs,
    s: &BranchSizes,
) -> Result<()> {
    k.fps(dev, b.points, b.count, b.fps_work, b.centers, b.center_xyz)?;
    k.knn(dev, b.points, b.count, b.center_xyz, b.groups, b.group_rel)?;
    let tokens = mae.residual_ptr();
    match enc_bf16 {
        Some(e) => e.record(dev, b.group_rel, tokens)?,
        None => k.encoder(dev, b.group_rel, b.encoder, tokens)?,
    }
    mae.record(dev, tokens, b.center_xyz, b.group_features)?;
    k.nn3(dev, b.points, b.count, b.center_xyz, b.nn_idx, b.nn_w)?;
    k.project(
        dev,
        b.pixel_map,
        b.nn_idx,
        b.nn_w,
        b.group_features,
        s.feature_dim as i32,
        b.xyz,
    )
}

/// The branch's per-part device buffers another stage fills and reads when it records
/// the branch into its own graph ([`DevicePointBranch::record_on_device`]).
#[derive(Clone, Copy, Debug)]
pub struct BranchIo {
    /// In: S² × 3 point coordinates (the first `count` used, all finite).
    pub points: DevPtr<f32>,
    /// In: the point count, in `min_points..=max_points` of [`BranchSizes`].
    pub count: DevPtr<i32>,
    /// In: S² pixel → point map (−1 where no point; see [`BranchSizes::fill_pixel_map`]).
    pub pixel_map: DevPtr<i32>,
    /// Out: M center indices, M × K group members, G² × width xyz features.
    pub centers: DevPtr<u32>,
    pub groups: DevPtr<u32>,
    pub xyz: DevPtr<f32>,
}

/// The point branch on the device (module doc).
pub struct DevicePointBranch {
    // Field order is drop order: the graph, the pinned buffers, the kernels, the model,
    // the arena, the device last (its context must outlive all of them).
    /// The stage's own graph, kept besides the one-graph part: the engine's self-check
    /// at creation runs it against the CPU, an engine whose ViT stays on the CPU runs
    /// the branch through it, and bench/cuda/point_branch.rs times it.
    graph: Option<Graph>,
    host: HostBufs,
    kernels: PointKernels,
    mae: DevicePointMae,
    enc_bf16: Option<DeviceGroupEncoderBf16>,
    arena: Arena,
    bufs: DevBufs,
    sizes: BranchSizes,
    dev: Arc<Device>,
}

// SAFETY: the branch owns driver handles (context, stream, modules, functions, graph,
// cuBLASLt handle), device memory and pinned host memory. `forward` takes `&mut self`,
// so one thread at a time uses them, and it makes the context current on the calling
// thread first (`Device::bind`); CUDA handles are not tied to the thread that made them.
unsafe impl Send for DevicePointBranch {}

impl DevicePointBranch {
    /// Opens device `ordinal` and loads `model`'s point branch with the default kernels,
    /// replayed as a CUDA graph.
    pub fn new(ordinal: usize, model: &ModelFile) -> Result<Self> {
        Self::with_options(ordinal, model, BranchOptions::default())
    }

    /// [`DevicePointBranch::new`] with explicit kernel and launch choices.
    pub fn with_options(ordinal: usize, model: &ModelFile, opts: BranchOptions) -> Result<Self> {
        // Refuse a model the kernels cannot run before touching the device.
        BranchSizes::new(model.config())?;
        Self::on_device(Arc::new(Device::new(ordinal)?), model, opts)
    }

    /// The name of the branch's own region in the engine's arena (its encoder has
    /// [`DevicePointMae::ARENA_REGION`]).
    pub const ARENA_REGION: &'static str = "point branch";

    /// The device memory the branch of `model` needs, per arena region (host only: the
    /// engine plans its arena from it).
    pub fn arena_needs(
        model: &ModelFile,
        opts: BranchOptions,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let sizes = BranchSizes::new(model.config())?;
        let mut layout = ArenaPlan::new();
        BranchSlots::plan(&sizes, &mut layout);
        let mut needs = vec![
            (
                DevicePointMae::ARENA_REGION,
                DevicePointMae::arena_plan(model, opts.precision)?,
            ),
            (Self::ARENA_REGION, layout),
        ];
        if opts.precision == Precision::Bf16 {
            needs.push((
                DeviceGroupEncoderBf16::ARENA_REGION,
                DeviceGroupEncoderBf16::arena_plan(&sizes.encoder_bf16()?),
            ));
        }
        Ok(needs)
    }

    /// The branch on the engine's device (shared with its other device stages).
    pub fn on_device(dev: Arc<Device>, model: &ModelFile, opts: BranchOptions) -> Result<Self> {
        let cfg = model.config();
        let sizes = BranchSizes::new(cfg)?;
        let Some(pc) = cfg.point.as_ref() else {
            return Err(cfg_err("no point branch")); // refused by BranchSizes::new already
        };
        let weights = PointMaeWeights::load(model, pc)?;
        let enc = encoder_tensors(&sizes, &weights)?;
        // Locals drop in reverse declaration order on an early return, all before `dev`.
        let plan = PointPlan::new(pc, sizes.side, sizes.grid)?;
        let kernels = PointKernels::with_options(&dev, plan, opts.kernels)?;
        let mae = DevicePointMae::new(&dev, model, opts.precision)?;
        let enc_bf16 = match opts.precision {
            Precision::Bf16 => Some(DeviceGroupEncoderBf16::new(
                &dev,
                sizes.encoder_bf16()?,
                &weights.conv,
            )?),
            Precision::F32 => None,
        };
        let mut layout = ArenaPlan::new();
        let slots = BranchSlots::plan(&sizes, &mut layout);
        let arena = dev.stage_arena(Self::ARENA_REGION, &layout)?;
        dev.memset_u8(arena.ptr(slots.points).raw(), 0, arena.bytes())?;
        for (slot, data) in slots.encoder.iter().zip(&enc) {
            arena.upload(&dev, *slot, data)?;
        }
        let np = sizes.max_points();
        let host = HostBufs {
            points: Pinned::new(&dev, 3 * np)?,
            count: Pinned::new(&dev, 1)?,
            pixel_map: Pinned::new(&dev, np)?,
            centers: Pinned::new(&dev, sizes.centers_len())?,
            groups: Pinned::new(&dev, sizes.groups_len())?,
            xyz: Pinned::new(&dev, sizes.xyz_len())?,
        };
        let bufs = slots.resolve(&arena);
        let mut branch = DevicePointBranch {
            graph: None,
            host,
            kernels,
            mae,
            enc_bf16,
            arena,
            bufs,
            sizes,
            dev,
        };
        // One direct run first: every kernel and library call is used once (lazy loading
        // finishes outside the capture), and the branch is known to run.
        branch.warm_up()?;
        if opts.graph {
            let b = &mut branch;
            let graph = Graph::capture(&b.dev, |d| {
                // SAFETY: the branch's own buffers, kernels and model, made on `d`.
                unsafe {
                    record(
                        d,
                        &b.kernels,
                        &b.mae,
                        b.enc_bf16.as_ref(),
                        &b.bufs,
                        &mut b.host,
                        &b.sizes,
                    )
                }
            })?;
            b.graph = Some(graph);
        }
        Ok(branch)
    }

    /// A run on a fixed cloud of `min_points` lattice points at pixels 0, 1, ...
    fn warm_up(&mut self) -> Result<()> {
        let s = self.sizes.clone();
        let n = s.min_points();
        let points: Vec<f32> = (0..n)
            .flat_map(|i| {
                let (a, b, c) = (i % 17, (i / 17) % 17, i / 289);
                [a as f32 * 1e-3, b as f32 * 1e-3, c as f32 * 1e-3]
            })
            .collect();
        let pixels: Vec<u32> = (0..n as u32).collect();
        let mut centers = vec![0u32; s.centers_len()];
        let mut groups = vec![0u32; s.groups_len()];
        let mut xyz = vec![0f32; s.xyz_len()];
        self.forward(
            &points,
            n,
            &pixels,
            PointOutputs {
                centers: &mut centers,
                groups: &mut groups,
                xyz: &mut xyz,
            },
        )
    }

    pub fn sizes(&self) -> &BranchSizes {
        &self.sizes
    }
    pub fn device(&self) -> &Device {
        &self.dev
    }
    /// The FPS and kNN kernels in use.
    pub fn kernel_choice(&self) -> (FpsKernel, KnnKernel) {
        (self.kernels.fps_kernel, self.kernels.knn_kernel)
    }
    /// Whether the per-part work is replayed as a CUDA graph.
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }
    /// Device memory of the branch's buffers and of the Point-MAE model (and of the bf16
    /// group encoder), bytes.
    pub fn device_bytes(&self) -> usize {
        let enc = self.enc_bf16.as_ref().map_or(0, |e| e.arena_bytes());
        self.arena.bytes() + self.mae.arena_bytes() + enc
    }

    /// The device buffers [`DevicePointBranch::record_on_device`] reads and writes.
    pub fn io(&self) -> BranchIo {
        let b = &self.bufs;
        BranchIo {
            points: b.points,
            count: b.count,
            pixel_map: b.pixel_map,
            centers: b.centers,
            groups: b.groups,
            xyz: b.xyz,
        }
    }

    /// Enqueues the branch on the part already in its device buffers ([`BranchIo`]),
    /// on `dev`'s current stream, for another stage's graph: no host copy.
    ///
    /// # Safety
    /// `dev` is this branch's device; the inputs of [`BranchIo`] hold a valid part when
    /// the work runs.
    pub unsafe fn record_on_device(&self, dev: &Device) -> Result<()> {
        record_device(
            dev,
            &self.kernels,
            &self.mae,
            self.enc_bf16.as_ref(),
            &self.bufs,
            &self.sizes,
        )
    }

    /// Enqueues the part whose inputs are in the pinned buffers (`n` points).
    fn enqueue(&mut self, n: usize) -> Result<()> {
        self.host
            .points
            .copy_to(&self.dev, self.bufs.points, 3 * n)?;
        match &self.graph {
            Some(g) => g.replay(&self.dev),
            // SAFETY: the branch's own buffers, kernels and model, made on `self.dev`.
            None => unsafe {
                record(
                    &self.dev,
                    &self.kernels,
                    &self.mae,
                    self.enc_bf16.as_ref(),
                    &self.bufs,
                    &mut self.host,
                    &self.sizes,
                )
            },
        }
    }
}

impl Drop for DevicePointBranch {
    fn drop(&mut self) {
        // The fields release device resources: make the context current on this thread
        // and let queued copies into the pinned buffers finish first.
        let _ = self.dev.bind();
        let _ = self.dev.synchronize();
    }
}

impl PointNetwork for DevicePointBranch {
    fn forward(
        &mut self,
        points: &[f32],
        n: usize,
        pixels: &[u32],
        out: PointOutputs<'_>,
    ) -> Result<()> {
        self.sizes.check_call(points.len(), n, pixels.len(), &out)?;
        let points = &points[..3 * n];
        if let Some(i) = points.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "point {} has a non-finite coordinate ({})",
                i / 3,
                points[i]
            )));
        }
        self.sizes
            .fill_pixel_map(&pixels[..n], self.host.pixel_map.as_mut_slice())?;
        self.host.points.as_mut_slice()[..3 * n].copy_from_slice(points);
        self.host.count.as_mut_slice()[0] = n as i32;
        self.dev.bind()?;
        // Wait even when enqueueing failed part way: copies may still read or write the
        // pinned buffers.
        let queued = self.enqueue(n);
        let done = self.dev.synchronize();
        queued.and(done)?;
        out.centers.copy_from_slice(self.host.centers.as_slice());
        out.groups.copy_from_slice(self.host.groups.as_slice());
        out.xyz.copy_from_slice(self.host.xyz.as_slice());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PointConfig;
    use crate::format::{random_model, TensorSource};

    fn demo() -> BranchSizes {
        BranchSizes::new(&ModelConfig::demo()).unwrap()
    }

    fn outputs<'a>(
        c: &'a mut Vec<u32>,
        g: &'a mut Vec<u32>,
        x: &'a mut Vec<f32>,
    ) -> PointOutputs<'a> {
        PointOutputs {
            centers: c,
            groups: g,
            xyz: x,
        }
    }

    #[test]
    fn sizes_of_the_presets() {
        let s = BranchSizes::new(&ModelConfig::m3dm()).unwrap();
        assert_eq!((s.side, s.grid, s.max_points()), (224, 56, 50_176));
        assert_eq!((s.groups, s.group_size, s.min_points()), (1024, 128, 1024));
        assert_eq!(s.widths, [128, 256, 512, 384]);
        assert_eq!(s.feature_dim, 1152);
        assert_eq!(s.centers_len(), 1024);
        assert_eq!(s.groups_len(), 1024 * 128);
        assert_eq!(s.xyz_len(), 56 * 56 * 1152);
        let s = demo();
        assert_eq!((s.side, s.grid, s.max_points()), (112, 28, 12_544));
        assert_eq!((s.groups, s.group_size, s.min_points()), (256, 32, 256));
        assert_eq!(s.feature_dim, 384);
        assert_eq!(s.xyz_len(), 28 * 28 * 384);
        // A group larger than the number of groups sets the minimum.
        let mut cfg = ModelConfig::demo();
        cfg.point.as_mut().unwrap().group_size = 512;
        assert_eq!(BranchSizes::new(&cfg).unwrap().min_points(), 512);
    }

    #[test]
    fn unsupported_models_are_refused_with_the_reason() {
        let refuse = |cfg: &ModelConfig, needle: &str| {
            let e = BranchSizes::new(cfg).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e}");
            assert!(e.to_string().contains(needle), "{e} (wanted {needle:?})");
        };
        let mut cfg = ModelConfig::demo();
        cfg.point = None;
        refuse(&cfg, "no point branch");
        // Heads 48 wide: no attention kernel.
        let mut cfg = ModelConfig::small();
        cfg.point.as_mut().unwrap().heads = 2;
        refuse(&cfg, "head dimension of 48");
        let mut cfg = ModelConfig::demo();
        cfg.point.as_mut().unwrap().group_size = 20;
        refuse(&cfg, "multiples of 8");
        let mut cfg = ModelConfig::demo();
        cfg.point.as_mut().unwrap().encoder_widths[1] = 100;
        refuse(&cfg, "multiples of 8");
        let mut cfg = ModelConfig::demo();
        cfg.preprocess.xyz_grid = 111;
        refuse(&cfg, "does not fit");
        let mut cfg = ModelConfig::demo();
        cfg.preprocess.image_size = 15;
        cfg.preprocess.xyz_grid = 8;
        refuse(&cfg, "at most 15×15 = 225 points");
        let mut cfg = ModelConfig::m3dm();
        cfg.point.as_mut().unwrap().num_groups = 4097;
        refuse(&cfg, "at most 4096 centers");
        let mut cfg = ModelConfig::m3dm();
        cfg.point.as_mut().unwrap().num_groups = 4096;
        assert!(BranchSizes::new(&cfg).is_ok());
    }

    #[test]
    fn call_arguments_are_checked() {
        let s = demo();
        let (m, k, x) = (s.centers_len(), s.groups_len(), s.xyz_len());
        let (mut c, mut g, mut f) = (vec![0u32; m], vec![0u32; k], vec![0f32; x]);
        let np = s.max_points();
        let ok = |n: usize, pl: usize, xl: usize| {
            let (mut c, mut g, mut f) = (vec![0u32; m], vec![0u32; k], vec![0f32; x]);
            s.check_call(pl, n, xl, &outputs(&mut c, &mut g, &mut f))
        };
        // Exact and capacity-sized inputs.
        assert!(ok(256, 3 * 256, 256).is_ok());
        assert!(ok(1000, 3 * np, np).is_ok());
        assert!(ok(np, 3 * np, np).is_ok());
        for (n, pl, xl, needle) in [
            (255, 3 * np, np, "at least 256 needed"),
            (0, 0, 0, "at least 256 needed"),
            (np + 1, 3 * np + 3, np + 1, "holds at most 12544"),
            (300, 899, 300, "899 coordinates"),
            (300, 900, 299, "299 pixel indices"),
        ] {
            let e = ok(n, pl, xl).unwrap_err();
            assert!(matches!(e, Error::Input(_)), "{e}");
            assert!(e.to_string().contains(needle), "{e} (wanted {needle:?})");
        }
        // Output lengths must be exact.
        let mut short = vec![0u32; m - 1];
        let e = s
            .check_call(900, 300, 300, &outputs(&mut short, &mut g, &mut f))
            .unwrap_err();
        assert!(e.to_string().contains("center"), "{e}");
        let mut long = vec![0u32; k + 1];
        let e = s
            .check_call(900, 300, 300, &outputs(&mut c, &mut long, &mut f))
            .unwrap_err();
        assert!(e.to_string().contains("group member"), "{e}");
        let mut xs = vec![0f32; x - 384];
        let e = s
            .check_call(900, 300, 300, &outputs(&mut c, &mut g, &mut xs))
            .unwrap_err();
        assert!(e.to_string().contains("xyz feature"), "{e}");
        assert!(s
            .check_call(900, 300, 300, &outputs(&mut c, &mut g, &mut f))
            .is_ok());
    }

    #[test]
    fn pixel_map() {
        let s = demo();
        let np = s.max_points();
        let mut map = vec![7i32; np];
        s.fill_pixel_map(&[5, 0, np as u32 - 1], &mut map).unwrap();
        assert_eq!((map[5], map[0], map[np - 1]), (0, 1, 2));
        assert_eq!(map.iter().filter(|&&v| v == -1).count(), np - 3);
        // Refilled from scratch.
        s.fill_pixel_map(&[1], &mut map).unwrap();
        assert_eq!(map.iter().filter(|&&v| v == -1).count(), np - 1);
        assert_eq!(map[1], 0);
        let e = s.fill_pixel_map(&[3, np as u32], &mut map).unwrap_err();
        assert!(e.to_string().contains("outside the 112×112 map"), "{e}");
        let e = s.fill_pixel_map(&[3, 9, 3], &mut map).unwrap_err();
        assert!(
            e.to_string().contains("points 0 and 2 at the same pixel 3"),
            "{e}"
        );
        assert!(s.fill_pixel_map(&[0], &mut map[1..]).is_err());
        let all: Vec<u32> = (0..np as u32).rev().collect();
        s.fill_pixel_map(&all, &mut map).unwrap();
        assert_eq!(map[0], np as i32 - 1);
    }

    #[test]
    fn arena_slots_are_disjoint_and_sized() {
        for cfg in [ModelConfig::demo(), ModelConfig::m3dm()] {
            let s = BranchSizes::new(&cfg).unwrap();
            let mut plan = ArenaPlan::new();
            let slots = BranchSlots::plan(&s, &mut plan);
            let mut spans = slots.spans();
            assert_eq!(spans.len(), 20);
            spans.sort();
            for w in spans.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
            }
            let last = spans.last().unwrap();
            assert!(last.0 + last.1 <= plan.bytes());
            assert!(spans.iter().all(|sp| sp.0 % 256 == 0));
            assert_eq!(
                slots.points.offset, 0,
                "the memset starts at the arena base"
            );
            let np = s.max_points();
            assert_eq!(slots.points.len, 3 * np);
            assert_eq!(slots.pixel_map.len, np);
            assert_eq!(slots.fps_work.bytes(), 16 * np);
            assert_eq!(slots.group_rel.len, 3 * s.groups_len());
            assert_eq!(slots.group_features.len, s.groups * s.feature_dim);
            assert_eq!(slots.xyz.len, s.xyz_len());
            assert_eq!(slots.nn_idx.len, 3 * np);
        }
    }

    #[test]
    fn encoder_weights_are_transposed() {
        let cfg = ModelConfig::demo();
        let t = random_model(&cfg, 5);
        let pc = cfg.point.as_ref().unwrap();
        let w = PointMaeWeights::load(&t, pc).unwrap();
        let s = demo();
        let e = encoder_tensors(&s, &w).unwrap();
        let [c1, c2, c3, d] = s.widths;
        let lens: Vec<usize> = e.iter().map(Vec::len).collect();
        assert_eq!(lens, [3 * c1, c1, c1 * c2, c2, 2 * c2 * c3, c3, c3 * d, d]);
        let w3 = t.f32("point.encoder.conv3.weight", &[c3, 2 * c2]).unwrap();
        // W3ᵀ[i][o] = W3[o][i]
        for (o, i) in [(0, 0), (5, 7), (c3 - 1, 2 * c2 - 1), (17, c2 + 3)] {
            assert_eq!(e[4][i * c3 + o], w3[o * 2 * c2 + i]);
        }
        assert_eq!(e[7], t.f32("point.encoder.conv4.bias", &[d]).unwrap());
        assert_eq!(
            transposed(&[1., 2., 3., 4., 5., 6.], 2, 3),
            [1., 4., 2., 5., 3., 6.]
        );
        // Weights of other widths than the sizes: refused.
        let mut other = PointConfig::m3dm();
        other.num_groups = 256;
        let mut big = ModelConfig::m3dm();
        big.point = Some(other);
        let sb = BranchSizes::new(&big).unwrap();
        assert!(encoder_tensors(&sb, &w).is_err());
    }

    #[test]
    fn options_default_to_the_graph_and_the_device_kernels() {
        let o = BranchOptions::default();
        assert!(o.graph);
        assert_eq!(o.kernels, PointOptions::default());
    }
}
