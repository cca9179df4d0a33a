//! Training M3DM's unsupervised feature fusion (UFF) from a category's training parts:
//! docs/RADAR-FUSION.md §5b, the computation behind `miad train-fusion --method uff`.
//!
//! - [`UffParams`]: the fusion tensors (`fusion.*` of the model file, heads included) in
//!   one flat vector, in the model file's order, so AdamW and the gradient are flat too.
//! - [`uff_loss_and_grad`]: forward and hand-derived backward of LayerNorm → MLP → head
//!   → L2 normalisation for both branches, then the InfoNCE of [`super::infonce`].
//! - [`train_uff`]: the training loop (seeded shuffles and patch draws, warm-up + cosine,
//!   AdamW) over any [`FeatureExtractor`]; features are extracted once into scratch files.
//!   The steps run on a [`UffStep`]: [`CpuUffStep`], or with `--backend cuda` the device's
//!   (`fit::device::uff`); the batches are drawn here, the same for both.
//! - [`train_fusion_category`]: from a model file and a category folder to a new model
//!   file (temporary name, then renamed) whose provenance records the training.
//! - [`export_reference`]: the trained fusion as the authors' checkpoint names it.

use super::banks::FeatureExtractor;
use super::infonce::{
    info_nce, matmul_nn, matmul_tn, normalize_rows, normalize_rows_backward, BLOCK_ROWS,
};
use super::scratch::ScratchFile;
use crate::config::{FusionConfig, ModelConfig};
use crate::cpu::dense::DensePrecision;
use crate::cpu::fusion::layer_norm_rows;
use crate::cpu::gemm::{self, gelu, Epilogue, Mat};
use crate::cpu::pool::Pool;
use crate::cpu::radar_fusion::gelu_grad;
use crate::format::{
    hex, model_tensor_specs, write_model, write_safetensors, ModelFile, OpenOptions, OwnedTensors,
    StTensor, TensorSource, TensorSpec,
};
use crate::util::rng::Rng;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The fusion tensors of a model in one flat vector.
#[derive(Clone, Debug)]
pub struct UffParams {
    /// `fusion.*` tensors in model-file order, with their offsets into `data`.
    pub specs: Vec<(TensorSpec, usize)>,
    pub data: Vec<f32>,
    pub cfg: FusionConfig,
}

/// Index of each tensor in [`UffParams::specs`] (model-file order, SPEC §5 + heads).
mod idx {
    pub const XYZ_NORM_W: usize = 0;
    pub const RGB_NORM_W: usize = 6;
    pub const RGB_HEAD_W: usize = 12;
    pub const XYZ_HEAD_W: usize = 14;
}

/// The tensors of each branch (xyz, then RGB) in [`UffParams::specs`]: LayerNorm weight
/// and bias, fc1, fc2, head (weight, bias each).
pub const BRANCH_TENSORS: [[usize; 8]; 2] = [
    [0, 1, 2, 3, 4, 5, idx::XYZ_HEAD_W, idx::XYZ_HEAD_W + 1],
    [
        idx::RGB_NORM_W,
        idx::RGB_NORM_W + 1,
        idx::RGB_NORM_W + 2,
        idx::RGB_NORM_W + 3,
        idx::RGB_NORM_W + 4,
        idx::RGB_NORM_W + 5,
        idx::RGB_HEAD_W,
        idx::RGB_HEAD_W + 1,
    ],
];

fn fusion_specs(cfg: &FusionConfig) -> Vec<TensorSpec> {
    let model = ModelConfig {
        name: String::new(),
        vit: None,
        point: None,
        fusion: Some(cfg.clone()),
        radar: None,
        preprocess: crate::config::PreprocessConfig::default(),
    };
    model_tensor_specs(&model)
}

impl UffParams {
    fn layout(cfg: &FusionConfig) -> (Vec<(TensorSpec, usize)>, usize) {
        let mut off = 0;
        let specs: Vec<(TensorSpec, usize)> = fusion_specs(cfg)
            .into_iter()
            .map(|s| {
                let at = off;
                off += s.shape.iter().product::<usize>();
                (s, at)
            })
            .collect();
        debug_assert_eq!(specs.len(), 16);
        debug_assert_eq!(specs[idx::XYZ_HEAD_W].0.name, "fusion.xyz_head.weight");
        (specs, off)
    }

    /// PyTorch's default initialisation, from `seed`: LayerNorm γ = 1, β = 0; Linear
    /// weight and bias uniform in ±1/√fan_in.
    pub fn init(cfg: &FusionConfig, seed: u64) -> Self {
        let (specs, len) = Self::layout(cfg);
        let mut data = vec![0f32; len];
        let mut rng = Rng::new(seed ^ 0x7566_665f_696e_6974);
        for (s, off) in &specs {
            let n: usize = s.shape.iter().product();
            let out = &mut data[*off..off + n];
            if s.name.contains("_norm.") {
                out.fill(if s.name.ends_with("weight") { 1.0 } else { 0.0 });
            } else {
                // Linear: fan_in is the weight's second dimension; its bias shares it.
                let weight = s.name.replace(".bias", ".weight");
                let fan_in = specs
                    .iter()
                    .find(|(w, _)| w.name == weight)
                    .map_or(1, |(w, _)| w.shape[1]);
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                out.iter_mut()
                    .for_each(|v| *v = (2.0 * rng.uniform() - 1.0) * bound);
            }
        }
        UffParams {
            specs,
            data,
            cfg: cfg.clone(),
        }
    }

    /// The fusion tensors of any tensor store (a model file, a checkpoint).
    pub fn from_source<S: TensorSource + ?Sized>(src: &S, cfg: &FusionConfig) -> Result<Self> {
        let (specs, len) = Self::layout(cfg);
        let mut data = vec![0f32; len];
        for (s, off) in &specs {
            let t = src.f32(&s.name, &s.shape)?;
            data[*off..off + t.len()].copy_from_slice(t);
        }
        Ok(UffParams {
            specs,
            data,
            cfg: cfg.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The tensor at index `i` of [`Self::specs`].
    pub fn tensor(&self, i: usize) -> &[f32] {
        tensor_of(&self.specs, &self.data, i)
    }

    /// The tensors as named in the model file.
    pub fn to_tensors(&self) -> OwnedTensors {
        let mut t = OwnedTensors {
            origin: "trained fusion".into(),
            ..Default::default()
        };
        for (i, (s, _)) in self.specs.iter().enumerate() {
            t.insert(s.name.clone(), s.shape.clone(), self.tensor(i).to_vec());
        }
        t
    }
}

fn tensor_of<'a>(specs: &[(TensorSpec, usize)], data: &'a [f32], i: usize) -> &'a [f32] {
    let (s, off) = &specs[i];
    &data[*off..off + s.shape.iter().product::<usize>()]
}

/// Splits a flat vector laid out as `specs` into one mutable slice per tensor.
fn split_mut<'a>(specs: &[(TensorSpec, usize)], mut data: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(specs.len());
    for (s, _) in specs {
        let (head, rest) = data.split_at_mut(s.shape.iter().product());
        out.push(head);
        data = rest;
    }
    out
}

/// One branch's tensors: LayerNorm, fc1, fc2, head.
struct Branch<'a> {
    dim: usize,
    hidden: usize,
    head: usize,
    t: [&'a [f32]; 8],
}

fn branch<'a>(p: &'a UffParams, norm_w: usize, head_w: usize) -> Branch<'a> {
    let s = &p.specs;
    Branch {
        dim: s[norm_w].0.shape[0],
        hidden: s[norm_w + 2].0.shape[0],
        head: s[head_w].0.shape[0],
        t: [
            p.tensor(norm_w),
            p.tensor(norm_w + 1),
            p.tensor(norm_w + 2),
            p.tensor(norm_w + 3),
            p.tensor(norm_w + 4),
            p.tensor(norm_w + 5),
            p.tensor(head_w),
            p.tensor(head_w + 1),
        ],
    }
}

/// Activations of one branch for `n` rows, kept for the backward pass.
#[derive(Default)]
struct BranchActs {
    /// (x − μ)/σ before the affine (n × d)
    u: Vec<f32>,
    /// LayerNorm output (n × d)
    a: Vec<f32>,
    /// fc1 pre-activation (n × h)
    z1: Vec<f32>,
    /// GELU(z1) (n × h)
    g: Vec<f32>,
    /// fc2 output = the fused half (n × d)
    y: Vec<f32>,
    /// head output (n × e)
    p: Vec<f32>,
    /// ‖p‖ per row
    norms: Vec<f32>,
    /// normalised head output (n × e)
    q: Vec<f32>,
    /// gradient scratch: (n × e), (n × d), (n × h), (n × d)
    dp: Vec<f32>,
    dy: Vec<f32>,
    dz: Vec<f32>,
    da: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl BranchActs {
    fn forward(&mut self, pool: &Pool, w: &Branch<'_>, x: &[f32], n: usize, eps: f32) {
        let (d, h, e) = (w.dim, w.hidden, w.head);
        let [nw, nb, w1, b1, w2, b2, wh, bh] = w.t;
        let ones = vec![1.0f32; d];
        let zeros = vec![0.0f32; d];
        layer_norm_rows(
            &x[..n * d],
            d,
            &ones,
            &zeros,
            eps,
            sized(&mut self.u, n * d),
        );
        let a = sized(&mut self.a, n * d);
        for (ar, ur) in a.chunks_exact_mut(d).zip(self.u.chunks_exact(d)) {
            for i in 0..d {
                ar[i] = ur[i] * nw[i] + nb[i];
            }
        }
        let z1 = sized(&mut self.z1, n * h);
        gemm::linear(
            pool,
            Mat::new(&self.a[..n * d], n, d),
            Mat::new(w1, h, d),
            Some(b1),
            z1,
            h,
            Epilogue::None,
        );
        let g = sized(&mut self.g, n * h);
        g.iter_mut()
            .zip(&self.z1[..n * h])
            .for_each(|(g, &z)| *g = gelu(z));
        gemm::linear(
            pool,
            Mat::new(&self.g[..n * h], n, h),
            Mat::new(w2, d, h),
            Some(b2),
            sized(&mut self.y, n * d),
            d,
            Epilogue::None,
        );
        gemm::linear(
            pool,
            Mat::new(&self.y[..n * d], n, d),
            Mat::new(wh, e, d),
            Some(bh),
            sized(&mut self.p, n * e),
            e,
            Epilogue::None,
        );
        normalize_rows(
            &self.p[..n * e],
            e,
            sized(&mut self.q, n * e),
            sized(&mut self.norms, n),
        );
    }

    /// Gradients of this branch's 8 tensors (written, not accumulated) from `dq`.
    fn backward(
        &mut self,
        pool: &Pool,
        w: &Branch<'_>,
        n: usize,
        dq: &[f32],
        grads: [&mut [f32]; 8],
    ) {
        let (d, h, e) = (w.dim, w.hidden, w.head);
        let [_, _, w1, _, w2, _, wh, _] = w.t;
        let [dnw, dnb, dw1, db1, dw2, db2, dwh, dbh] = grads;
        let dp = sized(&mut self.dp, n * e);
        normalize_rows_backward(&self.q[..n * e], &self.norms[..n], e, &dq[..n * e], dp);
        // head
        matmul_tn(
            pool,
            Mat::new(dp, n, e),
            Mat::new(&self.y, n, d),
            dwh,
            false,
        );
        col_sums(dp, e, dbh);
        let dy = sized(&mut self.dy, n * d);
        matmul_nn(
            pool,
            Mat::new(&self.dp, n, e),
            Mat::new(wh, e, d),
            dy,
            false,
        );
        // fc2
        matmul_tn(
            pool,
            Mat::new(dy, n, d),
            Mat::new(&self.g, n, h),
            dw2,
            false,
        );
        col_sums(dy, d, db2);
        let dz = sized(&mut self.dz, n * h);
        matmul_nn(
            pool,
            Mat::new(&self.dy, n, d),
            Mat::new(w2, d, h),
            dz,
            false,
        );
        // GELU'
        for (g, &z) in dz.iter_mut().zip(&self.z1[..n * h]) {
            *g *= gelu_grad(z);
        }
        // fc1
        matmul_tn(
            pool,
            Mat::new(dz, n, h),
            Mat::new(&self.a, n, d),
            dw1,
            false,
        );
        col_sums(dz, h, db1);
        let da = sized(&mut self.da, n * d);
        matmul_nn(
            pool,
            Mat::new(&self.dz, n, h),
            Mat::new(w1, h, d),
            da,
            false,
        );
        // LayerNorm affine
        dnw.fill(0.0);
        dnb.fill(0.0);
        for (dar, ur) in da.chunks_exact(d).zip(self.u.chunks_exact(d)).take(n) {
            for i in 0..d {
                dnw[i] += dar[i] * ur[i];
                dnb[i] += dar[i];
            }
        }
    }
}

/// Column sums of a row-major `rows × cols` matrix, rows in order.
fn col_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for r in m.chunks_exact(cols) {
        out.iter_mut().zip(r).for_each(|(o, v)| *o += v);
    }
}

/// Scratch of [`uff_loss_and_grad`]; grows to the largest batch seen.
#[derive(Default)]
pub struct Workspace {
    xyz: BranchActs,
    rgb: BranchActs,
    logits: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
}

/// The §5b loss of `n` patch pairs (`xyz`: `n × xyz_dim`, `rgb`: `n × rgb_dim`, row `i`
/// of each is the same patch) at temperature `t`. With `grad` (length
/// [`UffParams::len`]), also its gradient with respect to every parameter (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn uff_loss_and_grad(
    pool: &Pool,
    p: &UffParams,
    xyz: &[f32],
    rgb: &[f32],
    n: usize,
    t: f32,
    grad: Option<&mut [f32]>,
    ws: &mut Workspace,
) -> f64 {
    let bx = branch(p, idx::XYZ_NORM_W, idx::XYZ_HEAD_W);
    let br = branch(p, idx::RGB_NORM_W, idx::RGB_HEAD_W);
    let e = bx.head;
    let eps = p.cfg.ln_eps;
    ws.xyz.forward(pool, &bx, xyz, n, eps);
    ws.rgb.forward(pool, &br, rgb, n, eps);
    let logits = sized(&mut ws.logits, BLOCK_ROWS.min(n.max(1)) * n);
    let Some(grad) = grad else {
        return info_nce(
            pool,
            &ws.rgb.q[..n * e],
            &ws.xyz.q[..n * e],
            n,
            e,
            t,
            logits,
            None,
        );
    };
    let dq = sized(&mut ws.dq, n * e);
    let dk = sized(&mut ws.dk, n * e);
    let loss = info_nce(
        pool,
        &ws.rgb.q[..n * e],
        &ws.xyz.q[..n * e],
        n,
        e,
        t,
        logits,
        Some((dq, dk)),
    );
    let mut g: Vec<Option<&mut [f32]>> = split_mut(&p.specs, grad).into_iter().map(Some).collect();
    let mut take = |i: usize| g[i].take().expect("each gradient tensor taken once");
    let [tx, tr] = BRANCH_TENSORS;
    let gx = tx.map(&mut take);
    let gr = tr.map(&mut take);
    ws.xyz.backward(pool, &bx, n, &ws.dk[..n * e], gx);
    ws.rgb.backward(pool, &br, n, &ws.dq[..n * e], gr);
    loss
}

/// AdamW as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction).
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u32,
}

impl AdamW {
    pub fn new(len: usize, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Self {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// One update of `params` with gradient `grad` at learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        let step = lr / bc1;
        let decay = 1.0 - lr * self.weight_decay;
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *p *= decay;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / bc2_sqrt + self.eps;
            *p -= step * *m / denom;
        }
    }
}

/// Learning rate of step `s` (0-based) of `total`: linear warm-up over `warmup` steps
/// (`lr·(s+1)/W`), then half a cosine down to 0 (docs/RADAR-FUSION.md §5b).
pub fn learning_rate(lr: f32, s: usize, total: usize, warmup: usize) -> f32 {
    if s < warmup {
        return lr * (s + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let x = (s - warmup) as f64 / span;
    (lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())) as f32
}

/// The warm-up steps asked for, or by default a third of the `total` steps.
pub(super) fn warmup_steps(warmup: Option<usize>, total: usize) -> usize {
    warmup.unwrap_or(((total as f64) / 3.0).round() as usize)
}

/// What one optimisation step did: its loss and learning rate, the patch pairs it
/// trained on and the floating-point operations it took (for the report's rate).
pub(super) struct StepDone {
    pub loss: f64,
    pub lr: f32,
    pub rows: usize,
    pub flops: f64,
}

/// One optimisation step on a batch of parts, given the step number (0-based).
pub(super) type TrainStep<'a> = dyn FnMut(&[usize], usize) -> Result<StepDone> + 'a;

/// What a training knows before its first step: when it began, how long the features
/// took, the parts and steps, and the evaluation batch's loss with the initial weights.
pub(super) struct TrainStart {
    pub t0: std::time::Instant,
    pub extract_seconds: f64,
    pub parts: usize,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub eval_before: f64,
    pub eval_rows: usize,
}

impl TrainStart {
    /// Steps of the whole run: `⌈parts/batch⌉` per epoch.
    pub(super) fn steps(&self) -> usize {
        self.parts.div_ceil(self.batch) * self.epochs
    }
}

/// The epochs of a training, measured by [`run_epochs`].
pub(super) struct Epochs {
    losses: Vec<f64>,
    rows: usize,
    flops: f64,
    seconds: f64,
}

impl Epochs {
    /// The report of the run, given the evaluation batch's loss with the final weights;
    /// reports [`TrainProgress::Done`].
    pub(super) fn report(
        self,
        start: &TrainStart,
        eval_after: f64,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> TrainReport {
        progress(TrainProgress::Done);
        TrainReport {
            parts: start.parts,
            steps: start.steps(),
            epoch_losses: self.losses,
            eval_before: start.eval_before,
            eval_after,
            eval_rows: start.eval_rows,
            seconds: start.t0.elapsed().as_secs_f64(),
            extract_seconds: start.extract_seconds,
            train_seconds: self.seconds,
            rows: self.rows,
            flops: self.flops,
        }
    }
}

/// Runs the epochs of a training: each epoch shuffles the parts (Fisher-Yates from the
/// back on a stream of the seed) and runs `train_step(batch, step)` on each batch of
/// parts in turn; reports every step and returns each epoch's mean step loss, the rows
/// and operations of all steps and their wall time.
pub(super) fn run_epochs(
    start: &TrainStart,
    progress: &mut dyn FnMut(TrainProgress),
    train_step: &mut TrainStep<'_>,
) -> Result<Epochs> {
    let (parts, batch) = (start.parts, start.batch);
    let steps_per_epoch = parts.div_ceil(batch);
    let total = start.steps();
    let t_train = std::time::Instant::now();
    let mut shuffle_rng = Rng::new(start.seed ^ 0x7368_7566);
    let mut order: Vec<usize> = (0..parts).collect();
    let mut run = Epochs {
        losses: Vec::with_capacity(start.epochs),
        rows: 0,
        flops: 0.0,
        seconds: 0.0,
    };
    let mut step = 0;
    for epoch in 0..start.epochs {
        for i in (1..parts).rev() {
            let j = shuffle_rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut sum = 0.0;
        for part_batch in order.chunks(batch) {
            let done = train_step(part_batch, step)?;
            sum += done.loss;
            run.rows += done.rows;
            run.flops += done.flops;
            step += 1;
            progress(TrainProgress::Step {
                epoch,
                step,
                total,
                loss: done.loss,
                lr: done.lr,
            });
        }
        run.losses.push(sum / steps_per_epoch as f64);
    }
    run.seconds = t_train.elapsed().as_secs_f64();
    Ok(run)
}

/// Stops a training whose step `step` gave a loss or a gradient that is not finite.
pub(super) fn check_finite(step: usize, loss: f64, grad: &[f32]) -> Result<()> {
    if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
        return Err(Error::Input(format!(
            "training diverged at step {step} (loss {loss}): lower --lr"
        )));
    }
    Ok(())
}

/// Where the initial fusion weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's default initialisation from the seed (the reference trains from it).
    Random,
    /// The fusion tensors of the input model (fine-tuning).
    Model,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "random" => Ok(Init::Random),
            "model" => Ok(Init::Model),
            _ => Err(format!("unknown init '{s}' (random, model)")),
        }
    }
}

/// Options of UFF training (defaults: the paper's, patches per part decided in §5b).
#[derive(Clone, Debug)]
pub struct UffTrainOptions {
    pub epochs: usize,
    /// Parts per step.
    pub batch: usize,
    /// Non-empty patches drawn per part and step; 0 = all of them (the reference).
    pub patches: usize,
    pub lr: f32,
    /// Warm-up steps; `None` = a third of all steps (the paper's 250 of 750).
    pub warmup: Option<usize>,
    pub weight_decay: f32,
    pub betas: (f32, f32),
    pub adam_eps: f32,
    pub temperature: f32,
    pub seed: u64,
    pub init: Init,
    /// Where the steps run (the batches are drawn on the host, the same for every backend).
    pub backend: TrainBackend,
}

impl Default for UffTrainOptions {
    fn default() -> Self {
        UffTrainOptions {
            epochs: 10,
            batch: 16,
            patches: 64,
            lr: 0.003,
            warmup: None,
            weight_decay: 0.01,
            betas: (0.9, 0.95),
            adam_eps: 1e-8,
            temperature: 1.0,
            seed: 0,
            init: Init::Random,
            backend: TrainBackend::Cpu,
        }
    }
}

/// Where the training steps run (`miad train-fusion --backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainBackend {
    Cpu,
    /// The first CUDA device (builds with the `cuda` feature).
    Cuda,
    /// The simulated CUDA device (builds with the `cuda-sim` feature; tests, CI).
    CudaSim,
}

impl TrainBackend {
    pub fn name(self) -> &'static str {
        match self {
            TrainBackend::Cpu => "cpu",
            TrainBackend::Cuda => "cuda",
            TrainBackend::CudaSim => "cuda-sim",
        }
    }
}

impl std::str::FromStr for TrainBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(TrainBackend::Cpu),
            "cuda" => Ok(TrainBackend::Cuda),
            "cuda-sim" => Ok(TrainBackend::CudaSim),
            _ => Err(format!("unknown backend '{s}' (cpu, cuda, cuda-sim)")),
        }
    }
}

/// The work of UFF training steps on one backend: the parameters and the optimiser state
/// live there between steps; the batches come from the host.
pub trait UffStep {
    /// The loss of `n` patch pairs (`xyz`: `n × xyz_dim`, `rgb`: `n × rgb_dim`) with the
    /// current parameters, no update.
    fn loss(&mut self, xyz: &[f32], rgb: &[f32], n: usize) -> Result<f64>;
    /// One AdamW update at learning rate `lr` on these pairs (step `step`, 0-based, for the
    /// error message of a diverged run); returns the loss before the update.
    fn train(&mut self, xyz: &[f32], rgb: &[f32], n: usize, lr: f32, step: usize) -> Result<f64>;
    /// Writes the current parameters into `out` (laid out as the initial ones).
    fn params_into(&mut self, out: &mut UffParams) -> Result<()>;
}

/// [`UffStep`] on the CPU: [`uff_loss_and_grad`] and [`AdamW`].
pub struct CpuUffStep<'p> {
    pool: &'p Pool,
    params: UffParams,
    adam: AdamW,
    grad: Vec<f32>,
    ws: Workspace,
    temperature: f32,
}

impl<'p> CpuUffStep<'p> {
    pub fn new(pool: &'p Pool, params: &UffParams, opts: &UffTrainOptions) -> Self {
        CpuUffStep {
            pool,
            adam: AdamW::new(
                params.len(),
                opts.betas.0,
                opts.betas.1,
                opts.adam_eps,
                opts.weight_decay,
            ),
            grad: vec![0f32; params.len()],
            params: params.clone(),
            ws: Workspace::default(),
            temperature: opts.temperature,
        }
    }
}

impl UffStep for CpuUffStep<'_> {
    fn loss(&mut self, xyz: &[f32], rgb: &[f32], n: usize) -> Result<f64> {
        let t = self.temperature;
        Ok(uff_loss_and_grad(
            self.pool,
            &self.params,
            xyz,
            rgb,
            n,
            t,
            None,
            &mut self.ws,
        ))
    }
    fn train(&mut self, xyz: &[f32], rgb: &[f32], n: usize, lr: f32, step: usize) -> Result<f64> {
        let t = self.temperature;
        let loss = uff_loss_and_grad(
            self.pool,
            &self.params,
            xyz,
            rgb,
            n,
            t,
            Some(&mut self.grad),
            &mut self.ws,
        );
        check_finite(step, loss, &self.grad)?;
        self.adam.step(&mut self.params.data, &self.grad, lr);
        Ok(loss)
    }
    fn params_into(&mut self, out: &mut UffParams) -> Result<()> {
        out.data.copy_from_slice(&self.params.data);
        Ok(())
    }
}

/// The error of a device backend in a build without CUDA.
#[cfg(not(feature = "cuda"))]
pub(super) fn without_cuda(backend: TrainBackend) -> Error {
    Error::Config(format!(
        "--backend {}: miad was built without CUDA (feature cuda)",
        backend.name()
    ))
}

/// The device of a device backend: the first CUDA device, or the simulated one.
#[cfg(feature = "cuda")]
pub(super) fn train_device(backend: TrainBackend) -> Result<crate::cuda::Device> {
    match backend {
        #[cfg(feature = "cuda-sim")]
        TrainBackend::CudaSim => crate::cuda::Device::simulated(),
        #[cfg(not(feature = "cuda-sim"))]
        TrainBackend::CudaSim => Err(Error::Config(
            "--backend cuda-sim needs a build with the cuda-sim feature".into(),
        )),
        _ => crate::cuda::Device::new(0),
    }
}

/// The [`UffStep`] of `opts.backend` for batches of at most `max_rows` patch pairs.
fn uff_step<'p>(
    pool: &'p Pool,
    params: &UffParams,
    opts: &UffTrainOptions,
    max_rows: usize,
) -> Result<Box<dyn UffStep + 'p>> {
    match opts.backend {
        TrainBackend::Cpu => Ok(Box::new(CpuUffStep::new(pool, params, opts))),
        #[cfg(feature = "cuda")]
        backend => {
            let dev = train_device(backend)?;
            Ok(Box::new(crate::fit::device::uff::DeviceUffStep::new(
                std::sync::Arc::new(dev),
                params,
                opts,
                max_rows,
            )?))
        }
        #[cfg(not(feature = "cuda"))]
        backend => {
            let _ = max_rows;
            Err(without_cuda(backend))
        }
    }
}

/// What the training is doing, for progress reports.
#[derive(Clone, Copy, Debug)]
pub enum TrainProgress {
    Extract {
        done: usize,
        total: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        total: usize,
        loss: f64,
        lr: f32,
    },
    Done,
}

/// The outcome of a training run.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub parts: usize,
    pub steps: usize,
    /// Mean step loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Loss of a fixed evaluation batch (the first `batch` parts, patches drawn with a
    /// fixed seed) with the initial and with the final weights: comparable numbers.
    pub eval_before: f64,
    pub eval_after: f64,
    /// Rows of the evaluation batch.
    pub eval_rows: usize,
    /// Wall time of the whole run, of the feature extraction, and of the steps alone.
    pub seconds: f64,
    pub extract_seconds: f64,
    pub train_seconds: f64,
    /// Patch pairs over all steps, and the floating-point operations of the steps'
    /// forward and backward passes (GEMMs and logits, 2 per multiply-add).
    pub rows: usize,
    pub flops: f64,
}

/// Every training part's raw features, extracted once, with its non-empty xyz cells.
pub(super) struct FeatureCache {
    xyz: ScratchFile,
    rgb: ScratchFile,
    pub(super) nonempty: Vec<Vec<u32>>,
    xyz_rows: usize,
    rgb_rows: usize,
    xyz_dim: usize,
    rgb_dim: usize,
    /// xyz cell → RGB cell.
    cell: Vec<u32>,
}

impl FeatureCache {
    /// Refuses a cache where no part has a patch to train on.
    pub(super) fn require_patches(&self) -> Result<()> {
        if self.nonempty.iter().all(|v| v.is_empty()) {
            return Err(Error::Input(
                "no training part has a patch with a non-zero xyz feature: nothing to train on"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(super) fn build(
        features: &mut dyn FeatureExtractor,
        scratch_dir: &Path,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<Self> {
        let l = features.layout();
        if l.rgb_grid == 0 || !l.xyz_grid.is_multiple_of(l.rgb_grid) {
            return Err(Error::Config(format!(
                "xyz grid {} is not a multiple of the RGB grid {}",
                l.xyz_grid, l.rgb_grid
            )));
        }
        let parts = features.parts();
        let (xr, rr) = (l.xyz_grid * l.xyz_grid, l.rgb_grid * l.rgb_grid);
        // Unique per cache: two trainings in one process must not share (and truncate)
        // each other's mapped files.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("miad-train-{}-{k}", std::process::id());
        let mut xyz =
            ScratchFile::create(scratch_dir, &format!("{tag}-xyz"), parts * xr * l.xyz_dim)?;
        let mut rgb =
            ScratchFile::create(scratch_dir, &format!("{tag}-rgb"), parts * rr * l.rgb_dim)?;
        let mut fused = vec![0f32; xr * l.fused_dim];
        let mut nonempty = Vec::with_capacity(parts);
        for part in 0..parts {
            let xs = &mut xyz.as_mut_slice()[part * xr * l.xyz_dim..(part + 1) * xr * l.xyz_dim];
            let rs = &mut rgb.as_mut_slice()[part * rr * l.rgb_dim..(part + 1) * rr * l.rgb_dim];
            features.extract(part, xs, rs, &mut fused)?;
            if xs.iter().chain(rs.iter()).any(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "training part {part}: its features are not finite"
                )));
            }
            nonempty.push(
                xs.chunks_exact(l.xyz_dim)
                    .enumerate()
                    .filter(|(_, r)| r.iter().all(|&v| v != 0.0))
                    .map(|(j, _)| j as u32)
                    .collect(),
            );
            progress(TrainProgress::Extract {
                done: part + 1,
                total: parts,
            });
        }
        let s = l.xyz_grid / l.rgb_grid;
        let cell = (0..xr)
            .map(|j| {
                let (y, x) = (j / l.xyz_grid, j % l.xyz_grid);
                ((y / s) * l.rgb_grid + x / s) as u32
            })
            .collect();
        Ok(FeatureCache {
            xyz,
            rgb,
            nonempty,
            xyz_rows: xr,
            rgb_rows: rr,
            xyz_dim: l.xyz_dim,
            rgb_dim: l.rgb_dim,
            cell,
        })
    }

    /// Draws `patches` of `part`'s non-empty cells (all when 0 or more than there are)
    /// into the first entries of `draw`; returns how many.
    pub(super) fn draw(
        &self,
        part: usize,
        patches: usize,
        rng: &mut Rng,
        draw: &mut Vec<u32>,
    ) -> usize {
        draw.clear();
        draw.extend_from_slice(&self.nonempty[part]);
        let take = if patches == 0 {
            draw.len()
        } else {
            patches.min(draw.len())
        };
        if take < draw.len() {
            // Partial Fisher–Yates: the first `take` entries are a uniform draw.
            for i in 0..take {
                let j = i + rng.below((draw.len() - i) as u64) as usize;
                draw.swap(i, j);
            }
        }
        take
    }

    /// The most patch pairs one batch of `batch` parts draws with `patches` per part (0 =
    /// all): the sizes a device step plans for.
    pub(super) fn max_rows(&self, batch: usize, patches: usize) -> usize {
        let mut takes: Vec<usize> = self
            .nonempty
            .iter()
            .map(|v| {
                if patches == 0 {
                    v.len()
                } else {
                    patches.min(v.len())
                }
            })
            .collect();
        takes.sort_unstable_by(|a, b| b.cmp(a));
        takes.iter().take(batch).sum::<usize>().max(1)
    }

    /// Part `part`'s raw features: xyz (`xyz_rows × xyz_dim`), rgb (`rgb_rows × rgb_dim`).
    pub(super) fn part(&self, part: usize) -> (&[f32], &[f32]) {
        let (xn, rn) = (self.xyz_rows * self.xyz_dim, self.rgb_rows * self.rgb_dim);
        (
            &self.xyz.as_slice()[part * xn..(part + 1) * xn],
            &self.rgb.as_slice()[part * rn..(part + 1) * rn],
        )
    }

    /// Gathers the rows of `parts` into `xyz_out`/`rgb_out`, drawing `patches` non-empty
    /// cells per part (all when 0 or more than there are). Returns the row count.
    fn gather(
        &self,
        parts: &[usize],
        patches: usize,
        rng: &mut Rng,
        draw: &mut Vec<u32>,
        xyz_out: &mut Vec<f32>,
        rgb_out: &mut Vec<f32>,
    ) -> usize {
        xyz_out.clear();
        rgb_out.clear();
        let (dx, dr) = (self.xyz_dim, self.rgb_dim);
        let (xs, rs) = (self.xyz.as_slice(), self.rgb.as_slice());
        let mut n = 0;
        for &part in parts {
            let take = self.draw(part, patches, rng, draw);
            for &j in &draw[..take] {
                let j = j as usize;
                let xo = (part * self.xyz_rows + j) * dx;
                xyz_out.extend_from_slice(&xs[xo..xo + dx]);
                let ro = (part * self.rgb_rows + self.cell[j] as usize) * dr;
                rgb_out.extend_from_slice(&rs[ro..ro + dr]);
            }
            n += take;
        }
        n
    }
}

/// Trains `params` on the parts of `features` (module doc, docs/RADAR-FUSION.md §5b).
pub fn train_uff(
    pool: &Pool,
    features: &mut dyn FeatureExtractor,
    params: &mut UffParams,
    opts: &UffTrainOptions,
    scratch_dir: &Path,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    let t0 = std::time::Instant::now();
    let l = features.layout();
    if l.xyz_dim != params.cfg.xyz_dim as usize || l.rgb_dim != params.cfg.rgb_dim as usize {
        return Err(Error::Config(format!(
            "features are {}+{} wide, the fusion expects {}+{}",
            l.xyz_dim, l.rgb_dim, params.cfg.xyz_dim, params.cfg.rgb_dim
        )));
    }
    if opts.epochs == 0 || opts.batch == 0 {
        return Err(Error::Config("epochs and batch must be at least 1".into()));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0 && opts.temperature > 0.0) {
        return Err(Error::Config(format!(
            "learning rate {} and temperature {} must be positive",
            opts.lr, opts.temperature
        )));
    }
    let cache = FeatureCache::build(features, scratch_dir, progress)?;
    let extract_seconds = t0.elapsed().as_secs_f64();
    let parts = cache.nonempty.len();
    cache.require_patches()?;
    let steps_per_epoch = parts.div_ceil(opts.batch);
    let total = steps_per_epoch * opts.epochs;
    let warmup = warmup_steps(opts.warmup, total);
    let (mut xb, mut rb, mut draw) = (Vec::new(), Vec::new(), Vec::new());

    // The fixed evaluation batch.
    let eval_parts: Vec<usize> = (0..parts.min(opts.batch)).collect();
    let mut eval_rng = Rng::new(opts.seed ^ 0x6576_616c);
    let (mut xe, mut re) = (Vec::new(), Vec::new());
    let eval_rows = cache.gather(
        &eval_parts,
        opts.patches,
        &mut eval_rng,
        &mut draw,
        &mut xe,
        &mut re,
    );
    let mut stepper = uff_step(pool, params, opts, cache.max_rows(opts.batch, opts.patches))?;
    let start = TrainStart {
        t0,
        extract_seconds,
        parts,
        epochs: opts.epochs,
        batch: opts.batch,
        seed: opts.seed,
        eval_before: stepper.loss(&xe, &re, eval_rows)?,
        eval_rows,
    };

    let mut patch_rng = Rng::new(opts.seed ^ 0x7061_7463);
    let (dx, dr) = (cache.xyz_dim as f64, cache.rgb_dim as f64);
    let (ratio, e) = (params.cfg.mlp_ratio as f64, params.cfg.head_dim as f64);
    // Per row: forward MLPs + heads; backward computes two products per forward one.
    let per_row = 3.0 * 2.0 * (2.0 * ratio * (dx * dx + dr * dr) + e * (dx + dr));
    let mut train_step = |batch: &[usize], step: usize| -> Result<StepDone> {
        let n = cache.gather(
            batch,
            opts.patches,
            &mut patch_rng,
            &mut draw,
            &mut xb,
            &mut rb,
        );
        let lr = learning_rate(opts.lr, step, total, warmup);
        let loss = if n > 0 {
            stepper.train(&xb, &rb, n, lr, step)?
        } else {
            0.0
        };
        Ok(StepDone {
            loss,
            lr,
            rows: n,
            // + logits and their two backward products
            flops: per_row * n as f64 + 3.0 * 2.0 * (n * n) as f64 * e,
        })
    };
    let epochs = run_epochs(&start, progress, &mut train_step)?;
    let eval_after = stepper.loss(&xe, &re, eval_rows)?;
    stepper.params_into(params)?;
    Ok(epochs.report(&start, eval_after, progress))
}

/// What [`train_fusion_category`] needs besides [`UffTrainOptions`].
#[derive(Clone, Debug)]
pub struct CategoryTrain {
    pub max_parts: Option<usize>,
    pub preprocessed: bool,
    pub threads: usize,
    pub max_side: usize,
    pub scratch_dir: PathBuf,
    /// Also write the trained fusion in the authors' checkpoint layout
    /// ([`export_reference`]) to this safetensors file.
    pub export: Option<PathBuf>,
    /// RADAR's missing-modality protocol on the training parts (rate, what is dropped,
    /// seed), as `miad fit`: those parts stay in their case for the whole training
    /// (`--method radar` only).
    pub missing: Option<(f64, crate::eval::missing::MissingModality, u64)>,
}

impl Default for CategoryTrain {
    fn default() -> Self {
        CategoryTrain {
            max_parts: None,
            preprocessed: false,
            threads: 0,
            max_side: 1024,
            scratch_dir: std::env::temp_dir(),
            export: None,
            missing: None,
        }
    }
}

/// Trains the UFF of `model_path` on the training parts of `data` (a folder with
/// `train/good`) and writes a new model file to `out` (every other tensor copied).
pub fn train_fusion_category(
    model_path: &Path,
    data: &Path,
    out: &Path,
    cat: &CategoryTrain,
    opts: &UffTrainOptions,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    if cat.missing.is_some() {
        return Err(Error::Config(
            "UFF trains on complete parts (M3DM); a missing rate is for --method radar".into(),
        ));
    }
    with_category(model_path, data, cat, &mut |pool, model, features, _| {
        let cfg = model.config();
        let fcfg = fusion_config(model_path, cfg)?;
        let mut params = match opts.init {
            Init::Random => UffParams::init(&fcfg, opts.seed),
            Init::Model => UffParams::from_source(model, &fcfg)?,
        };
        let report = train_uff(
            pool,
            features,
            &mut params,
            opts,
            &cat.scratch_dir,
            progress,
        )?;
        let mut out_cfg = cfg.clone();
        out_cfg.name = format!("{} + UFF trained on {}", cfg.name, category_name(data));
        out_cfg.radar = None;
        let settings = TrainSettings {
            method: "uff",
            backend: opts.backend,
            seed: opts.seed,
            epochs: opts.epochs,
            batch: opts.batch,
            patches: opts.patches,
            lr: opts.lr.to_string(),
            init: opts.init,
        };
        let prov = provenance(model_path, model, data, &settings, &report);
        write_trained(
            model_path,
            model,
            &out_cfg,
            &params.to_tensors(),
            &prov,
            out,
        )?;
        if let Some(path) = &cat.export {
            export_reference(&params, path)?;
        }
        Ok(report)
    })
}

pub(super) fn fusion_config(model_path: &Path, cfg: &ModelConfig) -> Result<FusionConfig> {
    cfg.fusion.clone().ok_or_else(|| {
        Error::Config(format!(
            "{}: the model has no fusion module",
            model_path.display()
        ))
    })
}

/// A training run given the pool, the model, the features of the training parts and
/// each part's availability.
pub(super) type TrainOnCategory<'a> = dyn FnMut(
        &Pool,
        &ModelFile,
        &mut dyn FeatureExtractor,
        &[crate::eval::missing::Availability],
    ) -> Result<TrainReport>
    + 'a;

/// Opens the model and the category's training parts and runs `train` on their
/// features (computed by the inspection pipeline of that model) and each part's
/// availability (`cat.missing` applied).
pub(super) fn with_category(
    model_path: &Path,
    data: &Path,
    cat: &CategoryTrain,
    train: &mut TrainOnCategory<'_>,
) -> Result<TrainReport> {
    use super::features::PipelineFeatures;
    use crate::pipeline::extract::Extractor;
    use crate::pipeline::preprocess::PreprocessMode;
    let model = ModelFile::open(model_path, &OpenOptions::default())?;
    fusion_config(model_path, model.config())?;
    let pool = if cat.threads == 0 {
        Pool::with_available_cores()
    } else {
        Pool::new(cat.threads)
    };
    let mut parts = crate::eval::dataset::list_train(data)?;
    if let Some(m) = cat.max_parts {
        parts.truncate(m.max(1));
    }
    let mode = if cat.preprocessed {
        PreprocessMode::AlreadyClean
    } else {
        PreprocessMode::Full
    };
    let availability = match cat.missing {
        Some((rate, drop, seed)) => {
            crate::eval::missing::sample_missing(parts.len(), rate, drop, seed)
                .map_err(Error::Config)?
        }
        None => vec![crate::eval::missing::Availability::Complete; parts.len()],
    };
    let mut extractor = Extractor::new(&pool, &model, cat.max_side, cat.max_side, mode)?;
    // Pack the weights once, as inspection does: the same bits as packing them in every
    // product, which cost about a tenth of the feature phase.
    extractor.pack_networks(DensePrecision::F32);
    let mut features = PipelineFeatures {
        pool: &pool,
        extractor,
        siblings: Vec::new(),
        parts,
        missing: availability.iter().map(|a| a.removed()).collect(),
    };
    train(&pool, &model, &mut features, &availability)
}

/// Writes `out`: every tensor of the input model except its fusion (`fusion.*`,
/// `radar.*`), then the `trained` ones, under `cfg` (written to a temporary name, then
/// renamed: an interrupted run leaves no file).
pub(super) fn write_trained(
    model_path: &Path,
    model: &ModelFile,
    cfg: &ModelConfig,
    trained: &OwnedTensors,
    prov: &[(String, String)],
    out: &Path,
) -> Result<()> {
    let mut tensors = OwnedTensors {
        origin: format!("{} + trained fusion", model_path.display()),
        ..Default::default()
    };
    for s in model_tensor_specs(model.config()) {
        if !s.name.starts_with("fusion.") && !s.name.starts_with("radar.") {
            let d = model.f32(&s.name, &s.shape)?;
            tensors.insert(s.name, s.shape, d.to_vec());
        }
    }
    for (name, (shape, d)) in &trained.tensors {
        tensors.insert(name.clone(), shape.clone(), d.clone());
    }
    let prov_ref: Vec<(&str, &str)> = prov.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    write_model(cfg, &tensors, &prov_ref, out)?;
    Ok(())
}

/// What the provenance says about the options of a training.
pub(super) struct TrainSettings {
    pub method: &'static str,
    pub backend: TrainBackend,
    pub seed: u64,
    pub epochs: usize,
    pub batch: usize,
    pub patches: usize,
    pub lr: String,
    pub init: Init,
}

pub(super) fn category_name(data: &Path) -> String {
    data.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("category")
        .to_string()
}

pub(super) fn provenance(
    model_path: &Path,
    model: &ModelFile,
    data: &Path,
    opts: &TrainSettings,
    r: &TrainReport,
) -> Vec<(String, String)> {
    let f = |v: f64| format!("{v:.6}");
    vec![
        ("source".into(), "train-fusion".into()),
        ("train.method".into(), opts.method.into()),
        ("train.backend".into(), opts.backend.name().into()),
        ("train.data".into(), data.display().to_string()),
        ("train.parts".into(), r.parts.to_string()),
        ("train.seed".into(), opts.seed.to_string()),
        ("train.epochs".into(), opts.epochs.to_string()),
        ("train.steps".into(), r.steps.to_string()),
        ("train.batch".into(), opts.batch.to_string()),
        ("train.patches".into(), opts.patches.to_string()),
        ("train.lr".into(), opts.lr.clone()),
        (
            "train.init".into(),
            match opts.init {
                Init::Random => "random".into(),
                Init::Model => "model".into(),
            },
        ),
        (
            "train.loss_first".into(),
            f(r.epoch_losses.first().copied().unwrap_or(f64::NAN)),
        ),
        (
            "train.loss_final".into(),
            f(r.epoch_losses.last().copied().unwrap_or(f64::NAN)),
        ),
        ("train.eval_loss_before".into(), f(r.eval_before)),
        ("train.eval_loss_after".into(), f(r.eval_after)),
        (
            "train.from".into(),
            format!("{} (id {})", model_path.display(), hex(&model.id())),
        ),
    ]
}

/// Writes the fusion of `params` as the authors' UFF checkpoint names it (`model.` +
/// `xyz_norm.*`, `xyz_mlp.fc{1,2}.*`, `rgb_norm.*`, `rgb_mlp.fc{1,2}.*`, `rgb_head.*`,
/// `xyz_head.*`), as a safetensors file `miad model convert --fusion` reads.
pub fn export_reference(params: &UffParams, path: &Path) -> Result<()> {
    let names: Vec<String> = params
        .specs
        .iter()
        .map(|(s, _)| format!("model.{}", s.name.trim_start_matches("fusion.")))
        .collect();
    let tensors: Vec<StTensor<'_>> = params
        .specs
        .iter()
        .enumerate()
        .map(|(i, (s, _))| StTensor::F32(&names[i], s.shape.clone(), params.tensor(i)))
        .collect();
    write_safetensors(path, &tensors)?;
    Ok(())
}
