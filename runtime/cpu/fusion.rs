//! Fusion (SPEC §5): the M3DM unsupervised feature fusion applied to the patch grids.
//!
//! `fused[j] = concat(MLP_xyz(LN_xyz(xyz[j])), MLP_rgb(LN_rgb(rgb56[j])))` for every cell
//! `j` of the xyz grid, where `rgb56` is the RGB grid adaptively average-pooled to the xyz
//! grid. When the xyz grid is a multiple of the RGB grid (the model configuration checks
//! this) every xyz cell's pooling bin is exactly one RGB cell, so the RGB half is computed
//! once per RGB cell and copied to the `(xyz_grid/rgb_grid)²` cells that repeat it: the
//! same numbers as pooling first, four times less work at M3DM sizes.
//!
//! The xyz patches that no point reaches are all zero, and all give the same xyz half (83 %
//! of a synthetic part's grid): it is computed once and copied.
//!
//! Rows are processed in chunks of up to [`CHUNK_ROWS`] so the scratch stays small
//! (`chunk × 5d` floats per branch) whatever the grid; the dense layers go through
//! [`gemm::linear`] (GELU fused into the first layer's epilogue). No allocation.

use super::dense::{dense, DensePrecision, PackedWeight};
use super::gemm::{Epilogue, Mat};
use super::pool::Pool;
use crate::config::FusionConfig;
use crate::format::{FormatError, TensorSource};

/// Rows per chunk of the MLPs.
pub const CHUNK_ROWS: usize = 512;

/// One branch of the fusion module: LayerNorm, then Linear(d→rd), GELU, Linear(rd→d).
#[derive(Clone, Copy, Debug)]
pub struct BranchWeights<'a> {
    pub dim: usize,
    pub hidden: usize,
    pub norm_w: &'a [f32],
    pub norm_b: &'a [f32],
    pub fc1_w: &'a [f32],
    pub fc1_b: &'a [f32],
    pub fc2_w: &'a [f32],
    pub fc2_b: &'a [f32],
}

impl<'a> BranchWeights<'a> {
    fn load<S: TensorSource + ?Sized>(
        src: &'a S,
        prefix: &str,
        dim: usize,
        hidden: usize,
    ) -> Result<Self, FormatError> {
        Ok(BranchWeights {
            dim,
            hidden,
            norm_w: src.f32(&format!("fusion.{prefix}_norm.weight"), &[dim])?,
            norm_b: src.f32(&format!("fusion.{prefix}_norm.bias"), &[dim])?,
            fc1_w: src.f32(&format!("fusion.{prefix}_mlp.fc1.weight"), &[hidden, dim])?,
            fc1_b: src.f32(&format!("fusion.{prefix}_mlp.fc1.bias"), &[hidden])?,
            fc2_w: src.f32(&format!("fusion.{prefix}_mlp.fc2.weight"), &[dim, hidden])?,
            fc2_b: src.f32(&format!("fusion.{prefix}_mlp.fc2.bias"), &[dim])?,
        })
    }
}

/// The weights of the fusion module, borrowed from a model file or any tensor store.
#[derive(Clone, Copy, Debug)]
pub struct FusionWeights<'a> {
    pub xyz: BranchWeights<'a>,
    pub rgb: BranchWeights<'a>,
    pub ln_eps: f32,
}

impl<'a> FusionWeights<'a> {
    /// Looks up `fusion.{xyz,rgb}_norm.*` and `fusion.{xyz,rgb}_mlp.fc{1,2}.*`.
    pub fn load<S: TensorSource + ?Sized>(
        src: &'a S,
        cfg: &FusionConfig,
    ) -> Result<Self, FormatError> {
        let (x, r, m) = (
            cfg.xyz_dim as usize,
            cfg.rgb_dim as usize,
            cfg.mlp_ratio as usize,
        );
        Ok(FusionWeights {
            xyz: BranchWeights::load(src, "xyz", x, m * x)?,
            rgb: BranchWeights::load(src, "rgb", r, m * r)?,
            ln_eps: cfg.ln_eps,
        })
    }
}

/// One branch's two dense weights packed once ([`PackedWeight`], f32 or bf16).
pub struct BranchPacked {
    pub fc1: PackedWeight,
    pub fc2: PackedWeight,
}

/// Both branches packed once, for [`fuse_with`].
pub struct FusionPacked {
    pub xyz: BranchPacked,
    pub rgb: BranchPacked,
}

impl BranchPacked {
    fn new(w: &BranchWeights<'_>, precision: DensePrecision) -> Option<BranchPacked> {
        let (d, h) = (w.dim, w.hidden);
        Some(BranchPacked {
            fc1: PackedWeight::new(Mat::new(w.fc1_w, h, d), precision)?,
            fc2: PackedWeight::new(Mat::new(w.fc2_w, d, h), precision)?,
        })
    }
}

impl FusionPacked {
    /// `None` for bf16 where the CPU has no AVX512-BF16.
    pub fn new(w: &FusionWeights<'_>, precision: DensePrecision) -> Option<FusionPacked> {
        Some(FusionPacked {
            xyz: BranchPacked::new(&w.xyz, precision)?,
            rgb: BranchPacked::new(&w.rgb, precision)?,
        })
    }
}

fn branch_scratch(dim: usize, hidden: usize, rows: usize) -> usize {
    let c = rows.min(CHUNK_ROWS);
    c * dim + c * hidden
}

/// Floats of scratch [`fuse`] needs for these grid sides.
pub fn fusion_scratch_len(cfg: &FusionConfig, rgb_grid: usize, xyz_grid: usize) -> usize {
    let (x, r, m) = (
        cfg.xyz_dim as usize,
        cfg.rgb_dim as usize,
        cfg.mlp_ratio as usize,
    );
    let rgb_rows = rgb_grid * rgb_grid;
    let xyz_rows = xyz_grid * xyz_grid;
    // The RGB half per RGB cell, kept until it is copied out.
    let rgb_out = rgb_rows * r;
    rgb_out + branch_scratch(x, m * x, xyz_rows).max(branch_scratch(r, m * r, rgb_rows))
}

/// LayerNorm of each `dim`-row of `x` into `out` (biased variance, as PyTorch).
pub fn layer_norm_rows(x: &[f32], dim: usize, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..dim {
            or[i] = (xr[i] - mean) * inv * w[i] + b[i];
        }
    }
}

/// Whether every value of `row` is +0.0 (bit pattern 0): the xyz features of a patch that
/// no point reaches.
fn is_zero_row(row: &[f32]) -> bool {
    row.iter().all(|v| v.to_bits() == 0)
}

/// `out` (rows with stride `out_stride`, first `dim` columns) ⟵ MLP(LN(x)) for `rows` rows.
///
/// Rows that are all +0.0 (the xyz patches no point reaches: most of an xyz grid) all have
/// the same output, so only the first of them goes through the MLP and the others get a
/// copy of its output row. The rows that go through are packed into chunks of up to
/// [`CHUNK_ROWS`]; each output row depends only on its own input row (the GEMMs accumulate
/// every row in the same order wherever it sits in the chunk), so the bits are those of
/// computing every row.
#[allow(clippy::too_many_arguments)]
fn branch(
    pool: &Pool,
    w: &BranchWeights<'_>,
    eps: f32,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    packed: Option<&BranchPacked>,
    scratch: &mut [f32],
) {
    let (d, h) = (w.dim, w.hidden);
    let row = |r: usize| &x[r * d..(r + 1) * d];
    let mut first_zero: Option<usize> = None;
    let mut picked = [0usize; CHUNK_ROWS];
    let mut next = 0;
    while next < rows {
        let (normed, rest) = scratch.split_at_mut(CHUNK_ROWS.min(rows) * d);
        let hidden = &mut rest[..CHUNK_ROWS.min(rows) * h];
        let mut n = 0;
        while next < rows && n < CHUNK_ROWS {
            let zero = is_zero_row(row(next));
            if !zero || first_zero.is_none() {
                if zero {
                    first_zero = Some(next);
                }
                let dst = &mut normed[n * d..(n + 1) * d];
                layer_norm_rows(row(next), d, w.norm_w, w.norm_b, eps, dst);
                picked[n] = next;
                n += 1;
            }
            next += 1;
        }
        if n == 0 {
            break;
        }
        dense(
            pool,
            Mat::new(&normed[..n * d], n, d),
            Mat::new(w.fc1_w, h, d),
            packed.map(|p| &p.fc1),
            Some(w.fc1_b),
            hidden,
            h,
            Epilogue::Gelu,
        );
        // fc2 into the normalised rows' buffer (free after fc1), then to the output rows.
        dense(
            pool,
            Mat::new(&hidden[..n * h], n, h),
            Mat::new(w.fc2_w, d, h),
            packed.map(|p| &p.fc2),
            Some(w.fc2_b),
            normed,
            d,
            Epilogue::None,
        );
        for (i, &r) in picked[..n].iter().enumerate() {
            out[r * out_stride..r * out_stride + d].copy_from_slice(&normed[i * d..(i + 1) * d]);
        }
    }
    if let Some(z) = first_zero {
        for r in z + 1..rows {
            if is_zero_row(row(r)) {
                out.copy_within(z * out_stride..z * out_stride + d, r * out_stride);
            }
        }
    }
}

/// Fuses one part's patch grids.
///
/// - `rgb`: `rgb_grid² × rgb_dim`, row-major grid (cell `t` ↔ row `t / rgb_grid`).
/// - `xyz`: `xyz_grid² × xyz_dim`.
/// - `out`: `xyz_grid² × (xyz_dim + rgb_dim)`: the xyz half first, as M3DM concatenates.
/// - `scratch`: at least [`fusion_scratch_len`] floats.
///
/// Panics on size mismatches (caller bugs): sizes come from the model configuration,
/// which is validated when the model file is opened.
#[allow(clippy::too_many_arguments)]
pub fn fuse(
    pool: &Pool,
    w: &FusionWeights<'_>,
    rgb: &[f32],
    rgb_grid: usize,
    xyz: &[f32],
    xyz_grid: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    fuse_with(pool, w, None, rgb, rgb_grid, xyz, xyz_grid, out, scratch)
}

/// [`fuse`] with the dense layers through their packed weights when `packed` is given
/// ([`FusionPacked`]; f32: the same bits, bf16: the bf16 path).
#[allow(clippy::too_many_arguments)]
pub fn fuse_with(
    pool: &Pool,
    w: &FusionWeights<'_>,
    packed: Option<&FusionPacked>,
    rgb: &[f32],
    rgb_grid: usize,
    xyz: &[f32],
    xyz_grid: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (x, r) = (w.xyz.dim, w.rgb.dim);
    let fd = x + r;
    let (rgb_rows, xyz_rows) = (rgb_grid * rgb_grid, xyz_grid * xyz_grid);
    assert!(
        rgb_grid > 0 && xyz_grid.is_multiple_of(rgb_grid),
        "fusion: xyz grid {xyz_grid} is not a multiple of the RGB grid {rgb_grid}"
    );
    assert_eq!(rgb.len(), rgb_rows * r, "fusion: rgb features");
    assert_eq!(xyz.len(), xyz_rows * x, "fusion: xyz features");
    assert_eq!(out.len(), xyz_rows * fd, "fusion: output");
    let need = rgb_rows * r
        + branch_scratch(x, w.xyz.hidden, xyz_rows).max(branch_scratch(r, w.rgb.hidden, rgb_rows));
    assert!(scratch.len() >= need, "fusion: scratch too small");
    let (rgb_out, work) = scratch.split_at_mut(rgb_rows * r);

    // xyz half straight into the output rows.
    let (xyz_packed, rgb_packed) = (packed.map(|p| &p.xyz), packed.map(|p| &p.rgb));
    branch(
        pool, &w.xyz, w.ln_eps, xyz, xyz_rows, out, fd, xyz_packed, work,
    );
    // rgb half once per RGB cell, then repeated over its bin of xyz cells.
    branch(
        pool, &w.rgb, w.ln_eps, rgb, rgb_rows, rgb_out, r, rgb_packed, work,
    );
    let rep = xyz_grid / rgb_grid;
    for (j, row) in out.chunks_exact_mut(fd).enumerate() {
        let (yr, xr) = (j / xyz_grid, j % xyz_grid);
        let src = (yr / rep) * rgb_grid + xr / rep;
        row[x..].copy_from_slice(&rgb_out[src * r..(src + 1) * r]);
    }
}

/// Adaptive average pooling of a `gi × gi` grid of `dim`-vectors to `go × go`, with
/// PyTorch's bins (rows `[floor(i·gi/go), ceil((i+1)·gi/go))`). Used for the reference
/// in tests and wherever a grid must be resized by pooling.
pub fn adaptive_avg_pool(x: &[f32], gi: usize, dim: usize, go: usize, out: &mut [f32]) {
    let bin = |i: usize| ((i * gi) / go, ((i + 1) * gi).div_ceil(go));
    for oy in 0..go {
        let (y0, y1) = bin(oy);
        for ox in 0..go {
            let (x0, x1) = bin(ox);
            let o = &mut out[(oy * go + ox) * dim..(oy * go + ox + 1) * dim];
            o.fill(0.0);
            for y in y0..y1 {
                for xx in x0..x1 {
                    let src = &x[(y * gi + xx) * dim..(y * gi + xx + 1) * dim];
                    o.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
            let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
            o.iter_mut().for_each(|v| *v *= inv);
        }
    }
}
