//! Training RADAR's Stage 1, adaptive instruction fusion (docs/RADAR-FUSION.md §9b): the
//! computation behind `miad train-fusion --method radar`.
//!
//! - [`RadarParams`]: every tensor of the fusion (UFF's `fusion.*` and `radar.*`) in one
//!   flat vector, the instructions first (they have their own learning rate).
//! - [`radar_loss_and_grad`]: per part the network of `cpu::radar_fusion` (forward, then
//!   the hand-derived backward after the batch's InfoNCE), so a step holds one part's
//!   activations at a time (the forward runs twice: once for the loss, once before the
//!   part's backward pass).
//! - [`train_radar`]: seeded case assignment (½ complete, ¼ cloud missing, ¼ RGB
//!   missing; the missing modality's input is the pseudo input's features), patch draws,
//!   warm-up + cosine, AdamW with lr 1e-2 for the instructions and 1e-3 for the rest.

use super::banks::FeatureExtractor;
use super::infonce::{info_nce, BLOCK_ROWS};
use super::train_fusion::{
    category_name, check_finite, fusion_config, learning_rate, provenance, run_epochs,
    warmup_steps, with_category, write_trained, AdamW, CategoryTrain, FeatureCache, Init, StepDone,
    TrainBackend, TrainProgress, TrainReport, TrainSettings, TrainStart,
};
use crate::config::{FusionConfig, RadarConfig};
use crate::cpu::pool::Pool;
use crate::cpu::radar_fusion::{
    all_specs, gather_rows, part_backward, BackScratch, BranchActs, Case, Dims, RadarNet,
    RadarWeights, TokenActs,
};
use crate::eval::missing::MissingModality;
use crate::format::{FormatError, OwnedTensors, TensorSource, TensorSpec};
use crate::util::rng::Rng;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Every tensor of the RADAR fusion in one flat vector.
#[derive(Clone, Debug)]
pub struct RadarParams {
    /// Tensors with their offsets into `data`: `radar.instructions` first.
    pub specs: Vec<(TensorSpec, usize)>,
    pub data: Vec<f32>,
    pub fusion: FusionConfig,
    pub radar: RadarConfig,
}

impl RadarParams {
    fn layout(f: &FusionConfig, r: &RadarConfig) -> (Vec<(TensorSpec, usize)>, usize) {
        let mut specs = all_specs(f, r);
        // The instructions first: one contiguous range for their learning rate.
        specs.sort_by_key(|s| s.name != "radar.instructions");
        let mut off = 0;
        let specs = specs
            .into_iter()
            .map(|s| {
                let at = off;
                off += s.shape.iter().product::<usize>();
                (s, at)
            })
            .collect();
        (specs, off)
    }

    /// Seeded initialisation: instructions and embeddings N(0, 0.02²) (as ViT and VPT),
    /// LayerNorm γ = 1, β = 0, Linear weights and biases uniform in ±1/√fan_in
    /// (PyTorch's default), the context projections and the HyperNetwork's output layers
    /// zero (training starts from the plain UFF).
    pub fn init(f: &FusionConfig, r: &RadarConfig, seed: u64) -> Self {
        let (specs, len) = Self::layout(f, r);
        let mut data = vec![0f32; len];
        let mut rng = Rng::new(seed ^ 0x7261_6461_725f_696e);
        let fan_in: BTreeMap<&str, usize> = specs
            .iter()
            .filter(|(s, _)| s.shape.len() == 2)
            .map(|(s, _)| (s.name.as_str(), s.shape[1]))
            .collect();
        for (s, off) in &specs {
            let n: usize = s.shape.iter().product();
            let out = &mut data[*off..off + n];
            let name = s.name.as_str();
            if matches!(
                name,
                "radar.instructions" | "radar.pos_embed" | "radar.type_embed"
            ) {
                rng.fill_normal(out, 0.02);
            } else if name.contains("norm") {
                out.fill(if name.ends_with("weight") { 1.0 } else { 0.0 });
            } else if name.contains("_ctx.") || name.contains("hyper.out_") {
                out.fill(0.0);
            } else {
                let weight = name.replace(".bias", ".weight");
                let k = fan_in.get(weight.as_str()).copied().unwrap_or(1);
                let bound = 1.0 / (k.max(1) as f32).sqrt();
                out.iter_mut()
                    .for_each(|v| *v = (2.0 * rng.uniform() - 1.0) * bound);
            }
        }
        RadarParams {
            specs,
            data,
            fusion: f.clone(),
            radar: r.clone(),
        }
    }

    /// Copies every tensor `src` holds over the current values (e.g. a trained UFF's
    /// `fusion.*`, or a RADAR model's everything). Returns how many were copied.
    pub fn load_from<S: TensorSource + ?Sized>(&mut self, src: &S) -> Result<usize> {
        let mut copied = 0;
        for (s, off) in &self.specs {
            if src.contains(&s.name) {
                let t = src.f32(&s.name, &s.shape)?;
                self.data[*off..off + t.len()].copy_from_slice(t);
                copied += 1;
            }
        }
        Ok(copied)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Elements of `radar.instructions` (the first range of `data`).
    pub fn instructions_len(&self) -> usize {
        self.specs[0].0.shape.iter().product()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.specs
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, off)| {
                let n: usize = s.shape.iter().product();
                &self.data[*off..off + n]
            })
    }

    /// The weights as the network reads them.
    pub fn weights(&self) -> RadarWeights<'_> {
        RadarNet::build::<FormatError>(self.radar.depth as usize, self.radar.hybrid, &mut |name| {
            self.tensor(name).ok_or_else(|| FormatError::MissingTensor {
                path: "trained RADAR fusion".into(),
                tensor: name.to_string(),
            })
        })
        .expect("the layout lists every tensor the network takes")
    }

    /// The tensors as named in the model file.
    pub fn to_tensors(&self) -> OwnedTensors {
        let mut t = OwnedTensors {
            origin: "trained RADAR fusion".into(),
            ..Default::default()
        };
        for (s, off) in &self.specs {
            let n: usize = s.shape.iter().product();
            t.insert(
                s.name.clone(),
                s.shape.clone(),
                self.data[*off..off + n].to_vec(),
            );
        }
        t
    }
}

/// A gradient vector laid out as `p`, viewed as the network's tensors.
fn grad_view<'a>(p: &RadarParams, grad: &'a mut [f32]) -> RadarNet<&'a mut [f32]> {
    let mut by_name: BTreeMap<&str, &'a mut [f32]> = BTreeMap::new();
    let mut rest = grad;
    for (s, _) in &p.specs {
        let (head, tail) = rest.split_at_mut(s.shape.iter().product());
        by_name.insert(s.name.as_str(), head);
        rest = tail;
    }
    RadarNet::build::<()>(p.radar.depth as usize, p.radar.hybrid, &mut |name| {
        by_name.remove(name).ok_or(())
    })
    .expect("the layout lists every tensor the network takes")
}

/// One part of a step: its network inputs (a missing modality already replaced by the
/// pseudo input's features), its case, and the xyz cells that enter the loss.
#[derive(Clone, Copy, Debug)]
pub struct PartSample<'a> {
    pub xyz: &'a [f32],
    pub rgb: &'a [f32],
    pub case: Case,
    pub cells: &'a [u32],
}

/// Scratch of [`radar_loss_and_grad`], planned for one network and row count.
pub struct RadarWorkspace {
    dims: Dims,
    tokens: TokenActs,
    xyz: BranchActs,
    rgb: BranchActs,
    back: BackScratch,
    q: Vec<f32>,
    k: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    logits: Vec<f32>,
}

impl RadarWorkspace {
    /// For parts of at most `rows` loss rows on an xyz grid of side `grid_x`.
    pub fn new(p: &RadarParams, grid_x: usize, rows: usize) -> Self {
        let dm = Dims::new(&p.fusion, &p.radar, grid_x);
        RadarWorkspace {
            dims: dm,
            tokens: TokenActs::new(dm),
            xyz: BranchActs::new(rows, dm.dx, dm.hx, dm.d, dm.e),
            rgb: BranchActs::new(rows, dm.dr, dm.hr, dm.d, dm.e),
            back: BackScratch::new(&dm, rows),
            q: Vec::new(),
            k: Vec::new(),
            dq: Vec::new(),
            dk: Vec::new(),
            logits: Vec::new(),
        }
    }

    fn part_forward(&mut self, pool: &Pool, w: &RadarWeights<'_>, s: &PartSample<'_>) {
        let n = s.cells.len();
        assert!(n <= self.xyz.cap, "part with more rows than planned");
        self.tokens.forward(pool, w, s.xyz, s.rgb, s.case);
        gather_rows(
            &self.tokens,
            s.xyz,
            s.rgb,
            s.cells,
            &mut self.xyz,
            &mut self.rgb,
        );
        let sc = &self.tokens.scale;
        self.xyz
            .forward(pool, &w.xyz, w.pc_ctx, &sc[0], &sc[1], n, &self.dims, true);
        self.rgb
            .forward(pool, &w.rgb, w.rgb_ctx, &sc[2], &sc[3], n, &self.dims, true);
    }
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// The §9b loss of a batch of parts at temperature `t` (RGB queries against cloud keys
/// over every part's loss rows). With `grad` (length [`RadarParams::len`]), also its
/// gradient with respect to every parameter (overwritten).
pub fn radar_loss_and_grad(
    pool: &Pool,
    p: &RadarParams,
    batch: &[PartSample<'_>],
    t: f32,
    grad: Option<&mut [f32]>,
    ws: &mut RadarWorkspace,
) -> f64 {
    let w = p.weights();
    let e = ws.dims.e;
    let n: usize = batch.iter().map(|s| s.cells.len()).sum();
    sized(&mut ws.q, n * e);
    sized(&mut ws.k, n * e);
    let mut r0 = 0;
    for s in batch {
        ws.part_forward(pool, &w, s);
        let m = s.cells.len();
        ws.q[r0 * e..(r0 + m) * e].copy_from_slice(&ws.rgb.q[..m * e]);
        ws.k[r0 * e..(r0 + m) * e].copy_from_slice(&ws.xyz.q[..m * e]);
        r0 += m;
    }
    let logits = sized(&mut ws.logits, BLOCK_ROWS.min(n.max(1)) * n);
    let Some(grad) = grad else {
        return info_nce(pool, &ws.q[..n * e], &ws.k[..n * e], n, e, t, logits, None);
    };
    let dq = sized(&mut ws.dq, n * e);
    let dk = sized(&mut ws.dk, n * e);
    let loss = info_nce(
        pool,
        &ws.q[..n * e],
        &ws.k[..n * e],
        n,
        e,
        t,
        logits,
        Some((dq, dk)),
    );
    grad.fill(0.0);
    let mut gw = grad_view(p, grad);
    let mut r0 = 0;
    for s in batch {
        ws.part_forward(pool, &w, s);
        let m = s.cells.len();
        part_backward(
            pool,
            &w,
            &mut gw,
            &ws.tokens,
            &ws.xyz,
            &ws.rgb,
            s.cells,
            &ws.dk[r0 * e..(r0 + m) * e],
            &ws.dq[r0 * e..(r0 + m) * e],
            &mut ws.back,
        );
        r0 += m;
    }
    loss
}

/// The work of RADAR training steps on one backend: the parameters and both optimisers'
/// state live there between steps; the batches come from the host.
pub trait RadarStep {
    /// The loss of `batch` with the current parameters, no update.
    fn loss(&mut self, batch: &[PartSample<'_>]) -> Result<f64>;
    /// One update (AdamW at `lr_instructions` on the instructions, `lr` on the rest) on
    /// `batch` (step `step`, 0-based, for the error message of a diverged run); returns
    /// the loss before the update.
    fn train(
        &mut self,
        batch: &[PartSample<'_>],
        lr: f32,
        lr_instructions: f32,
        step: usize,
    ) -> Result<f64>;
    /// Writes the current parameters into `out` (laid out as the initial ones).
    fn params_into(&mut self, out: &mut RadarParams) -> Result<()>;
}

/// [`RadarStep`] on the CPU: [`radar_loss_and_grad`] and two [`AdamW`].
pub struct CpuRadarStep<'p> {
    pool: &'p Pool,
    params: RadarParams,
    adam_instr: AdamW,
    adam_rest: AdamW,
    grad: Vec<f32>,
    ws: RadarWorkspace,
    temperature: f32,
}

impl<'p> CpuRadarStep<'p> {
    /// For parts of at most `rows` loss rows on an xyz grid of side `grid_x`.
    pub fn new(
        pool: &'p Pool,
        params: &RadarParams,
        opts: &RadarTrainOptions,
        grid_x: usize,
        rows: usize,
    ) -> Self {
        let adam = |len| {
            AdamW::new(
                len,
                opts.betas.0,
                opts.betas.1,
                opts.adam_eps,
                opts.weight_decay,
            )
        };
        let n_instr = params.instructions_len();
        CpuRadarStep {
            pool,
            adam_instr: adam(n_instr),
            adam_rest: adam(params.len() - n_instr),
            grad: vec![0f32; params.len()],
            ws: RadarWorkspace::new(params, grid_x, rows),
            params: params.clone(),
            temperature: opts.temperature,
        }
    }

    /// The sizes of the network.
    pub fn dims(&self) -> Dims {
        self.ws.dims
    }
}

impl RadarStep for CpuRadarStep<'_> {
    fn loss(&mut self, batch: &[PartSample<'_>]) -> Result<f64> {
        let t = self.temperature;
        Ok(radar_loss_and_grad(
            self.pool,
            &self.params,
            batch,
            t,
            None,
            &mut self.ws,
        ))
    }

    fn train(
        &mut self,
        batch: &[PartSample<'_>],
        lr: f32,
        lr_instructions: f32,
        step: usize,
    ) -> Result<f64> {
        let t = self.temperature;
        let grad = Some(&mut self.grad[..]);
        let loss = radar_loss_and_grad(self.pool, &self.params, batch, t, grad, &mut self.ws);
        check_finite(step, loss, &self.grad)?;
        let n_instr = self.params.instructions_len();
        let (pi, pr) = self.params.data.split_at_mut(n_instr);
        let (gi, gr) = self.grad.split_at(n_instr);
        self.adam_instr.step(pi, gi, lr_instructions);
        self.adam_rest.step(pr, gr, lr);
        Ok(loss)
    }

    fn params_into(&mut self, out: &mut RadarParams) -> Result<()> {
        out.data.copy_from_slice(&self.params.data);
        Ok(())
    }
}

/// The [`RadarStep`] of `opts.backend` for batches of at most `parts` parts of at most
/// `rows` loss rows each.
fn radar_step<'p>(
    pool: &'p Pool,
    params: &RadarParams,
    opts: &RadarTrainOptions,
    grid_x: usize,
    (parts, rows): (usize, usize),
) -> Result<Box<dyn RadarStep + 'p>> {
    match opts.backend {
        TrainBackend::Cpu => Ok(Box::new(CpuRadarStep::new(
            pool, params, opts, grid_x, rows,
        ))),
        #[cfg(feature = "cuda")]
        backend => {
            let dev = super::train_fusion::train_device(backend)?;
            Ok(Box::new(crate::fit::device::radar::DeviceRadarStep::new(
                std::sync::Arc::new(dev),
                params,
                opts,
                grid_x,
                parts,
                rows,
            )?))
        }
        #[cfg(not(feature = "cuda"))]
        backend => {
            let _ = parts;
            Err(super::train_fusion::without_cuda(backend))
        }
    }
}

/// Options of RADAR training (§9b "Training protocol").
#[derive(Clone, Debug)]
pub struct RadarTrainOptions {
    pub epochs: usize,
    pub batch: usize,
    /// Non-empty patches drawn per part and step; 0 = all of them.
    pub patches: usize,
    /// Learning rate of everything but the instructions.
    pub lr: f32,
    pub lr_instructions: f32,
    pub warmup: Option<usize>,
    pub weight_decay: f32,
    pub betas: (f32, f32),
    pub adam_eps: f32,
    pub temperature: f32,
    pub seed: u64,
    /// `Model`: start from the input model's fusion tensors (UFF or RADAR).
    pub init: Init,
    /// Per training part, the case its data are in (a modality missing in the data);
    /// empty: every part complete. Such a part plays its own case in every step; a part
    /// without a cloud has every patch in the loss (§9b "Training protocol").
    pub part_cases: Vec<Case>,
    /// Where the steps run (the batches are drawn on the host, the same for every backend).
    pub backend: TrainBackend,
}

impl Default for RadarTrainOptions {
    fn default() -> Self {
        RadarTrainOptions {
            epochs: 10,
            batch: 16,
            patches: 64,
            lr: 1e-3,
            lr_instructions: 1e-2,
            warmup: None,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            adam_eps: 1e-8,
            temperature: 1.0,
            seed: 0,
            init: Init::Random,
            part_cases: Vec::new(),
            backend: TrainBackend::Cpu,
        }
    }
}

/// The case a complete training part plays in one step: ½ complete, ¼ cloud missing,
/// ¼ RGB missing (§9b, decided).
fn draw_case(rng: &mut Rng) -> Case {
    let u = rng.uniform();
    if u < 0.5 {
        Case::Complete
    } else if u < 0.75 {
        Case::RgbOnly
    } else {
        Case::CloudOnly
    }
}

/// The pseudo input's features (SPEC §9): xyz (cloud removed) and rgb (image removed).
struct Pseudo {
    xyz: Vec<f32>,
    rgb: Vec<f32>,
}

impl Pseudo {
    fn extract(features: &mut dyn FeatureExtractor) -> Result<Self> {
        let l = features.layout();
        let xn = l.xyz_grid * l.xyz_grid * l.xyz_dim;
        let rn = l.rgb_grid * l.rgb_grid * l.rgb_dim;
        let mut fused = vec![0f32; l.xyz_grid * l.xyz_grid * l.fused_dim];
        let (mut xyz, mut rgb) = (vec![0f32; xn], vec![0f32; rn]);
        let mut scratch = vec![0f32; xn.max(rn)];
        let ok = features.extract_without(
            0,
            MissingModality::Cloud,
            &mut xyz,
            &mut scratch[..rn],
            &mut fused,
        )? && features.extract_without(
            0,
            MissingModality::Rgb,
            &mut scratch[..xn],
            &mut rgb,
            &mut fused,
        )?;
        if !ok {
            return Err(Error::Config(
                "RADAR training needs the pseudo input's features; this feature source \
                 cannot remove a modality"
                    .into(),
            ));
        }
        Ok(Pseudo { xyz, rgb })
    }
}

/// One step's parts: cases drawn from `case_rng`, cells from `patch_rng`.
struct StepBatch {
    cases: Vec<Case>,
    cells: Vec<Vec<u32>>,
}

impl StepBatch {
    fn draw(
        cache: &FeatureCache,
        parts: &[usize],
        part_cases: &[Case],
        patches: usize,
        case_rng: &mut Rng,
        patch_rng: &mut Rng,
    ) -> Self {
        let mut draw = Vec::new();
        let mut cells = Vec::with_capacity(parts.len());
        let mut cases = Vec::with_capacity(parts.len());
        for &part in parts {
            let drawn = draw_case(case_rng);
            cases.push(match part_cases.get(part) {
                Some(&c) if c != Case::Complete => c,
                _ => drawn,
            });
            let take = cache.draw(part, patches, patch_rng, &mut draw);
            cells.push(draw[..take].to_vec());
        }
        StepBatch { cases, cells }
    }

    fn samples<'a>(
        &'a self,
        cache: &'a FeatureCache,
        pseudo: &'a Pseudo,
        parts: &[usize],
    ) -> Vec<PartSample<'a>> {
        parts
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.cells[*i].is_empty())
            .map(|(i, &part)| {
                let (xyz, rgb) = cache.part(part);
                let case = self.cases[i];
                PartSample {
                    xyz: if case == Case::RgbOnly {
                        &pseudo.xyz
                    } else {
                        xyz
                    },
                    rgb: if case == Case::CloudOnly {
                        &pseudo.rgb
                    } else {
                        rgb
                    },
                    case,
                    cells: &self.cells[i],
                }
            })
            .collect()
    }
}

/// Trains `params` on the parts of `features` (module doc, §9b).
pub fn train_radar(
    pool: &Pool,
    features: &mut dyn FeatureExtractor,
    params: &mut RadarParams,
    opts: &RadarTrainOptions,
    scratch_dir: &Path,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    let t0 = std::time::Instant::now();
    let l = features.layout();
    let (f, r) = (&params.fusion, &params.radar);
    if l.xyz_dim != f.xyz_dim as usize
        || l.rgb_dim != f.rgb_dim as usize
        || l.rgb_grid != r.token_grid as usize
    {
        return Err(Error::Config(format!(
            "features are {}+{} wide on a {}-grid, the fusion expects {}+{} on a {}-grid",
            l.xyz_dim, l.rgb_dim, l.rgb_grid, f.xyz_dim, f.rgb_dim, r.token_grid
        )));
    }
    if opts.epochs == 0 || opts.batch == 0 {
        return Err(Error::Config("epochs and batch must be at least 1".into()));
    }
    if !(opts.lr > 0.0 && opts.lr_instructions > 0.0 && opts.temperature > 0.0) {
        return Err(Error::Config(
            "learning rates and temperature must be positive".into(),
        ));
    }
    if !(opts.part_cases.is_empty() || opts.part_cases.len() == features.parts()) {
        return Err(Error::Config(format!(
            "{} part cases for {} training parts",
            opts.part_cases.len(),
            features.parts()
        )));
    }
    let pseudo = Pseudo::extract(features)?;
    let mut cache = FeatureCache::build(features, scratch_dir, progress)?;
    let cells = l.xyz_grid * l.xyz_grid;
    for (part, &case) in opts.part_cases.iter().enumerate() {
        if case == Case::RgbOnly {
            // No cloud: the pseudo features stand everywhere, every patch counts.
            cache.nonempty[part] = (0..cells as u32).collect();
        }
    }
    let extract_seconds = t0.elapsed().as_secs_f64();
    let parts = cache.nonempty.len();
    cache.require_patches()?;
    let rows = if opts.patches == 0 {
        cells
    } else {
        opts.patches.min(cells)
    };
    let steps_per_epoch = parts.div_ceil(opts.batch);
    let total = steps_per_epoch * opts.epochs;
    let warmup = warmup_steps(opts.warmup, total);
    let max_parts = opts.batch.min(parts);
    let mut stepper = radar_step(pool, params, opts, l.xyz_grid, (max_parts, rows))?;

    let eval_parts: Vec<usize> = (0..parts.min(opts.batch)).collect();
    let eval = StepBatch::draw(
        &cache,
        &eval_parts,
        &opts.part_cases,
        opts.patches,
        &mut Rng::new(opts.seed ^ 0x6361_7365),
        &mut Rng::new(opts.seed ^ 0x6576_616c),
    );
    let eval_samples = eval.samples(&cache, &pseudo, &eval_parts);
    let eval_rows = eval_samples.iter().map(|s| s.cells.len()).sum();
    let start = TrainStart {
        t0,
        extract_seconds,
        parts,
        epochs: opts.epochs,
        batch: opts.batch,
        seed: opts.seed,
        eval_before: stepper.loss(&eval_samples)?,
        eval_rows,
    };

    let mut patch_rng = Rng::new(opts.seed ^ 0x7061_7463);
    let mut case_rng = Rng::new(opts.seed ^ 0x6361_7365_7374);
    // Multiply-adds × 2 of one part's token network and of one loss row's MLPs + heads;
    // a training step runs the forward twice and the backward (two products per forward
    // one) once: × 4.
    let dm = Dims::new(&params.fusion, &params.radar, l.xyz_grid);
    let (tk, d) = (dm.tokens() as f64, dm.d as f64);
    let part_flops = 2.0 * dm.depth as f64 * (tk * 12.0 * d * d + 2.0 * tk * tk * d)
        + 2.0 * dm.g as f64 * d * (dm.dx + dm.dr) as f64;
    let row_flops = 2.0
        * ((2 * dm.hx * dm.dx + 2 * dm.hr * dm.dr) as f64
            + (dm.dx + dm.dr) as f64 * (d + dm.e as f64));
    let mut train_step = |batch: &[usize], step: usize| -> Result<StepDone> {
        let b = StepBatch::draw(
            &cache,
            batch,
            &opts.part_cases,
            opts.patches,
            &mut case_rng,
            &mut patch_rng,
        );
        let samples = b.samples(&cache, &pseudo, batch);
        let n: usize = samples.iter().map(|s| s.cells.len()).sum();
        let factor = learning_rate(1.0, step, total, warmup);
        let loss = if n > 0 {
            stepper.train(
                &samples,
                opts.lr * factor,
                opts.lr_instructions * factor,
                step,
            )?
        } else {
            0.0
        };
        Ok(StepDone {
            loss,
            lr: opts.lr * factor,
            rows: n,
            flops: 4.0 * (samples.len() as f64 * part_flops + n as f64 * row_flops),
        })
    };
    let epochs = run_epochs(&start, progress, &mut train_step)?;
    let eval_after = stepper.loss(&eval_samples)?;
    stepper.params_into(params)?;
    Ok(epochs.report(&start, eval_after, progress))
}

/// Trains a RADAR fusion on the training parts of `data` and writes a new model file
/// (every other tensor of `model_path` copied) whose configuration gains `radar`:
/// `radar_cfg` (default: §9b's sizes on the model's RGB grid; a RADAR model keeps its
/// own). With `Init::Model` training starts from the model's fusion tensors (a UFF's
/// `fusion.*`, or all of a RADAR model's).
pub fn train_radar_category(
    model_path: &Path,
    data: &Path,
    out: &Path,
    cat: &CategoryTrain,
    opts: &RadarTrainOptions,
    radar_cfg: Option<RadarConfig>,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    with_category(
        model_path,
        data,
        cat,
        &mut |pool, model, features, avail| {
            use crate::eval::missing::Availability;
            let cfg = model.config();
            let mut opts = opts.clone();
            opts.part_cases = avail
                .iter()
                .map(|a| match a {
                    Availability::Complete => Case::Complete,
                    Availability::RgbOnly => Case::RgbOnly,
                    Availability::CloudOnly => Case::CloudOnly,
                })
                .collect();
            let opts = &opts;
            let fcfg = fusion_config(model_path, cfg)?;
            let grid = features.layout().rgb_grid as u32;
            let rcfg = radar_cfg
                .clone()
                .or_else(|| cfg.radar.clone())
                .unwrap_or_else(|| RadarConfig::paper(grid));
            let mut params = RadarParams::init(&fcfg, &rcfg, opts.seed);
            if opts.init == Init::Model {
                params.load_from(model)?;
            }
            let report = train_radar(
                pool,
                features,
                &mut params,
                opts,
                &cat.scratch_dir,
                progress,
            )?;
            let mut out_cfg = cfg.clone();
            out_cfg.name = format!(
                "{} + RADAR fusion trained on {}",
                cfg.name,
                category_name(data)
            );
            out_cfg.radar = Some(rcfg.clone());
            let settings = TrainSettings {
                method: "radar",
                backend: opts.backend,
                seed: opts.seed,
                epochs: opts.epochs,
                batch: opts.batch,
                patches: opts.patches,
                lr: format!("{} (instructions {})", opts.lr, opts.lr_instructions),
                init: opts.init,
            };
            let mut prov = provenance(model_path, model, data, &settings, &report);
            if let Some((rate, drop, seed)) = cat.missing {
                prov.push((
                    "train.missing".into(),
                    format!("rate {rate}, drop {drop:?}, seed {seed}"),
                ));
            }
            write_trained(
                model_path,
                model,
                &out_cfg,
                &params.to_tensors(),
                &prov,
                out,
            )?;
            Ok(report)
        },
    )
}
