//! CUDA embed kernels (`kernels/embed.cu`, `miad::cuda::embed`) against the CPU backend
//! (feature `cuda`).
//!
//! Without a GPU every device test runs on the simulated device (feature `cuda-sim`), or
//! prints a SKIP line and passes; the module-table test needs no device. On a GPU machine:
//! `cargo test --release --features cuda --test cuda embed:: -- --nocapture`.
//!
//! Tolerances (stated per check):
//! - bitwise: resize + normalisation vs `pipeline::preprocess`, im2col, token assembly,
//!   position add, pooling vs `cpu::fusion::adaptive_avg_pool`, strided copies, bf16
//!   outputs vs rounding the f32 outputs, and every rerun (determinism);
//! - LayerNorm vs `cpu::transformer::layer_norm_row`: 1e-6 relative (values below 1 in
//!   magnitude: 1e-6 absolute); the f64 statistics differ only in summation order, so
//!   nearly every element is expected bit-equal (the count is printed);
//! - position MLP vs a host emulation of the kernel's own order: 1e-6 relative to the
//!   magnitude of the GELU input (CUDA's `erff` vs `libm::erff`, a few ulp);
//! - end-to-end ViT / Point-MAE embedding chains vs `vit_forward` / `point_mae_forward`
//!   (with neutral blocks): 1e-6 / 1e-5 relative (values below 1: absolute), because the
//!   CPU's dense layers use faer's summation order, which the host GEMM in this test
//!   reproduces for the ViT but not for the Point-MAE position MLP's first layer.

use bytemuck::Pod;
use half::bf16;
use miad::config::{ModelConfig, PointConfig, PreprocessConfig, VitConfig};
use miad::cpu::fusion::adaptive_avg_pool;
use miad::cpu::gemm::{gelu, linear, Epilogue, Mat};
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::cpu::transformer::{layer_norm_row, BlockWeights};
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::cuda::ops::embed::{EmbedKernels, EmbedPlan, ResizeSlots};
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot, KERNEL_MODULES};
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};
use miad::util::rng::Rng;

use crate::oracles::check_layer_norm_fast;

fn device() -> Option<Device> {
    crate::test_device("cuda_embed")
}

#[test]
fn embed_module_is_built_in_with_every_kernel() {
    let m = KERNEL_MODULES
        .iter()
        .find(|m| m.name == "embed")
        .expect("kernels/embed.cu in the module table");
    for k in [
        "pil_coeffs_f32",
        "rgb_resize_h_f32",
        "rgb_resize_v_f32",
        "im2col_f32",
        "im2col_bf16",
        "vit_tokens_f32",
        "pos_fc1_gelu_f32",
        "pos_fc1_gelu_bf16",
        "pos_embed_f32",
        "layernorm_rows_f32",
        "layernorm_rows_bf16",
        "adaptive_pool_f32",
        "copy_rows_f32",
    ] {
        assert!(m.source.contains(k), "embed.cu lacks {k}");
    }
    assert!(m.source.contains("miad_sq_dist"), "common.cuh not inlined");
}

// ---------- device helpers ----------

/// Field order: the kernels (module) are released before the device.
struct Gpu {
    k: EmbedKernels,
    dev: Device,
}

fn gpu(plan: EmbedPlan) -> Option<Gpu> {
    let dev = device()?;
    let k = EmbedKernels::new(&dev, plan).expect("embed module loads");
    Some(Gpu { k, dev })
}

impl Gpu {
    fn put<T: Pod>(&self, a: &Arena, s: Slot<T>, v: &[T]) {
        a.upload(&self.dev, s, v).unwrap();
    }
    fn get<T: Pod + Default + Clone>(&self, a: &Arena, s: Slot<T>, n: usize) -> Vec<T> {
        let mut v = vec![T::default(); n];
        a.download(&self.dev, s, &mut v).unwrap();
        v
    }
    /// All bytes 0xff: NaN for f32 and bf16.
    fn poison<T>(&self, a: &Arena, s: Slot<T>) {
        self.dev.memset_u8(a.ptr(s).raw(), 0xff, s.bytes()).unwrap();
    }
}

fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    rng.fill_normal(&mut v, std);
    v
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

fn assert_finite(what: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{what}[{i}] = {} (not written?)", v[i]);
    }
}

/// |got − want| ≤ rel · max(|want|, 1); returns the number of bit-equal elements.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut exact = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} vs {w} (tolerance {tol})"
        );
        exact += usize::from(g.to_bits() == w.to_bits());
    }
    eprintln!("{what}: {exact} of {} bit-equal", got.len());
    exact
}

fn bf16_of(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

// ---------- RGB input ----------

fn random_image(rng: &mut Rng, w: usize, h: usize, stride: usize) -> Vec<u8> {
    // Noise plus a gradient: clipping (noise) and smooth areas both occur.
    let mut img = vec![0u8; (h - 1) * stride + 3 * w];
    for y in 0..h {
        for x in 0..3 * w {
            let g = ((x / 3 + 2 * y) % 256) as u32;
            let n = (rng.next_u64() >> 57) as u32; // 0..127
            img[y * stride + x] = ((g + n) / 2 + ((x % 3) as u32) * 20).min(255) as u8;
        }
    }
    img
}

fn cpu_rgb_input(
    pre: &PreprocessConfig,
    img: &[u8],
    (w, h, stride): (usize, usize, usize),
    mode: PreprocessMode,
) -> Vec<f32> {
    let mut out = PreprocessOutput::new(pre);
    let mut scratch = vec![0f32; preprocess_scratch_len(pre, w, h)];
    let view = RgbView {
        data: img,
        width: w,
        height: h,
        stride,
    };
    preprocess(pre, Some(view), None, mode, &mut out, &mut scratch).unwrap();
    out.rgb_input
}

/// Runs the GPU resize of `img` (with `mask`, if any) twice; checks determinism and that
/// every output is written; returns the output.
fn gpu_rgb_input(
    g: &Gpu,
    img: &[u8],
    mask: Option<&[u8]>,
    (w, h, stride): (usize, usize, usize),
    mode: PreprocessMode,
) -> Vec<f32> {
    let vp = g.k.plan.vit().unwrap().clone();
    let mut ap = ArenaPlan::new();
    let img_s = ap.add::<u8>(img.len());
    let mask_s = ap.add::<u8>(w * h);
    let rs = ResizeSlots::plan(&vp, &mut ap);
    let out_s = ap.add::<f32>(vp.input_len());
    let arena = Arena::new(&g.dev, &ap).unwrap();
    g.put(&arena, img_s, img);
    let mask_p = match mask {
        Some(m) => {
            g.put(&arena, mask_s, m);
            arena.ptr(mask_s)
        }
        None => DevPtr::null(),
    };
    let geo = vp.rgb_geometry(w, h, stride, mode).unwrap();
    let run = || {
        g.poison(&arena, out_s);
        g.poison(&arena, rs.tmp);
        g.poison(&arena, rs.w_x);
        g.poison(&arena, rs.w_y);
        unsafe {
            g.k.rgb_input(
                &g.dev,
                &geo,
                arena.ptr(img_s),
                mask_p,
                &rs.ptrs(&arena),
                arena.ptr(out_s),
            )
        }
        .unwrap();
        g.get(&arena, out_s, vp.input_len())
    };
    let a = run();
    assert_finite("rgb input", &a);
    assert_bits("rgb input rerun", &run(), &a);
    a
}

fn vit_plan(model: &ModelConfig, w: usize, h: usize) -> EmbedPlan {
    EmbedPlan::new(model.vit.as_ref(), None, &model.preprocess, w, h).unwrap()
}

#[test]
fn rgb_input_matches_cpu_preprocess() {
    let mut rng = Rng::new(1);
    let full = PreprocessMode::Full;
    let clean = PreprocessMode::AlreadyClean;
    // (model, width, height, row padding bytes, mode, with a zero mask)
    let cases = [
        (ModelConfig::m3dm(), 800, 800, 0, full, false),
        (ModelConfig::m3dm(), 250, 180, 7, full, true),
        (ModelConfig::m3dm(), 333, 271, 13, clean, false),
        (ModelConfig::m3dm(), 150, 120, 0, clean, true),
        (ModelConfig::demo(), 400, 300, 4, full, true),
        (ModelConfig::small(), 64, 64, 0, clean, false),
    ];
    for (model, w, h, pad, mode, with_mask) in cases {
        let Some(g) = gpu(vit_plan(&model, w, h)) else {
            return;
        };
        let stride = 3 * w + pad;
        let img = random_image(&mut rng, w, h, stride);
        let mask: Vec<u8> = (0..w * h).map(|_| u8::from(rng.below(10) == 0)).collect();
        // The CPU sees the masked pixels already zeroed (what cleaning does to the RGB).
        let mut cpu_img = img.clone();
        if with_mask {
            for (i, &m) in mask.iter().enumerate() {
                if m != 0 {
                    let o = (i / w) * stride + 3 * (i % w);
                    cpu_img[o..o + 3].fill(0);
                }
            }
        }
        let want = cpu_rgb_input(&model.preprocess, &cpu_img, (w, h, stride), mode);
        let got = gpu_rgb_input(
            &g,
            &img,
            with_mask.then_some(&mask[..]),
            (w, h, stride),
            mode,
        );
        assert_bits(&format!("rgb input {w}×{h} {mode:?}"), &got, &want);
    }
}

// ---------- ViT patch embedding ----------

#[test]
fn im2col_uses_the_conv_weight_order() {
    let model = ModelConfig::m3dm();
    let Some(g) = gpu(vit_plan(&model, 224, 224)) else {
        return;
    };
    let vp = g.k.plan.vit().unwrap().clone();
    let (c, s, p, grid, k) = (vp.chans, vp.side, vp.patch, vp.grid, vp.k);
    let mut rng = Rng::new(2);
    let img = normal(&mut rng, vp.input_len(), 1.0);
    let mut ap = ArenaPlan::new();
    let img_s = ap.add::<f32>(img.len());
    let pf = ap.add::<f32>(vp.patch_matrix_len());
    let pb = ap.add::<bf16>(vp.patch_matrix_len());
    let arena = Arena::new(&g.dev, &ap).unwrap();
    g.put(&arena, img_s, &img);
    let run = || {
        g.poison(&arena, pf);
        g.poison(&arena, pb);
        unsafe {
            g.k.im2col(&g.dev, arena.ptr(img_s), arena.ptr(pf)).unwrap();
            g.k.im2col_bf16(&g.dev, arena.ptr(img_s), arena.ptr(pb))
                .unwrap();
        }
        (
            g.get(&arena, pf, vp.patch_matrix_len()),
            g.get(&arena, pb, vp.patch_matrix_len()),
        )
    };
    let (pm, pmb) = run();
    // Independent unfold: patch (gy, gx), column (ch, ky, kx).
    let mut want = vec![0f32; pm.len()];
    for gy in 0..grid {
        for gx in 0..grid {
            for ch in 0..c {
                for ky in 0..p {
                    for kx in 0..p {
                        want[(gy * grid + gx) * k + (ch * p + ky) * p + kx] =
                            img[(ch * s + gy * p + ky) * s + gx * p + kx];
                    }
                }
            }
        }
    }
    assert_bits("im2col", &pm, &want);
    let bits: Vec<u16> = pmb.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, bf16_of(&pm), "im2col bf16 = rounded f32");
    let (again, again_b) = run();
    assert_bits("im2col rerun", &again, &pm);
    assert_eq!(again_b, pmb);
    // The GEMM against W viewed [dim, C·p·p] is the stride-p convolution (f64, a few
    // output channels of random weights).
    let outs = 5;
    let w = normal(&mut rng, outs * k, 0.1);
    for (gy, gx) in [(0, 0), (3, 17), (grid - 1, grid - 1)] {
        for o in 0..outs {
            let mut conv = 0f64;
            for ch in 0..c {
                for ky in 0..p {
                    for kx in 0..p {
                        conv += w[((o * c + ch) * p + ky) * p + kx] as f64
                            * img[(ch * s + gy * p + ky) * s + gx * p + kx] as f64;
                    }
                }
            }
            let row = &pm[(gy * grid + gx) * k..(gy * grid + gx + 1) * k];
            let gemm: f64 = row
                .iter()
                .zip(&w[o * k..(o + 1) * k])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!((conv - gemm).abs() < 1e-9, "patch ({gy},{gx}) out {o}");
        }
    }
}

#[test]
fn vit_tokens_follow_the_cpu_order() {
    let model = ModelConfig::m3dm();
    let Some(g) = gpu(vit_plan(&model, 224, 224)) else {
        return;
    };
    let vp = g.k.plan.vit().unwrap().clone();
    let (d, np, t) = (vp.dim, vp.patches, vp.tokens);
    let ldg = d + 3;
    let mut rng = Rng::new(3);
    let gm = normal(&mut rng, np * ldg, 1.0);
    let bias = normal(&mut rng, d, 0.1);
    let pos = normal(&mut rng, t * d, 0.02);
    let cls = normal(&mut rng, d, 0.02);
    let mut ap = ArenaPlan::new();
    let gs = ap.add::<f32>(gm.len());
    let bs = ap.add::<f32>(d);
    let ps = ap.add::<f32>(pos.len());
    let cs = ap.add::<f32>(d);
    let xs = ap.add::<f32>(t * d);
    let arena = Arena::new(&g.dev, &ap).unwrap();
    g.put(&arena, gs, &gm);
    g.put(&arena, bs, &bias);
    g.put(&arena, ps, &pos);
    g.put(&arena, cs, &cls);
    let want = |with_bias: bool| -> Vec<f32> {
        let mut x = vec![0f32; t * d];
        for j in 0..d {
            x[j] = cls[j] + pos[j];
        }
        for r in 1..t {
            for j in 0..d {
                let v = pos[r * d + j] + gm[(r - 1) * ldg + j];
                x[r * d + j] = if with_bias { v + bias[j] } else { v };
            }
        }
        x
    };
    for with_bias in [true, false] {
        let b = if with_bias {
            arena.ptr(bs)
        } else {
            DevPtr::null()
        };
        let run = || {
            g.poison(&arena, xs);
            unsafe {
                g.k.vit_tokens(
                    &g.dev,
                    arena.ptr(gs),
                    ldg,
                    b,
                    arena.ptr(ps),
                    arena.ptr(cs),
                    arena.ptr(xs),
                )
            }
            .unwrap();
            g.get(&arena, xs, t * d)
        };
        let x = run();
        assert_bits("tokens", &x, &want(with_bias));
        assert_bits("tokens rerun", &run(), &x);
    }
    // In place: the GEMM output already sits in rows 1.. of x.
    g.poison(&arena, xs);
    let packed: Vec<f32> = (0..np)
        .flat_map(|r| gm[r * ldg..r * ldg + d].iter().copied())
        .collect();
    g.dev
        .upload(arena.ptr(xs).offset(d).raw(), &packed)
        .unwrap();
    let x = arena.ptr(xs);
    unsafe {
        g.k.vit_tokens(
            &g.dev,
            x.offset(d),
            d,
            arena.ptr(bs),
            arena.ptr(ps),
            arena.ptr(cs),
            x,
        )
    }
    .unwrap();
    assert_bits("tokens in place", &g.get(&arena, xs, t * d), &want(true));
}

/// A block whose attention and MLP add exactly zero (zero projections): the forward is
/// then the embedding and the final norm alone.
struct NeutralBlock {
    ones: Vec<f32>,
    zeros: Vec<f32>,
}

impl NeutralBlock {
    fn new(d: usize, hidden: usize) -> Self {
        NeutralBlock {
            ones: vec![1.0; d],
            zeros: vec![0.0; 3 * d * d.max(hidden)],
        }
    }
    fn weights(&self, d: usize, hidden: usize, qkv_bias: bool) -> BlockWeights<'_> {
        let z = &self.zeros;
        BlockWeights {
            norm1_w: &self.ones,
            norm1_b: &z[..d],
            qkv_w: &z[..3 * d * d],
            qkv_b: qkv_bias.then(|| &z[..3 * d]),
            proj_w: &z[..d * d],
            proj_b: &z[..d],
            norm2_w: &self.ones,
            norm2_b: &z[..d],
            fc1_w: &z[..hidden * d],
            fc1_b: &z[..hidden],
            fc2_w: &z[..d * hidden],
            fc2_b: &z[..d],
        }
    }
}

#[test]
fn vit_embedding_chain_matches_vit_forward() {
    let pool = Pool::new(2);
    for mut model in [ModelConfig::small(), ModelConfig::demo()] {
        let vc: &mut VitConfig = model.vit.as_mut().unwrap();
        vc.depth = 1;
        let vc = vc.clone();
        let (w_in, h_in) = (150, 110);
        let Some(g) = gpu(vit_plan(&model, w_in, h_in)) else {
            return;
        };
        let vp = g.k.plan.vit().unwrap().clone();
        let (d, k, np, t) = (vp.dim, vp.k, vp.patches, vp.tokens);
        let mut rng = Rng::new(4);
        let cls = normal(&mut rng, d, 0.02);
        let pos = normal(&mut rng, t * d, 0.02);
        let pw = normal(&mut rng, d * k, (1.0 / k as f32).sqrt());
        let pb = normal(&mut rng, d, 0.1);
        let nw: Vec<f32> = normal(&mut rng, d, 0.1).iter().map(|v| 1.0 + v).collect();
        let nb = normal(&mut rng, d, 0.1);
        let neutral = NeutralBlock::new(d, vc.mlp_dim as usize);
        let weights = VitWeights {
            cls_token: &cls,
            pos_embed: &pos,
            patch_w: &pw,
            patch_b: &pb,
            blocks: vec![neutral.weights(d, vc.mlp_dim as usize, true)],
            norm_w: &nw,
            norm_b: &nb,
        };
        // CPU: preprocess, then the forward.
        let stride = 3 * w_in;
        let img = random_image(&mut rng, w_in, h_in, stride);
        let mode = PreprocessMode::Full;
        let input = cpu_rgb_input(&model.preprocess, &img, (w_in, h_in, stride), mode);
        let mut want = vec![0f32; np * d];
        let mut scratch = vec![0f32; vit_scratch_len(&vc, pool.threads())];
        vit_forward(&pool, &vc, &weights, &input, &mut want, &mut scratch).unwrap();

        // GPU: resize, im2col, (host GEMM with the CPU's GEMM), tokens, final norm.
        let got_input = gpu_rgb_input(&g, &img, None, (w_in, h_in, stride), mode);
        assert_bits("ViT input", &got_input, &input);
        let mut ap = ArenaPlan::new();
        let in_s = ap.add::<f32>(vp.input_len());
        let pm_s = ap.add::<f32>(np * k);
        let x_s = ap.add::<f32>(t * d);
        let pos_s = ap.add::<f32>(t * d);
        let cls_s = ap.add::<f32>(d);
        let pb_s = ap.add::<f32>(d);
        let nw_s = ap.add::<f32>(d);
        let nb_s = ap.add::<f32>(d);
        let out_s = ap.add::<f32>(np * d);
        let arena = Arena::new(&g.dev, &ap).unwrap();
        g.put(&arena, in_s, &got_input);
        g.put(&arena, pos_s, &pos);
        g.put(&arena, cls_s, &cls);
        g.put(&arena, pb_s, &pb);
        g.put(&arena, nw_s, &nw);
        g.put(&arena, nb_s, &nb);
        g.poison(&arena, pm_s);
        unsafe { g.k.im2col(&g.dev, arena.ptr(in_s), arena.ptr(pm_s)) }.unwrap();
        let pm = g.get(&arena, pm_s, np * k);
        let mut gemm = vec![0f32; np * d];
        linear(
            &pool,
            Mat::new(&pm, np, k),
            Mat::new(&pw, d, k),
            None,
            &mut gemm,
            d,
            Epilogue::None,
        );
        g.poison(&arena, x_s);
        g.poison(&arena, out_s);
        let x = arena.ptr(x_s);
        g.dev.upload(x.offset(d).raw(), &gemm).unwrap();
        unsafe {
            g.k.vit_tokens(
                &g.dev,
                x.offset(d),
                d,
                arena.ptr(pb_s),
                arena.ptr(pos_s),
                arena.ptr(cls_s),
                x,
            )
            .unwrap();
            g.k.vit_final_norm(
                &g.dev,
                x,
                (arena.ptr(nw_s), arena.ptr(nb_s)),
                arena.ptr(out_s),
                d,
            )
            .unwrap();
        }
        let got = g.get(&arena, out_s, np * d);
        assert_finite("ViT features", &got);
        assert_close(&format!("ViT features {}", model.name), &got, &want, 1e-6);
    }
}

// ---------- Point-MAE position embedding ----------

fn point_plan(pc: &PointConfig) -> EmbedPlan {
    EmbedPlan::new(None, Some(pc), &PreprocessConfig::default(), 1, 1).unwrap()
}

/// The kernel's first layer on the host: c0·w0, fma(c1, w1), fma(c2, w2), + b, GELU
/// (libm erff). Returns (GELU input, output).
fn fc1_host(c: &[f32], w1: &[f32], b1: &[f32], j: usize) -> (f32, f32) {
    let w = &w1[3 * j..3 * j + 3];
    let acc = c[2].mul_add(w[2], c[1].mul_add(w[1], c[0] * w[0]));
    let a = acc + b1[j];
    (a, gelu(a))
}

#[test]
fn position_mlp_matches_host_emulation() {
    let pc = PointConfig::m3dm();
    let Some(g) = gpu(point_plan(&pc)) else {
        return;
    };
    let pp = g.k.plan.point().unwrap().clone();
    let (m, ph, d) = (pp.groups, pp.pos_hidden, pp.dim);
    let mut rng = Rng::new(5);
    let centers = normal(&mut rng, 3 * m, 0.3);
    let w1 = normal(&mut rng, ph * 3, 0.6);
    let b1 = normal(&mut rng, ph, 0.1);
    let w2 = normal(&mut rng, d * ph, (1.0 / ph as f32).sqrt());
    let b2 = normal(&mut rng, d, 0.1);
    let mut ap = ArenaPlan::new();
    let c_s = ap.add::<f32>(3 * m);
    let w1_s = ap.add::<f32>(ph * 3);
    let b1_s = ap.add::<f32>(ph);
    let w2_s = ap.add::<f32>(d * ph);
    let b2_s = ap.add::<f32>(d);
    let h_s = ap.add::<f32>(m * ph);
    let hb_s = ap.add::<bf16>(m * ph);
    let pos_s = ap.add::<f32>(m * d);
    let arena = Arena::new(&g.dev, &ap).unwrap();
    for (s, v) in [
        (c_s, &centers),
        (w1_s, &w1),
        (b1_s, &b1),
        (w2_s, &w2),
        (b2_s, &b2),
    ] {
        g.put(&arena, s, v);
    }
    let fc1 = (arena.ptr(w1_s), arena.ptr(b1_s));
    let fc2 = (arena.ptr(w2_s), arena.ptr(b2_s));
    let run = || {
        g.poison(&arena, h_s);
        g.poison(&arena, hb_s);
        g.poison(&arena, pos_s);
        unsafe {
            let c = arena.ptr(c_s);
            g.k.pos_fc1_gelu(&g.dev, c, fc1, arena.ptr(h_s)).unwrap();
            g.k.pos_fc1_gelu_bf16(&g.dev, c, fc1, arena.ptr(hb_s))
                .unwrap();
            g.k.pos_embed(&g.dev, c, fc1, fc2, arena.ptr(pos_s))
                .unwrap();
        }
        (
            g.get(&arena, h_s, m * ph),
            g.get(&arena, hb_s, m * ph),
            g.get(&arena, pos_s, m * d),
        )
    };
    let (h, hb, pos) = run();
    assert_finite("pos hidden", &h);
    assert_finite("pos", &pos);
    // fc1 + GELU: only erff differs from the host (a few ulp of 1 in erf).
    let mut exact = 0;
    for gi in 0..m {
        for j in 0..ph {
            let (a, want) = fc1_host(&centers[3 * gi..3 * gi + 3], &w1, &b1, j);
            let got = h[gi * ph + j];
            let tol = 1e-6 * a.abs().max(want.abs()).max(1e-30);
            assert!((got - want).abs() <= tol, "h[{gi}][{j}]: {got} vs {want}");
            exact += usize::from(got.to_bits() == want.to_bits());
        }
    }
    eprintln!("pos fc1: {exact} of {} bit-equal", m * ph);
    let hb: Vec<u16> = hb.iter().map(|v| v.to_bits()).collect();
    assert_eq!(hb, bf16_of(&h), "fc1 bf16 = rounded f32");
    // fc2 in the fused kernel: an fma chain over k on the same h, then + b2: exact.
    let mut want = vec![0f32; m * d];
    for gi in 0..m {
        for j in 0..d {
            let mut acc = 0f32;
            for kk in 0..ph {
                acc = h[gi * ph + kk].mul_add(w2[j * ph + kk], acc);
            }
            want[gi * d + j] = acc + b2[j];
        }
    }
    assert_bits("pos embed (fused) on the kernel's h", &pos, &want);
    let (h2, _, pos2) = run();
    assert_bits("pos hidden rerun", &h2, &h);
    assert_bits("pos rerun", &pos2, &pos);
}

#[test]
fn point_embedding_chain_matches_point_mae_forward() {
    let pool = Pool::new(2);
    let mut deep = PointConfig::m3dm();
    deep.group_size = 16;
    deep.depth = 4;
    deep.out_layers = vec![0, 1, 3];
    for pc in [PointConfig::small(), deep] {
        let Some(g) = gpu(point_plan(&pc)) else {
            return;
        };
        let pp = g.k.plan.point().unwrap().clone();
        let (m, ph, d, fd) = (pp.groups, pp.pos_hidden, pp.dim, pp.feature_dim);
        let s = pc.group_size as usize;
        let [c1, c2, c3] = pc.encoder_widths.map(|x| x as usize);
        let mut rng = Rng::new(6);
        let n = m + 17;
        let points = normal(&mut rng, 3 * n, 0.3);
        let center_idx: Vec<u32> = (0..m as u32).map(|i| (i * 7) % n as u32).collect();
        let group_idx = vec![0u32; m * s];
        // Encoder with zero weights and a random conv4 bias: every token is that bias.
        let zeros = vec![0f32; (c3 * 2 * c2).max(d * c3).max(c2 * c1).max(c1 * 3)];
        let b4 = normal(&mut rng, d, 1.0);
        let w1 = normal(&mut rng, ph * 3, 0.6);
        let b1 = normal(&mut rng, ph, 0.1);
        let w2 = normal(&mut rng, d * ph, (1.0 / ph as f32).sqrt());
        let b2 = normal(&mut rng, d, 0.1);
        let nw: Vec<f32> = normal(&mut rng, d, 0.1).iter().map(|v| 1.0 + v).collect();
        let nb = normal(&mut rng, d, 0.1);
        let neutral = NeutralBlock::new(d, pc.mlp_dim as usize);
        let weights = PointMaeWeights {
            conv: [
                (&zeros[..c1 * 3], &zeros[..c1]),
                (&zeros[..c2 * c1], &zeros[..c2]),
                (&zeros[..c3 * 2 * c2], &zeros[..c3]),
                (&zeros[..d * c3], &b4),
            ],
            pos1: (&w1, &b1),
            pos2: (&w2, &b2),
            blocks: (0..pc.depth)
                .map(|_| neutral.weights(d, pc.mlp_dim as usize, false))
                .collect(),
            norm: (&nw, &nb),
        };
        let mut want = vec![0f32; m * fd];
        let mut scratch = vec![0f32; point_mae_scratch_len(&pc, pool.threads())];
        point_mae_forward(
            &pool,
            &pc,
            &weights,
            &points,
            n,
            &center_idx,
            &group_idx,
            &mut want,
            &mut scratch,
        );

        // GPU: tokens = b4 broadcast, fc1 kernel + host fc2 (the CPU's GEMM), then per
        // block x += pos with the block's norm1, and the selected outputs.
        let centers: Vec<f32> = center_idx
            .iter()
            .flat_map(|&i| points[3 * i as usize..3 * i as usize + 3].iter().copied())
            .collect();
        let mut ap = ArenaPlan::new();
        let c_s = ap.add::<f32>(3 * m);
        let w1_s = ap.add::<f32>(ph * 3);
        let b1_s = ap.add::<f32>(ph);
        let b4_s = ap.add::<f32>(d);
        let nw_s = ap.add::<f32>(d);
        let nb_s = ap.add::<f32>(d);
        let h_s = ap.add::<f32>(m * ph);
        let pos_s = ap.add::<f32>(m * d);
        let x_s = ap.add::<f32>(m * d);
        let y_s = ap.add::<f32>(m * d);
        let out_s = ap.add::<f32>(m * fd);
        let arena = Arena::new(&g.dev, &ap).unwrap();
        for (sl, v) in [
            (c_s, &centers),
            (w1_s, &w1),
            (b1_s, &b1),
            (b4_s, &b4),
            (nw_s, &nw),
            (nb_s, &nb),
        ] {
            g.put(&arena, sl, v);
        }
        let p = |sl: Slot<f32>| arena.ptr(sl);
        g.poison(&arena, h_s);
        g.poison(&arena, x_s);
        g.poison(&arena, out_s);
        unsafe {
            g.k.pos_fc1_gelu(&g.dev, p(c_s), (p(w1_s), p(b1_s)), p(h_s))
                .unwrap();
            g.k.copy_rows(&g.dev, p(b4_s), 0, p(x_s), d, m, d).unwrap();
        }
        let h = g.get(&arena, h_s, m * ph);
        let mut pos = vec![0f32; m * d];
        linear(
            &pool,
            Mat::new(&h, m, ph),
            Mat::new(&w2, d, ph),
            Some(&b2),
            &mut pos,
            d,
            Epilogue::None,
        );
        g.put(&arena, pos_s, &pos);
        let mut x_host: Vec<f32> = b4.repeat(m);
        let norm = (p(nw_s), p(nb_s));
        for i in 0..pc.depth as usize {
            g.poison(&arena, y_s);
            unsafe {
                g.k.add_pos_layernorm(&g.dev, p(x_s), p(pos_s), norm, p(y_s))
                    .unwrap();
            }
            x_host.iter_mut().zip(&pos).for_each(|(a, b)| *a += b);
            assert_bits(
                &format!("x after block {i}'s position add"),
                &g.get(&arena, x_s, m * d),
                &x_host,
            );
            assert_finite("norm1 output", &g.get(&arena, y_s, m * d));
            if let Some(slot) = pp.slot_of(i) {
                unsafe { g.k.point_output(&g.dev, p(x_s), slot, norm, p(out_s)) }.unwrap();
            }
        }
        let got = g.get(&arena, out_s, m * fd);
        assert_finite("point features", &got);
        assert_close(&format!("point features {m}×{fd}"), &got, &want, 1e-5);
    }
}

// ---------- LayerNorm ----------

fn ln_host(
    x: &[f32],
    ldx: usize,
    rows: usize,
    cols: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        layer_norm_row(
            &x[r * ldx..r * ldx + cols],
            &mut out[r * cols..(r + 1) * cols],
            w,
            b,
            eps,
        );
    }
    out
}

fn unpack(v: &[f32], rows: usize, cols: usize, ld: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| v[r * ld..r * ld + cols].iter().copied())
        .collect()
}

#[test]
fn layernorm_matches_layer_norm_row() {
    let model = ModelConfig::m3dm();
    let Some(g) = gpu(EmbedPlan::for_model(&model, 224, 224).unwrap()) else {
        return;
    };
    let (rows, cols, ldx, ldy) = (785, 768, 800, 770);
    let eps = 1e-6;
    let mut rng = Rng::new(7);
    // An offset mean exercises the centred variance.
    let x: Vec<f32> = normal(&mut rng, rows * ldx, 1.0)
        .iter()
        .map(|v| v + 3.0)
        .collect();
    let pos = normal(&mut rng, rows * cols, 0.5);
    let w: Vec<f32> = normal(&mut rng, cols, 0.2)
        .iter()
        .map(|v| 1.0 + v)
        .collect();
    let b = normal(&mut rng, cols, 0.2);
    let mut ap = ArenaPlan::new();
    let x_s = ap.add::<f32>(rows * ldx);
    let pos_s = ap.add::<f32>(rows * cols);
    let w_s = ap.add::<f32>(cols);
    let b_s = ap.add::<f32>(cols);
    let y_s = ap.add::<f32>(rows * ldy);
    let yb_s = ap.add::<bf16>(rows * cols);
    let arena = Arena::new(&g.dev, &ap).unwrap();
    g.put(&arena, pos_s, &pos);
    g.put(&arena, w_s, &w);
    g.put(&arena, b_s, &b);
    let norm = (arena.ptr(w_s), arena.ptr(b_s));

    // Strided input and output, no position.
    g.put(&arena, x_s, &x);
    let run = || {
        g.poison(&arena, y_s);
        unsafe {
            g.k.layernorm(
                &g.dev,
                (rows, cols),
                arena.ptr(x_s),
                ldx,
                DevPtr::null(),
                norm,
                eps,
                arena.ptr(y_s),
                ldy,
            )
        }
        .unwrap();
        g.get(&arena, y_s, rows * ldy)
    };
    let y = run();
    assert_bits("layernorm rerun", &run(), &y);
    let y = unpack(&y, rows, cols, ldy);
    assert_finite("layernorm", &y);
    let want = ln_host(&x, ldx, rows, cols, &w, &b, eps);
    let exact = assert_close("layernorm strided", &y, &want, 1e-6);
    assert!(
        exact * 100 >= y.len() * 99,
        "f64 statistics should give the CPU's bits"
    );

    // With the position add (packed x), f32 then bf16 on a fresh copy of x.
    let xp = unpack(&x, rows, cols, ldx);
    let sum: Vec<f32> = xp.iter().zip(&pos).map(|(a, b)| a + b).collect();
    let want = ln_host(&sum, cols, rows, cols, &w, &b, eps);
    g.put(&arena, x_s, &xp);
    g.poison(&arena, y_s);
    unsafe {
        g.k.layernorm(
            &g.dev,
            (rows, cols),
            arena.ptr(x_s),
            cols,
            arena.ptr(pos_s),
            norm,
            eps,
            arena.ptr(y_s),
            cols,
        )
    }
    .unwrap();
    assert_bits("x + pos stored", &g.get(&arena, x_s, rows * cols), &sum);
    let y = g.get(&arena, y_s, rows * cols);
    assert_close("layernorm after position add", &y, &want, 1e-6);
    g.put(&arena, x_s, &xp);
    g.poison(&arena, yb_s);
    unsafe {
        g.k.layernorm_bf16(
            &g.dev,
            (rows, cols),
            arena.ptr(x_s),
            cols,
            arena.ptr(pos_s),
            norm,
            eps,
            arena.ptr(yb_s),
            cols,
        )
    }
    .unwrap();
    assert_bits(
        "x + pos stored (bf16 run)",
        &g.get(&arena, x_s, rows * cols),
        &sum,
    );
    let yb: Vec<u16> = g
        .get(&arena, yb_s, rows * cols)
        .iter()
        .map(|v| v.to_bits())
        .collect();
    // The fast path: f32 statistics, the rounded reference of their stated order, within
    // their stated bound of the f64 statistics (of the f32 run just above).
    let err = check_layer_norm_fast(&sum, cols, (&w, &b), eps, &yb, &y)
        .unwrap_or_else(|e| panic!("bf16 LayerNorm: {e}"));
    eprintln!(
        "bf16 LayerNorm: f32 statistics, max |Δx̂| vs f64 = {:.3e} (|mean| ≤ 4σ: {:.3e})",
        err.0, err.1
    );
}

#[test]
fn final_norms_write_only_their_columns() {
    let model = ModelConfig::m3dm();
    let Some(g) = gpu(EmbedPlan::for_model(&model, 224, 224).unwrap()) else {
        return;
    };
    let pp = g.k.plan.point().unwrap().clone();
    let vp = g.k.plan.vit().unwrap().clone();
    let (m, d, fd) = (pp.groups, pp.dim, pp.feature_dim);
    let mut rng = Rng::new(8);
    let xs_host: Vec<Vec<f32>> = (0..pp.out_layers.len())
        .map(|_| normal(&mut rng, m * d, 2.0))
        .collect();
    let w: Vec<f32> = normal(&mut rng, vp.dim.max(d), 0.2)
        .iter()
        .map(|v| 1.0 + v)
        .collect();
    let b = normal(&mut rng, vp.dim.max(d), 0.2);
    let mut ap = ArenaPlan::new();
    let x_s: Vec<Slot<f32>> = xs_host.iter().map(|_| ap.add::<f32>(m * d)).collect();
    let w_s = ap.add::<f32>(w.len());
    let b_s = ap.add::<f32>(b.len());
    let out_s = ap.add::<f32>(m * fd);
    let vx_s = ap.add::<f32>(vp.tokens_len());
    let vo_s = ap.add::<f32>(vp.features_len());
    let arena = Arena::new(&g.dev, &ap).unwrap();
    for (s, v) in x_s.iter().zip(&xs_host) {
        g.put(&arena, *s, v);
    }
    g.put(&arena, w_s, &w);
    g.put(&arena, b_s, &b);
    let norm = (arena.ptr(w_s), arena.ptr(b_s));
    g.poison(&arena, out_s);
    // Slot 1 only: the other slots keep their poison.
    unsafe {
        g.k.point_output(&g.dev, arena.ptr(x_s[1]), 1, norm, arena.ptr(out_s))
    }
    .unwrap();
    let out = g.get(&arena, out_s, m * fd);
    for (i, v) in out.iter().enumerate() {
        let in_slot1 = (d..2 * d).contains(&(i % fd));
        assert_eq!(!v.is_nan(), in_slot1, "out[{i}] = {v}");
    }
    for slot in [0, 2] {
        unsafe {
            g.k.point_output(&g.dev, arena.ptr(x_s[slot]), slot, norm, arena.ptr(out_s))
        }
        .unwrap();
    }
    assert!(unsafe {
        g.k.point_output(&g.dev, arena.ptr(x_s[0]), 3, norm, arena.ptr(out_s))
    }
    .is_err());
    let out = g.get(&arena, out_s, m * fd);
    assert_finite("point output", &out);
    for (slot, xh) in xs_host.iter().enumerate() {
        let want = ln_host(xh, d, m, d, &w[..d], &b[..d], pp.ln_eps);
        let got: Vec<f32> = (0..m)
            .flat_map(|r| {
                out[r * fd + slot * d..r * fd + (slot + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        assert_close(&format!("point output slot {slot}"), &got, &want, 1e-6);
    }

    // ViT: class token dropped.
    let vx = normal(&mut rng, vp.tokens_len(), 1.5);
    g.put(&arena, vx_s, &vx);
    g.poison(&arena, vo_s);
    unsafe {
        g.k.vit_final_norm(&g.dev, arena.ptr(vx_s), norm, arena.ptr(vo_s), vp.dim)
    }
    .unwrap();
    let got = g.get(&arena, vo_s, vp.features_len());
    let want = ln_host(
        &vx[vp.dim..],
        vp.dim,
        vp.patches,
        vp.dim,
        &w[..vp.dim],
        &b[..vp.dim],
        vp.ln_eps,
    );
    assert_finite("ViT final norm", &got);
    assert_close("ViT final norm", &got, &want, 1e-6);
}

// ---------- grids ----------

#[test]
fn pooling_and_copies_match_the_cpu() {
    let model = ModelConfig::m3dm();
    let Some(g) = gpu(EmbedPlan::for_model(&model, 224, 224).unwrap()) else {
        return;
    };
    let mut rng = Rng::new(9);
    // (gi, go, d, ld_src, column offset in dst, ld_dst)
    let cases = [
        (28, 56, 768, 768, 1152, 1920), // rgb56 into the fused rows' rgb half
        (14, 28, 192, 200, 0, 192),
        (30, 56, 16, 16, 0, 16),
        (56, 28, 8, 8, 3, 12),
        (7, 3, 5, 6, 0, 5),
    ];
    for (gi, go, d, ls, off, ld) in cases {
        let src = normal(&mut rng, gi * gi * ls, 1.0);
        let mut ap = ArenaPlan::new();
        let s_s = ap.add::<f32>(src.len());
        let d_s = ap.add::<f32>(go * go * ld);
        let arena = Arena::new(&g.dev, &ap).unwrap();
        g.put(&arena, s_s, &src);
        let run = || {
            g.poison(&arena, d_s);
            unsafe {
                g.k.adaptive_pool(
                    &g.dev,
                    arena.ptr(s_s),
                    gi,
                    ls,
                    go,
                    d,
                    arena.ptr(d_s).offset(off),
                    ld,
                )
            }
            .unwrap();
            g.get(&arena, d_s, go * go * ld)
        };
        let out = run();
        assert_bits("pool rerun", &run(), &out);
        let packed = unpack(&src, gi * gi, d, ls);
        let mut want = vec![0f32; go * go * d];
        adaptive_avg_pool(&packed, gi, d, go, &mut want);
        let got: Vec<f32> = (0..go * go)
            .flat_map(|c| out[c * ld + off..c * ld + off + d].iter().copied())
            .collect();
        assert_bits(&format!("pool {gi}→{go} d {d}"), &got, &want);
        for (i, v) in out.iter().enumerate() {
            let col = i % ld;
            assert_eq!(v.is_nan(), !(off..off + d).contains(&col), "pool out[{i}]");
        }
    }

    // Broadcast of one row (the pseudo-cloud token) and a strided copy.
    let (rows, cols) = (3136, 1152);
    let row = normal(&mut rng, cols, 1.0);
    let src = normal(&mut rng, 40 * 50, 1.0);
    let mut ap = ArenaPlan::new();
    let r_s = ap.add::<f32>(cols);
    let d_s = ap.add::<f32>(rows * cols);
    let s_s = ap.add::<f32>(src.len());
    let arena = Arena::new(&g.dev, &ap).unwrap();
    g.put(&arena, r_s, &row);
    g.put(&arena, s_s, &src);
    g.poison(&arena, d_s);
    unsafe {
        g.k.copy_rows(&g.dev, arena.ptr(r_s), 0, arena.ptr(d_s), cols, rows, cols)
    }
    .unwrap();
    assert_bits(
        "broadcast",
        &g.get(&arena, d_s, rows * cols),
        &row.repeat(rows),
    );
    g.poison(&arena, d_s);
    // 40 rows of 30 columns from rows 50 apart, into rows 35 apart at column 5.
    unsafe {
        g.k.copy_rows(
            &g.dev,
            arena.ptr(s_s),
            50,
            arena.ptr(d_s).offset(5),
            35,
            40,
            30,
        )
    }
    .unwrap();
    let out = g.get(&arena, d_s, 40 * 35);
    for r in 0..40 {
        for c in 0..35 {
            let v = out[r * 35 + c];
            if (5..35).contains(&c) {
                assert_eq!(
                    v.to_bits(),
                    src[r * 50 + c - 5].to_bits(),
                    "copy [{r}][{c}]"
                );
            } else {
                assert!(v.is_nan(), "copy wrote outside its columns at [{r}][{c}]");
            }
        }
    }
    // Bad strides are errors, not launches.
    let bad = unsafe {
        g.k.copy_rows(&g.dev, arena.ptr(r_s), 10, arena.ptr(d_s), cols, rows, cols)
    };
    assert!(bad.is_err());
}
