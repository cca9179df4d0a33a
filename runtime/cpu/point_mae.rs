//! The Point-MAE encoder (SPEC §3.3–3.6) on the CPU: group encoder (mini-PointNet with
//! BatchNorm folded into conv1/conv3), position embedding of the centers, pre-norm blocks
//! with the position embedding added before every block, and the outputs of
//! `cfg.out_layers` through the final LayerNorm, concatenated.
//!
//! Group encoder layout: groups are processed [`GROUPS_PER_TASK`] at a time (one pool
//! task each, its buffers in per-worker scratch). conv1 (3 inputs) is a plain loop, conv2
//! one GEMM over the task's rows. conv3 acts on [g broadcast, f]; it is split as
//! W3[:, C2..]·f plus W3[:, ..C2]·g + b3 (one small GEMM per task), so the 2·C2-wide
//! concatenation is never built. With packed weights the rest runs in chunks of rows
//! (groups may straddle them), so that its activations stay in cache between the passes:
//! conv3's GEMM over the points, the group's term and the ReLU, conv4's GEMM, the running
//! maximum per group.

use super::dense::{dense_in_task, DensePrecision, PackedWeight};
use super::gemm::{isa, linear, Epilogue, Isa, Mat};
use super::pool::{Pool, SharedMut};
use super::transformer::{
    block_forward_with, block_scratch_len, layer_norm, BlockPacked, BlockShape, BlockWeights,
};
use crate::config::PointConfig;
use crate::format::TensorSource;
use crate::{Error, Result};

/// Groups per encoder task.
pub const GROUPS_PER_TASK: usize = 8;

/// The encoder's weights, borrowed from a tensor source (names in `config.rs`).
pub struct PointMaeWeights<'a> {
    pub conv: [(&'a [f32], &'a [f32]); 4],
    pub pos1: (&'a [f32], &'a [f32]),
    pub pos2: (&'a [f32], &'a [f32]),
    pub blocks: Vec<BlockWeights<'a>>,
    pub norm: (&'a [f32], &'a [f32]),
}

fn widths(cfg: &PointConfig) -> (usize, usize, usize, usize) {
    let [c1, c2, c3] = cfg.encoder_widths;
    (c1 as usize, c2 as usize, c3 as usize, cfg.dim as usize)
}

/// The block sizes of the encoder.
pub fn block_shape(cfg: &PointConfig) -> BlockShape {
    BlockShape {
        tokens: cfg.num_groups as usize,
        dim: cfg.dim as usize,
        heads: cfg.heads as usize,
        mlp_dim: cfg.mlp_dim as usize,
        ln_eps: cfg.ln_eps,
    }
}

/// Refuses configurations the encoder cannot run.
pub fn check_config(cfg: &PointConfig) -> Result<()> {
    let (c1, c2, c3, d) = widths(cfg);
    if cfg.num_groups == 0 || cfg.group_size == 0 || c1 * c2 * c3 * d == 0 || cfg.pos_hidden == 0 {
        return Err(Error::Config(format!(
            "point encoder with a zero size: {cfg:?}"
        )));
    }
    if cfg.out_layers.is_empty() || cfg.out_layers.iter().any(|&l| l >= cfg.depth) {
        return Err(Error::Config(format!(
            "point encoder out_layers {:?} outside its {} blocks",
            cfg.out_layers, cfg.depth
        )));
    }
    if !cfg.dim.is_multiple_of(cfg.heads.max(1))
        || cfg.heads == 0
        || cfg.mlp_dim == 0
        || cfg.depth == 0
    {
        return Err(Error::Config(format!(
            "point encoder: width {} with {} heads, mlp {}, depth {}",
            cfg.dim, cfg.heads, cfg.mlp_dim, cfg.depth
        )));
    }
    if !(cfg.ln_eps > 0.0 && cfg.ln_eps.is_finite()) {
        return Err(Error::Config(format!(
            "point encoder LayerNorm eps {}",
            cfg.ln_eps
        )));
    }
    Ok(())
}

impl<'a> PointMaeWeights<'a> {
    pub fn load<S: TensorSource + ?Sized>(src: &'a S, cfg: &PointConfig) -> Result<Self> {
        check_config(cfg)?;
        let (c1, c2, c3, d) = widths(cfg);
        let ph = cfg.pos_hidden as usize;
        let wb = |name: &str, o: usize, i: usize| -> Result<(&'a [f32], &'a [f32])> {
            Ok((
                src.f32(&format!("point.{name}.weight"), &[o, i])?,
                src.f32(&format!("point.{name}.bias"), &[o])?,
            ))
        };
        let shape = block_shape(cfg);
        let blocks = (0..cfg.depth)
            .map(|i| BlockWeights::load(src, &format!("point.blocks.{i}."), &shape, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(PointMaeWeights {
            conv: [
                wb("encoder.conv1", c1, 3)?,
                wb("encoder.conv2", c2, c1)?,
                wb("encoder.conv3", c3, 2 * c2)?,
                wb("encoder.conv4", d, c3)?,
            ],
            pos1: wb("pos_embed.fc1", ph, 3)?,
            pos2: wb("pos_embed.fc2", d, ph)?,
            blocks,
            norm: (
                src.f32("point.norm.weight", &[d])?,
                src.f32("point.norm.bias", &[d])?,
            ),
        })
    }
}

/// The encoder's large dense weights packed once ([`PackedWeight`], f32 or bf16): conv2,
/// the per-point half of conv3, conv4 and every block; the per-group half of conv3 (one
/// row per group) packed once in f32. conv1 (3 inputs) and the position embedding stay
/// f32: they are a small share of the work, and the bf16 path keeps the coordinates exact.
pub struct PointMaePacked {
    pub conv2: PackedWeight,
    pub conv3_local: PackedWeight,
    /// conv3's weight on the per-group maximum: always f32 (one row per group).
    pub conv3_global: PackedWeight,
    pub conv4: PackedWeight,
    pub blocks: Vec<BlockPacked>,
}

impl PointMaePacked {
    /// `None` for bf16 where the CPU has no AVX512-BF16.
    pub fn new(
        cfg: &PointConfig,
        w: &PointMaeWeights<'_>,
        precision: DensePrecision,
    ) -> Option<PointMaePacked> {
        let (c1, c2, c3, d) = widths(cfg);
        let shape = block_shape(cfg);
        Some(PointMaePacked {
            conv2: PackedWeight::new(Mat::new(w.conv[1].0, c2, c1), precision)?,
            conv3_local: PackedWeight::new(conv3_local(w.conv[2].0, c2, c3), precision)?,
            conv3_global: PackedWeight::new(
                conv3_global(w.conv[2].0, c2, c3),
                DensePrecision::F32,
            )?,
            conv4: PackedWeight::new(Mat::new(w.conv[3].0, d, c3), precision)?,
            blocks: w
                .blocks
                .iter()
                .map(|b| BlockPacked::new(&shape, b, precision))
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// conv3's weight on the per-group maximum `g` (its first `c2` inputs).
fn conv3_global(w3: &[f32], c2: usize, c3: usize) -> Mat<'_> {
    Mat {
        data: w3,
        rows: c3,
        cols: c2,
        stride: 2 * c2,
    }
}

/// conv3's weight on the per-point features `f` (its last `c2` inputs).
fn conv3_local(w3: &[f32], c2: usize, c3: usize) -> Mat<'_> {
    Mat {
        data: &w3[c2..],
        rows: c3,
        cols: c2,
        stride: 2 * c2,
    }
}

/// The row stride of an activation `width` values wide: the width, plus 16 floats where
/// the width is a multiple of 512 floats (2 KiB), whose rows the products would otherwise
/// copy before reading (rows 2 KiB apart share L1 sets).
fn row_stride(width: usize) -> usize {
    if width.is_multiple_of(512) {
        width + 16
    } else {
        width
    }
}

/// `rows × cols` of `data`, rows `stride` apart.
fn strided(data: &[f32], rows: usize, cols: usize, stride: usize) -> Mat<'_> {
    Mat {
        data,
        rows,
        cols,
        stride,
    }
}

/// Rows per chunk of the encoder's conv3 and conv4: a multiple of every kernel's panel
/// (12, 6, 4 rows), so that no panel is partial but a task's last; small enough that a
/// chunk's activations (96 × 512 and 96 × 384 floats) stay in L2 between the passes.
/// Measured on the M3DM sizes (one thread, CPU seconds of the group encoder): 96 rows
/// 0.947 s, 192 rows 0.957 s, a task's 1024 rows 1.023 s.
const CHUNK_ROWS: usize = 96;

/// Rows per chunk of a task's conv3 and conv4: [`CHUNK_ROWS`] (or the task's rows where
/// fewer) with packed weights; without them the whole task, since each product packs its
/// weight (conv3's and conv4's: 1.25 MB) once per call.
fn chunk_rows(s: usize, packed: bool) -> usize {
    let task_rows = GROUPS_PER_TASK * s;
    if packed {
        CHUNK_ROWS.min(task_rows)
    } else {
        task_rows
    }
}

fn encoder_worker_len(cfg: &PointConfig) -> usize {
    let (c1, c2, c3, d) = widths(cfg);
    let s = cfg.group_size as usize;
    let rows = GROUPS_PER_TASK * s;
    rows * (3 + row_stride(c1) + row_stride(c2))
        + chunk_rows(s, false) * (row_stride(c3) + row_stride(d))
        + GROUPS_PER_TASK * (c2 + c3)
}

/// conv1's weight `[c1, 3]` as its three columns, `[3, c1]`, into `out`.
fn transpose_conv1(w1: &[f32], c1: usize, out: &mut [f32]) {
    for (j, w) in w1[..3 * c1].chunks_exact(3).enumerate() {
        for (p, &v) in w.iter().enumerate() {
            out[p * c1 + j] = v;
        }
    }
}

/// `out[r, ..c1] = ReLU(rel[r] · w1ᵀ + b1)` for the rows of `rel` (3 values each), rows of
/// `out` `stride` apart; `w1t` is conv1's weight as `[3, c1]` ([`transpose_conv1`]). The
/// bits of [`super::gemm::linear`] with [`Epilogue::Relu`] (the sum over the three inputs
/// in order from zero, fused multiply-adds where the products use them, then the bias,
/// then the ReLU), without a product's packing and tiles for three inputs.
fn conv1_relu(rel: &[f32], w1t: &[f32], b1: &[f32], out: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: isa() reports only instruction sets this CPU runs; FMA checked.
        Isa::Avx512 if std::arch::is_x86_feature_detected!("fma") => {
            return unsafe { conv1_relu_avx512(rel, w1t, b1, out, stride) }
        }
        // SAFETY: as above (Avx2 includes FMA).
        Isa::Avx2 => return unsafe { conv1_relu_avx2(rel, w1t, b1, out, stride) },
        _ => {}
    }
    if isa() == Isa::Portable {
        conv1_relu_rows::<false>(rel, w1t, b1, out, stride)
    } else {
        conv1_relu_rows::<true>(rel, w1t, b1, out, stride)
    }
}

/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn conv1_relu_avx512(rel: &[f32], w1t: &[f32], b1: &[f32], out: &mut [f32], stride: usize) {
    conv1_relu_rows::<true>(rel, w1t, b1, out, stride)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv1_relu_avx2(rel: &[f32], w1t: &[f32], b1: &[f32], out: &mut [f32], stride: usize) {
    conv1_relu_rows::<true>(rel, w1t, b1, out, stride)
}

/// [`conv1_relu`]'s body: `FMA` as the product kernel of [`isa`] (fused multiply-adds on
/// AVX-512 and AVX2, separate multiply and add in the portable kernel).
#[inline(always)]
fn conv1_relu_rows<const FMA: bool>(
    rel: &[f32],
    w1t: &[f32],
    b1: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    let c1 = b1.len();
    let (w0, rest) = w1t.split_at(c1);
    let (w1, w2) = rest.split_at(c1);
    let madd = |a: f32, w: f32, acc: f32| if FMA { a.mul_add(w, acc) } else { acc + a * w };
    for (r, o) in rel.chunks_exact(3).zip(out.chunks_mut(stride)) {
        let o = &mut o[..c1];
        for j in 0..c1 {
            let v = madd(r[2], w2[j], madd(r[1], w1[j], madd(r[0], w0[j], 0.0)));
            o[j] = (v + b1[j]).max(0.0);
        }
    }
}

/// `out[j] = max over the `rows` rows of `h` (rows `stride` apart) of `h[r, j]`, taken
/// in row order from the first row (NaN and signed zeros as `f32::max` in that order).
fn column_max(h: &[f32], rows: usize, stride: usize, out: &mut [f32]) {
    let w = out.len();
    out.copy_from_slice(&h[..w]);
    for r in 1..rows {
        for (a, &v) in out.iter_mut().zip(&h[r * stride..r * stride + w]) {
            *a = a.max(v);
        }
    }
}

/// Scratch floats [`point_mae_forward`] needs on `threads` workers.
pub fn point_mae_scratch_len(cfg: &PointConfig, threads: usize) -> usize {
    let m = cfg.num_groups as usize;
    let d = cfg.dim as usize;
    let enc = group_encoder_scratch_len(cfg, threads);
    let tail = m * cfg.pos_hidden as usize + 3 * m + d * m;
    let blocks = block_scratch_len(&block_shape(cfg), threads);
    2 * m * d + tail + enc.max(blocks)
}

/// Multiply-adds ×2 of one forward pass (for benches).
pub fn point_mae_flops(cfg: &PointConfig) -> f64 {
    let (c1, c2, c3, d) = widths(cfg);
    let (m, s) = (cfg.num_groups as f64, cfg.group_size as f64);
    let enc = m * s * (3 * c1 + c1 * c2 + c2 * c3 + c3 * d) as f64 + m * (c2 * c3) as f64;
    let pos = m * (3 * cfg.pos_hidden + cfg.pos_hidden * cfg.dim) as f64;
    2.0 * (enc + pos) + cfg.depth as f64 * block_shape(cfg).flops()
}

/// Point `i` of the `n` points `points` (N×3); panics past the end (a caller bug).
fn point_at(points: &[f32], n: usize, i: u32) -> [f32; 3] {
    let i = i as usize;
    assert!(i < n, "point index {i} of {n}");
    [points[3 * i], points[3 * i + 1], points[3 * i + 2]]
}

/// Scratch floats [`group_encoder`] needs on `threads` workers.
pub fn group_encoder_scratch_len(cfg: &PointConfig, threads: usize) -> usize {
    3 * widths(cfg).0 + threads.max(1) * encoder_worker_len(cfg)
}

/// The group encoder (SPEC §3.3): `x` (M × dim) ⟵ the mini-PointNet of each group's
/// points relative to its center, max-pooled; arguments as [`point_mae_forward_with`],
/// `scratch`: [`group_encoder_scratch_len`]`(cfg, pool.threads())`. Zero allocation.
#[allow(clippy::too_many_arguments)]
pub fn group_encoder(
    pool: &Pool,
    cfg: &PointConfig,
    w: &PointMaeWeights<'_>,
    packed: Option<&PointMaePacked>,
    points: &[f32],
    n: usize,
    center_idx: &[u32],
    group_idx: &[u32],
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let (c1, c2, c3, d) = widths(cfg);
    let m = cfg.num_groups as usize;
    let s = cfg.group_size as usize;
    assert!(center_idx.len() >= m && group_idx.len() >= m * s && points.len() >= 3 * n);
    assert!(x.len() >= m * d);
    assert!(scratch.len() >= group_encoder_scratch_len(cfg, pool.threads()));
    let pt = |i: u32| point_at(points, n, i);
    let rest = scratch;
    let wl = encoder_worker_len(cfg);
    let (w1t, rest) = rest.split_at_mut(3 * c1);
    transpose_conv1(w.conv[0].0, c1, w1t);
    let w1t = &*w1t;
    let work = SharedMut::new(&mut rest[..pool.threads() * wl]);
    let xp = SharedMut::new(&mut *x);
    let [(_, b1), (w2, b2), (w3, b3), (w4, b4)] = w.conv;
    let (c1s, c2s, c3s, ds) = (
        row_stride(c1),
        row_stride(c2),
        row_stride(c3),
        row_stride(d),
    );
    pool.run(m.div_ceil(GROUPS_PER_TASK), &|task, worker| {
        // SAFETY: per-worker scratch; task owns groups g0..g1 (rows of x).
        let ws = unsafe { work.slice(worker * wl, wl) };
        let g0 = task * GROUPS_PER_TASK;
        let g1 = (g0 + GROUPS_PER_TASK).min(m);
        let gn = g1 - g0;
        let rows = gn * s;
        let full = GROUPS_PER_TASK * s;
        let (rel, rest) = ws.split_at_mut(3 * full);
        let (h1, rest) = rest.split_at_mut(full * c1s);
        let (h2, rest) = rest.split_at_mut(full * c2s);
        let chunk = chunk_rows(s, packed.is_some());
        let (h3, rest) = rest.split_at_mut(chunk * c3s);
        let (h4, rest) = rest.split_at_mut(chunk * ds);
        let (gmax, gbias) = rest.split_at_mut(GROUPS_PER_TASK * c2);
        for gi in 0..gn {
            let c = pt(center_idx[g0 + gi]);
            for j in 0..s {
                let p = pt(group_idx[(g0 + gi) * s + j]);
                let r = &mut rel[3 * (gi * s + j)..3 * (gi * s + j) + 3];
                r[0] = p[0] - c[0];
                r[1] = p[1] - c[1];
                r[2] = p[2] - c[2];
            }
        }
        conv1_relu(&rel[..3 * rows], w1t, b1, h1, c1s);
        dense_in_task(
            pool,
            strided(h1, rows, c1, c1s),
            Mat::new(w2, c2, c1),
            packed.map(|p| &p.conv2),
            Some(b2),
            h2,
            c2s,
            Epilogue::None,
        );
        for gi in 0..gn {
            let gm = &mut gmax[gi * c2..(gi + 1) * c2];
            column_max(&h2[gi * s * c2s..], s, c2s, gm);
        }
        dense_in_task(
            pool,
            Mat::new(gmax, gn, c2),
            conv3_global(w3, c2, c3),
            packed.map(|p| &p.conv3_global),
            Some(b3),
            gbias,
            c3,
            Epilogue::None,
        );
        // Chunk by chunk of rows, while they are in cache: conv3's GEMM over the points,
        // the group's term and the ReLU, conv4's GEMM, the running maximum per group
        // (rows in order, from each group's first row).
        // SAFETY: rows g0..g1 of x belong to this task.
        let xrow = unsafe { xp.slice(g0 * d, gn * d) };
        let mut r0 = 0;
        while r0 < rows {
            let cr = chunk.min(rows - r0);
            dense_in_task(
                pool,
                strided(&h2[r0 * c2s..], cr, c2, c2s),
                conv3_local(w3, c2, c3),
                packed.map(|p| &p.conv3_local),
                None,
                h3,
                c3s,
                Epilogue::None,
            );
            for (i, row) in h3.chunks_exact_mut(c3s).take(cr).enumerate() {
                let g = (r0 + i) / s;
                for (v, &b) in row.iter_mut().zip(&gbias[g * c3..(g + 1) * c3]) {
                    *v = (*v + b).max(0.0);
                }
            }
            dense_in_task(
                pool,
                strided(h3, cr, c3, c3s),
                Mat::new(w4, d, c3),
                packed.map(|p| &p.conv4),
                Some(b4),
                h4,
                ds,
                Epilogue::None,
            );
            for (i, row) in h4.chunks_exact(ds).take(cr).enumerate() {
                let (g, j) = ((r0 + i) / s, (r0 + i) % s);
                let t = &mut xrow[g * d..(g + 1) * d];
                if j == 0 {
                    t.copy_from_slice(&row[..d]);
                } else {
                    for (a, &v) in t.iter_mut().zip(row) {
                        *a = a.max(v);
                    }
                }
            }
            r0 += cr;
        }
    });
}

/// Group features `out` (M × feature_dim) of the `n` points `points` (N×3) for the
/// centers `center_idx` (M) and their groups `group_idx` (M × group_size), indices into
/// `points`. Zero allocation; `scratch`: [`point_mae_scratch_len`]`(cfg, pool.threads())`.
/// Panics on short buffers or out-of-range indices (caller bugs).
#[allow(clippy::too_many_arguments)]
pub fn point_mae_forward(
    pool: &Pool,
    cfg: &PointConfig,
    w: &PointMaeWeights<'_>,
    points: &[f32],
    n: usize,
    center_idx: &[u32],
    group_idx: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    point_mae_forward_with(
        pool, cfg, w, None, points, n, center_idx, group_idx, out, scratch,
    )
}

/// [`point_mae_forward`] with the large dense layers through their packed weights when
/// `packed` is given ([`PointMaePacked`]; f32: the same bits, bf16: the bf16 path).
#[allow(clippy::too_many_arguments)]
pub fn point_mae_forward_with(
    pool: &Pool,
    cfg: &PointConfig,
    w: &PointMaeWeights<'_>,
    packed: Option<&PointMaePacked>,
    points: &[f32],
    n: usize,
    center_idx: &[u32],
    group_idx: &[u32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let d = cfg.dim as usize;
    let m = cfg.num_groups as usize;
    let ph = cfg.pos_hidden as usize;
    let fd = cfg.feature_dim();
    // The points and indices are checked by the group encoder.
    assert!(out.len() >= m * fd);
    assert!(scratch.len() >= point_mae_scratch_len(cfg, pool.threads()));
    assert!(
        packed.is_none_or(|p| p.blocks.len() == w.blocks.len()),
        "point_mae_forward: packed weights of another encoder"
    );
    let (x, rest) = scratch.split_at_mut(m * d);
    let (pos, rest) = rest.split_at_mut(m * d);
    let (pos_h, rest) = rest.split_at_mut(m * ph);
    let (centers, rest) = rest.split_at_mut(3 * m);
    let (normed, rest) = rest.split_at_mut(m * d);
    let pt = |i: u32| point_at(points, n, i);
    for (c, &ci) in centers.chunks_exact_mut(3).zip(&center_idx[..m]) {
        c.copy_from_slice(&pt(ci));
    }

    group_encoder(
        pool, cfg, w, packed, points, n, center_idx, group_idx, x, rest,
    );

    // position embedding
    linear(
        pool,
        Mat::new(centers, m, 3),
        Mat::new(w.pos1.0, ph, 3),
        Some(w.pos1.1),
        pos_h,
        ph,
        Epilogue::Gelu,
    );
    linear(
        pool,
        Mat::new(pos_h, m, ph),
        Mat::new(w.pos2.0, d, ph),
        Some(w.pos2.1),
        pos,
        d,
        Epilogue::None,
    );

    // blocks: x = Block_i(x + pos); selected outputs through the final norm
    let shape = block_shape(cfg);
    let bscratch = &mut rest[..block_scratch_len(&shape, pool.threads())];
    for (i, bw) in w.blocks.iter().enumerate() {
        for (a, &p) in x.iter_mut().zip(pos.iter()) {
            *a += p;
        }
        let bp = packed.map(|p| &p.blocks[i]);
        block_forward_with(pool, &shape, bw, bp, x, bscratch);
        if let Some(slot) = cfg.out_layers.iter().position(|&l| l as usize == i) {
            layer_norm(pool, m, d, x, normed, w.norm.0, w.norm.1, cfg.ln_eps);
            for (g, row) in normed.chunks_exact(d).enumerate() {
                out[g * fd + slot * d..g * fd + (slot + 1) * d].copy_from_slice(row);
            }
        }
    }
}
