//! Launch wrappers of `kernels/attention.cu`: fused multi-head attention, the exact f32
//! path and the bf16 tensor-core path (its keys split over up to [`ATTENTION_MAX_SPLITS`]
//! blocks when one block per (query tile, head) would leave SMs idle, then merged by a
//! second kernel; [`Attention::key_splits`]). The bias + GELU after fc1 is [`super::gelu`],
//! LayerNorm [`super::embed::EmbedKernels::layernorm`]; residual adds are accumulating
//! GEMMs.
//!
//! Raw-driver style (see [`super`]): the struct loads its module once and keeps the
//! kernels; the launch methods take [`DevPtr`]s, launch on the [`Device`]'s stream
//! with a typed argument list and allocate nothing, so they can be recorded into a CUDA
//! graph. Sizes are validated on the host before any launch; buffer extents cannot be seen
//! through a `DevPtr`, so callers size their arena slots with the `*_len` helpers.
//!
//! Layout contract (timm): `qkv` is `[n_tokens, 3 * heads * d]` (token, {q,k,v}, head,
//! dim), the output `[n_tokens, heads * d]` with heads concatenated. The head dimension `d`
//! is 64 (ViT-B/8 and Point-MAE; [`Attention::new`], and the `*_len` helpers) or 32 (the
//! small test models; [`Attention::with_head_dim`]); token and head counts come from the
//! model configuration.

use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

/// The head dimension of the default attention kernels.
pub const ATTENTION_HEAD_DIM: usize = 64;
/// Every head dimension an attention kernel is built for (`kernels/attention.cu`).
pub const ATTENTION_HEAD_DIMS: [usize; 2] = [32, 64];
const ATTENTION_TILE: usize = 64;
/// Blocks a bf16 attention launch aims for: two per SM of an H100 (132 SMs), so that ViT-B/8
/// (13 query tiles × 12 heads = 156 blocks) splits its keys in two and Point-MAE (96) in
/// three. A constant, so that the partial-result buffer can be planned without a device; a
/// device whose SMs the unsplit grid already fills twice (Orin: 16 SMs) does not split
/// ([`Attention::launch_splits`]), since there the combine's traffic is pure cost.
pub const ATTENTION_TARGET_BLOCKS: usize = 264;
/// Most key splits of one bf16 attention launch.
pub const ATTENTION_MAX_SPLITS: usize = 4;
/// Fewest key tiles a split keeps: a split of one tile saves less than the combine launch
/// costs, so short sequences (the small test models' 65 tokens) are not split.
const MIN_TILES_PER_SPLIT: usize = 2;
/// Rows (token, head) per block of the combine kernel (`ATT_COMBINE_ROWS`).
const COMBINE_ROWS: usize = 8;
/// Largest grid y/z dimension.
const MAX_GRID_YZ: usize = 65_535;
/// The fused attention kernels (`kernels/attention.cu`).
pub struct Attention {
    f32_kernel: Kernel,
    bf16_kernel: Kernel,
    combine_kernel: Kernel,
    head_dim: usize,
    // Declared last: the functions above belong to it.
    _module: Module,
}

// SAFETY: the handles are driver objects used from the engine's thread; CUDA handles may
// move between threads (the context is made current with `Device::bind`).
unsafe impl Send for Attention {}

impl Attention {
    /// Loads `attention` for `dev` and looks its kernels up (creation time).
    pub fn new(dev: &Device) -> Result<Self> {
        Self::with_head_dim(dev, ATTENTION_HEAD_DIM)
    }

    /// The kernels for heads of `head_dim` (one of [`ATTENTION_HEAD_DIMS`]).
    pub fn with_head_dim(dev: &Device, head_dim: usize) -> Result<Self> {
        if !ATTENTION_HEAD_DIMS.contains(&head_dim) {
            return Err(Error::Config(format!(
                "attention: no kernel for a head dimension of {head_dim} (built for {ATTENTION_HEAD_DIMS:?})"
            )));
        }
        let module = Module::load(dev, "attention")?;
        // Literal names: tests/cuda/launch.rs checks every lookup against the prototypes.
        let (f32_kernel, bf16_kernel, combine_kernel) = if head_dim == 32 {
            (
                Kernel::find(&module, "attention_f32_d32")?,
                Kernel::find(&module, "attention_bf16_d32")?,
                Kernel::find(&module, "attention_combine_bf16_d32")?,
            )
        } else {
            (
                Kernel::find(&module, "attention_f32")?,
                Kernel::find(&module, "attention_bf16")?,
                Kernel::find(&module, "attention_combine_bf16")?,
            )
        };
        Ok(Self {
            f32_kernel,
            bf16_kernel,
            combine_kernel,
            head_dim,
            _module: module,
        })
    }

    /// The head dimension these kernels are built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Floating-point operations of one attention call (QK^T and PV) with heads of 64,
    /// for rate reports.
    pub fn flops(n_tokens: usize, heads: usize) -> f64 {
        Self::flops_with_head_dim(n_tokens, heads, ATTENTION_HEAD_DIM)
    }

    /// [`Self::flops`] for heads of `head_dim`.
    pub fn flops_with_head_dim(n_tokens: usize, heads: usize, head_dim: usize) -> f64 {
        4.0 * (n_tokens as f64).powi(2) * (head_dim * heads) as f64
    }

    /// Elements of the `qkv` input of `n_tokens` x `heads`.
    pub fn qkv_len(n_tokens: usize, heads: usize) -> usize {
        n_tokens * 3 * heads * ATTENTION_HEAD_DIM
    }

    /// Elements of the output of `n_tokens` x `heads`.
    pub fn out_len(n_tokens: usize, heads: usize) -> usize {
        n_tokens * heads * ATTENTION_HEAD_DIM
    }

    /// Key splits of a bf16 launch and key tiles per split: enough splits to reach
    /// [`ATTENTION_TARGET_BLOCKS`], at most [`ATTENTION_MAX_SPLITS`], each split at least
    /// `MIN_TILES_PER_SPLIT` tiles (the last may have fewer), none empty.
    pub fn key_splits(n_tokens: usize, heads: usize) -> (usize, usize) {
        let tiles = n_tokens.div_ceil(ATTENTION_TILE).max(1);
        let base = tiles * heads.max(1);
        let want = ATTENTION_TARGET_BLOCKS.div_ceil(base).clamp(
            1,
            ATTENTION_MAX_SPLITS.min(tiles.div_ceil(MIN_TILES_PER_SPLIT)),
        );
        let per_split = tiles.div_ceil(want);
        (tiles.div_ceil(per_split), per_split)
    }

    /// The key splits a launch on a device of `sm_count` SMs uses: none when the unsplit
    /// grid gives every SM two blocks, else [`Self::key_splits`]. The split changes the
    /// rounding (within the bf16 tolerance), so results may differ between such devices.
    pub fn launch_splits(n_tokens: usize, heads: usize, sm_count: usize) -> (usize, usize) {
        let tiles = n_tokens.div_ceil(ATTENTION_TILE).max(1);
        if tiles * heads >= 2 * sm_count {
            (1, tiles)
        } else {
            Self::key_splits(n_tokens, heads)
        }
    }

    /// f32 elements of the partial results a bf16 launch of `n_tokens` x `heads` writes
    /// (0 when it does not split its keys): per split and row, the unnormalised output and
    /// the (maximum, sum) pair.
    pub fn parts_len(n_tokens: usize, heads: usize) -> usize {
        match Self::key_splits(n_tokens, heads) {
            (1, _) => 0,
            (splits, _) => splits * n_tokens * heads * (ATTENTION_HEAD_DIM + 2),
        }
    }

    /// Checks a launch shape: non-zero, within the kernels' index range and grid limits.
    pub fn check_shape(n_tokens: usize, heads: usize) -> Result<()> {
        if n_tokens == 0
            || heads == 0
            || heads > MAX_GRID_YZ
            || n_tokens > i32::MAX as usize / 4
            || heads > i32::MAX as usize / (3 * ATTENTION_HEAD_DIM)
        {
            return Err(Error::Config(format!(
                "attention: invalid size {n_tokens} tokens x {heads} heads"
            )));
        }
        Ok(())
    }

    /// Checks a shape against buffer sizes (elements), as an engine does with its slots.
    pub fn check_buffers(
        n_tokens: usize,
        heads: usize,
        qkv_len: usize,
        out_len: usize,
    ) -> Result<()> {
        Self::check_shape(n_tokens, heads)?;
        if qkv_len < Self::qkv_len(n_tokens, heads) || out_len < Self::out_len(n_tokens, heads) {
            return Err(Error::Config(format!(
                "attention: buffers too small ({qkv_len}, {out_len}) for {n_tokens} x {heads} x {ATTENTION_HEAD_DIM}"
            )));
        }
        Ok(())
    }

    fn grid(n_tokens: usize, heads: usize) -> (u32, u32, u32) {
        (n_tokens.div_ceil(ATTENTION_TILE) as u32, heads as u32, 1)
    }

    /// Exact f32 attention with softmax scale `scale` (normally 64^-0.5).
    ///
    /// # Safety
    /// `qkv` must hold [`Self::qkv_len`] and `out` [`Self::out_len`] elements on `dev`.
    pub unsafe fn run_f32(
        &self,
        dev: &Device,
        qkv: DevPtr<f32>,
        out: DevPtr<f32>,
        n_tokens: usize,
        heads: usize,
        scale: f32,
    ) -> Result<()> {
        Self::check_shape(n_tokens, heads)?;
        let (n, h) = (n_tokens as i32, heads as i32);
        let mut a = kernel_args![qkv, out, n, h, scale];
        dev.launch(
            self.f32_kernel,
            Self::grid(n_tokens, heads),
            (64, 1, 1),
            0,
            &mut a,
        )
    }

    /// bf16 attention on tensor cores; buffers hold bf16 bit patterns. `parts` holds
    /// [`Self::parts_len`] f32 elements (may be null when that is 0): with several key
    /// splits, the split kernel and then the combine kernel are launched.
    ///
    /// # Safety
    /// As [`Self::run_f32`], and `parts` valid for [`Self::parts_len`] elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_bf16(
        &self,
        dev: &Device,
        qkv: DevPtr<u16>,
        out: DevPtr<u16>,
        parts: DevPtr<f32>,
        n_tokens: usize,
        heads: usize,
        scale: f32,
    ) -> Result<()> {
        Self::check_shape(n_tokens, heads)?;
        let sms = dev.sm_count.max(1) as usize;
        let (splits, per_split) = Self::launch_splits(n_tokens, heads, sms);
        if splits > 1 && parts.raw() == 0 {
            return Err(Error::Config(format!(
                "attention: {splits} key splits of {n_tokens} x {heads} need a partial-result buffer"
            )));
        }
        let (n, h, per) = (n_tokens as i32, heads as i32, per_split as i32);
        let (qkv, out) = (qkv.cast::<half::bf16>(), out.cast::<half::bf16>());
        let mut a = kernel_args![qkv, out, parts, n, h, scale, per];
        let (gx, gy, _) = Self::grid(n_tokens, heads);
        dev.launch(
            self.bf16_kernel,
            (gx, gy, splits as u32),
            (128, 1, 1),
            0,
            &mut a,
        )?;
        if splits == 1 {
            return Ok(());
        }
        let s = splits as i32;
        let mut c = kernel_args![parts, out, n, h, s];
        let blocks = (n_tokens * heads).div_ceil(COMBINE_ROWS) as u32;
        dev.launch(
            self.combine_kernel,
            (blocks, 1, 1),
            (COMBINE_ROWS as u32 * 32, 1, 1),
            0,
            &mut c,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shapes_are_checked_on_the_host() {
        assert!(Attention::check_shape(785, 12).is_ok());
        assert!(Attention::check_shape(0, 12).is_err());
        assert!(Attention::check_shape(10, 0).is_err());
        assert!(Attention::check_shape(10, MAX_GRID_YZ + 1).is_err());
        assert!(Attention::check_shape(i32::MAX as usize, 1).is_err());
        assert_eq!(Attention::qkv_len(785, 12), 785 * 2304);
        assert_eq!(Attention::out_len(785, 12), 785 * 768);
        assert!(Attention::check_buffers(4, 2, 10, 10).is_err());
        assert!(Attention::check_buffers(4, 2, 4 * 384, 4 * 128).is_ok());
        assert!(Attention::check_buffers(4, 2, 4 * 384 - 1, 4 * 128).is_err());
        assert!(Attention::check_buffers(4, 2, 4 * 384, 4 * 128 - 1).is_err());
        assert_eq!(Attention::grid(785, 12), (13, 12, 1));
    }

    #[test]
    fn keys_split_to_fill_the_target_blocks() {
        // ViT-B/8: 13 query tiles x 12 heads = 156 blocks -> 2 splits of 7 key tiles.
        assert_eq!(Attention::key_splits(785, 12), (2, 7));
        // Point-MAE: 16 x 6 = 96 -> 3 splits of 6 (the last has 4).
        assert_eq!(Attention::key_splits(1024, 6), (3, 6));
        // Enough blocks already: no split, no partial buffer.
        assert_eq!(Attention::key_splits(4096, 12), (1, 64));
        assert_eq!(Attention::parts_len(4096, 12), 0);
        // One or two key tiles do not split (the small models' 65 tokens); few tiles:
        // splits of two tiles, none empty.
        assert_eq!(Attention::key_splits(1, 1), (1, 1));
        assert_eq!(Attention::key_splits(64, 1), (1, 1));
        assert_eq!(Attention::key_splits(65, 3), (1, 2));
        assert_eq!(Attention::key_splits(129, 1), (2, 2));
        assert_eq!(Attention::key_splits(5 * 64, 1), (3, 2));
        assert_eq!(Attention::key_splits(9 * 64, 1), (3, 3));
        for n in 1..600 {
            for heads in [1, 3, 6, 12] {
                let (splits, per) = Attention::key_splits(n, heads);
                let tiles = n.div_ceil(ATTENTION_TILE);
                assert!((1..=ATTENTION_MAX_SPLITS).contains(&splits));
                assert!(
                    (splits - 1) * per < tiles && splits * per >= tiles,
                    "{n} {heads}"
                );
            }
        }
        assert_eq!(Attention::parts_len(785, 12), 2 * 785 * 12 * 66);
        // On a device: an H100 splits as planned, Orin's 16 SMs are already full.
        assert_eq!(Attention::launch_splits(785, 12, 132), (2, 7));
        assert_eq!(Attention::launch_splits(1024, 6, 132), (3, 6));
        assert_eq!(Attention::launch_splits(785, 12, 16), (1, 13));
        assert_eq!(Attention::launch_splits(1024, 6, 16), (1, 16));
        // Never more splits than planned (the buffer is sized by key_splits).
        for sms in [1, 16, 108, 132, 148, 1000] {
            for n in [1, 65, 300, 785, 1024, 4096] {
                assert!(Attention::launch_splits(n, 6, sms).0 <= Attention::key_splits(n, 6).0);
            }
        }
    }
}
