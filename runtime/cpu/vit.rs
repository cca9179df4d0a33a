//! The RGB branch on the CPU: the DINO vision transformer of SPEC §2.
//!
//! Patch embedding is one GEMM: the image is unfolded (im2col) into a
//! `patches × (channels·p·p)` matrix in scratch, multiplied by the convolution weight
//! viewed as `[dim, channels·p·p]`, and accumulated onto the position embedding already
//! written into the token buffer (so "+ pos" costs no extra pass). Then the class token,
//! the pre-norm blocks of [`super::transformer`], the final LayerNorm written straight
//! into the caller's output, class token dropped. Every size comes from [`VitConfig`].

use super::dense::DensePrecision;
use super::gemm::{linear, Epilogue, Mat};
use super::pool::{Pool, SharedMut};
use super::transformer::{
    block_forward_with, block_scratch_len, check_shape, layer_norm, BlockPacked, BlockShape,
    BlockWeights,
};
use crate::config::VitConfig;
use crate::format::TensorSource;
use crate::{Error, Result};

/// The ViT's weights, borrowed from a [`TensorSource`] (names `vit.*`, timm layout).
pub struct VitWeights<'a> {
    /// `[dim]`
    pub cls_token: &'a [f32],
    /// `[tokens, dim]`
    pub pos_embed: &'a [f32],
    /// `[dim, channels·p·p]`
    pub patch_w: &'a [f32],
    pub patch_b: &'a [f32],
    pub blocks: Vec<BlockWeights<'a>>,
    pub norm_w: &'a [f32],
    pub norm_b: &'a [f32],
}

/// The shape of every block of the ViT.
pub fn block_shape(cfg: &VitConfig) -> BlockShape {
    BlockShape {
        tokens: cfg.tokens(),
        dim: cfg.dim as usize,
        heads: cfg.heads as usize,
        mlp_dim: cfg.mlp_dim as usize,
        ln_eps: cfg.ln_eps,
    }
}

/// Refuses configurations the forward pass cannot run.
pub fn check_config(cfg: &VitConfig) -> Result<()> {
    if cfg.patch_size == 0 || cfg.in_chans == 0 || cfg.depth == 0 || cfg.image_size == 0 {
        return Err(Error::Config(format!("ViT with a zero size: {cfg:?}")));
    }
    if !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return Err(Error::Config(format!(
            "ViT image size {} is not a multiple of the patch size {}",
            cfg.image_size, cfg.patch_size
        )));
    }
    check_shape(&block_shape(cfg))
}

impl<'a> VitWeights<'a> {
    pub fn load<S: TensorSource + ?Sized>(src: &'a S, cfg: &VitConfig) -> Result<Self> {
        check_config(cfg)?;
        let d = cfg.dim as usize;
        let (c, p) = (cfg.in_chans as usize, cfg.patch_size as usize);
        let shape = block_shape(cfg);
        let blocks = (0..cfg.depth)
            .map(|i| BlockWeights::load(src, &format!("vit.blocks.{i}."), &shape, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(VitWeights {
            cls_token: src.f32("vit.cls_token", &[1, 1, d])?,
            pos_embed: src.f32("vit.pos_embed", &[1, cfg.tokens(), d])?,
            patch_w: src.f32("vit.patch_embed.proj.weight", &[d, c, p, p])?,
            patch_b: src.f32("vit.patch_embed.proj.bias", &[d])?,
            blocks,
            norm_w: src.f32("vit.norm.weight", &[d])?,
            norm_b: src.f32("vit.norm.bias", &[d])?,
        })
    }

    /// The blocks' dense layers packed once for [`vit_forward_with`] (f32 or bf16);
    /// `None` for bf16 where the CPU has no AVX512-BF16. The patch embedding is not
    /// packed and stays f32 (one small GEMM; the input pixels keep their precision).
    pub fn packed(&self, cfg: &VitConfig, precision: DensePrecision) -> Option<Vec<BlockPacked>> {
        let shape = block_shape(cfg);
        self.blocks
            .iter()
            .map(|b| BlockPacked::new(&shape, b, precision))
            .collect()
    }
}

/// Scratch floats [`vit_forward`] needs for a pool of `threads` threads.
pub fn vit_scratch_len(cfg: &VitConfig, threads: usize) -> usize {
    let d = cfg.dim as usize;
    let unfold = cfg.patches() * (cfg.in_chans * cfg.patch_size * cfg.patch_size) as usize;
    cfg.tokens() * d + unfold.max(block_scratch_len(&block_shape(cfg), threads))
}

/// Floating-point operations of one forward pass (2·m·n·k per product).
pub fn vit_flops(cfg: &VitConfig) -> f64 {
    let k = (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f64;
    2.0 * cfg.patches() as f64 * k * cfg.dim as f64 + cfg.depth as f64 * block_shape(cfg).flops()
}

/// `out` (`patches × dim`, row-major, token `t` ↔ grid row `t / grid`, column `t % grid`)
/// ← the ViT features of `input` (`channels × image × image`, normalised, CHW f32).
/// No allocation; `scratch` needs [`vit_scratch_len`]`(cfg, pool.threads())` floats.
pub fn vit_forward(
    pool: &Pool,
    cfg: &VitConfig,
    w: &VitWeights<'_>,
    input: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    vit_forward_with(pool, cfg, w, &[], input, out, scratch)
}

/// [`vit_forward`] with the blocks' dense layers through their packed weights when
/// `packed` holds one entry per block ([`VitWeights::packed`]; f32: the same bits,
/// bf16: the bf16 path); empty: the weights packed as the products go.
pub fn vit_forward_with(
    pool: &Pool,
    cfg: &VitConfig,
    w: &VitWeights<'_>,
    packed: &[BlockPacked],
    input: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let d = cfg.dim as usize;
    let (c, p, side) = (
        cfg.in_chans as usize,
        cfg.patch_size as usize,
        cfg.image_size as usize,
    );
    let (grid, patches, tokens) = (cfg.grid(), cfg.patches(), cfg.tokens());
    if input.len() != c * side * side {
        return Err(Error::Input(format!(
            "ViT input has {} values, {c}×{side}×{side} expected",
            input.len()
        )));
    }
    if out.len() < patches * d {
        return Err(Error::Input(format!(
            "ViT output buffer has {} values, {patches}×{d} needed",
            out.len()
        )));
    }
    if scratch.len() < vit_scratch_len(cfg, pool.threads())
        || w.blocks.len() != cfg.depth as usize
        || !(packed.is_empty() || packed.len() == w.blocks.len())
    {
        return Err(Error::Input(
            "ViT scratch or weights do not match the configuration".into(),
        ));
    }
    let (x, rest) = scratch.split_at_mut(tokens * d);
    let k = c * p * p;

    // Patch embedding: unfold, then x[1..] = pos[1..] + unfold · Wᵀ + b.
    {
        let unfold = &mut rest[..patches * k];
        let unfold_ptr = SharedMut::new(unfold);
        pool.run(grid, &|gy, _| {
            // SAFETY: task gy writes the rows of patch row gy only.
            let rows = unsafe { unfold_ptr.slice(gy * grid * k, grid * k) };
            for gx in 0..grid {
                let row = &mut rows[gx * k..(gx + 1) * k];
                for ch in 0..c {
                    for ky in 0..p {
                        let src = (ch * side + gy * p + ky) * side + gx * p;
                        let dst = (ch * p + ky) * p;
                        row[dst..dst + p].copy_from_slice(&input[src..src + p]);
                    }
                }
            }
        });
        x[..d]
            .iter_mut()
            .zip(w.cls_token.iter().zip(&w.pos_embed[..d]))
            .for_each(|(x, (c, p))| *x = c + p);
        x[d..].copy_from_slice(&w.pos_embed[d..tokens * d]);
        linear(
            pool,
            Mat::new(unfold, patches, k),
            Mat::new(w.patch_w, d, k),
            Some(w.patch_b),
            &mut x[d..],
            d,
            Epilogue::Accumulate,
        );
    }

    let shape = block_shape(cfg);
    for (i, bw) in w.blocks.iter().enumerate() {
        block_forward_with(pool, &shape, bw, packed.get(i), x, rest);
    }
    layer_norm(
        pool,
        patches,
        d,
        &x[d..],
        &mut out[..patches * d],
        w.norm_w,
        w.norm_b,
        cfg.ln_eps,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::OwnedTensors;

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        let mut cfg = VitConfig::small();
        cfg.image_size = 60;
        assert!(check_config(&cfg).is_err());
        let mut cfg = VitConfig::small();
        cfg.heads = 5;
        assert!(check_config(&cfg).is_err());
        let empty = OwnedTensors::default();
        assert!(VitWeights::load(&empty, &VitConfig::small()).is_err());
    }

    #[test]
    fn flops_of_base8_are_about_156_gflop() {
        let f = vit_flops(&VitConfig::base8());
        assert!((150e9..160e9).contains(&f), "{f}");
    }
}
