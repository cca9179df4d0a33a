//! Fused attention on the GPU against an f64 reference: exact f32 path within 1e-4
//! relative, bf16 tensor-core path within 1e-2, every output written, same bits on a
//! second run. Skips (and says why) without a CUDA driver. Kernels: embedded cubins, or
//! `MIAD_CUBIN_DIR/<name>.cubin` when set.
//! With `MIAD_BENCH=1` it also times both paths at ViT-B/8 and Point-MAE sizes.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use miad::config::{PointConfig, VitConfig};
use miad::cuda::transformer::{driver_present, load_cubin_module, Attention, ATTENTION_HEAD_DIM};
use miad::util::rng::Rng;

fn setup() -> Option<(Arc<CudaContext>, Arc<CudaStream>, Attention)> {
    if !driver_present() {
        eprintln!("skipped: no CUDA driver on this machine");
        return None;
    }
    let ctx = match CudaContext::new(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            return None;
        }
    };
    let stream = ctx.default_stream();
    let module = load_cubin_module(&ctx, "attention").expect("attention kernels load");
    let att = Attention::new(&module).expect("attention kernels found");
    Some((ctx, stream, att))
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

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

fn check_shape(stream: &Arc<CudaStream>, att: &Attention, n: usize, heads: usize, seed: u64) {
    let w = heads * ATTENTION_HEAD_DIM;
    let mut rng = Rng::new(seed);
    let mut qkv = vec![0.0f32; n * 3 * w];
    rng.fill_normal(&mut qkv, 1.5);
    let scale = (ATTENTION_HEAD_DIM as f32).powf(-0.5);

    // f32 path.
    let want = reference(&qkv, n, heads, scale as f64);
    let d_qkv = stream.clone_htod(&qkv).unwrap();
    let mut d_out = stream.clone_htod(&vec![f32::NAN; n * w]).unwrap();
    att.run_f32(stream, &d_qkv, &mut d_out, n, heads, scale)
        .unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();
    let (rel, maxrel) = rel_err(&got, &want);
    eprintln!("attention f32  n={n} heads={heads}: rel {rel:.2e}, max/maxref {maxrel:.2e}");
    assert!(
        rel < 1e-5 && maxrel < 1e-4,
        "f32 attention off: {rel:e} {maxrel:e}"
    );
    att.run_f32(stream, &d_qkv, &mut d_out, n, heads, scale)
        .unwrap();
    let again = stream.clone_dtoh(&d_out).unwrap();
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
    let d_qkv16 = stream.clone_htod(&qkv16).unwrap();
    let mut d_out16 = stream.clone_htod(&vec![0x7fc0u16; n * w]).unwrap();
    att.run_bf16(stream, &d_qkv16, &mut d_out16, n, heads, scale)
        .unwrap();
    let got16: Vec<f32> = stream
        .clone_dtoh(&d_out16)
        .unwrap()
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
    att.run_bf16(stream, &d_qkv16, &mut d_out16, n, heads, scale)
        .unwrap();
    let again16: Vec<f32> = stream
        .clone_dtoh(&d_out16)
        .unwrap()
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
    let Some((_ctx, stream, att)) = setup() else {
        return;
    };
    let vit = VitConfig::base8();
    let point = PointConfig::m3dm();
    // ViT-B/8 (785 x 12), Point-MAE (1024 x 6 per the point config), and a ragged size.
    check_shape(&stream, &att, vit.tokens(), vit.heads as usize, 1);
    check_shape(
        &stream,
        &att,
        point.num_groups as usize,
        point.heads as usize,
        2,
    );
    check_shape(&stream, &att, 77, 3, 3);
}

#[test]
fn attention_rejects_bad_sizes() {
    let Some((_ctx, stream, att)) = setup() else {
        return;
    };
    let qkv = stream.alloc_zeros::<f32>(10).unwrap();
    let mut out = stream.alloc_zeros::<f32>(10).unwrap();
    assert!(att.run_f32(&stream, &qkv, &mut out, 4, 2, 0.125).is_err());
    assert!(att.run_f32(&stream, &qkv, &mut out, 0, 2, 0.125).is_err());
}

#[test]
fn attention_bench() {
    if std::env::var_os("MIAD_BENCH").is_none() {
        eprintln!("skipped: set MIAD_BENCH=1 to time the kernels");
        return;
    }
    let Some((ctx, stream, att)) = setup() else {
        return;
    };
    let scale = 0.125f32;
    for (name, n, heads) in [("ViT-B/8", 785usize, 12usize), ("Point-MAE", 1024, 6)] {
        let w = heads * ATTENTION_HEAD_DIM;
        let mut qkv = vec![0.0f32; n * 3 * w];
        Rng::new(9).fill_normal(&mut qkv, 1.0);
        let d32 = stream.clone_htod(&qkv).unwrap();
        let mut o32 = stream.alloc_zeros::<f32>(n * w).unwrap();
        let d16 = stream.clone_htod(&bf16_bits(&qkv)).unwrap();
        let mut o16 = stream.alloc_zeros::<u16>(n * w).unwrap();
        let reps = 200;
        let flop = Attention::flops(n, heads);
        for path in ["f32", "bf16"] {
            let mut times = Vec::new();
            for _ in 0..5 {
                let start = ctx
                    .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                let stop = ctx
                    .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                start.record(&stream).unwrap();
                for _ in 0..reps {
                    if path == "f32" {
                        att.run_f32(&stream, &d32, &mut o32, n, heads, scale)
                            .unwrap();
                    } else {
                        att.run_bf16(&stream, &d16, &mut o16, n, heads, scale)
                            .unwrap();
                    }
                }
                stop.record(&stream).unwrap();
                stream.synchronize().unwrap();
                times.push(start.elapsed_ms(&stop).unwrap() as f64 / reps as f64);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = times[2];
            println!(
                "BENCH attention {name} {path}: {:.2} us/call, {:.1} TFLOP/s",
                t * 1e3,
                flop / (t * 1e-3) / 1e12
            );
        }
    }
}

#[test]
fn layernorm_add_gelu_match_f64() {
    let Some((ctx, stream, _att)) = setup() else {
        return;
    };
    let module = load_cubin_module(&ctx, "layernorm").expect("layernorm kernels load");
    let ew = miad::cuda::transformer::Elementwise::new(&module).unwrap();
    let vit = VitConfig::base8();
    let (rows, cols) = (vit.tokens(), vit.dim as usize);
    let mut rng = Rng::new(5);
    let mut x = vec![0.0f32; rows * cols];
    rng.fill_normal(&mut x, 2.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v += (i % 7) as f32; // non-zero mean per row
    }
    let mut gamma = vec![0.0f32; cols];
    let mut beta = vec![0.0f32; cols];
    rng.fill_normal(&mut gamma, 1.0);
    rng.fill_normal(&mut beta, 1.0);
    let eps = vit.ln_eps;
    let mut want = vec![0.0f64; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..][..cols];
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        for c in 0..cols {
            want[r * cols + c] = (row[c] as f64 - mean) / (var + eps as f64).sqrt()
                * gamma[c] as f64
                + beta[c] as f64;
        }
    }
    let dx = stream.clone_htod(&x).unwrap();
    let dg = stream.clone_htod(&gamma).unwrap();
    let db = stream.clone_htod(&beta).unwrap();
    let mut dy = stream.clone_htod(&vec![f32::NAN; rows * cols]).unwrap();
    ew.layernorm_f32(&stream, &dx, &dg, &db, &mut dy, rows, cols, eps)
        .unwrap();
    let got = stream.clone_dtoh(&dy).unwrap();
    let (rel, maxrel) = rel_err(&got, &want);
    eprintln!("layernorm f32: rel {rel:.2e}, max {maxrel:.2e}");
    assert!(rel < 1e-6 && maxrel < 1e-5);
    let mut dy16 = stream.clone_htod(&vec![0x7fc0u16; rows * cols]).unwrap();
    ew.layernorm_bf16(&stream, &dx, &dg, &db, &mut dy16, rows, cols, eps)
        .unwrap();
    let got16: Vec<f32> = stream
        .clone_dtoh(&dy16)
        .unwrap()
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect();
    let (rel16, _) = rel_err(&got16, &want);
    eprintln!("layernorm bf16 out: rel {rel16:.2e}");
    assert!(rel16 < 1e-2);

    // y = gelu(y + bias) then y += x.
    let bias: Vec<f32> = beta.clone();
    let mut want2 = vec![0.0f64; rows * cols];
    for i in 0..rows * cols {
        let v = got[i] as f64 + bias[i % cols] as f64;
        want2[i] = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)) + x[i] as f64;
    }
    ew.bias_gelu_f32(&stream, &mut dy, &db).unwrap();
    ew.add_f32(&stream, &mut dy, &dx).unwrap();
    let got2 = stream.clone_dtoh(&dy).unwrap();
    let (rel2, max2) = rel_err(&got2, &want2);
    eprintln!("bias+gelu+residual f32: rel {rel2:.2e}, max {max2:.2e}");
    assert!(rel2 < 1e-6 && max2 < 1e-5);
}
