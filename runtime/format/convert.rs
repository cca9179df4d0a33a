//! Turns the published checkpoints of the method (as safetensors, see
//! `weights/pth2safetensors.py`) into one miad model file.
//!
//! Each branch is optional. Shapes are read from the tensors, so ViT-S/8, other depths
//! or widths convert too; what shapes cannot tell (head counts, group sizes) comes from
//! [`ConvertOptions`]. Every source name is accounted for: used, known-but-unused
//! (reported as ignored), or unknown (reported). A missing name is an error.

use super::error::FormatError;
use super::model::model_tensor_specs;
use super::source::{OwnedTensors, TensorSource};
use crate::config::{FusionConfig, ModelConfig, PointConfig, PreprocessConfig, VitConfig};
use std::collections::BTreeSet;

/// What shapes cannot tell.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// ViT heads; default dim / 64.
    pub vit_heads: Option<u32>,
    /// Point-MAE heads; default dim / 64.
    pub point_heads: Option<u32>,
    pub num_groups: u32,
    pub group_size: u32,
    /// Point-MAE blocks whose outputs are concatenated; default the reference's [3, 7, 11]
    /// for depth 12, else the last block of each third.
    pub out_layers: Option<Vec<u32>>,
    pub preprocess: PreprocessConfig,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            vit_heads: None,
            point_heads: None,
            num_groups: 1024,
            group_size: 128,
            out_layers: None,
            preprocess: PreprocessConfig::default(),
        }
    }
}

/// The outcome: a configuration, its tensors (named as in the model file) and a report.
#[derive(Debug)]
pub struct Converted {
    pub config: ModelConfig,
    pub tensors: OwnedTensors,
    /// Source names recognised but not needed at inspection (MAE decoder, masks, …).
    pub ignored: Vec<String>,
    /// Source names nobody recognised.
    pub unknown: Vec<String>,
}

/// Prefixes stripped from source names (DDP, DINO teacher/student, checkpoint wrappers).
const PREFIXES: [&str; 7] = [
    "module.",
    "backbone.",
    "base_model.",
    "model.",
    "teacher.",
    "student.",
    "MAE_encoder.",
];

fn strip(name: &str) -> String {
    let mut s = name;
    loop {
        match PREFIXES.iter().find(|p| s.starts_with(*p)) {
            Some(p) => s = &s[p.len()..],
            None => return s.to_string(),
        }
    }
}

/// A source checkpoint with normalised names, tracking which ones were used.
struct Source<'a> {
    what: &'static str,
    src: &'a OwnedTensors,
    names: std::collections::BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl<'a> Source<'a> {
    fn new(what: &'static str, src: &'a OwnedTensors) -> Self {
        let names = src.tensors.keys().map(|k| (strip(k), k.clone())).collect();
        Source {
            what,
            src,
            names,
            used: BTreeSet::new(),
        }
    }
    fn get(&mut self, name: &str) -> Result<(&'a [usize], &'a [f32]), FormatError> {
        let original = self.names.get(name).ok_or_else(|| {
            FormatError::Invalid(format!(
                "{} checkpoint {}: missing tensor {name}",
                self.what, self.src.origin
            ))
        })?;
        self.used.insert(name.to_string());
        let (shape, data) = &self.src.tensors[original];
        Ok((shape, data))
    }
    fn shape(&mut self, name: &str, dims: usize) -> Result<Vec<usize>, FormatError> {
        let (s, _) = self.get(name)?;
        if s.len() != dims {
            return Err(FormatError::Invalid(format!(
                "{} checkpoint {}: tensor {name} has {} dimensions, expected {dims}",
                self.what,
                self.src.origin,
                s.len()
            )));
        }
        Ok(s.to_vec())
    }
    fn depth(&self, prefix: &str) -> usize {
        self.names
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }
    /// Copies `from` to `to` in `out`, dropping a trailing singleton (Conv1d kernel size 1).
    fn copy(&mut self, out: &mut OwnedTensors, from: &str, to: &str) -> Result<(), FormatError> {
        let (shape, data) = self.get(from)?;
        let mut shape = shape.to_vec();
        if shape.len() == 3 && shape[2] == 1 {
            shape.pop();
        }
        out.insert(to, shape, data.to_vec());
        Ok(())
    }
    fn leftovers(
        &self,
        ignored_if: impl Fn(&str) -> bool,
        ignored: &mut Vec<String>,
        unknown: &mut Vec<String>,
    ) {
        for (norm, original) in &self.names {
            if self.used.contains(norm) {
                continue;
            }
            if ignored_if(norm) {
                ignored.push(format!("{}: {original}", self.what));
            } else {
                unknown.push(format!("{}: {original}", self.what));
            }
        }
    }
}

/// Folds an eval-mode BatchNorm (`weight, bias, running_mean, running_var`, eps) into the
/// preceding 1×1 convolution `[out, in]` + bias.
pub fn fold_batchnorm(
    w: &mut [f32],
    b: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) {
    let out = b.len();
    let inp = w.len() / out;
    for o in 0..out {
        let scale = gamma[o] / (var[o] + eps).sqrt();
        w[o * inp..(o + 1) * inp]
            .iter_mut()
            .for_each(|v| *v *= scale);
        b[o] = (b[o] - mean[o]) * scale + beta[o];
    }
}

const BLOCK_PARTS: [&str; 11] = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
];

fn convert_vit(
    s: &mut Source,
    out: &mut OwnedTensors,
    opts: &ConvertOptions,
) -> Result<VitConfig, FormatError> {
    let cls = s.shape("cls_token", 3)?;
    let dim = cls[2];
    let patch = s.shape("patch_embed.proj.weight", 4)?;
    let pos = s.shape("pos_embed", 3)?;
    let grid = ((pos[1].saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != pos[1] {
        return Err(FormatError::Invalid(format!(
            "ViT checkpoint {}: pos_embed has {} tokens, not a square grid + 1",
            s.src.origin, pos[1]
        )));
    }
    let depth = s.depth("blocks.");
    let mlp = s.shape("blocks.0.mlp.fc1.weight", 2)?[0];
    let cfg = VitConfig {
        image_size: (grid * patch[2]) as u32,
        patch_size: patch[2] as u32,
        in_chans: patch[1] as u32,
        dim: dim as u32,
        depth: depth as u32,
        heads: opts.vit_heads.unwrap_or((dim / 64).max(1) as u32),
        mlp_dim: mlp as u32,
        ln_eps: 1e-6,
    };
    for n in [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    ] {
        s.copy(out, n, &format!("vit.{n}"))?;
    }
    for i in 0..depth {
        for part in BLOCK_PARTS.iter().chain(&["attn.qkv.bias"]) {
            s.copy(
                out,
                &format!("blocks.{i}.{part}"),
                &format!("vit.blocks.{i}.{part}"),
            )?;
        }
    }
    Ok(cfg)
}

fn convert_point(
    s: &mut Source,
    out: &mut OwnedTensors,
    opts: &ConvertOptions,
) -> Result<PointConfig, FormatError> {
    let w1 = s.shape("encoder.first_conv.0.weight", 3)?[0];
    let w2 = s.shape("encoder.first_conv.3.weight", 3)?[0];
    let w3 = s.shape("encoder.second_conv.0.weight", 3)?[0];
    let dim = s.shape("encoder.second_conv.3.weight", 3)?[0];
    let pos_hidden = s.shape("pos_embed.0.weight", 2)?[0];
    let depth = s.depth("blocks.blocks.");
    let mlp = s.shape("blocks.blocks.0.mlp.fc1.weight", 2)?[0];
    let out_layers = opts.out_layers.clone().unwrap_or_else(|| {
        if depth == 12 {
            vec![3, 7, 11]
        } else {
            (1..=3)
                .map(|k| (k * depth / 3).saturating_sub(1) as u32)
                .collect()
        }
    });
    let cfg = PointConfig {
        num_groups: opts.num_groups,
        group_size: opts.group_size,
        encoder_widths: [w1 as u32, w2 as u32, w3 as u32],
        pos_hidden: pos_hidden as u32,
        dim: dim as u32,
        depth: depth as u32,
        heads: opts.point_heads.unwrap_or((dim / 64).max(1) as u32),
        mlp_dim: mlp as u32,
        ln_eps: 1e-5,
        out_layers,
    };
    // The two BatchNorms (eps 1e-5, PyTorch's default) fold into conv1 and conv3.
    for (conv, bn, to) in [
        ("encoder.first_conv.0", "encoder.first_conv.1", "conv1"),
        ("encoder.second_conv.0", "encoder.second_conv.1", "conv3"),
    ] {
        let (shape, w) = s.get(&format!("{conv}.weight"))?;
        let mut w = w.to_vec();
        let mut b = s.get(&format!("{conv}.bias"))?.1.to_vec();
        let p = |s: &mut Source, n: &str| s.get(&format!("{bn}.{n}")).map(|(_, d)| d.to_vec());
        let (g, beta, mean, var) = (
            p(s, "weight")?,
            p(s, "bias")?,
            p(s, "running_mean")?,
            p(s, "running_var")?,
        );
        let kernel_1x1 = shape.len() == 3 && shape[2] == 1 && shape[0] > 0;
        if !kernel_1x1
            || b.len() != shape[0]
            || [g.len(), beta.len(), mean.len(), var.len()]
                .iter()
                .any(|&l| l != b.len())
        {
            return Err(FormatError::Invalid(format!(
                "Point-MAE checkpoint {}: {conv}.weight {shape:?} (a 1-wide Conv1d), its bias \
                 and the BatchNorm {bn} do not agree",
                s.src.origin
            )));
        }
        fold_batchnorm(&mut w, &mut b, &g, &beta, &mean, &var, 1e-5);
        out.insert(
            format!("point.encoder.{to}.weight"),
            vec![shape[0], shape[1]],
            w,
        );
        out.insert(format!("point.encoder.{to}.bias"), vec![b.len()], b);
        s.used.insert(format!("{bn}.num_batches_tracked"));
    }
    for (from, to) in [
        ("encoder.first_conv.3", "conv2"),
        ("encoder.second_conv.3", "conv4"),
    ] {
        s.copy(
            out,
            &format!("{from}.weight"),
            &format!("point.encoder.{to}.weight"),
        )?;
        s.copy(
            out,
            &format!("{from}.bias"),
            &format!("point.encoder.{to}.bias"),
        )?;
    }
    for (from, to) in [("pos_embed.0", "fc1"), ("pos_embed.2", "fc2")] {
        for p in ["weight", "bias"] {
            s.copy(
                out,
                &format!("{from}.{p}"),
                &format!("point.pos_embed.{to}.{p}"),
            )?;
        }
    }
    for i in 0..depth {
        for part in BLOCK_PARTS {
            s.copy(
                out,
                &format!("blocks.blocks.{i}.{part}"),
                &format!("point.blocks.{i}.{part}"),
            )?;
        }
    }
    s.copy(out, "norm.weight", "point.norm.weight")?;
    s.copy(out, "norm.bias", "point.norm.bias")?;
    Ok(cfg)
}

fn convert_fusion(s: &mut Source, out: &mut OwnedTensors) -> Result<FusionConfig, FormatError> {
    let xyz = s.shape("xyz_norm.weight", 1)?[0];
    let rgb = s.shape("rgb_norm.weight", 1)?[0];
    let hidden = s.shape("xyz_mlp.fc1.weight", 2)?[0];
    let head = s.shape("rgb_head.weight", 2)?[0];
    if xyz == 0 || hidden % xyz != 0 {
        return Err(FormatError::Invalid(format!(
            "fusion checkpoint {}: xyz_mlp.fc1 width {hidden} is not a multiple of the \
             xyz_norm width {xyz}",
            s.src.origin
        )));
    }
    for n in [
        "xyz_norm",
        "rgb_norm",
        "xyz_mlp.fc1",
        "xyz_mlp.fc2",
        "rgb_mlp.fc1",
        "rgb_mlp.fc2",
        "rgb_head",
        "xyz_head",
    ] {
        for p in ["weight", "bias"] {
            s.copy(out, &format!("{n}.{p}"), &format!("fusion.{n}.{p}"))?;
        }
    }
    Ok(FusionConfig {
        rgb_dim: rgb as u32,
        xyz_dim: xyz as u32,
        mlp_ratio: (hidden / xyz) as u32,
        ln_eps: 1e-5,
        head_dim: head as u32,
    })
}

/// Converts whichever checkpoints are given into one model's configuration and tensors,
/// and checks the result against [`model_tensor_specs`].
pub fn convert(
    vit: Option<&OwnedTensors>,
    point_mae: Option<&OwnedTensors>,
    fusion: Option<&OwnedTensors>,
    opts: &ConvertOptions,
) -> Result<Converted, FormatError> {
    if vit.is_none() && point_mae.is_none() && fusion.is_none() {
        return Err(FormatError::Invalid(
            "nothing to convert: give at least one checkpoint".into(),
        ));
    }
    let mut tensors = OwnedTensors {
        origin: "converted checkpoints".into(),
        ..Default::default()
    };
    let (mut ignored, mut unknown) = (Vec::new(), Vec::new());
    let mut names = Vec::new();
    let vit_cfg = match vit {
        Some(src) => {
            let mut s = Source::new("ViT", src);
            let c = convert_vit(&mut s, &mut tensors, opts)?;
            s.leftovers(
                |n| n.starts_with("head") || n.starts_with("fc_norm") || n == "mask_token",
                &mut ignored,
                &mut unknown,
            );
            names.push(format!("ViT from {}", src.origin));
            Some(c)
        }
        None => None,
    };
    let point_cfg = match point_mae {
        Some(src) => {
            let mut s = Source::new("Point-MAE", src);
            let c = convert_point(&mut s, &mut tensors, opts)?;
            let mae_only = |n: &str| {
                [
                    "MAE_decoder",
                    "decoder",
                    "mask_token",
                    "increase_dim",
                    "cls_token",
                    "cls_pos",
                    "cls_head",
                    "head",
                ]
                .iter()
                .any(|p| n.starts_with(p))
            };
            s.leftovers(mae_only, &mut ignored, &mut unknown);
            names.push(format!("Point-MAE from {}", src.origin));
            Some(c)
        }
        None => None,
    };
    let fusion_cfg = match fusion {
        Some(src) => {
            let mut s = Source::new("fusion", src);
            let c = convert_fusion(&mut s, &mut tensors)?;
            s.leftovers(|_| false, &mut ignored, &mut unknown);
            names.push(format!("fusion from {}", src.origin));
            Some(c)
        }
        None => None,
    };
    let mut preprocess = opts.preprocess.clone();
    if let Some(v) = &vit_cfg {
        // Keep the xyz grid at the same fraction of the input (56 of 224 in the method),
        // unless the given grid already fits this ViT. It must be a multiple of the ViT grid
        // (the RGB features are upsampled onto it) and fit in the image; else 2 × the grid.
        let grid = v.image_size / v.patch_size.max(1);
        let fits = |g: u32| {
            g > 0 && grid > 0 && g.is_multiple_of(grid) && g.saturating_add(2) <= v.image_size
        };
        if !fits(preprocess.xyz_grid) {
            let scaled = u64::from(preprocess.xyz_grid) * u64::from(v.image_size)
                / u64::from(preprocess.image_size.max(1));
            preprocess.xyz_grid = u32::try_from(scaled).unwrap_or(0);
            if !fits(preprocess.xyz_grid) {
                preprocess.xyz_grid = grid.saturating_mul(2);
            }
        }
        preprocess.image_size = v.image_size;
    }
    let config = ModelConfig {
        name: names.join(", "),
        vit: vit_cfg,
        point: point_cfg,
        fusion: fusion_cfg,
        radar: None,
        preprocess,
    };
    super::model::validate_model_config(&config).map_err(|e| {
        FormatError::Invalid(format!("converted configuration ({}): {e}", config.name))
    })?;
    for spec in model_tensor_specs(&config) {
        tensors.f32(&spec.name, &spec.shape)?;
    }
    Ok(Converted {
        config,
        tensors,
        ignored,
        unknown,
    })
}
