//! The full ViT and Point-MAE forwards on the device: the pre-norm transformer
//! of `cpu::transformer` built from this backend's pieces — cuBLASLt GEMMs
//! ([`super::gemm`]), fused attention ([`Attention`]) and the embed kernels
//! ([`super::embed`]: RGB input, patch unfold, token assembly, LayerNorm, position
//! embedding, strided outputs).
//!
//! The block logic lives in one place (the private `Encoder`); two thin wrappers add the
//! model-specific ends:
//! - [`DeviceVit`]: u8 image ([`DeviceVit::record_image`]) or normalised CHW input
//!   ([`DeviceVit::record_input`]) → `patches × dim` features (class token dropped, token
//!   `t` ↔ grid cell (t / grid, t % grid)), as `cpu::vit::vit_forward`.
//! - [`DevicePointMae`]: group-encoder tokens (`groups × dim`) and group centers
//!   (`groups × 3`) → `groups × feature_dim` (the outputs of `out_layers` through the final
//!   norm, concatenated), as the transformer part of `cpu::point_mae::point_mae_forward`.
//!
//! Creation (once, from a [`ModelFile`] or any [`TensorSource`]): the configuration is
//! validated ([`EncoderDims`]: a head dimension the attention kernels are built for, 64 or
//! 32), one
//! arena is planned on the host (weights, activations, the cuBLASLt workspace unless the
//! device shares one), taken from the device ([`Device::stage_arena`]), zeroed and filled
//! (bf16 copies of every GEMM weight on the fast path), the kernel modules are obtained
//! from the device's table, every GEMM planned on the device's cuBLASLt handle, and one
//! forward runs on the zeroed buffers: cuBLASLt and the driver finish loading on first use,
//! so a later `Graph::capture` records launches only.
//!
//! Per part: the `record*` methods enqueue the whole forward on the device's stream —
//! kernel launches, cuBLASLt calls and (Point-MAE) one device copy, fixed pointers, no
//! allocation, no synchronisation — so they can be recorded into a [`super::Graph`]. The
//! `run*` methods (upload, record, synchronise, download) are for tests and tools.
//!
//! One block, `x ← x + proj(attn(LN₁(x)))`, `x ← x + fc2(GELU(fc1(LN₂(x))))`; the residual
//! stream `x` is f32 in both precisions:
//!
//! | step      | [`Precision::F32`] (parity path)   | [`Precision::Bf16`] (fast path)          |
//! |-----------|-------------------------------------|------------------------------------------|
//! | LN₁, LN₂  | embed LayerNorm (f64 statistics, the CPU's `layer_norm_row`), f32 out | f32 statistics (stated bound, kernels/embed.cu), bf16 out |
//! | qkv       | f32 GEMM (+ bias: ViT only)         | bf16 GEMM, bf16 out (bf16 bias)          |
//! | attention | `attention_f32`                     | `attention_bf16` (tensor cores), keys split over blocks and merged by `attention_combine_bf16` when the grid is small |
//! | proj, fc2 | f32 GEMM accumulating into `x` (+ f32 bias) | bf16 GEMM with f32 output accumulating into `x` (+ f32 bias) |
//! | fc1       | f32 GEMM, then the exact erf GELU kernel | bf16 GEMM with cuBLASLt's GELU_BIAS (tanh form) |
//!
//! The residual adds are the GEMMs' `beta = 1` (no add kernel). For Point-MAE, LN₁ also
//! adds the position embedding into `x` first (`x = Block_i(x + pos)`, SPEC §3.5).
//!
//! Activations (per model): `x` (tokens × dim, f32); `small` (tokens × dim, GEMM
//! precision: the LN output, then the attention output — the LN output is dead once the
//! qkv GEMM has read it); `big` (the qkv matrix, then the MLP hidden layer; for the ViT
//! first the patch matrix); `attention_parts` (bf16 only: the key splits' partial results,
//! [`Attention::parts_len`]).
//!
//! Ownership and drop order: a model owns its `Encoder`, whose fields drop in declaration
//! order: the GEMM plans, then the arena (weights, activations, and the plans' workspace
//! when the model is used alone; in an engine a region of the engine's arena and the
//! device's shared workspace). The cuBLASLt handle and the kernel modules are the
//! device's. The [`Device`] is not owned: drop every model before the device that made it.

use half::bf16;

use crate::backend::Precision;
use crate::config::{ModelConfig, PointConfig, VitConfig};
use crate::cpu::point_mae::PointMaeWeights;
use crate::cpu::transformer::BlockWeights;
use crate::cpu::vit::VitWeights;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{Epilogue, GemmPlan, GemmShape, Workspace, GEMM_WORKSPACE_BYTES};
use crate::cuda::device::Device;
use crate::cuda::ops::attention::{Attention, ATTENTION_HEAD_DIMS};
use crate::cuda::ops::embed::{
    EmbedKernels, EmbedPlan, PointEmbedPlan, ResizeBuffers, ResizeSlots, RgbGeometry, VitEmbedPlan,
};
use crate::cuda::ops::gelu::Elementwise;
use crate::format::{ModelFile, TensorSource};
use crate::pipeline::preprocess::PreprocessMode;
use crate::{Error, Result};

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("CUDA forward: {msg}"))
}

/// A typed view of a raw device address.
pub(crate) fn dp<T>(raw: u64) -> DevPtr<T> {
    let mut p = DevPtr::<T>::null();
    p.0 = raw;
    p
}

/// bf16 bit patterns of `v` (round to nearest even), the fast path's weight format.
pub fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

/// Which kinds of work a `record_kinds` call enqueues (profiling: the share of the GEMMs
/// and of attention in a forward). A forward is all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    /// cuBLASLt products (and the exact-GELU kernel of the f32 fc1).
    pub gemm: bool,
    /// The fused attention kernels.
    pub attention: bool,
    /// Everything else: input, im2col, tokens, LayerNorms, position embedding, outputs.
    pub other: bool,
}

impl Kinds {
    pub const ALL: Kinds = Kinds {
        gemm: true,
        attention: true,
        other: true,
    };
    pub const GEMM: Kinds = Kinds {
        gemm: true,
        attention: false,
        other: false,
    };
    pub const ATTENTION: Kinds = Kinds {
        gemm: false,
        attention: true,
        other: false,
    };
    pub const OTHER: Kinds = Kinds {
        gemm: false,
        attention: false,
        other: true,
    };
}

/// A replacement of a block's attention: `(device, qkv, out)` with the addresses of the
/// qkv matrix and of the attention output ([`DeviceBlocks::record`]).
pub(crate) type Attend<'a> = &'a dyn Fn(&Device, u64, u64) -> Result<()>;

/// The sizes of one encoder's transformer blocks, validated for the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderDims {
    pub tokens: usize,
    pub dim: usize,
    pub heads: usize,
    pub mlp: usize,
    pub depth: usize,
    pub ln_eps: f32,
    /// Whether the qkv layer has a bias (ViT: yes, Point-MAE: no).
    pub qkv_bias: bool,
}

impl EncoderDims {
    /// The ViT's blocks (class token included in `tokens`).
    pub fn vit(c: &VitConfig) -> Result<Self> {
        if c.patch_size == 0 || c.image_size == 0 {
            return Err(cfg_err(format!("ViT with a zero size: {c:?}")));
        }
        EncoderDims {
            tokens: c.tokens(),
            dim: c.dim as usize,
            heads: c.heads as usize,
            mlp: c.mlp_dim as usize,
            depth: c.depth as usize,
            ln_eps: c.ln_eps,
            qkv_bias: true,
        }
        .checked("ViT")
    }

    /// The Point-MAE encoder's blocks (one token per group).
    pub fn point(c: &PointConfig) -> Result<Self> {
        EncoderDims {
            tokens: c.num_groups as usize,
            dim: c.dim as usize,
            heads: c.heads as usize,
            mlp: c.mlp_dim as usize,
            depth: c.depth as usize,
            ln_eps: c.ln_eps,
            qkv_bias: false,
        }
        .checked("point encoder")
    }

    fn checked(self, what: &str) -> Result<Self> {
        let EncoderDims {
            tokens,
            dim,
            heads,
            mlp,
            depth,
            ln_eps,
            ..
        } = self;
        if tokens == 0 || dim == 0 || heads == 0 || mlp == 0 || depth == 0 {
            return Err(cfg_err(format!(
                "{what} with a zero size: {tokens} tokens, width {dim}, {heads} heads, mlp {mlp}, depth {depth}"
            )));
        }
        if !dim.is_multiple_of(heads) || !ATTENTION_HEAD_DIMS.contains(&(dim / heads)) {
            let hd = if dim.is_multiple_of(heads) {
                format!("a head dimension of {}", dim / heads)
            } else {
                "not a whole head dimension".to_string()
            };
            return Err(cfg_err(format!(
                "{what}: width {dim} over {heads} heads is {hd}; the CUDA attention kernels need a head dimension of {}",
                ATTENTION_HEAD_DIMS.map(|d| d.to_string()).join(" or ")
            )));
        }
        if !(ln_eps > 0.0 && ln_eps.is_finite()) {
            return Err(cfg_err(format!("{what}: LayerNorm eps {ln_eps}")));
        }
        Attention::check_shape(tokens, heads)?;
        for p in [Precision::F32, Precision::Bf16] {
            self.block_gemms(p)?;
        }
        Ok(self)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// The four products of a block, in order qkv, proj, fc1, fc2. proj and fc2 write f32
    /// and accumulate into the residual stream; fc1 applies GELU.
    pub fn block_gemms(&self, p: Precision) -> Result<[GemmShape; 4]> {
        let (t, d, h) = (self.tokens, self.dim, self.mlp);
        let qkv = if self.qkv_bias {
            Epilogue::Bias
        } else {
            Epilogue::None
        };
        let residual = |s: GemmShape| s.with_output(Precision::F32)?.accumulating();
        Ok([
            GemmShape::new(t, 3 * d, d, p, qkv)?,
            residual(GemmShape::new(t, d, d, p, Epilogue::Bias)?)?,
            GemmShape::new(t, h, d, p, Epilogue::BiasGelu)?,
            residual(GemmShape::new(t, d, h, p, Epilogue::Bias)?)?,
        ])
    }

    /// Floating-point operations of the blocks' dense layers (all blocks).
    pub fn gemm_flops(&self) -> f64 {
        let (t, d, h) = (self.tokens as f64, self.dim as f64, self.mlp as f64);
        self.depth as f64 * 2.0 * t * (4.0 * d * d + 2.0 * d * h)
    }

    /// Floating-point operations of the blocks' attention (all blocks).
    pub fn attention_flops(&self) -> f64 {
        self.depth as f64 * Attention::flops_with_head_dim(self.tokens, self.heads, self.head_dim())
    }
}

/// An arena slot of GEMM operands in a precision's element type.
#[derive(Clone, Copy, Debug)]
pub enum OpSlot {
    F32(Slot<f32>),
    /// bf16 bit patterns.
    Bf16(Slot<u16>),
}

impl OpSlot {
    pub fn add(arena: &mut ArenaPlan, p: Precision, len: usize) -> Self {
        match p {
            Precision::F32 => OpSlot::F32(arena.add(len)),
            Precision::Bf16 => OpSlot::Bf16(arena.add(len)),
        }
    }
    pub fn elements(&self) -> usize {
        match self {
            OpSlot::F32(s) => s.len,
            OpSlot::Bf16(s) => s.len,
        }
    }
    pub fn offset(&self) -> usize {
        match self {
            OpSlot::F32(s) => s.offset,
            OpSlot::Bf16(s) => s.offset,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            OpSlot::F32(s) => s.bytes(),
            OpSlot::Bf16(s) => s.bytes(),
        }
    }
    pub fn precision(&self) -> Precision {
        match self {
            OpSlot::F32(_) => Precision::F32,
            OpSlot::Bf16(_) => Precision::Bf16,
        }
    }
    pub(crate) fn raw(&self, arena: &Arena) -> u64 {
        match *self {
            OpSlot::F32(s) => arena.ptr(s).raw(),
            OpSlot::Bf16(s) => arena.ptr(s).raw(),
        }
    }
}

/// Activation slots of one encoder.
#[derive(Clone, Copy, Debug)]
pub struct ActivationSlots {
    /// The residual stream, `tokens × dim` f32.
    pub x: Slot<f32>,
    /// LN output / attention output, `tokens × dim`.
    pub small: OpSlot,
    /// qkv / MLP hidden layer (/ ViT patch matrix).
    pub big: OpSlot,
    /// The GEMM plans' workspace; `None` when the device's shared one is used.
    pub workspace: Option<Slot<u8>>,
    /// Partial results of bf16 attention split over keys ([`Attention::parts_len`]; empty
    /// for f32).
    pub attention_parts: Slot<f32>,
}

/// Where an encoder's GEMM workspace lives: in its own arena (a model used alone), or the
/// device's one that the engine planned for all its stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspacePlace {
    Own,
    Device,
}

impl WorkspacePlace {
    /// The device's shared workspace when the engine planned one, else the model's own.
    pub(crate) fn on(dev: &Device) -> Result<Self> {
        Ok(match dev.shared_gemm_workspace()? {
            Some(_) => WorkspacePlace::Device,
            None => WorkspacePlace::Own,
        })
    }
}

impl ActivationSlots {
    /// Plans the activations of `dims` in precision `p`; `big` holds at least `big_min`
    /// elements besides the qkv matrix and the hidden layer.
    pub fn plan(
        dims: &EncoderDims,
        p: Precision,
        big_min: usize,
        workspace: WorkspacePlace,
        arena: &mut ArenaPlan,
    ) -> Self {
        let (t, d) = (dims.tokens, dims.dim);
        ActivationSlots {
            x: arena.add(t * d),
            small: OpSlot::add(arena, p, t * d),
            big: OpSlot::add(arena, p, (t * 3 * d).max(t * dims.mlp).max(big_min)),
            workspace: (workspace == WorkspacePlace::Own).then(|| arena.add(GEMM_WORKSPACE_BYTES)),
            attention_parts: arena.add(match p {
                Precision::F32 => 0,
                Precision::Bf16 => Attention::parts_len(t, dims.heads),
            }),
        }
    }
}

/// The arena being planned and the host tensors waiting to be uploaded into it (also the
/// fusion stage's, `super::fusion`).
pub(crate) struct Staging<'a> {
    pub(crate) arena: ArenaPlan,
    /// Zero-length slot at offset 0: the arena's base, for zeroing it.
    pub(crate) base: Slot<u8>,
    uploads: Vec<(OpSlot, &'a [f32])>,
}

impl<'a> Staging<'a> {
    pub(crate) fn new() -> Self {
        let mut arena = ArenaPlan::new();
        let base = arena.add(0);
        Staging {
            arena,
            base,
            uploads: Vec::new(),
        }
    }
    /// A GEMM operand in the precision's element type.
    pub(crate) fn weight(&mut self, p: Precision, data: &'a [f32]) -> OpSlot {
        let s = OpSlot::add(&mut self.arena, p, data.len());
        self.uploads.push((s, data));
        s
    }
    /// An f32 tensor (norms, f32-output biases, embeddings).
    pub(crate) fn f32(&mut self, data: &'a [f32]) -> Slot<f32> {
        let s = self.arena.add(data.len());
        self.uploads.push((OpSlot::F32(s), data));
        s
    }
    pub(crate) fn upload(&self, dev: &Device, arena: &Arena) -> Result<()> {
        for (slot, data) in &self.uploads {
            match *slot {
                OpSlot::F32(s) => arena.upload(dev, s, data)?,
                OpSlot::Bf16(s) => arena.upload(dev, s, &bf16_bits(data))?,
            }
        }
        Ok(())
    }
}

/// A block's weights in the arena.
#[derive(Clone, Copy, Debug)]
struct BlockSlots {
    norm1: (Slot<f32>, Slot<f32>),
    qkv_w: OpSlot,
    qkv_b: Option<OpSlot>,
    proj_w: OpSlot,
    /// f32: the proj product writes f32.
    proj_b: Slot<f32>,
    norm2: (Slot<f32>, Slot<f32>),
    fc1_w: OpSlot,
    fc1_b: OpSlot,
    fc2_w: OpSlot,
    /// f32: the fc2 product writes f32.
    fc2_b: Slot<f32>,
}

impl BlockSlots {
    fn stage<'a>(st: &mut Staging<'a>, w: &BlockWeights<'a>, p: Precision) -> Self {
        BlockSlots {
            norm1: (st.f32(w.norm1_w), st.f32(w.norm1_b)),
            qkv_w: st.weight(p, w.qkv_w),
            qkv_b: w.qkv_b.map(|b| st.weight(p, b)),
            proj_w: st.weight(p, w.proj_w),
            proj_b: st.f32(w.proj_b),
            norm2: (st.f32(w.norm2_w), st.f32(w.norm2_b)),
            fc1_w: st.weight(p, w.fc1_w),
            fc1_b: st.weight(p, w.fc1_b),
            fc2_w: st.weight(p, w.fc2_w),
            fc2_b: st.f32(w.fc2_b),
        }
    }

    fn resolve(&self, a: &Arena) -> BlockDev {
        BlockDev {
            norm1: (a.ptr(self.norm1.0), a.ptr(self.norm1.1)),
            qkv_w: self.qkv_w.raw(a),
            qkv_b: self.qkv_b.map_or(0, |b| b.raw(a)),
            proj_w: self.proj_w.raw(a),
            proj_b: a.ptr(self.proj_b).raw(),
            norm2: (a.ptr(self.norm2.0), a.ptr(self.norm2.1)),
            fc1_w: self.fc1_w.raw(a),
            fc1_b: self.fc1_b.raw(a),
            fc2_w: self.fc2_w.raw(a),
            fc2_b: a.ptr(self.fc2_b).raw(),
        }
    }
}

/// A block's weights on the device (GEMM operands as raw addresses: their element type is
/// the plan's).
#[derive(Clone, Copy, Debug)]
struct BlockDev {
    norm1: (DevPtr<f32>, DevPtr<f32>),
    qkv_w: u64,
    /// 0 without a bias.
    qkv_b: u64,
    proj_w: u64,
    proj_b: u64,
    norm2: (DevPtr<f32>, DevPtr<f32>),
    fc1_w: u64,
    fc1_b: u64,
    fc2_w: u64,
    fc2_b: u64,
}

/// Everything an encoder needs, planned on the host (no device involved).
struct EncoderStage<'a> {
    st: Staging<'a>,
    dims: EncoderDims,
    precision: Precision,
    blocks: Vec<BlockSlots>,
    act: ActivationSlots,
    gemms: [GemmShape; 4],
    /// The ViT's patch embedding.
    extra: Option<GemmShape>,
}

impl<'a> EncoderStage<'a> {
    /// Adds the blocks' weights and the activations to `st` (which already holds the
    /// model's own tensors).
    fn new(
        dims: EncoderDims,
        precision: Precision,
        mut st: Staging<'a>,
        weights: &[BlockWeights<'a>],
        big_min: usize,
        extra: Option<GemmShape>,
        workspace: WorkspacePlace,
    ) -> Result<Self> {
        if weights.len() != dims.depth {
            return Err(cfg_err(format!(
                "{} blocks of weights for a depth of {}",
                weights.len(),
                dims.depth
            )));
        }
        if dims.qkv_bias != weights.iter().all(|w| w.qkv_b.is_some()) {
            return Err(cfg_err("qkv biases do not match the configuration"));
        }
        let gemms = dims.block_gemms(precision)?;
        let blocks = weights
            .iter()
            .map(|w| BlockSlots::stage(&mut st, w, precision))
            .collect();
        let act = ActivationSlots::plan(&dims, precision, big_min, workspace, &mut st.arena);
        Ok(EncoderStage {
            st,
            dims,
            precision,
            blocks,
            act,
            gemms,
            extra,
        })
    }
}

/// The device side of one encoder: plans, handle, memory, kernels, and the block logic.
/// Fields drop in declaration order (see the module notes).
struct Encoder {
    plans: [GemmPlan; 4],
    extra: Option<GemmPlan>,
    arena: Arena,
    embed: EmbedKernels,
    attention: Attention,
    /// The exact GELU of the f32 fc1 plan (f32 only).
    _ew: Option<Elementwise>,
    dims: EncoderDims,
    precision: Precision,
    weights: Vec<BlockDev>,
    x: DevPtr<f32>,
    small: u64,
    big: u64,
    attention_parts: DevPtr<f32>,
}

/// One product with the operand types of its plan (`bias` 0 when the plan has none).
///
/// # Safety
/// The addresses must hold the plan's operands (see [`GemmPlan::run`]).
pub(crate) unsafe fn gemm(
    plan: &GemmPlan,
    dev: &Device,
    x: u64,
    w: u64,
    bias: u64,
    y: u64,
) -> Result<()> {
    let s = plan.shape();
    match (s.precision, s.output) {
        (Precision::F32, Precision::F32) => plan.run::<f32>(dev, dp(x), dp(w), dp(bias), dp(y)),
        (Precision::Bf16, Precision::Bf16) => plan.run::<u16>(dev, dp(x), dp(w), dp(bias), dp(y)),
        (Precision::Bf16, Precision::F32) => {
            plan.run_mixed::<u16, f32>(dev, dp(x), dp(w), dp(bias), dp(y))
        }
        (Precision::F32, Precision::Bf16) => Err(cfg_err("an f32 product with bf16 output")),
    }
}

impl Encoder {
    /// Takes the model's memory (`region` of the engine's arena, or its own), fills it,
    /// obtains the kernels, plans the GEMMs on the device's cuBLASLt handle.
    fn build(
        dev: &Device,
        region: &'static str,
        stage: &EncoderStage<'_>,
        embed_plan: EmbedPlan,
    ) -> Result<Encoder> {
        dev.bind()?;
        // Locals drop in reverse order on an early return: plans, modules, arena.
        let arena = dev.stage_arena(region, &stage.st.arena)?;
        dev.memset_u8(arena.ptr(stage.st.base).raw(), 0, arena.bytes())?;
        stage.st.upload(dev, &arena)?;
        let embed = EmbedKernels::new(dev, embed_plan)?;
        let attention = Attention::with_head_dim(dev, stage.dims.head_dim())?;
        let ew = match stage.precision {
            Precision::F32 => Some(Elementwise::new(dev)?),
            Precision::Bf16 => None,
        };
        let lt = dev.cublaslt()?;
        let ws = match stage.act.workspace {
            Some(own) => Workspace {
                ptr: arena.ptr(own),
                bytes: own.len,
            },
            None => dev.shared_gemm_workspace_for(region)?.ok_or_else(|| {
                cfg_err("planned for the device's GEMM workspace, which the engine did not plan")
            })?,
        };
        let plan = |s: GemmShape| GemmPlan::new(dev, lt, s, ws, ew.as_ref());
        let [qkv, proj, fc1, fc2] = stage.gemms;
        let plans = [plan(qkv)?, plan(proj)?, plan(fc1)?, plan(fc2)?];
        let extra = stage.extra.map(plan).transpose()?;
        let weights = stage.blocks.iter().map(|b| b.resolve(&arena)).collect();
        let (x, small, big) = (
            arena.ptr(stage.act.x),
            stage.act.small.raw(&arena),
            stage.act.big.raw(&arena),
        );
        let attention_parts = arena.ptr(stage.act.attention_parts);
        Ok(Encoder {
            plans,
            extra,
            arena,
            embed,
            attention,
            _ew: ew,
            dims: stage.dims,
            precision: stage.precision,
            weights,
            x,
            small,
            big,
            attention_parts,
        })
    }

    /// `small = LN(x)` (after `x += pos` when `pos` is not null).
    unsafe fn layernorm(
        &self,
        dev: &Device,
        pos: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
    ) -> Result<()> {
        let (t, d, eps) = (self.dims.tokens, self.dims.dim, self.dims.ln_eps);
        match self.precision {
            Precision::F32 => {
                self.embed
                    .layernorm(dev, (t, d), self.x, d, pos, norm, eps, dp(self.small), d)
            }
            Precision::Bf16 => self.embed.layernorm_bf16(
                dev,
                (t, d),
                self.x,
                d,
                pos,
                norm,
                eps,
                dp::<bf16>(self.small),
                d,
            ),
        }
    }

    /// Every block on `x`; `pos` (null for the ViT) is added to `x` before each block;
    /// `after(i)` runs after block `i` (with the `other` kind).
    unsafe fn record_blocks(
        &self,
        dev: &Device,
        pos: DevPtr<f32>,
        kinds: Kinds,
        after: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        self.record_blocks_with(dev, pos, kinds, after, None)
    }

    /// [`Encoder::record_blocks`], with `attend(dev, qkv, out)` (addresses of the `big`
    /// and `small` buffers) in place of the attention kernel when given.
    unsafe fn record_blocks_with(
        &self,
        dev: &Device,
        pos: DevPtr<f32>,
        kinds: Kinds,
        mut after: impl FnMut(usize) -> Result<()>,
        attend: Option<Attend<'_>>,
    ) -> Result<()> {
        let (t, heads) = (self.dims.tokens, self.dims.heads);
        let scale = 1.0 / (self.dims.head_dim() as f32).sqrt();
        let [qkv, proj, fc1, fc2] = &self.plans;
        let x = self.x.raw();
        for (i, w) in self.weights.iter().enumerate() {
            if kinds.other {
                self.layernorm(dev, pos, w.norm1)?;
            }
            if kinds.gemm {
                gemm(qkv, dev, self.small, w.qkv_w, w.qkv_b, self.big)?;
            }
            if let (true, Some(attend)) = (kinds.attention, attend) {
                attend(dev, self.big, self.small)?;
            } else if kinds.attention {
                match self.precision {
                    Precision::F32 => self.attention.run_f32(
                        dev,
                        dp(self.big),
                        dp(self.small),
                        t,
                        heads,
                        scale,
                    )?,
                    Precision::Bf16 => self.attention.run_bf16(
                        dev,
                        dp(self.big),
                        dp(self.small),
                        self.attention_parts,
                        t,
                        heads,
                        scale,
                    )?,
                }
            }
            if kinds.gemm {
                gemm(proj, dev, self.small, w.proj_w, w.proj_b, x)?;
            }
            if kinds.other {
                self.layernorm(dev, DevPtr::null(), w.norm2)?;
            }
            if kinds.gemm {
                gemm(fc1, dev, self.small, w.fc1_w, w.fc1_b, self.big)?;
                gemm(fc2, dev, self.big, w.fc2_w, w.fc2_b, x)?;
            }
            if kinds.other {
                after(i)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Blocks alone

/// A stack of pre-norm blocks with qkv biases (`cpu::transformer`'s, the ViT's kind) over a
/// fixed number of tokens, for other stages (RADAR's token transformer in
/// [`super::fusion`]): the residual stream [`DeviceBlocks::x`] is transformed in place.
pub(crate) struct DeviceBlocks {
    enc: Encoder,
}

// SAFETY: as for `DeviceVit`.
unsafe impl Send for DeviceBlocks {}

impl DeviceBlocks {
    fn stage<'a>(
        dims: EncoderDims,
        p: Precision,
        weights: &[BlockWeights<'a>],
        workspace: WorkspacePlace,
    ) -> Result<EncoderStage<'a>> {
        let dims = dims.checked("transformer blocks")?;
        EncoderStage::new(dims, p, Staging::new(), weights, 0, None, workspace)
    }

    /// The device memory of the blocks (weights and activations; the GEMM workspace is the
    /// device's).
    pub(crate) fn arena_plan(
        dims: EncoderDims,
        p: Precision,
        weights: &[BlockWeights<'_>],
    ) -> Result<ArenaPlan> {
        Ok(Self::stage(dims, p, weights, WorkspacePlace::Device)?
            .st
            .arena)
    }

    /// The blocks in `region` of the engine's arena (or their own arena).
    pub(crate) fn new(
        dev: &Device,
        region: &'static str,
        dims: EncoderDims,
        p: Precision,
        weights: &[BlockWeights<'_>],
    ) -> Result<Self> {
        let stage = Self::stage(dims, p, weights, WorkspacePlace::on(dev)?)?;
        let plan = EmbedPlan {
            vit: None,
            point: None,
        };
        Ok(DeviceBlocks {
            enc: Encoder::build(dev, region, &stage, plan)?,
        })
    }

    /// The residual stream, `tokens × dim` f32.
    pub(crate) fn x(&self) -> DevPtr<f32> {
        self.enc.x
    }

    pub(crate) fn attention(&self) -> &Attention {
        &self.enc.attention
    }

    /// Enqueues every block on [`DeviceBlocks::x`]; `after(i)` runs after block `i`;
    /// `attend(dev, qkv, out)` replaces the attention kernel when given.
    ///
    /// # Safety
    /// As the forwards' `record`: the blocks' own buffers, on their device.
    pub(crate) unsafe fn record(
        &self,
        dev: &Device,
        after: impl FnMut(usize) -> Result<()>,
        attend: Option<Attend<'_>>,
    ) -> Result<()> {
        self.enc
            .record_blocks_with(dev, DevPtr::null(), Kinds::ALL, after, attend)
    }
}

// ---------------------------------------------------------------------------------------
// ViT

/// The ViT's own tensors and buffers, planned on the host.
struct VitStage<'a> {
    enc: EncoderStage<'a>,
    embed: EmbedPlan,
    patch_w: OpSlot,
    patch_b: Slot<f32>,
    pos: Slot<f32>,
    cls: Slot<f32>,
    norm: (Slot<f32>, Slot<f32>),
    resize: ResizeSlots,
    input: Slot<f32>,
    image: Slot<u8>,
    out: Slot<f32>,
}

fn stage_vit<'a, S: TensorSource + ?Sized>(
    cfg: &ModelConfig,
    src: &'a S,
    max_width: usize,
    max_height: usize,
    p: Precision,
    workspace: WorkspacePlace,
) -> Result<VitStage<'a>> {
    let vc = cfg
        .vit
        .as_ref()
        .ok_or_else(|| cfg_err(format!("model '{}' has no ViT", cfg.name)))?;
    let dims = EncoderDims::vit(vc)?;
    let embed = EmbedPlan::new(Some(vc), None, &cfg.preprocess, max_width, max_height)?;
    let vp = embed.vit()?.clone();
    let w = VitWeights::load(src, vc)?;
    let mut st = Staging::new();
    let patch_w = st.weight(p, w.patch_w);
    let patch_b = st.f32(w.patch_b);
    let pos = st.f32(w.pos_embed);
    let cls = st.f32(w.cls_token);
    let norm = (st.f32(w.norm_w), st.f32(w.norm_b));
    let resize = ResizeSlots::plan(&vp, &mut st.arena);
    let input = st.arena.add(vp.input_len());
    let image = st.arena.add(vp.image_bytes());
    let out = st.arena.add(vp.features_len());
    // Patch embedding: [patches, C·p·p] · [dim, C·p·p]ᵀ into the token rows 1.. (f32).
    let patch =
        GemmShape::new(vp.patches, vp.dim, vp.k, p, Epilogue::None)?.with_output(Precision::F32)?;
    let enc = EncoderStage::new(
        dims,
        p,
        st,
        &w.blocks,
        vp.patch_matrix_len(),
        Some(patch),
        workspace,
    )?;
    Ok(VitStage {
        enc,
        embed,
        patch_w,
        patch_b,
        pos,
        cls,
        norm,
        resize,
        input,
        image,
        out,
    })
}

/// The DINO ViT (SPEC §2) on the device.
pub struct DeviceVit {
    enc: Encoder,
    plan: VitEmbedPlan,
    patch_w: u64,
    patch_b: DevPtr<f32>,
    pos: DevPtr<f32>,
    cls: DevPtr<f32>,
    norm: (DevPtr<f32>, DevPtr<f32>),
    resize: ResizeBuffers,
    input: Slot<f32>,
    image: Slot<u8>,
    out: Slot<f32>,
}

// SAFETY: driver and cuBLASLt handles and device addresses, used from one thread at a time
// (the engine's; the context is made current with `Device::bind`), as the parts it is
// made of.
unsafe impl Send for DeviceVit {}

impl DeviceVit {
    /// The name of the ViT's region in the engine's arena.
    pub const ARENA_REGION: &'static str = "vit";

    /// The device memory the ViT of `model` needs (host only: the engine plans its arena
    /// from it; the GEMM workspace is the device's).
    pub fn arena_plan(
        model: &ModelFile,
        max_width: usize,
        max_height: usize,
        precision: Precision,
    ) -> Result<ArenaPlan> {
        let s = stage_vit(
            model.config(),
            model,
            max_width,
            max_height,
            precision,
            WorkspacePlace::Device,
        )?;
        Ok(s.enc.st.arena)
    }

    /// The ViT of a model file, for RGB inputs up to `max_width × max_height`, running in
    /// `precision`.
    pub fn new(
        dev: &Device,
        model: &ModelFile,
        max_width: usize,
        max_height: usize,
        precision: Precision,
    ) -> Result<Self> {
        Self::from_source(dev, model.config(), model, max_width, max_height, precision)
    }

    /// [`DeviceVit::new`] from any tensor store named as a model file (`vit.*`).
    pub fn from_source<S: TensorSource + ?Sized>(
        dev: &Device,
        cfg: &ModelConfig,
        src: &S,
        max_width: usize,
        max_height: usize,
        precision: Precision,
    ) -> Result<Self> {
        let place = WorkspacePlace::on(dev)?;
        let s = stage_vit(cfg, src, max_width, max_height, precision, place)?;
        let enc = Encoder::build(dev, Self::ARENA_REGION, &s.enc, s.embed.clone())?;
        let a = &enc.arena;
        let vit = DeviceVit {
            plan: s.embed.vit()?.clone(),
            patch_w: s.patch_w.raw(a),
            patch_b: a.ptr(s.patch_b),
            pos: a.ptr(s.pos),
            cls: a.ptr(s.cls),
            norm: (a.ptr(s.norm.0), a.ptr(s.norm.1)),
            resize: s.resize.ptrs(a),
            input: s.input,
            image: s.image,
            out: s.out,
            enc,
        };
        // First use of every plan and kernel, on the zeroed buffers.
        unsafe { vit.record_input(dev, vit.input_ptr(), vit.output_ptr())? };
        dev.synchronize()?;
        Ok(vit)
    }

    pub fn plan(&self) -> &VitEmbedPlan {
        &self.plan
    }
    pub fn dims(&self) -> &EncoderDims {
        &self.enc.dims
    }
    pub fn precision(&self) -> Precision {
        self.enc.precision
    }
    /// Device memory of this model (weights, activations, workspace), bytes.
    pub fn arena_bytes(&self) -> usize {
        self.enc.arena.bytes()
    }
    /// Floating-point operations of one forward (patch embedding, dense layers, attention).
    pub fn flops(&self) -> f64 {
        let vp = &self.plan;
        2.0 * (vp.patches * vp.k * vp.dim) as f64
            + self.enc.dims.gemm_flops()
            + self.enc.dims.attention_flops()
    }
    /// The model's own CHW input buffer ([`VitEmbedPlan::input_len`] floats): written by
    /// [`DeviceVit::record_image`], read by the `run*` helpers.
    pub fn input_ptr(&self) -> DevPtr<f32> {
        self.enc.arena.ptr(self.input)
    }
    /// The model's own image buffer ([`VitEmbedPlan::image_bytes`] bytes).
    pub fn image_ptr(&self) -> DevPtr<u8> {
        self.enc.arena.ptr(self.image)
    }
    /// The model's own output buffer ([`VitEmbedPlan::features_len`] floats).
    pub fn output_ptr(&self) -> DevPtr<f32> {
        self.enc.arena.ptr(self.out)
    }

    /// Enqueues the forward of the normalised CHW `input` ([`VitEmbedPlan::input_len`]
    /// floats; not modified) into `out` (`patches × dim`, packed).
    ///
    /// # Safety
    /// `input` and `out` valid for those extents on `dev` (the device this model was made
    /// on), `out` not overlapping this model's buffers other than
    /// [`DeviceVit::output_ptr`].
    pub unsafe fn record_input(
        &self,
        dev: &Device,
        input: DevPtr<f32>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        self.record_with(dev, input, out, Kinds::ALL)
    }

    /// Enqueues resize + normalisation of a u8 image (geometry from
    /// [`VitEmbedPlan::rgb_geometry`]; `zero_mask` null or `height × width` bytes of pixels
    /// to read as 0) into [`DeviceVit::input_ptr`], then the forward into `out`.
    ///
    /// # Safety
    /// `image` (and `zero_mask`) valid for `geo`; `out` as in [`DeviceVit::record_input`].
    pub unsafe fn record_image(
        &self,
        dev: &Device,
        geo: &RgbGeometry,
        image: DevPtr<u8>,
        zero_mask: DevPtr<u8>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let input = self.input_ptr();
        self.enc
            .embed
            .rgb_input(dev, geo, image, zero_mask, &self.resize, input)?;
        self.record_input(dev, input, out)
    }

    /// Enqueues only the chosen kinds of work of a forward on the model's own buffers
    /// (profiling; the result is meaningless unless `kinds` is [`Kinds::ALL`]).
    ///
    /// # Safety
    /// None beyond a live `dev` (this model's device): every buffer is the model's own.
    pub unsafe fn record_kinds(&self, dev: &Device, kinds: Kinds) -> Result<()> {
        self.record_with(dev, self.input_ptr(), self.output_ptr(), kinds)
    }

    unsafe fn record_with(
        &self,
        dev: &Device,
        input: DevPtr<f32>,
        out: DevPtr<f32>,
        kinds: Kinds,
    ) -> Result<()> {
        let e = &self.enc;
        let d = self.plan.dim;
        let tokens = e.x.offset(d);
        if kinds.other {
            match e.precision {
                Precision::F32 => e.embed.im2col(dev, input, dp(e.big))?,
                Precision::Bf16 => e.embed.im2col_bf16(dev, input, dp(e.big))?,
            }
        }
        if kinds.gemm {
            let patch = e
                .extra
                .as_ref()
                .ok_or_else(|| cfg_err("ViT without a patch embedding plan"))?;
            gemm(patch, dev, e.big, self.patch_w, 0, tokens.raw())?;
        }
        if kinds.other {
            e.embed
                .vit_tokens(dev, tokens, d, self.patch_b, self.pos, self.cls, e.x)?;
        }
        e.record_blocks(dev, DevPtr::null(), kinds, |_| Ok(()))?;
        if kinds.other {
            e.embed.vit_final_norm(dev, e.x, self.norm, out, d)?;
        }
        Ok(())
    }

    /// Uploads `input` (CHW, normalised), runs the forward, returns `patches × dim`.
    pub fn run_input(&self, dev: &Device, input: &[f32]) -> Result<Vec<f32>> {
        if input.len() != self.plan.input_len() {
            return Err(Error::Input(format!(
                "ViT input of {} values, {} expected",
                input.len(),
                self.plan.input_len()
            )));
        }
        dev.bind()?;
        self.enc.arena.upload(dev, self.input, input)?;
        unsafe { self.record_input(dev, self.input_ptr(), self.output_ptr())? };
        self.download(dev)
    }

    /// Uploads a u8 image (`height` rows of `3 × width` bytes, `stride` apart), resizes and
    /// normalises it on the device as `pipeline::preprocess` does in `mode`, runs the
    /// forward, returns `patches × dim`.
    pub fn run_image(
        &self,
        dev: &Device,
        image: &[u8],
        (width, height, stride): (usize, usize, usize),
        mode: PreprocessMode,
    ) -> Result<Vec<f32>> {
        let geo = self.plan.rgb_geometry(width, height, stride, mode)?;
        let need = (height - 1) * stride + 3 * width;
        if image.len() < need || image.len() > self.image.len {
            return Err(Error::Input(format!(
                "RGB image of {} bytes: {need} needed, at most {} planned",
                image.len(),
                self.image.len
            )));
        }
        dev.bind()?;
        self.enc.arena.upload(dev, self.image, image)?;
        unsafe {
            self.record_image(
                dev,
                &geo,
                self.image_ptr(),
                DevPtr::null(),
                self.output_ptr(),
            )?
        };
        self.download(dev)
    }

    fn download(&self, dev: &Device) -> Result<Vec<f32>> {
        dev.synchronize()?;
        let mut v = vec![0f32; self.plan.features_len()];
        self.enc.arena.download(dev, self.out, &mut v)?;
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------
// Point-MAE

/// The Point-MAE encoder's own tensors and buffers, planned on the host.
struct PointStage<'a> {
    enc: EncoderStage<'a>,
    embed: EmbedPlan,
    pos1: (Slot<f32>, Slot<f32>),
    pos2: (Slot<f32>, Slot<f32>),
    norm: (Slot<f32>, Slot<f32>),
    pos: Slot<f32>,
    tokens: Slot<f32>,
    centers: Slot<f32>,
    out: Slot<f32>,
}

fn stage_point<'a, S: TensorSource + ?Sized>(
    cfg: &ModelConfig,
    src: &'a S,
    p: Precision,
    workspace: WorkspacePlace,
) -> Result<PointStage<'a>> {
    let pc = cfg
        .point
        .as_ref()
        .ok_or_else(|| cfg_err(format!("model '{}' has no point encoder", cfg.name)))?;
    let dims = EncoderDims::point(pc)?;
    let embed = EmbedPlan::new(None, Some(pc), &cfg.preprocess, 1, 1)?;
    let pp = embed.point()?.clone();
    let w = PointMaeWeights::load(src, pc)?;
    let mut st = Staging::new();
    let pos1 = (st.f32(w.pos1.0), st.f32(w.pos1.1));
    let pos2 = (st.f32(w.pos2.0), st.f32(w.pos2.1));
    let norm = (st.f32(w.norm.0), st.f32(w.norm.1));
    let pos = st.arena.add(pp.tokens_len());
    let tokens = st.arena.add(pp.tokens_len());
    let centers = st.arena.add(3 * pp.groups);
    let out = st.arena.add(pp.output_len());
    let enc = EncoderStage::new(dims, p, st, &w.blocks, 0, None, workspace)?;
    Ok(PointStage {
        enc,
        embed,
        pos1,
        pos2,
        norm,
        pos,
        tokens,
        centers,
        out,
    })
}

/// The Point-MAE encoder's transformer (SPEC §3.4–3.6) on the device: position
/// embedding of the centers, the blocks, the selected outputs through the final norm.
pub struct DevicePointMae {
    enc: Encoder,
    plan: PointEmbedPlan,
    pos1: (DevPtr<f32>, DevPtr<f32>),
    pos2: (DevPtr<f32>, DevPtr<f32>),
    norm: (DevPtr<f32>, DevPtr<f32>),
    pos: DevPtr<f32>,
    tokens: Slot<f32>,
    centers: Slot<f32>,
    out: Slot<f32>,
}

// SAFETY: as for `DeviceVit`.
unsafe impl Send for DevicePointMae {}

impl DevicePointMae {
    /// The name of the encoder's region in the engine's arena.
    pub const ARENA_REGION: &'static str = "point-mae";

    /// The device memory the point encoder of `model` needs (host only, as
    /// [`DeviceVit::arena_plan`]).
    pub fn arena_plan(model: &ModelFile, precision: Precision) -> Result<ArenaPlan> {
        let s = stage_point(model.config(), model, precision, WorkspacePlace::Device)?;
        Ok(s.enc.st.arena)
    }

    /// The point encoder of a model file, running in `precision`.
    pub fn new(dev: &Device, model: &ModelFile, precision: Precision) -> Result<Self> {
        Self::from_source(dev, model.config(), model, precision)
    }

    /// [`DevicePointMae::new`] from any tensor store named as a model file (`point.*`).
    pub fn from_source<S: TensorSource + ?Sized>(
        dev: &Device,
        cfg: &ModelConfig,
        src: &S,
        precision: Precision,
    ) -> Result<Self> {
        let s = stage_point(cfg, src, precision, WorkspacePlace::on(dev)?)?;
        let enc = Encoder::build(dev, Self::ARENA_REGION, &s.enc, s.embed.clone())?;
        let a = &enc.arena;
        let pm = DevicePointMae {
            plan: s.embed.point()?.clone(),
            pos1: (a.ptr(s.pos1.0), a.ptr(s.pos1.1)),
            pos2: (a.ptr(s.pos2.0), a.ptr(s.pos2.1)),
            norm: (a.ptr(s.norm.0), a.ptr(s.norm.1)),
            pos: a.ptr(s.pos),
            tokens: s.tokens,
            centers: s.centers,
            out: s.out,
            enc,
        };
        // First use of every plan and kernel, on the zeroed buffers.
        unsafe { pm.record(dev, pm.tokens_ptr(), pm.centers_ptr(), pm.output_ptr())? };
        dev.synchronize()?;
        Ok(pm)
    }

    pub fn plan(&self) -> &PointEmbedPlan {
        &self.plan
    }
    pub fn dims(&self) -> &EncoderDims {
        &self.enc.dims
    }
    pub fn precision(&self) -> Precision {
        self.enc.precision
    }
    /// Device memory of this model (weights, activations, workspace), bytes.
    pub fn arena_bytes(&self) -> usize {
        self.enc.arena.bytes()
    }
    /// Floating-point operations of one forward (dense layers and attention of the blocks).
    pub fn flops(&self) -> f64 {
        self.enc.dims.gemm_flops() + self.enc.dims.attention_flops()
    }
    /// The model's own token input buffer ([`PointEmbedPlan::tokens_len`] floats).
    pub fn tokens_ptr(&self) -> DevPtr<f32> {
        self.enc.arena.ptr(self.tokens)
    }
    /// The residual stream (`groups × dim` f32). Passing it as `tokens` to
    /// [`DevicePointMae::record`] skips the input copy (the group encoder can write its
    /// tokens here); the forward then overwrites them.
    pub fn residual_ptr(&self) -> DevPtr<f32> {
        self.enc.x
    }
    /// The model's own centers buffer (`groups × 3` floats).
    pub fn centers_ptr(&self) -> DevPtr<f32> {
        self.enc.arena.ptr(self.centers)
    }
    /// The model's own output buffer ([`PointEmbedPlan::output_len`] floats).
    pub fn output_ptr(&self) -> DevPtr<f32> {
        self.enc.arena.ptr(self.out)
    }

    /// Enqueues the forward: `tokens` (`groups × dim`, copied into the residual stream
    /// unless it is [`DevicePointMae::residual_ptr`]) and `centers` (`groups × 3`) →
    /// `out` (`groups × feature_dim`, every column written).
    ///
    /// # Safety
    /// Pointers valid for those extents on `dev` (this model's device); `out` not
    /// overlapping this model's buffers other than [`DevicePointMae::output_ptr`].
    pub unsafe fn record(
        &self,
        dev: &Device,
        tokens: DevPtr<f32>,
        centers: DevPtr<f32>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        self.record_with(dev, tokens, centers, out, Kinds::ALL)
    }

    /// Enqueues only the chosen kinds of work on the model's own buffers (profiling).
    ///
    /// # Safety
    /// As [`DeviceVit::record_kinds`].
    pub unsafe fn record_kinds(&self, dev: &Device, kinds: Kinds) -> Result<()> {
        self.record_with(
            dev,
            self.tokens_ptr(),
            self.centers_ptr(),
            self.output_ptr(),
            kinds,
        )
    }

    unsafe fn record_with(
        &self,
        dev: &Device,
        tokens: DevPtr<f32>,
        centers: DevPtr<f32>,
        out: DevPtr<f32>,
        kinds: Kinds,
    ) -> Result<()> {
        let e = &self.enc;
        let pp = &self.plan;
        if kinds.other {
            if tokens.raw() != e.x.raw() {
                dev.copy_dtod(e.x.raw(), tokens.raw(), pp.tokens_len() * 4)?;
            }
            e.embed
                .pos_embed(dev, centers, self.pos1, self.pos2, self.pos)?;
        }
        e.record_blocks(dev, self.pos, kinds, |i| match pp.slot_of(i) {
            Some(slot) => e.embed.point_output(dev, e.x, slot, self.norm, out),
            None => Ok(()),
        })
    }

    /// Uploads `tokens` (`groups × dim`) and `centers` (`groups × 3`), runs the forward,
    /// returns `groups × feature_dim`.
    pub fn run(&self, dev: &Device, tokens: &[f32], centers: &[f32]) -> Result<Vec<f32>> {
        let pp = &self.plan;
        if tokens.len() != pp.tokens_len() || centers.len() != 3 * pp.groups {
            return Err(Error::Input(format!(
                "point encoder input of {} tokens and {} center values; {} and {} expected",
                tokens.len(),
                centers.len(),
                pp.tokens_len(),
                3 * pp.groups
            )));
        }
        dev.bind()?;
        self.enc.arena.upload(dev, self.tokens, tokens)?;
        self.enc.arena.upload(dev, self.centers, centers)?;
        unsafe {
            self.record(
                dev,
                self.tokens_ptr(),
                self.centers_ptr(),
                self.output_ptr(),
            )?
        };
        dev.synchronize()?;
        let mut v = vec![0f32; pp.output_len()];
        self.enc.arena.download(dev, self.out, &mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::random_model;

    #[test]
    fn method_sizes_plan_their_products() {
        let v = EncoderDims::vit(&VitConfig::base8()).unwrap();
        assert_eq!(
            (v.tokens, v.dim, v.heads, v.mlp, v.depth, v.qkv_bias),
            (785, 768, 12, 3072, 12, true)
        );
        assert_eq!(v.head_dim(), 64);
        let p = EncoderDims::point(&PointConfig::m3dm()).unwrap();
        assert_eq!(
            (p.tokens, p.dim, p.heads, p.mlp, p.depth, p.qkv_bias),
            (1024, 384, 6, 1536, 12, false)
        );
        for prec in [Precision::F32, Precision::Bf16] {
            let [qkv, proj, fc1, fc2] = v.block_gemms(prec).unwrap();
            assert_eq!((qkv.m, qkv.n, qkv.k), (785, 2304, 768));
            assert_eq!(qkv.epilogue, Epilogue::Bias);
            assert_eq!((qkv.output, qkv.accumulate), (prec, false));
            assert_eq!((proj.n, proj.k, proj.epilogue), (768, 768, Epilogue::Bias));
            assert_eq!((proj.output, proj.accumulate), (Precision::F32, true));
            assert_eq!(
                (fc1.n, fc1.k, fc1.epilogue),
                (3072, 768, Epilogue::BiasGelu)
            );
            assert_eq!((fc1.output, fc1.accumulate), (prec, false));
            assert_eq!((fc2.n, fc2.k), (768, 3072));
            assert_eq!((fc2.output, fc2.accumulate), (Precision::F32, true));
            assert!([qkv, proj, fc1, fc2].iter().all(|s| s.precision == prec));
            let [qkv, ..] = p.block_gemms(prec).unwrap();
            assert_eq!((qkv.n, qkv.epilogue), (1152, Epilogue::None));
        }
        // Same count as the CPU's, per block.
        let cpu = crate::cpu::vit::block_shape(&VitConfig::base8()).flops() * 12.0;
        let ours = v.gemm_flops() + v.attention_flops();
        assert!((ours - cpu).abs() <= 1e-9 * cpu, "{ours} vs {cpu}");
        let cpu = crate::cpu::point_mae::block_shape(&PointConfig::m3dm()).flops() * 12.0;
        let ours = p.gemm_flops() + p.attention_flops();
        assert!((ours - cpu).abs() <= 1e-9 * cpu, "{ours} vs {cpu}");
    }

    #[test]
    fn unsupported_configs_are_named() {
        // The small test presets have 32-wide heads: accepted.
        assert_eq!(
            EncoderDims::vit(&VitConfig::small()).unwrap().head_dim(),
            32
        );
        assert_eq!(
            EncoderDims::point(&PointConfig::small())
                .unwrap()
                .head_dim(),
            32
        );
        // 48-wide heads: no kernel.
        let mut c = VitConfig::small();
        c.dim = 144;
        c.mlp_dim = 576;
        let e = EncoderDims::vit(&c).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("head dimension of 48"), "{e}");
        assert!(
            e.to_string().contains("need a head dimension of 32 or 64"),
            "{e}"
        );
        let mut c = VitConfig::base8();
        c.heads = 7;
        assert!(EncoderDims::vit(&c)
            .unwrap_err()
            .to_string()
            .contains("not a whole head dimension"));
        let mut c = VitConfig::base8();
        c.patch_size = 0;
        assert!(EncoderDims::vit(&c).is_err());
        let mut c = VitConfig::base8();
        c.heads = 0;
        assert!(EncoderDims::vit(&c)
            .unwrap_err()
            .to_string()
            .contains("zero size"));
        let mut c = PointConfig::m3dm();
        c.ln_eps = 0.0;
        assert!(EncoderDims::point(&c)
            .unwrap_err()
            .to_string()
            .contains("eps"));
        let mut c = PointConfig::m3dm();
        c.depth = 0;
        assert!(EncoderDims::point(&c).is_err());
    }

    #[test]
    fn activations_share_the_big_buffer() {
        let v = EncoderDims::vit(&VitConfig::base8()).unwrap();
        let mut a = ArenaPlan::new();
        let s = ActivationSlots::plan(&v, Precision::Bf16, 784 * 192, WorkspacePlace::Own, &mut a);
        assert_eq!(s.x.len, 785 * 768);
        assert_eq!(s.small.elements(), 785 * 768);
        assert_eq!(s.big.elements(), 785 * 3072);
        assert_eq!(s.big.precision(), Precision::Bf16);
        assert_eq!(s.big.bytes(), 785 * 3072 * 2);
        assert_eq!(s.workspace.unwrap().len, GEMM_WORKSPACE_BYTES);
        // bf16 attention splits its 785 keys in two: two partial results of every row.
        assert_eq!(s.attention_parts.len, 2 * 785 * 12 * 66);
        // A patch matrix larger than both: big grows to it.
        let mut a = ArenaPlan::new();
        let s = ActivationSlots::plan(&v, Precision::F32, 785 * 4000, WorkspacePlace::Own, &mut a);
        assert_eq!(s.big.elements(), 785 * 4000);
        assert_eq!(s.big.bytes(), 785 * 4000 * 4);
        let ws = s.workspace.unwrap();
        assert!(a.bytes() >= ws.offset + ws.bytes());
        assert_eq!(s.attention_parts.len, 0, "the f32 attention does not split");
        // On the device's shared workspace: none of its own.
        let mut b = ArenaPlan::new();
        let s = ActivationSlots::plan(&v, Precision::F32, 0, WorkspacePlace::Device, &mut b);
        assert!(s.workspace.is_none());
    }

    /// Every planned slot: (offset, bytes), sorted, must not overlap.
    fn assert_disjoint(mut spans: Vec<(usize, usize)>, total: usize) {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
        let last = spans.last().unwrap();
        assert!(last.0 + last.1 <= total);
        assert!(spans.iter().all(|s| s.0 % 256 == 0));
    }

    fn stage_spans(e: &EncoderStage<'_>) -> Vec<(usize, usize)> {
        let mut v: Vec<(usize, usize)> =
            e.st.uploads
                .iter()
                .map(|(s, _)| (s.offset(), s.bytes()))
                .collect();
        let a = &e.act;
        v.extend([
            (a.x.offset, a.x.bytes()),
            (a.small.offset(), a.small.bytes()),
            (a.big.offset(), a.big.bytes()),
            (a.workspace.unwrap().offset, a.workspace.unwrap().bytes()),
            (a.attention_parts.offset, a.attention_parts.bytes()),
        ]);
        v
    }

    #[test]
    fn staging_places_every_tensor_once() {
        let cfg = ModelConfig::demo();
        let t = random_model(&cfg, 3);
        let vc = cfg.vit.as_ref().unwrap();
        let mut bytes = Vec::new();
        for p in [Precision::F32, Precision::Bf16] {
            let s = stage_vit(&cfg, &t, 320, 240, p, WorkspacePlace::Own).unwrap();
            let depth = vc.depth as usize;
            // patch w/b, pos, cls, final norm (2), 12 per block (qkv has a bias).
            assert_eq!(s.enc.st.uploads.len(), 6 + 12 * depth);
            for (slot, data) in &s.enc.st.uploads {
                assert_eq!(slot.elements(), data.len());
            }
            assert_eq!(s.patch_w.precision(), p);
            let b = &s.enc.blocks[0];
            assert_eq!(b.qkv_w.precision(), p);
            assert_eq!(b.qkv_b.unwrap().precision(), p);
            assert_eq!(b.fc1_b.precision(), p);
            assert_eq!(b.fc2_w.precision(), p);
            let vp = s.embed.vit().unwrap();
            assert!(s.enc.act.big.elements() >= vp.patch_matrix_len());
            assert_eq!(s.image.len, 320 * 240 * 3);
            let extra = s.enc.extra.unwrap();
            assert_eq!((extra.m, extra.n, extra.k), (vp.patches, vp.dim, vp.k));
            assert_eq!(extra.output, Precision::F32);
            let mut spans = stage_spans(&s.enc);
            spans.extend([
                (s.input.offset, s.input.bytes()),
                (s.image.offset, s.image.bytes()),
                (s.out.offset, s.out.bytes()),
                (s.resize.tmp.offset, s.resize.tmp.bytes()),
            ]);
            assert_disjoint(spans, s.enc.st.arena.bytes());
            assert_eq!(s.enc.st.base.offset, 0);
            bytes.push(s.enc.st.arena.bytes());

            let s = stage_point(&cfg, &t, p, WorkspacePlace::Own).unwrap();
            let pc = cfg.point.as_ref().unwrap();
            // pos fc1/fc2 (4), final norm (2), 11 per block (no qkv bias).
            assert_eq!(s.enc.st.uploads.len(), 6 + 11 * pc.depth as usize);
            assert!(s.enc.blocks.iter().all(|b| b.qkv_b.is_none()));
            assert!(s.enc.extra.is_none());
            let mut spans = stage_spans(&s.enc);
            spans.extend([
                (s.pos.offset, s.pos.bytes()),
                (s.tokens.offset, s.tokens.bytes()),
                (s.centers.offset, s.centers.bytes()),
                (s.out.offset, s.out.bytes()),
            ]);
            assert_disjoint(spans, s.enc.st.arena.bytes());
            assert_eq!(s.out.len, pc.num_groups as usize * pc.feature_dim());
        }
        assert!(
            bytes[1] < bytes[0],
            "bf16 arena {} vs f32 {}",
            bytes[1],
            bytes[0]
        );
    }

    #[test]
    fn missing_branches_and_weights_are_errors() {
        let mut cfg = ModelConfig::demo();
        let t = random_model(&cfg, 4);
        cfg.vit = None;
        cfg.point = None;
        let e = stage_vit(&cfg, &t, 64, 64, Precision::F32, WorkspacePlace::Own)
            .err()
            .unwrap();
        assert!(e.to_string().contains("has no ViT"), "{e}");
        let e = stage_point(&cfg, &t, Precision::F32, WorkspacePlace::Own)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no point encoder"), "{e}");
        // Weights of another shape.
        let mut cfg = ModelConfig::demo();
        cfg.vit.as_mut().unwrap().mlp_dim = 512;
        assert!(stage_vit(&cfg, &t, 64, 64, Precision::Bf16, WorkspacePlace::Own).is_err());
        // A head dimension without a kernel: refused before any weight is read.
        let mut cfg = ModelConfig::small();
        cfg.vit.as_mut().unwrap().heads = 2;
        let e = stage_vit(&cfg, &t, 64, 64, Precision::F32, WorkspacePlace::Own)
            .err()
            .unwrap();
        assert!(e.to_string().contains("head dimension"), "{e}");
    }

    #[test]
    fn bf16_bits_round_to_nearest_even() {
        let v = [1.0f32, -2.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.0];
        assert_eq!(bf16_bits(&v), vec![0x3f80, 0xc000, 0x3f80, 0x3f82, 0]);
    }

    #[test]
    fn kinds_partition_a_forward() {
        let k = [Kinds::GEMM, Kinds::ATTENTION, Kinds::OTHER];
        assert!(k.iter().map(|k| k.gemm as u8).sum::<u8>() == 1);
        assert!(k.iter().map(|k| k.attention as u8).sum::<u8>() == 1);
        assert!(k.iter().map(|k| k.other as u8).sum::<u8>() == 1);
        assert_eq!(
            Kinds::ALL,
            Kinds {
                gemm: true,
                attention: true,
                other: true
            }
        );
    }
}
