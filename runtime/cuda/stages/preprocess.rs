//! The preprocessing of one part on the device (SPEC §1; CPU oracle
//! [`crate::pipeline::preprocess::preprocess`]), for the one-graph part of issue 18.
//!
//! # Interface
//! - [`DevicePreprocess::arena_needs`]`(model, max_width, max_height, mode)`: the device
//!   memory, one arena region ([`DevicePreprocess::ARENA_REGION`]); host only.
//! - [`DevicePreprocess::on_device`]`(dev, model, max_width, max_height, mode)`: kernels
//!   looked up, arena taken; every launch is sized for parts up to `max_width ×
//!   max_height`.
//! - Per part, on the host: [`DevicePreprocess::header`] checks the inputs (sizes that
//!   differ between image and cloud, or beyond the planned maximum, are errors, as on the
//!   CPU) and returns the [`PartHeader`] (sizes, strides, which modalities were given,
//!   padding); the caller puts header, cloud (f32, `cloud_stride` floats per row) and RGB
//!   (8-bit HWC, `rgb_stride` bytes per row) into device memory ([`PreprocessInputs`]).
//!   [`PreprocessStaging`] does that through pinned buffers (packed rows) for a caller
//!   without staging of its own.
//! - [`DevicePreprocess::record`]`(dev, inputs, targets)` only enqueues kernels (no host
//!   synchronisation, no host decision: every kernel reads the part's sizes from the
//!   header), so it can be captured once into a graph and replayed for parts of any size
//!   up to the maximum. Work buffers are the stage's own; outputs go to
//!   [`PreprocessTargets`] (the stage's own slots from [`DevicePreprocess::targets`], or
//!   the consumer's: the point branch's points / count / pixel map, the ViT's input):
//!   - `points` (`N×3`, N ≤ S²), `count` (N; 0 when the cloud is unusable), `pixels` (the
//!     pixel index of each point, row-major in the S×S map), `pixel_map` (S² entries:
//!     the point at each pixel, −1 elsewhere — what
//!     [`super::point_branch::BranchSizes::fill_pixel_map`] builds on the host; all −1
//!     when the cloud is unusable),
//!   - `rgb_input` (3×S×S, exactly [`PreprocessOutput::rgb_input`]),
//!   - `status`: one word, RGB reason | cloud reason << 8 ([`status_code`]: 0 usable,
//!     then the [`Unusable`] variants in declaration order); [`decode_status`] reads it.
//!
//! # What runs (kernels/preprocess.cu, `pre_*`)
//! Full mode: state reset; load (padding, invalid points zeroed, content flags); the
//! border frame's points in raster order; RANSAC hypotheses one block each (the CPU's
//! SplitMix64 draws at computed stream positions, f64 least-squares planes with the CPU's
//! operation order and no FMA, inlier counts); the best hypothesis (most inliers, first on
//! ties), its inliers gathered in parallel and refitted in one thread (the CPU's
//! summation order, so the plane is the CPU's bits); plane removal; largest 8-connected cluster by union-find (roots =
//! first pixels, largest size then first root, as the CPU); RGB bicubic resize (PIL
//! tables for the part's working size, removed pixels read as 0) and normalisation;
//! nearest resize and compaction with the status word. AlreadyClean: reset, load, RGB,
//! compaction.
//!
//! Serial parts (the price of the CPU's bits; not measured, no GPU was available): the
//! refit's two f64 passes over the inliers in one thread (the frame has up to
//! `4 · border · side` points), each hypothesis's 50-point fit in one thread of its block,
//! and the single-block border gather and compaction.

use std::sync::Arc;

use crate::config::PreprocessConfig;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::graph::{CopyNode, Graph, Pinned};
use crate::cuda::device::Device;
use crate::cuda::ops::preprocess::{PartHeader, PlaneRec, PreState, PreprocessKernels};
use crate::format::ModelFile;
use crate::pipeline::input::{CloudView, RgbView};
use crate::pipeline::preprocess::{
    padded_side, ModalityStatus, PreprocessMode, PreprocessOutput, Unusable,
};
use crate::{DeviceError, Error, Result};

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("CUDA preprocessing: {msg}"))
}

/// The code of a reason in the status word (0: usable).
pub fn status_code(u: Option<Unusable>) -> u32 {
    match u {
        None => 0,
        Some(Unusable::Missing) => 1,
        Some(Unusable::Blank) => 2,
        Some(Unusable::AllZero) => 3,
        Some(Unusable::NonFinite) => 4,
        Some(Unusable::EmptyAfterCleaning) => 5,
        Some(Unusable::TooFewPoints) => 6,
    }
}

fn reason(code: u32) -> Result<Option<Unusable>> {
    Ok(match code {
        0 => None,
        1 => Some(Unusable::Missing),
        2 => Some(Unusable::Blank),
        3 => Some(Unusable::AllZero),
        4 => Some(Unusable::NonFinite),
        5 => Some(Unusable::EmptyAfterCleaning),
        6 => Some(Unusable::TooFewPoints),
        c => {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "preprocessing status code {c}"
            ))))
        }
    })
}

/// The modality status of a status word (an unknown code is an error).
pub fn decode_status(word: u32) -> Result<ModalityStatus> {
    Ok(ModalityStatus {
        rgb: reason(word & 0xff)?,
        cloud: reason((word >> 8) & 0xff)?,
    })
}

/// The status word of a modality status.
pub fn encode_status(s: ModalityStatus) -> u32 {
    status_code(s.rgb) | (status_code(s.cloud) << 8)
}

/// Where the part's inputs are in device memory.
#[derive(Clone, Copy, Debug)]
pub struct PreprocessInputs {
    pub header: DevPtr<PartHeader>,
    /// `height` rows of `cloud_stride` floats (`width × 3` used).
    pub cloud: DevPtr<f32>,
    /// `height` rows of `rgb_stride` bytes (`width × 3` used).
    pub rgb: DevPtr<u8>,
}

/// Where the outputs go (module doc).
#[derive(Clone, Copy, Debug)]
pub struct PreprocessTargets {
    /// S² × 3.
    pub points: DevPtr<f32>,
    /// 1.
    pub count: DevPtr<i32>,
    /// S².
    pub pixels: DevPtr<i32>,
    /// S².
    pub pixel_map: DevPtr<i32>,
    /// 3 × S².
    pub rgb_input: DevPtr<f32>,
    /// 1.
    pub status: DevPtr<u32>,
}

/// Sizes the stage is planned for (host only).
#[derive(Clone, Debug)]
struct PreSizes {
    cfg: PreprocessConfig,
    mode: PreprocessMode,
    /// S.
    side: usize,
    max_width: usize,
    max_height: usize,
    /// Largest working image (padded square in Full mode).
    max_work_w: usize,
    max_work_h: usize,
    /// Most frame pixels of a part.
    border_cap: usize,
    /// Resampling taps per output index (the largest working side's).
    taps: usize,
    /// Points per RANSAC hypothesis (`ransac_points`, at least 3).
    draws: usize,
    iterations: usize,
    /// Fewer points make the cloud unusable (max(M, K) of the point branch, else 1).
    min_points: usize,
}

/// Fewest points of a usable cloud for `model`: max(M, K) of its point branch
/// ([`PreprocessOutput::for_point_branch`]), else 1.
pub fn model_min_points(model: &ModelFile) -> usize {
    model
        .config()
        .point
        .as_ref()
        .map_or(1, |p| p.num_groups.max(p.group_size) as usize)
        .max(1)
}

/// Most taps of one PIL bicubic kernel for `input → out` (preprocess.rs `max_taps`).
fn max_taps(input: usize, out: usize) -> usize {
    let scale = (input as f64 / out as f64).max(1.0);
    (2.0 * 2.0 * scale).ceil() as usize + 3
}

impl PreSizes {
    fn new(
        cfg: &PreprocessConfig,
        min_points: usize,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Self> {
        let cfg = cfg.clone();
        let side = cfg.image_size as usize;
        if side == 0 || max_width == 0 || max_height == 0 {
            return Err(cfg_err(format!(
                "image size {side}, largest input {max_width}×{max_height}"
            )));
        }
        let (max_work_w, max_work_h) = match mode {
            PreprocessMode::Full => {
                let p = padded_side(&cfg, max_width, max_height);
                (p, p)
            }
            PreprocessMode::AlreadyClean => (max_width, max_height),
        };
        let b = cfg.border as usize;
        let border_cap = (2 * b * (max_width + max_height))
            .min(max_width * max_height)
            .max(1);
        let taps = max_taps(max_work_w.max(max_work_h), side);
        let min_points = min_points.max(1);
        let s = PreSizes {
            mode,
            side,
            max_width,
            max_height,
            max_work_w,
            max_work_h,
            border_cap,
            taps,
            draws: cfg.ransac_points.max(3) as usize,
            iterations: cfg.ransac_iterations as usize,
            min_points,
            cfg,
        };
        // Kernels index with 32-bit integers; hypotheses are one block each.
        let largest = [
            3 * s.max_work_w * s.max_work_h,
            3 * s.max_width * s.max_height,
            3 * s.max_work_h * s.side,
            3 * s.side * s.side,
            s.side * s.taps,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if largest > i32::MAX as usize || s.iterations > i32::MAX as usize {
            return Err(cfg_err(format!(
                "a buffer of {largest} values or {} RANSAC iterations is beyond the kernels' 32-bit indices",
                s.iterations
            )));
        }
        if s.draws > i32::MAX as usize {
            return Err(cfg_err(format!("{} RANSAC points", s.draws)));
        }
        Ok(s)
    }

    fn max_work_pixels(&self) -> usize {
        self.max_work_w * self.max_work_h
    }
}

/// The stage's device buffers, in one arena region.
#[derive(Clone, Copy, Debug)]
struct PreSlots {
    header: Slot<PartHeader>,
    cloud: Slot<f32>,
    rgb: Slot<u8>,
    state: Slot<PreState>,
    wcloud: Slot<f32>,
    labels: Slot<u32>,
    sizes: Slot<u32>,
    border: Slot<i32>,
    inliers: Slot<f32>,
    hyps: Slot<PlaneRec>,
    first_x: Slot<i32>,
    w_x: Slot<f32>,
    first_y: Slot<i32>,
    w_y: Slot<f32>,
    tmp: Slot<f32>,
    points: Slot<f32>,
    count: Slot<i32>,
    pixels: Slot<i32>,
    pixel_map: Slot<i32>,
    rgb_input: Slot<f32>,
    status: Slot<u32>,
}

impl PreSlots {
    fn plan(s: &PreSizes, a: &mut ArenaPlan) -> Self {
        let wp = s.max_work_pixels();
        let input = 3 * s.max_width * s.max_height;
        let s2 = s.side * s.side;
        PreSlots {
            header: a.add(1),
            cloud: a.add(input),
            rgb: a.add(input),
            state: a.add(1),
            wcloud: a.add(3 * wp),
            labels: a.add(wp),
            sizes: a.add(wp),
            border: a.add(s.border_cap),
            inliers: a.add(3 * s.border_cap),
            hyps: a.add(s.iterations.max(1)),
            first_x: a.add(s.side),
            w_x: a.add(s.side * s.taps),
            first_y: a.add(s.side),
            w_y: a.add(s.side * s.taps),
            tmp: a.add(3 * s.max_work_h * s.side),
            points: a.add(3 * s2),
            count: a.add(1),
            pixels: a.add(s2),
            pixel_map: a.add(s2),
            rgb_input: a.add(3 * s2),
            status: a.add(1),
        }
    }
}

/// The preprocessing stage on the device (module doc).
pub struct DevicePreprocess {
    // Field order is drop order: kernels, arena, the device last.
    kernels: PreprocessKernels,
    arena: Arena,
    slots: PreSlots,
    sizes: PreSizes,
    dev: Arc<Device>,
}

// SAFETY: the stage owns driver handles (module, functions) and device memory; every use
// takes `&self` with the device bound by the caller, and CUDA handles are not tied to the
// thread that made them.
unsafe impl Send for DevicePreprocess {}

impl DevicePreprocess {
    /// The name of the stage's region in the engine's arena.
    pub const ARENA_REGION: &'static str = "preprocess";

    /// The device memory the stage needs for parts up to `max_width × max_height`.
    pub fn arena_needs(
        model: &ModelFile,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let sizes = PreSizes::new(
            &model.config().preprocess,
            model_min_points(model),
            max_width,
            max_height,
            mode,
        )?;
        let mut layout = ArenaPlan::new();
        PreSlots::plan(&sizes, &mut layout);
        Ok(vec![(Self::ARENA_REGION, layout)])
    }

    /// The stage on the engine's device.
    pub fn on_device(
        dev: Arc<Device>,
        model: &ModelFile,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Self> {
        let cfg = &model.config().preprocess;
        Self::with_config(
            dev,
            cfg,
            model_min_points(model),
            max_width,
            max_height,
            mode,
        )
    }

    /// The stage for a preprocessing configuration alone: a cloud with fewer than
    /// `min_points` points is unusable (the model's point branch needs max(M, K);
    /// [`Self::on_device`] takes that).
    pub fn with_config(
        dev: Arc<Device>,
        cfg: &PreprocessConfig,
        min_points: usize,
        max_width: usize,
        max_height: usize,
        mode: PreprocessMode,
    ) -> Result<Self> {
        let sizes = PreSizes::new(cfg, min_points, max_width, max_height, mode)?;
        let kernels = PreprocessKernels::new(&dev)?;
        let mut layout = ArenaPlan::new();
        let slots = PreSlots::plan(&sizes, &mut layout);
        let arena = dev.stage_arena(Self::ARENA_REGION, &layout)?;
        Ok(DevicePreprocess {
            kernels,
            arena,
            slots,
            sizes,
            dev,
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// S.
    pub fn side(&self) -> usize {
        self.sizes.side
    }

    /// Fewest points of a usable cloud.
    pub fn min_points(&self) -> usize {
        self.sizes.min_points
    }

    /// The header of a part with these inputs (host only; no allocation). Errors as the
    /// CPU's: image and cloud of different sizes, bad views; and inputs beyond the
    /// planned maximum.
    pub fn header(
        &self,
        rgb: Option<&RgbView<'_>>,
        cloud: Option<&CloudView<'_>>,
    ) -> Result<PartHeader> {
        if let Some(v) = rgb {
            v.validate()?;
        }
        if let Some(v) = cloud {
            v.validate()?;
        }
        let (w, h) = match (rgb, cloud) {
            (Some(r), Some(c)) => {
                if (r.width, r.height) != (c.width, c.height) {
                    return Err(Error::Input(format!(
                        "point cloud is {}×{} but the RGB image is {}×{}",
                        c.width, c.height, r.width, r.height
                    )));
                }
                (r.width, r.height)
            }
            (Some(r), None) => (r.width, r.height),
            (None, Some(c)) => (c.width, c.height),
            (None, None) => (1, 1),
        };
        let s = &self.sizes;
        if w > s.max_width || h > s.max_height {
            return Err(Error::Input(format!(
                "input {w}×{h} is larger than the preprocessing was planned for ({}×{})",
                s.max_width, s.max_height
            )));
        }
        let (ww, wh) = match s.mode {
            PreprocessMode::Full if rgb.is_some() || cloud.is_some() => {
                let p = padded_side(&s.cfg, w, h);
                (p, p)
            }
            _ => (w, h),
        };
        Ok(PartHeader {
            width: w as i32,
            height: h as i32,
            rgb_stride: rgb.map_or(0, |r| r.stride as i32),
            cloud_stride: cloud.map_or(0, |c| c.stride as i32),
            has_rgb: i32::from(rgb.is_some()),
            has_cloud: i32::from(cloud.is_some()),
            work_width: ww as i32,
            work_height: wh as i32,
            top: ((wh - h) / 2) as i32,
            left: ((ww - w) / 2) as i32,
            pad: [0; 2],
        })
    }

    /// The stage's own input slots (header, cloud and RGB of the largest part, packed).
    pub fn inputs(&self) -> PreprocessInputs {
        PreprocessInputs {
            header: self.arena.ptr(self.slots.header),
            cloud: self.arena.ptr(self.slots.cloud),
            rgb: self.arena.ptr(self.slots.rgb),
        }
    }

    /// The stage's own output slots.
    pub fn targets(&self) -> PreprocessTargets {
        let (a, s) = (&self.arena, &self.slots);
        PreprocessTargets {
            points: a.ptr(s.points),
            count: a.ptr(s.count),
            pixels: a.ptr(s.pixels),
            pixel_map: a.ptr(s.pixel_map),
            rgb_input: a.ptr(s.rgb_input),
            status: a.ptr(s.status),
        }
    }

    /// Enqueues the preprocessing of the part described by `inputs` (module doc). Nothing
    /// waits and nothing depends on the part on the host: capture it once, replay per part.
    ///
    /// # Safety
    /// `inputs` must point at a header made by [`Self::header`] and at its data (valid
    /// for `height` rows of its strides); `targets` at buffers of the sizes listed in
    /// [`PreprocessTargets`], on `dev`, the stage's device.
    pub unsafe fn record(
        &self,
        dev: &Device,
        inputs: PreprocessInputs,
        targets: PreprocessTargets,
    ) -> Result<()> {
        let (k, s, a, sl) = (&self.kernels, &self.sizes, &self.arena, &self.slots);
        let cfg = &s.cfg;
        let hd = inputs.header;
        let st = a.ptr(sl.state);
        let wcloud = a.ptr(sl.wcloud);
        let wp = s.max_work_pixels();
        k.reset(dev, st)?;
        k.load(dev, wp, hd, inputs.cloud, inputs.rgb, wcloud, st)?;
        let full = s.mode == PreprocessMode::Full;
        if full {
            let border = a.ptr(sl.border);
            let hyps = a.ptr(sl.hyps);
            k.border(dev, hd, cfg.border as i32, wcloud, border, st)?;
            k.ransac_hyp(
                dev,
                s.iterations as u32,
                wcloud,
                border,
                st,
                cfg.ransac_seed,
                s.draws as i32,
                cfg.ransac_threshold,
                hyps,
            )?;
            k.ransac_refit(
                dev,
                wcloud,
                border,
                hyps,
                s.iterations as i32,
                cfg.ransac_threshold,
                a.ptr(sl.inliers),
                st,
            )?;
            k.clean(
                dev,
                wp,
                hd,
                st,
                (
                    cfg.plane_distance,
                    cfg.cluster_eps * cfg.cluster_eps,
                    cfg.cluster_min_points as i32,
                ),
                wcloud,
                a.ptr(sl.labels),
                a.ptr(sl.sizes),
            )?;
        }
        k.rgb(
            dev,
            hd,
            (inputs.rgb, inputs.cloud, wcloud, st),
            full,
            (s.side, s.taps, s.max_work_h),
            (
                a.ptr(sl.first_x),
                a.ptr(sl.w_x),
                a.ptr(sl.first_y),
                a.ptr(sl.w_y),
            ),
            a.ptr(sl.tmp),
            (cfg.rgb_mean, cfg.rgb_std),
            targets.rgb_input,
        )?;
        k.compact(
            dev,
            hd,
            wcloud,
            st,
            s.side,
            s.min_points as i32,
            (
                targets.points,
                targets.pixels,
                targets.pixel_map,
                targets.count,
            ),
            targets.status,
        )
    }

    /// Reads the stage's own targets into `out` and returns the status. Waits for the
    /// stream. `out.cloud` (the resized cloud) is rebuilt from the points: the CPU's when
    /// the cloud is usable; all zero otherwise (the CPU keeps the few resized points of a
    /// `TooFewPoints` cloud there).
    pub fn download(&self, out: &mut PreprocessOutput) -> Result<ModalityStatus> {
        let s2 = self.sizes.side * self.sizes.side;
        if out.size != self.sizes.side
            || out.points.len() < 3 * s2
            || out.point_pixels.len() < s2
            || out.cloud.len() < 3 * s2
        {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "preprocessing output of side {}, the stage has {}",
                out.size, self.sizes.side
            ))));
        }
        let (a, sl, dev) = (&self.arena, &self.slots, &*self.dev);
        dev.synchronize()?;
        let mut word = [0u32];
        a.download(dev, sl.status, &mut word)?;
        let mut count = [0i32];
        a.download(dev, sl.count, &mut count)?;
        let n = count[0].clamp(0, s2 as i32) as usize;
        a.download(dev, sl.points, &mut out.points[..3 * n])?;
        a.download(
            dev,
            sl.pixels,
            bytemuck::cast_slice_mut(&mut out.point_pixels[..n]),
        )?;
        a.download(dev, sl.rgb_input, &mut out.rgb_input[..3 * s2])?;
        out.n_points = n;
        let cloud = &mut out.cloud[..3 * s2];
        cloud.fill(0.0);
        for (p, &q) in out.points[..3 * n]
            .chunks_exact(3)
            .zip(&out.point_pixels[..n])
        {
            let q = 3 * q as usize;
            if let Some(dst) = cloud.get_mut(q..q + 3) {
                dst.copy_from_slice(p);
            }
        }
        decode_status(word[0])
    }

    /// The pixel map of the stage's own targets (S² entries). Waits for the stream.
    pub fn download_pixel_map(&self, map: &mut [i32]) -> Result<()> {
        self.dev.synchronize()?;
        self.arena.download(&self.dev, self.slots.pixel_map, map)
    }

    /// The plane the last part removed (`ok` 0: none) and the state the kernels shared,
    /// for tests. Waits for the stream.
    pub fn download_state(&self) -> Result<PreState> {
        self.dev.synchronize()?;
        let mut st = [PreState::default()];
        self.arena.download(&self.dev, self.slots.state, &mut st)?;
        Ok(st[0])
    }
}

/// Pinned host copies of one part's inputs, for a caller without staging of its own: fill
/// per part ([`PreprocessStaging::fill`]), record the upload once
/// ([`PreprocessStaging::record_upload`], the largest part's bytes), and before each
/// replay size its copies to the part ([`PreprocessStaging::size_upload`]): the kernels
/// read only the rows the header names, so what lies beyond them on the device (an
/// earlier, larger part) is never read.
pub struct PreprocessStaging {
    header: Pinned<PartHeader>,
    cloud: Pinned<f32>,
    rgb: Pinned<u8>,
}

impl PreprocessStaging {
    pub fn new(stage: &DevicePreprocess) -> Result<Self> {
        let n = 3 * stage.sizes.max_width * stage.sizes.max_height;
        Ok(PreprocessStaging {
            header: Pinned::new(&stage.dev, 1)?,
            cloud: Pinned::new(&stage.dev, n)?,
            rgb: Pinned::new(&stage.dev, n)?,
        })
    }

    /// Copies the part's inputs, rows packed, and its header (strides of the packed rows).
    pub fn fill(
        &mut self,
        stage: &DevicePreprocess,
        rgb: Option<RgbView<'_>>,
        cloud: Option<CloudView<'_>>,
    ) -> Result<PartHeader> {
        let mut hd = stage.header(rgb.as_ref(), cloud.as_ref())?;
        let (w, h) = (hd.width as usize, hd.height as usize);
        if let Some(c) = &cloud {
            let dst = self.cloud.as_mut_slice();
            for r in 0..h {
                dst[3 * w * r..3 * w * (r + 1)]
                    .copy_from_slice(&c.data[r * c.stride..r * c.stride + 3 * w]);
            }
            hd.cloud_stride = 3 * w as i32;
        }
        if let Some(im) = &rgb {
            let dst = self.rgb.as_mut_slice();
            for r in 0..h {
                dst[3 * w * r..3 * w * (r + 1)]
                    .copy_from_slice(&im.data[r * im.stride..r * im.stride + 3 * w]);
            }
            hd.rgb_stride = 3 * w as i32;
        }
        self.header.as_mut_slice()[0] = hd;
        Ok(hd)
    }

    /// Records (inside [`Graph::capture`]) the copies of header, cloud and image into
    /// `inputs`, cloud and image at their largest.
    pub fn record_upload(&self, dev: &Device, inputs: PreprocessInputs) -> Result<StagingCopies> {
        self.header.copy_to(dev, inputs.header, 1)?;
        Ok(StagingCopies {
            cloud: self
                .cloud
                .copy_to_resizable(dev, inputs.cloud, self.cloud.len())?,
            rgb: self
                .rgb
                .copy_to_resizable(dev, inputs.rgb, self.rgb.len())?,
        })
    }

    /// Sizes the recorded copies of `graph` to the part [`PreprocessStaging::fill`] last
    /// wrote (its packed rows; one value for an absent modality). Returns the bytes the
    /// next replay uploads (header included).
    pub fn size_upload(
        &self,
        dev: &Device,
        graph: &Graph,
        copies: &StagingCopies,
    ) -> Result<usize> {
        let hd = self.header.as_slice()[0];
        let values = 3 * hd.width.max(0) as usize * hd.height.max(0) as usize;
        let cloud = if hd.has_cloud != 0 { values } else { 1 };
        let rgb = if hd.has_rgb != 0 { values } else { 1 };
        graph.set_copy_len(dev, &copies.cloud, cloud)?;
        graph.set_copy_len(dev, &copies.rgb, rgb)?;
        Ok(std::mem::size_of::<PartHeader>() + 4 * cloud + rgb)
    }
}

/// The resizable copies [`PreprocessStaging::record_upload`] recorded.
#[derive(Clone, Copy, Debug)]
pub struct StagingCopies {
    cloud: CopyNode,
    rgb: CopyNode,
}
