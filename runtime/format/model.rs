//! Model and bank files on top of the container: the list of tensors a model
//! configuration needs, validation against it, and seeded random models.

use super::container::{Container, Dtype, Element, FileConfig, OpenOptions, TensorEntry, Writer};
use super::error::FormatError;
use super::source::{OwnedTensors, TensorSource};
use crate::config::{BankConfig, FusionConfig, ModelConfig, RadarConfig};
use crate::util::rng::Rng;
use std::path::Path;

/// A tensor a configuration needs: name and PyTorch shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

fn spec(out: &mut Vec<TensorSpec>, name: String, shape: &[usize]) {
    out.push(TensorSpec {
        name,
        shape: shape.to_vec(),
    });
}

/// Linear layer `prefix{weight,bias}` of `[out, inp]`.
fn linear(out: &mut Vec<TensorSpec>, prefix: &str, o: usize, i: usize, bias: bool) {
    spec(out, format!("{prefix}weight"), &[o, i]);
    if bias {
        spec(out, format!("{prefix}bias"), &[o]);
    }
}

fn norm(out: &mut Vec<TensorSpec>, prefix: &str, d: usize) {
    spec(out, format!("{prefix}weight"), &[d]);
    spec(out, format!("{prefix}bias"), &[d]);
}

fn blocks(
    out: &mut Vec<TensorSpec>,
    prefix: &str,
    depth: usize,
    d: usize,
    mlp: usize,
    qkv_bias: bool,
) {
    for i in 0..depth {
        block(out, &format!("{prefix}blocks.{i}."), d, mlp, qkv_bias);
    }
}

/// One pre-norm transformer block under `b` (ViT names).
fn block(out: &mut Vec<TensorSpec>, b: &str, d: usize, mlp: usize, qkv_bias: bool) {
    norm(out, &format!("{b}norm1."), d);
    linear(out, &format!("{b}attn.qkv."), 3 * d, d, qkv_bias);
    linear(out, &format!("{b}attn.proj."), d, d, true);
    norm(out, &format!("{b}norm2."), d);
    linear(out, &format!("{b}mlp.fc1."), mlp, d, true);
    linear(out, &format!("{b}mlp.fc2."), d, mlp, true);
}

/// Every tensor a model file of this configuration holds, in file order. The single
/// list of names and shapes: validation, the converter and random models all use it.
pub fn model_tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    if let Some(v) = &cfg.vit {
        let (d, p) = (v.dim as usize, v.patch_size as usize);
        spec(&mut out, "vit.cls_token".into(), &[1, 1, d]);
        spec(&mut out, "vit.pos_embed".into(), &[1, v.tokens(), d]);
        spec(
            &mut out,
            "vit.patch_embed.proj.weight".into(),
            &[d, v.in_chans as usize, p, p],
        );
        spec(&mut out, "vit.patch_embed.proj.bias".into(), &[d]);
        blocks(
            &mut out,
            "vit.",
            v.depth as usize,
            d,
            v.mlp_dim as usize,
            true,
        );
        norm(&mut out, "vit.norm.", d);
    }
    if let Some(pc) = &cfg.point {
        let [w1, w2, w3] = pc.encoder_widths.map(|w| w as usize);
        let d = pc.dim as usize;
        linear(&mut out, "point.encoder.conv1.", w1, 3, true);
        linear(&mut out, "point.encoder.conv2.", w2, w1, true);
        linear(&mut out, "point.encoder.conv3.", w3, 2 * w2, true);
        linear(&mut out, "point.encoder.conv4.", d, w3, true);
        linear(
            &mut out,
            "point.pos_embed.fc1.",
            pc.pos_hidden as usize,
            3,
            true,
        );
        linear(
            &mut out,
            "point.pos_embed.fc2.",
            d,
            pc.pos_hidden as usize,
            true,
        );
        blocks(
            &mut out,
            "point.",
            pc.depth as usize,
            d,
            pc.mlp_dim as usize,
            false,
        );
        norm(&mut out, "point.norm.", d);
    }
    if let Some(f) = &cfg.fusion {
        let (r, x, m) = (f.rgb_dim as usize, f.xyz_dim as usize, f.mlp_ratio as usize);
        norm(&mut out, "fusion.xyz_norm.", x);
        linear(&mut out, "fusion.xyz_mlp.fc1.", m * x, x, true);
        linear(&mut out, "fusion.xyz_mlp.fc2.", x, m * x, true);
        norm(&mut out, "fusion.rgb_norm.", r);
        linear(&mut out, "fusion.rgb_mlp.fc1.", m * r, r, true);
        linear(&mut out, "fusion.rgb_mlp.fc2.", r, m * r, true);
        linear(&mut out, "fusion.rgb_head.", f.head_dim as usize, r, true);
        linear(&mut out, "fusion.xyz_head.", f.head_dim as usize, x, true);
        if let Some(r) = &cfg.radar {
            out.extend(radar_tensor_specs(f, r));
        }
    }
    out
}

/// The tensors of RADAR's adaptive instruction fusion (docs/RADAR-FUSION.md §9b, "Stored
/// tensors"), in file order; the UFF tensors (`fusion.*`) it builds on are listed apart.
pub fn radar_tensor_specs(f: &FusionConfig, r: &RadarConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let (dx, dr, m) = (f.xyz_dim as usize, f.rgb_dim as usize, f.mlp_ratio as usize);
    let (d, depth, len, hd) = (
        r.dim as usize,
        r.depth as usize,
        r.instruction_len as usize,
        r.hyper_dim as usize,
    );
    spec(
        &mut out,
        "radar.instructions".into(),
        &[RadarConfig::CASES, depth, len, d],
    );
    let grid = r.token_grid as usize;
    spec(&mut out, "radar.pos_embed".into(), &[grid * grid, d]);
    spec(&mut out, "radar.type_embed".into(), &[2, d]);
    for (b, din) in [("pc", dx), ("rgb", dr)] {
        norm(&mut out, &format!("radar.{b}_in.norm."), din);
        linear(&mut out, &format!("radar.{b}_in.proj."), d, din, true);
    }
    blocks(&mut out, "radar.", depth, d, 4 * d, true);
    if r.hybrid {
        block(&mut out, "radar.hybrid.", d, 4 * d, true);
    }
    linear(&mut out, "radar.pc_ctx.", dx, d, false);
    linear(&mut out, "radar.rgb_ctx.", dr, d, false);
    for e in ["pc_1", "pc_2", "rgb_1", "rgb_2"] {
        linear(&mut out, &format!("radar.hyper.enc_{e}."), hd, d, true);
    }
    linear(&mut out, "radar.hyper.fc1.", hd, hd, true);
    for (e, n) in [
        ("pc_1", m * dx),
        ("pc_2", dx),
        ("rgb_1", m * dr),
        ("rgb_2", dr),
    ] {
        linear(&mut out, &format!("radar.hyper.out_{e}."), n, hd, true);
    }
    out
}

/// Checks a configuration for sizes that make no sense (zero, indivisible) before any
/// buffer is planned from it.
pub fn validate_model_config(cfg: &ModelConfig) -> Result<(), String> {
    // Generous bounds that keep every size product far from overflow and the tensor list
    // short, whatever a (checksummed but hostile) manifest says.
    const MAX_WIDTH: u32 = 1 << 16;
    const MAX_DEPTH: u32 = 1024;
    const MAX_SIDE: u32 = 1 << 14;
    let within = |what: &str, v: u32, max: u32| {
        if v == 0 || v > max {
            Err(format!("{what} {v} is outside 1..={max}"))
        } else {
            Ok(())
        }
    };
    let eps = |what: &str, e: f32| {
        if e.is_finite() && e > 0.0 {
            Ok(())
        } else {
            Err(format!("{what} LayerNorm eps {e} is not a positive number"))
        }
    };
    if let Some(v) = &cfg.vit {
        within("ViT image size", v.image_size, MAX_SIDE)?;
        within("ViT patch size", v.patch_size, MAX_SIDE)?;
        within("ViT width", v.dim, MAX_WIDTH)?;
        within("ViT depth", v.depth, MAX_DEPTH)?;
        within("ViT heads", v.heads, MAX_WIDTH)?;
        within("ViT MLP width", v.mlp_dim, MAX_WIDTH * 8)?;
        eps("ViT", v.ln_eps)?;
    }
    if let Some(p) = &cfg.point {
        within("Point-MAE groups", p.num_groups, 1 << 20)?;
        within("Point-MAE group size", p.group_size, MAX_WIDTH)?;
        for &w in &p.encoder_widths {
            within("Point-MAE encoder width", w, MAX_WIDTH)?;
        }
        within("Point-MAE position hidden width", p.pos_hidden, MAX_WIDTH)?;
        within("Point-MAE width", p.dim, MAX_WIDTH)?;
        within("Point-MAE depth", p.depth, MAX_DEPTH)?;
        within("Point-MAE heads", p.heads, MAX_WIDTH)?;
        within("Point-MAE MLP width", p.mlp_dim, MAX_WIDTH * 8)?;
        if p.out_layers.len() > p.depth as usize {
            return Err(format!(
                "Point-MAE has {} output layers for depth {}",
                p.out_layers.len(),
                p.depth
            ));
        }
        eps("Point-MAE", p.ln_eps)?;
    }
    if let Some(f) = &cfg.fusion {
        within("fusion RGB width", f.rgb_dim, MAX_WIDTH * 8)?;
        within("fusion xyz width", f.xyz_dim, MAX_WIDTH * 8)?;
        within("fusion MLP ratio", f.mlp_ratio, 64)?;
        within("fusion head width", f.head_dim, MAX_WIDTH)?;
        eps("fusion", f.ln_eps)?;
        if let Some(v) = &cfg.vit {
            if f.rgb_dim != v.dim {
                return Err(format!(
                    "fusion RGB width {} differs from the ViT width {}",
                    f.rgb_dim, v.dim
                ));
            }
        }
        if let Some(p) = &cfg.point {
            if f.xyz_dim as usize != p.feature_dim() {
                return Err(format!(
                    "fusion xyz width {} differs from the Point-MAE feature width {}",
                    f.xyz_dim,
                    p.feature_dim()
                ));
            }
        }
    }
    if let Some(r) = &cfg.radar {
        if cfg.fusion.is_none() {
            return Err("RADAR fusion without the UFF tensors it builds on".into());
        }
        within("RADAR width", r.dim, MAX_WIDTH)?;
        within("RADAR depth", r.depth, 64)?;
        within("RADAR heads", r.heads, MAX_WIDTH)?;
        within("RADAR instruction length", r.instruction_len, 1024)?;
        within("RADAR hypernetwork width", r.hyper_dim, MAX_WIDTH)?;
        within("RADAR token grid", r.token_grid, 1024)?;
        eps("RADAR", r.ln_eps)?;
        if r.dim % r.heads != 0 {
            return Err(format!(
                "RADAR width {} is not a multiple of its {} heads",
                r.dim, r.heads
            ));
        }
        if let Some(v) = &cfg.vit {
            if r.token_grid as usize != v.grid() {
                return Err(format!(
                    "RADAR token grid {} differs from the ViT grid {}",
                    r.token_grid,
                    v.grid()
                ));
            }
        }
    }
    within(
        "preprocessing image size",
        cfg.preprocess.image_size,
        MAX_SIDE,
    )?;
    within("preprocessing xyz grid", cfg.preprocess.xyz_grid, MAX_SIDE)?;
    if let Some(v) = &cfg.vit {
        if v.patch_size == 0 || v.image_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(format!(
                "ViT image size {} is not a multiple of patch size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.heads == 0 || v.dim % v.heads != 0 || v.depth == 0 || v.mlp_dim == 0 || v.in_chans != 3
        {
            return Err(format!(
                "ViT dim {} / heads {} / depth {} / channels {} are inconsistent",
                v.dim, v.heads, v.depth, v.in_chans
            ));
        }
        if v.image_size != cfg.preprocess.image_size {
            return Err(format!(
                "ViT input {} differs from the preprocessing size {}",
                v.image_size, cfg.preprocess.image_size
            ));
        }
    }
    if let Some(p) = &cfg.point {
        if p.heads == 0
            || p.dim % p.heads != 0
            || p.num_groups == 0
            || p.group_size == 0
            || p.depth == 0
        {
            return Err("Point-MAE sizes are inconsistent (heads, dim, groups)".into());
        }
        if p.out_layers.is_empty() || p.out_layers.iter().any(|&l| l >= p.depth) {
            return Err(format!(
                "Point-MAE output layers {:?} outside depth {}",
                p.out_layers, p.depth
            ));
        }
    }
    if let (Some(f), Some(v), Some(p)) = (&cfg.fusion, &cfg.vit, &cfg.point) {
        if f.rgb_dim != v.dim || f.xyz_dim as usize != p.feature_dim() {
            return Err(format!(
                "fusion widths {}+{} do not match the branches ({}+{})",
                f.rgb_dim,
                f.xyz_dim,
                v.dim,
                p.feature_dim()
            ));
        }
    }
    super::limits::check_model_numbers(cfg)?;
    let pre = &cfg.preprocess;
    if pre.image_size == 0
        || pre.xyz_grid == 0
        || pre.xyz_grid + 2 > pre.image_size
        || pre.pad_multiple == 0
    {
        return Err("preprocessing sizes are inconsistent".into());
    }
    if let Some(v) = &cfg.vit {
        if !(pre.xyz_grid as usize).is_multiple_of(v.grid()) {
            return Err(format!(
                "xyz grid {} is not a multiple of the RGB grid {}",
                pre.xyz_grid,
                v.grid()
            ));
        }
    }
    Ok(())
}

/// An opened model file.
#[derive(Debug)]
pub struct ModelFile {
    container: Container,
    config: ModelConfig,
}

impl ModelFile {
    /// Maps and validates a model file: the container checks, then every tensor the
    /// configuration needs is present with its shape and dtype, and nothing else is there.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self, FormatError> {
        let container = Container::open(path, opts)?;
        let config = match &container.manifest().config {
            FileConfig::Model(c) => c.clone(),
            FileConfig::Bank(_) => {
                return Err(FormatError::WrongKind {
                    path: path.to_path_buf(),
                    expected: "model",
                    found: "bank",
                })
            }
        };
        validate_model_config(&config).map_err(|reason| FormatError::InvalidManifest {
            path: path.to_path_buf(),
            reason,
        })?;
        let specs = model_tensor_specs(&config);
        for s in &specs {
            let e = container
                .entry(&s.name)
                .ok_or_else(|| FormatError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: s.name.clone(),
                })?;
            check_entry(path, e, Dtype::F32, &s.shape)?;
        }
        if container.manifest().tensors.len() != specs.len() {
            let known: std::collections::BTreeSet<&str> =
                specs.iter().map(|s| s.name.as_str()).collect();
            if let Some(extra) = container
                .manifest()
                .tensors
                .iter()
                .find(|t| !known.contains(t.name.as_str()))
            {
                return Err(FormatError::UnknownTensor {
                    path: path.to_path_buf(),
                    tensor: extra.name.clone(),
                });
            }
        }
        Ok(ModelFile { container, config })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn id(&self) -> [u8; 16] {
        self.container.id()
    }
    pub fn path(&self) -> &Path {
        self.container.path()
    }
    pub fn container(&self) -> &Container {
        &self.container
    }
    /// A tensor of any element type, shape checked when given (model tensors are f32;
    /// this serves the f16/bf16 views other backends may add).
    pub fn typed<T: Element>(
        &self,
        name: &str,
        shape: Option<&[usize]>,
    ) -> Result<&[T], FormatError> {
        self.container.typed(name, shape)
    }
}

fn check_entry(
    path: &Path,
    e: &TensorEntry,
    dtype: Dtype,
    shape: &[usize],
) -> Result<(), FormatError> {
    if e.dtype != dtype {
        return Err(FormatError::DtypeMismatch {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            found: e.dtype.name(),
            expected: dtype.name(),
        });
    }
    if e.shape_usize() != shape {
        return Err(FormatError::ShapeMismatch {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            found: e.shape_usize(),
            expected: shape.to_vec(),
        });
    }
    Ok(())
}

impl TensorSource for ModelFile {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<&[f32], FormatError> {
        self.container.typed::<f32>(name, Some(shape))
    }
    fn contains(&self, name: &str) -> bool {
        self.container.entry(name).is_some()
    }
}

/// An opened bank file.
#[derive(Debug)]
pub struct BankFile {
    container: Container,
    config: BankConfig,
}

impl BankFile {
    /// Maps and validates a bank file. With `model`, refuses a bank built for another model file.
    pub fn open(
        path: &Path,
        opts: &OpenOptions,
        model: Option<&ModelFile>,
    ) -> Result<Self, FormatError> {
        let container = Container::open(path, opts)?;
        let config = match &container.manifest().config {
            FileConfig::Bank(c) => c.clone(),
            FileConfig::Model(_) => {
                return Err(FormatError::WrongKind {
                    path: path.to_path_buf(),
                    expected: "bank",
                    found: "model",
                })
            }
        };
        super::limits::check_bank_config(&config).map_err(|reason| {
            FormatError::InvalidManifest {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        if let Some(m) = model {
            if m.id() != config.model_id {
                return Err(FormatError::ModelMismatch {
                    path: path.to_path_buf(),
                    model_path: m.path().to_path_buf(),
                    model_name: config.model_name.clone(),
                    expected: hex(&config.model_id),
                    found: hex(&m.id()),
                });
            }
        }
        Ok(BankFile { container, config })
    }
    pub fn config(&self) -> &BankConfig {
        &self.config
    }
    pub fn id(&self) -> [u8; 16] {
        self.container.id()
    }
    pub fn path(&self) -> &Path {
        self.container.path()
    }
    pub fn container(&self) -> &Container {
        &self.container
    }
    /// A tensor of any element type, shape checked when given.
    pub fn typed<T: Element>(
        &self,
        name: &str,
        shape: Option<&[usize]>,
    ) -> Result<&[T], FormatError> {
        self.container.typed(name, shape)
    }
}

impl TensorSource for BankFile {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<&[f32], FormatError> {
        self.container.typed::<f32>(name, Some(shape))
    }
    fn contains(&self, name: &str) -> bool {
        self.container.entry(name).is_some()
    }
}

/// Lower-case hex of bytes, for identities in messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seeded random weights for every tensor of `cfg` (tests, benches, the demo).
/// LayerNorms are identity-initialised with a small jitter, linear layers normal with
/// std 1/sqrt(fan_in) (keeps activations O(1) through random depth), embeddings 0.02.
pub fn random_model(cfg: &ModelConfig, seed: u64) -> OwnedTensors {
    let mut rng = Rng::new(seed);
    let mut out = OwnedTensors {
        origin: format!("random model '{}' seed {seed}", cfg.name),
        ..Default::default()
    };
    for s in model_tensor_specs(cfg) {
        let n: usize = s.shape.iter().product();
        let mut data = vec![0f32; n];
        let name = s.name.as_str();
        let is_norm = name.contains("norm") && !name.contains("attn");
        if is_norm && name.ends_with("weight") {
            data.iter_mut().for_each(|v| *v = 1.0 + 0.05 * rng.normal());
        } else if name.ends_with("bias")
            || name.ends_with("cls_token")
            || name.ends_with("pos_embed")
        {
            rng.fill_normal(&mut data, 0.02);
        } else {
            let fan_in: usize = s.shape[1..].iter().product();
            rng.fill_normal(&mut data, 1.0 / (fan_in.max(1) as f32).sqrt());
        }
        out.insert(s.name, s.shape, data);
    }
    out
}

/// Writes a model file from tensors named as in [`model_tensor_specs`] (checked).
pub fn write_model(
    cfg: &ModelConfig,
    tensors: &OwnedTensors,
    provenance: &[(&str, &str)],
    path: &Path,
) -> Result<[u8; 16], FormatError> {
    validate_model_config(cfg).map_err(|reason| FormatError::InvalidManifest {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut w = Writer::model(cfg.clone());
    for (k, v) in provenance {
        w.provenance(*k, *v);
    }
    for s in model_tensor_specs(cfg) {
        let data = tensors.f32(&s.name, &s.shape)?;
        w.add_f32(s.name, &s.shape, data);
    }
    w.write(path)
}
