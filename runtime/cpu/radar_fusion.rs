//! RADAR's adaptive instruction fusion (docs/RADAR-FUSION.md §9b): forward for
//! inspection (no allocation once the workspace is planned) and forward + hand-derived
//! backward for training (`fit::train_radar`), one implementation for both.
//!
//! Per part and case `m`: cloud tokens (xyz features pooled to the RGB grid) and RGB
//! tokens → `depth` pre-norm blocks, each prefixed by its instructions `I[m, j]`
//! (VPT-deep) → `f̂_pc`, `f̂_rgb`; their token means drive the HyperNetwork, which scales
//! the output units of UFF's two MLP layers per branch; `f̂` enters the MLPs as a context
//! added to the LayerNormed input. The fused feature is `y_x(j) ⊕ y_r(cell(j))`, the
//! bank layout of M3DM.
//!
//! Every product goes through `cpu::gemm` on fixed output tiles (and `fit::infonce`'s
//! `matmul_tn` for weight gradients), sums over rows run in a fixed order: the bits do not
//! depend on the thread count.

use super::fusion::adaptive_avg_pool;
use super::gemm::{self, gelu, Epilogue, Mat};
use super::pool::Pool;
use crate::config::{FusionConfig, RadarConfig};
use crate::cpu::products::{matmul_tn, normalize_rows, normalize_rows_backward};
use crate::format::{FormatError, TensorSource};

/// Rows per chunk of the MLPs at inspection.
pub const CHUNK_ROWS: usize = 512;

/// Which instruction a part takes: the set of modalities it has (2² − 1 cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Complete = 0,
    /// The cloud is missing: its features are the pseudo input's.
    RgbOnly = 1,
    /// The image is missing.
    CloudOnly = 2,
}

/// Tensors of one linear layer: weight `[out, in]`, bias `[out]`.
#[derive(Debug)]
pub struct Lin<T> {
    pub w: T,
    pub b: T,
}

/// One UFF branch (`fusion.{xyz,rgb}_*`): LayerNorm, fc1, fc2, head.
#[derive(Debug)]
pub struct UffBranch<T> {
    pub norm: Lin<T>,
    pub fc1: Lin<T>,
    pub fc2: Lin<T>,
    pub head: Lin<T>,
}

/// One pre-norm transformer block (ViT names).
#[derive(Debug)]
pub struct Block<T> {
    pub norm1: Lin<T>,
    pub qkv: Lin<T>,
    pub proj: Lin<T>,
    pub norm2: Lin<T>,
    pub fc1: Lin<T>,
    pub fc2: Lin<T>,
}

/// Every tensor of the RADAR fusion (UFF's included), as `T` (weights `&[f32]`,
/// gradients `&mut [f32]`).
#[derive(Debug)]
pub struct RadarNet<T> {
    pub xyz: UffBranch<T>,
    pub rgb: UffBranch<T>,
    /// `[3, depth, len, d]`
    pub instructions: T,
    /// `[G, d]`
    pub pos: T,
    /// `[2, d]`: cloud, RGB
    pub type_embed: T,
    /// Input LayerNorm and projection of the cloud and RGB tokens.
    pub pc_norm: Lin<T>,
    pub pc_proj: Lin<T>,
    pub rgb_norm: Lin<T>,
    pub rgb_proj: Lin<T>,
    pub blocks: Vec<Block<T>>,
    /// The Real-Pseudo Hybrid Module's block (§9c), when the model has it.
    pub hybrid: Option<Block<T>>,
    /// Context projections `[D, d]` (no bias).
    pub pc_ctx: T,
    pub rgb_ctx: T,
    /// Layer encoders ξ^h: pc_1, pc_2, rgb_1, rgb_2.
    pub enc: [Lin<T>; 4],
    /// The shared first layer of eq. 6.
    pub hyper_fc1: Lin<T>,
    /// The generated layers' heads: pc_1 (4Dx), pc_2 (Dx), rgb_1 (4Dr), rgb_2 (Dr).
    pub out: [Lin<T>; 4],
}

impl<T> RadarNet<T> {
    /// Builds the net from `take(name)`, called once for every tensor name.
    pub fn build<E>(
        depth: usize,
        hybrid: bool,
        take: &mut dyn FnMut(&str) -> Result<T, E>,
    ) -> Result<Self, E> {
        let mut lin = |p: &str| -> Result<Lin<T>, E> {
            Ok(Lin {
                w: take(&format!("{p}.weight"))?,
                b: take(&format!("{p}.bias"))?,
            })
        };
        let mut uff = |b: &str| -> Result<UffBranch<T>, E> {
            Ok(UffBranch {
                norm: lin(&format!("fusion.{b}_norm"))?,
                fc1: lin(&format!("fusion.{b}_mlp.fc1"))?,
                fc2: lin(&format!("fusion.{b}_mlp.fc2"))?,
                head: lin(&format!("fusion.{b}_head"))?,
            })
        };
        let xyz = uff("xyz")?;
        let rgb = uff("rgb")?;
        let mut block = |p: &str| -> Result<Block<T>, E> {
            Ok(Block {
                norm1: lin(&format!("{p}.norm1"))?,
                qkv: lin(&format!("{p}.attn.qkv"))?,
                proj: lin(&format!("{p}.attn.proj"))?,
                norm2: lin(&format!("{p}.norm2"))?,
                fc1: lin(&format!("{p}.mlp.fc1"))?,
                fc2: lin(&format!("{p}.mlp.fc2"))?,
            })
        };
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            blocks.push(block(&format!("radar.blocks.{i}"))?);
        }
        let hybrid = if hybrid {
            Some(block("radar.hybrid")?)
        } else {
            None
        };
        let pc_norm = lin("radar.pc_in.norm")?;
        let pc_proj = lin("radar.pc_in.proj")?;
        let rgb_norm = lin("radar.rgb_in.norm")?;
        let rgb_proj = lin("radar.rgb_in.proj")?;
        let enc = [
            lin("radar.hyper.enc_pc_1")?,
            lin("radar.hyper.enc_pc_2")?,
            lin("radar.hyper.enc_rgb_1")?,
            lin("radar.hyper.enc_rgb_2")?,
        ];
        let hyper_fc1 = lin("radar.hyper.fc1")?;
        let out = [
            lin("radar.hyper.out_pc_1")?,
            lin("radar.hyper.out_pc_2")?,
            lin("radar.hyper.out_rgb_1")?,
            lin("radar.hyper.out_rgb_2")?,
        ];
        Ok(RadarNet {
            xyz,
            rgb,
            instructions: take("radar.instructions")?,
            pos: take("radar.pos_embed")?,
            type_embed: take("radar.type_embed")?,
            pc_norm,
            pc_proj,
            rgb_norm,
            rgb_proj,
            blocks,
            hybrid,
            pc_ctx: take("radar.pc_ctx.weight")?,
            rgb_ctx: take("radar.rgb_ctx.weight")?,
            enc,
            hyper_fc1,
            out,
        })
    }
}

/// The weights, borrowed from a model file or any tensor store.
pub type RadarWeights<'a> = RadarNet<&'a [f32]>;

/// Loads the RADAR fusion's weights (shapes checked) from `src`.
pub fn load_weights<'a, S: TensorSource + ?Sized>(
    src: &'a S,
    f: &FusionConfig,
    r: &RadarConfig,
) -> Result<RadarWeights<'a>, FormatError> {
    let shapes: std::collections::BTreeMap<String, Vec<usize>> = all_specs(f, r)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    RadarNet::build(r.depth as usize, r.hybrid, &mut |name| {
        let shape = shapes.get(name).map_or(&[][..], |s| s.as_slice());
        src.f32(name, shape)
    })
}

/// Every tensor of the RADAR fusion: UFF's `fusion.*`, then `radar.*`.
pub fn all_specs(f: &FusionConfig, r: &RadarConfig) -> Vec<crate::format::TensorSpec> {
    let model = crate::config::ModelConfig {
        name: String::new(),
        vit: None,
        point: None,
        fusion: Some(f.clone()),
        radar: Some(r.clone()),
        preprocess: crate::config::PreprocessConfig::default(),
    };
    crate::format::model_tensor_specs(&model)
}

/// Sizes of the computation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub dx: usize,
    pub dr: usize,
    pub hx: usize,
    pub hr: usize,
    pub e: usize,
    pub d: usize,
    pub depth: usize,
    pub heads: usize,
    pub len: usize,
    pub hyper: usize,
    /// RGB grid side and cells (tokens per modality).
    pub grid_r: usize,
    pub g: usize,
    /// xyz grid side.
    pub grid_x: usize,
    pub uff_eps: f32,
    pub eps: f32,
    pub hybrid: bool,
}

impl Dims {
    pub fn new(f: &FusionConfig, r: &RadarConfig, grid_x: usize) -> Self {
        let (dx, dr, m) = (f.xyz_dim as usize, f.rgb_dim as usize, f.mlp_ratio as usize);
        let grid_r = r.token_grid as usize;
        Dims {
            dx,
            dr,
            hx: m * dx,
            hr: m * dr,
            e: f.head_dim as usize,
            d: r.dim as usize,
            depth: r.depth as usize,
            heads: r.heads as usize,
            len: r.instruction_len as usize,
            hyper: r.hyper_dim as usize,
            grid_r,
            g: grid_r * grid_r,
            grid_x,
            uff_eps: f.ln_eps,
            eps: r.ln_eps,
            hybrid: r.hybrid,
        }
    }
    /// Tokens of the sequence.
    pub fn tokens(&self) -> usize {
        self.len + 2 * self.g
    }
    /// The RGB cell whose pooling bin holds xyz cell `j`.
    pub fn cell(&self, j: usize) -> usize {
        let s = self.grid_x / self.grid_r;
        let (y, x) = (j / self.grid_x, j % self.grid_x);
        (y / s) * self.grid_r + x / s
    }
    /// Output widths of the generated scales: pc_1, pc_2, rgb_1, rgb_2.
    fn scale_len(&self, i: usize) -> usize {
        [self.hx, self.dx, self.hr, self.dr][i]
    }
}

fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// Activations of one block, kept for the backward pass.
struct BlockActs {
    input: Vec<f32>,
    u1: Vec<f32>,
    rstd1: Vec<f32>,
    a1: Vec<f32>,
    qkv: Vec<f32>,
    /// Attention probabilities, `heads × T × T`.
    p: Vec<f32>,
    o: Vec<f32>,
    x1: Vec<f32>,
    u2: Vec<f32>,
    rstd2: Vec<f32>,
    a2: Vec<f32>,
    z: Vec<f32>,
    g: Vec<f32>,
    out: Vec<f32>,
}

impl BlockActs {
    fn new(t: usize, d: usize, heads: usize) -> Self {
        BlockActs {
            input: zeros(t * d),
            u1: zeros(t * d),
            rstd1: zeros(t),
            a1: zeros(t * d),
            qkv: zeros(t * 3 * d),
            p: zeros(heads * t * t),
            o: zeros(t * d),
            x1: zeros(t * d),
            u2: zeros(t * d),
            rstd2: zeros(t),
            a2: zeros(t * d),
            z: zeros(t * 4 * d),
            g: zeros(t * 4 * d),
            out: zeros(t * d),
        }
    }
}

/// The token transformer's and the HyperNetwork's activations for one part.
pub struct TokenActs {
    dims: Dims,
    xbar: Vec<f32>,
    pc_u: Vec<f32>,
    pc_rstd: Vec<f32>,
    pc_a: Vec<f32>,
    rgb_u: Vec<f32>,
    rgb_rstd: Vec<f32>,
    rgb_a: Vec<f32>,
    blocks: Vec<BlockActs>,
    /// The hybrid block over the `2G` modality tokens (§9c).
    hybrid: Option<BlockActs>,
    /// Token means `e_pc`, `e_rgb` (2 × d).
    mean: Vec<f32>,
    /// Per generated layer: encoding ξ^h (hyper), shared layer output (hyper).
    hh: [Vec<f32>; 4],
    vv: [Vec<f32>; 4],
    /// `1 + w` per generated layer.
    pub scale: [Vec<f32>; 4],
    case: usize,
}

impl TokenActs {
    /// For training: every block's activations are kept for the backward pass.
    pub fn new(dims: Dims) -> Self {
        Self::with_blocks(dims, dims.depth)
    }

    /// For inspection: one block's buffers, reused by every block (a quarter of the
    /// memory at depth 4; no backward pass).
    pub fn for_inference(dims: Dims) -> Self {
        Self::with_blocks(dims, 1)
    }

    fn with_blocks(dims: Dims, kept: usize) -> Self {
        let (t, d, g) = (dims.tokens(), dims.d, dims.g);
        TokenActs {
            xbar: zeros(g * dims.dx),
            pc_u: zeros(g * dims.dx),
            pc_rstd: zeros(g),
            pc_a: zeros(g * dims.dx),
            rgb_u: zeros(g * dims.dr),
            rgb_rstd: zeros(g),
            rgb_a: zeros(g * dims.dr),
            blocks: (0..kept)
                .map(|_| BlockActs::new(t, d, dims.heads))
                .collect(),
            hybrid: dims.hybrid.then(|| BlockActs::new(2 * g, d, dims.heads)),
            mean: zeros(2 * d),
            hh: std::array::from_fn(|_| zeros(dims.hyper)),
            vv: std::array::from_fn(|_| zeros(dims.hyper)),
            scale: std::array::from_fn(|i| zeros(dims.scale_len(i))),
            case: 0,
            dims,
        }
    }

    /// `[f̂_pc; f̂_rgb]` (`2G × d`): the hybrid block's output, else the last block's
    /// without its instruction rows.
    fn modality_tokens(&self) -> &[f32] {
        let (l, g, d) = (self.dims.len, self.dims.g, self.dims.d);
        match &self.hybrid {
            Some(h) => &h.out,
            None => &self.last_block().out[l * d..(l + 2 * g) * d],
        }
    }
    fn last_block(&self) -> &BlockActs {
        self.blocks.last().expect("at least one block")
    }

    /// `f̂_pc` (`G × d`).
    pub fn f_pc(&self) -> &[f32] {
        &self.modality_tokens()[..self.dims.g * self.dims.d]
    }
    /// `f̂_rgb` (`G × d`).
    pub fn f_rgb(&self) -> &[f32] {
        &self.modality_tokens()[self.dims.g * self.dims.d..]
    }

    /// Tokens, blocks and HyperNetwork for one part: `xyz` (`grid_x² × Dx`) and `rgb`
    /// (`G × Dr`), a missing modality already replaced by the pseudo input's features.
    pub fn forward(
        &mut self,
        pool: &Pool,
        w: &RadarWeights<'_>,
        xyz: &[f32],
        rgb: &[f32],
        case: Case,
    ) {
        let dm = self.dims;
        let (d, g, l, t) = (dm.d, dm.g, dm.len, dm.tokens());
        self.case = case as usize;
        adaptive_avg_pool(xyz, dm.grid_x, dm.dx, dm.grid_r, &mut self.xbar);
        ln_forward(
            &self.xbar,
            dm.dx,
            w.pc_norm.w,
            w.pc_norm.b,
            dm.eps,
            &mut self.pc_u,
            &mut self.pc_rstd,
            &mut self.pc_a,
        );
        ln_forward(
            rgb,
            dm.dr,
            w.rgb_norm.w,
            w.rgb_norm.b,
            dm.eps,
            &mut self.rgb_u,
            &mut self.rgb_rstd,
            &mut self.rgb_a,
        );
        let seq = &mut self.blocks[0].input;
        for (m, (a, dim, proj)) in [
            (&self.pc_a, dm.dx, &w.pc_proj),
            (&self.rgb_a, dm.dr, &w.rgb_proj),
        ]
        .into_iter()
        .enumerate()
        {
            let rows = &mut seq[(l + m * g) * d..(l + (m + 1) * g) * d];
            linear_forward(pool, proj, Mat::new(a, g, dim), d, rows, Epilogue::None);
            let ty = &w.type_embed[m * d..(m + 1) * d];
            for (row, pos) in rows.chunks_exact_mut(d).zip(w.pos.chunks_exact(d)) {
                for i in 0..d {
                    row[i] += ty[i] + pos[i];
                }
            }
        }
        for j in 0..dm.depth {
            // Block j's buffers: its own when training, the shared ones at inspection.
            let k = j.min(self.blocks.len() - 1);
            if j > 0 {
                if k == j {
                    let (before, after) = self.blocks.split_at_mut(j);
                    after[0].input[l * d..].copy_from_slice(&before[j - 1].out[l * d..t * d]);
                } else {
                    let b = &mut self.blocks[k];
                    b.input[l * d..].copy_from_slice(&b.out[l * d..t * d]);
                }
            }
            let instr = instruction(w.instructions, &dm, self.case, j);
            self.blocks[k].input[..l * d].copy_from_slice(instr);
            block_forward(pool, &w.blocks[j], t, None, &dm, &mut self.blocks[k]);
        }
        if let (Some(hw), Some(ha)) = (&w.hybrid, self.hybrid.as_mut()) {
            // §9c: real and pseudo tokens attend within their own group only.
            ha.input
                .copy_from_slice(&self.blocks[self.blocks.len() - 1].out[l * d..t * d]);
            let split = (case != Case::Complete).then_some(g);
            block_forward(pool, hw, 2 * g, split, &dm, ha);
        }
        // HyperNetwork (eq. 6): e_b → ξ^h → shared layer → generated scales 1 + w.
        let mut mean = std::mem::take(&mut self.mean);
        for (e, rows) in mean
            .chunks_exact_mut(d)
            .zip(self.modality_tokens().chunks_exact(g * d))
        {
            e.fill(0.0);
            for row in rows.chunks_exact(d) {
                e.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            e.iter_mut().for_each(|v| *v /= g as f32);
        }
        self.mean = mean;
        for i in 0..4 {
            let e = &self.mean[(i / 2) * d..(i / 2 + 1) * d];
            matvec(&w.enc[i], e, &mut self.hh[i]);
            matvec(&w.hyper_fc1, &self.hh[i], &mut self.vv[i]);
            matvec(&w.out[i], &self.vv[i], &mut self.scale[i]);
            self.scale[i].iter_mut().for_each(|v| *v += 1.0);
        }
    }
}

fn instruction<'a>(instr: &'a [f32], dm: &Dims, case: usize, layer: usize) -> &'a [f32] {
    let n = dm.len * dm.d;
    let at = (case * dm.depth + layer) * n;
    &instr[at..at + n]
}

/// `out = W · x + b` for one vector.
fn matvec(l: &Lin<&[f32]>, x: &[f32], out: &mut [f32]) {
    let k = x.len();
    for (o, (row, b)) in out.iter_mut().zip(l.w.chunks_exact(k).zip(l.b)) {
        *o = b + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// LayerNorm rows of `x` keeping `u = (x − μ)/σ` and `1/σ` for the backward pass
/// (public: the device's `layernorm_stats_f32` is tested bitwise against it).
#[allow(clippy::too_many_arguments)]
pub fn ln_forward(
    x: &[f32],
    dim: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
    u: &mut [f32],
    rstd: &mut [f32],
    out: &mut [f32],
) {
    for (((xr, ur), r), or) in x
        .chunks_exact(dim)
        .zip(u.chunks_exact_mut(dim))
        .zip(rstd.iter_mut())
        .zip(out.chunks_exact_mut(dim))
    {
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        *r = 1.0 / (var + eps).sqrt();
        for i in 0..dim {
            ur[i] = (xr[i] - mean) * *r;
            or[i] = ur[i] * w[i] + b[i];
        }
    }
}

/// A column block of a row-major matrix: columns `c0..c0+cols` of `rows × stride`.
fn cols(data: &[f32], rows: usize, stride: usize, c0: usize, cols: usize) -> Mat<'_> {
    Mat {
        data: &data[c0..],
        rows,
        cols,
        stride,
    }
}

/// One block over `t` tokens. With `split`, tokens `..split` and `split..` attend only
/// within their own group (eq. 7's mask; probabilities across groups are exactly 0).
fn block_forward(
    pool: &Pool,
    w: &Block<&[f32]>,
    t: usize,
    split: Option<usize>,
    dm: &Dims,
    a: &mut BlockActs,
) {
    let (d, h) = (dm.d, dm.heads);
    let hd = d / h;
    ln_forward(
        &a.input,
        d,
        w.norm1.w,
        w.norm1.b,
        dm.eps,
        &mut a.u1,
        &mut a.rstd1,
        &mut a.a1,
    );
    linear_forward(
        pool,
        &w.qkv,
        Mat::new(&a.a1, t, d),
        3 * d,
        &mut a.qkv,
        Epilogue::None,
    );
    let scale = 1.0 / (hd as f32).sqrt();
    for head in 0..h {
        let p = &mut a.p[head * t * t..(head + 1) * t * t];
        let q = cols(&a.qkv, t, 3 * d, head * hd, hd);
        let k = cols(&a.qkv, t, 3 * d, d + head * hd, hd);
        let v = cols(&a.qkv, t, 3 * d, 2 * d + head * hd, hd);
        gemm::matmul_tiled(pool, p, t, q, k, true, scale, false);
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            let group = match split {
                Some(s) if i < s => 0..s,
                Some(s) => s..t,
                None => 0..t,
            };
            let max = row[group.clone()]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (j, v) in row.iter_mut().enumerate() {
                *v = if group.contains(&j) {
                    (*v - max).exp()
                } else {
                    0.0
                };
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
        gemm::matmul_tiled(
            pool,
            &mut a.o[head * hd..],
            d,
            Mat::new(p, t, t),
            v,
            false,
            1.0,
            false,
        );
    }
    a.x1.copy_from_slice(&a.input);
    linear_forward(
        pool,
        &w.proj,
        Mat::new(&a.o, t, d),
        d,
        &mut a.x1,
        Epilogue::Accumulate,
    );
    ln_forward(
        &a.x1,
        d,
        w.norm2.w,
        w.norm2.b,
        dm.eps,
        &mut a.u2,
        &mut a.rstd2,
        &mut a.a2,
    );
    linear_forward(
        pool,
        &w.fc1,
        Mat::new(&a.a2, t, d),
        4 * d,
        &mut a.z,
        Epilogue::None,
    );
    a.g.iter_mut().zip(&a.z).for_each(|(g, &z)| *g = gelu(z));
    a.out.copy_from_slice(&a.x1);
    linear_forward(
        pool,
        &w.fc2,
        Mat::new(&a.g, t, 4 * d),
        d,
        &mut a.out,
        Epilogue::Accumulate,
    );
}

/// Activations of one MLP branch over `n` rows.
pub struct BranchActs {
    /// Rows planned for.
    pub cap: usize,
    /// Gathered inputs: raw features (n × D), context tokens (n × d).
    pub x: Vec<f32>,
    pub ctx: Vec<f32>,
    u: Vec<f32>,
    rstd: Vec<f32>,
    /// LN(x) + context projection (n × D)
    ux: Vec<f32>,
    z1: Vec<f32>,
    g: Vec<f32>,
    z2: Vec<f32>,
    /// The fused half (n × D).
    pub y: Vec<f32>,
    p: Vec<f32>,
    norms: Vec<f32>,
    /// L2-normalised head output (n × e).
    pub q: Vec<f32>,
}

impl BranchActs {
    pub fn new(rows: usize, dim: usize, hidden: usize, d: usize, e: usize) -> Self {
        BranchActs {
            cap: rows,
            x: zeros(rows * dim),
            ctx: zeros(rows * d),
            u: zeros(rows * dim),
            rstd: zeros(rows),
            ux: zeros(rows * dim),
            z1: zeros(rows * hidden),
            g: zeros(rows * hidden),
            z2: zeros(rows * dim),
            y: zeros(rows * dim),
            p: zeros(rows * e),
            norms: zeros(rows),
            q: zeros(rows * e),
        }
    }

    /// `y = (W2 · GELU((W1 · u + b1) ⊙ s1) + b2) ⊙ s2` with `u = LN(x) + Wc · ctx` for
    /// the first `n` gathered rows; with `head`, also the normalised head output.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        pool: &Pool,
        w: &UffBranch<&[f32]>,
        ctx_w: &[f32],
        s1: &[f32],
        s2: &[f32],
        n: usize,
        dm: &Dims,
        head: bool,
    ) {
        let (dim, hidden, d) = (s2.len(), s1.len(), dm.d);
        ln_forward(
            &self.x[..n * dim],
            dim,
            w.norm.w,
            w.norm.b,
            dm.uff_eps,
            &mut self.u[..n * dim],
            &mut self.rstd[..n],
            &mut self.ux[..n * dim],
        );
        gemm::linear(
            pool,
            Mat::new(&self.ctx[..n * d], n, d),
            Mat::new(ctx_w, dim, d),
            None,
            &mut self.ux[..n * dim],
            dim,
            Epilogue::Accumulate,
        );
        linear_forward(
            pool,
            &w.fc1,
            Mat::new(&self.ux[..n * dim], n, dim),
            hidden,
            &mut self.z1[..n * hidden],
            Epilogue::None,
        );
        for (row_g, row_z) in self.g[..n * hidden]
            .chunks_exact_mut(hidden)
            .zip(self.z1.chunks_exact(hidden))
        {
            for i in 0..hidden {
                row_g[i] = gelu(row_z[i] * s1[i]);
            }
        }
        linear_forward(
            pool,
            &w.fc2,
            Mat::new(&self.g[..n * hidden], n, hidden),
            dim,
            &mut self.z2[..n * dim],
            Epilogue::None,
        );
        for (row_y, row_z) in self.y[..n * dim]
            .chunks_exact_mut(dim)
            .zip(self.z2.chunks_exact(dim))
        {
            for i in 0..dim {
                row_y[i] = row_z[i] * s2[i];
            }
        }
        if head {
            let e = dm.e;
            linear_forward(
                pool,
                &w.head,
                Mat::new(&self.y[..n * dim], n, dim),
                e,
                &mut self.p[..n * e],
                Epilogue::None,
            );
            normalize_rows(
                &self.p[..n * e],
                e,
                &mut self.q[..n * e],
                &mut self.norms[..n],
            );
        }
    }
}

/// Scratch of the backward pass, sized for the largest branch.
pub struct BackScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    tt: Vec<f32>,
    th: Vec<f32>,
    seq: Vec<f32>,
    df_pc: Vec<f32>,
    df_rgb: Vec<f32>,
    vec: [Vec<f32>; 3],
}

impl BackScratch {
    pub fn new(dm: &Dims, rows: usize) -> Self {
        let t = dm.tokens();
        let widest = dm.hx.max(dm.hr).max(4 * dm.d) * rows.max(t);
        BackScratch {
            a: zeros(widest),
            b: zeros(widest),
            c: zeros(widest.max(t * 4 * dm.d)),
            tt: zeros(t * t),
            th: zeros(t * dm.d),
            seq: zeros(t * dm.d),
            df_pc: zeros(dm.g * dm.d),
            df_rgb: zeros(dm.g * dm.d),
            vec: std::array::from_fn(|_| zeros(dm.d.max(dm.hyper).max(dm.dx).max(dm.dr))),
        }
    }
}

/// Adds the column sums of `m` (`cols` wide) to `out`, rows in order.
fn add_col_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    for r in m.chunks_exact(cols) {
        out.iter_mut().zip(r).for_each(|(o, v)| *o += v);
    }
}

/// Forward of a linear layer: `out (+)= x·wᵀ + b` (`w` `[n_out, in]`, `x` rows × in,
/// `out` rows × n_out; `epilogue` as [`gemm::linear`]).
fn linear_forward(
    pool: &Pool,
    lin: &Lin<&[f32]>,
    x: Mat<'_>,
    n_out: usize,
    out: &mut [f32],
    epilogue: Epilogue,
) {
    gemm::linear(
        pool,
        x,
        Mat::new(lin.w, n_out, x.cols),
        Some(lin.b),
        out,
        n_out,
        epilogue,
    );
}

/// Backward of a linear layer `y = x·wᵀ + b` (`w` `[out, in]`, `x` rows × in, `dy` rows ×
/// out): adds `dyᵀ·x` to `grad.w` and the column sums of `dy` to `grad.b`, writes
/// `dx = dy·w` (rows × in).
fn linear_backward(
    pool: &Pool,
    w: &[f32],
    grad: &mut Lin<&mut [f32]>,
    x: Mat<'_>,
    dy: Mat<'_>,
    dx: &mut [f32],
) {
    matmul_tn(pool, dy, x, grad.w, true);
    add_col_sums(dy.data, dy.cols, grad.b);
    gemm::matmul_tiled(
        pool,
        dx,
        x.cols,
        dy,
        Mat::new(w, dy.cols, x.cols),
        false,
        1.0,
        false,
    );
}

/// d/dz of the exact GELU: Φ(z) + z φ(z).
pub fn gelu_grad(z: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * z * z).exp()
        * (0.5 * std::f32::consts::FRAC_2_SQRT_PI)
        * std::f32::consts::FRAC_1_SQRT_2;
    cdf + z * pdf
}

/// LayerNorm backward: `dγ += Σ da ⊙ u`, `dβ += Σ da`; with `dx`, `dx (+)= ∂/∂x`
/// (public: the device's `layernorm_backward_f32` is tested bitwise against it).
#[allow(clippy::too_many_arguments)]
pub fn ln_backward(
    da: &[f32],
    u: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    dim: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    for (dar, ur) in da.chunks_exact(dim).zip(u.chunks_exact(dim)) {
        for i in 0..dim {
            dgamma[i] += dar[i] * ur[i];
            dbeta[i] += dar[i];
        }
    }
    let Some(dx) = dx else { return };
    for (((dar, ur), &r), dxr) in da
        .chunks_exact(dim)
        .zip(u.chunks_exact(dim))
        .zip(rstd)
        .zip(dx.chunks_exact_mut(dim))
    {
        let (mut mean_g, mut mean_gu) = (0.0f32, 0.0f32);
        for i in 0..dim {
            let gi = dar[i] * gamma[i];
            mean_g += gi;
            mean_gu += gi * ur[i];
        }
        mean_g /= dim as f32;
        mean_gu /= dim as f32;
        for i in 0..dim {
            dxr[i] += r * (dar[i] * gamma[i] - mean_g - ur[i] * mean_gu);
        }
    }
}

/// Backward of one MLP branch from `dq` (n × e): accumulates the gradients of the
/// branch, its context projection and the scales; writes `dctx` (n × d) into `s.c`.
#[allow(clippy::too_many_arguments)]
fn branch_backward(
    pool: &Pool,
    acts: &BranchActs,
    w: &UffBranch<&[f32]>,
    gw: &mut UffBranch<&mut [f32]>,
    ctx_w: &[f32],
    gctx_w: &mut [f32],
    s1: &[f32],
    s2: &[f32],
    ds1: &mut [f32],
    ds2: &mut [f32],
    n: usize,
    dm: &Dims,
    dq: &[f32],
    s: &mut BackScratch,
) {
    let (dim, hidden, d, e) = (s2.len(), s1.len(), dm.d, dm.e);
    // head and normalisation
    let dp = &mut s.a[..n * e];
    normalize_rows_backward(&acts.q[..n * e], &acts.norms[..n], e, &dq[..n * e], dp);
    let dy = &mut s.b[..n * dim];
    linear_backward(
        pool,
        w.head.w,
        &mut gw.head,
        Mat::new(&acts.y[..n * dim], n, dim),
        Mat::new(dp, n, e),
        dy,
    );
    // y = z2 ⊙ s2
    for (dyr, zr) in dy.chunks_exact_mut(dim).zip(acts.z2.chunks_exact(dim)) {
        for i in 0..dim {
            ds2[i] += dyr[i] * zr[i];
            dyr[i] *= s2[i];
        }
    }
    let dg = &mut s.a[..n * hidden];
    linear_backward(
        pool,
        w.fc2.w,
        &mut gw.fc2,
        Mat::new(&acts.g[..n * hidden], n, hidden),
        Mat::new(dy, n, dim),
        dg,
    );
    // g = GELU(z1 ⊙ s1)
    for (dgr, zr) in dg
        .chunks_exact_mut(hidden)
        .zip(acts.z1.chunks_exact(hidden))
    {
        for i in 0..hidden {
            let pre = dgr[i] * gelu_grad(zr[i] * s1[i]);
            ds1[i] += pre * zr[i];
            dgr[i] = pre * s1[i];
        }
    }
    let du = &mut s.b[..n * dim];
    linear_backward(
        pool,
        w.fc1.w,
        &mut gw.fc1,
        Mat::new(&acts.ux[..n * dim], n, dim),
        Mat::new(dg, n, hidden),
        du,
    );
    ln_backward(
        du,
        &acts.u[..n * dim],
        &acts.rstd[..n],
        w.norm.w,
        dim,
        gw.norm.w,
        gw.norm.b,
        None,
    );
    matmul_tn(
        pool,
        Mat::new(du, n, dim),
        Mat::new(&acts.ctx[..n * d], n, d),
        gctx_w,
        true,
    );
    gemm::matmul_tiled(
        pool,
        &mut s.c[..n * d],
        d,
        Mat::new(du, n, dim),
        Mat::new(ctx_w, dim, d),
        false,
        1.0,
        false,
    );
}

/// Backward of one block: `dout` (T × d) in `s.seq`, leaves `d input` in `s.seq`.
/// (Over `t` tokens. A mask needs nothing here: masked probabilities are 0, so are their
/// gradients.)
fn block_backward(
    pool: &Pool,
    w: &Block<&[f32]>,
    gw: &mut Block<&mut [f32]>,
    t: usize,
    dm: &Dims,
    a: &BlockActs,
    s: &mut BackScratch,
) {
    let (d, h) = (dm.d, dm.heads);
    let hd = d / h;
    // MLP: out = x1 + fc2(GELU(fc1(LN2(x1))))
    let dout = &s.seq[..t * d];
    let dz = &mut s.c[..t * 4 * d];
    linear_backward(
        pool,
        w.fc2.w,
        &mut gw.fc2,
        Mat::new(&a.g, t, 4 * d),
        Mat::new(dout, t, d),
        dz,
    );
    dz.iter_mut()
        .zip(&a.z)
        .for_each(|(g, &z)| *g *= gelu_grad(z));
    let da2 = &mut s.th[..t * d];
    linear_backward(
        pool,
        w.fc1.w,
        &mut gw.fc1,
        Mat::new(&a.a2, t, d),
        Mat::new(dz, t, 4 * d),
        da2,
    );
    // dx1 = dout + LN2'(da2), kept in seq
    ln_backward(
        da2,
        &a.u2,
        &a.rstd2,
        w.norm2.w,
        d,
        gw.norm2.w,
        gw.norm2.b,
        Some(&mut s.seq[..t * d]),
    );
    let dx1 = &s.seq[..t * d];
    // attention: x1 = input + proj(o)
    let d_o = &mut s.th[..t * d];
    linear_backward(
        pool,
        w.proj.w,
        &mut gw.proj,
        Mat::new(&a.o, t, d),
        Mat::new(dx1, t, d),
        d_o,
    );
    let dqkv = &mut s.c[..t * 3 * d];
    let scale = 1.0 / (hd as f32).sqrt();
    let tmp = &mut s.a[..t * hd];
    for head in 0..h {
        let p = &a.p[head * t * t..(head + 1) * t * t];
        let q = cols(&a.qkv, t, 3 * d, head * hd, hd);
        let k = cols(&a.qkv, t, 3 * d, d + head * hd, hd);
        let v = cols(&a.qkv, t, 3 * d, 2 * d + head * hd, hd);
        let do_h = cols(d_o, t, d, head * hd, hd);
        // dv = Pᵀ do
        matmul_tn(pool, Mat::new(p, t, t), do_h, tmp, false);
        scatter_cols(tmp, hd, dqkv, 3 * d, 2 * d + head * hd);
        // dP = do vᵀ ; dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale
        let ds = &mut s.tt[..t * t];
        gemm::matmul_tiled(pool, ds, t, do_h, v, true, 1.0, false);
        for (dr, pr) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            for (x, &pv) in dr.iter_mut().zip(pr) {
                *x = pv * (*x - dot) * scale;
            }
        }
        // dq = dS k ; dk = dSᵀ q
        gemm::matmul_tiled(
            pool,
            &mut dqkv[head * hd..],
            3 * d,
            Mat::new(ds, t, t),
            k,
            false,
            1.0,
            false,
        );
        matmul_tn(pool, Mat::new(ds, t, t), q, tmp, false);
        scatter_cols(tmp, hd, dqkv, 3 * d, d + head * hd);
    }
    let da1 = &mut s.th[..t * d];
    linear_backward(
        pool,
        w.qkv.w,
        &mut gw.qkv,
        Mat::new(&a.a1, t, d),
        Mat::new(dqkv, t, 3 * d),
        da1,
    );
    // d input = dx1 + LN1'(da1)
    ln_backward(
        da1,
        &a.u1,
        &a.rstd1,
        w.norm1.w,
        d,
        gw.norm1.w,
        gw.norm1.b,
        Some(&mut s.seq[..t * d]),
    );
}

/// Writes `src` (`rows × w`) into columns `c0..c0+w` of `dst` (row stride `stride`).
fn scatter_cols(src: &[f32], w: usize, dst: &mut [f32], stride: usize, c0: usize) {
    for (r, row) in src.chunks_exact(w).enumerate() {
        dst[r * stride + c0..r * stride + c0 + w].copy_from_slice(row);
    }
}

/// `gW += dy ⊗ x`, `gb += dy`, returns `dx = Wᵀ dy` into `dx`.
fn matvec_backward(
    w: &Lin<&[f32]>,
    g: &mut Lin<&mut [f32]>,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) {
    let k = x.len();
    dx[..k].fill(0.0);
    for (o, &dyo) in dy.iter().enumerate() {
        g.b[o] += dyo;
        let row = &w.w[o * k..(o + 1) * k];
        let grow = &mut g.w[o * k..(o + 1) * k];
        for i in 0..k {
            grow[i] += dyo * x[i];
            dx[i] += dyo * row[i];
        }
    }
}

/// The whole backward pass of one part, after [`TokenActs::forward`] and the two
/// [`BranchActs::forward`] (with heads) of its `n` rows, where xyz row `i` is cell
/// `cells[i]` and RGB row `i` is `cell(cells[i])`. Accumulates into `gw`.
#[allow(clippy::too_many_arguments)]
pub fn part_backward(
    pool: &Pool,
    w: &RadarWeights<'_>,
    gw: &mut RadarNet<&mut [f32]>,
    tok: &TokenActs,
    xyz: &BranchActs,
    rgb: &BranchActs,
    cells: &[u32],
    dk: &[f32],
    dq: &[f32],
    s: &mut BackScratch,
) {
    let dm = tok.dims;
    assert_eq!(
        tok.blocks.len(),
        dm.depth,
        "the backward pass needs every block's activations (TokenActs::new)"
    );
    let (d, g, l, t) = (dm.d, dm.g, dm.len, dm.tokens());
    let n = cells.len();
    s.df_pc.fill(0.0);
    s.df_rgb.fill(0.0);
    let mut dscale: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::new());
    // (The four scale gradients are small vectors; allocated per part in training only.)
    for (i, v) in dscale.iter_mut().enumerate() {
        *v = zeros(dm.scale_len(i));
    }
    let [ds_pc1, ds_pc2, ds_rgb1, ds_rgb2] = &mut dscale;
    branch_backward(
        pool,
        xyz,
        &w.xyz,
        &mut gw.xyz,
        w.pc_ctx,
        gw.pc_ctx,
        &tok.scale[0],
        &tok.scale[1],
        ds_pc1,
        ds_pc2,
        n,
        &dm,
        dk,
        s,
    );
    scatter_add_contexts(&dm, cells, &s.c, &mut s.df_pc);
    branch_backward(
        pool,
        rgb,
        &w.rgb,
        &mut gw.rgb,
        w.rgb_ctx,
        gw.rgb_ctx,
        &tok.scale[2],
        &tok.scale[3],
        ds_rgb1,
        ds_rgb2,
        n,
        &dm,
        dq,
        s,
    );
    scatter_add_contexts(&dm, cells, &s.c, &mut s.df_rgb);
    // HyperNetwork: ds → out_i → fc1 → enc_i → e_b, spread over the G tokens.
    let [dv, dh, de] = &mut s.vec;
    for (i, ds) in dscale.iter().enumerate() {
        let e = &tok.mean[(i / 2) * d..(i / 2 + 1) * d];
        let hyp = dm.hyper;
        matvec_backward(&w.out[i], &mut gw.out[i], &tok.vv[i], ds, &mut dv[..hyp]);
        matvec_backward(
            &w.hyper_fc1,
            &mut gw.hyper_fc1,
            &tok.hh[i],
            &dv[..hyp],
            &mut dh[..hyp],
        );
        matvec_backward(&w.enc[i], &mut gw.enc[i], e, &dh[..hyp], &mut de[..d]);
        let df = if i < 2 { &mut s.df_pc } else { &mut s.df_rgb };
        let inv = 1.0 / g as f32;
        for row in df.chunks_exact_mut(d) {
            row.iter_mut()
                .zip(&de[..d])
                .for_each(|(a, b)| *a += b * inv);
        }
    }
    // The hybrid block, then the blocks, last to first; instruction rows get no
    // gradient from the output.
    let at = if w.hybrid.is_some() { 0 } else { l };
    s.seq[at * d..(at + g) * d].copy_from_slice(&s.df_pc);
    s.seq[(at + g) * d..(at + 2 * g) * d].copy_from_slice(&s.df_rgb);
    if let (Some(wh), Some(gh), Some(ah)) = (&w.hybrid, gw.hybrid.as_mut(), &tok.hybrid) {
        block_backward(pool, wh, gh, 2 * g, &dm, ah, s);
        s.seq.copy_within(0..2 * g * d, l * d);
    }
    s.seq[..l * d].fill(0.0);
    for j in (0..dm.depth).rev() {
        block_backward(
            pool,
            &w.blocks[j],
            &mut gw.blocks[j],
            t,
            &dm,
            &tok.blocks[j],
            s,
        );
        let n_i = l * d;
        let at = (tok.case * dm.depth + j) * n_i;
        gw.instructions[at..at + n_i]
            .iter_mut()
            .zip(&s.seq[..n_i])
            .for_each(|(a, b)| *a += b);
        s.seq[..n_i].fill(0.0);
    }
    // Tokens: t = proj(LN(x)) + type + pos.
    for (m, (a, u, rstd, dim)) in [
        (&tok.pc_a, &tok.pc_u, &tok.pc_rstd, dm.dx),
        (&tok.rgb_a, &tok.rgb_u, &tok.rgb_rstd, dm.dr),
    ]
    .into_iter()
    .enumerate()
    {
        let dt = &s.seq[(l + m * g) * d..(l + (m + 1) * g) * d];
        for (gp, row) in gw.pos.chunks_exact_mut(d).zip(dt.chunks_exact(d)) {
            gp.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        add_col_sums(dt, d, &mut gw.type_embed[m * d..(m + 1) * d]);
        let (proj, gproj, norm, gnorm) = if m == 0 {
            (&w.pc_proj, &mut gw.pc_proj, &w.pc_norm, &mut gw.pc_norm)
        } else {
            (&w.rgb_proj, &mut gw.rgb_proj, &w.rgb_norm, &mut gw.rgb_norm)
        };
        let da = &mut s.a[..g * dim];
        linear_backward(
            pool,
            proj.w,
            gproj,
            Mat::new(a, g, dim),
            Mat::new(dt, g, d),
            da,
        );
        ln_backward(da, u, rstd, norm.w, dim, gnorm.w, gnorm.b, None);
    }
}

/// Adds each loss row's context gradient (`dctx`, row `i` for xyz cell `cells[i]`) to
/// the token of its RGB cell, rows in order.
fn scatter_add_contexts(dm: &Dims, cells: &[u32], dctx: &[f32], df: &mut [f32]) {
    let d = dm.d;
    for (i, &c) in cells.iter().enumerate() {
        let r = dm.cell(c as usize);
        df[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&dctx[i * d..(i + 1) * d])
            .for_each(|(a, b)| *a += b);
    }
}

/// Fills the first `cells.len()` rows of both branches' inputs for training: xyz row `i`
/// is cell `cells[i]` with context `f̂_pc[cell]`, RGB row `i` its RGB cell.
pub fn gather_rows(
    tok: &TokenActs,
    xyz: &[f32],
    rgb: &[f32],
    cells: &[u32],
    bx: &mut BranchActs,
    br: &mut BranchActs,
) {
    let dm = tok.dims;
    let (d, dx, dr) = (dm.d, dm.dx, dm.dr);
    let (f_pc, f_rgb) = (tok.f_pc(), tok.f_rgb());
    for (i, &j) in cells.iter().enumerate() {
        let j = j as usize;
        let c = dm.cell(j);
        bx.x[i * dx..(i + 1) * dx].copy_from_slice(&xyz[j * dx..(j + 1) * dx]);
        bx.ctx[i * d..(i + 1) * d].copy_from_slice(&f_pc[c * d..(c + 1) * d]);
        br.x[i * dr..(i + 1) * dr].copy_from_slice(&rgb[c * dr..(c + 1) * dr]);
        br.ctx[i * d..(i + 1) * d].copy_from_slice(&f_rgb[c * d..(c + 1) * d]);
    }
}

/// Inspection-time fusion of one part into `out` (`grid_x² × (Dx + Dr)`), no allocation:
/// the planned [`RadarScratch`] holds every buffer.
pub struct RadarScratch {
    pub tokens: TokenActs,
    pub xyz: BranchActs,
    pub rgb: BranchActs,
}

impl RadarScratch {
    pub fn new(dm: Dims) -> Self {
        let rows = CHUNK_ROWS;
        RadarScratch {
            tokens: TokenActs::for_inference(dm),
            xyz: BranchActs::new(rows, dm.dx, dm.hx, dm.d, dm.e),
            rgb: BranchActs::new(rows, dm.dr, dm.hr, dm.d, dm.e),
        }
    }

    /// `fused[j] = y_x(j) ⊕ y_r(cell(j))` for every xyz cell (§9b).
    pub fn fuse(
        &mut self,
        pool: &Pool,
        w: &RadarWeights<'_>,
        xyz: &[f32],
        rgb: &[f32],
        case: Case,
        out: &mut [f32],
    ) {
        let dm = self.tokens.dims;
        let (d, fd) = (dm.d, dm.dx + dm.dr);
        self.tokens.forward(pool, w, xyz, rgb, case);
        let tok = &self.tokens;
        let (f_pc, f_rgb) = (tok.f_pc(), tok.f_rgb());
        let xr = dm.grid_x * dm.grid_x;
        let mut r0 = 0;
        while r0 < xr {
            let n = CHUNK_ROWS.min(xr - r0);
            self.xyz.x[..n * dm.dx].copy_from_slice(&xyz[r0 * dm.dx..(r0 + n) * dm.dx]);
            for i in 0..n {
                let c = dm.cell(r0 + i);
                self.xyz.ctx[i * d..(i + 1) * d].copy_from_slice(&f_pc[c * d..(c + 1) * d]);
            }
            self.xyz.forward(
                pool,
                &w.xyz,
                w.pc_ctx,
                &tok.scale[0],
                &tok.scale[1],
                n,
                &dm,
                false,
            );
            for i in 0..n {
                out[(r0 + i) * fd..(r0 + i) * fd + dm.dx]
                    .copy_from_slice(&self.xyz.y[i * dm.dx..(i + 1) * dm.dx]);
            }
            r0 += n;
        }
        let mut c0 = 0;
        while c0 < dm.g {
            let n = CHUNK_ROWS.min(dm.g - c0);
            self.rgb.x[..n * dm.dr].copy_from_slice(&rgb[c0 * dm.dr..(c0 + n) * dm.dr]);
            self.rgb.ctx[..n * d].copy_from_slice(&f_rgb[c0 * d..(c0 + n) * d]);
            self.rgb.forward(
                pool,
                &w.rgb,
                w.rgb_ctx,
                &tok.scale[2],
                &tok.scale[3],
                n,
                &dm,
                false,
            );
            for j in 0..xr {
                let c = dm.cell(j);
                if (c0..c0 + n).contains(&c) {
                    let src = &self.rgb.y[(c - c0) * dm.dr..(c - c0 + 1) * dm.dr];
                    out[j * fd + dm.dx..(j + 1) * fd].copy_from_slice(src);
                }
            }
            c0 += n;
        }
    }
}
