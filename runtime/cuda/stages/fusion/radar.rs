//! RADAR's adaptive instruction fusion on the device (`cpu::radar_fusion`, docs/RADAR-FUSION.md
//! §9b–c), for models with `radar`. One recorded graph serves the three modality cases: the
//! case is a device `i32` ([`DeviceRadar::case_ptr`]) read by the kernels that depend on it
//! (`copy_selected_u32`: the instructions of the case, and the hybrid block's attention
//! output) when the work runs.
//!
//! Per part, in `record` order:
//! 1. tokens: the xyz features pooled to the RGB grid, LayerNormed and projected, the RGB
//!    features likewise; the projections accumulate onto the type + position embedding
//!    (summed on the host at creation); the instructions of the case and layer 0 in rows
//!    `..len`;
//! 2. the `depth` blocks ([`DeviceBlocks`], the ViT's block code), each preceded by its own
//!    instructions;
//! 3. the Real-Pseudo Hybrid block over the `2G` modality tokens (when the model has it):
//!    its attention runs twice, over all `2G` tokens and over each group of `G` alone (eq.
//!    7's mask: probabilities across groups are exactly 0, so masked attention is the
//!    attention of each group by itself); the case picks the result (complete: the first);
//! 4. the HyperNetwork: token means per modality, the layer encodings, the shared layer and
//!    the four generated scales `1 + w` (the `+ 1` folded into the output biases at
//!    creation), all f32;
//! 5. the branches: `u = LN(x) + ctx·Wcᵀ` (f32; the context of xyz cell `j` is `f̂_pc` of its
//!    RGB cell, a pooling repetition), fc1 (f32 out), `gelu(z ⊙ s₁)`, fc2 (f32 out), `⊙ s₂`
//!    into the fused rows (the RGB half per RGB cell, then repeated by pooling).
//!
//! Precision: the branches' fc1/fc2 (most of the work) run in the engine's precision (bf16
//! operands on the fast path, f32 outputs); the token transformer (see `TOKEN_PRECISION`),
//! the context products, the HyperNetwork and the scales are f32 on both paths.

use std::sync::Arc;

use super::{DeviceFusion, FusionDims, WorkspacePlace};
use crate::backend::Precision;
use crate::config::ModelConfig;
use crate::cpu::radar_fusion::{self, Block, Dims, Lin, RadarWeights};
use crate::cpu::transformer::BlockWeights;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{Epilogue, GemmPlan, GemmShape, Workspace, GEMM_WORKSPACE_BYTES};
use crate::cuda::device::Device;
use crate::cuda::ops::embed::{EmbedKernels, EmbedPlan};
use crate::cuda::ops::fusion::FusionKernels;
use crate::cuda::ops::gelu::Elementwise;
use crate::cuda::stages::forward::{dp, gemm, DeviceBlocks, EncoderDims, OpSlot, Staging};
use crate::format::TensorSource;
use crate::{Error, Result};

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("CUDA RADAR fusion: {msg}"))
}

/// The regions of RADAR's fusion in the engine's arena besides [`DeviceFusion::ARENA_REGION`].
const BLOCKS_REGION: &str = "fusion blocks";
const HYBRID_REGION: &str = "fusion hybrid";

fn block_weights<'a>(b: &Block<&'a [f32]>) -> BlockWeights<'a> {
    BlockWeights {
        norm1_w: b.norm1.w,
        norm1_b: b.norm1.b,
        qkv_w: b.qkv.w,
        qkv_b: Some(b.qkv.b),
        proj_w: b.proj.w,
        proj_b: b.proj.b,
        norm2_w: b.norm2.w,
        norm2_b: b.norm2.b,
        fc1_w: b.fc1.w,
        fc1_b: b.fc1.b,
        fc2_w: b.fc2.w,
        fc2_b: b.fc2.b,
    }
}

/// The arithmetic of the token transformer (input projections, blocks, hybrid block) on
/// both paths: f32, also under `--precision bf16`, because no bound keeps its bf16 error
/// inside the fast path's 1e-2 tolerance.
///
/// The bound. A bf16 GEMM output `y = Σ_p a_p w_p` over `k` terms is off by at most
/// `(2u + u² + k·2⁻²⁴)·Σ_p |a_p w_p|` with u = 2⁻⁸ (the kernels' stated per-element
/// bound, `cpu::gemm_bf16`): 7.8e-3 of `Σ|a w|` (k ≤ 1024 adds 6e-5), and `Σ|a w| ≥ |y|`,
/// so at least 7.8e-3 of the output wherever the sum does not cancel. To first order the
/// GEMMs' relative errors add along the token path: 2 input projections, 4 per block
/// (qkv, proj, fc1, fc2) and 4 in the hybrid block; LayerNorm and the residuals carry
/// them on with a gain of about 1, the softmax with a gain ≤ 1 in the logits' error. With
/// the default depth 4 that is (2 + 16 + 4) · 7.8e-3 = 0.17 of the tokens' scale, and the
/// HyperNetwork's scales `1 + w` multiply every fused value, so a relative error of the
/// tokens reaches the fused features as that of `w`: the bound is 17× the tolerance, and
/// one bf16 GEMM alone already uses 78 % of it (the branches' fc1/fc2, in bf16, use the
/// rest). A tolerance this bound would justify means loosening the fast path's 1e-2.
///
/// Measured (tests/cuda/fusion.rs, random model): bf16 blocks 1.03e-2 of the peak, above
/// the tolerance; f32 blocks 6.8e-3. The blocks are about 14 % of the fusion's FLOPs at
/// the paper's sizes, so f32 costs little.
const TOKEN_PRECISION: Precision = Precision::F32;

/// The sizes of the token transformer and of the hybrid block.
fn encoder_dims(dm: &Dims) -> Result<(EncoderDims, EncoderDims)> {
    let blocks = EncoderDims {
        tokens: dm.tokens(),
        dim: dm.d,
        heads: dm.heads,
        mlp: 4 * dm.d,
        depth: dm.depth,
        ln_eps: dm.eps,
        qkv_bias: true,
    };
    let hybrid = EncoderDims {
        tokens: 2 * dm.g,
        depth: 1,
        ..blocks
    };
    Ok((blocks, hybrid))
}

/// The GEMM shapes of the fusion (besides the blocks').
#[derive(Clone, Copy, Debug)]
struct Shapes {
    /// Token projections, accumulating onto the embeddings: cloud, RGB.
    proj: [GemmShape; 2],
    /// Layer encoding (one shape for the four).
    enc: GemmShape,
    /// The shared layer over the four encodings.
    hyper: GemmShape,
    /// The generated scales: pc_1, pc_2, rgb_1, rgb_2.
    out: [GemmShape; 4],
    /// Context products, accumulating onto the LayerNormed inputs: xyz, RGB.
    ctx: [GemmShape; 2],
    /// fc1, fc2 per branch: xyz, RGB.
    fc: [[GemmShape; 2]; 2],
}

impl Shapes {
    fn new(dm: &Dims, xr: usize, p: Precision) -> Result<Self> {
        let f32_out = |s: GemmShape| s.with_output(Precision::F32);
        let (d, g, hy) = (dm.d, dm.g, dm.hyper);
        let f = Precision::F32;
        let tp = TOKEN_PRECISION;
        let proj = |din| f32_out(GemmShape::new(g, d, din, tp, Epilogue::Bias)?)?.accumulating();
        let fc = |rows, dim, hidden| -> Result<[GemmShape; 2]> {
            Ok([
                f32_out(GemmShape::new(rows, hidden, dim, p, Epilogue::Bias)?)?,
                f32_out(GemmShape::new(rows, dim, hidden, p, Epilogue::Bias)?)?,
            ])
        };
        let out = |n| GemmShape::new(1, n, hy, f, Epilogue::Bias);
        Ok(Shapes {
            proj: [proj(dm.dx)?, proj(dm.dr)?],
            enc: GemmShape::new(1, hy, d, f, Epilogue::Bias)?,
            hyper: GemmShape::new(4, hy, hy, f, Epilogue::Bias)?,
            out: [out(dm.hx)?, out(dm.dx)?, out(dm.hr)?, out(dm.dr)?],
            ctx: [
                GemmShape::new(xr, dm.dx, d, f, Epilogue::None)?.accumulating()?,
                GemmShape::new(g, dm.dr, d, f, Epilogue::None)?.accumulating()?,
            ],
            fc: [fc(xr, dm.dx, dm.hx)?, fc(g, dm.dr, dm.hr)?],
        })
    }
}

/// One branch's weights in the arena (fc1 writes f32: its bias is f32 on both paths).
#[derive(Clone, Copy, Debug)]
struct BranchSlots {
    norm: (Slot<f32>, Slot<f32>),
    fc1_w: OpSlot,
    fc1_b: Slot<f32>,
    fc2_w: OpSlot,
    fc2_b: Slot<f32>,
}

/// Every tensor and buffer of the fusion's own region.
#[derive(Clone, Debug)]
struct Slots {
    case: Slot<i32>,
    pc_norm: (Slot<f32>, Slot<f32>),
    rgb_norm: (Slot<f32>, Slot<f32>),
    proj_w: [OpSlot; 2],
    proj_b: [Slot<f32>; 2],
    /// `2G × d`: type embedding + position embedding of every modality token.
    type_pos: Slot<f32>,
    /// `[3, depth, len, d]`
    instructions: Slot<f32>,
    enc: [(Slot<f32>, Slot<f32>); 4],
    hyper: (Slot<f32>, Slot<f32>),
    /// The generated layers' heads, biases + 1.
    out: [(Slot<f32>, Slot<f32>); 4],
    ctx_w: [Slot<f32>; 2],
    branch: [BranchSlots; 2],
    // Buffers.
    xbar: Slot<f32>,
    /// LN output of the token inputs (GEMM precision).
    a_in: OpSlot,
    /// The hybrid block's attention outputs: over all tokens, then per group.
    alt: Option<OpSlot>,
    means: Slot<f32>,
    hh: Slot<f32>,
    vv: Slot<f32>,
    scale: [Slot<f32>; 4],
    u: Slot<f32>,
    /// `u` in bf16 for fc1 (fast path only).
    u_bf16: Option<Slot<u16>>,
    ctx: Slot<f32>,
    z: Slot<f32>,
    act: OpSlot,
    y: Slot<f32>,
    workspace: Option<Slot<u8>>,
}

/// The fusion planned on the host: its region, the tensors to upload, the shapes.
struct Stage<'a> {
    st: Staging<'a>,
    /// Tensors computed here (type + position, biases + 1), uploaded after `st`'s.
    computed: Vec<(Slot<f32>, Vec<f32>)>,
    slots: Slots,
    shapes: Shapes,
    dm: Dims,
    w: RadarWeights<'a>,
}

fn stage<'a, S: TensorSource + ?Sized>(
    cfg: &ModelConfig,
    src: &'a S,
    p: Precision,
    workspace: WorkspacePlace,
) -> Result<Stage<'a>> {
    let fd = FusionDims::new(cfg)?;
    let (Some(fc), Some(rc)) = (&cfg.fusion, &cfg.radar) else {
        return Err(cfg_err(format!("model '{}' has no RADAR fusion", cfg.name)));
    };
    let dm = Dims::new(fc, rc, fd.xyz_grid);
    if dm.grid_r != fd.rgb_grid {
        return Err(cfg_err(format!(
            "token grid {} differs from the RGB grid {}",
            dm.grid_r, fd.rgb_grid
        )));
    }
    if dm.d == 0 || dm.len == 0 || dm.depth == 0 || dm.hyper == 0 {
        return Err(cfg_err(format!("a zero size: {dm:?}")));
    }
    let (xr, g, d) = (fd.xyz_rows(), dm.g, dm.d);
    let shapes = Shapes::new(&dm, xr, p)?;
    let w = radar_fusion::load_weights(src, fc, rc)?;
    let mut st = Staging::new();
    let mut computed = Vec::new();
    let case = st.arena.add(1);
    let lin = |st: &mut Staging<'a>, l: &Lin<&'a [f32]>| (st.f32(l.w), st.f32(l.b));
    let pc_norm = lin(&mut st, &w.pc_norm);
    let rgb_norm = lin(&mut st, &w.rgb_norm);
    let tp = TOKEN_PRECISION;
    let proj_w = [st.weight(tp, w.pc_proj.w), st.weight(tp, w.rgb_proj.w)];
    let proj_b = [st.f32(w.pc_proj.b), st.f32(w.rgb_proj.b)];
    // The CPU adds `type + pos` (summed first) to every projected token.
    let mut tp = Vec::with_capacity(2 * g * d);
    for m in 0..2 {
        let ty = &w.type_embed[m * d..(m + 1) * d];
        for pos in w.pos.chunks_exact(d) {
            tp.extend(ty.iter().zip(pos).map(|(a, b)| a + b));
        }
    }
    let type_pos = st.arena.add(2 * g * d);
    computed.push((type_pos, tp));
    let instructions = st.f32(w.instructions);
    let enc = [0, 1, 2, 3].map(|i| (st.f32(w.enc[i].w), st.f32(w.enc[i].b)));
    let hyper = lin(&mut st, &w.hyper_fc1);
    let out = [0, 1, 2, 3].map(|i| {
        let b = st.arena.add(w.out[i].b.len());
        computed.push((b, w.out[i].b.iter().map(|v| v + 1.0).collect()));
        (st.f32(w.out[i].w), b)
    });
    let ctx_w = [st.f32(w.pc_ctx), st.f32(w.rgb_ctx)];
    let branch = [&w.xyz, &w.rgb].map(|b| BranchSlots {
        norm: (st.f32(b.norm.w), st.f32(b.norm.b)),
        fc1_w: st.weight(p, b.fc1.w),
        fc1_b: st.f32(b.fc1.b),
        fc2_w: st.weight(p, b.fc2.w),
        fc2_b: st.f32(b.fc2.b),
    });
    let half = (xr * dm.dx).max(g * dm.dr);
    let hidden = (xr * dm.hx).max(g * dm.hr);
    let a = &mut st.arena;
    let slots = Slots {
        case,
        pc_norm,
        rgb_norm,
        proj_w,
        proj_b,
        type_pos,
        instructions,
        enc,
        hyper,
        out,
        ctx_w,
        branch,
        xbar: a.add(g * dm.dx),
        a_in: OpSlot::add(a, TOKEN_PRECISION, g * dm.dx.max(dm.dr)),
        alt: dm
            .hybrid
            .then(|| OpSlot::add(a, TOKEN_PRECISION, 2 * (2 * g * d))),
        means: a.add(2 * d),
        hh: a.add(4 * dm.hyper),
        vv: a.add(4 * dm.hyper),
        scale: [dm.hx, dm.dx, dm.hr, dm.dr].map(|n| a.add(n)),
        u: a.add(half),
        u_bf16: (p == Precision::Bf16).then(|| a.add(half)),
        ctx: a.add(xr * d),
        z: a.add(hidden),
        act: OpSlot::add(a, p, hidden),
        y: a.add(half),
        workspace: (workspace == WorkspacePlace::Own).then(|| a.add(GEMM_WORKSPACE_BYTES)),
    };
    Ok(Stage {
        st,
        computed,
        slots,
        shapes,
        dm,
        w,
    })
}

/// The products of the fusion, planned on the device (besides the blocks').
struct Plans {
    proj: [GemmPlan; 2],
    enc: GemmPlan,
    hyper: GemmPlan,
    out: [GemmPlan; 4],
    ctx: [GemmPlan; 2],
    fc: [[GemmPlan; 2]; 2],
}

/// RADAR's fusion on the device (module doc). Fields drop in declaration order: plans,
/// blocks, the arena, the kernels; the device last.
pub(super) struct DeviceRadar {
    plans: Plans,
    blocks: DeviceBlocks,
    hybrid: Option<DeviceBlocks>,
    arena: Arena,
    embed: EmbedKernels,
    kernels: FusionKernels,
    s: Slots,
    dm: Dims,
    xyz_rows: usize,
    precision: Precision,
    _dev: Arc<Device>,
}

// SAFETY: as for `DeviceFusion`.
unsafe impl Send for DeviceRadar {}

impl DeviceRadar {
    /// The regions of the fusion of `cfg` (host only).
    pub(super) fn arena_needs<S: TensorSource + ?Sized>(
        cfg: &ModelConfig,
        src: &S,
        p: Precision,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let s = stage(cfg, src, p, WorkspacePlace::Device)?;
        let (bd, hd) = encoder_dims(&s.dm)?;
        let blocks: Vec<BlockWeights> = s.w.blocks.iter().map(block_weights).collect();
        let mut needs = vec![
            (DeviceFusion::ARENA_REGION, s.st.arena),
            (
                BLOCKS_REGION,
                DeviceBlocks::arena_plan(bd, TOKEN_PRECISION, &blocks)?,
            ),
        ];
        if let Some(h) = &s.w.hybrid {
            needs.push((
                HYBRID_REGION,
                DeviceBlocks::arena_plan(hd, TOKEN_PRECISION, &[block_weights(h)])?,
            ));
        }
        Ok(needs)
    }

    pub(super) fn new<S: TensorSource + ?Sized>(
        dev: Arc<Device>,
        cfg: &ModelConfig,
        src: &S,
        p: Precision,
    ) -> Result<Self> {
        let s = stage(cfg, src, p, WorkspacePlace::on(&dev)?)?;
        let (bd, hd) = encoder_dims(&s.dm)?;
        let block_w: Vec<BlockWeights> = s.w.blocks.iter().map(block_weights).collect();
        dev.bind()?;
        // Checked first: a head size without an attention kernel is refused before the
        // fusion takes its memory.
        let tp = TOKEN_PRECISION;
        let blocks = DeviceBlocks::new(&dev, BLOCKS_REGION, bd, tp, &block_w)?;
        let hybrid = match &s.w.hybrid {
            Some(h) => Some(DeviceBlocks::new(
                &dev,
                HYBRID_REGION,
                hd,
                tp,
                &[block_weights(h)],
            )?),
            None => None,
        };
        let arena = dev.stage_arena(DeviceFusion::ARENA_REGION, &s.st.arena)?;
        dev.memset_u8(arena.ptr(s.st.base).raw(), 0, arena.bytes())?;
        s.st.upload(&dev, &arena)?;
        for (slot, data) in &s.computed {
            arena.upload(&dev, *slot, data)?;
        }
        let embed = EmbedKernels::new(
            &dev,
            EmbedPlan {
                vit: None,
                point: None,
            },
        )?;
        let kernels = FusionKernels::new(&dev)?;
        let lt = dev.cublaslt()?;
        let ws = match s.slots.workspace {
            Some(own) => Workspace {
                ptr: arena.ptr(own),
                bytes: own.len,
            },
            None => dev.shared_gemm_workspace()?.ok_or_else(|| {
                cfg_err("planned for the device's GEMM workspace, which the engine did not plan")
            })?,
        };
        // No product here applies GELU: no elementwise kernel needed.
        let plan = |shape: GemmShape| GemmPlan::new(&dev, lt, shape, ws, None::<&Elementwise>);
        let sh = &s.shapes;
        let plans = Plans {
            proj: [plan(sh.proj[0])?, plan(sh.proj[1])?],
            enc: plan(sh.enc)?,
            hyper: plan(sh.hyper)?,
            out: [
                plan(sh.out[0])?,
                plan(sh.out[1])?,
                plan(sh.out[2])?,
                plan(sh.out[3])?,
            ],
            ctx: [plan(sh.ctx[0])?, plan(sh.ctx[1])?],
            fc: [
                [plan(sh.fc[0][0])?, plan(sh.fc[0][1])?],
                [plan(sh.fc[1][0])?, plan(sh.fc[1][1])?],
            ],
        };
        let radar = DeviceRadar {
            plans,
            blocks,
            hybrid,
            arena,
            embed,
            kernels,
            s: s.slots.clone(),
            dm: s.dm,
            xyz_rows: FusionDims::new(cfg)?.xyz_rows(),
            precision: p,
            _dev: dev.clone(),
        };
        // First use of every plan and kernel on the zeroed buffers (their own buffers
        // serve as inputs; nothing is placed into fused rows).
        unsafe {
            let f = |sl: Slot<f32>| radar.arena.ptr(sl);
            radar.record(&dev, f(radar.s.y), f(radar.s.z), None)?;
        }
        dev.synchronize()?;
        Ok(radar)
    }

    pub(super) fn case_ptr(&self) -> DevPtr<i32> {
        self.arena.ptr(self.s.case)
    }

    fn f(&self, s: Slot<f32>) -> DevPtr<f32> {
        self.arena.ptr(s)
    }

    /// LayerNorm of `rows × dim` (f32 statistics as the blocks') into `out` in the GEMM
    /// precision.
    #[allow(clippy::too_many_arguments)]
    unsafe fn layernorm_op(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        (rows, dim): (usize, usize),
        norm: (Slot<f32>, Slot<f32>),
        out: OpSlot,
    ) -> Result<()> {
        let (eps, null) = (self.dm.eps, DevPtr::null());
        let norm = (self.f(norm.0), self.f(norm.1));
        let y = out.raw(&self.arena);
        match TOKEN_PRECISION {
            Precision::F32 => {
                self.embed
                    .layernorm(dev, (rows, dim), x, dim, null, norm, eps, dp(y), dim)
            }
            Precision::Bf16 => {
                self.embed
                    .layernorm_bf16(dev, (rows, dim), x, dim, null, norm, eps, dp(y), dim)
            }
        }
    }

    /// The instructions of the device's case for block `layer` into token rows `..len`.
    unsafe fn instruction(&self, dev: &Device, layer: usize) -> Result<()> {
        let n = self.dm.len * self.dm.d;
        let src = self.f(self.s.instructions).offset(layer * n).cast::<u32>();
        let dst = self.blocks.x().cast::<u32>();
        self.kernels
            .copy_selected(dev, src, self.dm.depth * n, self.case_ptr(), 2, dst, n)
    }

    /// The hybrid block's attention: over all `2G` tokens and over each group alone, the
    /// case choosing (complete: all tokens; else the groups, eq. 7's mask).
    unsafe fn hybrid_attention(
        &self,
        dev: &Device,
        h: &DeviceBlocks,
        qkv: u64,
        out: u64,
    ) -> Result<()> {
        let (g, d, heads) = (self.dm.g, self.dm.d, self.dm.heads);
        let alt = self.s.alt.ok_or_else(|| cfg_err("no hybrid buffers"))?;
        let esize = TOKEN_PRECISION.bytes() as u64;
        let scale = 1.0 / ((d / heads) as f32).sqrt();
        let n = (2 * g * d) as u64;
        let (all, split) = (alt.raw(&self.arena), alt.raw(&self.arena) + n * esize);
        let att = h.attention();
        let run = |q: u64, o: u64, t: usize| match TOKEN_PRECISION {
            Precision::F32 => att.run_f32(dev, dp(q), dp(o), t, heads, scale),
            // No key-split buffer: the token transformer runs in f32 (`TOKEN_PRECISION`);
            // a bf16 one would plan `Attention::parts_len` values here first.
            Precision::Bf16 => att.run_bf16(dev, dp(q), dp(o), DevPtr::null(), t, heads, scale),
        };
        run(qkv, all, 2 * g)?;
        run(qkv, split, g)?;
        let g_rows = g as u64;
        run(
            qkv + g_rows * 3 * d as u64 * esize,
            split + g_rows * d as u64 * esize,
            g,
        )?;
        let words = (n * esize / 4) as usize;
        self.kernels
            .copy_selected(dev, dp(all), words, self.case_ptr(), 1, dp(out), words)
    }

    /// One branch's MLP on `u` (`rows × dim`, f32): fc1, `gelu(· ⊙ s₁)`, fc2 into `y`.
    unsafe fn mlp(&self, dev: &Device, b: usize, rows: usize) -> Result<()> {
        let (s, a) = (&self.s, &self.arena);
        let w = &s.branch[b];
        let [fc1, fc2] = &self.plans.fc[b];
        let (dim, hidden) = (fc2.shape().n, fc1.shape().n);
        let input = match s.u_bf16 {
            Some(ub) => {
                let ub = a.ptr(ub);
                self.kernels
                    .to_bf16(dev, self.f(s.u), ub.cast(), rows * dim)?;
                ub.raw()
            }
            None => self.f(s.u).raw(),
        };
        let z = self.f(s.z);
        gemm(
            fc1,
            dev,
            input,
            w.fc1_w.raw(a),
            self.f(w.fc1_b).raw(),
            z.raw(),
        )?;
        let (s1, act) = (self.f(s.scale[2 * b]), s.act.raw(a));
        match self.precision {
            Precision::F32 => self
                .kernels
                .scale_gelu(dev, z, s1, (rows, hidden), dp(act))?,
            Precision::Bf16 => self
                .kernels
                .scale_gelu_bf16(dev, z, s1, (rows, hidden), dp(act))?,
        }
        gemm(
            fc2,
            dev,
            act,
            w.fc2_w.raw(a),
            self.f(w.fc2_b).raw(),
            self.f(s.y).raw(),
        )
    }

    /// Enqueues the fusion (module doc); without `fused`, everything but the placement
    /// into the fused rows (the warm-up at creation).
    ///
    /// # Safety
    /// As [`DeviceFusion::record`].
    pub(super) unsafe fn record(
        &self,
        dev: &Device,
        xyz: DevPtr<f32>,
        rgb: DevPtr<f32>,
        fused: Option<DevPtr<f32>>,
    ) -> Result<()> {
        let (dm, s, a) = (&self.dm, &self.s, &self.arena);
        let (d, g, l, hy) = (dm.d, dm.g, dm.len, dm.hyper);
        let (dx, dr, xr) = (dm.dx, dm.dr, self.xyz_rows);
        let x = self.blocks.x();
        let tokens = x.offset(l * d);
        // 1. Tokens: embeddings first, the projections accumulate onto them.
        let xbar = self.f(s.xbar);
        self.embed
            .adaptive_pool(dev, xyz, dm.grid_x, dx, dm.grid_r, dx, xbar, dx)?;
        dev.copy_dtod(tokens.raw(), self.f(s.type_pos).raw(), 2 * g * d * 4)?;
        for (m, (input, dim, norm)) in [(xbar, dx, s.pc_norm), (rgb, dr, s.rgb_norm)]
            .into_iter()
            .enumerate()
        {
            self.layernorm_op(dev, input, (g, dim), norm, s.a_in)?;
            gemm(
                &self.plans.proj[m],
                dev,
                s.a_in.raw(a),
                s.proj_w[m].raw(a),
                self.f(s.proj_b[m]).raw(),
                tokens.offset(m * g * d).raw(),
            )?;
        }
        // 2. The blocks, each after its instructions.
        self.instruction(dev, 0)?;
        self.blocks.record(
            dev,
            |i| {
                if i + 1 < dm.depth {
                    self.instruction(dev, i + 1)
                } else {
                    Ok(())
                }
            },
            None,
        )?;
        // 3. The hybrid block over the modality tokens.
        let modality = match &self.hybrid {
            Some(h) => {
                dev.copy_dtod(h.x().raw(), tokens.raw(), 2 * g * d * 4)?;
                let attend =
                    |dev: &Device, qkv: u64, out: u64| self.hybrid_attention(dev, h, qkv, out);
                h.record(dev, |_| Ok(()), Some(&attend))?;
                h.x()
            }
            None => tokens,
        };
        // 4. HyperNetwork: token means → encodings → shared layer → scales 1 + w.
        let (means, hh, vv) = (self.f(s.means), self.f(s.hh), self.f(s.vv));
        self.kernels.column_means(dev, modality, (2, g, d), means)?;
        for (i, (ew, eb)) in s.enc.iter().enumerate() {
            let (e, h) = (means.offset((i / 2) * d), hh.offset(i * hy));
            gemm(
                &self.plans.enc,
                dev,
                e.raw(),
                self.f(*ew).raw(),
                self.f(*eb).raw(),
                h.raw(),
            )?;
        }
        let (hw, hb) = s.hyper;
        gemm(
            &self.plans.hyper,
            dev,
            hh.raw(),
            self.f(hw).raw(),
            self.f(hb).raw(),
            vv.raw(),
        )?;
        for (i, (ow, ob)) in s.out.iter().enumerate() {
            gemm(
                &self.plans.out[i],
                dev,
                vv.offset(i * hy).raw(),
                self.f(*ow).raw(),
                self.f(*ob).raw(),
                self.f(s.scale[i]).raw(),
            )?;
        }
        // 5. The branches: u = LN(x) + ctx·Wcᵀ, the scaled MLP, ⊙ s₂ into the fused rows.
        let (u, y, fd, null) = (self.f(s.u), self.f(s.y), dx + dr, DevPtr::null());
        let uff_norm = |b: usize| (self.f(s.branch[b].norm.0), self.f(s.branch[b].norm.1));
        let eps = dm.uff_eps;
        self.embed
            .layernorm(dev, (xr, dx), xyz, dx, null, uff_norm(0), eps, u, dx)?;
        let ctx = self.f(s.ctx);
        self.embed
            .adaptive_pool(dev, modality, dm.grid_r, d, dm.grid_x, d, ctx, d)?;
        gemm(
            &self.plans.ctx[0],
            dev,
            ctx.raw(),
            self.f(s.ctx_w[0]).raw(),
            0,
            u.raw(),
        )?;
        self.mlp(dev, 0, xr)?;
        if let Some(fused) = fused {
            self.kernels
                .scale_cols(dev, y, dx, self.f(s.scale[1]), (xr, dx), fused, fd)?;
        }
        self.embed
            .layernorm(dev, (g, dr), rgb, dr, null, uff_norm(1), eps, u, dr)?;
        let f_rgb = modality.offset(g * d);
        gemm(
            &self.plans.ctx[1],
            dev,
            f_rgb.raw(),
            self.f(s.ctx_w[1]).raw(),
            0,
            u.raw(),
        )?;
        self.mlp(dev, 1, g)?;
        if let Some(fused) = fused {
            // The RGB half per RGB cell (into `u`, free again), repeated over its cells.
            self.kernels
                .scale_cols(dev, y, dr, self.f(s.scale[3]), (g, dr), u, dr)?;
            self.embed
                .adaptive_pool(dev, u, dm.grid_r, dr, dm.grid_x, dr, fused.offset(dx), fd)?;
        }
        Ok(())
    }
}
