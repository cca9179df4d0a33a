//! The Point-MAE transformer block (SPEC §3.5): `x ← x + Attn(LN₁(x)); x ← x + MLP(LN₂(x))`,
//! qkv without bias, exact GELU, plus the LayerNorm of the final norm.
//!
//! Stand-in until the shared ViT block (`cpu::transformer`) is on main: the math is the
//! same, so the point encoder should switch to it then. Dense layers go through
//! [`linear`]; attention runs one pool task per (head, block of query rows): scores of the
//! block by one GEMM into per-worker scratch, softmax, then one GEMM with V; bits never
//! depend on the thread count.

use super::gemm::{linear, matmul_seq, Epilogue, Mat};
use super::pool::{Pool, SharedMut};
use crate::format::TensorSource;
use crate::Result;

/// Query rows per attention task.
const QUERY_ROWS: usize = 32;

/// Sizes of one block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointBlockShape {
    pub tokens: usize,
    pub dim: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub ln_eps: f32,
}

impl PointBlockShape {
    /// Multiply-adds × 2 of one block.
    pub fn flops(&self) -> f64 {
        let (t, d, h) = (self.tokens as f64, self.dim as f64, self.mlp_dim as f64);
        2.0 * (t * d * 3.0 * d + 2.0 * t * t * d + t * d * d + 2.0 * t * d * h)
    }
}

/// One block's weights (timm names under `prefix`).
pub struct PointBlockWeights<'a> {
    pub norm1: (&'a [f32], &'a [f32]),
    pub qkv_w: &'a [f32],
    pub proj: (&'a [f32], &'a [f32]),
    pub norm2: (&'a [f32], &'a [f32]),
    pub fc1: (&'a [f32], &'a [f32]),
    pub fc2: (&'a [f32], &'a [f32]),
}

impl<'a> PointBlockWeights<'a> {
    pub fn load<S: TensorSource + ?Sized>(
        src: &'a S,
        prefix: &str,
        shape: &PointBlockShape,
    ) -> Result<Self> {
        let (d, h) = (shape.dim, shape.mlp_dim);
        let get = |name: &str, dims: &[usize]| src.f32(&format!("{prefix}{name}"), dims);
        Ok(PointBlockWeights {
            norm1: (get("norm1.weight", &[d])?, get("norm1.bias", &[d])?),
            qkv_w: get("attn.qkv.weight", &[3 * d, d])?,
            proj: (
                get("attn.proj.weight", &[d, d])?,
                get("attn.proj.bias", &[d])?,
            ),
            norm2: (get("norm2.weight", &[d])?, get("norm2.bias", &[d])?),
            fc1: (get("mlp.fc1.weight", &[h, d])?, get("mlp.fc1.bias", &[h])?),
            fc2: (get("mlp.fc2.weight", &[d, h])?, get("mlp.fc2.bias", &[d])?),
        })
    }
}

/// Scratch floats [`point_block_forward`] needs on `threads` workers.
pub fn point_block_scratch_len(shape: &PointBlockShape, threads: usize) -> usize {
    let (t, d) = (shape.tokens, shape.dim);
    t * d + t * (3 * d).max(shape.mlp_dim) + t * d + threads.max(1) * (QUERY_ROWS * t + QUERY_ROWS)
}

/// LayerNorm of `rows` rows of `x` into `out` (statistics in f64, one row per step).
#[allow(clippy::too_many_arguments)]
pub fn point_layer_norm(
    rows: usize,
    dim: usize,
    x: &[f32],
    out: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    for (xr, or) in x[..rows * dim]
        .chunks_exact(dim)
        .zip(out[..rows * dim].chunks_exact_mut(dim))
    {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
        let mean = mean as f32;
        for (((o, &v), &g), &bb) in or.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - mean) * rstd * g + bb;
        }
    }
}

/// `x` (tokens × dim) ← Block(x). No allocation.
pub fn point_block_forward(
    pool: &Pool,
    shape: &PointBlockShape,
    w: &PointBlockWeights<'_>,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let (t, d, hid, heads) = (shape.tokens, shape.dim, shape.mlp_dim, shape.heads);
    let hd = d / heads;
    assert!(scratch.len() >= point_block_scratch_len(shape, pool.threads()));
    let (xn, rest) = scratch.split_at_mut(t * d);
    let (big, rest) = rest.split_at_mut(t * (3 * d).max(hid));
    let (att, rows) = rest.split_at_mut(t * d);
    let x = &mut x[..t * d];

    point_layer_norm(t, d, x, xn, w.norm1.0, w.norm1.1, shape.ln_eps);
    linear(
        pool,
        Mat::new(xn, t, d),
        Mat::new(w.qkv_w, 3 * d, d),
        None,
        big,
        3 * d,
        Epilogue::None,
    );
    let qkv = &*big;
    let scale = 1.0 / (hd as f32).sqrt();
    let chunks = t.div_ceil(QUERY_ROWS);
    let att_p = SharedMut::new(att);
    let rows_p = SharedMut::new(&mut rows[..pool.threads() * (QUERY_ROWS * t + QUERY_ROWS)]);
    let wl = QUERY_ROWS * t + QUERY_ROWS;
    pool.run(heads * chunks, &|task, worker| {
        let (h, ch) = (task / chunks, task % chunks);
        let r0 = ch * QUERY_ROWS;
        let nr = QUERY_ROWS.min(t - r0);
        // SAFETY: per-worker scores; each task writes its head's columns of its rows.
        let ws = unsafe { rows_p.slice(worker * wl, wl) };
        let (sc, sums) = ws.split_at_mut(QUERY_ROWS * t);
        let q = Mat {
            data: &qkv[r0 * 3 * d + h * hd..],
            rows: nr,
            cols: hd,
            stride: 3 * d,
        };
        let k = Mat {
            data: &qkv[d + h * hd..],
            rows: t,
            cols: hd,
            stride: 3 * d,
        };
        let v = Mat {
            data: &qkv[2 * d + h * hd..],
            rows: t,
            cols: hd,
            stride: 3 * d,
        };
        matmul_seq(sc, t, q, k, true, scale, false);
        for (row, sum) in sc.chunks_exact_mut(t).zip(sums.iter_mut()).take(nr) {
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut s = 0f32;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                s += *x;
            }
            *sum = s;
        }
        let o = unsafe { att_p.slice(r0 * d + h * hd, (nr - 1) * d + hd) };
        matmul_seq(o, d, Mat::new(&sc[..nr * t], nr, t), v, false, 1.0, false);
        for (i, &sum) in sums.iter().enumerate().take(nr) {
            let inv = 1.0 / sum;
            o[i * d..i * d + hd].iter_mut().for_each(|a| *a *= inv);
        }
    });
    linear(
        pool,
        Mat::new(att, t, d),
        Mat::new(w.proj.0, d, d),
        Some(w.proj.1),
        x,
        d,
        Epilogue::Accumulate,
    );
    point_layer_norm(t, d, x, xn, w.norm2.0, w.norm2.1, shape.ln_eps);
    linear(
        pool,
        Mat::new(xn, t, d),
        Mat::new(w.fc1.0, hid, d),
        Some(w.fc1.1),
        big,
        hid,
        Epilogue::Gelu,
    );
    linear(
        pool,
        Mat::new(big, t, hid),
        Mat::new(w.fc2.0, d, hid),
        Some(w.fc2.1),
        x,
        d,
        Epilogue::Accumulate,
    );
}
