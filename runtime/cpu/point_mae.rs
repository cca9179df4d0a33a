//! The Point-MAE encoder (SPEC §3.3–3.6) on the CPU: group encoder (mini-PointNet with
//! BatchNorm folded into conv1/conv3), position embedding of the centers, pre-norm blocks
//! with the position embedding added before every block, and the outputs of
//! `cfg.out_layers` through the final LayerNorm, concatenated.
//!
//! Group encoder layout: groups are processed [`GROUPS_PER_TASK`] at a time (one pool
//! task each, its buffers in per-worker scratch). conv3 acts on [g broadcast, f]; it is
//! split as W3[:, C2..]·f (one GEMM over all rows) plus W3[:, ..C2]·g + b3 (one small GEMM
//! per task, added per group with the ReLU), so the 2·C2-wide concatenation is never built.

use super::dense::{dense, DensePrecision, PackedWeight};
use super::gemm::{linear, Epilogue, Mat};
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
/// the per-point half of conv3, conv4 and every block. conv1 (3 inputs), the per-group
/// half of conv3 (one row per group) and the position embedding stay f32, packed as they
/// go: they are a small share of the work, and the bf16 path keeps the coordinates exact.
pub struct PointMaePacked {
    pub conv2: PackedWeight,
    pub conv3_local: PackedWeight,
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

fn encoder_worker_len(cfg: &PointConfig) -> usize {
    let (c1, c2, c3, d) = widths(cfg);
    let rows = GROUPS_PER_TASK * cfg.group_size as usize;
    rows * (3 + c1.max(c3) + c2.max(d)) + GROUPS_PER_TASK * (c2 + c3)
}

/// Scratch floats [`point_mae_forward`] needs on `threads` workers.
pub fn point_mae_scratch_len(cfg: &PointConfig, threads: usize) -> usize {
    let m = cfg.num_groups as usize;
    let d = cfg.dim as usize;
    let enc = threads.max(1) * encoder_worker_len(cfg);
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
    let (c1, c2, c3, d) = widths(cfg);
    let m = cfg.num_groups as usize;
    let s = cfg.group_size as usize;
    let ph = cfg.pos_hidden as usize;
    let fd = cfg.feature_dim();
    assert!(center_idx.len() >= m && group_idx.len() >= m * s && points.len() >= 3 * n);
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
    let pt = |i: u32| {
        let i = i as usize;
        assert!(i < n, "point index {i} of {n}");
        [points[3 * i], points[3 * i + 1], points[3 * i + 2]]
    };
    for (c, &ci) in centers.chunks_exact_mut(3).zip(&center_idx[..m]) {
        c.copy_from_slice(&pt(ci));
    }

    // group encoder
    let wl = encoder_worker_len(cfg);
    let work = SharedMut::new(&mut rest[..pool.threads() * wl]);
    let xp = SharedMut::new(&mut *x);
    let centers_ro = &*centers;
    let [(w1, b1), (w2, b2), (w3, b3), (w4, b4)] = w.conv;
    pool.run(m.div_ceil(GROUPS_PER_TASK), &|task, worker| {
        // SAFETY: per-worker scratch; task owns groups g0..g1 (rows of x).
        let ws = unsafe { work.slice(worker * wl, wl) };
        let g0 = task * GROUPS_PER_TASK;
        let g1 = (g0 + GROUPS_PER_TASK).min(m);
        let gn = g1 - g0;
        let rows = gn * s;
        let full = GROUPS_PER_TASK * s;
        let (rel, rest) = ws.split_at_mut(3 * full);
        let (ha, rest) = rest.split_at_mut(full * c1.max(c3));
        let (hb, rest) = rest.split_at_mut(full * c2.max(d));
        let (gmax, gbias) = rest.split_at_mut(GROUPS_PER_TASK * c2);
        for gi in 0..gn {
            let c = &centers_ro[3 * (g0 + gi)..3 * (g0 + gi) + 3];
            for j in 0..s {
                let p = pt(group_idx[(g0 + gi) * s + j]);
                let r = &mut rel[3 * (gi * s + j)..3 * (gi * s + j) + 3];
                r[0] = p[0] - c[0];
                r[1] = p[1] - c[1];
                r[2] = p[2] - c[2];
            }
        }
        linear(
            pool,
            Mat::new(rel, rows, 3),
            Mat::new(w1, c1, 3),
            Some(b1),
            ha,
            c1,
            Epilogue::Relu,
        );
        dense(
            pool,
            Mat::new(ha, rows, c1),
            Mat::new(w2, c2, c1),
            packed.map(|p| &p.conv2),
            Some(b2),
            hb,
            c2,
            Epilogue::None,
        );
        for gi in 0..gn {
            let gm = &mut gmax[gi * c2..(gi + 1) * c2];
            gm.copy_from_slice(&hb[gi * s * c2..(gi * s + 1) * c2]);
            for j in 1..s {
                let row = &hb[(gi * s + j) * c2..(gi * s + j + 1) * c2];
                for (a, &v) in gm.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            }
        }
        linear(
            pool,
            Mat::new(gmax, gn, c2),
            conv3_global(w3, c2, c3),
            Some(b3),
            gbias,
            c3,
            Epilogue::None,
        );
        dense(
            pool,
            Mat::new(hb, rows, c2),
            conv3_local(w3, c2, c3),
            packed.map(|p| &p.conv3_local),
            None,
            ha,
            c3,
            Epilogue::None,
        );
        for gi in 0..gn {
            let gb = &gbias[gi * c3..(gi + 1) * c3];
            for j in 0..s {
                let row = &mut ha[(gi * s + j) * c3..(gi * s + j + 1) * c3];
                for (v, &b) in row.iter_mut().zip(gb) {
                    *v = (*v + b).max(0.0);
                }
            }
        }
        dense(
            pool,
            Mat::new(ha, rows, c3),
            Mat::new(w4, d, c3),
            packed.map(|p| &p.conv4),
            Some(b4),
            hb,
            d,
            Epilogue::None,
        );
        let xrow = unsafe { xp.slice(g0 * d, gn * d) };
        for gi in 0..gn {
            let t = &mut xrow[gi * d..(gi + 1) * d];
            t.copy_from_slice(&hb[gi * s * d..(gi * s + 1) * d]);
            for j in 1..s {
                let row = &hb[(gi * s + j) * d..(gi * s + j + 1) * d];
                for (a, &v) in t.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            }
        }
    });

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
