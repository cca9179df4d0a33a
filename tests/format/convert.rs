//! The converter on safetensors files that carry the real checkpoint names (small shapes).

use miad::format::convert::{convert, fold_batchnorm, ConvertOptions};
use miad::format::{model_tensor_specs, OwnedTensors, TensorSource};
use miad::util::rng::Rng;
use std::collections::BTreeMap;

fn st_bytes(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, d))| {
            (
                k.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

fn put(
    m: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    rng: &mut Rng,
    name: &str,
    shape: &[usize],
) {
    let n = shape.iter().product();
    let mut d = vec![0f32; n];
    rng.fill_normal(&mut d, 0.5);
    if name.ends_with("running_var") {
        d.iter_mut().for_each(|v| *v = v.abs() + 0.1);
    }
    m.insert(name.to_string(), (shape.to_vec(), d));
}

fn block(
    m: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    rng: &mut Rng,
    p: &str,
    d: usize,
    h: usize,
    qkv_bias: bool,
) {
    for (n, s) in [
        ("norm1.weight", vec![d]),
        ("norm1.bias", vec![d]),
        ("attn.qkv.weight", vec![3 * d, d]),
        ("attn.proj.weight", vec![d, d]),
        ("attn.proj.bias", vec![d]),
        ("norm2.weight", vec![d]),
        ("norm2.bias", vec![d]),
        ("mlp.fc1.weight", vec![h, d]),
        ("mlp.fc1.bias", vec![h]),
        ("mlp.fc2.weight", vec![d, h]),
        ("mlp.fc2.bias", vec![d]),
    ] {
        put(m, rng, &format!("{p}{n}"), &s);
    }
    if qkv_bias {
        put(m, rng, &format!("{p}attn.qkv.bias"), &[3 * d]);
    }
}

#[test]
fn converts_real_names_and_folds_batchnorm_exactly() {
    let mut rng = Rng::new(9);
    // DINO ViT as released (teacher weights under a prefix), ViT-S-like widths.
    let mut vit = BTreeMap::new();
    let (d, p, grid) = (64, 8, 4);
    put(&mut vit, &mut rng, "teacher.backbone.cls_token", &[1, 1, d]);
    put(
        &mut vit,
        &mut rng,
        "teacher.backbone.pos_embed",
        &[1, grid * grid + 1, d],
    );
    put(
        &mut vit,
        &mut rng,
        "teacher.backbone.patch_embed.proj.weight",
        &[d, 3, p, p],
    );
    put(
        &mut vit,
        &mut rng,
        "teacher.backbone.patch_embed.proj.bias",
        &[d],
    );
    for i in 0..3 {
        block(
            &mut vit,
            &mut rng,
            &format!("teacher.backbone.blocks.{i}."),
            d,
            4 * d,
            true,
        );
    }
    put(&mut vit, &mut rng, "teacher.backbone.norm.weight", &[d]);
    put(&mut vit, &mut rng, "teacher.backbone.norm.bias", &[d]);
    put(&mut vit, &mut rng, "teacher.head.mlp.0.weight", &[8, d]);

    // Point-MAE pretraining checkpoint.
    let mut pm = BTreeMap::new();
    let (w1, w2, w3, pd) = (16, 32, 64, 64);
    let e = "base_model.MAE_encoder.";
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.first_conv.0.weight"),
        &[w1, 3, 1],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.first_conv.0.bias"),
        &[w1],
    );
    for n in ["weight", "bias", "running_mean", "running_var"] {
        put(
            &mut pm,
            &mut rng,
            &format!("{e}encoder.first_conv.1.{n}"),
            &[w1],
        );
        put(
            &mut pm,
            &mut rng,
            &format!("{e}encoder.second_conv.1.{n}"),
            &[w3],
        );
    }
    pm.insert(
        format!("{e}encoder.first_conv.1.num_batches_tracked"),
        (vec![], vec![3.0]),
    );
    pm.insert(
        format!("{e}encoder.second_conv.1.num_batches_tracked"),
        (vec![], vec![3.0]),
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.first_conv.3.weight"),
        &[w2, w1, 1],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.first_conv.3.bias"),
        &[w2],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.second_conv.0.weight"),
        &[w3, 2 * w2, 1],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.second_conv.0.bias"),
        &[w3],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.second_conv.3.weight"),
        &[pd, w3, 1],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}encoder.second_conv.3.bias"),
        &[pd],
    );
    put(
        &mut pm,
        &mut rng,
        &format!("{e}pos_embed.0.weight"),
        &[32, 3],
    );
    put(&mut pm, &mut rng, &format!("{e}pos_embed.0.bias"), &[32]);
    put(
        &mut pm,
        &mut rng,
        &format!("{e}pos_embed.2.weight"),
        &[pd, 32],
    );
    put(&mut pm, &mut rng, &format!("{e}pos_embed.2.bias"), &[pd]);
    for i in 0..12 {
        block(
            &mut pm,
            &mut rng,
            &format!("{e}blocks.blocks.{i}."),
            pd,
            4 * pd,
            false,
        );
    }
    put(&mut pm, &mut rng, &format!("{e}norm.weight"), &[pd]);
    put(&mut pm, &mut rng, &format!("{e}norm.bias"), &[pd]);
    put(
        &mut pm,
        &mut rng,
        "base_model.MAE_decoder.blocks.blocks.0.norm1.weight",
        &[pd],
    );
    put(&mut pm, &mut rng, "base_model.mask_token", &[1, 1, pd]);
    put(&mut pm, &mut rng, "base_model.something_new", &[2]);

    // M3DM fusion block.
    let mut fu = BTreeMap::new();
    let (fx, fr) = (3 * pd, d);
    for (n, s) in [
        ("xyz_norm.weight", vec![fx]),
        ("xyz_norm.bias", vec![fx]),
        ("xyz_mlp.fc1.weight", vec![4 * fx, fx]),
        ("xyz_mlp.fc1.bias", vec![4 * fx]),
        ("xyz_mlp.fc2.weight", vec![fx, 4 * fx]),
        ("xyz_mlp.fc2.bias", vec![fx]),
        ("rgb_norm.weight", vec![fr]),
        ("rgb_norm.bias", vec![fr]),
        ("rgb_mlp.fc1.weight", vec![4 * fr, fr]),
        ("rgb_mlp.fc1.bias", vec![4 * fr]),
        ("rgb_mlp.fc2.weight", vec![fr, 4 * fr]),
        ("rgb_mlp.fc2.bias", vec![fr]),
        ("rgb_head.weight", vec![16, fr]),
        ("rgb_head.bias", vec![16]),
        ("xyz_head.weight", vec![16, fx]),
        ("xyz_head.bias", vec![16]),
    ] {
        put(&mut fu, &mut rng, &format!("module.{n}"), &s);
    }

    let load = |m: &BTreeMap<_, _>, what: &str| {
        OwnedTensors::from_safetensors_bytes(&st_bytes(m), what).unwrap()
    };
    let (v, p, f) = (load(&vit, "vit"), load(&pm, "pm"), load(&fu, "fusion"));
    let opts = ConvertOptions {
        num_groups: 32,
        group_size: 8,
        ..Default::default()
    };
    let c = convert(Some(&v), Some(&p), Some(&f), &opts).unwrap();
    let vc = c.config.vit.as_ref().unwrap();
    assert_eq!(
        (
            vc.dim,
            vc.depth,
            vc.heads,
            vc.patch_size,
            vc.image_size,
            vc.mlp_dim
        ),
        (64, 3, 1, 8, 32, 256)
    );
    let pc = c.config.point.as_ref().unwrap();
    assert_eq!(
        (
            pc.dim,
            pc.depth,
            pc.encoder_widths,
            pc.pos_hidden,
            pc.out_layers.clone()
        ),
        (64, 12, [16, 32, 64], 32, vec![3, 7, 11])
    );
    let fc = c.config.fusion.as_ref().unwrap();
    assert_eq!(
        (fc.rgb_dim, fc.xyz_dim, fc.mlp_ratio, fc.head_dim),
        (64, 192, 4, 16)
    );
    assert!(
        c.unknown.iter().any(|n| n.contains("something_new")),
        "{:?}",
        c.unknown
    );
    assert!(c.ignored.iter().any(|n| n.contains("MAE_decoder")));
    assert!(c.ignored.iter().any(|n| n.contains("teacher.head")));
    assert!(!c.unknown.iter().any(|n| n.contains("num_batches_tracked")));

    // Every tensor the configuration needs is there; copies are exact.
    for s in model_tensor_specs(&c.config) {
        c.tensors.f32(&s.name, &s.shape).unwrap();
    }
    assert_eq!(
        c.tensors
            .f32("vit.blocks.2.mlp.fc2.weight", &[64, 256])
            .unwrap(),
        &vit["teacher.backbone.blocks.2.mlp.fc2.weight"].1[..]
    );
    assert_eq!(
        c.tensors
            .f32("point.encoder.conv2.weight", &[w2, w1])
            .unwrap(),
        &pm[&format!("{e}encoder.first_conv.3.weight")].1[..]
    );
    assert_eq!(
        c.tensors.f32("fusion.xyz_mlp.fc1.bias", &[4 * fx]).unwrap(),
        &fu["module.xyz_mlp.fc1.bias"].1[..]
    );

    // BatchNorm fold, checked numerically: conv + BN (eval) on random points in f64
    // against the folded conv in f32.
    let g = |n: &str| &pm[&format!("{e}encoder.first_conv.{n}")].1;
    let (w, b) = (g("0.weight"), g("0.bias"));
    let (gamma, beta, mean, var) = (
        g("1.weight"),
        g("1.bias"),
        g("1.running_mean"),
        g("1.running_var"),
    );
    let fw = c
        .tensors
        .f32("point.encoder.conv1.weight", &[w1, 3])
        .unwrap();
    let fb = c.tensors.f32("point.encoder.conv1.bias", &[w1]).unwrap();
    for _ in 0..20 {
        let x = [rng.normal(), rng.normal(), rng.normal()];
        for o in 0..w1 {
            let conv: f64 = b[o] as f64
                + (0..3)
                    .map(|i| w[o * 3 + i] as f64 * x[i] as f64)
                    .sum::<f64>();
            let bn = (conv - mean[o] as f64) / (var[o] as f64 + 1e-5).sqrt() * gamma[o] as f64
                + beta[o] as f64;
            let folded = fb[o] + (0..3).map(|i| fw[o * 3 + i] * x[i]).sum::<f32>();
            assert!(
                (bn - folded as f64).abs() < 1e-4 * (1.0 + bn.abs()),
                "{bn} vs {folded}"
            );
        }
    }
}

#[test]
fn missing_names_are_errors_and_branches_are_optional() {
    let mut rng = Rng::new(1);
    let mut fu = BTreeMap::new();
    put(&mut fu, &mut rng, "xyz_norm.weight", &[8]);
    let f = OwnedTensors::from_safetensors_bytes(&st_bytes(&fu), "fusion").unwrap();
    let e = convert(None, None, Some(&f), &ConvertOptions::default()).unwrap_err();
    assert!(e.to_string().contains("missing tensor"), "{e}");
    assert!(convert(None, None, None, &ConvertOptions::default()).is_err());
}

#[test]
fn fold_batchnorm_matches_the_definition() {
    let mut w = vec![1.0, 2.0, -1.0, 0.5];
    let mut b = vec![0.5, -0.5];
    fold_batchnorm(
        &mut w,
        &mut b,
        &[2.0, 1.0],
        &[0.1, 0.2],
        &[1.0, -1.0],
        &[3.0, 0.0],
        1.0,
    );
    // channel 0: scale 2/2 = 1; channel 1: scale 1/1 = 1
    assert_eq!(w, vec![1.0, 2.0, -1.0, 0.5]);
    assert_eq!(b, vec![(0.5 - 1.0) + 0.1, (-0.5 + 1.0) + 0.2]);
}
