//! CPU references of the device forwards, for the parity tests (tests/cuda/forward.rs) and
//! the bench (bench/cuda/forward.rs).

use miad::backend::Precision;
use miad::config::{PointConfig, VitConfig};
use miad::cpu::gemm::{linear, Epilogue, Mat};
use miad::cpu::point_mae::{block_shape as point_block_shape, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::cpu::transformer::{block_forward, block_scratch_len, layer_norm};
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::cuda::device::gemm::cublaslt_present;
use miad::cuda::Device;
use miad::format::OwnedTensors;
use miad::util::rng::Rng;

/// Tolerance of the f32 path against the CPU (the two differ only in summation order).
pub const F32_TOL: f64 = 1e-4;
pub const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Bf16];

pub fn device(test: &str) -> Option<Device> {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_forward {test}: SKIP, no usable GPU: {e}");
            return None;
        }
    };
    if !cublaslt_present() {
        eprintln!(
            "cuda_forward {test}: SKIP, {} has a driver but the cuBLASLt library (libcublasLt.so.12) cannot be loaded",
            dev.name
        );
        return None;
    }
    eprintln!("cuda_forward {test}: {} (sm_{})", dev.name, dev.sm());
    Some(dev)
}

pub fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    rng.fill_normal(&mut v, std);
    v
}

/// (‖Δ‖/‖ref‖, max |Δ| / max |ref|); panics on a non-finite output.
pub fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "output length");
    let (mut num, mut den, mut max_d, mut max_r) = (0f64, 0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "non-finite output at {i}: {g}");
        let d = (g as f64 - w as f64).abs();
        num += d * d;
        den += (w as f64) * (w as f64);
        max_d = max_d.max(d);
        max_r = max_r.max((w as f64).abs());
    }
    assert!(den > 0.0, "all-zero reference");
    ((num / den).sqrt(), max_d / max_r)
}

pub fn cpu_vit(pool: &Pool, vc: &VitConfig, t: &OwnedTensors, input: &[f32]) -> Vec<f32> {
    let w = VitWeights::load(t, vc).unwrap();
    let mut out = vec![0f32; vc.patches() * vc.dim as usize];
    let mut scratch = vec![0f32; vit_scratch_len(vc, pool.threads())];
    vit_forward(pool, vc, &w, input, &mut out, &mut scratch).unwrap();
    out
}

/// The transformer part of `point_mae_forward` (position MLP, `x = Block_i(x + pos)`,
/// selected outputs through the final norm) on given tokens, from the CPU's public pieces,
/// in the same order.
pub fn cpu_point_blocks(
    pool: &Pool,
    pc: &PointConfig,
    t: &OwnedTensors,
    tokens: &[f32],
    centers: &[f32],
) -> Vec<f32> {
    let w = PointMaeWeights::load(t, pc).unwrap();
    let (m, d, ph, fd) = (
        pc.num_groups as usize,
        pc.dim as usize,
        pc.pos_hidden as usize,
        pc.feature_dim(),
    );
    let mut pos_h = vec![0f32; m * ph];
    linear(
        pool,
        Mat::new(centers, m, 3),
        Mat::new(w.pos1.0, ph, 3),
        Some(w.pos1.1),
        &mut pos_h,
        ph,
        Epilogue::Gelu,
    );
    let mut pos = vec![0f32; m * d];
    linear(
        pool,
        Mat::new(&pos_h, m, ph),
        Mat::new(w.pos2.0, d, ph),
        Some(w.pos2.1),
        &mut pos,
        d,
        Epilogue::None,
    );
    let shape = point_block_shape(pc);
    let mut scratch = vec![0f32; block_scratch_len(&shape, pool.threads())];
    let mut x = tokens.to_vec();
    let mut normed = vec![0f32; m * d];
    let mut out = vec![f32::NAN; m * fd];
    for (i, bw) in w.blocks.iter().enumerate() {
        x.iter_mut().zip(&pos).for_each(|(a, p)| *a += p);
        block_forward(pool, &shape, bw, &mut x, &mut scratch);
        if let Some(slot) = pc.out_layers.iter().position(|&l| l as usize == i) {
            layer_norm(pool, m, d, &x, &mut normed, w.norm.0, w.norm.1, pc.ln_eps);
            for (g, row) in normed.chunks_exact(d).enumerate() {
                out[g * fd + slot * d..][..d].copy_from_slice(row);
            }
        }
    }
    out
}
