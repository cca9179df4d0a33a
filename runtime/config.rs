//! Model configuration: every size the pipeline uses comes from here, and this is read
//! from the model file's manifest. Nothing in the stages hard-codes a method size.
//!
//! Tensor names inside a model file (shapes are PyTorch's, weights `[out, in]`):
//! - `vit.*`: timm `vit_base_patch8_224.dino` names (`cls_token`, `pos_embed`,
//!   `patch_embed.proj.{weight,bias}`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}`,
//!   `norm.{weight,bias}`).
//! - `point.*`: the Point-MAE encoder with BatchNorm folded: `encoder.conv{1,2,3,4}.{weight,bias}`
//!   (`[128,3] [256,128] [512,512] [384,512]`), `pos_embed.fc{1,2}.{weight,bias}`,
//!   `blocks.N.{norm1,norm2}.{weight,bias}`, `blocks.N.attn.qkv.weight` (no bias),
//!   `blocks.N.attn.proj.{weight,bias}`, `blocks.N.mlp.fc{1,2}.{weight,bias}`, `norm.{weight,bias}`.
//! - `fusion.*`: `xyz_norm`, `xyz_mlp.fc{1,2}`, `rgb_norm`, `rgb_mlp.fc{1,2}` (weight, bias),
//!   and the training heads `rgb_head`, `xyz_head` (kept for provenance, unused at inspection).

use rkyv::{Archive, Deserialize, Serialize};

/// DINO ViT (SPEC §2).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct VitConfig {
    pub image_size: u32,
    pub patch_size: u32,
    pub in_chans: u32,
    pub dim: u32,
    pub depth: u32,
    pub heads: u32,
    pub mlp_dim: u32,
    pub ln_eps: f32,
}

impl VitConfig {
    /// ViT-B/8 at 224×224, the method's RGB backbone.
    pub fn base8() -> Self {
        VitConfig {
            image_size: 224,
            patch_size: 8,
            in_chans: 3,
            dim: 768,
            depth: 12,
            heads: 12,
            mlp_dim: 3072,
            ln_eps: 1e-6,
        }
    }
    /// A small variant for tests: 64×64 input, depth 2, width 96, 3 heads.
    pub fn small() -> Self {
        VitConfig {
            image_size: 64,
            patch_size: 8,
            in_chans: 3,
            dim: 96,
            depth: 2,
            heads: 3,
            mlp_dim: 384,
            ln_eps: 1e-6,
        }
    }
    /// Patches per side.
    pub fn grid(&self) -> usize {
        (self.image_size / self.patch_size) as usize
    }
    /// Patch tokens (without the class token).
    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Tokens including the class token.
    pub fn tokens(&self) -> usize {
        self.patches() + 1
    }
    pub fn head_dim(&self) -> usize {
        (self.dim / self.heads) as usize
    }
}

/// Point-MAE encoder (SPEC §3).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PointConfig {
    /// M: number of groups (FPS centers).
    pub num_groups: u32,
    /// S: points per group.
    pub group_size: u32,
    /// Widths of the group encoder: conv1 out, conv2 out, conv3 out (conv4 out = `dim`).
    pub encoder_widths: [u32; 3],
    pub pos_hidden: u32,
    pub dim: u32,
    pub depth: u32,
    pub heads: u32,
    pub mlp_dim: u32,
    pub ln_eps: f32,
    /// Blocks (0-based) whose outputs, after the final norm, are concatenated.
    pub out_layers: Vec<u32>,
}

impl PointConfig {
    pub fn m3dm() -> Self {
        PointConfig {
            num_groups: 1024,
            group_size: 128,
            encoder_widths: [128, 256, 512],
            pos_hidden: 128,
            dim: 384,
            depth: 12,
            heads: 6,
            mlp_dim: 1536,
            ln_eps: 1e-5,
            out_layers: vec![3, 7, 11],
        }
    }
    /// Small variant for tests: 64 groups of 16, 2 blocks, width 96.
    pub fn small() -> Self {
        PointConfig {
            num_groups: 64,
            group_size: 16,
            encoder_widths: [32, 64, 128],
            pos_hidden: 32,
            dim: 96,
            depth: 2,
            heads: 3,
            mlp_dim: 384,
            ln_eps: 1e-5,
            out_layers: vec![0, 1],
        }
    }
    /// Width of one group feature: `dim × out_layers.len()` (1152 for M3DM).
    pub fn feature_dim(&self) -> usize {
        self.dim as usize * self.out_layers.len()
    }
    pub fn head_dim(&self) -> usize {
        (self.dim / self.heads) as usize
    }
}

/// The M3DM unsupervised feature fusion module (SPEC §5).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FusionConfig {
    pub rgb_dim: u32,
    pub xyz_dim: u32,
    pub mlp_ratio: u32,
    pub ln_eps: f32,
    pub head_dim: u32,
}

impl FusionConfig {
    pub fn m3dm() -> Self {
        FusionConfig {
            rgb_dim: 768,
            xyz_dim: 1152,
            mlp_ratio: 4,
            ln_eps: 1e-5,
            head_dim: 256,
        }
    }
    pub fn fused_dim(&self) -> usize {
        (self.rgb_dim + self.xyz_dim) as usize
    }
}

/// RADAR's Stage 1, adaptive instruction fusion (docs/RADAR-FUSION.md §9b): a small
/// transformer over the concatenated patch tokens with one instruction per case, whose
/// output conditions the UFF-shaped MLPs. A model with it keeps the fused bank layout.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RadarConfig {
    /// Token width `d` (256 in §9b).
    pub dim: u32,
    /// Transformer blocks; each takes its own instructions (layers 0..depth).
    pub depth: u32,
    pub heads: u32,
    /// Instruction tokens per case and layer (16).
    pub instruction_len: u32,
    /// Width of the HyperNetwork's layer encodings (64).
    pub hyper_dim: u32,
    /// Side of the token grid: the RGB feature grid (28 for ViT-B/8 at 224).
    pub token_grid: u32,
    pub ln_eps: f32,
    /// The Real-Pseudo Hybrid Module (§9c): one more block, attention masked between
    /// real and pseudo tokens, before the split.
    pub hybrid: bool,
}

impl RadarConfig {
    /// The sizes of docs/RADAR-FUSION.md §9b on a `token_grid`² RGB grid.
    pub fn paper(token_grid: u32) -> Self {
        RadarConfig {
            dim: 256,
            depth: 4,
            heads: 4,
            instruction_len: 16,
            hyper_dim: 64,
            token_grid,
            ln_eps: 1e-5,
            hybrid: true,
        }
    }
    /// Tokens of the sequence: the instructions, then the cloud and RGB tokens.
    pub fn tokens(&self) -> usize {
        self.instruction_len as usize + 2 * (self.token_grid * self.token_grid) as usize
    }
    /// Cases with an instruction: complete, rgb-only (cloud missing), cloud-only.
    pub const CASES: usize = 3;
}

/// Preprocessing of a part (SPEC §1). All of it is per product, so it lives in the model file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PreprocessConfig {
    /// Side of the network input (224).
    pub image_size: u32,
    /// Side of the xyz patch grid (56).
    pub xyz_grid: u32,
    /// Width of the image frame whose points define the background plane (10).
    pub border: u32,
    /// RANSAC inlier distance (0.004).
    pub ransac_threshold: f32,
    /// Points drawn per RANSAC hypothesis (50 in the reference).
    pub ransac_points: u32,
    pub ransac_iterations: u32,
    pub ransac_seed: u64,
    /// Points closer than this to the plane are removed (0.005).
    pub plane_distance: f32,
    /// Squares are padded to a multiple of this (100).
    pub pad_multiple: u32,
    /// Two 8-neighbour pixels are connected when closer than this in 3-D (0.006).
    pub cluster_eps: f32,
    /// Minimum cluster size (30).
    pub cluster_min_points: u32,
    /// ImageNet normalisation.
    pub rgb_mean: [f32; 3],
    pub rgb_std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            image_size: 224,
            xyz_grid: 56,
            border: 10,
            ransac_threshold: 0.004,
            ransac_points: 50,
            ransac_iterations: 1000,
            ransac_seed: 0x6d69_6164,
            plane_distance: 0.005,
            pad_multiple: 100,
            cluster_eps: 0.006,
            cluster_min_points: 30,
            rgb_mean: [0.485, 0.456, 0.406],
            rgb_std: [0.229, 0.224, 0.225],
        }
    }
}

/// Everything a model file describes. A branch that is `None` is absent from the file
/// (an RGB-only model holds only the ViT).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ModelConfig {
    /// Free text: preset name or the checkpoints it was converted from.
    pub name: String,
    pub vit: Option<VitConfig>,
    pub point: Option<PointConfig>,
    pub fusion: Option<FusionConfig>,
    /// RADAR's adaptive instruction fusion on top of `fusion` (absent: M3DM's UFF).
    pub radar: Option<RadarConfig>,
    pub preprocess: PreprocessConfig,
}

impl ModelConfig {
    /// Full method sizes: ViT-B/8, Point-MAE 1024×128, fusion.
    pub fn m3dm() -> Self {
        ModelConfig {
            name: "m3dm".into(),
            vit: Some(VitConfig::base8()),
            point: Some(PointConfig::m3dm()),
            fusion: Some(FusionConfig::m3dm()),
            radar: None,
            preprocess: PreprocessConfig::default(),
        }
    }
    /// The demo's sizes: small networks (ViT depth 4, width 192, 8×8 patches; Point-MAE
    /// 256 groups of 32, depth 4, width 192) at 112×112, fast on two cores.
    pub fn demo() -> Self {
        let vit = VitConfig {
            image_size: 112,
            dim: 192,
            depth: 4,
            heads: 3,
            mlp_dim: 768,
            ..VitConfig::small()
        };
        let point = PointConfig {
            num_groups: 256,
            group_size: 32,
            encoder_widths: [64, 128, 192],
            pos_hidden: 64,
            dim: 192,
            depth: 4,
            heads: 3,
            mlp_dim: 768,
            out_layers: vec![1, 3],
            ..PointConfig::small()
        };
        let fusion = FusionConfig {
            rgb_dim: vit.dim,
            xyz_dim: point.feature_dim() as u32,
            mlp_ratio: 4,
            ln_eps: 1e-5,
            head_dim: 64,
        };
        ModelConfig {
            name: "demo".into(),
            vit: Some(vit),
            point: Some(point),
            fusion: Some(fusion),
            radar: None,
            preprocess: PreprocessConfig {
                image_size: 112,
                xyz_grid: 28,
                ..PreprocessConfig::default()
            },
        }
    }
    /// Small test sizes: every branch present, 64×64 RGB input, 64 groups of 16.
    pub fn small() -> Self {
        let vit = VitConfig::small();
        let point = PointConfig::small();
        let fusion = FusionConfig {
            rgb_dim: vit.dim,
            xyz_dim: point.feature_dim() as u32,
            mlp_ratio: 4,
            ln_eps: 1e-5,
            head_dim: 32,
        };
        ModelConfig {
            name: "small".into(),
            vit: Some(vit),
            point: Some(point),
            fusion: Some(fusion),
            radar: None,
            preprocess: PreprocessConfig {
                image_size: 64,
                xyz_grid: 16,
                // A tenth of the reference's hypotheses: the background of a test part is
                // found as well, and on the simulated device each hypothesis is a block of
                // emulated threads (most of an emulated part's preprocessing).
                ransac_iterations: 100,
                ..PreprocessConfig::default()
            },
        }
    }
}

/// What a bank file describes besides its tensors (memory banks, normalisation,
/// decision layers, thresholds). The fit issue fills in the decision fields.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct BankConfig {
    /// Identity of the model file the banks were built with (see `format`): a bank file
    /// is refused with any other model file.
    pub model_id: [u8; 16],
    /// The model file's name at fit time, for messages.
    pub model_name: String,
    /// Product category, free text.
    pub category: String,
    /// Which banks the method uses (the paper's ablation rows).
    pub variant: BankVariant,
    /// Per-bank scalar normalisation `(x − mean) / std` (SPEC §6), applied to a part's
    /// features before the search; the stored banks are already normalised.
    pub rgb_norm: FeatureNorm,
    pub xyz_norm: FeatureNorm,
    pub fused_norm: FeatureNorm,
    /// Bank sizes (rows, including the xyz bank's appended background row); 0 = absent.
    pub rgb_rows: u32,
    pub xyz_rows: u32,
    pub fused_rows: u32,
    /// Feature widths of the banks.
    pub rgb_dim: u32,
    pub xyz_dim: u32,
    pub fused_dim: u32,
    /// Patch grid sides the banks were built on (28 and 56 at M3DM sizes).
    pub rgb_grid: u32,
    pub xyz_grid: u32,
    /// Side of the anomaly map (224) and the blur σ (4).
    pub map_size: u32,
    pub blur_sigma: f32,
    /// Weights of (xyz, rgb, fused) in the score vectors (SPEC §8: 1.0, 0.1, 1.0).
    pub score_weights: [f32; 3],
    /// Linear one-class SVM over part score vectors: score = w·a (higher = more anomalous).
    pub part_svm: LinearSvm,
    /// Linear one-class SVM over pixel map vectors.
    pub pixel_svm: LinearSvm,
    /// Calibrated decisions.
    pub thresholds: Thresholds,
    /// Fit provenance: parts used, coreset ratio, seed, how the training scores were made.
    pub fit: FitInfo,
}

/// Which memory banks a bank file holds and scores with.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum BankVariant {
    Rgb,
    Xyz,
    Fused,
    RgbXyz,
    Full,
}

impl BankVariant {
    /// (xyz, rgb, fused) used.
    pub fn banks(self) -> [bool; 3] {
        match self {
            BankVariant::Rgb => [false, true, false],
            BankVariant::Xyz => [true, false, false],
            BankVariant::Fused => [false, false, true],
            BankVariant::RgbXyz => [true, true, false],
            BankVariant::Full => [true, true, true],
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BankVariant::Rgb => "rgb",
            BankVariant::Xyz => "xyz",
            BankVariant::Fused => "fused",
            BankVariant::RgbXyz => "rgb+xyz",
            BankVariant::Full => "full",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rgb" => BankVariant::Rgb,
            "xyz" => BankVariant::Xyz,
            "fused" => BankVariant::Fused,
            "rgb+xyz" | "rgbxyz" => BankVariant::RgbXyz,
            "full" => BankVariant::Full,
            _ => return None,
        })
    }
}

/// Scalar feature normalisation of one bank.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FeatureNorm {
    pub mean: f32,
    pub std: f32,
}

impl Default for FeatureNorm {
    fn default() -> Self {
        FeatureNorm {
            mean: 0.0,
            std: 1.0,
        }
    }
}

/// A linear one-class SVM: `decision = w·v − offset` (scikit-learn's `decision_function`);
/// the anomaly score the method uses is the raw `w·v` (SPEC §8).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct LinearSvm {
    pub w: [f32; 3],
    pub offset: f32,
}

/// Decision thresholds, calibrated at fit time, overridable at inspection time.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Thresholds {
    /// A part fails when its final score is above this.
    pub part: f32,
    /// Pixels of the final map above this form defect regions.
    pub pixel: f32,
    /// Optional grey band `[low, high]` of part scores reported as "uncertain".
    pub grey_band: Option<[f32; 2]>,
    /// The false-reject rate the thresholds were calibrated at (0.01 by default).
    pub false_reject_rate: f32,
    /// Statistics of the training part scores the calibration used.
    pub train_score_mean: f32,
    pub train_score_std: f32,
    pub train_score_max: f32,
    pub train_parts: u32,
}

/// How a bank file was fitted.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct FitInfo {
    pub parts: u32,
    pub coreset_ratio: f32,
    pub coreset_seed: u64,
    /// "leave-one-out" or "held-out N".
    pub scoring: String,
    /// Room for later fields (RADAR per-case statistics).
    pub extra: Vec<KeyValue>,
}

/// A free-form field of a bank file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl BankConfig {
    /// A bank configuration with neutral decision fields (fit fills them in).
    pub fn empty(model_id: [u8; 16], model_name: &str, category: &str) -> Self {
        BankConfig {
            model_id,
            model_name: model_name.into(),
            category: category.into(),
            variant: BankVariant::Full,
            rgb_norm: FeatureNorm::default(),
            xyz_norm: FeatureNorm::default(),
            fused_norm: FeatureNorm::default(),
            rgb_rows: 0,
            xyz_rows: 0,
            fused_rows: 0,
            rgb_dim: 0,
            xyz_dim: 0,
            fused_dim: 0,
            rgb_grid: 0,
            xyz_grid: 0,
            map_size: 224,
            blur_sigma: 4.0,
            score_weights: [1.0, 0.1, 1.0],
            part_svm: LinearSvm::default(),
            pixel_svm: LinearSvm::default(),
            thresholds: Thresholds::default(),
            fit: FitInfo::default(),
        }
    }
}
