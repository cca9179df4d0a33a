//! The pre-norm transformer block shared by the ViT (SPEC §2) and Point-MAE (SPEC §3):
//! `x ← x + Attn(LN₁(x)); x ← x + MLP(LN₂(x))`, plus the LayerNorm used by final norms.
//!
//! Every dense layer goes through [`linear`] (our GEMM on a fixed tile grid). Attention is
//! computed block by block: a task is one (head, block of query rows) pair; it computes
//! the scores of its query rows against all keys into per-worker scratch, exponentiates
//! them (with the row maximum subtracted), multiplies by V straight into the output and
//! divides each output row by its softmax sum. So attention scratch is
//! `QUERY_BLOCK × tokens` floats per worker, never `tokens²` per head, and each task's
//! bits depend only on its task number (not on the thread count).
//!
//! Fusions: bias and exact GELU run in the GEMM epilogue of fc1; the residual additions
//! of the attention projection and of fc2 accumulate directly into `x`; the softmax
//! normalisation is applied to the `QUERY_BLOCK × head_dim` output instead of to the
//! `QUERY_BLOCK × tokens` probabilities.
//!
//! On the bf16 path (the blocks' weights packed in bf16) attention's two products run in
//! bf16 too ([`super::gemm_bf16::product_seq`]): `scale · K` and `V` rounded to bf16 when
//! they are packed, `Q` rounded to bf16 as it is loaded and the probabilities
//! `exp(s − max)` once as they are made, f32 accumulation; the maximum, the exponentials
//! and their sum stay f32, the exponentials through the shorter
//! [`super::vmath::exp_for_bf16`] (their results are rounded to bf16 for P·V anyway).
//! Error of one output element `o = Σ_j w_j v_j` (`w` the exact softmax weights of the
//! exact scores `s_j = scale · q·k_j`), with u = 2⁻⁸ (bf16), γ = t·2⁻²⁴ (f32 sums of the
//! `t` tokens), `E` the largest error of the row's bf16 scores (the dense bound of
//! [`super::gemm_bf16`] over `head_dim` terms, plus 2⁻²³ relative for `fl(scale·k)`) and
//! `ε = 2⁻¹⁷ + (spread + 2E)·2⁻²⁴` the exponential's relative error
//! ([`super::vmath::exp_for_bf16`], and `s − max` rounded in f32; `spread` the range of
//! the row's scores):
//! `|ô − o| ≤ (e^{2E}·(1+ε)/(1−ε)·((1+u)/(1−u))²·(1+γ)²/(1−γ)·(1+2⁻²²) − 1) · Σ_j w_j |v_j|`
//! plus `t·2⁻¹²⁵·max|v|` where tiny values underflow (the bf16 dot product flushes them to
//! zero; `exp` clamps at −87.3). The argument: every weight is perturbed by a factor in
//! `[θ⁻, θ⁺]` common to numerator and denominator but for the roundings, so the ratio
//! moves by at most the product above; [`attention_bf16_error_bound`] computes it, a test
//! checks every element against it.

use super::dense::{dense, DensePrecision, PackedWeight};
use super::gemm::{
    pack_rhs_whole, packed_rhs_len, product_seq_packed, Epilogue, Kernel, Mat, Operand,
};
use super::gemm_bf16::{
    self, linear_bf16_rows, linear_bf16_rows_rounded, pack_scaled_into, Bf16Mat, Rows,
};
use super::pool::{Pool, SharedMut};
use super::vmath::{exp_shifted_row, exp_shifted_row_for_bf16, EXP_FOR_BF16_ERROR};
use crate::format::TensorSource;
use crate::Result;

/// Query rows per attention task: a multiple of every kernel's `MR` (12, 6, 4), so only
/// a head's last block has a partial micro-tile (64 left a 4-row tile computed as 12 in
/// every block); the bits do not depend on it (each score and output element's sum is
/// the same whatever the block).
pub const QUERY_BLOCK: usize = 96;
/// Rows per LayerNorm task.
const LN_ROWS: usize = 16;
/// Floats added to each row of the bf16 path's MLP hidden (one cache line): with rows of
/// 3072 floats (12 KiB, a multiple of the L1's 4 KiB way) every row of fc1's output tiles
/// and of fc2's input panels would fall in the same L1 sets; one line more per row spreads
/// them over consecutive sets. The f32 path keeps its rows as they are.
const HIDDEN_PAD: usize = 16;

/// Floats between rows of the MLP hidden on the bf16 path ([`HIDDEN_PAD`]).
fn hidden_stride_for_bf16(mlp_dim: usize) -> usize {
    mlp_dim + HIDDEN_PAD
}

/// The sizes of one block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockShape {
    pub tokens: usize,
    pub dim: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub ln_eps: f32,
}

impl BlockShape {
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    /// Floating-point operations of one block forward (2·m·n·k per product, attention
    /// products included), for throughput reports.
    pub fn flops(&self) -> f64 {
        let (t, d, h) = (self.tokens as f64, self.dim as f64, self.mlp_dim as f64);
        let linears = 2.0 * t * (3.0 * d * d + d * d + 2.0 * d * h);
        let attention = 2.0 * 2.0 * t * t * d;
        linears + attention
    }
}

/// The weights of one block, borrowed from a [`TensorSource`], PyTorch shapes.
#[derive(Clone, Copy, Debug)]
pub struct BlockWeights<'a> {
    pub norm1_w: &'a [f32],
    pub norm1_b: &'a [f32],
    /// `[3·dim, dim]`: q, k, v stacked, heads contiguous within each.
    pub qkv_w: &'a [f32],
    /// `[3·dim]`; Point-MAE has none.
    pub qkv_b: Option<&'a [f32]>,
    pub proj_w: &'a [f32],
    pub proj_b: &'a [f32],
    pub norm2_w: &'a [f32],
    pub norm2_b: &'a [f32],
    /// `[mlp_dim, dim]`
    pub fc1_w: &'a [f32],
    pub fc1_b: &'a [f32],
    /// `[dim, mlp_dim]`
    pub fc2_w: &'a [f32],
    pub fc2_b: &'a [f32],
}

impl<'a> BlockWeights<'a> {
    /// Finds the block's tensors under `prefix` (e.g. `"vit.blocks.3."`) with timm names
    /// (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`), checking every
    /// shape against `shape`.
    pub fn load<S: TensorSource + ?Sized>(
        src: &'a S,
        prefix: &str,
        shape: &BlockShape,
        qkv_bias: bool,
    ) -> Result<Self> {
        check_shape(shape)?;
        let (d, h) = (shape.dim, shape.mlp_dim);
        let get = move |name: &str, dims: &[usize]| src.f32(&format!("{prefix}{name}"), dims);
        Ok(BlockWeights {
            norm1_w: get("norm1.weight", &[d])?,
            norm1_b: get("norm1.bias", &[d])?,
            qkv_w: get("attn.qkv.weight", &[3 * d, d])?,
            qkv_b: if qkv_bias {
                Some(get("attn.qkv.bias", &[3 * d])?)
            } else {
                None
            },
            proj_w: get("attn.proj.weight", &[d, d])?,
            proj_b: get("attn.proj.bias", &[d])?,
            norm2_w: get("norm2.weight", &[d])?,
            norm2_b: get("norm2.bias", &[d])?,
            fc1_w: get("mlp.fc1.weight", &[h, d])?,
            fc1_b: get("mlp.fc1.bias", &[h])?,
            fc2_w: get("mlp.fc2.weight", &[d, h])?,
            fc2_b: get("mlp.fc2.bias", &[d])?,
        })
    }
}

/// A block's four dense weights packed once ([`PackedWeight`]: f32, or bf16 for the bf16
/// path of [`super::gemm_bf16`]); LayerNorm, attention and biases stay f32.
pub struct BlockPacked {
    pub qkv: PackedWeight,
    pub proj: PackedWeight,
    pub fc1: PackedWeight,
    pub fc2: PackedWeight,
}

impl BlockPacked {
    /// `None` for bf16 where the CPU has no AVX512-BF16.
    pub fn new(
        shape: &BlockShape,
        w: &BlockWeights<'_>,
        precision: DensePrecision,
    ) -> Option<BlockPacked> {
        let (d, h) = (shape.dim, shape.mlp_dim);
        let pack = |data, rows, cols| PackedWeight::new(Mat::new(data, rows, cols), precision);
        Some(BlockPacked {
            qkv: pack(w.qkv_w, 3 * d, d)?,
            proj: pack(w.proj_w, d, d)?,
            fc1: pack(w.fc1_w, h, d)?,
            fc2: pack(w.fc2_w, d, h)?,
        })
    }
}

/// Refuses shapes the block cannot run (a user can reach these through a model file).
pub fn check_shape(shape: &BlockShape) -> Result<()> {
    if shape.dim == 0 || shape.heads == 0 || shape.mlp_dim == 0 || shape.tokens == 0 {
        return Err(crate::Error::Config(format!(
            "transformer block with a zero size: {shape:?}"
        )));
    }
    if !shape.dim.is_multiple_of(shape.heads) {
        return Err(crate::Error::Config(format!(
            "width {} is not a multiple of the head count {}",
            shape.dim, shape.heads
        )));
    }
    if !(shape.ln_eps > 0.0 && shape.ln_eps.is_finite()) {
        return Err(crate::Error::Config(format!(
            "LayerNorm eps {} must be positive",
            shape.ln_eps
        )));
    }
    Ok(())
}

/// Per-worker attention scratch: scores of one query block, its row sums, and (the bf16
/// path) its probabilities rounded to bf16, rows [`probs_stride`] apart.
fn attn_worker_len(tokens: usize) -> usize {
    QUERY_BLOCK * scores_stride_for_bf16(tokens)
        + QUERY_BLOCK
        + QUERY_BLOCK * probs_stride(tokens) / 2
}

/// Floats between rows of the bf16 path's scores: `tokens` rounded up to whole tiles of
/// the bf16 kernel, so that Q·Kᵀ stores every tile straight (a head's packed keys are
/// zero past `tokens`, so the extra columns are zeros, never read) instead of the last
/// one through a copy. The f32 path keeps rows of `tokens`.
fn scores_stride_for_bf16(tokens: usize) -> usize {
    tokens.next_multiple_of(gemm_bf16::TILE_COLS)
}

/// Elements between rows of the bf16 probabilities: `tokens` rounded up to even, the
/// padding zero, so that P·V reads whole pairs of each row where they lie
/// (`gemm_bf16`'s panels in place) instead of copying them.
fn probs_stride(tokens: usize) -> usize {
    tokens.next_multiple_of(2)
}

/// Floats of one head's packed keys and values (see [`attention`]).
fn packed_head_len(tokens: usize, head_dim: usize) -> usize {
    packed_rhs_len(head_dim, tokens) + packed_rhs_len(tokens, head_dim)
}

/// Attention scratch for `heads` heads of `dim / heads` and a pool of `threads` threads.
pub fn attn_scratch_len(tokens: usize, dim: usize, heads: usize, threads: usize) -> usize {
    heads * packed_head_len(tokens, dim / heads.max(1)) + threads.max(1) * attn_worker_len(tokens)
}

/// Scratch floats [`block_forward`] needs for a pool of `threads` threads.
pub fn block_scratch_len(shape: &BlockShape, threads: usize) -> usize {
    let (t, d) = (shape.tokens, shape.dim);
    let big = t * (4 * d).max(hidden_stride_for_bf16(shape.mlp_dim));
    t * d + big + shared_scratch_len(shape, threads) + (t * d).div_ceil(2)
}

/// Attention's scratch, which the bf16 path's MLP reuses for its hidden rounded to bf16
/// (rows [`hidden_stride_for_bf16`] apart).
fn shared_scratch_len(shape: &BlockShape, threads: usize) -> usize {
    let (t, d) = (shape.tokens, shape.dim);
    let hidden16 = (t * hidden_stride_for_bf16(shape.mlp_dim)).div_ceil(2);
    attn_scratch_len(t, d, shape.heads, threads).max(hidden16)
}

/// `x` (`tokens × dim`, row-major) ← x + Attn(LN₁(x)); x ← x + MLP(LN₂(x)).
/// Performs no allocation. `scratch` needs [`block_scratch_len`]`(shape, pool.threads())`.
pub fn block_forward(
    pool: &Pool,
    shape: &BlockShape,
    w: &BlockWeights<'_>,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    block_forward_with(pool, shape, w, None, x, scratch)
}

/// [`block_forward`], with the dense layers through their packed weights when `packed`
/// is given (f32: the same bits; bf16: the bf16 path).
pub fn block_forward_with(
    pool: &Pool,
    shape: &BlockShape,
    w: &BlockWeights<'_>,
    packed: Option<&BlockPacked>,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let (t, d, hid) = (shape.tokens, shape.dim, shape.mlp_dim);
    assert!(x.len() >= t * d, "block_forward: x too short");
    assert!(
        scratch.len() >= block_scratch_len(shape, pool.threads()),
        "block_forward: scratch too short"
    );
    let (xn, rest) = scratch.split_at_mut(t * d);
    let (big, rest) = rest.split_at_mut(t * (4 * d).max(hidden_stride_for_bf16(hid)));
    let (attn_scratch, xn16) = rest.split_at_mut(shared_scratch_len(shape, pool.threads()));
    let xn16 = &mut as_bf16(xn16)[..t * d];
    let x = &mut x[..t * d];
    let precision = match packed.map(|b| &b.qkv) {
        Some(PackedWeight::Bf16(_)) => DensePrecision::Bf16,
        _ => DensePrecision::F32,
    };

    // Attention half.
    {
        let (qkv, rest) = big.split_at_mut(t * 3 * d);
        let attn_out = &mut rest[..t * d];
        let norm = Norm {
            w: w.norm1_w,
            b: w.norm1_b,
            eps: shape.ln_eps,
        };
        norm_then_dense(
            pool,
            norm,
            x,
            (xn, xn16),
            Mat::new(w.qkv_w, 3 * d, d),
            packed.map(|b| &b.qkv),
            w.qkv_b,
            (qkv, 3 * d),
            Epilogue::None,
            None,
        );
        // On the bf16 path attention's output is also rounded to bf16, into the norm's
        // bf16 rows (free once qkv has read them), and the projection reads it there.
        let proj_bf16 = match packed.map(|b| &b.proj) {
            Some(PackedWeight::Bf16(p)) if precision == DensePrecision::Bf16 => Some(p),
            _ => None,
        };
        let attn_out16 = proj_bf16.map(|_| &mut *xn16);
        attention(
            pool,
            t,
            d,
            shape.heads,
            precision,
            qkv,
            attn_out,
            attn_out16,
            attn_scratch,
        );
        match proj_bf16 {
            Some(p) => {
                let a = Rows::Bf16(Bf16Mat {
                    data: xn16,
                    rows: t,
                    cols: d,
                    stride: d,
                });
                let (bias, epi) = (Some(w.proj_b), Epilogue::Accumulate);
                linear_bf16_rows(pool, a, p, bias, x, d, epi, None);
            }
            None => dense(
                pool,
                Mat::new(attn_out, t, d),
                Mat::new(w.proj_w, d, d),
                packed.map(|b| &b.proj),
                Some(w.proj_b),
                x,
                d,
                Epilogue::Accumulate,
            ),
        }
    }

    // MLP half. On the bf16 path fc1 writes only its output rounded to bf16, into the
    // attention scratch (free by now), finishing each tile while it is in L1, and fc2
    // reads those rows as they are: rounded once, not by each of fc2's column tasks, and
    // half the bytes to read.
    let hidden_stride = match precision {
        DensePrecision::Bf16 => hidden_stride_for_bf16(hid),
        DensePrecision::F32 => hid,
    };
    let hidden = &mut big[..t * hidden_stride];
    let hidden16 = &mut as_bf16(attn_scratch)[..t * hidden_stride];
    let fc2_bf16 = match packed.map(|b| (&b.fc1, &b.fc2)) {
        Some((PackedWeight::Bf16(_), PackedWeight::Bf16(p))) => Some(p),
        _ => None,
    };
    let norm = Norm {
        w: w.norm2_w,
        b: w.norm2_b,
        eps: shape.ln_eps,
    };
    norm_then_dense(
        pool,
        norm,
        x,
        (xn, xn16),
        Mat::new(w.fc1_w, hid, d),
        packed.map(|b| &b.fc1),
        Some(w.fc1_b),
        (hidden, hidden_stride),
        Epilogue::Gelu,
        fc2_bf16.map(|_| &mut *hidden16),
    );
    match fc2_bf16 {
        Some(p) => {
            let hidden16 = Bf16Mat {
                data: hidden16,
                rows: t,
                cols: hid,
                stride: hidden_stride,
            };
            let (bias, out) = (Some(w.fc2_b), Epilogue::Accumulate);
            linear_bf16_rows(pool, Rows::Bf16(hidden16), p, bias, x, d, out, None);
        }
        None => {
            let hidden = Mat {
                data: hidden,
                rows: t,
                cols: hid,
                stride: hidden_stride,
            };
            dense(
                pool,
                hidden,
                Mat::new(w.fc2_w, d, hid),
                packed.map(|b| &b.fc2),
                Some(w.fc2_b),
                x,
                d,
                Epilogue::Accumulate,
            );
        }
    }
}

/// A LayerNorm's affine and epsilon.
#[derive(Clone, Copy)]
struct Norm<'a> {
    w: &'a [f32],
    b: &'a [f32],
    eps: f32,
}

/// `out ⟵ epilogue(LN(x) · wᵀ + bias)` (`x` is `tokens × dim`, `w` `n × dim`, `out.0`
/// rows `out.1` apart), LN(x) through `xn`; on the bf16 path, where `out16` is given, that
/// output rounded to bf16 goes there (rows `out.1` apart) instead, and `out.0` is not
/// written. On the bf16 path the norm's rows are also rounded to bf16 once, into `xn.1`,
/// and the GEMM reads them as they are: the same bits as rounding them as each panel is
/// loaded, which happens once per column task.
#[allow(clippy::too_many_arguments)]
fn norm_then_dense(
    pool: &Pool,
    norm: Norm<'_>,
    x: &[f32],
    xn: (&mut [f32], &mut [u16]),
    w: Mat<'_>,
    packed: Option<&PackedWeight>,
    bias: Option<&[f32]>,
    out: (&mut [f32], usize),
    epilogue: Epilogue,
    out16: Option<&mut [u16]>,
) {
    let d = w.cols;
    let t = x.len() / d;
    let (xn, xn16) = xn;
    let (out, out_stride) = out;
    match packed {
        Some(PackedWeight::Bf16(p)) => {
            layer_norm_for_bf16(pool, t, d, x, xn, xn16, norm.w, norm.b, norm.eps);
            let a = Bf16Mat {
                data: xn16,
                rows: t,
                cols: d,
                stride: d,
            };
            let a = Rows::Bf16(a);
            match out16 {
                Some(o) => linear_bf16_rows_rounded(pool, a, p, bias, epilogue, (o, out_stride)),
                None => linear_bf16_rows(pool, a, p, bias, out, out_stride, epilogue, None),
            }
        }
        _ => {
            layer_norm(pool, t, d, x, xn, norm.w, norm.b, norm.eps);
            dense(
                pool,
                Mat::new(xn, t, d),
                w,
                packed,
                bias,
                out,
                out_stride,
                epilogue,
            );
        }
    }
}

/// Multi-head softmax attention. `qkv` is `tokens × 3·dim` (q | k | v, heads contiguous
/// within each, as timm's qkv layer lays them out); `out` is `tokens × dim` with head `h`
/// in columns `h·hd..(h+1)·hd`. `scratch` holds [`attn_scratch_len`] floats.
/// `DensePrecision::Bf16`: the two products in bf16 (module doc; f32 where the CPU has no
/// AVX512-BF16).
///
/// First each head's `scale · Kᵀ` and `V` are packed once as GEMM right-hand operands
/// (one task per head), so that the query blocks of a head share them instead of each
/// packing them again.
///
/// On the bf16 path the output is also written rounded to bf16 into `out16` (`tokens ×
/// dim`) where given: the projection's activations rounded once, by the task that
/// finished them, instead of by each of the projection's column tasks (the same values).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &Pool,
    t: usize,
    d: usize,
    heads: usize,
    precision: DensePrecision,
    qkv: &[f32],
    out: &mut [f32],
    out16: Option<&mut [u16]>,
    scratch: &mut [f32],
) {
    let bf16 = precision == DensePrecision::Bf16 && gemm_bf16::available();
    assert!(
        out16.as_ref().is_none_or(|o| o.len() >= t * d),
        "attention: out16"
    );
    let out16_ptr = out16.filter(|_| bf16).map(SharedMut::new);
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = t.div_ceil(QUERY_BLOCK);
    let per_worker = attn_worker_len(t);
    let per_head = packed_head_len(t, hd);
    let k_len = packed_rhs_len(hd, t);
    assert!(scratch.len() >= attn_scratch_len(t, d, heads, pool.threads()));
    let (packed, worker_scratch) = scratch.split_at_mut(heads * per_head);
    let ker = Kernel::best();
    let stride = 3 * d;
    let head_mat = |which: usize, h: usize| Mat {
        data: &qkv[which * d + h * hd..],
        rows: t,
        cols: hd,
        stride,
    };
    let packed_ptr = SharedMut::new(packed);
    pool.run(heads, &|h, _| {
        // SAFETY: task h writes head h's slot only.
        let slot = unsafe { packed_ptr.slice(h * per_head, per_head) };
        let (k_packed, v_packed) = slot.split_at_mut(k_len);
        if bf16 {
            // bf16 needs at most half the floats of the f32 packing (checked in a test).
            let (k16, v16) = (as_bf16(k_packed), as_bf16(v_packed));
            pack_scaled_into(Operand::plain(head_mat(1, h)), scale, k16);
            pack_scaled_into(Operand::transposed(head_mat(2, h)), 1.0, v16);
        } else {
            pack_rhs_whole(ker, Operand::transposed(head_mat(1, h)), scale, k_packed);
            pack_rhs_whole(ker, Operand::plain(head_mat(2, h)), 1.0, v_packed);
        }
    });
    let packed = &*packed;
    let out_ptr = SharedMut::new(out);
    let scratch_ptr = SharedMut::new(worker_scratch);
    pool.run(heads * blocks, &|task, worker| {
        let (h, b) = (task / blocks, task % blocks);
        let q0 = b * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(t - q0);
        // SAFETY: each worker owns its own scratch slot.
        let ws = unsafe { scratch_ptr.slice(worker * per_worker, per_worker) };
        let s_stride = if bf16 { scores_stride_for_bf16(t) } else { t };
        let (scores, rest) = ws.split_at_mut(QUERY_BLOCK * scores_stride_for_bf16(t));
        let (sums, probs16) = rest.split_at_mut(QUERY_BLOCK);
        let (k_packed, v_packed) = packed[h * per_head..(h + 1) * per_head].split_at(k_len);
        let q = Mat {
            data: &qkv[q0 * stride + h * hd..],
            rows,
            cols: hd,
            stride,
        };
        if bf16 {
            // The keys packed for `t` columns are those of `s_stride`, zero past `t`.
            let k16 = bf16_view(k_packed);
            gemm_bf16::product_seq(Rows::F32(q), k16, s_stride, scores, s_stride);
        } else {
            product_seq_packed(ker, scores, t, q, k_packed, t, false);
        }
        let p_stride = probs_stride(t);
        let probs16 = &mut as_bf16(probs16)[..QUERY_BLOCK * p_stride];
        let rows_of = scores
            .chunks_exact_mut(s_stride)
            .zip(probs16.chunks_exact_mut(p_stride));
        for (sum, (row, row16)) in sums.iter_mut().zip(rows_of).take(rows) {
            let row = &mut row[..t];
            *sum = if bf16 {
                // Rounded once here, not as P·V loads each panel.
                let sum = exp_shifted_row_for_bf16(row);
                let (row16, pad) = row16.split_at_mut(t);
                gemm_bf16::round_into(row, row16);
                pad.fill(0);
                sum
            } else {
                exp_shifted_row(row)
            };
        }
        // SAFETY: this task alone writes rows q0..q0+rows, columns h·hd..(h+1)·hd.
        let dst = unsafe { out_ptr.slice(q0 * d + h * hd, (rows - 1) * d + hd) };
        if bf16 {
            let p = Bf16Mat {
                data: &probs16[..rows * p_stride],
                rows,
                cols: t,
                stride: p_stride,
            };
            gemm_bf16::product_seq(Rows::Bf16(p), bf16_view(v_packed), hd, dst, d);
        } else {
            let p = Mat::new(&scores[..rows * t], rows, t);
            product_seq_packed(ker, dst, d, p, v_packed, hd, false);
        }
        for (r, sum) in sums.iter().enumerate().take(rows) {
            let inv = 1.0 / sum;
            let row = &mut dst[r * d..r * d + hd];
            row.iter_mut().for_each(|v| *v *= inv);
            if let Some(out16) = &out16_ptr {
                // SAFETY: as `dst`: this task alone writes these elements.
                let row16 = unsafe { out16.slice((q0 + r) * d + h * hd, hd) };
                gemm_bf16::round_into(row, row16);
            }
        }
    });
}

/// A scratch slot of floats used as bf16 storage (half the bytes per element).
fn as_bf16(slot: &mut [f32]) -> &mut [u16] {
    bytemuck::cast_slice_mut(slot)
}

fn bf16_view(slot: &[f32]) -> &[u16] {
    bytemuck::cast_slice(slot)
}

/// The error bound of the module doc for one output element of bf16 attention: `score_err`
/// the largest error `E` of the row's bf16 scores, `spread` the range of its exact scores,
/// `tokens` the keys, `weighted_abs` `Σ_j w_j |v_j|` (`max_abs_v`: max |v| of the column,
/// for the underflow term).
pub fn attention_bf16_error_bound(
    score_err: f64,
    spread: f64,
    tokens: usize,
    weighted_abs: f64,
    max_abs_v: f64,
) -> f64 {
    let u = 2f64.powi(-8);
    let gamma = tokens as f64 * 2f64.powi(-24);
    let eps = EXP_FOR_BF16_ERROR + (spread + 2.0 * score_err) * 2f64.powi(-24);
    let factor = (2.0 * score_err).exp() * (1.0 + eps) / (1.0 - eps)
        * ((1.0 + u) / (1.0 - u)).powi(2)
        * (1.0 + gamma).powi(2)
        / (1.0 - gamma)
        * (1.0 + 2f64.powi(-22));
    (factor - 1.0) * weighted_abs + tokens as f64 * 2f64.powi(-125) * max_abs_v
}

/// Row-wise LayerNorm with affine: `out[r] = (x[r] − mean) / sqrt(var + eps) · w + b`,
/// biased variance, computed in two passes (mean, then variance of the centred row) with
/// f64 accumulation. `x` and `out` are `rows × dim` row-major.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    pool: &Pool,
    rows: usize,
    dim: usize,
    x: &[f32],
    out: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let norm = Norm { w, b, eps };
    norm.run(pool, rows, dim, x, out, None, layer_norm_row);
}

type LayerNormRowFn = fn(&[f32], &mut [f32], &[f32], &[f32], f32);

impl Norm<'_> {
    /// The norm of `rows` rows of `x` (`rows × dim`) into `out`, in tasks of [`LN_ROWS`]
    /// rows, and rounded to bf16 into `out16` where given.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        pool: &Pool,
        rows: usize,
        dim: usize,
        x: &[f32],
        out: &mut [f32],
        out16: Option<&mut [u16]>,
        row: LayerNormRowFn,
    ) {
        assert!(x.len() >= rows * dim && out.len() >= rows * dim);
        assert!(self.w.len() == dim && self.b.len() == dim);
        let out_ptr = SharedMut::new(out);
        let out16 = out16.map(|o| {
            assert!(o.len() >= rows * dim);
            SharedMut::new(o)
        });
        pool.run(rows.div_ceil(LN_ROWS), &|task, _| {
            let r0 = task * LN_ROWS;
            let n = LN_ROWS.min(rows - r0);
            // SAFETY: each task writes its own rows.
            let o = unsafe { out_ptr.slice(r0 * dim, n * dim) };
            for r in 0..n {
                let o = &mut o[r * dim..(r + 1) * dim];
                let x = &x[(r0 + r) * dim..(r0 + r + 1) * dim];
                row(x, o, self.w, self.b, self.eps);
                if let Some(o16) = &out16 {
                    // SAFETY: as above.
                    let o16 = unsafe { o16.slice((r0 + r) * dim, dim) };
                    gemm_bf16::round_into(o, o16);
                }
            }
        });
    }
}

/// [`layer_norm`] for the bf16 path (whose next GEMM rounds its output to bf16): the same
/// f64 sums in fixed lanes that vectorise ([`layer_norm_row_in_lanes`]), several times
/// faster than the one sequential f64 chain the f32 path keeps for its bits.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_for_bf16(
    pool: &Pool,
    rows: usize,
    dim: usize,
    x: &[f32],
    out: &mut [f32],
    out16: &mut [u16],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let norm = Norm { w, b, eps };
    norm.run(
        pool,
        rows,
        dim,
        x,
        out,
        Some(out16),
        layer_norm_row_in_lanes,
    );
}

/// f64 partial sums of [`layer_norm_row_in_lanes`]: the same for every instruction set.
const LN_LANES: usize = 8;

/// [`layer_norm_row`] with its f64 sums in [`LN_LANES`] fixed lanes, compiled for the
/// instruction set [`super::gemm::isa`] picks (the same bits on each).
pub fn layer_norm_row_in_lanes(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
            layer_norm_row_in_lanes_generic(x, out, w, b, eps)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
            layer_norm_row_in_lanes_generic(x, out, w, b, eps)
        }
        match super::gemm::isa() {
            // SAFETY: `isa` names only instruction sets this CPU runs.
            super::gemm::Isa::Avx512 => return unsafe { avx512(x, out, w, b, eps) },
            // SAFETY: as above.
            super::gemm::Isa::Avx2 => return unsafe { avx2(x, out, w, b, eps) },
            super::gemm::Isa::Portable => {}
        }
    }
    layer_norm_row_in_lanes_generic(x, out, w, b, eps)
}

#[inline(always)]
fn layer_norm_row_in_lanes_generic(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let dim = x.len() as f64;
    let mean = sum_in_lanes(x, |v| v as f64) / dim;
    let var = sum_in_lanes(x, |v| {
        let c = v as f64 - mean;
        c * c
    }) / dim;
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * rstd * w + b;
    }
}

/// `Σ f(x_i)` in f64, [`LN_LANES`] partial sums added at the end, then the tail.
#[inline(always)]
fn sum_in_lanes(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LN_LANES];
    let mut chunks = x.chunks_exact(LN_LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// One row of [`layer_norm`].
pub fn layer_norm_row(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let dim = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / dim;
    let var = x
        .iter()
        .map(|&v| {
            let c = v as f64 - mean;
            c * c
        })
        .sum::<f64>()
        / dim;
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * rstd * w + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::OwnedTensors;
    use crate::util::rng::Rng;

    /// f64 reference of one block, written plainly from the definition.
    fn block_reference(shape: &BlockShape, w: &BlockWeights<'_>, x: &[f32]) -> Vec<f64> {
        let (t, d, hid, heads) = (shape.tokens, shape.dim, shape.mlp_dim, shape.heads);
        let hd = d / heads;
        let ln = |x: &[f64], g: &[f32], b: &[f32]| -> Vec<f64> {
            let mut out = vec![0f64; t * d];
            for r in 0..t {
                let row = &x[r * d..(r + 1) * d];
                let mean = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                for c in 0..d {
                    out[r * d + c] = (row[c] - mean) / (var + shape.ln_eps as f64).sqrt()
                        * g[c] as f64
                        + b[c] as f64;
                }
            }
            out
        };
        let lin = |a: &[f64], m: usize, k: usize, wt: &[f32], bias: Option<&[f32]>, n: usize| {
            let mut out = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = bias.map_or(0.0, |b| b[j] as f64);
                    for p in 0..k {
                        s += a[i * k + p] * wt[j * k + p] as f64;
                    }
                    out[i * n + j] = s;
                }
            }
            out
        };
        let mut x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let xn = ln(&x, w.norm1_w, w.norm1_b);
        let qkv = lin(&xn, t, d, w.qkv_w, w.qkv_b, 3 * d);
        let mut att = vec![0f64; t * d];
        for h in 0..heads {
            for i in 0..t {
                let mut s: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..hd)
                            .map(|c| qkv[i * 3 * d + h * hd + c] * qkv[j * 3 * d + d + h * hd + c])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|v| *v = (*v - m).exp());
                let z: f64 = s.iter().sum();
                for c in 0..hd {
                    att[i * d + h * hd + c] = (0..t)
                        .map(|j| s[j] * qkv[j * 3 * d + 2 * d + h * hd + c])
                        .sum::<f64>()
                        / z;
                }
            }
        }
        let p = lin(&att, t, d, w.proj_w, Some(w.proj_b), d);
        x.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        let xn = ln(&x, w.norm2_w, w.norm2_b);
        let mut hdn = lin(&xn, t, d, w.fc1_w, Some(w.fc1_b), hid);
        hdn.iter_mut().for_each(|v| {
            *v = 0.5 * *v * (1.0 + libm::erf(*v / std::f64::consts::SQRT_2));
        });
        let f = lin(&hdn, t, hid, w.fc2_w, Some(w.fc2_b), d);
        x.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
        x
    }

    fn random_block(shape: &BlockShape, qkv_bias: bool, seed: u64) -> OwnedTensors {
        let (d, h) = (shape.dim, shape.mlp_dim);
        let mut rng = Rng::new(seed);
        let mut src = OwnedTensors::default();
        let mut add = |name: &str, dims: Vec<usize>, std: f32, mean: f32| {
            let mut v = vec![0f32; dims.iter().product()];
            rng.fill_normal(&mut v, std);
            v.iter_mut().for_each(|x| *x += mean);
            src.insert(format!("b.{name}"), dims, v);
        };
        add("norm1.weight", vec![d], 0.2, 1.0);
        add("norm1.bias", vec![d], 0.1, 0.0);
        add("attn.qkv.weight", vec![3 * d, d], 0.1, 0.0);
        if qkv_bias {
            add("attn.qkv.bias", vec![3 * d], 0.1, 0.0);
        }
        add("attn.proj.weight", vec![d, d], 0.1, 0.0);
        add("attn.proj.bias", vec![d], 0.1, 0.0);
        add("norm2.weight", vec![d], 0.2, 1.0);
        add("norm2.bias", vec![d], 0.1, 0.0);
        add("mlp.fc1.weight", vec![h, d], 0.1, 0.0);
        add("mlp.fc1.bias", vec![h], 0.1, 0.0);
        add("mlp.fc2.weight", vec![d, h], 0.05, 0.0);
        add("mlp.fc2.bias", vec![d], 0.1, 0.0);
        src
    }

    #[test]
    fn block_matches_f64_reference() {
        for (qkv_bias, tokens) in [(true, 130), (false, 65)] {
            let shape = BlockShape {
                tokens,
                dim: 48,
                heads: 3,
                mlp_dim: 96,
                ln_eps: 1e-6,
            };
            let src = random_block(&shape, qkv_bias, 9);
            let w = BlockWeights::load(&src, "b.", &shape, qkv_bias).expect("weights");
            let mut x = vec![0f32; tokens * shape.dim];
            Rng::new(4).fill_normal(&mut x, 1.0);
            let want = block_reference(&shape, &w, &x);
            let pool = Pool::new(2);
            let mut scratch = vec![f32::NAN; block_scratch_len(&shape, 2)];
            block_forward(&pool, &shape, &w, &mut x, &mut scratch);
            let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
            let err = x
                .iter()
                .zip(&want)
                .fold(0f64, |a, (g, r)| a.max((*g as f64 - r).abs()));
            assert!(
                err <= 1e-5 * scale,
                "qkv_bias {qkv_bias}: err {err}, scale {scale}"
            );
        }
    }

    #[test]
    fn block_bits_do_not_depend_on_threads() {
        let shape = BlockShape {
            tokens: 150,
            dim: 64,
            heads: 4,
            mlp_dim: 128,
            ln_eps: 1e-5,
        };
        let src = random_block(&shape, false, 2);
        let w = BlockWeights::load(&src, "b.", &shape, false).expect("weights");
        let mut x0 = vec![0f32; shape.tokens * shape.dim];
        Rng::new(1).fill_normal(&mut x0, 1.0);
        let run = |threads: usize| {
            let pool = Pool::new(threads);
            let mut x = x0.clone();
            let mut scratch = vec![0f32; block_scratch_len(&shape, threads)];
            block_forward(&pool, &shape, &w, &mut x, &mut scratch);
            x
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    /// bf16 attention: every output element within [`attention_bf16_error_bound`] of the
    /// float64 attention of the same inputs, the same bits for 1 and 2 threads, and not
    /// the f32 path's result (so the bf16 products ran). Shapes with partial tiles and
    /// several `k` blocks (200 keys), one sharp softmax (inputs of std 3).
    #[test]
    fn bf16_attention_is_within_its_bound_and_deterministic() {
        if !gemm_bf16::available() {
            eprintln!("no AVX512-BF16 here: attention stays f32, nothing to check");
            return;
        }
        let mut worst = 0f64;
        for (t, d, heads, std) in [(200, 128, 2, 1.0), (37, 48, 3, 1.0), (100, 64, 1, 3.0)] {
            let hd = d / heads;
            let mut qkv = vec![0f32; t * 3 * d];
            Rng::new(t as u64).fill_normal(&mut qkv, std);
            let run = |threads: usize, precision| {
                let mut out = vec![f32::NAN; t * d];
                let mut scratch = vec![f32::NAN; attn_scratch_len(t, d, heads, threads)];
                let pool = Pool::new(threads);
                attention(
                    &pool,
                    t,
                    d,
                    heads,
                    precision,
                    &qkv,
                    &mut out,
                    None,
                    &mut scratch,
                );
                out
            };
            let got = run(2, DensePrecision::Bf16);
            assert_eq!(got, run(1, DensePrecision::Bf16), "{t} tokens: threads");
            // With its output also in bf16: the same f32 output, and the bf16 copy is
            // that output rounded (every element written).
            let mut out = vec![f32::NAN; t * d];
            let mut out16 = vec![0x7fc1u16; t * d];
            let mut scratch = vec![f32::NAN; attn_scratch_len(t, d, heads, 2)];
            let (pool, bf16) = (Pool::new(2), DensePrecision::Bf16);
            let o16 = Some(&mut out16[..]);
            attention(&pool, t, d, heads, bf16, &qkv, &mut out, o16, &mut scratch);
            assert_eq!(got, out, "{t} tokens: with the bf16 copy");
            let mut want16 = vec![0u16; t * d];
            gemm_bf16::round_into(&got, &mut want16);
            assert_eq!(want16, out16, "{t} tokens: the bf16 copy");
            let f32_out = run(2, DensePrecision::F32);
            assert_ne!(got, f32_out, "{t} tokens: the bf16 products did not run");
            let scale = 1.0 / (hd as f64).sqrt();
            let at = |r: usize, c: usize| qkv[r * 3 * d + c] as f64;
            for h in 0..heads {
                for i in 0..t {
                    let (mut s, mut abs) = (vec![0f64; t], vec![0f64; t]);
                    for j in 0..t {
                        for c in 0..hd {
                            let prod = at(i, h * hd + c) * at(j, d + h * hd + c);
                            s[j] += scale * prod;
                            abs[j] += scale * prod.abs();
                        }
                    }
                    let score_err = abs
                        .iter()
                        .map(|&a| gemm_bf16::error_bound(hd, a) + 2f64.powi(-23) * a)
                        .fold(0f64, f64::max);
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let min = s.iter().cloned().fold(f64::INFINITY, f64::min);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        let v = |j: usize| at(j, 2 * d + h * hd + c);
                        let want: f64 = (0..t).map(|j| e[j] / z * v(j)).sum();
                        let weighted: f64 = (0..t).map(|j| e[j] / z * v(j).abs()).sum();
                        let max_v = (0..t).map(|j| v(j).abs()).fold(0f64, f64::max);
                        let bound =
                            attention_bf16_error_bound(score_err, max - min, t, weighted, max_v);
                        let err = (got[i * d + h * hd + c] as f64 - want).abs();
                        assert!(
                            err <= bound,
                            "{t} tokens, head {h}, ({i}, {c}): error {err:e}, bound {bound:e}"
                        );
                        worst = worst.max(err / bound);
                    }
                }
            }
        }
        eprintln!("bf16 attention: largest error / bound {worst:.3}");
    }

    #[test]
    fn load_reports_missing_and_misshapen_tensors() {
        let shape = BlockShape {
            tokens: 4,
            dim: 8,
            heads: 2,
            mlp_dim: 16,
            ln_eps: 1e-6,
        };
        let src = random_block(&shape, false, 1);
        assert!(BlockWeights::load(&src, "b.", &shape, true).is_err());
        let wider = BlockShape { dim: 10, ..shape };
        assert!(BlockWeights::load(&src, "b.", &wider, false).is_err());
        let bad_heads = BlockShape { heads: 3, ..shape };
        assert!(BlockWeights::load(&src, "b.", &bad_heads, false).is_err());
        assert!(BlockWeights::load(&src, "b.", &shape, false).is_ok());
    }

    #[test]
    fn layer_norm_matches_definition() {
        let (rows, dim) = (37, 50);
        let mut rng = Rng::new(8);
        let mut x = vec![0f32; rows * dim];
        let mut w = vec![0f32; dim];
        let mut b = vec![0f32; dim];
        rng.fill_normal(&mut x, 3.0);
        x.iter_mut().for_each(|v| *v += 100.0);
        rng.fill_normal(&mut w, 1.0);
        rng.fill_normal(&mut b, 1.0);
        let mut out = vec![0f32; rows * dim];
        layer_norm(&Pool::new(2), rows, dim, &x, &mut out, &w, &b, 1e-5);
        // The bf16 path's LayerNorm: the same definition and accuracy, its sums in lanes;
        // the dispatched row and the generic one give the same bits.
        let mut lanes = vec![0f32; rows * dim];
        let mut rounded = vec![0u16; rows * dim];
        let pool = Pool::new(2);
        layer_norm_for_bf16(&pool, rows, dim, &x, &mut lanes, &mut rounded, &w, &b, 1e-5);
        let bf16 = |v: f32| half::bf16::from_f32(v).to_bits();
        assert!(lanes.iter().zip(&rounded).all(|(&v, &r)| bf16(v) == r));
        let mut generic = vec![0f32; dim];
        for r in 0..rows {
            let row = &x[r * dim..(r + 1) * dim];
            layer_norm_row_in_lanes_generic(row, &mut generic, &w, &b, 1e-5);
            assert_eq!(generic, lanes[r * dim..(r + 1) * dim], "row {r}");
        }
        for out in [&out, &lanes] {
            check_layer_norm(rows, dim, &x, &w, &b, out);
        }
    }

    fn check_layer_norm(rows: usize, dim: usize, x: &[f32], w: &[f32], b: &[f32], out: &[f32]) {
        for r in 0..rows {
            let row: Vec<f64> = x[r * dim..(r + 1) * dim]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mean = row.iter().sum::<f64>() / dim as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
            for c in 0..dim {
                let want = (row[c] - mean) / (var + 1e-5).sqrt() * w[c] as f64 + b[c] as f64;
                assert!((out[r * dim + c] as f64 - want).abs() < 1e-4, "{r},{c}");
            }
        }
    }
}
