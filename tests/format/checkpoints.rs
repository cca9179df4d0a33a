//! The checkpoint converter: safetensors files with the published parameter names (small
//! shapes, the wrappers' prefixes), converted into one model file, every tensor checked,
//! the BatchNorm fold checked numerically against the unfolded convolution + BatchNorm.

use miad::format::convert::{convert, ConvertOptions};
use miad::format::*;
use miad::util::rng::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    crate::scratch::scratch_dir("format-checkpoints").join(name)
}

/// A checkpoint being built: name → (shape, values), plus i64 tensors.
#[derive(Default)]
struct Ckpt {
    f32s: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Ckpt {
    fn add(&mut self, rng: &mut Rng, name: &str, shape: &[usize]) {
        let n = shape.iter().product();
        let mut v = vec![0f32; n];
        rng.fill_normal(&mut v, 0.5);
        self.f32s.insert(name.into(), (shape.to_vec(), v));
    }
    fn add_positive(&mut self, rng: &mut Rng, name: &str, shape: &[usize]) {
        let n = shape.iter().product();
        let v = (0..n).map(|_| 0.2 + rng.uniform() * 2.0).collect();
        self.f32s.insert(name.into(), (shape.to_vec(), v));
    }
    fn linear(&mut self, rng: &mut Rng, prefix: &str, o: usize, i: usize) {
        self.add(rng, &format!("{prefix}.weight"), &[o, i]);
        self.add(rng, &format!("{prefix}.bias"), &[o]);
    }
    fn norm(&mut self, rng: &mut Rng, prefix: &str, d: usize) {
        self.add(rng, &format!("{prefix}.weight"), &[d]);
        self.add(rng, &format!("{prefix}.bias"), &[d]);
    }
    fn conv1d(&mut self, rng: &mut Rng, prefix: &str, o: usize, i: usize) {
        self.add(rng, &format!("{prefix}.weight"), &[o, i, 1]);
        self.add(rng, &format!("{prefix}.bias"), &[o]);
    }
    fn batchnorm(&mut self, rng: &mut Rng, prefix: &str, d: usize) {
        self.norm(rng, prefix, d);
        self.add(rng, &format!("{prefix}.running_mean"), &[d]);
        self.add_positive(rng, &format!("{prefix}.running_var"), &[d]);
        self.i64s
            .insert(format!("{prefix}.num_batches_tracked"), (vec![], vec![42]));
    }
    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        &self.f32s[name]
    }
    /// Serialises with the `safetensors` crate and reads back as the CLI does.
    fn save(&self, name: &str) -> (PathBuf, OwnedTensors) {
        use safetensors::tensor::TensorView;
        let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, (s, v)) in &self.f32s {
            bytes.push((
                n.clone(),
                Dtype::F32,
                s.clone(),
                bytemuck::cast_slice(v).to_vec(),
            ));
        }
        for (n, (s, v)) in &self.i64s {
            bytes.push((
                n.clone(),
                Dtype::I64,
                s.clone(),
                bytemuck::cast_slice(v).to_vec(),
            ));
        }
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, d, s, b)| {
                let dt = match d {
                    Dtype::F32 => safetensors::Dtype::F32,
                    _ => safetensors::Dtype::I64,
                };
                (n.clone(), TensorView::new(dt, s.clone(), b).unwrap())
            })
            .collect();
        let path = tmp(name);
        safetensors::serialize_to_file(views, &None, &path).unwrap();
        let loaded = OwnedTensors::from_safetensors_file(&path).unwrap();
        (path, loaded)
    }
}

const VIT_DIM: usize = 32;
const VIT_DEPTH: usize = 2;
const VIT_MLP: usize = 80;
const PATCH: usize = 4;
const GRID: usize = 4;

/// A DINO-style ViT with DDP `module.` prefixes and the DINO projection head.
fn vit_ckpt(rng: &mut Rng) -> Ckpt {
    let mut c = Ckpt::default();
    let d = VIT_DIM;
    c.add(rng, "module.cls_token", &[1, 1, d]);
    c.add(rng, "module.pos_embed", &[1, GRID * GRID + 1, d]);
    c.add(rng, "module.patch_embed.proj.weight", &[d, 3, PATCH, PATCH]);
    c.add(rng, "module.patch_embed.proj.bias", &[d]);
    for i in 0..VIT_DEPTH {
        let b = format!("module.blocks.{i}");
        c.norm(rng, &format!("{b}.norm1"), d);
        c.linear(rng, &format!("{b}.attn.qkv"), 3 * d, d);
        c.linear(rng, &format!("{b}.attn.proj"), d, d);
        c.norm(rng, &format!("{b}.norm2"), d);
        c.linear(rng, &format!("{b}.mlp.fc1"), VIT_MLP, d);
        c.linear(rng, &format!("{b}.mlp.fc2"), d, VIT_MLP);
    }
    c.norm(rng, "module.norm", d);
    c.linear(rng, "module.head.mlp.0", 16, d);
    c
}

const W: [usize; 3] = [8, 16, 24];
const PT_DIM: usize = 40;
const PT_DEPTH: usize = 3;
const PT_MLP: usize = 72;
const POS_HIDDEN: usize = 12;

/// The Point-MAE pretraining checkpoint: `base_model.MAE_encoder.*` plus the MAE-only parts.
fn point_ckpt(rng: &mut Rng) -> Ckpt {
    let mut c = Ckpt::default();
    let e = "base_model.MAE_encoder";
    c.conv1d(rng, &format!("{e}.encoder.first_conv.0"), W[0], 3);
    c.batchnorm(rng, &format!("{e}.encoder.first_conv.1"), W[0]);
    c.conv1d(rng, &format!("{e}.encoder.first_conv.3"), W[1], W[0]);
    c.conv1d(rng, &format!("{e}.encoder.second_conv.0"), W[2], 2 * W[1]);
    c.batchnorm(rng, &format!("{e}.encoder.second_conv.1"), W[2]);
    c.conv1d(rng, &format!("{e}.encoder.second_conv.3"), PT_DIM, W[2]);
    c.linear(rng, &format!("{e}.pos_embed.0"), POS_HIDDEN, 3);
    c.linear(rng, &format!("{e}.pos_embed.2"), PT_DIM, POS_HIDDEN);
    for i in 0..PT_DEPTH {
        let b = format!("{e}.blocks.blocks.{i}");
        c.norm(rng, &format!("{b}.norm1"), PT_DIM);
        c.add(rng, &format!("{b}.attn.qkv.weight"), &[3 * PT_DIM, PT_DIM]);
        c.linear(rng, &format!("{b}.attn.proj"), PT_DIM, PT_DIM);
        c.norm(rng, &format!("{b}.norm2"), PT_DIM);
        c.linear(rng, &format!("{b}.mlp.fc1"), PT_MLP, PT_DIM);
        c.linear(rng, &format!("{b}.mlp.fc2"), PT_DIM, PT_MLP);
    }
    c.norm(rng, &format!("{e}.norm"), PT_DIM);
    // MAE-only parts: reported as ignored.
    c.add(rng, "base_model.mask_token", &[1, 1, PT_DIM]);
    c.norm(rng, "base_model.MAE_decoder.blocks.blocks.0.norm1", PT_DIM);
    c.linear(rng, "base_model.decoder_pos_embed.0", POS_HIDDEN, 3);
    c.conv1d(rng, "base_model.increase_dim.0", 9, PT_DIM);
    c
}

/// The M3DM fusion checkpoint (under `model.`, saved from DDP: `module.`).
fn fusion_ckpt(rng: &mut Rng, rgb: usize, xyz: usize) -> Ckpt {
    let mut c = Ckpt::default();
    let r = 2;
    c.norm(rng, "model.module.xyz_norm", xyz);
    c.linear(rng, "model.module.xyz_mlp.fc1", r * xyz, xyz);
    c.linear(rng, "model.module.xyz_mlp.fc2", xyz, r * xyz);
    c.norm(rng, "model.module.rgb_norm", rgb);
    c.linear(rng, "model.module.rgb_mlp.fc1", r * rgb, rgb);
    c.linear(rng, "model.module.rgb_mlp.fc2", rgb, r * rgb);
    c.linear(rng, "model.module.rgb_head", 16, rgb);
    c.linear(rng, "model.module.xyz_head", 16, xyz);
    c
}

fn opts() -> ConvertOptions {
    let mut o = ConvertOptions {
        vit_heads: Some(4),
        point_heads: Some(5),
        num_groups: 32,
        group_size: 16,
        ..Default::default()
    };
    o.preprocess.xyz_grid = 2 * GRID as u32;
    o
}

/// conv (`[out, in]` + bias) then eval-mode BatchNorm, in f64, at input `x`.
fn conv_bn_f64(c: &Ckpt, conv: &str, bn: &str, x: &[f64]) -> Vec<f64> {
    let (ws, w) = c.get(&format!("{conv}.weight"));
    let (_, b) = c.get(&format!("{conv}.bias"));
    let (_, g) = c.get(&format!("{bn}.weight"));
    let (_, beta) = c.get(&format!("{bn}.bias"));
    let (_, mean) = c.get(&format!("{bn}.running_mean"));
    let (_, var) = c.get(&format!("{bn}.running_var"));
    let (o, i) = (ws[0], ws[1]);
    (0..o)
        .map(|r| {
            let y = b[r] as f64 + (0..i).map(|k| w[r * i + k] as f64 * x[k]).sum::<f64>();
            (y - mean[r] as f64) / (var[r] as f64 + 1e-5).sqrt() * g[r] as f64 + beta[r] as f64
        })
        .collect()
}

#[test]
fn converts_all_three_checkpoints_and_checks_every_tensor() {
    let mut rng = Rng::new(11);
    let vit = vit_ckpt(&mut rng);
    let point = point_ckpt(&mut rng);
    let xyz_dim = PT_DIM * 3; // default output layers for depth 3: every block
    let fusion = fusion_ckpt(&mut rng, VIT_DIM, xyz_dim);
    let (_, vs) = vit.save("vit.safetensors");
    let (_, ps) = point.save("pointmae.safetensors");
    let (_, fs) = fusion.save("fusion.safetensors");

    let conv = convert(Some(&vs), Some(&ps), Some(&fs), &opts()).unwrap();
    let cfg = &conv.config;
    let v = cfg.vit.as_ref().unwrap();
    assert_eq!(
        (
            v.image_size,
            v.patch_size,
            v.dim,
            v.depth,
            v.heads,
            v.mlp_dim
        ),
        (
            (GRID * PATCH) as u32,
            PATCH as u32,
            VIT_DIM as u32,
            VIT_DEPTH as u32,
            4,
            VIT_MLP as u32
        )
    );
    let p = cfg.point.as_ref().unwrap();
    assert_eq!(p.encoder_widths, W.map(|w| w as u32));
    assert_eq!(
        (p.dim, p.depth, p.heads, p.mlp_dim, p.pos_hidden),
        (
            PT_DIM as u32,
            PT_DEPTH as u32,
            5,
            PT_MLP as u32,
            POS_HIDDEN as u32
        )
    );
    assert_eq!(p.out_layers, vec![0, 1, 2]);
    assert_eq!((p.num_groups, p.group_size), (32, 16));
    let f = cfg.fusion.as_ref().unwrap();
    assert_eq!(
        (f.rgb_dim, f.xyz_dim, f.mlp_ratio, f.head_dim),
        (VIT_DIM as u32, xyz_dim as u32, 2, 16)
    );

    // Reports: MAE-only and DINO-head names are ignored, BN counters consumed, nothing unknown.
    assert!(conv.unknown.is_empty(), "{:?}", conv.unknown);
    for n in [
        "base_model.mask_token",
        "base_model.MAE_decoder.blocks.blocks.0.norm1.weight",
        "base_model.decoder_pos_embed.0.weight",
        "base_model.increase_dim.0.weight",
        "module.head.mlp.0.weight",
    ] {
        assert!(
            conv.ignored.iter().any(|i| i.ends_with(n)),
            "{n} reported as ignored: {:?}",
            conv.ignored
        );
    }

    // Write, open (full validation), check every tensor against its source.
    let out = tmp("converted.miad");
    write_model(cfg, &conv.tensors, &[("source", "test")], &out).unwrap();
    let m = ModelFile::open(&out, &OpenOptions::default()).unwrap();
    assert_eq!(m.config(), cfg);
    let specs = model_tensor_specs(cfg);
    assert_eq!(m.container().manifest().tensors.len(), specs.len());
    let mut folded = 0;
    for s in &specs {
        let got = m.f32(&s.name, &s.shape).unwrap();
        let (branch, rest) = s.name.split_once('.').unwrap();
        let source = match branch {
            "vit" => vit.f32s.get(&format!("module.{rest}")),
            "fusion" => fusion.f32s.get(&format!("model.module.{rest}")),
            _ => {
                let e = "base_model.MAE_encoder";
                let mapped = rest
                    .replace("encoder.conv2", "encoder.first_conv.3")
                    .replace("encoder.conv4", "encoder.second_conv.3")
                    .replace("pos_embed.fc1", "pos_embed.0")
                    .replace("pos_embed.fc2", "pos_embed.2")
                    .replace("blocks.", "blocks.blocks.");
                if rest.starts_with("encoder.conv1") || rest.starts_with("encoder.conv3") {
                    folded += 1;
                    continue;
                }
                point.f32s.get(&format!("{e}.{mapped}"))
            }
        };
        let (_, want) = source.unwrap_or_else(|| panic!("no source for {}", s.name));
        assert_eq!(got, &want[..], "{} copied bit for bit", s.name);
    }
    assert_eq!(folded, 4, "conv1 and conv3, weight and bias");

    // The BatchNorm fold, numerically: folded conv == conv + BN on random inputs.
    let e = "base_model.MAE_encoder.encoder";
    for (to, conv_name, bn, inp) in [
        ("conv1", "first_conv.0", "first_conv.1", 3),
        ("conv3", "second_conv.0", "second_conv.1", 2 * W[1]),
    ] {
        // The reference sees the conv weights as [out, in] (drop the kernel axis).
        let mut c2 = Ckpt::default();
        for suffix in ["weight", "bias"] {
            let (s, v) = point.get(&format!("{e}.{conv_name}.{suffix}"));
            c2.f32s.insert(
                format!("c.{suffix}"),
                (s.iter().copied().filter(|&d| d != 1).collect(), v.clone()),
            );
        }
        for suffix in ["weight", "bias", "running_mean", "running_var"] {
            c2.f32s.insert(
                format!("b.{suffix}"),
                point.get(&format!("{e}.{bn}.{suffix}")).clone(),
            );
        }
        let out_w = c2.get("c.weight").0[0];
        let w = m
            .f32(&format!("point.encoder.{to}.weight"), &[out_w, inp])
            .unwrap();
        let b = m
            .f32(&format!("point.encoder.{to}.bias"), &[out_w])
            .unwrap();
        for _ in 0..8 {
            let x: Vec<f64> = (0..inp).map(|_| rng.normal() as f64).collect();
            let want = conv_bn_f64(&c2, "c", "b", &x);
            for r in 0..out_w {
                let got = b[r] as f64 + (0..inp).map(|k| w[r * inp + k] as f64 * x[k]).sum::<f64>();
                let tol = 1e-5 * (1.0 + want[r].abs());
                assert!(
                    (got - want[r]).abs() <= tol,
                    "{to} row {r}: folded {got} vs conv+BN {}",
                    want[r]
                );
            }
        }
        // and the fold did something (the BN is not an identity here)
        let raw = &c2.get("c.weight").1;
        assert!(w.iter().zip(raw).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

#[test]
fn each_branch_is_optional() {
    let mut rng = Rng::new(5);
    let (_, vs) = vit_ckpt(&mut rng).save("vit-only.safetensors");
    let conv = convert(Some(&vs), None, None, &opts()).unwrap();
    assert!(conv.config.point.is_none() && conv.config.fusion.is_none());
    assert!(conv.tensors.tensors.keys().all(|k| k.starts_with("vit.")));
    let out = tmp("rgb-only.miad");
    write_model(&conv.config, &conv.tensors, &[], &out).unwrap();
    assert!(ModelFile::open(&out, &OpenOptions::default()).is_ok());

    let (_, ps) = point_ckpt(&mut rng).save("point-only.safetensors");
    let conv = convert(None, Some(&ps), None, &opts()).unwrap();
    assert!(conv.config.vit.is_none() && conv.config.point.is_some());

    assert!(convert(None, None, None, &opts()).is_err());

    // With default options (xyz grid 56 for 224) the xyz grid follows a small ViT: a
    // multiple of its grid that fits in its input.
    let defaults = ConvertOptions {
        vit_heads: Some(4),
        ..Default::default()
    };
    let conv = convert(Some(&vs), None, None, &defaults).unwrap();
    let g = conv.config.preprocess.xyz_grid as usize;
    assert!(
        g > 0 && g.is_multiple_of(GRID) && g + 2 <= GRID * PATCH,
        "xyz grid {g}"
    );
}

#[test]
fn missing_and_unknown_names_are_reported() {
    let mut rng = Rng::new(6);
    let mut vit = vit_ckpt(&mut rng);
    vit.f32s.remove("module.blocks.1.attn.proj.bias");
    let (_, vs) = vit.save("vit-missing.safetensors");
    let e = convert(Some(&vs), None, None, &opts()).unwrap_err();
    assert!(
        e.to_string().contains("blocks.1.attn.proj.bias"),
        "the missing name is named: {e}"
    );

    let mut point = point_ckpt(&mut rng);
    point.add(&mut rng, "base_model.MAE_encoder.something_new", &[3]);
    point
        .f32s
        .remove("base_model.MAE_encoder.encoder.second_conv.1.running_var");
    let (_, ps) = point.save("point-missing.safetensors");
    let e = convert(None, Some(&ps), None, &opts()).unwrap_err();
    assert!(e.to_string().contains("second_conv.1.running_var"), "{e}");

    let mut point = point_ckpt(&mut rng);
    point.add(&mut rng, "base_model.MAE_encoder.something_new", &[3]);
    let (_, ps) = point.save("point-unknown.safetensors");
    let conv = convert(None, Some(&ps), None, &opts()).unwrap();
    assert_eq!(conv.unknown.len(), 1, "{:?}", conv.unknown);
    assert!(conv.unknown[0].contains("something_new"));

    // A Conv1d with a kernel wider than 1, or an empty one, cannot be folded: an error
    // naming the file, never a panic.
    for shape in [[W[0], 3, 2], [0, 3, 1]] {
        let mut point = point_ckpt(&mut rng);
        point.add(
            &mut rng,
            "base_model.MAE_encoder.encoder.first_conv.0.weight",
            &shape,
        );
        let (_, ps) = point.save("point-kernel.safetensors");
        let e = convert(None, Some(&ps), None, &opts()).unwrap_err();
        assert!(e.to_string().contains("point-kernel.safetensors"), "{e}");
    }

    // A fusion module whose RGB width contradicts the ViT is refused.
    let (_, vs) = vit_ckpt(&mut rng).save("vit-ok.safetensors");
    let (_, fs) = fusion_ckpt(&mut rng, VIT_DIM + 8, PT_DIM * 3).save("fusion-bad.safetensors");
    assert!(convert(Some(&vs), None, Some(&fs), &opts()).is_err());
}

fn to_owned(c: &Ckpt) -> OwnedTensors {
    let mut t = OwnedTensors {
        origin: "mutated checkpoint".into(),
        ..Default::default()
    };
    for (n, (s, v)) in &c.f32s {
        t.insert(n.clone(), s.clone(), v.clone());
    }
    t
}

/// 200 seeded random checkpoints whose tensors have arbitrary shapes (wrong rank, zero or
/// odd sizes) or are missing: the converter answers Ok or Err, never panics.
#[test]
fn converter_never_panics_on_odd_shapes() {
    let mut g = Rng::new(200);
    for _ in 0..200 {
        let edits: Vec<(usize, Vec<usize>, bool)> = (0..1 + g.below(5))
            .map(|_| {
                let pick = g.next_u64() as usize;
                let shape = (0..g.below(5)).map(|_| g.below(6) as usize).collect();
                (pick, shape, g.below(2) == 1)
            })
            .collect();
        let which = g.below(3) as usize;
        let mut rng = Rng::new(1);
        let mut cks = [
            vit_ckpt(&mut rng),
            point_ckpt(&mut rng),
            fusion_ckpt(&mut rng, VIT_DIM, PT_DIM * 3),
        ];
        let ck = &mut cks[which];
        for (pick, shape, remove) in edits {
            let names: Vec<String> = ck.f32s.keys().cloned().collect();
            let name = &names[pick % names.len()];
            if remove {
                ck.f32s.remove(name);
            } else {
                let n = shape.iter().product();
                ck.f32s.insert(name.clone(), (shape, vec![0.5; n]));
            }
        }
        let [v, p, f] = &cks;
        let (v, p, f) = (to_owned(v), to_owned(p), to_owned(f));
        let _ = convert(Some(&v), Some(&p), Some(&f), &opts());
        let _ = convert(None, Some(&p), None, &ConvertOptions::default());
    }
}
