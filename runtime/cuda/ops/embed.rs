//! The non-GEMM pieces of the ViT and Point-MAE forwards on the device (kernels in
//! `kernels/embed.cu`): RGB resize and normalisation, the patch unfold (im2col) and token
//! assembly of the ViT, the Point-MAE position embedding, LayerNorm with an optional
//! position add and strided output (final norms, concatenated Point-MAE outputs), and
//! grid pooling / strided copies of feature vectors.
//!
//! Every kernel does the CPU backend's arithmetic in the CPU's order (see the kernel file),
//! so the f32 results are the CPU's bits except where the CPU's order belongs to a library
//! (the position MLP's dot products, `erff`): those are within a few ulp.
//!
//! How a forward uses them (GEMM = cuBLASLt `Y[m,n] = X[m,k]·W[n,k]ᵀ (+ bias)`, row-major,
//! weights as in the model file):
//! - ViT: [`EmbedKernels::rgb_input`] (u8 image → normalised CHW) → [`EmbedKernels::im2col`]
//!   (or `_bf16`) → GEMM against `patch_embed.proj.weight` viewed `[dim, C·p·p]`, without
//!   bias, written into `x + dim` (rows `dim` apart) → [`EmbedKernels::vit_tokens`] in place
//!   (class token, position embedding, conv bias) → blocks → [`EmbedKernels::vit_final_norm`]
//!   (class token dropped, token `t` ↔ grid cell (t / grid, t % grid)).
//! - Point-MAE: [`EmbedKernels::pos_embed`] (or [`EmbedKernels::pos_fc1_gelu`] + GEMM
//!   `pos_embed.fc2` with bias) once per part → per block `i`:
//!   [`EmbedKernels::add_pos_layernorm`] (`x += pos`, LN₁ of the sum) → attention half →
//!   LN₂, MLP half → for a selected block, [`EmbedKernels::point_output`] writes the final
//!   norm into its column slot of the `groups × feature_dim` output.
//! - Fusion input: [`EmbedKernels::adaptive_pool`] gives rgb56 (an exact repetition when the
//!   xyz grid is a multiple of the RGB grid); [`EmbedKernels::copy_rows`] with `ld_src = 0`
//!   broadcasts the pseudo-cloud token over the xyz grid.
//!
//! Launch methods take device pointers, allocate nothing, and check their sizes against
//! the [`EmbedPlan`] (an error, never undefined behaviour, for a size the plan does not
//! cover); the pointers themselves are the caller's responsibility (hence `unsafe`).

use half::bf16;

use crate::config::{ModelConfig, PointConfig, PreprocessConfig, VitConfig};
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::kernel::DeviceElem;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::pipeline::preprocess::{padded_side, PreprocessMode};
use crate::{Error, Result};

/// Threads per block of every embed kernel.
const THREADS: u32 = 256;
/// Rows (warps) per block of the LayerNorm kernels.
const LN_ROWS: u32 = THREADS / 32;
/// Centers per block of `pos_embed_f32`.
pub const POS_ROWS: usize = 8;
/// Most taps of one resampling kernel (the CPU's cap).
pub const MAX_TAPS: usize = 64;
/// Largest declared input side (as the extractor).
pub use crate::types::MAX_INPUT_SIDE;
/// Shared memory `pos_embed_f32` may use without opting in.
const POS_SMEM_LIMIT: usize = 48 * 1024;

fn cfg_err(msg: String) -> Error {
    Error::Config(format!("CUDA embed: {msg}"))
}

/// `v` as a kernel `int`, or an error naming it.
fn arg(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| cfg_err(format!("{what} = {v} does not fit a kernel int")))
}

fn blocks(n: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(THREADS as usize))
        .map_err(|_| cfg_err(format!("{n} elements: too many blocks")))
}

/// Taps of PIL's bicubic kernel for `input → out` (support 2, widened when downscaling),
/// capped at [`MAX_TAPS`] as the CPU does.
pub fn resize_taps(input: usize, out: usize) -> usize {
    let scale = (input as f64 / out as f64).max(1.0);
    ((2.0 * 2.0 * scale).ceil() as usize + 3).min(MAX_TAPS)
}

/// Sizes of the RGB input and the ViT embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct VitEmbedPlan {
    /// Network input side S (= the preprocessing image size).
    pub side: usize,
    pub patch: usize,
    pub chans: usize,
    pub dim: usize,
    /// Patches per side.
    pub grid: usize,
    pub patches: usize,
    /// Patches + class token.
    pub tokens: usize,
    /// Columns of the patch matrix: C·p·p.
    pub k: usize,
    pub ln_eps: f32,
    /// Declared maximum input image.
    pub max_width: usize,
    pub max_height: usize,
    /// Largest side of the working image the resize reads (the padded square).
    pub max_work: usize,
    /// Taps of the resampling tables at `max_work`.
    pub max_taps: usize,
    pub pre: PreprocessConfig,
}

/// Sizes of the Point-MAE position embedding and outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct PointEmbedPlan {
    pub groups: usize,
    pub pos_hidden: usize,
    pub dim: usize,
    /// Blocks whose normed outputs are concatenated, in output order.
    pub out_layers: Vec<usize>,
    /// `dim × out_layers.len()`.
    pub feature_dim: usize,
    pub ln_eps: f32,
}

/// What the embed kernels are planned for: either branch may be absent.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedPlan {
    pub vit: Option<VitEmbedPlan>,
    pub point: Option<PointEmbedPlan>,
}

fn check_eps(eps: f32, what: &str) -> Result<()> {
    if eps > 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(cfg_err(format!("{what} LayerNorm eps {eps}")))
    }
}

impl VitEmbedPlan {
    /// Validates `vc` against the preprocessing `pre` for inputs up to
    /// `max_width × max_height`.
    pub fn new(
        vc: &VitConfig,
        pre: &PreprocessConfig,
        max_width: usize,
        max_height: usize,
    ) -> Result<Self> {
        let (side, patch) = (vc.image_size as usize, vc.patch_size as usize);
        let (chans, dim) = (vc.in_chans as usize, vc.dim as usize);
        if side == 0 || patch == 0 || dim == 0 {
            return Err(cfg_err(format!("ViT with a zero size: {vc:?}")));
        }
        if !side.is_multiple_of(patch) {
            return Err(cfg_err(format!(
                "ViT image size {side} is not a multiple of the patch size {patch}"
            )));
        }
        if chans != 3 {
            return Err(cfg_err(format!(
                "ViT with {chans} input channels; the RGB input has 3"
            )));
        }
        if pre.image_size as usize != side {
            return Err(cfg_err(format!(
                "ViT input {side} differs from the preprocessing size {}",
                pre.image_size
            )));
        }
        check_eps(vc.ln_eps, "ViT")?;
        if let Some(s) = pre.rgb_std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
            return Err(cfg_err(format!("RGB normalisation std {s}")));
        }
        if !(1..=MAX_INPUT_SIDE).contains(&max_width) || !(1..=MAX_INPUT_SIDE).contains(&max_height)
        {
            return Err(cfg_err(format!(
                "maximum input size {max_width}×{max_height} is not in 1..={MAX_INPUT_SIDE}"
            )));
        }
        let grid = side / patch;
        let max_work = padded_side(pre, max_width, max_height)
            .max(max_width)
            .max(max_height);
        let plan = VitEmbedPlan {
            side,
            patch,
            chans,
            dim,
            grid,
            patches: grid * grid,
            tokens: grid * grid + 1,
            k: chans * patch * patch,
            ln_eps: vc.ln_eps,
            max_width,
            max_height,
            max_work,
            max_taps: resize_taps(max_work, side),
            pre: pre.clone(),
        };
        for (v, what) in [
            (plan.tokens * dim, "tokens × dim"),
            (plan.patches * plan.k, "patch matrix"),
            (3 * max_work * side, "resize scratch"),
            (max_width * max_height * 3, "input image bytes"),
            (side * plan.max_taps, "resize table"),
        ] {
            arg(v, what)?;
        }
        Ok(plan)
    }

    /// Elements of the network input (`C × S × S`, CHW).
    pub fn input_len(&self) -> usize {
        self.chans * self.side * self.side
    }
    /// Elements of the patch matrix (`patches × C·p·p`).
    pub fn patch_matrix_len(&self) -> usize {
        self.patches * self.k
    }
    /// Elements of the token matrix (`tokens × dim`).
    pub fn tokens_len(&self) -> usize {
        self.tokens * self.dim
    }
    /// Elements of the output features (`patches × dim`).
    pub fn features_len(&self) -> usize {
        self.patches * self.dim
    }
    /// Bytes of the largest packed input image (`max_height × max_width × 3`).
    pub fn image_bytes(&self) -> usize {
        self.max_width * self.max_height * 3
    }
    /// Bytes of the largest zero mask (`max_height × max_width`).
    pub fn zero_mask_bytes(&self) -> usize {
        self.max_width * self.max_height
    }

    /// The resize geometry of one `width × height` image (rows `stride` bytes apart).
    /// Full mode pads to the centred square [`padded_side`]; AlreadyClean resizes the image
    /// as it is (preprocess.rs).
    pub fn rgb_geometry(
        &self,
        width: usize,
        height: usize,
        stride: usize,
        mode: PreprocessMode,
    ) -> Result<RgbGeometry> {
        if width == 0 || height == 0 || width > self.max_width || height > self.max_height {
            return Err(Error::Input(format!(
                "RGB image {width}×{height}: outside the planned 1..={}×1..={}",
                self.max_width, self.max_height
            )));
        }
        if stride < 3 * width {
            return Err(Error::Input(format!(
                "RGB image row stride {stride} is smaller than a row ({})",
                3 * width
            )));
        }
        let (work_w, work_h) = match mode {
            PreprocessMode::Full => {
                let p = padded_side(&self.pre, width, height);
                (p, p)
            }
            PreprocessMode::AlreadyClean => (width, height),
        };
        Ok(RgbGeometry {
            width: arg(width, "width")?,
            height: arg(height, "height")?,
            stride: arg(stride, "stride")?,
            top: arg((work_h - height) / 2, "top")?,
            left: arg((work_w - width) / 2, "left")?,
            work_w: arg(work_w, "working width")?,
            work_h: arg(work_h, "working height")?,
            taps_x: arg(resize_taps(work_w, self.side), "taps")?,
            taps_y: arg(resize_taps(work_h, self.side), "taps")?,
        })
    }
}

impl PointEmbedPlan {
    pub fn new(pc: &PointConfig) -> Result<Self> {
        let (groups, ph, dim) = (
            pc.num_groups as usize,
            pc.pos_hidden as usize,
            pc.dim as usize,
        );
        if groups == 0 || ph == 0 || dim == 0 {
            return Err(cfg_err(format!(
                "point encoder with a zero size: {groups} groups, position hidden {ph}, width {dim}"
            )));
        }
        if POS_ROWS * ph * 4 > POS_SMEM_LIMIT {
            return Err(cfg_err(format!(
                "position embedding hidden width {ph} above {}",
                POS_SMEM_LIMIT / (4 * POS_ROWS)
            )));
        }
        if pc.out_layers.is_empty() {
            return Err(cfg_err("point encoder without output layers".into()));
        }
        for (i, &l) in pc.out_layers.iter().enumerate() {
            if l >= pc.depth {
                return Err(cfg_err(format!(
                    "point encoder out_layers {:?} outside its {} blocks",
                    pc.out_layers, pc.depth
                )));
            }
            if pc.out_layers[..i].contains(&l) {
                return Err(cfg_err(format!(
                    "point encoder out_layers {:?} name block {l} twice",
                    pc.out_layers
                )));
            }
        }
        check_eps(pc.ln_eps, "point encoder")?;
        let plan = PointEmbedPlan {
            groups,
            pos_hidden: ph,
            dim,
            out_layers: pc.out_layers.iter().map(|&l| l as usize).collect(),
            feature_dim: dim * pc.out_layers.len(),
            ln_eps: pc.ln_eps,
        };
        arg(groups * plan.feature_dim.max(ph), "point output")?;
        Ok(plan)
    }

    /// Elements of the position MLP's hidden layer (`groups × pos_hidden`).
    pub fn pos_hidden_len(&self) -> usize {
        self.groups * self.pos_hidden
    }
    /// Elements of the position embedding / token matrix (`groups × dim`).
    pub fn tokens_len(&self) -> usize {
        self.groups * self.dim
    }
    /// Elements of the concatenated output (`groups × feature_dim`).
    pub fn output_len(&self) -> usize {
        self.groups * self.feature_dim
    }
    /// Output slot (column block) of block `layer`, if its output is kept.
    pub fn slot_of(&self, layer: usize) -> Option<usize> {
        self.out_layers.iter().position(|&l| l == layer)
    }
    /// Dynamic shared memory of `pos_embed_f32`, bytes.
    pub fn pos_embed_smem(&self) -> u32 {
        (POS_ROWS * self.pos_hidden * 4) as u32
    }
}

impl EmbedPlan {
    /// Plans the branches that are given.
    pub fn new(
        vit: Option<&VitConfig>,
        point: Option<&PointConfig>,
        pre: &PreprocessConfig,
        max_width: usize,
        max_height: usize,
    ) -> Result<Self> {
        if vit.is_none() && point.is_none() {
            return Err(cfg_err(
                "neither a ViT nor a point encoder to plan for".into(),
            ));
        }
        Ok(EmbedPlan {
            vit: vit
                .map(|v| VitEmbedPlan::new(v, pre, max_width, max_height))
                .transpose()?,
            point: point.map(PointEmbedPlan::new).transpose()?,
        })
    }
    /// The plan of a model file's networks.
    pub fn for_model(model: &ModelConfig, max_width: usize, max_height: usize) -> Result<Self> {
        Self::new(
            model.vit.as_ref(),
            model.point.as_ref(),
            &model.preprocess,
            max_width,
            max_height,
        )
    }
    pub fn vit(&self) -> Result<&VitEmbedPlan> {
        self.vit
            .as_ref()
            .ok_or_else(|| cfg_err("this plan has no ViT".into()))
    }
    pub fn point(&self) -> Result<&PointEmbedPlan> {
        self.point
            .as_ref()
            .ok_or_else(|| cfg_err("this plan has no point encoder".into()))
    }
}

/// Where one image sits in its working square, and the taps of both resampling tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RgbGeometry {
    pub width: i32,
    pub height: i32,
    /// Bytes between image rows.
    pub stride: i32,
    /// Offset of the image in the working square (Full mode padding).
    pub top: i32,
    pub left: i32,
    pub work_w: i32,
    pub work_h: i32,
    pub taps_x: i32,
    pub taps_y: i32,
}

/// Arena slots of the resize's scratch (per-part coefficient tables and the horizontal
/// pass), sized for the plan's largest input.
#[derive(Clone, Copy, Debug)]
pub struct ResizeSlots {
    pub first_x: Slot<i32>,
    pub w_x: Slot<f32>,
    pub first_y: Slot<i32>,
    pub w_y: Slot<f32>,
    pub tmp: Slot<f32>,
}

/// Device pointers of [`ResizeSlots`].
#[derive(Clone, Copy, Debug)]
pub struct ResizeBuffers {
    pub first_x: DevPtr<i32>,
    pub w_x: DevPtr<f32>,
    pub first_y: DevPtr<i32>,
    pub w_y: DevPtr<f32>,
    pub tmp: DevPtr<f32>,
}

impl ResizeSlots {
    pub fn plan(vp: &VitEmbedPlan, arena: &mut ArenaPlan) -> Self {
        let table = vp.side * vp.max_taps;
        ResizeSlots {
            first_x: arena.add(vp.side),
            w_x: arena.add(table),
            first_y: arena.add(vp.side),
            w_y: arena.add(table),
            tmp: arena.add(3 * vp.max_work * vp.side),
        }
    }
    pub fn ptrs(&self, arena: &Arena) -> ResizeBuffers {
        ResizeBuffers {
            first_x: arena.ptr(self.first_x),
            w_x: arena.ptr(self.w_x),
            first_y: arena.ptr(self.first_y),
            w_y: arena.ptr(self.w_y),
            tmp: arena.ptr(self.tmp),
        }
    }
}

/// Checks a strided `rows × cols` operand (`ld ≥ cols`, everything a kernel int).
fn check_matrix(rows: usize, cols: usize, ld: usize, what: &str) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(cfg_err(format!("{what}: empty {rows}×{cols}")));
    }
    if ld < cols {
        return Err(cfg_err(format!(
            "{what}: leading dimension {ld} below the width {cols}"
        )));
    }
    arg(rows, what)?;
    arg(ld, what)?;
    arg(rows * cols, what)?;
    Ok(())
}

/// The embed kernels of one engine, looked up once.
pub struct EmbedKernels {
    _module: Module,
    pil_coeffs: Kernel,
    resize_h: Kernel,
    resize_v: Kernel,
    im2col_f32: Kernel,
    im2col_bf16: Kernel,
    vit_tokens: Kernel,
    pos_fc1_f32: Kernel,
    pos_fc1_bf16: Kernel,
    pos_embed: Kernel,
    ln_f32: Kernel,
    ln_bf16: Kernel,
    pool: Kernel,
    copy: Kernel,
    pub plan: EmbedPlan,
}

impl EmbedKernels {
    /// Loads `kernels/embed.cu` and looks every kernel up.
    pub fn new(dev: &Device, plan: EmbedPlan) -> Result<EmbedKernels> {
        let m = Module::load(dev, "embed")?;
        Ok(EmbedKernels {
            pil_coeffs: Kernel::find(&m, "pil_coeffs_f32")?,
            resize_h: Kernel::find(&m, "rgb_resize_h_f32")?,
            resize_v: Kernel::find(&m, "rgb_resize_v_f32")?,
            im2col_f32: Kernel::find(&m, "im2col_f32")?,
            im2col_bf16: Kernel::find(&m, "im2col_bf16")?,
            vit_tokens: Kernel::find(&m, "vit_tokens_f32")?,
            pos_fc1_f32: Kernel::find(&m, "pos_fc1_gelu_f32")?,
            pos_fc1_bf16: Kernel::find(&m, "pos_fc1_gelu_bf16")?,
            pos_embed: Kernel::find(&m, "pos_embed_f32")?,
            ln_f32: Kernel::find(&m, "layernorm_rows_f32")?,
            ln_bf16: Kernel::find(&m, "layernorm_rows_bf16")?,
            pool: Kernel::find(&m, "adaptive_pool_f32")?,
            copy: Kernel::find(&m, "copy_rows_f32")?,
            _module: m,
            plan,
        })
    }

    /// The kernels without a backbone's embedding plan: LayerNorm, pooling and row copies
    /// for the stages after the backbones (fusion, training).
    pub fn without_backbones(dev: &Device) -> Result<EmbedKernels> {
        Self::new(
            dev,
            EmbedPlan {
                vit: None,
                point: None,
            },
        )
    }

    /// The network input of one part: `out` (`3 × S × S`, CHW) ← normalise(resize(pad(image)))
    /// exactly as `pipeline::preprocess` computes `rgb_input`: three launches (resampling
    /// tables for this geometry, horizontal pass, vertical pass + normalisation).
    /// `image`: `height` rows of `3 × width` bytes, `stride` apart; `zero_mask` (null, or
    /// `height × width` bytes): pixels to read as 0 (removed with their point by cleaning).
    ///
    /// # Safety
    /// `image` and `zero_mask` valid for `geo`; `buf` from [`ResizeSlots`] of this plan;
    /// `out` valid for [`VitEmbedPlan::input_len`] floats.
    pub unsafe fn rgb_input(
        &self,
        dev: &Device,
        geo: &RgbGeometry,
        image: DevPtr<u8>,
        zero_mask: DevPtr<u8>,
        buf: &ResizeBuffers,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let vp = self.plan.vit()?;
        let s = vp.side as i32;
        let wmax = vp.max_work as i32;
        if geo.work_w > wmax
            || geo.work_h > wmax
            || geo.taps_x as usize > vp.max_taps
            || geo.taps_y as usize > vp.max_taps
            || geo.width > geo.work_w
            || geo.height > geo.work_h
            || geo.taps_x <= 0
            || geo.taps_y <= 0
        {
            return Err(cfg_err(format!(
                "resize geometry {geo:?} outside the plan (working side ≤ {wmax}, taps ≤ {})",
                vp.max_taps
            )));
        }
        let mut a = kernel_args![
            geo.work_w,
            geo.taps_x,
            buf.first_x,
            buf.w_x,
            geo.work_h,
            geo.taps_y,
            buf.first_y,
            buf.w_y,
            s,
        ];
        dev.launch(
            self.pil_coeffs,
            (blocks(vp.side)?, 2, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )?;
        let mut a = kernel_args![
            image,
            geo.height,
            geo.width,
            geo.stride,
            zero_mask,
            geo.top,
            geo.left,
            geo.work_w,
            geo.work_h,
            s,
            geo.taps_x,
            buf.first_x,
            buf.w_x,
            buf.tmp,
        ];
        let n = geo.work_h as usize * vp.side;
        dev.launch(
            self.resize_h,
            (blocks(n)?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )?;
        let [m0, m1, m2] = vp.pre.rgb_mean;
        let [s0, s1, s2] = vp.pre.rgb_std;
        let mut a = kernel_args![
            buf.tmp,
            geo.work_h,
            s,
            geo.taps_y,
            buf.first_y,
            buf.w_y,
            m0,
            m1,
            m2,
            s0,
            s1,
            s2,
            out,
        ];
        dev.launch(
            self.resize_v,
            (blocks(vp.side * vp.side)?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    unsafe fn im2col_any<T: DeviceElem>(
        &self,
        dev: &Device,
        f: Kernel,
        img: DevPtr<f32>,
        out: DevPtr<T>,
    ) -> Result<()> {
        let vp = self.plan.vit()?;
        let (c, s, p) = (vp.chans as i32, vp.side as i32, vp.patch as i32);
        let mut a = kernel_args![img, c, s, p, out];
        dev.launch(
            f,
            (blocks(vp.patch_matrix_len())?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// Patch matrix `out` (`patches × C·p·p`) of the CHW input `img`: row gy·grid + gx is
    /// patch (gy, gx), columns in the conv weight's `[C, p, p]` order, so the patch
    /// embedding is one GEMM against `patch_embed.proj.weight` viewed `[dim, C·p·p]`.
    ///
    /// # Safety
    /// `img` valid for [`VitEmbedPlan::input_len`], `out` for
    /// [`VitEmbedPlan::patch_matrix_len`] elements.
    pub unsafe fn im2col(&self, dev: &Device, img: DevPtr<f32>, out: DevPtr<f32>) -> Result<()> {
        self.im2col_any(dev, self.im2col_f32, img, out)
    }

    /// [`EmbedKernels::im2col`] with bf16 output (round to nearest even).
    ///
    /// # Safety
    /// As [`EmbedKernels::im2col`].
    pub unsafe fn im2col_bf16(
        &self,
        dev: &Device,
        img: DevPtr<f32>,
        out: DevPtr<bf16>,
    ) -> Result<()> {
        self.im2col_any(dev, self.im2col_bf16, img, out)
    }

    /// Token matrix `x` (`tokens × dim`): `x[0] = cls + pos[0]`,
    /// `x[t] = (pos[t] + g[t − 1]) + bias` with `g` the patch GEMM's output (no bias),
    /// rows `ldg` apart. `g` may be `x.offset(dim)` with `ldg = dim` (in place). `bias` may
    /// be null (when the GEMM added it; the CPU's order is then not kept).
    ///
    /// # Safety
    /// `g` valid for `patches` rows of `ldg`; `bias`, `cls` for `dim`; `pos` and `x` for
    /// [`VitEmbedPlan::tokens_len`] floats.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn vit_tokens(
        &self,
        dev: &Device,
        g: DevPtr<f32>,
        ldg: usize,
        bias: DevPtr<f32>,
        pos: DevPtr<f32>,
        cls: DevPtr<f32>,
        x: DevPtr<f32>,
    ) -> Result<()> {
        let vp = self.plan.vit()?;
        check_matrix(vp.patches, vp.dim, ldg, "patch GEMM output")?;
        let (ldg, p, d) = (ldg as i32, vp.patches as i32, vp.dim as i32);
        let mut a = kernel_args![g, ldg, bias, pos, cls, x, p, d,];
        dev.launch(
            self.vit_tokens,
            (blocks(vp.tokens_len())?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// Final LayerNorm of the patch tokens (rows 1.. of `x`, the class token dropped) into
    /// `out` (`patches` rows, `ld_out` apart; `ld_out = dim` for the packed 28×28 grid).
    ///
    /// # Safety
    /// `x` valid for [`VitEmbedPlan::tokens_len`] floats, `norm` (γ, β) for `dim`, `out`
    /// for `patches` rows of `ld_out`.
    pub unsafe fn vit_final_norm(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
        out: DevPtr<f32>,
        ld_out: usize,
    ) -> Result<()> {
        let vp = self.plan.vit()?;
        let d = vp.dim;
        self.layernorm(
            dev,
            (vp.patches, d),
            x.offset(d),
            d,
            DevPtr::null(),
            norm,
            vp.ln_eps,
            out,
            ld_out,
        )
    }

    unsafe fn pos_fc1_any<T: DeviceElem>(
        &self,
        dev: &Device,
        f: Kernel,
        centers: DevPtr<f32>,
        (w1, b1): (DevPtr<f32>, DevPtr<f32>),
        h: DevPtr<T>,
    ) -> Result<()> {
        let pp = self.plan.point()?;
        let (m, ph) = (pp.groups as i32, pp.pos_hidden as i32);
        let mut a = kernel_args![centers, m, w1, b1, ph, h,];
        dev.launch(
            f,
            (blocks(pp.pos_hidden_len())?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// First layer of the position MLP: `h` (`groups × pos_hidden`) =
    /// GELU(centers·W1ᵀ + b1), `W1 = pos_embed.fc1.weight` `[pos_hidden, 3]`. The second
    /// layer is then a GEMM with bias (`pos_embed.fc2`).
    ///
    /// # Safety
    /// `centers` valid for `groups × 3`, `w1` for `pos_hidden × 3`, `b1` for `pos_hidden`,
    /// `h` for [`PointEmbedPlan::pos_hidden_len`] floats.
    pub unsafe fn pos_fc1_gelu(
        &self,
        dev: &Device,
        centers: DevPtr<f32>,
        fc1: (DevPtr<f32>, DevPtr<f32>),
        h: DevPtr<f32>,
    ) -> Result<()> {
        self.pos_fc1_any(dev, self.pos_fc1_f32, centers, fc1, h)
    }

    /// [`EmbedKernels::pos_fc1_gelu`] with bf16 output.
    ///
    /// # Safety
    /// As [`EmbedKernels::pos_fc1_gelu`].
    pub unsafe fn pos_fc1_gelu_bf16(
        &self,
        dev: &Device,
        centers: DevPtr<f32>,
        fc1: (DevPtr<f32>, DevPtr<f32>),
        h: DevPtr<bf16>,
    ) -> Result<()> {
        self.pos_fc1_any(dev, self.pos_fc1_bf16, centers, fc1, h)
    }

    /// The whole position MLP in one launch: `pos` (`groups × dim`) =
    /// GELU(centers·W1ᵀ + b1)·W2ᵀ + b2 (f32, dot products as fma chains in k order).
    ///
    /// # Safety
    /// `centers` valid for `groups × 3`; weights as in the model file
    /// (`[pos_hidden, 3]`, `[pos_hidden]`, `[dim, pos_hidden]`, `[dim]`); `pos` for
    /// [`PointEmbedPlan::tokens_len`] floats.
    pub unsafe fn pos_embed(
        &self,
        dev: &Device,
        centers: DevPtr<f32>,
        (w1, b1): (DevPtr<f32>, DevPtr<f32>),
        (w2, b2): (DevPtr<f32>, DevPtr<f32>),
        pos: DevPtr<f32>,
    ) -> Result<()> {
        let pp = self.plan.point()?;
        let (m, ph, d) = (pp.groups as i32, pp.pos_hidden as i32, pp.dim as i32);
        let mut a = kernel_args![centers, m, w1, b1, ph, w2, b2, d, pos,];
        let grid = pp.groups.div_ceil(POS_ROWS) as u32;
        dev.launch(
            self.pos_embed,
            (grid, 1, 1),
            (THREADS, 1, 1),
            pp.pos_embed_smem(),
            &mut a,
        )
    }

    /// Point-MAE block input: `x += pos` (stored back, the residual stream), then
    /// `y = LN(x)` with the given norm (the block's `norm1`), f32.
    ///
    /// # Safety
    /// `x`, `pos`, `y` valid for [`PointEmbedPlan::tokens_len`] floats (`y` not aliasing
    /// `x`); `gamma`/`beta` for `dim`.
    pub unsafe fn add_pos_layernorm(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        pos: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
        y: DevPtr<f32>,
    ) -> Result<()> {
        let pp = self.plan.point()?;
        let (m, d) = (pp.groups, pp.dim);
        self.layernorm(dev, (m, d), x, d, pos, norm, pp.ln_eps, y, d)
    }

    /// [`EmbedKernels::add_pos_layernorm`] with bf16 `y` (for a bf16 qkv GEMM).
    ///
    /// # Safety
    /// As [`EmbedKernels::add_pos_layernorm`].
    pub unsafe fn add_pos_layernorm_bf16(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        pos: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
        y: DevPtr<bf16>,
    ) -> Result<()> {
        let pp = self.plan.point()?;
        let (m, d) = (pp.groups, pp.dim);
        self.layernorm_bf16(dev, (m, d), x, d, pos, norm, pp.ln_eps, y, d)
    }

    /// Final norm of a selected block's output `x` (`groups × dim`) into column slot
    /// `slot` of `out` (`groups × feature_dim`): `out[g][slot·dim ..][..dim] = LN(x[g])`.
    /// Other columns are not touched.
    ///
    /// # Safety
    /// `x` valid for [`PointEmbedPlan::tokens_len`], `out` for
    /// [`PointEmbedPlan::output_len`] floats; `gamma`/`beta` for `dim`.
    pub unsafe fn point_output(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        slot: usize,
        norm: (DevPtr<f32>, DevPtr<f32>),
        out: DevPtr<f32>,
    ) -> Result<()> {
        let pp = self.plan.point()?;
        if slot >= pp.out_layers.len() {
            return Err(cfg_err(format!(
                "output slot {slot} of {} outputs",
                pp.out_layers.len()
            )));
        }
        let d = pp.dim;
        self.layernorm(
            dev,
            (pp.groups, d),
            x,
            d,
            DevPtr::null(),
            norm,
            pp.ln_eps,
            out.offset(slot * d),
            pp.feature_dim,
        )
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn layernorm_any<T: DeviceElem>(
        &self,
        dev: &Device,
        f: Kernel,
        (rows, cols): (usize, usize),
        x: DevPtr<f32>,
        ldx: usize,
        pos: DevPtr<f32>,
        (gamma, beta): (DevPtr<f32>, DevPtr<f32>),
        eps: f32,
        y: DevPtr<T>,
        ldy: usize,
    ) -> Result<()> {
        check_matrix(rows, cols, ldx, "LayerNorm input")?;
        check_matrix(rows, cols, ldy, "LayerNorm output")?;
        check_eps(eps, "requested")?;
        let (ldx, ldy, r, c) = (ldx as i32, ldy as i32, rows as i32, cols as i32);
        let mut a = kernel_args![x, ldx, pos, gamma, beta, y, ldy, r, c, eps,];
        let grid = rows.div_ceil(LN_ROWS as usize) as u32;
        dev.launch(f, (grid, 1, 1), (THREADS, 1, 1), 0, &mut a)
    }

    /// Row-wise LayerNorm as `cpu::transformer::layer_norm_row` (f64 statistics):
    /// `y[r] = LN(x[r])` for `rows × cols`, rows `ldx` / `ldy` apart. With a non-null
    /// `pos` (`rows × cols`, packed) `x[r] += pos[r]` is stored first and normed.
    ///
    /// # Safety
    /// Pointers valid for those extents; `y` must not overlap `x` when `pos` is given.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn layernorm(
        &self,
        dev: &Device,
        shape: (usize, usize),
        x: DevPtr<f32>,
        ldx: usize,
        pos: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
        eps: f32,
        y: DevPtr<f32>,
        ldy: usize,
    ) -> Result<()> {
        self.layernorm_any(dev, self.ln_f32, shape, x, ldx, pos, norm, eps, y, ldy)
    }

    /// [`EmbedKernels::layernorm`] with bf16 output.
    ///
    /// # Safety
    /// As [`EmbedKernels::layernorm`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn layernorm_bf16(
        &self,
        dev: &Device,
        shape: (usize, usize),
        x: DevPtr<f32>,
        ldx: usize,
        pos: DevPtr<f32>,
        norm: (DevPtr<f32>, DevPtr<f32>),
        eps: f32,
        y: DevPtr<bf16>,
        ldy: usize,
    ) -> Result<()> {
        self.layernorm_any(dev, self.ln_bf16, shape, x, ldx, pos, norm, eps, y, ldy)
    }

    /// Adaptive average pooling (`cpu::fusion::adaptive_avg_pool`) of a `gi × gi` grid of
    /// `d`-vectors (cells `ld_src` apart) to `go × go` (cells `ld_dst` apart; e.g. the rgb
    /// half of the fused rows: `dst = fused.offset(xyz_dim)`, `ld_dst = fused_dim`).
    ///
    /// # Safety
    /// `src` valid for `gi²` cells of `ld_src`, `dst` for `go²` cells of `ld_dst`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn adaptive_pool(
        &self,
        dev: &Device,
        src: DevPtr<f32>,
        gi: usize,
        ld_src: usize,
        go: usize,
        d: usize,
        dst: DevPtr<f32>,
        ld_dst: usize,
    ) -> Result<()> {
        check_matrix(gi * gi, d, ld_src, "pooling input")?;
        check_matrix(go * go, d, ld_dst, "pooling output")?;
        arg((go + 1) * gi.max(go), "pooling grid")?;
        let (gi, ls, go, di, ld) = (gi as i32, ld_src as i32, go as i32, d as i32, ld_dst as i32);
        let mut a = kernel_args![src, gi, ls, go, di, dst, ld,];
        let n = (go * go) as usize * d;
        dev.launch(self.pool, (blocks(n)?, 1, 1), (THREADS, 1, 1), 0, &mut a)
    }

    /// `dst[r][..cols] = src[r][..cols]`, rows `ld_src` / `ld_dst` apart; `ld_src = 0`
    /// repeats `src`'s first row (the pseudo-cloud token over the xyz grid).
    ///
    /// # Safety
    /// `src` valid for its rows (one row when `ld_src = 0`), `dst` for `rows` rows of
    /// `ld_dst`; no overlap.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn copy_rows(
        &self,
        dev: &Device,
        src: DevPtr<f32>,
        ld_src: usize,
        dst: DevPtr<f32>,
        ld_dst: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if ld_src != 0 {
            check_matrix(rows, cols, ld_src, "copy source")?;
        }
        check_matrix(rows, cols, ld_dst, "copy destination")?;
        let (ls, ld, r, c) = (ld_src as i32, ld_dst as i32, rows as i32, cols as i32);
        let mut a = kernel_args![src, ls, dst, ld, r, c,];
        dev.launch(
            self.copy,
            (blocks(rows * cols)?, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m3dm_plan() -> EmbedPlan {
        EmbedPlan::for_model(&ModelConfig::m3dm(), 800, 800).unwrap()
    }

    #[test]
    fn m3dm_sizes_come_from_the_config() {
        let p = m3dm_plan();
        let v = p.vit().unwrap();
        assert_eq!(
            (v.side, v.grid, v.patches, v.tokens, v.k),
            (224, 28, 784, 785, 192)
        );
        assert_eq!(v.patch_matrix_len(), 784 * 192);
        assert_eq!(v.tokens_len(), 785 * 768);
        assert_eq!(v.features_len(), 784 * 768);
        assert_eq!(v.input_len(), 3 * 224 * 224);
        assert_eq!(v.max_work, 800);
        // 800 → 224: scale 3.57, support 7.14 → ⌈14.29⌉ + 3 taps.
        assert_eq!(v.max_taps, 18);
        let pt = p.point().unwrap();
        assert_eq!(pt.feature_dim, 1152);
        assert_eq!(pt.out_layers, vec![3, 7, 11]);
        assert_eq!(pt.slot_of(7), Some(1));
        assert_eq!(pt.slot_of(8), None);
        assert_eq!(pt.output_len(), 1024 * 1152);
        assert_eq!(pt.pos_hidden_len(), 1024 * 128);
        assert_eq!(pt.pos_embed_smem(), 8 * 128 * 4);
    }

    #[test]
    fn demo_and_small_presets_plan() {
        let p = EmbedPlan::for_model(&ModelConfig::demo(), 400, 300).unwrap();
        let v = p.vit().unwrap();
        assert_eq!((v.side, v.grid, v.dim), (112, 14, 192));
        assert_eq!(v.max_work, 400);
        assert_eq!(p.point().unwrap().feature_dim, 384);
        let p = EmbedPlan::for_model(&ModelConfig::small(), 64, 64).unwrap();
        assert_eq!(p.vit().unwrap().max_work, 100);
        assert_eq!(p.vit().unwrap().max_taps, 10);
    }

    #[test]
    fn branches_are_optional_but_not_both() {
        let m = ModelConfig::m3dm();
        let p = EmbedPlan::new(None, m.point.as_ref(), &m.preprocess, 1, 1).unwrap();
        assert!(p.vit().is_err() && p.point().is_ok());
        let p = EmbedPlan::new(m.vit.as_ref(), None, &m.preprocess, 10, 10).unwrap();
        assert!(p.vit().is_ok() && p.point().is_err());
        assert!(EmbedPlan::new(None, None, &m.preprocess, 10, 10).is_err());
    }

    fn vit_err(f: impl FnOnce(&mut VitConfig, &mut PreprocessConfig)) -> String {
        let (mut vc, mut pre) = (VitConfig::base8(), PreprocessConfig::default());
        f(&mut vc, &mut pre);
        VitEmbedPlan::new(&vc, &pre, 800, 800)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_vit_configs_are_named() {
        assert!(vit_err(|v, _| v.patch_size = 0).contains("zero size"));
        assert!(vit_err(|v, _| v.patch_size = 9).contains("not a multiple"));
        assert!(vit_err(|v, _| v.in_chans = 1).contains("channels"));
        assert!(vit_err(|_, p| p.image_size = 112).contains("preprocessing size"));
        assert!(vit_err(|v, _| v.ln_eps = 0.0).contains("eps"));
        assert!(vit_err(|_, p| p.rgb_std[1] = 0.0).contains("std"));
        let pre = PreprocessConfig::default();
        for (w, h) in [(0, 10), (10, 0), (MAX_INPUT_SIDE + 1, 10)] {
            let e = VitEmbedPlan::new(&VitConfig::base8(), &pre, w, h).unwrap_err();
            assert!(e.to_string().contains("maximum input size"), "{e}");
        }
    }

    fn point_err(f: impl FnOnce(&mut PointConfig)) -> String {
        let mut pc = PointConfig::m3dm();
        f(&mut pc);
        PointEmbedPlan::new(&pc).unwrap_err().to_string()
    }

    #[test]
    fn bad_point_configs_are_named() {
        assert!(point_err(|p| p.num_groups = 0).contains("zero size"));
        assert!(point_err(|p| p.pos_hidden = 0).contains("zero size"));
        assert!(point_err(|p| p.pos_hidden = 4096).contains("hidden width"));
        assert!(point_err(|p| p.out_layers.clear()).contains("without output"));
        assert!(point_err(|p| p.out_layers = vec![3, 12]).contains("outside"));
        assert!(point_err(|p| p.out_layers = vec![3, 3]).contains("twice"));
        assert!(point_err(|p| p.ln_eps = f32::NAN).contains("eps"));
    }

    #[test]
    fn geometry_pads_in_full_mode_only() {
        let p = m3dm_plan();
        let v = p.vit().unwrap();
        let g = v
            .rgb_geometry(640, 480, 640 * 3, PreprocessMode::Full)
            .unwrap();
        assert_eq!((g.work_w, g.work_h, g.top, g.left), (700, 700, 110, 30));
        assert_eq!((g.taps_x, g.taps_y), (16, 16));
        let g = v
            .rgb_geometry(640, 480, 2000, PreprocessMode::AlreadyClean)
            .unwrap();
        assert_eq!((g.work_w, g.work_h, g.top, g.left), (640, 480, 0, 0));
        assert_eq!((g.taps_x, g.taps_y, g.stride), (15, 12, 2000));
        assert!(v
            .rgb_geometry(801, 10, 3 * 801, PreprocessMode::Full)
            .is_err());
        assert!(v.rgb_geometry(10, 10, 29, PreprocessMode::Full).is_err());
        assert!(v.rgb_geometry(0, 10, 30, PreprocessMode::Full).is_err());
    }

    #[test]
    fn taps_follow_pil_support() {
        assert_eq!(resize_taps(224, 224), 7);
        assert_eq!(resize_taps(100, 224), 7);
        assert_eq!(resize_taps(448, 224), 11);
        assert_eq!(resize_taps(100_000, 224), MAX_TAPS);
    }

    #[test]
    fn resize_slots_cover_the_largest_input() {
        let p = m3dm_plan();
        let v = p.vit().unwrap();
        let mut a = ArenaPlan::new();
        let s = ResizeSlots::plan(v, &mut a);
        assert_eq!(s.first_x.len, 224);
        assert_eq!(s.w_y.len, 224 * 18);
        assert_eq!(s.tmp.len, 3 * 800 * 224);
        assert!(a.bytes() >= s.tmp.offset + s.tmp.bytes());
    }

    #[test]
    fn strided_operands_are_checked() {
        assert!(check_matrix(4, 8, 8, "x").is_ok());
        assert!(check_matrix(4, 8, 7, "x").is_err());
        assert!(check_matrix(0, 8, 8, "x").is_err());
        assert!(check_matrix(1 << 31, 8, 8, "x").is_err());
    }
}
