//! Fusion (SPEC §5) on the device: M3DM's UFF (`cpu::fusion::fuse`, this file) and, for
//! models with `radar`, RADAR's adaptive instruction fusion (`cpu::radar_fusion`, module
//! `radar`), built from the pieces of the transformer forwards ([`super::forward`]: the
//! staging of weights into one arena, the GEMM plans and their f32/bf16 operand types, the
//! blocks) and the embed kernels (LayerNorm, adaptive pooling, strided row copies).
//!
//! # Interface (what the one-graph engine calls)
//!
//! - [`DeviceFusion::arena_needs`]`(model, precision)`: the device memory, per arena region
//!   (host only: the engine plans its one arena from it).
//! - [`DeviceFusion::on_device`]`(dev: Arc<Device>, model, precision)`: uploads the weights,
//!   plans the GEMMs, runs the fusion once on zeroed buffers (first use of every plan and
//!   kernel, so a later `Graph::capture` records launches only).
//! - `unsafe` [`DeviceFusion::record`]`(&self, dev, xyz, rgb, fused)`: only enqueues work on
//!   `dev`'s stream (no allocation, no synchronisation), so it can be recorded into a graph:
//!   - `xyz`: `xyz_grid² × xyz_dim` f32, the point features after alignment;
//!   - `rgb`: `rgb_grid² × rgb_dim` f32, the ViT's patch features (the 28→56 pooling is part
//!     of the fusion);
//!   - `fused`: `xyz_grid² × fused_dim` f32, every value written: the xyz half first
//!     (columns `..xyz_dim`), as M3DM concatenates.
//!
//!   A missing modality's features are already the pseudo input's (SPEC §9) when `record`'s
//!   work runs.
//! - [`DeviceFusion::case_ptr`]: one device `i32`, the part's modality case (0 complete, 1
//!   RGB only, 2 cloud only), read by RADAR's fusion when its work runs, so that one recorded
//!   graph serves every case; UFF ignores it.
//!
//! # UFF on the device
//!
//! Per branch `b` (xyz over the `xyz_grid²` cells, RGB over the `rgb_grid²` cells — the RGB
//! half is computed once per RGB cell, as the CPU does):
//!
//! | step | [`Precision::F32`] (parity path) | [`Precision::Bf16`] (fast path) |
//! |------|-----------------------------------|---------------------------------|
//! | LN_b | embed LayerNorm, f32 out | the same, bf16 out |
//! | fc1 + GELU | f32 GEMM, exact erf GELU kernel | bf16 GEMM, cuBLASLt GELU_BIAS, bf16 out |
//! | fc2 | f32 GEMM (+ bias) | bf16 GEMM with f32 output (+ f32 bias) |
//!
//! then the xyz half is copied into the fused rows (`copy_rows`, rows `fused_dim` apart) and
//! the RGB half pooled into them (`adaptive_pool` 28→56: with the xyz grid a multiple of the
//! RGB grid each bin is one RGB cell, an exact repetition). The two branches share the
//! activation buffers (one stream: they run one after the other).

use std::sync::Arc;

use super::forward::{dp, gemm, OpSlot, Staging, WorkspacePlace};
use crate::backend::Precision;
use crate::config::ModelConfig;
use crate::cpu::fusion::{BranchWeights, FusionWeights};
use crate::cpu::radar_fusion::Case;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{Epilogue, GemmPlan, GemmShape, Workspace, GEMM_WORKSPACE_BYTES};
use crate::cuda::device::graph::{Graph, Pinned};
use crate::cuda::device::Device;
use crate::cuda::ops::embed::{EmbedKernels, EmbedPlan};
use crate::cuda::ops::gelu::Elementwise;
use crate::format::{ModelFile, TensorSource};
use crate::pipeline::extract::FusionNetwork;
use crate::{DeviceError, Error, Result};

mod radar;
use radar::DeviceRadar;

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("CUDA fusion: {msg}"))
}

/// The sizes of one part's fusion, validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusionDims {
    pub rgb_grid: usize,
    pub rgb_dim: usize,
    pub xyz_grid: usize,
    pub xyz_dim: usize,
    pub mlp_ratio: usize,
    pub ln_eps: f32,
}

impl FusionDims {
    /// From a model's configuration (ViT grid, xyz grid, fusion widths).
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        let (Some(vc), Some(fc)) = (&cfg.vit, &cfg.fusion) else {
            return Err(cfg_err(format!(
                "model '{}' has no ViT or no fusion network",
                cfg.name
            )));
        };
        let d = FusionDims {
            rgb_grid: vc.grid(),
            rgb_dim: fc.rgb_dim as usize,
            xyz_grid: cfg.preprocess.xyz_grid as usize,
            xyz_dim: fc.xyz_dim as usize,
            mlp_ratio: fc.mlp_ratio as usize,
            ln_eps: fc.ln_eps,
        };
        if d.rgb_grid == 0 || d.rgb_dim == 0 || d.xyz_dim == 0 || d.mlp_ratio == 0 {
            return Err(cfg_err(format!("a zero size: {d:?}")));
        }
        if d.xyz_grid == 0 || !d.xyz_grid.is_multiple_of(d.rgb_grid) {
            return Err(cfg_err(format!(
                "xyz grid {} is not a multiple of the RGB grid {}",
                d.xyz_grid, d.rgb_grid
            )));
        }
        if !(d.ln_eps > 0.0 && d.ln_eps.is_finite()) {
            return Err(cfg_err(format!("LayerNorm eps {}", d.ln_eps)));
        }
        Ok(d)
    }
    pub fn xyz_rows(&self) -> usize {
        self.xyz_grid * self.xyz_grid
    }
    pub fn rgb_rows(&self) -> usize {
        self.rgb_grid * self.rgb_grid
    }
    pub fn fused_dim(&self) -> usize {
        self.xyz_dim + self.rgb_dim
    }
    /// Floats of the `xyz` input.
    pub fn xyz_len(&self) -> usize {
        self.xyz_rows() * self.xyz_dim
    }
    /// Floats of the `rgb` input.
    pub fn rgb_len(&self) -> usize {
        self.rgb_rows() * self.rgb_dim
    }
    /// Floats of the `fused` output.
    pub fn fused_len(&self) -> usize {
        self.xyz_rows() * self.fused_dim()
    }
    /// fc1 (with GELU) and fc2 of one UFF branch over `rows` rows of width `dim`.
    fn branch_gemms(
        rows: usize,
        dim: usize,
        hidden: usize,
        p: Precision,
    ) -> Result<[GemmShape; 2]> {
        Ok([
            GemmShape::new(rows, hidden, dim, p, Epilogue::BiasGelu)?,
            GemmShape::new(rows, dim, hidden, p, Epilogue::Bias)?.with_output(Precision::F32)?,
        ])
    }
}

/// One UFF branch's weights in the arena.
#[derive(Clone, Copy, Debug)]
struct BranchSlots {
    norm: (Slot<f32>, Slot<f32>),
    fc1_w: OpSlot,
    /// The fc1 product's output type (its bias has it).
    fc1_b: OpSlot,
    fc2_w: OpSlot,
    /// f32: the fc2 product writes f32.
    fc2_b: Slot<f32>,
}

impl BranchSlots {
    fn stage<'a>(st: &mut Staging<'a>, w: &BranchWeights<'a>, p: Precision) -> Self {
        BranchSlots {
            norm: (st.f32(w.norm_w), st.f32(w.norm_b)),
            fc1_w: st.weight(p, w.fc1_w),
            fc1_b: st.weight(p, w.fc1_b),
            fc2_w: st.weight(p, w.fc2_w),
            fc2_b: st.f32(w.fc2_b),
        }
    }
    fn resolve(&self, a: &Arena) -> BranchDev {
        BranchDev {
            norm: (a.ptr(self.norm.0), a.ptr(self.norm.1)),
            fc1_w: self.fc1_w.raw(a),
            fc1_b: self.fc1_b.raw(a),
            fc2_w: self.fc2_w.raw(a),
            fc2_b: a.ptr(self.fc2_b).raw(),
        }
    }
}

/// One UFF branch on the device (GEMM operands as raw addresses of the plan's type).
#[derive(Clone, Copy, Debug)]
struct BranchDev {
    norm: (DevPtr<f32>, DevPtr<f32>),
    fc1_w: u64,
    fc1_b: u64,
    fc2_w: u64,
    fc2_b: u64,
}

/// Everything the fusion needs, planned on the host.
struct FusionStage<'a> {
    st: Staging<'a>,
    dims: FusionDims,
    xyz: BranchSlots,
    rgb: BranchSlots,
    /// LN output of a branch (GEMM precision).
    normed: OpSlot,
    /// fc1 output of a branch (GEMM precision).
    hidden: OpSlot,
    /// fc2 output of a branch (f32), before it is placed into the fused rows.
    half: Slot<f32>,
    case: Slot<i32>,
    workspace: Option<Slot<u8>>,
    /// xyz fc1, xyz fc2, rgb fc1, rgb fc2.
    gemms: [GemmShape; 4],
}

fn stage_fusion<'a, S: TensorSource + ?Sized>(
    cfg: &ModelConfig,
    src: &'a S,
    p: Precision,
    workspace: WorkspacePlace,
) -> Result<FusionStage<'a>> {
    let dims = FusionDims::new(cfg)?;
    let fc = cfg
        .fusion
        .as_ref()
        .ok_or_else(|| cfg_err("no fusion network"))?;
    let w = FusionWeights::load(src, fc)?;
    let (xr, rr) = (dims.xyz_rows(), dims.rgb_rows());
    let (x, r) = (dims.xyz_dim, dims.rgb_dim);
    let (hx, hr) = (w.xyz.hidden, w.rgb.hidden);
    let [x1, x2] = FusionDims::branch_gemms(xr, x, hx, p)?;
    let [r1, r2] = FusionDims::branch_gemms(rr, r, hr, p)?;
    let mut st = Staging::new();
    let xyz = BranchSlots::stage(&mut st, &w.xyz, p);
    let rgb = BranchSlots::stage(&mut st, &w.rgb, p);
    let normed = OpSlot::add(&mut st.arena, p, (xr * x).max(rr * r));
    let hidden = OpSlot::add(&mut st.arena, p, (xr * hx).max(rr * hr));
    let half = st.arena.add((xr * x).max(rr * r));
    let case = st.arena.add(1);
    let workspace = (workspace == WorkspacePlace::Own).then(|| st.arena.add(GEMM_WORKSPACE_BYTES));
    Ok(FusionStage {
        st,
        dims,
        xyz,
        rgb,
        normed,
        hidden,
        half,
        case,
        workspace,
        gemms: [x1, x2, r1, r2],
    })
}

/// UFF on the device (module doc). Fields drop in declaration order: the GEMM plans, then
/// the arena, then the kernels; the device (shared) last.
struct Uff {
    plans: [GemmPlan; 4],
    /// Owns the weights and buffers the recorded work reads and writes.
    _arena: Arena,
    embed: EmbedKernels,
    /// The exact GELU of the f32 fc1 plans (f32 only).
    _ew: Option<Elementwise>,
    dims: FusionDims,
    precision: Precision,
    xyz: BranchDev,
    rgb: BranchDev,
    normed: u64,
    hidden: u64,
    half: DevPtr<f32>,
    case: DevPtr<i32>,
    _dev: Arc<Device>,
}

// SAFETY: driver and cuBLASLt handles and device addresses, used from one thread at a time
// (the engine's; the context is made current with `Device::bind`), as the parts it is made of.
unsafe impl Send for Uff {}

impl Uff {
    fn arena_plan<S: TensorSource + ?Sized>(
        cfg: &ModelConfig,
        src: &S,
        precision: Precision,
    ) -> Result<ArenaPlan> {
        Ok(stage_fusion(cfg, src, precision, WorkspacePlace::Device)?
            .st
            .arena)
    }

    fn new<S: TensorSource + ?Sized>(
        dev: Arc<Device>,
        cfg: &ModelConfig,
        src: &S,
        precision: Precision,
    ) -> Result<Self> {
        let s = stage_fusion(cfg, src, precision, WorkspacePlace::on(&dev)?)?;
        dev.bind()?;
        // Locals drop in reverse order on an early return: plans, modules, arena.
        let arena = dev.stage_arena(DeviceFusion::ARENA_REGION, &s.st.arena)?;
        dev.memset_u8(arena.ptr(s.st.base).raw(), 0, arena.bytes())?;
        s.st.upload(&dev, &arena)?;
        let embed = EmbedKernels::new(
            &dev,
            EmbedPlan {
                vit: None,
                point: None,
            },
        )?;
        let ew = match precision {
            Precision::F32 => Some(Elementwise::new(&dev)?),
            Precision::Bf16 => None,
        };
        let lt = dev.cublaslt()?;
        let ws = match s.workspace {
            Some(own) => Workspace {
                ptr: arena.ptr(own),
                bytes: own.len,
            },
            None => dev.shared_gemm_workspace()?.ok_or_else(|| {
                cfg_err("planned for the device's GEMM workspace, which the engine did not plan")
            })?,
        };
        let plan = |shape: GemmShape| GemmPlan::new(&dev, lt, shape, ws, ew.as_ref());
        let [x1, x2, r1, r2] = s.gemms;
        let plans = [plan(x1)?, plan(x2)?, plan(r1)?, plan(r2)?];
        let fusion = Uff {
            xyz: s.xyz.resolve(&arena),
            rgb: s.rgb.resolve(&arena),
            normed: s.normed.raw(&arena),
            hidden: s.hidden.raw(&arena),
            half: arena.ptr(s.half),
            case: arena.ptr(s.case),
            plans,
            _arena: arena,
            embed,
            _ew: ew,
            dims: s.dims,
            precision,
            _dev: dev.clone(),
        };
        // First use of every GEMM plan (cuBLASLt finishes loading then), on the zeroed
        // buffers: the branch output buffer serves as input, its contents do not matter.
        let d = fusion.dims;
        let [x1, x2, r1, r2] = &fusion.plans;
        unsafe {
            let h = fusion.half;
            fusion.branch(&dev, &fusion.xyz, [x1, x2], h, d.xyz_rows(), d.xyz_dim)?;
            fusion.branch(&dev, &fusion.rgb, [r1, r2], h, d.rgb_rows(), d.rgb_dim)?;
        }
        dev.synchronize()?;
        Ok(fusion)
    }

    /// LN, fc1 + GELU, fc2 of one branch over `rows` rows of `x` (packed, width `dim`) into
    /// the packed f32 `half` buffer.
    unsafe fn branch(
        &self,
        dev: &Device,
        w: &BranchDev,
        [fc1, fc2]: [&GemmPlan; 2],
        x: DevPtr<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let eps = self.dims.ln_eps;
        let none = DevPtr::null();
        match self.precision {
            Precision::F32 => self.embed.layernorm(
                dev,
                (rows, dim),
                x,
                dim,
                none,
                w.norm,
                eps,
                dp(self.normed),
                dim,
            )?,
            Precision::Bf16 => self.embed.layernorm_bf16(
                dev,
                (rows, dim),
                x,
                dim,
                none,
                w.norm,
                eps,
                dp(self.normed),
                dim,
            )?,
        }
        gemm(fc1, dev, self.normed, w.fc1_w, w.fc1_b, self.hidden)?;
        gemm(fc2, dev, self.hidden, w.fc2_w, w.fc2_b, self.half.raw())
    }

    unsafe fn record_branches(
        &self,
        dev: &Device,
        xyz: DevPtr<f32>,
        rgb: DevPtr<f32>,
        fused: DevPtr<f32>,
    ) -> Result<()> {
        let d = &self.dims;
        let fd = d.fused_dim();
        let [x1, x2, r1, r2] = &self.plans;
        // xyz half: MLP over every xyz cell, then into columns ..xyz_dim of the fused rows.
        self.branch(dev, &self.xyz, [x1, x2], xyz, d.xyz_rows(), d.xyz_dim)?;
        self.embed.copy_rows(
            dev,
            self.half,
            d.xyz_dim,
            fused,
            fd,
            d.xyz_rows(),
            d.xyz_dim,
        )?;
        // rgb half: MLP once per RGB cell, then pooled (repeated) over its xyz cells.
        self.branch(dev, &self.rgb, [r1, r2], rgb, d.rgb_rows(), d.rgb_dim)?;
        self.embed.adaptive_pool(
            dev,
            self.half,
            d.rgb_grid,
            d.rgb_dim,
            d.xyz_grid,
            d.rgb_dim,
            fused.offset(d.xyz_dim),
            fd,
        )
    }
}

/// Which fusion a model has.
enum Method {
    Uff(Box<Uff>),
    Radar(Box<DeviceRadar>),
}

/// The fusion on the device (module doc): UFF, or RADAR's when the model has it.
pub struct DeviceFusion {
    method: Method,
    dims: FusionDims,
    precision: Precision,
    dev: Arc<Device>,
}

impl DeviceFusion {
    /// The name of the fusion's region in the engine's arena (RADAR's token transformer
    /// adds [`DeviceRadar`]'s regions).
    pub const ARENA_REGION: &'static str = "fusion";

    /// The device memory the fusion of `model` needs, per arena region (host only; the GEMM
    /// workspace is the device's).
    pub fn arena_needs(
        model: &ModelFile,
        precision: Precision,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let cfg = model.config();
        match cfg.radar {
            Some(_) => DeviceRadar::arena_needs(cfg, model, precision),
            None => Ok(vec![(
                Self::ARENA_REGION,
                Uff::arena_plan(cfg, model, precision)?,
            )]),
        }
    }

    /// The fusion of `model` on `dev` (the engine's, shared with its other device stages).
    pub fn on_device(dev: Arc<Device>, model: &ModelFile, precision: Precision) -> Result<Self> {
        Self::from_source(dev, model.config(), model, precision)
    }

    /// [`DeviceFusion::on_device`] from any tensor store named as a model file (`fusion.*`,
    /// `radar.*`).
    pub fn from_source<S: TensorSource + ?Sized>(
        dev: Arc<Device>,
        cfg: &ModelConfig,
        src: &S,
        precision: Precision,
    ) -> Result<Self> {
        let dims = FusionDims::new(cfg)?;
        let method = match cfg.radar {
            Some(_) => Method::Radar(Box::new(DeviceRadar::new(
                dev.clone(),
                cfg,
                src,
                precision,
            )?)),
            None => Method::Uff(Box::new(Uff::new(dev.clone(), cfg, src, precision)?)),
        };
        Ok(DeviceFusion {
            method,
            dims,
            precision,
            dev,
        })
    }

    pub fn dims(&self) -> &FusionDims {
        &self.dims
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Whether this is RADAR's fusion (else UFF).
    pub fn is_radar(&self) -> bool {
        matches!(self.method, Method::Radar(_))
    }
    /// The device this stage was made on.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
    /// The part's modality case (0 complete, 1 RGB only, 2 cloud only), one device `i32`
    /// read by RADAR's fusion when its recorded work runs; UFF ignores it.
    pub fn case_ptr(&self) -> DevPtr<i32> {
        match &self.method {
            Method::Uff(u) => u.case,
            Method::Radar(r) => r.case_ptr(),
        }
    }

    /// Enqueues the fusion of one part (module doc): `xyz` (`xyz_grid² × xyz_dim`), `rgb`
    /// (`rgb_grid² × rgb_dim`) → `fused` (`xyz_grid² × fused_dim`, every value written);
    /// RADAR reads the case from [`DeviceFusion::case_ptr`] when the work runs.
    ///
    /// # Safety
    /// Pointers valid for those extents on `dev` (this stage's device); `fused` must not
    /// overlap the inputs.
    pub unsafe fn record(
        &self,
        dev: &Device,
        xyz: DevPtr<f32>,
        rgb: DevPtr<f32>,
        fused: DevPtr<f32>,
    ) -> Result<()> {
        match &self.method {
            Method::Uff(u) => u.record_branches(dev, xyz, rgb, fused),
            Method::Radar(r) => r.record(dev, xyz, rgb, Some(fused)),
        }
    }

    /// Uploads `xyz` and `rgb`, runs the fusion, returns the fused features (tests, tools).
    pub fn run(&self, xyz: &[f32], rgb: &[f32]) -> Result<Vec<f32>> {
        self.run_case(xyz, rgb, Case::Complete)
    }

    /// [`DeviceFusion::run`] for a part of `case` (written to [`DeviceFusion::case_ptr`]).
    pub fn run_case(&self, xyz: &[f32], rgb: &[f32], case: Case) -> Result<Vec<f32>> {
        let d = self.dims;
        if xyz.len() != d.xyz_len() || rgb.len() != d.rgb_len() {
            return Err(Error::Input(format!(
                "fusion input of {} xyz and {} rgb values; {} and {} expected",
                xyz.len(),
                rgb.len(),
                d.xyz_len(),
                d.rgb_len()
            )));
        }
        let dev = &self.dev;
        let mut plan = ArenaPlan::new();
        let (sx, sr, sf) = (
            plan.add::<f32>(d.xyz_len()),
            plan.add::<f32>(d.rgb_len()),
            plan.add::<f32>(d.fused_len()),
        );
        dev.bind()?;
        let io = Arena::new(dev, &plan)?;
        io.upload(dev, sx, xyz)?;
        io.upload(dev, sr, rgb)?;
        dev.upload(self.case_ptr().raw(), &[case as i32])?;
        unsafe { self.record(dev, io.ptr(sx), io.ptr(sr), io.ptr(sf))? };
        dev.synchronize()?;
        let mut out = vec![0f32; d.fused_len()];
        io.download(dev, sf, &mut out)?;
        Ok(out)
    }
}

/// The fusion as the extractor's [`FusionNetwork`] until the engine runs the whole part in
/// one graph: the features and the case go from pinned buffers to the device, the fusion
/// runs, the fused features come back — one recorded graph, one wait per part. Its input
/// and output buffers are a region of the engine's arena of their own.
pub struct FusionGraph {
    // Field order is drop order: the graph and buffers, the stage, the device last.
    /// The stage's own graph, kept besides the one-graph part: the engine's self-check
    /// at creation runs it against the CPU fusion in every case, and an engine with a
    /// network on the CPU fuses through it.
    graph: Graph,
    host_xyz: Pinned<f32>,
    host_rgb: Pinned<f32>,
    host_case: Pinned<i32>,
    host_fused: Pinned<f32>,
    _io: Arena,
    fusion: DeviceFusion,
    dev: Arc<Device>,
}

// SAFETY: as for `DeviceFusion`; the pinned buffers are this object's own.
unsafe impl Send for FusionGraph {}

/// The input and output buffers of a [`FusionGraph`].
struct IoSlots {
    plan: ArenaPlan,
    xyz: Slot<f32>,
    rgb: Slot<f32>,
    fused: Slot<f32>,
}

impl IoSlots {
    fn new(d: &FusionDims) -> Self {
        let mut plan = ArenaPlan::new();
        let (xyz, rgb, fused) = (
            plan.add(d.xyz_len()),
            plan.add(d.rgb_len()),
            plan.add(d.fused_len()),
        );
        IoSlots {
            plan,
            xyz,
            rgb,
            fused,
        }
    }
}

impl FusionGraph {
    /// The arena region of its input and output buffers.
    pub const IO_REGION: &'static str = "fusion io";

    /// The device memory of the fusion and of its input and output buffers.
    pub fn arena_needs(
        model: &ModelFile,
        precision: Precision,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let mut needs = DeviceFusion::arena_needs(model, precision)?;
        let io = IoSlots::new(&FusionDims::new(model.config())?);
        needs.push((Self::IO_REGION, io.plan));
        Ok(needs)
    }

    /// The fusion of `model` on `dev`, recorded once.
    pub fn on_device(dev: Arc<Device>, model: &ModelFile, precision: Precision) -> Result<Self> {
        let fusion = DeviceFusion::on_device(dev.clone(), model, precision)?;
        let d = fusion.dims;
        let io = IoSlots::new(&d);
        let arena = dev.stage_arena(Self::IO_REGION, &io.plan)?;
        let (xyz, rgb, fused) = (arena.ptr(io.xyz), arena.ptr(io.rgb), arena.ptr(io.fused));
        let host_xyz = Pinned::<f32>::new(&dev, d.xyz_len())?;
        let host_rgb = Pinned::<f32>::new(&dev, d.rgb_len())?;
        let host_case = Pinned::<i32>::new(&dev, 1)?;
        let mut host_fused = Pinned::<f32>::new(&dev, d.fused_len())?;
        let graph = Graph::capture(&dev, |g| {
            host_xyz.copy_to(g, xyz, d.xyz_len())?;
            host_rgb.copy_to(g, rgb, d.rgb_len())?;
            host_case.copy_to(g, fusion.case_ptr(), 1)?;
            // SAFETY: this object's own buffers, sized for the fusion's dimensions.
            unsafe { fusion.record(g, xyz, rgb, fused)? };
            host_fused.copy_from(g, fused, d.fused_len())
        })?;
        Ok(FusionGraph {
            graph,
            host_xyz,
            host_rgb,
            host_case,
            host_fused,
            _io: arena,
            fusion,
            dev,
        })
    }

    /// The recorded stage.
    pub fn fusion(&self) -> &DeviceFusion {
        &self.fusion
    }
}

impl FusionNetwork for FusionGraph {
    fn forward(&mut self, xyz: &[f32], rgb: &[f32], case: Case, fused: &mut [f32]) -> Result<()> {
        let (nx, nr, nf) = (
            self.host_xyz.len(),
            self.host_rgb.len(),
            self.host_fused.len(),
        );
        if xyz.len() != nx || rgb.len() != nr || fused.len() != nf {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "device fusion: {} xyz, {} rgb and {} fused values for a plan of {nx}, {nr} and {nf}",
                xyz.len(),
                rgb.len(),
                fused.len()
            ))));
        }
        self.host_xyz.as_mut_slice().copy_from_slice(xyz);
        self.host_rgb.as_mut_slice().copy_from_slice(rgb);
        self.host_case.as_mut_slice()[0] = case as i32;
        self.dev.bind()?;
        self.graph.replay(&self.dev)?;
        self.dev.synchronize()?;
        fused.copy_from_slice(self.host_fused.as_slice());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::random_model;

    #[test]
    fn the_stage_plans_four_products_and_disjoint_buffers() {
        let cfg = ModelConfig::small();
        let t = random_model(&cfg, 5);
        let mut bytes = Vec::new();
        for p in [Precision::F32, Precision::Bf16] {
            let s = stage_fusion(&cfg, &t, p, WorkspacePlace::Own).unwrap();
            let d = s.dims;
            let [x1, x2, r1, r2] = s.gemms;
            assert_eq!((x1.m, x1.n, x1.k), (d.xyz_rows(), 4 * d.xyz_dim, d.xyz_dim));
            assert_eq!(x1.epilogue, Epilogue::BiasGelu);
            assert_eq!(
                (x2.m, x2.n, x2.output),
                (d.xyz_rows(), d.xyz_dim, Precision::F32)
            );
            assert_eq!((r1.m, r1.k), (d.rgb_rows(), d.rgb_dim));
            assert_eq!((r2.n, r2.output), (d.rgb_dim, Precision::F32));
            assert_eq!(s.xyz.fc1_b.precision(), p);
            assert!(s.normed.elements() >= d.xyz_len().max(d.rgb_len()));
            assert!(s.half.len >= d.xyz_len().max(d.rgb_len()));
            bytes.push(s.st.arena.bytes());
        }
        assert!(bytes[1] < bytes[0], "bf16 {} vs f32 {}", bytes[1], bytes[0]);
    }

    #[test]
    fn grids_that_do_not_repeat_are_refused() {
        let mut cfg = ModelConfig::small();
        cfg.preprocess.xyz_grid += 1;
        let e = FusionDims::new(&cfg).unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        cfg.fusion = None;
        assert!(FusionDims::new(&cfg).is_err());
    }
}
