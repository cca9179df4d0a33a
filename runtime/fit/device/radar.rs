//! RADAR's Stage 1 training step on the device (docs/RADAR-FUSION.md §9b–c; the CPU's
//! `fit::train_radar::radar_loss_and_grad` and its two AdamW): per part the forward of the
//! token transformer (instructions, blocks, the hybrid block with eq. 7's mask), the
//! HyperNetwork and both branches with their heads; the InfoNCE over the batch; per part
//! the forward again and the hand-derived backward; AdamW with the instructions' learning
//! rate on their range and the other one on the rest. Everything runs through one
//! [`Device`]: cuBLASLt f32 GEMMs for every product (attention included: per head
//! `S = Q·Kᵀ`, `O = P·V` and their gradients, so the probabilities are kept for the
//! backward pass), `kernels/train_radar.cu`, `kernels/train.cu`, `kernels/fusion.cu` and
//! the embed kernels for the rest.
//!
//! - The parameters, their gradient and AdamW's moments are four flat buffers on the
//!   device (every tensor 256-byte aligned, `train_uff::tensor_places`); they come back
//!   only in [`RadarStep::params_into`].
//! - Every buffer is planned up front for `parts` parts of at most `rows` loss rows each:
//!   the batch's features (uploaded once per step), one part's activations (the forward
//!   runs once for the loss and once before the part's backward pass, as on the CPU), the
//!   InfoNCE over all rows. The products are planned by a warm-up pass at creation; a
//!   step allocates nothing on the host.
//! - A part of `n < rows` loss rows computes its padding rows too (the products have one
//!   shape; the padding rows gather cell 0) but their gradient is exactly 0 (only the `n`
//!   real rows receive the InfoNCE's gradient, and the scatter into the tokens takes only
//!   those), so they add exact zeros.

use std::cell::RefCell;
use std::sync::Arc;

use super::uff::{
    checked_loss, copy_params, device_order, download_host_order, grid, tensor_places, DeviceAdamW,
    TensorPlace, TrainKernels, BLOCK, LOGIT_BLOCK_ROWS,
};
use crate::backend::Precision;
use crate::cpu::radar_fusion::{Block, Case, Dims, Lin, RadarNet, UffBranch};
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{
    Epilogue, GemmPlan, GemmShape, Operands, Workspace, GEMM_WORKSPACE_BYTES,
};
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::cuda::ops::embed::EmbedKernels;
use crate::cuda::ops::fusion::FusionKernels;
use crate::cuda::stages::forward::gemm;
use crate::fit::train_radar::{PartSample, RadarParams, RadarStep, RadarTrainOptions};
use crate::kernel_args;
use crate::{Error, Result};

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("device RADAR training: {msg}"))
}

/// `kernels/train_radar.cu`.
struct RadarKernels {
    ln_stats: Kernel,
    ln_backward: Kernel,
    softmax: Kernel,
    softmax_backward: Kernel,
    scale_backward: Kernel,
    gather: Kernel,
    scatter_add: Kernel,
    add_row: Kernel,
    // Declared last: the functions above belong to it.
    _module: Module,
}

impl RadarKernels {
    fn new(dev: &Device) -> Result<Self> {
        let m = Module::load(dev, "train_radar")?;
        Ok(RadarKernels {
            ln_stats: Kernel::find(&m, "layernorm_stats_f32")?,
            ln_backward: Kernel::find(&m, "layernorm_backward_f32")?,
            softmax: Kernel::find(&m, "softmax_rows_f32")?,
            softmax_backward: Kernel::find(&m, "softmax_backward_f32")?,
            scale_backward: Kernel::find(&m, "scale_backward_f32")?,
            gather: Kernel::find(&m, "gather_rows_f32")?,
            scatter_add: Kernel::find(&m, "scatter_add_rows_f32")?,
            add_row: Kernel::find(&m, "add_row_scaled_f32")?,
            _module: m,
        })
    }
}

/// Floats rounded up to whole 16-byte groups (GEMM operands start aligned).
fn round4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Declares a set of buffers generic over what names them: arena `Slot`s when planned,
/// device pointers once the arena exists (`map`).
macro_rules! buffer_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        struct $name<T> {
            $($(#[$fdoc])* $field: T,)*
        }

        impl<T: Copy> $name<T> {
            fn map<U>(&self, f: impl Fn(T) -> U) -> $name<U> {
                $name { $($field: f(self.$field),)* }
            }
        }
    };
}

buffer_set! {
    /// One block's activations (the CPU's `BlockActs`, plus the per-head copies of q, k,
    /// v and o that the products read: head `h` at `h · round4(t · head width)`).
    BlockBufs {
        input, u1, rstd1, a1, qkv, qh, kh, vh, oh,
        /// Probabilities, head `h` at `h · round4(t²)`.
        p,
        o, x1, u2, rstd2, a2, z, g, out,
    }
}

impl BlockBufs<Slot<f32>> {
    /// The buffers of a block over `t` tokens.
    fn plan(plan: &mut ArenaPlan, t: usize, dm: &Dims) -> Self {
        let (d, h) = (dm.d, dm.heads);
        let heads = h * round4(t * (d / h));
        let mut add = |n: usize| plan.add::<f32>(n);
        BlockBufs {
            input: add(t * d),
            u1: add(t * d),
            rstd1: add(t),
            a1: add(t * d),
            qkv: add(t * 3 * d),
            qh: add(heads),
            kh: add(heads),
            vh: add(heads),
            oh: add(heads),
            p: add(h * round4(t * t)),
            o: add(t * d),
            x1: add(t * d),
            u2: add(t * d),
            rstd2: add(t),
            a2: add(t * d),
            z: add(t * 4 * d),
            g: add(t * 4 * d),
            out: add(t * d),
        }
    }
}

buffer_set! {
    /// One branch's activations over the planned rows of a part (the CPU's `BranchActs`)
    /// and its loss gradient `dq`.
    BranchBufs { x, ctx, u, rstd, ux, z1, g, z2, y, p, norms, q, dq }
}

impl BranchBufs<Slot<f32>> {
    /// The buffers of a branch of width `dim` (hidden `hidden`) over `rows` rows.
    fn plan(plan: &mut ArenaPlan, rows: usize, (dim, hidden): (usize, usize), dm: &Dims) -> Self {
        let (d, e) = (dm.d, dm.e);
        let mut add = |n: usize| plan.add::<f32>(n);
        BranchBufs {
            x: add(rows * dim),
            ctx: add(rows * d),
            u: add(rows * dim),
            rstd: add(rows),
            ux: add(rows * dim),
            z1: add(rows * hidden),
            g: add(rows * hidden),
            z2: add(rows * dim),
            y: add(rows * dim),
            p: add(rows * e),
            norms: add(rows),
            q: add(rows * e),
            dq: add(rows * e),
        }
    }
}

/// One branch of the step ([`DeviceRadarStep::branch_of`]).
struct Branch<'a> {
    b: &'a BranchBufs<DevPtr<f32>>,
    w: &'a UffBranch<usize>,
    /// Offset of the context projection.
    ctx_w: usize,
    /// The generated scales of its two layers.
    s: [DevPtr<f32>; 2],
    dim: usize,
    hidden: usize,
}

/// The InfoNCE of a step: the logits in blocks of `block` queries over `rows` planned rows
/// (the UFF step's scheme, `train_uff`).
struct Nce {
    rows: usize,
    block: usize,
    logits: DevPtr<f32>,
    loss_rows: DevPtr<u64>,
    loss: DevPtr<u64>,
}

/// Everything the step keeps on the device (module doc). Fields drop in declaration
/// order: the plans, the arena, the kernels, the device last.
pub struct DeviceRadarStep {
    plans: RefCell<Vec<GemmPlan>>,
    _arena: Arena,
    train: TrainKernels,
    radar: RadarKernels,
    fusion: FusionKernels,
    embed: EmbedKernels,
    ws: Workspace,
    dm: Dims,
    /// Offsets of every tensor in the flat buffers (weights and gradients alike).
    net: RadarNet<usize>,
    places: Vec<TensorPlace>,
    params_len: usize,
    /// Device floats of the instructions' range (`..instr_len`), the rest after it.
    instr_len: usize,
    params: DevPtr<f32>,
    grads: DevPtr<f32>,
    ones: DevPtr<f32>,
    /// The batch: features of up to `parts` parts, each part's xyz cells and their RGB
    /// cells (`rows` each, padding cell 0).
    xyz_in: DevPtr<f32>,
    rgb_in: DevPtr<f32>,
    cells: DevPtr<u32>,
    rcells: DevPtr<u32>,
    // One part's token network.
    xbar: DevPtr<f32>,
    tok_u: [DevPtr<f32>; 2],
    tok_rstd: [DevPtr<f32>; 2],
    tok_a: [DevPtr<f32>; 2],
    blocks: Vec<BlockBufs<DevPtr<f32>>>,
    hybrid: Option<BlockBufs<DevPtr<f32>>>,
    means: DevPtr<f32>,
    hh: DevPtr<f32>,
    vv: DevPtr<f32>,
    scale: [DevPtr<f32>; 4],
    branch: [BranchBufs<DevPtr<f32>>; 2],
    // The batch's normalised head outputs (RGB queries, xyz keys) and their gradients.
    q_all: DevPtr<f32>,
    k_all: DevPtr<f32>,
    dq_all: DevPtr<f32>,
    dk_all: DevPtr<f32>,
    nce: Nce,
    // Backward scratch.
    dp: DevPtr<f32>,
    buf_a: DevPtr<f32>,
    buf_c: DevPtr<f32>,
    seq: DevPtr<f32>,
    th: DevPtr<f32>,
    ds: DevPtr<f32>,
    d_oh: DevPtr<f32>,
    d_qh: DevPtr<f32>,
    d_kh: DevPtr<f32>,
    d_vh: DevPtr<f32>,
    df: [DevPtr<f32>; 2],
    dscale: [DevPtr<f32>; 4],
    dv: DevPtr<f32>,
    dh: DevPtr<f32>,
    de: DevPtr<f32>,
    bad: DevPtr<i32>,
    /// Host scratch of one part's RGB cells (planned: no allocation per step).
    rcell_host: Vec<u32>,
    parts: usize,
    rows: usize,
    temperature: f32,
    adam: DeviceAdamW,
    dev: Arc<Device>,
}

// SAFETY: driver and cuBLASLt handles and device addresses, used from one thread at a time
// (the trainer's; the context is made current with `Device::bind`).
unsafe impl Send for DeviceRadarStep {}

/// Output widths of the generated scales: pc_1, pc_2, rgb_1, rgb_2.
fn scale_lens(dm: &Dims) -> [usize; 4] {
    [dm.hx, dm.dx, dm.hr, dm.dr]
}

impl DeviceRadarStep {
    /// Uploads `params`, plans every buffer for batches of up to `parts` parts of at most
    /// `rows` loss rows each on an xyz grid of side `grid_x`, plans the products (a
    /// warm-up pass on zeros) and zeroes AdamW's moments.
    pub fn new(
        dev: Arc<Device>,
        params: &RadarParams,
        opts: &RadarTrainOptions,
        grid_x: usize,
        parts: usize,
        rows: usize,
    ) -> Result<Self> {
        Self::with_block(dev, params, opts, grid_x, (parts, rows), LOGIT_BLOCK_ROWS)
    }

    /// [`DeviceRadarStep::new`] with blocks of at most `block_rows` queries of logits
    /// (tests: several blocks on small batches).
    pub fn with_block(
        dev: Arc<Device>,
        params: &RadarParams,
        opts: &RadarTrainOptions,
        grid_x: usize,
        (parts, rows): (usize, usize),
        block_rows: usize,
    ) -> Result<Self> {
        let dm = Dims::new(&params.fusion, &params.radar, grid_x);
        let hd = dm.d.checked_div(dm.heads).unwrap_or(0);
        if dm.d == 0 || hd == 0 || !dm.d.is_multiple_of(dm.heads) || dm.len == 0 || dm.depth == 0 {
            return Err(cfg_err(format!("sizes {dm:?}")));
        }
        if [dm.d, hd, dm.hyper, dm.e]
            .iter()
            .any(|v| !v.is_multiple_of(4))
        {
            return Err(cfg_err(format!(
                "token width {}, head width {hd}, hyper width {} and head {} must be \
                 multiples of 4 (GEMM operands inside buffers start 16-byte aligned)",
                dm.d, dm.hyper, dm.e
            )));
        }
        if dm.grid_r == 0 || !grid_x.is_multiple_of(dm.grid_r) || parts == 0 || rows == 0 {
            return Err(cfg_err(format!(
                "xyz grid {grid_x} on token grid {}, {parts} parts of {rows} rows",
                dm.grid_r
            )));
        }
        if !(opts.temperature.is_finite() && opts.temperature > 0.0) {
            return Err(cfg_err(format!("temperature {}", opts.temperature)));
        }
        let (d, g, t, xr) = (dm.d, dm.g, dm.tokens(), grid_x * grid_x);
        let (places, params_len) = tensor_places(&params.specs);
        // The instructions first (`RadarParams`' layout): their own learning rate.
        if params.specs.first().map(|(s, _)| s.name.as_str()) != Some("radar.instructions") {
            return Err(cfg_err(
                "the parameters do not start with radar.instructions",
            ));
        }
        let instr_len = places.get(1).map_or(params_len, |p| p.dev);
        let net = RadarNet::build::<Error>(dm.depth, dm.hybrid, &mut |name| {
            params
                .specs
                .iter()
                .position(|(s, _)| s.name == name)
                .map(|i| places[i].dev)
                .ok_or_else(|| cfg_err(format!("no tensor {name}")))
        })?;
        // InfoNCE blocks as the UFF step's (after the first, 4-float aligned starts).
        let n_max = parts * rows;
        let block = round4(n_max.min(block_rows.max(1)));
        let nce_rows = n_max.div_ceil(block) * block;
        if nce_rows > i32::MAX as usize / 2 {
            return Err(cfg_err(format!("{nce_rows} rows per step")));
        }

        let mut plan = ArenaPlan::new();
        let flat = [0; 4].map(|_| plan.add::<f32>(params_len));
        let widest = dm.hx.max(dm.hr).max(4 * d);
        let s_ones = plan.add::<f32>(widest);
        let s_xyz = plan.add::<f32>(parts * xr * dm.dx);
        let s_rgb = plan.add::<f32>(parts * g * dm.dr);
        let s_cells = plan.add::<u32>(parts * rows);
        let s_rcells = plan.add::<u32>(parts * rows);
        let s_xbar = plan.add::<f32>(g * dm.dx);
        let dims = [dm.dx, dm.dr];
        let s_tok: [[Slot<f32>; 3]; 2] =
            dims.map(|dim| [plan.add(g * dim), plan.add(g), plan.add(g * dim)]);
        let s_blocks: Vec<BlockBufs<Slot<f32>>> = (0..dm.depth)
            .map(|_| BlockBufs::plan(&mut plan, t, &dm))
            .collect();
        let s_hybrid = dm.hybrid.then(|| BlockBufs::plan(&mut plan, 2 * g, &dm));
        let s_means = plan.add::<f32>(2 * d);
        let s_hh = plan.add::<f32>(4 * dm.hyper);
        let s_vv = plan.add::<f32>(4 * dm.hyper);
        let s_scale = scale_lens(&dm).map(|n| plan.add::<f32>(n));
        let s_branch = [
            BranchBufs::plan(&mut plan, rows, (dm.dx, dm.hx), &dm),
            BranchBufs::plan(&mut plan, rows, (dm.dr, dm.hr), &dm),
        ];
        let s_all = [0; 4].map(|_| plan.add::<f32>(nce_rows * dm.e));
        let s_logits = plan.add::<f32>(block * nce_rows);
        let s_loss_rows = plan.add::<u64>(nce_rows);
        let s_loss = plan.add::<u64>(1);
        let s_dp = plan.add::<f32>(rows * dm.e);
        let wide = (rows * widest).max(t * 4 * d).max(t * 3 * d);
        let s_a = plan.add::<f32>(wide);
        let s_c = plan.add::<f32>(rows * d.max(dm.hx).max(dm.hr));
        let s_seq = plan.add::<f32>(t * d);
        let s_th = plan.add::<f32>(t * d);
        let s_ds = plan.add::<f32>(dm.heads * round4(t * t));
        let head_bufs = dm.heads * round4(t * hd);
        let s_dh4 = [0; 4].map(|_| plan.add::<f32>(head_bufs));
        let s_df = [0; 2].map(|_| plan.add::<f32>(g * d));
        let s_dscale = scale_lens(&dm).map(|n| plan.add::<f32>(n));
        let s_dv = plan.add::<f32>(dm.hyper);
        let s_dhy = plan.add::<f32>(dm.hyper);
        let s_de = plan.add::<f32>(d);
        let s_bad = plan.add::<i32>(1);
        let s_ws = plan.add::<u8>(GEMM_WORKSPACE_BYTES);

        dev.bind()?;
        let arena = Arena::new(&dev, &plan)?;
        // Every buffer starts at zero: the moments, the padding, the warm-up's inputs.
        dev.memset_u8(arena.ptr(flat[0]).raw(), 0, arena.bytes())?;
        arena.upload(
            &dev,
            flat[0],
            &device_order(&places, params_len, &params.data),
        )?;
        arena.upload(&dev, s_ones, &vec![1f32; widest])?;
        let ws = Workspace {
            ptr: arena.ptr(s_ws),
            bytes: s_ws.len,
        };
        let f = |s: Slot<f32>| arena.ptr(s);
        let adam = DeviceAdamW::new(
            [0, 1, 2, 3].map(|i| arena.ptr(flat[i])),
            arena.ptr(s_bad),
            opts.betas,
            opts.adam_eps,
            opts.weight_decay,
        );
        let step = DeviceRadarStep {
            plans: RefCell::new(Vec::new()),
            train: TrainKernels::new(&dev)?,
            radar: RadarKernels::new(&dev)?,
            fusion: FusionKernels::new(&dev)?,
            embed: EmbedKernels::without_backbones(&dev)?,
            ws,
            dm,
            net,
            places,
            params_len,
            instr_len,
            params: f(flat[0]),
            grads: f(flat[1]),
            ones: f(s_ones),
            xyz_in: f(s_xyz),
            rgb_in: f(s_rgb),
            cells: arena.ptr(s_cells),
            rcells: arena.ptr(s_rcells),
            xbar: f(s_xbar),
            tok_u: [f(s_tok[0][0]), f(s_tok[1][0])],
            tok_rstd: [f(s_tok[0][1]), f(s_tok[1][1])],
            tok_a: [f(s_tok[0][2]), f(s_tok[1][2])],
            blocks: s_blocks.iter().map(|b| b.map(f)).collect(),
            hybrid: s_hybrid.map(|b| b.map(f)),
            means: f(s_means),
            hh: f(s_hh),
            vv: f(s_vv),
            scale: s_scale.map(f),
            branch: s_branch.map(|b| b.map(f)),
            q_all: f(s_all[0]),
            k_all: f(s_all[1]),
            dq_all: f(s_all[2]),
            dk_all: f(s_all[3]),
            nce: Nce {
                rows: nce_rows,
                block,
                logits: f(s_logits),
                loss_rows: arena.ptr(s_loss_rows),
                loss: arena.ptr(s_loss),
            },
            dp: f(s_dp),
            buf_a: f(s_a),
            buf_c: f(s_c),
            seq: f(s_seq),
            th: f(s_th),
            ds: f(s_ds),
            d_oh: f(s_dh4[0]),
            d_qh: f(s_dh4[1]),
            d_kh: f(s_dh4[2]),
            d_vh: f(s_dh4[3]),
            df: s_df.map(f),
            dscale: s_dscale.map(f),
            dv: f(s_dv),
            dh: f(s_dhy),
            de: f(s_de),
            bad: arena.ptr(s_bad),
            _arena: arena,
            rcell_host: vec![0; rows],
            parts,
            rows,
            temperature: opts.temperature,
            adam,
            dev,
        };
        // Warm-up on the zeroed buffers: one part's forward, the InfoNCE and the backward
        // plan every product the steps run.
        // SAFETY: every buffer was planned for these sizes.
        unsafe {
            step.forward_part(0, Case::Complete)?;
            step.info_nce(1, true)?;
            step.backward_part(0, Case::Complete, 1, 0)?;
            step.info_nce(1, false)?;
        }
        step.dev.synchronize()?;
        Ok(step)
    }

    /// The device this step runs on.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The gradient of the last [`RadarStep::train`] laid out as [`RadarParams`] (tests).
    pub fn gradient(&self) -> Result<Vec<f32>> {
        self.download_flat(self.grads)
    }

    fn download_flat(&self, src: DevPtr<f32>) -> Result<Vec<f32>> {
        download_host_order(&self.dev, src, &self.places, self.params_len)
    }

    fn w(&self, off: usize) -> DevPtr<f32> {
        self.params.offset(off)
    }
    fn gr(&self, off: usize) -> DevPtr<f32> {
        self.grads.offset(off)
    }

    /// `y (+)= op(x, w) (+ bias)` through the plan of that shape (made at the warm-up).
    #[allow(clippy::too_many_arguments)]
    unsafe fn mm(
        &self,
        operands: Operands,
        accumulate: bool,
        (m, n, k): (usize, usize, usize),
        x: DevPtr<f32>,
        w: DevPtr<f32>,
        bias: Option<DevPtr<f32>>,
        y: DevPtr<f32>,
    ) -> Result<()> {
        let epi = if bias.is_some() {
            Epilogue::Bias
        } else {
            Epilogue::None
        };
        let mut shape = GemmShape::new(m, n, k, Precision::F32, epi)?.with_operands(operands);
        if accumulate {
            shape = shape.accumulating()?;
        }
        let mut plans = self.plans.borrow_mut();
        let i = match plans.iter().position(|p| *p.shape() == shape) {
            Some(i) => i,
            None => {
                let lt = self.dev.cublaslt()?;
                plans.push(GemmPlan::new(&self.dev, lt, shape, self.ws, None)?);
                plans.len() - 1
            }
        };
        let b = bias.map_or(0, |b| b.raw());
        gemm(&plans[i], &self.dev, x.raw(), w.raw(), b, y.raw())
    }

    /// A linear layer's forward `y (+)= x·Wᵀ + b` over `(rows, n_out, n_in)`.
    unsafe fn linear(
        &self,
        lin: &Lin<usize>,
        accumulate: bool,
        shape: (usize, usize, usize),
        x: DevPtr<f32>,
        y: DevPtr<f32>,
    ) -> Result<()> {
        let (w, b) = (self.w(lin.w), Some(self.w(lin.b)));
        self.mm(Operands::XWt, accumulate, shape, x, w, b, y)
    }

    /// `out = u γ + β` with `u`, `1/σ` kept (`layernorm_stats_f32`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn ln(
        &self,
        x: DevPtr<f32>,
        (rows, cols): (usize, usize),
        norm: &Lin<usize>,
        eps: f32,
        u: DevPtr<f32>,
        rstd: DevPtr<f32>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let (r, c) = (rows as i32, cols as i32);
        let (gm, bt) = (self.w(norm.w), self.w(norm.b));
        let mut a = kernel_args![x, r, c, gm, bt, eps, u, rstd, out];
        self.dev
            .launch(self.radar.ln_stats, grid(rows), BLOCK, 0, &mut a)
    }

    /// The LayerNorm's parameter gradients (accumulated) and, with `dx`, `dx += ∂/∂x`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn ln_back(
        &self,
        da: DevPtr<f32>,
        u: DevPtr<f32>,
        rstd: DevPtr<f32>,
        (rows, cols): (usize, usize),
        norm: &Lin<usize>,
        dx: Option<DevPtr<f32>>,
    ) -> Result<()> {
        let (r, c) = (rows as i32, cols as i32);
        let (dg, db) = (self.gr(norm.w), self.gr(norm.b));
        let mut a = kernel_args![da, u, r, c, dg, db];
        self.dev
            .launch(self.train.ln_grads, grid(cols), BLOCK, 0, &mut a)?;
        if let Some(dx) = dx {
            let gm = self.w(norm.w);
            let mut a = kernel_args![da, u, rstd, gm, r, c, dx];
            self.dev
                .launch(self.radar.ln_backward, grid(rows), BLOCK, 0, &mut a)?;
        }
        Ok(())
    }

    /// `out[c] += Σ_rows m[r][c]` (row order).
    unsafe fn col_sums(
        &self,
        m: DevPtr<f32>,
        (rows, cols): (usize, usize),
        out: DevPtr<f32>,
    ) -> Result<()> {
        let (r, c) = (rows as i32, cols as i32);
        let mut a = kernel_args![m, r, c, out];
        self.dev
            .launch(self.train.col_sums, grid(cols), BLOCK, 0, &mut a)
    }

    /// `dst[r] += v · scale` for every row of `rows × cols`.
    unsafe fn add_row(
        &self,
        dst: DevPtr<f32>,
        (rows, cols): (usize, usize),
        v: DevPtr<f32>,
        scale: f32,
    ) -> Result<()> {
        let (r, c) = (rows as i32, cols as i32);
        let mut a = kernel_args![dst, r, c, v, scale];
        self.dev
            .launch(self.radar.add_row, grid(rows * cols), BLOCK, 0, &mut a)
    }

    /// Backward of a generated scale: `y = z ⊙ s` or, with `gelu`, `y = GELU(z ⊙ s)`:
    /// `ds += Σ_rows ∂y ⊙ …`, `dy` becomes the gradient of `z` (in place).
    #[allow(clippy::too_many_arguments)]
    unsafe fn scale_back(
        &self,
        dy: DevPtr<f32>,
        z: DevPtr<f32>,
        s: DevPtr<f32>,
        (rows, cols): (usize, usize),
        gelu: bool,
        ds: DevPtr<f32>,
    ) -> Result<()> {
        let (r, c, g) = (rows as i32, cols as i32, gelu as i32);
        let mut a = kernel_args![dy, z, s, r, c, g, ds];
        self.dev
            .launch(self.radar.scale_backward, grid(cols), BLOCK, 0, &mut a)
    }

    /// A strided copy of `rows × cols` (`scale_cols_f32` by ones: exact).
    unsafe fn copy2d(
        &self,
        src: DevPtr<f32>,
        ld_src: usize,
        (rows, cols): (usize, usize),
        dst: DevPtr<f32>,
        ld_dst: usize,
    ) -> Result<()> {
        self.fusion
            .scale_cols(&self.dev, src, ld_src, self.ones, (rows, cols), dst, ld_dst)
    }

    unsafe fn copy(&self, dst: DevPtr<f32>, src: DevPtr<f32>, floats: usize) -> Result<()> {
        self.dev.copy_dtod(dst.raw(), src.raw(), floats * 4)
    }

    unsafe fn zero(&self, dst: DevPtr<f32>, floats: usize) -> Result<()> {
        self.dev.memset_u8(dst.raw(), 0, floats * 4)
    }

    /// A linear layer's backward: `dW += dyᵀ·x`, `db += Σ dy`, `dx = dy·W` (`rows` rows,
    /// `n_in → n_out`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn linear_back(
        &self,
        lin: &Lin<usize>,
        (rows, n_in, n_out): (usize, usize, usize),
        x: DevPtr<f32>,
        dy: DevPtr<f32>,
        dx: DevPtr<f32>,
    ) -> Result<()> {
        let (w, gw, gb) = (self.w(lin.w), self.gr(lin.w), self.gr(lin.b));
        self.mm(Operands::XtW, true, (n_out, n_in, rows), dy, x, None, gw)?;
        self.col_sums(dy, (rows, n_out), gb)?;
        self.mm(Operands::XW, false, (rows, n_in, n_out), dy, w, None, dx)
    }

    /// One pre-norm block over `t` tokens (the CPU's `block_forward`); with `split`,
    /// eq. 7's groups.
    unsafe fn block_forward(
        &self,
        a: &BlockBufs<DevPtr<f32>>,
        t: usize,
        w: &Block<usize>,
        split: usize,
    ) -> Result<()> {
        let dm = &self.dm;
        let (d, heads) = (dm.d, dm.heads);
        let hd = d / heads;
        let (hs, ps) = (round4(t * hd), round4(t * t));
        self.ln(a.input, (t, d), &w.norm1, dm.eps, a.u1, a.rstd1, a.a1)?;
        self.linear(&w.qkv, false, (t, 3 * d, d), a.a1, a.qkv)?;
        for h in 0..heads {
            for (m, dst) in [a.qh, a.kh, a.vh].into_iter().enumerate() {
                let src = a.qkv.offset(m * d + h * hd);
                self.copy2d(src, 3 * d, (t, hd), dst.offset(h * hs), hd)?;
            }
            let (q, k, p) = (a.qh.offset(h * hs), a.kh.offset(h * hs), a.p.offset(h * ps));
            self.mm(Operands::XWt, false, (t, t, hd), q, k, None, p)?;
            let (r, c, sp, sc) = (t as i32, t as i32, split as i32, 1.0 / (hd as f32).sqrt());
            let mut args = kernel_args![p, r, c, sp, sc];
            self.dev
                .launch(self.radar.softmax, (t as u32, 1, 1), BLOCK, 0, &mut args)?;
            let (v, o) = (a.vh.offset(h * hs), a.oh.offset(h * hs));
            self.mm(Operands::XW, false, (t, hd, t), p, v, None, o)?;
            self.copy2d(o, hd, (t, hd), a.o.offset(h * hd), d)?;
        }
        self.copy(a.x1, a.input, t * d)?;
        self.linear(&w.proj, true, (t, d, d), a.o, a.x1)?;
        self.ln(a.x1, (t, d), &w.norm2, dm.eps, a.u2, a.rstd2, a.a2)?;
        self.linear(&w.fc1, false, (t, 4 * d, d), a.a2, a.z)?;
        let n = (t * 4 * d) as i64;
        let mut args = kernel_args![a.z, n, a.g];
        self.dev
            .launch(self.train.gelu, grid(t * 4 * d), BLOCK, 0, &mut args)?;
        self.copy(a.out, a.x1, t * d)?;
        self.linear(&w.fc2, true, (t, d, 4 * d), a.g, a.out)
    }

    /// Backward of one block: `dout` in `seq`, leaves `d input` there (the CPU's
    /// `block_backward`; masked probabilities are 0, so are their gradients).
    unsafe fn block_backward(
        &self,
        a: &BlockBufs<DevPtr<f32>>,
        t: usize,
        w: &Block<usize>,
    ) -> Result<()> {
        let dm = &self.dm;
        let (d, heads) = (dm.d, dm.heads);
        let hd = d / heads;
        let (hs, ps) = (round4(t * hd), round4(t * t));
        let (seq, th, buf) = (self.seq, self.th, self.buf_a);
        // MLP: out = x1 + fc2(GELU(fc1(LN2(x1))))
        self.linear_back(&w.fc2, (t, 4 * d, d), a.g, seq, buf)?;
        let n = (t * 4 * d) as i64;
        let mut args = kernel_args![buf, a.z, n];
        self.dev.launch(
            self.train.gelu_backward,
            grid(t * 4 * d),
            BLOCK,
            0,
            &mut args,
        )?;
        self.linear_back(&w.fc1, (t, d, 4 * d), a.a2, buf, th)?;
        self.ln_back(th, a.u2, a.rstd2, (t, d), &w.norm2, Some(seq))?;
        // attention: x1 = input + proj(o)
        self.linear_back(&w.proj, (t, d, d), a.o, seq, th)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for h in 0..heads {
            let at = |b: DevPtr<f32>| b.offset(h * hs);
            let p = a.p.offset(h * ps);
            let ds = self.ds.offset(h * ps);
            self.copy2d(th.offset(h * hd), d, (t, hd), at(self.d_oh), hd)?;
            // dv = Pᵀ do ; dP = do vᵀ ; dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale
            self.mm(
                Operands::XtW,
                false,
                (t, hd, t),
                p,
                at(self.d_oh),
                None,
                at(self.d_vh),
            )?;
            self.mm(
                Operands::XWt,
                false,
                (t, t, hd),
                at(self.d_oh),
                at(a.vh),
                None,
                ds,
            )?;
            let (r, c) = (t as i32, t as i32);
            let mut args = kernel_args![ds, p, r, c, scale];
            self.dev.launch(
                self.radar.softmax_backward,
                (t as u32, 1, 1),
                BLOCK,
                0,
                &mut args,
            )?;
            // dq = dS k ; dk = dSᵀ q
            self.mm(
                Operands::XW,
                false,
                (t, hd, t),
                ds,
                at(a.kh),
                None,
                at(self.d_qh),
            )?;
            self.mm(
                Operands::XtW,
                false,
                (t, hd, t),
                ds,
                at(a.qh),
                None,
                at(self.d_kh),
            )?;
            for (m, src) in [self.d_qh, self.d_kh, self.d_vh].into_iter().enumerate() {
                self.copy2d(at(src), hd, (t, hd), buf.offset(m * d + h * hd), 3 * d)?;
            }
        }
        self.linear_back(&w.qkv, (t, d, 3 * d), a.a1, buf, th)?;
        self.ln_back(th, a.u1, a.rstd1, (t, d), &w.norm1, Some(seq))
    }

    fn part_xyz(&self, p: usize) -> DevPtr<f32> {
        let xr = self.dm.grid_x * self.dm.grid_x;
        self.xyz_in.offset(p * xr * self.dm.dx)
    }
    fn part_rgb(&self, p: usize) -> DevPtr<f32> {
        self.rgb_in.offset(p * self.dm.g * self.dm.dr)
    }

    /// `[f̂_pc; f̂_rgb]` (`2G × d`) of the last forward.
    fn modality(&self) -> DevPtr<f32> {
        match &self.hybrid {
            Some(h) => h.out,
            None => self.blocks[self.dm.depth - 1]
                .out
                .offset(self.dm.len * self.dm.d),
        }
    }

    /// The forward of part `p` (case `case`) over the planned rows of its cells: tokens,
    /// blocks, hybrid block, HyperNetwork, both branches with heads (the CPU's
    /// `TokenActs::forward`, `gather_rows` and `BranchActs::forward`).
    unsafe fn forward_part(&self, p: usize, case: Case) -> Result<()> {
        let dev = &*self.dev;
        let (dm, net) = (&self.dm, &self.net);
        let (d, g, l, hy) = (dm.d, dm.g, dm.len, dm.hyper);
        let (xyz, rgb) = (self.part_xyz(p), self.part_rgb(p));
        // Tokens: position + type, then the projections accumulate onto them.
        self.embed.adaptive_pool(
            dev, xyz, dm.grid_x, dm.dx, dm.grid_r, dm.dx, self.xbar, dm.dx,
        )?;
        let tokens = self.blocks[0].input.offset(l * d);
        let inputs = [
            (self.xbar, dm.dx, &net.pc_norm, &net.pc_proj),
            (rgb, dm.dr, &net.rgb_norm, &net.rgb_proj),
        ];
        for (m, (x, dim, norm, proj)) in inputs.into_iter().enumerate() {
            let (u, rstd, a) = (self.tok_u[m], self.tok_rstd[m], self.tok_a[m]);
            self.ln(x, (g, dim), norm, dm.eps, u, rstd, a)?;
            let rows = tokens.offset(m * g * d);
            self.copy(rows, self.w(net.pos), g * d)?;
            self.add_row(rows, (g, d), self.w(net.type_embed + m * d), 1.0)?;
            self.linear(proj, true, (g, d, dim), a, rows)?;
        }
        // The blocks, each after the instructions of the case.
        let instr = |j: usize| self.w(net.instructions + (case as usize * dm.depth + j) * l * d);
        for (j, b) in self.blocks.iter().enumerate() {
            if j > 0 {
                self.copy(
                    b.input.offset(l * d),
                    self.blocks[j - 1].out.offset(l * d),
                    2 * g * d,
                )?;
            }
            self.copy(b.input, instr(j), l * d)?;
            self.block_forward(b, dm.tokens(), &net.blocks[j], 0)?;
        }
        if let (Some(hb), Some(hw)) = (&self.hybrid, &net.hybrid) {
            let last = &self.blocks[dm.depth - 1];
            self.copy(hb.input, last.out.offset(l * d), 2 * g * d)?;
            let split = if case == Case::Complete { 0 } else { g };
            self.block_forward(hb, 2 * g, hw, split)?;
        }
        // HyperNetwork (eq. 6): token means → ξ^h → shared layer → scales 1 + w.
        let modality = self.modality();
        self.fusion
            .column_means(dev, modality, (2, g, d), self.means)?;
        for (i, enc) in net.enc.iter().enumerate() {
            let (x, y) = (self.means.offset((i / 2) * d), self.hh.offset(i * hy));
            self.linear(enc, false, (1, hy, d), x, y)?;
        }
        let fc1 = &net.hyper_fc1;
        self.linear(fc1, false, (4, hy, hy), self.hh, self.vv)?;
        for (i, (out, n)) in net.out.iter().zip(scale_lens(dm)).enumerate() {
            let s = self.scale[i];
            self.linear(out, false, (1, n, hy), self.vv.offset(i * hy), s)?;
            self.add_row(s, (1, n), self.ones, 1.0)?;
        }
        // The branches over the part's rows: xyz row i is cell cells[i], RGB row i its
        // RGB cell, each with the context token of that RGB cell.
        let rows = self.rows;
        let (cells, rcells) = (self.cells.offset(p * rows), self.rcells.offset(p * rows));
        let [bx, br] = &self.branch;
        self.gather(xyz, dm.dx, cells, bx.x)?;
        self.gather(modality, d, rcells, bx.ctx)?;
        self.gather(rgb, dm.dr, rcells, br.x)?;
        self.gather(modality.offset(g * d), d, rcells, br.ctx)?;
        self.branch_forward(0)?;
        self.branch_forward(1)
    }

    unsafe fn gather(
        &self,
        src: DevPtr<f32>,
        cols: usize,
        idx: DevPtr<u32>,
        dst: DevPtr<f32>,
    ) -> Result<()> {
        let (c, n) = (cols as i32, self.rows as i32);
        let mut a = kernel_args![src, c, idx, n, dst];
        self.dev
            .launch(self.radar.gather, grid(self.rows * cols), BLOCK, 0, &mut a)
    }

    /// `y = (W2 · GELU((W1 · u + b1) ⊙ s1) + b2) ⊙ s2` with `u = LN(x) + Wc · ctx`, then
    /// the head and its L2 normalisation, over the planned rows.
    unsafe fn branch_forward(&self, m: usize) -> Result<()> {
        let (dev, dm) = (&*self.dev, &self.dm);
        let Branch {
            b,
            w,
            ctx_w,
            s: [s1, s2],
            dim,
            hidden,
        } = self.branch_of(m);
        let (rows, d, e) = (self.rows, dm.d, dm.e);
        self.ln(b.x, (rows, dim), &w.norm, dm.uff_eps, b.u, b.rstd, b.ux)?;
        self.mm(
            Operands::XWt,
            true,
            (rows, dim, d),
            b.ctx,
            self.w(ctx_w),
            None,
            b.ux,
        )?;
        self.linear(&w.fc1, false, (rows, hidden, dim), b.ux, b.z1)?;
        self.fusion.scale_gelu(dev, b.z1, s1, (rows, hidden), b.g)?;
        self.linear(&w.fc2, false, (rows, dim, hidden), b.g, b.z2)?;
        self.fusion
            .scale_cols(dev, b.z2, dim, s2, (rows, dim), b.y, dim)?;
        self.linear(&w.head, false, (rows, e, dim), b.y, b.p)?;
        let (r, c) = (rows as i32, e as i32);
        let mut a = kernel_args![b.p, r, c, b.q, b.norms];
        dev.launch(self.train.normalize, grid(rows), BLOCK, 0, &mut a)
    }

    /// Branch `m` (0: xyz, 1: RGB): its buffers, tensors and generated scales.
    fn branch_of(&self, m: usize) -> Branch<'_> {
        let (net, dm) = (&self.net, &self.dm);
        let (w, ctx_w, dim, hidden) = if m == 0 {
            (&net.xyz, net.pc_ctx, dm.dx, dm.hx)
        } else {
            (&net.rgb, net.rgb_ctx, dm.dr, dm.hr)
        };
        Branch {
            b: &self.branch[m],
            w,
            ctx_w,
            s: [self.scale[2 * m], self.scale[2 * m + 1]],
            dim,
            hidden,
        }
    }

    /// Backward of one branch from its `dq` (accumulating its gradients, its context
    /// projection's and the scales'); leaves `dctx` (rows × d) in `buf_c`.
    unsafe fn branch_backward(&self, m: usize) -> Result<()> {
        let (dev, dm) = (&*self.dev, &self.dm);
        let Branch {
            b,
            w,
            ctx_w,
            s: [s1, s2],
            dim,
            hidden,
        } = self.branch_of(m);
        let [ds1, ds2] = [self.dscale[2 * m], self.dscale[2 * m + 1]];
        let (rows, d, e) = (self.rows, dm.d, dm.e);
        let (r, ei) = (rows as i32, e as i32);
        let mut a = kernel_args![b.q, b.norms, b.dq, r, ei, self.dp];
        dev.launch(self.train.normalize_backward, grid(rows), BLOCK, 0, &mut a)?;
        // `buf_a` takes the D-wide gradients, `buf_c` the hidden-wide one (then `dctx`).
        let (dy, dgb) = (self.buf_a, self.buf_c);
        self.linear_back(&w.head, (rows, dim, e), b.y, self.dp, dy)?;
        // y = z2 ⊙ s2
        self.scale_back(dy, b.z2, s2, (rows, dim), false, ds2)?;
        self.linear_back(&w.fc2, (rows, hidden, dim), b.g, dy, dgb)?;
        // g = GELU(z1 ⊙ s1)
        self.scale_back(dgb, b.z1, s1, (rows, hidden), true, ds1)?;
        let du = dy;
        self.linear_back(&w.fc1, (rows, dim, hidden), b.ux, dgb, du)?;
        self.ln_back(du, b.u, b.rstd, (rows, dim), &w.norm, None)?;
        self.mm(
            Operands::XtW,
            true,
            (dim, d, rows),
            du,
            b.ctx,
            None,
            self.gr(ctx_w),
        )?;
        self.mm(
            Operands::XW,
            false,
            (rows, d, dim),
            du,
            self.w(ctx_w),
            None,
            self.buf_c,
        )
    }

    /// The backward pass of part `p` after its [`Self::forward_part`]: its `n` loss rows
    /// are rows `r0..` of the batch's InfoNCE gradients. Accumulates into the gradient.
    unsafe fn backward_part(&self, p: usize, case: Case, n: usize, r0: usize) -> Result<()> {
        let (dm, net) = (&self.dm, &self.net);
        let (d, g, l, e, hy) = (dm.d, dm.g, dm.len, dm.e, dm.hyper);
        let rows = self.rows;
        for (i, n_s) in scale_lens(dm).into_iter().enumerate() {
            self.zero(self.dscale[i], n_s)?;
        }
        let rcells = self.rcells.offset(p * rows);
        let [bx, br] = &self.branch;
        // The part's loss gradients: xyz keys, RGB queries; the padding rows 0.
        for (b, all, m) in [(bx, self.dk_all, 0usize), (br, self.dq_all, 1)] {
            self.zero(b.dq, rows * e)?;
            self.copy(b.dq, all.offset(r0 * e), n * e)?;
            self.branch_backward(m)?;
            self.zero(self.df[m], g * d)?;
            let (c, ni, gi) = (d as i32, n as i32, g as i32);
            let (src, dst) = (self.buf_c, self.df[m]);
            let mut a = kernel_args![src, c, rcells, ni, dst, gi];
            self.dev
                .launch(self.radar.scatter_add, grid(g * d), BLOCK, 0, &mut a)?;
        }
        // HyperNetwork: ds → out_i → fc1 → enc_i → e_b, spread over the G tokens.
        for (i, n_s) in scale_lens(dm).into_iter().enumerate() {
            let (out, enc, fc1) = (&net.out[i], &net.enc[i], &net.hyper_fc1);
            let (hh, vv, mean) = (
                self.hh.offset(i * hy),
                self.vv.offset(i * hy),
                self.means.offset((i / 2) * d),
            );
            self.linear_back(out, (1, hy, n_s), vv, self.dscale[i], self.dv)?;
            self.linear_back(fc1, (1, hy, hy), hh, self.dv, self.dh)?;
            self.linear_back(enc, (1, d, hy), mean, self.dh, self.de)?;
            self.add_row(self.df[i / 2], (g, d), self.de, 1.0 / g as f32)?;
        }
        // The hybrid block, then the blocks, last to first; instruction rows get no
        // gradient from the output.
        let at = if self.hybrid.is_some() { 0 } else { l };
        self.copy(self.seq.offset(at * d), self.df[0], g * d)?;
        self.copy(self.seq.offset((at + g) * d), self.df[1], g * d)?;
        if let (Some(hb), Some(hw)) = (&self.hybrid, &net.hybrid) {
            self.block_backward(hb, 2 * g, hw)?;
            self.copy(self.th, self.seq, 2 * g * d)?;
            self.copy(self.seq.offset(l * d), self.th, 2 * g * d)?;
        }
        self.zero(self.seq, l * d)?;
        for j in (0..dm.depth).rev() {
            self.block_backward(&self.blocks[j], dm.tokens(), &net.blocks[j])?;
            let gi = self.gr(net.instructions + (case as usize * dm.depth + j) * l * d);
            self.add_row(gi, (1, l * d), self.seq, 1.0)?;
            self.zero(self.seq, l * d)?;
        }
        // Tokens: t = proj(LN(x)) + type + pos.
        let inputs = [
            (dm.dx, &net.pc_norm, &net.pc_proj),
            (dm.dr, &net.rgb_norm, &net.rgb_proj),
        ];
        for (m, (dim, norm, proj)) in inputs.into_iter().enumerate() {
            let dt = self.seq.offset((l + m * g) * d);
            self.add_row(self.gr(net.pos), (1, g * d), dt, 1.0)?;
            self.col_sums(dt, (g, d), self.gr(net.type_embed + m * d))?;
            self.linear_back(proj, (g, dim, d), self.tok_a[m], dt, self.buf_a)?;
            self.ln_back(
                self.buf_a,
                self.tok_u[m],
                self.tok_rstd[m],
                (g, dim),
                norm,
                None,
            )?;
        }
        Ok(())
    }

    /// The InfoNCE of the first `n` rows of `q_all` (RGB queries) and `k_all` (xyz keys)
    /// into `nce.loss`; with `grad`, also `dq_all`, `dk_all` (zero past `n`).
    unsafe fn info_nce(&self, n: usize, grad: bool) -> Result<()> {
        let dev = &*self.dev;
        let (rows, block, e) = (self.nce.rows, self.nce.block, self.dm.e);
        let inv_t = 1.0 / self.temperature;
        let scale = 2.0 / n as f32;
        let (ld, ni) = (rows as i32, n as i32);
        let blocks = if grad {
            rows / block
        } else {
            n.div_ceil(block)
        };
        let logits = self.nce.logits;
        for bi in 0..blocks {
            let r0 = bi * block;
            let qb = self.q_all.offset(r0 * e);
            self.mm(
                Operands::XWt,
                false,
                (block, rows, e),
                qb,
                self.k_all,
                None,
                logits,
            )?;
            let r0i = r0 as i32;
            let loss_rows = self.nce.loss_rows;
            let mut a = kernel_args![logits, ld, r0i, ni, inv_t, scale, loss_rows];
            dev.launch(self.train.softmax, (block as u32, 1, 1), BLOCK, 0, &mut a)?;
            if grad {
                let dqb = self.dq_all.offset(r0 * e);
                self.mm(
                    Operands::XW,
                    false,
                    (block, e, rows),
                    logits,
                    self.k_all,
                    None,
                    dqb,
                )?;
                self.mm(
                    Operands::XtW,
                    bi > 0,
                    (rows, e, block),
                    logits,
                    qb,
                    None,
                    self.dk_all,
                )?;
            }
        }
        let t = self.temperature;
        let (loss_rows, loss) = (self.nce.loss_rows, self.nce.loss);
        let mut a = kernel_args![loss_rows, ni, t, loss];
        dev.launch(self.train.total, (1, 1, 1), (1, 1, 1), 0, &mut a)
    }

    /// Uploads the batch's features and cells; returns the rows of the batch.
    fn upload(&mut self, batch: &[PartSample<'_>]) -> Result<usize> {
        let dm = self.dm;
        let (xn, rn) = (dm.grid_x * dm.grid_x * dm.dx, dm.g * dm.dr);
        if batch.is_empty() || batch.len() > self.parts {
            return Err(Error::Input(format!(
                "device RADAR step: {} parts for a plan of up to {}",
                batch.len(),
                self.parts
            )));
        }
        self.dev.bind()?;
        let mut n = 0;
        for (p, s) in batch.iter().enumerate() {
            let m = s.cells.len();
            let max_cell = dm.grid_x * dm.grid_x;
            if m > self.rows
                || s.xyz.len() < xn
                || s.rgb.len() < rn
                || s.cells.iter().any(|&c| c as usize >= max_cell)
            {
                return Err(Error::Input(format!(
                    "device RADAR step: part {p} has {m} rows (plan {}), {} xyz and {} rgb \
                     values (need {xn}, {rn}) or a cell past {max_cell}",
                    self.rows,
                    s.xyz.len(),
                    s.rgb.len()
                )));
            }
            self.dev.upload(self.part_xyz(p).raw(), &s.xyz[..xn])?;
            self.dev.upload(self.part_rgb(p).raw(), &s.rgb[..rn])?;
            self.rcell_host.fill(0);
            for (i, &c) in s.cells.iter().enumerate() {
                self.rcell_host[i] = dm.cell(c as usize) as u32;
            }
            let at = p * self.rows;
            // Padding rows gather cell 0.
            self.dev
                .upload(self.rcells.offset(at).raw(), &self.rcell_host)?;
            self.rcell_host[..m].copy_from_slice(s.cells);
            self.rcell_host[m..].fill(0);
            self.dev
                .upload(self.cells.offset(at).raw(), &self.rcell_host)?;
            n += m;
        }
        if n == 0 {
            return Err(Error::Input(
                "device RADAR step: a batch without loss rows".into(),
            ));
        }
        Ok(n)
    }

    /// Forward of every part into the batch's head outputs, then the InfoNCE.
    fn forward_loss(&mut self, batch: &[PartSample<'_>], grad: bool) -> Result<usize> {
        let n = self.upload(batch)?;
        let e = self.dm.e;
        let mut r0 = 0;
        // SAFETY: the buffers were planned for `parts` parts of `rows` rows; `upload`
        // checked the batch against them.
        unsafe {
            for (p, s) in batch.iter().enumerate() {
                self.forward_part(p, s.case)?;
                let m = s.cells.len();
                self.copy(self.q_all.offset(r0 * e), self.branch[1].q, m * e)?;
                self.copy(self.k_all.offset(r0 * e), self.branch[0].q, m * e)?;
                r0 += m;
            }
            self.info_nce(n, grad)?;
        }
        Ok(n)
    }

    fn read_loss(&self) -> Result<f64> {
        let mut bits = [0u64];
        self.dev.download(&mut bits, self.nce.loss.raw())?;
        Ok(f64::from_bits(bits[0]))
    }
}

impl RadarStep for DeviceRadarStep {
    fn loss(&mut self, batch: &[PartSample<'_>]) -> Result<f64> {
        self.forward_loss(batch, false)?;
        self.read_loss()
    }

    fn train(
        &mut self,
        batch: &[PartSample<'_>],
        lr: f32,
        lr_instructions: f32,
        step: usize,
    ) -> Result<f64> {
        self.forward_loss(batch, true)?;
        // SAFETY: as in `forward_loss`.
        unsafe {
            self.zero(self.grads, self.params_len)?;
            let mut r0 = 0;
            for (p, s) in batch.iter().enumerate() {
                self.forward_part(p, s.case)?;
                let m = s.cells.len();
                self.backward_part(p, s.case, m, r0)?;
                r0 += m;
            }
            // AdamW, the instructions at their own learning rate.
            self.adam.next_step();
            let k = &self.train;
            self.adam
                .update(&self.dev, k, 0..self.instr_len, lr_instructions)?;
            self.adam
                .update(&self.dev, k, self.instr_len..self.params_len, lr)?;
        }
        checked_loss(&self.dev, self.nce.loss, self.bad, step)
    }

    fn params_into(&mut self, out: &mut RadarParams) -> Result<()> {
        let data = self.download_flat(self.params)?;
        copy_params(&data, &mut out.data)
    }
}
