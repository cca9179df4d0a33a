//! M3DM's UFF training step on the device (docs/RADAR-FUSION.md §5b; the CPU's
//! `fit::train_fusion::uff_loss_and_grad` and `AdamW`): forward of both branches, the
//! patch-wise InfoNCE, the hand-derived backward and the AdamW update, all through one
//! [`Device`] — cuBLASLt for every matrix product, `kernels/train.cu` for the rest.
//!
//! - The parameters, their gradient and AdamW's two moments are four flat buffers on the
//!   device, each tensor 256-byte aligned (the GEMMs' operands); they come to the host
//!   only in [`UffStep::params_into`].
//! - Every buffer is planned up front in one arena for `rows` patch pairs (the largest
//!   batch, [`DeviceUffStep::new`]'s `max_rows`, rounded up to whole blocks of logits). A
//!   step of `n < rows` pairs computes the padding rows too (the products have one shape)
//!   but the InfoNCE kernel gives them a zero gradient, so they add exact zeros to every
//!   weight gradient and the step equals one on `n` rows.
//! - Per step, the batch's feature rows go up and the loss (8 bytes) and a divergence flag
//!   (4 bytes) come back: nothing is allocated on the host.
//!
//! Products of one branch (`d` features, `h` hidden, `e` head; rows `N`), operand layouts
//! of [`Operands`]:
//!
//! | forward | backward |
//! |---------|----------|
//! | `z1 = a·W1ᵀ + b1` | `dWh = dpᵀ·y`, `dy = dp·Wh` |
//! | `y = g·W2ᵀ + b2`  | `dW2 = dyᵀ·g`, `dz = dy·W2` |
//! | `p = y·Whᵀ + bh`  | `dW1 = dzᵀ·a`, `da = dz·W1` |
//!
//! and the InfoNCE per block of `B` queries (RGB `q`, keys xyz `k`): `S = q_b·kᵀ`, then
//! `dq_b = G·k`, `dk (+)= Gᵀ·q_b` with `G` the kernel's `(2/n)(softmax(S/T) − I)`.

use std::sync::Arc;

use crate::backend::Precision;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{
    Epilogue, GemmPlan, GemmShape, Operands, Workspace, GEMM_WORKSPACE_BYTES,
};
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::cuda::ops::embed::EmbedKernels;
use crate::cuda::stages::forward::gemm;
use crate::fit::train_fusion::{UffParams, UffStep, UffTrainOptions, BRANCH_TENSORS};
use crate::format::TensorSpec;
use crate::kernel_args;
use crate::{Error, Result};

/// Queries per block of logits (the CPU's `infonce::BLOCK_ROWS` is a memory bound too;
/// the device's blocks may be larger: `B × rows` floats of logits).
pub const LOGIT_BLOCK_ROWS: usize = 1024;

const THREADS: u32 = 256;

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("device UFF training: {msg}"))
}

/// `kernels/train.cu` (also used by RADAR's training, `super::radar`).
pub(crate) struct TrainKernels {
    pub(crate) affine: Kernel,
    pub(crate) gelu: Kernel,
    pub(crate) gelu_backward: Kernel,
    pub(crate) normalize: Kernel,
    pub(crate) normalize_backward: Kernel,
    pub(crate) softmax: Kernel,
    pub(crate) total: Kernel,
    pub(crate) col_sums: Kernel,
    pub(crate) ln_grads: Kernel,
    pub(crate) adamw: Kernel,
    // Declared last: the functions above belong to it.
    _module: Module,
}

impl TrainKernels {
    pub(crate) fn new(dev: &Device) -> Result<Self> {
        let m = Module::load(dev, "train")?;
        Ok(TrainKernels {
            affine: Kernel::find(&m, "affine_cols_f32")?,
            gelu: Kernel::find(&m, "gelu_f32")?,
            gelu_backward: Kernel::find(&m, "gelu_backward_f32")?,
            normalize: Kernel::find(&m, "l2_normalize_rows_f32")?,
            normalize_backward: Kernel::find(&m, "l2_normalize_backward_f32")?,
            softmax: Kernel::find(&m, "infonce_softmax_f32")?,
            total: Kernel::find(&m, "infonce_total_f64")?,
            col_sums: Kernel::find(&m, "col_sums_f32")?,
            ln_grads: Kernel::find(&m, "ln_param_grads_f32")?,
            adamw: Kernel::find(&m, "adamw_f32")?,
            _module: m,
        })
    }
}

/// One thread per element of `n`.
pub(crate) fn grid(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(THREADS as usize).max(1) as u32, 1, 1)
}
pub(crate) const BLOCK: (u32, u32, u32) = (THREADS, 1, 1);

/// Where one tensor of [`UffParams`] lies in the device's flat buffers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorPlace {
    pub(crate) host: usize,
    pub(crate) dev: usize,
    pub(crate) len: usize,
}

/// Floats between tensors' starts are rounded up to this (256 bytes: GEMM alignment).
const TENSOR_ALIGN: usize = 64;

/// The device layout of the flat parameter vector; returns the places and the total.
pub(crate) fn tensor_places(specs: &[(TensorSpec, usize)]) -> (Vec<TensorPlace>, usize) {
    let mut at = 0;
    let places = specs
        .iter()
        .map(|(s, host)| {
            let len: usize = s.shape.iter().product();
            let t = TensorPlace {
                host: *host,
                dev: at,
                len,
            };
            at += len.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
            t
        })
        .collect();
    (places, at.max(1))
}

/// AdamW on the device over ranges of the four flat buffers (parameters, gradient, first
/// and second moments), the CPU's arithmetic (`fit::train_fusion::AdamW::step`); a
/// non-finite gradient raises the flag at `bad`.
pub(crate) struct DeviceAdamW {
    flat: [DevPtr<f32>; 4],
    bad: DevPtr<i32>,
    betas: (f32, f32),
    eps: f32,
    weight_decay: f32,
    /// Updates done.
    t: u32,
}

impl DeviceAdamW {
    pub(crate) fn new(
        flat: [DevPtr<f32>; 4],
        bad: DevPtr<i32>,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    ) -> Self {
        DeviceAdamW {
            flat,
            bad,
            betas,
            eps,
            weight_decay,
            t: 0,
        }
    }

    /// Counts one more update: the bias correction of the ranges updated next.
    pub(crate) fn next_step(&mut self) {
        self.t += 1;
    }

    /// Updates the floats `range` of the flat buffers at learning rate `lr`.
    ///
    /// # Safety
    /// `range` lies inside the four buffers.
    pub(crate) unsafe fn update(
        &self,
        dev: &Device,
        k: &TrainKernels,
        range: std::ops::Range<usize>,
        lr: f32,
    ) -> Result<()> {
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        let (step_size, decay) = (lr / bc1, 1.0 - lr * self.weight_decay);
        let (len, eps) = (range.len() as i64, self.eps);
        let [p, g, m, v] = self.flat.map(|b| b.offset(range.start));
        let mut a =
            kernel_args![p, g, m, v, len, step_size, decay, b1, b2, bc2_sqrt, eps, self.bad];
        dev.launch(k.adamw, grid(range.len()), BLOCK, 0, &mut a)
    }
}

/// The loss of a training step (f64 bits at `loss`), or the error of a diverged one (a
/// non-finite loss, or the AdamW kernel's flag at `bad`).
pub(crate) fn checked_loss(
    dev: &Device,
    loss: DevPtr<u64>,
    bad: DevPtr<i32>,
    step: usize,
) -> Result<f64> {
    let mut bits = [0u64];
    dev.download(&mut bits, loss.raw())?;
    let loss = f64::from_bits(bits[0]);
    let mut flag = [0i32];
    dev.download(&mut flag, bad.raw())?;
    if !loss.is_finite() || flag[0] != 0 {
        return Err(Error::Input(format!(
            "training diverged at step {step} (loss {loss}): lower --lr"
        )));
    }
    Ok(loss)
}

/// Copies the downloaded parameters `data` into `out`, refusing another length.
pub(crate) fn copy_params(data: &[f32], out: &mut [f32]) -> Result<()> {
    if data.len() != out.len() {
        return Err(Error::Config(format!(
            "device training: {} parameters on the device, {} in the output",
            data.len(),
            out.len()
        )));
    }
    out.copy_from_slice(data);
    Ok(())
}

/// The flat host vector `host` (laid out as the places' host offsets) in the device
/// layout of `len` floats (padding zero).
pub(crate) fn device_order(places: &[TensorPlace], len: usize, host: &[f32]) -> Vec<f32> {
    let mut flat = vec![0f32; len];
    for t in places {
        flat[t.dev..t.dev + t.len].copy_from_slice(&host[t.host..t.host + t.len]);
    }
    flat
}

/// The device buffer `src` (`len` floats in the device layout) as the flat host vector.
pub(crate) fn download_host_order(
    dev: &Device,
    src: DevPtr<f32>,
    places: &[TensorPlace],
    len: usize,
) -> Result<Vec<f32>> {
    let mut flat = vec![0f32; len];
    dev.bind()?;
    dev.download(&mut flat, src.raw())?;
    let host_len = places.iter().map(|t| t.host + t.len).max().unwrap_or(0);
    let mut out = vec![0f32; host_len];
    for t in places {
        out[t.host..t.host + t.len].copy_from_slice(&flat[t.dev..t.dev + t.len]);
    }
    Ok(out)
}

/// One branch's sizes and its planned products.
struct Branch {
    dim: usize,
    hidden: usize,
    /// Offsets (floats) of its 8 tensors in the flat buffers.
    t: [usize; 8],
    /// fc1, fc2, head (forward); dWh, dy, dW2, dz, dW1, da (backward).
    plans: [GemmPlan; 9],
    /// Activations kept for the backward pass.
    x: DevPtr<f32>,
    u: DevPtr<f32>,
    a: DevPtr<f32>,
    z1: DevPtr<f32>,
    g: DevPtr<f32>,
    y: DevPtr<f32>,
    p: DevPtr<f32>,
    q: DevPtr<f32>,
    norms: DevPtr<f32>,
    /// ∂L/∂q of this branch (the InfoNCE's output).
    dq: DevPtr<f32>,
}

/// Slots of one branch's activations.
struct BranchSlots {
    x: Slot<f32>,
    u: Slot<f32>,
    a: Slot<f32>,
    z1: Slot<f32>,
    g: Slot<f32>,
    y: Slot<f32>,
    p: Slot<f32>,
    q: Slot<f32>,
    norms: Slot<f32>,
    dq: Slot<f32>,
}

impl BranchSlots {
    fn plan(plan: &mut ArenaPlan, rows: usize, d: usize, h: usize, e: usize) -> Self {
        BranchSlots {
            x: plan.add(rows * d),
            u: plan.add(rows * d),
            a: plan.add(rows * d),
            z1: plan.add(rows * h),
            g: plan.add(rows * h),
            y: plan.add(rows * d),
            p: plan.add(rows * e),
            q: plan.add(rows * e),
            norms: plan.add(rows),
            dq: plan.add(rows * e),
        }
    }
}

fn branch_shapes(rows: usize, d: usize, h: usize, e: usize) -> Result<[GemmShape; 9]> {
    let f = Precision::F32;
    let s = |m, n, k, epi| GemmShape::new(m, n, k, f, epi);
    Ok([
        s(rows, h, d, Epilogue::Bias)?,
        s(rows, d, h, Epilogue::Bias)?,
        s(rows, e, d, Epilogue::Bias)?,
        s(e, d, rows, Epilogue::None)?.with_operands(Operands::XtW),
        s(rows, d, e, Epilogue::None)?.with_operands(Operands::XW),
        s(d, h, rows, Epilogue::None)?.with_operands(Operands::XtW),
        s(rows, h, d, Epilogue::None)?.with_operands(Operands::XW),
        s(h, d, rows, Epilogue::None)?.with_operands(Operands::XtW),
        s(rows, d, h, Epilogue::None)?.with_operands(Operands::XW),
    ])
}

/// The UFF training step on a device ([`UffStep`]; module doc). Fields drop in declaration
/// order: the plans, the arena, the kernels, the device last.
pub struct DeviceUffStep {
    xyz: Branch,
    rgb: Branch,
    /// S = q_b·kᵀ, dq_b = G·k, dk = Gᵀ·q_b (first block), dk += Gᵀ·q_b (the others).
    nce: [GemmPlan; 4],
    _arena: Arena,
    kernels: TrainKernels,
    embed: EmbedKernels,
    places: Vec<TensorPlace>,
    params_len: usize,
    params: DevPtr<f32>,
    grads: DevPtr<f32>,
    ones: DevPtr<f32>,
    zeros: DevPtr<f32>,
    dp: DevPtr<f32>,
    dy: DevPtr<f32>,
    dz: DevPtr<f32>,
    da: DevPtr<f32>,
    logits: DevPtr<f32>,
    loss_rows: DevPtr<u64>,
    loss: DevPtr<u64>,
    bad: DevPtr<i32>,
    rows: usize,
    block: usize,
    head: usize,
    ln_eps: f32,
    temperature: f32,
    adam: DeviceAdamW,
    dev: Arc<Device>,
}

// SAFETY: driver and cuBLASLt handles and device addresses, used from one thread at a time
// (the trainer's; the context is made current with `Device::bind`).
unsafe impl Send for DeviceUffStep {}

impl DeviceUffStep {
    /// Uploads `params`, plans every buffer and product for batches of up to `max_rows`
    /// patch pairs, and zeroes AdamW's moments (a fresh optimiser, as the CPU's).
    pub fn new(
        dev: Arc<Device>,
        params: &UffParams,
        opts: &UffTrainOptions,
        max_rows: usize,
    ) -> Result<Self> {
        Self::with_block(dev, params, opts, max_rows, LOGIT_BLOCK_ROWS)
    }

    /// [`DeviceUffStep::new`] with blocks of at most `block_rows` queries of logits (tests:
    /// several blocks on small batches).
    pub fn with_block(
        dev: Arc<Device>,
        params: &UffParams,
        opts: &UffTrainOptions,
        max_rows: usize,
        block_rows: usize,
    ) -> Result<Self> {
        let cfg = &params.cfg;
        let (dx, dr) = (cfg.xyz_dim as usize, cfg.rgb_dim as usize);
        let ratio = cfg.mlp_ratio as usize;
        let (hx, hr, e) = (ratio * dx, ratio * dr, cfg.head_dim as usize);
        if dx == 0 || dr == 0 || ratio == 0 || e == 0 || max_rows == 0 || block_rows == 0 {
            return Err(cfg_err(format!(
                "a zero size: xyz {dx}, rgb {dr}, ratio {ratio}, head {e}, rows {max_rows}"
            )));
        }
        if !(opts.temperature.is_finite() && opts.temperature > 0.0) {
            return Err(cfg_err(format!("temperature {}", opts.temperature)));
        }
        // Blocks after the first start 4-float aligned (GEMM operands): a multiple of 4.
        let block = if max_rows <= block_rows {
            max_rows
        } else {
            block_rows.div_ceil(4) * 4
        };
        let rows = max_rows.div_ceil(block) * block;
        if rows > i32::MAX as usize / 2 {
            return Err(cfg_err(format!("{rows} rows per step")));
        }
        let (places, params_len) = tensor_places(&params.specs);

        let mut plan = ArenaPlan::new();
        let sp = plan.add::<f32>(params_len);
        let sg = plan.add::<f32>(params_len);
        let sm = plan.add::<f32>(params_len);
        let sv = plan.add::<f32>(params_len);
        let (dmax, hmax) = (dx.max(dr), hx.max(hr));
        let s_ones = plan.add::<f32>(dmax);
        let s_zeros = plan.add::<f32>(dmax);
        let bx = BranchSlots::plan(&mut plan, rows, dx, hx, e);
        let br = BranchSlots::plan(&mut plan, rows, dr, hr, e);
        let s_dp = plan.add::<f32>(rows * e);
        let s_dy = plan.add::<f32>(rows * dmax);
        let s_dz = plan.add::<f32>(rows * hmax);
        let s_da = plan.add::<f32>(rows * dmax);
        let s_logits = plan.add::<f32>(block * rows);
        let s_loss_rows = plan.add::<u64>(rows);
        let s_loss = plan.add::<u64>(1);
        let s_bad = plan.add::<i32>(1);
        let s_ws = plan.add::<u8>(GEMM_WORKSPACE_BYTES);

        dev.bind()?;
        let arena = Arena::new(&dev, &plan)?;
        // Every buffer starts at zero: the padding rows and the moments.
        dev.memset_u8(arena.ptr(sp).raw(), 0, arena.bytes())?;
        arena.upload(&dev, sp, &device_order(&places, params_len, &params.data))?;
        arena.upload(&dev, s_ones, &vec![1f32; dmax])?;

        let kernels = TrainKernels::new(&dev)?;
        let embed = EmbedKernels::without_backbones(&dev)?;
        let lt = dev.cublaslt()?;
        let ws = Workspace {
            ptr: arena.ptr(s_ws),
            bytes: s_ws.len,
        };
        let plan_all = |shapes: &[GemmShape]| -> Result<Vec<GemmPlan>> {
            shapes
                .iter()
                .map(|&s| GemmPlan::new(&dev, lt, s, ws, None))
                .collect()
        };
        let nine = |v: Vec<GemmPlan>| -> Result<[GemmPlan; 9]> {
            v.try_into()
                .map_err(|_| cfg_err("nine products per branch"))
        };
        let offsets = |b: usize| BRANCH_TENSORS[b].map(|i| places[i].dev);
        let make = |s: &BranchSlots, d, h, b| -> Result<Branch> {
            Ok(Branch {
                dim: d,
                hidden: h,
                t: offsets(b),
                plans: nine(plan_all(&branch_shapes(rows, d, h, e)?)?)?,
                x: arena.ptr(s.x),
                u: arena.ptr(s.u),
                a: arena.ptr(s.a),
                z1: arena.ptr(s.z1),
                g: arena.ptr(s.g),
                y: arena.ptr(s.y),
                p: arena.ptr(s.p),
                q: arena.ptr(s.q),
                norms: arena.ptr(s.norms),
                dq: arena.ptr(s.dq),
            })
        };
        let xyz = make(&bx, dx, hx, 0)?;
        let rgb = make(&br, dr, hr, 1)?;
        let f = Precision::F32;
        let nce_shapes = [
            GemmShape::new(block, rows, e, f, Epilogue::None)?,
            GemmShape::new(block, e, rows, f, Epilogue::None)?.with_operands(Operands::XW),
            GemmShape::new(rows, e, block, f, Epilogue::None)?.with_operands(Operands::XtW),
            GemmShape::new(rows, e, block, f, Epilogue::None)?
                .with_operands(Operands::XtW)
                .accumulating()?,
        ];
        let nce: [GemmPlan; 4] = plan_all(&nce_shapes)?
            .try_into()
            .map_err(|_| cfg_err("four InfoNCE products"))?;
        let adam = DeviceAdamW::new(
            [sp, sg, sm, sv].map(|s| arena.ptr(s)),
            arena.ptr(s_bad),
            opts.betas,
            opts.adam_eps,
            opts.weight_decay,
        );
        Ok(DeviceUffStep {
            xyz,
            rgb,
            nce,
            places,
            params_len,
            params: arena.ptr(sp),
            grads: arena.ptr(sg),
            ones: arena.ptr(s_ones),
            zeros: arena.ptr(s_zeros),
            dp: arena.ptr(s_dp),
            dy: arena.ptr(s_dy),
            dz: arena.ptr(s_dz),
            da: arena.ptr(s_da),
            logits: arena.ptr(s_logits),
            loss_rows: arena.ptr(s_loss_rows),
            loss: arena.ptr(s_loss),
            bad: arena.ptr(s_bad),
            _arena: arena,
            kernels,
            embed,
            rows,
            block,
            head: e,
            ln_eps: cfg.ln_eps,
            temperature: opts.temperature,
            adam,
            dev,
        })
    }

    /// Rows every step computes (the largest batch, rounded up to whole logit blocks).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The device this step runs on.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The current gradient (of the last [`UffStep::train`]) laid out as [`UffParams`]
    /// (tests).
    pub fn gradient(&self) -> Result<Vec<f32>> {
        self.download_flat(self.grads)
    }

    fn download_flat(&self, src: DevPtr<f32>) -> Result<Vec<f32>> {
        download_host_order(&self.dev, src, &self.places, self.params_len)
    }

    fn check_batch(&self, xyz: &[f32], rgb: &[f32], n: usize) -> Result<()> {
        let (dx, dr) = (self.xyz.dim, self.rgb.dim);
        if n == 0 || n > self.rows || xyz.len() < n * dx || rgb.len() < n * dr {
            return Err(Error::Input(format!(
                "device UFF step: {n} pairs ({} xyz, {} rgb values) for a plan of up to {} rows",
                xyz.len(),
                rgb.len(),
                self.rows
            )));
        }
        Ok(())
    }

    fn w(&self, off: usize) -> u64 {
        self.params.offset(off).raw()
    }

    /// Forward of one branch over every planned row: LayerNorm, fc1, GELU, fc2, head,
    /// L2 normalisation.
    unsafe fn forward(&self, b: &Branch) -> Result<()> {
        let dev = &*self.dev;
        let (rows, d, h, e) = (self.rows, b.dim, b.hidden, self.head);
        let k = &self.kernels;
        // u = (x − μ)/σ, then a = γ u + β: the CPU's two steps, u kept for ∂γ.
        self.embed.layernorm(
            dev,
            (rows, d),
            b.x,
            d,
            DevPtr::null(),
            (self.ones, self.zeros),
            self.ln_eps,
            b.u,
            d,
        )?;
        let (nd, nh) = ((rows * d) as i64, (rows * h) as i64);
        let (gamma, beta) = (self.params.offset(b.t[0]), self.params.offset(b.t[1]));
        let di = d as i32;
        let mut a = kernel_args![b.u, gamma, beta, nd, di, b.a];
        dev.launch(k.affine, grid(rows * d), BLOCK, 0, &mut a)?;
        gemm(
            &b.plans[0],
            dev,
            b.a.raw(),
            self.w(b.t[2]),
            self.w(b.t[3]),
            b.z1.raw(),
        )?;
        let mut a = kernel_args![b.z1, nh, b.g];
        dev.launch(k.gelu, grid(rows * h), BLOCK, 0, &mut a)?;
        gemm(
            &b.plans[1],
            dev,
            b.g.raw(),
            self.w(b.t[4]),
            self.w(b.t[5]),
            b.y.raw(),
        )?;
        gemm(
            &b.plans[2],
            dev,
            b.y.raw(),
            self.w(b.t[6]),
            self.w(b.t[7]),
            b.p.raw(),
        )?;
        let (ri, ei) = (rows as i32, e as i32);
        let mut a = kernel_args![b.p, ri, ei, b.q, b.norms];
        dev.launch(k.normalize, grid(rows), BLOCK, 0, &mut a)
    }

    /// The InfoNCE of the first `n` rows of both branches into `self.loss`; with `grad`,
    /// also ∂L/∂q (RGB, `rgb.dq`) and ∂L/∂k (xyz, `xyz.dq`), zero on the padding rows.
    unsafe fn info_nce(&self, n: usize, grad: bool) -> Result<()> {
        let dev = &*self.dev;
        let (rows, block, e) = (self.rows, self.block, self.head);
        let (q, kx) = (self.rgb.q, self.xyz.q);
        let inv_t = 1.0 / self.temperature;
        let scale = 2.0 / n as f32;
        let (ld, ni) = (rows as i32, n as i32);
        // Blocks past the batch only zero their gradient rows; without a gradient they
        // are skipped.
        let blocks = if grad {
            rows / block
        } else {
            n.div_ceil(block)
        };
        let [s_plan, dq_plan, dk_first, dk_acc] = &self.nce;
        for bi in 0..blocks {
            let r0 = bi * block;
            let qb = q.offset(r0 * e);
            gemm(s_plan, dev, qb.raw(), kx.raw(), 0, self.logits.raw())?;
            let r0i = r0 as i32;
            let mut a = kernel_args![self.logits, ld, r0i, ni, inv_t, scale, self.loss_rows];
            dev.launch(self.kernels.softmax, (block as u32, 1, 1), BLOCK, 0, &mut a)?;
            if grad {
                let dqb = self.rgb.dq.offset(r0 * e);
                gemm(dq_plan, dev, self.logits.raw(), kx.raw(), 0, dqb.raw())?;
                let dk = if bi == 0 { dk_first } else { dk_acc };
                gemm(dk, dev, self.logits.raw(), qb.raw(), 0, self.xyz.dq.raw())?;
            }
        }
        let t = self.temperature;
        let mut a = kernel_args![self.loss_rows, ni, t, self.loss];
        dev.launch(self.kernels.total, (1, 1, 1), (1, 1, 1), 0, &mut a)
    }

    /// Backward of one branch from its `dq` into the gradient buffer (every tensor of the
    /// branch written).
    unsafe fn backward(&self, b: &Branch) -> Result<()> {
        let dev = &*self.dev;
        let k = &self.kernels;
        let (rows, d, h, e) = (self.rows, b.dim, b.hidden, self.head);
        let (ri, di, hi, ei) = (rows as i32, d as i32, h as i32, e as i32);
        let g = |i: usize| self.grads.offset(b.t[i]);
        let mut a = kernel_args![b.q, b.norms, b.dq, ri, ei, self.dp];
        dev.launch(k.normalize_backward, grid(rows), BLOCK, 0, &mut a)?;
        // head
        gemm(&b.plans[3], dev, self.dp.raw(), b.y.raw(), 0, g(6).raw())?;
        let (gh, g2, g1) = (g(7), g(5), g(3));
        let mut a = kernel_args![self.dp, ri, ei, gh];
        dev.launch(k.col_sums, grid(e), BLOCK, 0, &mut a)?;
        gemm(
            &b.plans[4],
            dev,
            self.dp.raw(),
            self.w(b.t[6]),
            0,
            self.dy.raw(),
        )?;
        // fc2
        gemm(&b.plans[5], dev, self.dy.raw(), b.g.raw(), 0, g(4).raw())?;
        let mut a = kernel_args![self.dy, ri, di, g2];
        dev.launch(k.col_sums, grid(d), BLOCK, 0, &mut a)?;
        gemm(
            &b.plans[6],
            dev,
            self.dy.raw(),
            self.w(b.t[4]),
            0,
            self.dz.raw(),
        )?;
        let nh = (rows * h) as i64;
        let mut a = kernel_args![self.dz, b.z1, nh];
        dev.launch(k.gelu_backward, grid(rows * h), BLOCK, 0, &mut a)?;
        // fc1
        gemm(&b.plans[7], dev, self.dz.raw(), b.a.raw(), 0, g(2).raw())?;
        let mut a = kernel_args![self.dz, ri, hi, g1];
        dev.launch(k.col_sums, grid(h), BLOCK, 0, &mut a)?;
        gemm(
            &b.plans[8],
            dev,
            self.dz.raw(),
            self.w(b.t[2]),
            0,
            self.da.raw(),
        )?;
        // LayerNorm affine
        let (gg, gb) = (g(0), g(1));
        let mut a = kernel_args![self.da, b.u, ri, di, gg, gb];
        dev.launch(k.ln_grads, grid(d), BLOCK, 0, &mut a)
    }

    /// Uploads the batch, runs both forwards and the InfoNCE.
    fn forward_loss(&mut self, xyz: &[f32], rgb: &[f32], n: usize, grad: bool) -> Result<()> {
        self.check_batch(xyz, rgb, n)?;
        let dev = &*self.dev;
        dev.bind()?;
        dev.upload(self.xyz.x.raw(), &xyz[..n * self.xyz.dim])?;
        dev.upload(self.rgb.x.raw(), &rgb[..n * self.rgb.dim])?;
        // SAFETY: every buffer was planned for `self.rows` rows of these widths.
        unsafe {
            self.forward(&self.xyz)?;
            self.forward(&self.rgb)?;
            self.info_nce(n, grad)
        }
    }

    fn read_loss(&self) -> Result<f64> {
        let mut bits = [0u64];
        self.dev.download(&mut bits, self.loss.raw())?;
        Ok(f64::from_bits(bits[0]))
    }
}

impl UffStep for DeviceUffStep {
    fn loss(&mut self, xyz: &[f32], rgb: &[f32], n: usize) -> Result<f64> {
        if n == 0 {
            return Ok(0.0);
        }
        self.forward_loss(xyz, rgb, n, false)?;
        self.read_loss()
    }

    fn train(&mut self, xyz: &[f32], rgb: &[f32], n: usize, lr: f32, step: usize) -> Result<f64> {
        self.forward_loss(xyz, rgb, n, true)?;
        let dev = &*self.dev;
        // The bias and LayerNorm sums accumulate (`train.cu`): from zero.
        dev.memset_u8(self.grads.raw(), 0, self.params_len * 4)?;
        // SAFETY: as in `forward_loss`.
        unsafe {
            self.backward(&self.xyz)?;
            self.backward(&self.rgb)?;
        }
        self.adam.next_step();
        // SAFETY: the four flat buffers hold `params_len` floats.
        unsafe {
            self.adam
                .update(dev, &self.kernels, 0..self.params_len, lr)?;
        }
        checked_loss(dev, self.loss, self.bad, step)
    }

    fn params_into(&mut self, out: &mut UffParams) -> Result<()> {
        let data = self.download_flat(self.params)?;
        copy_params(&data, &mut out.data)
    }
}
