//! Fused attention on the GPU against an f64 reference: exact f32 path within 1e-4
//! relative, bf16 tensor-core path within 1e-2, every output written, same bits on a
//! second run. Without a GPU it runs on the simulated device (feature `cuda-sim`, two
//! heads) or skips and says why. Kernels: `Module::load`
//! (`MIAD_CUBIN_DIR/<name>.cubin` when set, else the embedded cubin, else NVRTC).
//! The timing of both paths at ViT-B/8 and Point-MAE sizes is `attention` in bench/cuda/.

use miad::config::{PointConfig, VitConfig};
use miad::cuda::ops::attention::{Attention, ATTENTION_HEAD_DIM};
use miad::cuda::ops::gelu::Elementwise;
use miad::cuda::Device;
use miad::util::rng::Rng;

use crate::shared::transformer::{bf16_bits, Buf};

fn setup() -> Option<(Device, Attention)> {
    let dev = crate::test_device("cuda_transformer")?;
    let att = Attention::new(&dev).expect("attention kernels load");
    Some((dev, att))
}

/// f64 reference attention, same layout as the kernels.
fn reference(qkv: &[f32], n: usize, heads: usize, scale: f64) -> Vec<f64> {
    let d = ATTENTION_HEAD_DIM;
    let w = heads * d;
    let mut out = vec![0.0f64; n * w];
    let chunks: Vec<(usize, &mut [f64])> = out.chunks_mut(w).enumerate().collect();
    let per = chunks.len().div_ceil(16);
    let mut chunks = chunks;
    std::thread::scope(|s| {
        while !chunks.is_empty() {
            let rest = chunks.split_off(chunks.len().min(per));
            let mine = std::mem::replace(&mut chunks, rest);
            s.spawn(move || {
                let mut p = vec![0.0f64; n];
                for (i, row) in mine {
                    for h in 0..heads {
                        let q = &qkv[i * 3 * w + h * d..][..d];
                        let mut mx = f64::NEG_INFINITY;
                        for (j, pj) in p.iter_mut().enumerate() {
                            let k = &qkv[j * 3 * w + w + h * d..][..d];
                            let s: f64 = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                            *pj = s * scale;
                            mx = mx.max(*pj);
                        }
                        let mut sum = 0.0;
                        for pj in p.iter_mut() {
                            *pj = (*pj - mx).exp();
                            sum += *pj;
                        }
                        let o = &mut row[h * d..][..d];
                        for (j, pj) in p.iter().enumerate() {
                            let v = &qkv[j * 3 * w + 2 * w + h * d..][..d];
                            for (oc, vc) in o.iter_mut().zip(v) {
                                *oc += pj / sum * *vc as f64;
                            }
                        }
                    }
                }
            });
        }
    });
    out
}

fn rel_err(got: &[f32], want: &[f64]) -> (f64, f64) {
    let mut num = 0.0;
    let mut den = 0.0;
    let mut max_abs = 0.0f64;
    let mut max_ref = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output (unwritten or NaN)");
        let e = *g as f64 - w;
        num += e * e;
        den += w * w;
        max_abs = max_abs.max(e.abs());
        max_ref = max_ref.max(w.abs());
    }
    ((num / den).sqrt(), max_abs / max_ref)
}

fn check_shape(dev: &Device, att: &Attention, n: usize, heads: usize, seed: u64) {
    let w = heads * ATTENTION_HEAD_DIM;
    let mut rng = Rng::new(seed);
    let mut qkv = vec![0.0f32; n * 3 * w];
    rng.fill_normal(&mut qkv, 1.5);
    let scale = (ATTENTION_HEAD_DIM as f32).powf(-0.5);
    Attention::check_buffers(n, heads, qkv.len(), n * w).unwrap();

    // f32 path.
    let want = reference(&qkv, n, heads, scale as f64);
    let d_qkv = Buf::new(dev, &qkv);
    let d_out = Buf::new(dev, &vec![f32::NAN; n * w]);
    unsafe { att.run_f32(dev, d_qkv.ptr(), d_out.ptr(), n, heads, scale) }.unwrap();
    let got = d_out.read(dev);
    let (rel, maxrel) = rel_err(&got, &want);
    eprintln!("attention f32  n={n} heads={heads}: rel {rel:.2e}, max/maxref {maxrel:.2e}");
    assert!(
        rel < 1e-5 && maxrel < 1e-4,
        "f32 attention off: {rel:e} {maxrel:e}"
    );
    unsafe { att.run_f32(dev, d_qkv.ptr(), d_out.ptr(), n, heads, scale) }.unwrap();
    let again = d_out.read(dev);
    assert!(
        got.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "f32 not deterministic"
    );

    // bf16 path: reference on the bf16-rounded inputs isolates kernel error from input
    // rounding; also report the error against the f32 inputs.
    let qkv16 = bf16_bits(&qkv);
    let qkv_r: Vec<f32> = qkv16
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect();
    let want_r = reference(&qkv_r, n, heads, scale as f64);
    let d_qkv16 = Buf::new(dev, &qkv16);
    let d_out16 = Buf::new(dev, &vec![0x7fc0u16; n * w]);
    // Key splits' partial results (NaN: a partial never written shows in the output).
    let d_parts = Buf::new(dev, &vec![f32::NAN; Attention::parts_len(n, heads).max(1)]);
    unsafe {
        att.run_bf16(
            dev,
            d_qkv16.ptr(),
            d_out16.ptr(),
            d_parts.ptr(),
            n,
            heads,
            scale,
        )
    }
    .unwrap();
    let got16: Vec<f32> = d_out16
        .read(dev)
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect();
    let (rel_r, max_r) = rel_err(&got16, &want_r);
    let (rel_f, _) = rel_err(&got16, &want);
    eprintln!(
        "attention bf16 n={n} heads={heads}: rel {rel_r:.2e} (max {max_r:.2e}) vs bf16 inputs, {rel_f:.2e} vs f32 inputs"
    );
    assert!(
        rel_r < 1e-2 && rel_f < 1e-2,
        "bf16 attention off: {rel_r:e} {rel_f:e}"
    );
    unsafe {
        att.run_bf16(
            dev,
            d_qkv16.ptr(),
            d_out16.ptr(),
            d_parts.ptr(),
            n,
            heads,
            scale,
        )
    }
    .unwrap();
    let again16: Vec<f32> = d_out16
        .read(dev)
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect();
    assert!(
        got16
            .iter()
            .zip(&again16)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "bf16 not deterministic"
    );
}

#[test]
fn attention_matches_f64_reference() {
    let Some((dev, att)) = setup() else {
        return;
    };
    let vit = VitConfig::base8();
    let point = PointConfig::m3dm();
    // ViT-B/8 (785 x 12), Point-MAE (1024 x 6 per the point config), and a ragged size.
    // The simulated device (the kernels emulated on the CPU) runs the model-sized cases
    // with two heads: every tile shape, a fraction of the work.
    let heads = |h: u32| if dev.is_simulated() { 2 } else { h as usize };
    check_shape(&dev, &att, vit.tokens(), heads(vit.heads), 1);
    check_shape(&dev, &att, point.num_groups as usize, heads(point.heads), 2);
    check_shape(&dev, &att, 77, 3, 3);
}

#[test]
fn attention_rejects_bad_sizes() {
    // Host-side checks: no GPU needed.
    assert!(Attention::check_buffers(4, 2, 10, 10).is_err());
    assert!(Attention::check_buffers(0, 2, 10, 10).is_err());
    assert!(Attention::check_shape(0, 2).is_err());
    assert!(Attention::check_shape(4, 0).is_err());
    let Some((dev, att)) = setup() else {
        return;
    };
    // A launch with an invalid shape is refused before it reaches the device.
    let buf = Buf::new(&dev, &[0.0f32; 10]);
    assert!(unsafe { att.run_f32(&dev, buf.ptr(), buf.ptr(), 0, 2, 0.125) }.is_err());
    assert!(unsafe { att.run_f32(&dev, buf.ptr(), buf.ptr(), 4, 0, 0.125) }.is_err());
}

#[test]
fn bias_gelu_matches_f64() {
    let Some((dev, _att)) = setup() else {
        return;
    };
    let ew = Elementwise::new(&dev).expect("gelu kernel loads");
    let vit = VitConfig::base8();
    let (rows, cols) = (vit.tokens(), vit.mlp_dim as usize);
    let mut rng = Rng::new(5);
    let mut y = vec![0.0f32; rows * cols];
    rng.fill_normal(&mut y, 2.0);
    let mut bias = vec![0.0f32; cols];
    rng.fill_normal(&mut bias, 1.0);
    let want: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = *v as f64 + bias[i % cols] as f64;
            0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
        })
        .collect();
    let dy = Buf::new(&dev, &y);
    let db = Buf::new(&dev, &bias);
    unsafe { ew.bias_gelu_f32(&dev, dy.ptr(), db.ptr(), rows, cols) }.unwrap();
    let got = dy.read(&dev);
    let (rel, maxrel) = rel_err(&got, &want);
    eprintln!("bias+gelu f32: rel {rel:.2e}, max {maxrel:.2e}");
    assert!(rel < 1e-6 && maxrel < 1e-5);
}

#[test]
fn elementwise_rejects_bad_sizes() {
    let Some((dev, _att)) = setup() else {
        return;
    };
    let ew = Elementwise::new(&dev).expect("gelu kernel loads");
    let b = Buf::new(&dev, &[0.0f32; 16]);
    let p = b.ptr();
    assert!(unsafe { ew.bias_gelu_f32(&dev, p, p, 4, 0) }.is_err());
    assert!(unsafe { ew.bias_gelu_f32(&dev, p, p, 0, 4) }.is_err());
}
