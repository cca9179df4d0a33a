//! The Point-MAE group encoder (SPEC §3.3) on bf16 tensor cores, the point branch's
//! encoder under `--precision bf16` (the f32 parity path keeps the fused
//! `group_encoder_f32` kernel).
//!
//! Per point the encoder is four dense layers, so over all `groups × s` points of a part
//! they are four GEMMs with `groups × s` rows (131 072 at M3DM sizes); they run through the
//! device GEMM ([`GemmPlan`]: cuBLASLt on a GPU, emulated on the simulated device) with
//! bf16 operands, f32 accumulation and bias epilogues. The small kernels of
//! `kernels/group_encoder.cu` ([`EncoderBf16Kernels`]) do conv1 (3 inputs: no GEMM shape),
//! the two max-over-group reductions and conv3's per-group half. Per pass of
//! [`EncoderBf16Sizes::pass_groups`] groups (`R` rows, `P` groups):
//!
//! | step | operation | output |
//! |------|-----------|--------|
//! | conv1 | `group_conv1_bf16`: relu(W1 x + b1) in f32 | `a`: R × c1 bf16 |
//! | conv2 | GEMM `a·W2ᵀ + b2` | `f`: R × c2 bf16 |
//! | max | `group_max_bf16` | `g`: P × c2 bf16 |
//! | conv3, group half | GEMM `g·W3[:, :c2]ᵀ + b3` | `u`: P × c3 f32 |
//! | conv3, point half | GEMM `f·W3[:, c2:]ᵀ` | `h3`: R × c3 bf16 |
//! | join | `group_bias_relu_bf16`: `relu(h3 + u[group])` | `h3` in place |
//! | conv4 | GEMM `h3·W4ᵀ` (the bias commutes with the max) | `a`: R × d bf16 |
//! | max | `group_max_bias_f32`: max + b4 | the tokens, P × d f32 |
//!
//! conv3 acts on [broadcast g, f]: split into its two halves as on the CPU
//! (`cpu::point_mae`), the 2·c2-wide concatenation is never built and the group half costs
//! one small GEMM per pass. Passes bound the activations' memory ([`MAX_PASS_ROWS`] rows:
//! 37.7 MB at M3DM widths, inside an H100's 50 MB L2, so each layer's output can be read
//! back from L2 rather than HBM) instead of the 302 MB a single pass of 131 072 rows would
//! hold. Weights are uploaded once, in bf16 (conv1's and the biases the
//! kernels read in f32).
//!
//! Rounding: activations are stored in bf16 between the layers (h1, f, h3, the conv4
//! output), every product accumulates in f32; tests/cuda/point.rs states the measured
//! error against an f64 evaluation.

use half::bf16;

use crate::backend::Precision;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::gemm::{Epilogue, GemmPlan, GemmShape, Workspace};
use crate::cuda::device::Device;
use crate::cuda::ops::group_encoder::EncoderBf16Kernels;
use crate::cuda::stages::forward::bf16_bits;
use crate::{Error, Result};

/// Most rows (points) one pass of the encoder runs.
pub const MAX_PASS_ROWS: usize = 16 * 1024;

fn cfg_err(msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("bf16 group encoder: {msg}"))
}

/// The sizes of the bf16 encoder (host only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderBf16Sizes {
    pub groups: usize,
    /// Points per group (s).
    pub group_size: usize,
    /// c1, c2, c3 and the token width d.
    pub widths: [usize; 4],
    /// Groups per pass: the largest divisor of `groups` whose rows fit [`MAX_PASS_ROWS`]
    /// (or the limit given; at least 1).
    pub pass_groups: usize,
}

impl EncoderBf16Sizes {
    pub fn new(groups: usize, group_size: usize, widths: [usize; 4]) -> Result<Self> {
        Self::with_pass_rows(groups, group_size, widths, MAX_PASS_ROWS)
    }

    /// [`EncoderBf16Sizes::new`] with passes of at most `max_rows` rows (tests run several
    /// passes at small sizes).
    pub fn with_pass_rows(
        groups: usize,
        group_size: usize,
        widths: [usize; 4],
        max_rows: usize,
    ) -> Result<Self> {
        if groups == 0 || group_size == 0 || widths.contains(&0) {
            return Err(cfg_err(format!(
                "{groups} groups of {group_size} points, widths {widths:?}"
            )));
        }
        // GEMM operands start 16-byte aligned and their rows are 16-byte multiples.
        if widths.iter().any(|w| w % 8 != 0) {
            return Err(cfg_err(format!("widths {widths:?} not multiples of 8")));
        }
        let pass_groups = (1..=groups)
            .rev()
            .find(|p| groups.is_multiple_of(*p) && p * group_size <= max_rows)
            .unwrap_or(1);
        Ok(EncoderBf16Sizes {
            groups,
            group_size,
            widths,
            pass_groups,
        })
    }

    /// Rows of one pass.
    pub fn pass_rows(&self) -> usize {
        self.pass_groups * self.group_size
    }

    pub fn passes(&self) -> usize {
        self.groups / self.pass_groups
    }

    /// conv2, conv3's group half, conv3's point half, conv4 (one pass).
    pub fn gemms(&self) -> Result<[GemmShape; 4]> {
        let [c1, c2, c3, d] = self.widths;
        let (r, p) = (self.pass_rows(), self.pass_groups);
        let b = Precision::Bf16;
        Ok([
            GemmShape::new(r, c2, c1, b, Epilogue::Bias)?,
            GemmShape::new(p, c3, c2, b, Epilogue::Bias)?.with_output(Precision::F32)?,
            GemmShape::new(r, c3, c2, b, Epilogue::None)?,
            GemmShape::new(r, d, c3, b, Epilogue::None)?,
        ])
    }
}

/// The encoder's device memory: bf16 weights (bit patterns), the f32 values the kernels
/// read, one pass's activations.
#[derive(Clone, Copy, Debug)]
pub struct EncoderBf16Slots {
    /// conv1 transposed (`[3][c1]`) and its bias, f32.
    pub w1t: Slot<f32>,
    pub b1: Slot<f32>,
    /// conv2 `[c2][c1]` and its bias.
    pub w2: Slot<u16>,
    pub b2: Slot<u16>,
    /// conv3's halves `[c3][c2]`: on the group max, on the point's own feature.
    pub w3_group: Slot<u16>,
    pub w3_point: Slot<u16>,
    pub b3: Slot<f32>,
    /// conv4 `[d][c3]`; its bias f32 (added after the max).
    pub w4: Slot<u16>,
    pub b4: Slot<f32>,
    /// R × max(c1, d): h1, then conv4's output.
    pub a: Slot<u16>,
    /// R × c2: conv2's output.
    pub f: Slot<u16>,
    /// R × c3: conv3's output.
    pub h3: Slot<u16>,
    /// P × c2: the group max of `f`.
    pub g: Slot<u16>,
    /// P × c3: conv3's group half, bias included.
    pub u: Slot<f32>,
}

impl EncoderBf16Slots {
    pub fn plan(s: &EncoderBf16Sizes, arena: &mut ArenaPlan) -> Self {
        let [c1, c2, c3, d] = s.widths;
        let (r, p) = (s.pass_rows(), s.pass_groups);
        EncoderBf16Slots {
            w1t: arena.add(3 * c1),
            b1: arena.add(c1),
            w2: arena.add(c2 * c1),
            b2: arena.add(c2),
            w3_group: arena.add(c3 * c2),
            w3_point: arena.add(c3 * c2),
            b3: arena.add(c3),
            w4: arena.add(d * c3),
            b4: arena.add(d),
            a: arena.add(r * c1.max(d)),
            f: arena.add(r * c2),
            h3: arena.add(r * c3),
            g: arena.add(p * c2),
            u: arena.add(p * c3),
        }
    }

    /// (offset, bytes) of every slot.
    pub fn spans(&self) -> Vec<(usize, usize)> {
        let f = |s: Slot<f32>| (s.offset, s.bytes());
        let h = |s: Slot<u16>| (s.offset, s.bytes());
        vec![
            f(self.w1t),
            f(self.b1),
            h(self.w2),
            h(self.b2),
            h(self.w3_group),
            h(self.w3_point),
            f(self.b3),
            h(self.w4),
            f(self.b4),
            h(self.a),
            h(self.f),
            h(self.h3),
            h(self.g),
            f(self.u),
        ]
    }
}

/// The weights in the slots' layouts: `(f32 w1ᵀ, b1, b3, b4)` and `(bf16 w2, b2, w3 group
/// half, w3 point half, w4)`.
type EncoderWeights = ([Vec<f32>; 4], [Vec<u16>; 5]);

/// The encoder's layers conv1..conv4 as (weight `[out][in]`, bias), the model's tensors
/// (`cpu::point_mae::PointMaeWeights::conv`).
pub type ConvLayers<'a> = [(&'a [f32], &'a [f32]); 4];

/// The slots' contents from the model's `[out][in]` tensors, lengths checked.
pub fn encoder_bf16_weights(s: &EncoderBf16Sizes, conv: &ConvLayers<'_>) -> Result<EncoderWeights> {
    let [c1, c2, c3, d] = s.widths;
    let shapes = [(c1, 3), (c2, c1), (c3, 2 * c2), (d, c3)];
    for (i, ((wt, b), (o, inp))) in conv.iter().zip(shapes).enumerate() {
        if wt.len() != o * inp || b.len() != o {
            return Err(cfg_err(format!(
                "conv{}: {} weights and {} biases for {o}×{inp}",
                i + 1,
                wt.len(),
                b.len()
            )));
        }
    }
    let [(w1, b1), (w2, b2), (w3, b3), (w4, b4)] = *conv;
    let mut w1t = vec![0f32; 3 * c1];
    for o in 0..c1 {
        for k in 0..3 {
            w1t[k * c1 + o] = w1[o * 3 + k];
        }
    }
    // W3 is [c3][2 c2]: columns ..c2 act on the group max, c2.. on the point's feature.
    let half = |from: usize| -> Vec<f32> {
        w3.chunks_exact(2 * c2)
            .flat_map(|row| row[from..from + c2].iter().copied())
            .collect()
    };
    Ok((
        [w1t, b1.to_vec(), b3.to_vec(), b4.to_vec()],
        [
            bf16_bits(w2),
            bf16_bits(b2),
            bf16_bits(&half(0)),
            bf16_bits(&half(c2)),
            bf16_bits(w4),
        ],
    ))
}

/// The slots as device pointers.
#[derive(Clone, Copy, Debug)]
struct Ptrs {
    w1t: DevPtr<f32>,
    b1: DevPtr<f32>,
    w2: DevPtr<u16>,
    b2: DevPtr<u16>,
    w3_group: DevPtr<u16>,
    w3_point: DevPtr<u16>,
    b3: DevPtr<f32>,
    w4: DevPtr<u16>,
    b4: DevPtr<f32>,
    a: DevPtr<u16>,
    f: DevPtr<u16>,
    h3: DevPtr<u16>,
    g: DevPtr<u16>,
    u: DevPtr<f32>,
}

/// The bf16 group encoder of one model on one device (module doc).
pub struct DeviceGroupEncoderBf16 {
    // Drop order: plans and kernels before the arena.
    plans: [GemmPlan; 4],
    kernels: EncoderBf16Kernels,
    arena: Arena,
    p: Ptrs,
    sizes: EncoderBf16Sizes,
}

// SAFETY: as the other device stages: driver handles used by one thread at a time (the
// owner's `&mut self` calls bind the context first).
unsafe impl Send for DeviceGroupEncoderBf16 {}

impl DeviceGroupEncoderBf16 {
    /// The name of its region in the engine's arena.
    pub const ARENA_REGION: &'static str = "point group encoder bf16";

    /// Its device memory (host only).
    pub fn arena_plan(sizes: &EncoderBf16Sizes) -> ArenaPlan {
        let mut layout = ArenaPlan::new();
        EncoderBf16Slots::plan(sizes, &mut layout);
        layout
    }

    /// Takes its memory (the engine's region, or its own), uploads the weights, loads the
    /// kernels and plans the GEMMs on the device's cuBLASLt handle with the engine's shared
    /// workspace (none when used outside an engine).
    pub fn new(dev: &Device, sizes: EncoderBf16Sizes, conv: &ConvLayers<'_>) -> Result<Self> {
        let (f32s, bf16s) = encoder_bf16_weights(&sizes, conv)?;
        let shapes = sizes.gemms()?;
        dev.bind()?;
        let mut layout = ArenaPlan::new();
        let slots = EncoderBf16Slots::plan(&sizes, &mut layout);
        let arena = dev.stage_arena(Self::ARENA_REGION, &layout)?;
        dev.memset_u8(arena.ptr(slots.w1t).raw(), 0, arena.bytes())?;
        for (slot, data) in [slots.w1t, slots.b1, slots.b3, slots.b4].iter().zip(&f32s) {
            arena.upload(dev, *slot, data)?;
        }
        let half = [slots.w2, slots.b2, slots.w3_group, slots.w3_point, slots.w4];
        for (slot, data) in half.iter().zip(&bf16s) {
            arena.upload(dev, *slot, data)?;
        }
        let kernels = EncoderBf16Kernels::new(dev)?;
        let lt = dev.cublaslt()?;
        // The point branch runs on the side stream: its own GEMM workspace.
        let ws = dev
            .shared_gemm_workspace_for(Self::ARENA_REGION)?
            .unwrap_or_else(Workspace::none);
        let plan = |s: GemmShape| GemmPlan::new(dev, lt, s, ws, None);
        let plans = [
            plan(shapes[0])?,
            plan(shapes[1])?,
            plan(shapes[2])?,
            plan(shapes[3])?,
        ];
        let p = Ptrs {
            w1t: arena.ptr(slots.w1t),
            b1: arena.ptr(slots.b1),
            w2: arena.ptr(slots.w2),
            b2: arena.ptr(slots.b2),
            w3_group: arena.ptr(slots.w3_group),
            w3_point: arena.ptr(slots.w3_point),
            b3: arena.ptr(slots.b3),
            w4: arena.ptr(slots.w4),
            b4: arena.ptr(slots.b4),
            a: arena.ptr(slots.a),
            f: arena.ptr(slots.f),
            h3: arena.ptr(slots.h3),
            g: arena.ptr(slots.g),
            u: arena.ptr(slots.u),
        };
        Ok(DeviceGroupEncoderBf16 {
            plans,
            kernels,
            arena,
            p,
            sizes,
        })
    }

    pub fn sizes(&self) -> &EncoderBf16Sizes {
        &self.sizes
    }

    /// Device memory of its weights and activations, bytes.
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Enqueues the encoder: `rel` (groups × s × 3, coordinates relative to the centers) →
    /// `tokens` (groups × d, f32). Launches and library calls only (no allocation): it can
    /// be recorded into a graph.
    ///
    /// # Safety
    /// `rel` and `tokens` valid for those sizes on the device the encoder was made on.
    pub unsafe fn record(&self, dev: &Device, rel: DevPtr<f32>, tokens: DevPtr<f32>) -> Result<()> {
        let s = &self.sizes;
        let [c1, c2, c3, d] = s.widths;
        let (rows, groups, k) = (s.pass_rows(), s.pass_groups, s.group_size);
        let [conv2, conv3_group, conv3_point, conv4] = &self.plans;
        let p = &self.p;
        let b16 = |x: DevPtr<u16>| x.cast::<bf16>();
        for pass in 0..s.passes() {
            let rel = rel.offset(3 * rows * pass);
            let out = tokens.offset(groups * d * pass);
            self.kernels
                .conv1(dev, rel, rows, (p.w1t, p.b1), c1, b16(p.a))?;
            conv2.run::<u16>(dev, p.a, p.w2, p.b2, p.f)?;
            self.kernels
                .group_max(dev, b16(p.f), (groups, k, c2), b16(p.g))?;
            conv3_group.run_mixed::<u16, f32>(dev, p.g, p.w3_group, p.b3, p.u)?;
            conv3_point.run::<u16>(dev, p.f, p.w3_point, DevPtr::null(), p.h3)?;
            self.kernels.bias_relu(dev, b16(p.h3), (rows, k, c3), p.u)?;
            conv4.run::<u16>(dev, p.h3, p.w4, DevPtr::null(), p.a)?;
            self.kernels
                .group_max_bias(dev, b16(p.a), (groups, k, d), p.b4, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::cpu::point_mae::PointMaeWeights;
    use crate::format::random_model;

    #[test]
    fn passes_divide_the_groups_and_bound_the_rows() {
        let s = EncoderBf16Sizes::new(1024, 128, [128, 256, 512, 384]).unwrap();
        assert_eq!((s.pass_groups, s.pass_rows(), s.passes()), (128, 16384, 8));
        let s = EncoderBf16Sizes::new(256, 32, [64, 128, 192, 192]).unwrap();
        assert_eq!((s.pass_groups, s.passes()), (256, 1));
        // A prime number of groups too many for one pass: one group a pass.
        let s = EncoderBf16Sizes::new(1031, 128, [8, 8, 8, 8]).unwrap();
        assert_eq!((s.pass_groups, s.passes()), (1, 1031));
        let s = EncoderBf16Sizes::new(33, 128, [8, 8, 8, 8]).unwrap();
        assert_eq!((s.pass_groups, s.passes()), (33, 1));
        let s = EncoderBf16Sizes::with_pass_rows(33, 128, [8, 8, 8, 8], 11 * 128).unwrap();
        assert_eq!((s.pass_groups, s.passes()), (11, 3));
        assert!(EncoderBf16Sizes::new(0, 128, [8, 8, 8, 8]).is_err());
        assert!(EncoderBf16Sizes::new(4, 128, [8, 12, 8, 8]).is_err());
        let [c2, c3g, c3p, c4] = EncoderBf16Sizes::new(1024, 128, [128, 256, 512, 384])
            .unwrap()
            .gemms()
            .unwrap();
        assert_eq!(
            (c2.m, c2.n, c2.k, c2.output),
            (16384, 256, 128, Precision::Bf16)
        );
        assert_eq!(
            (c3g.m, c3g.n, c3g.k, c3g.output),
            (128, 512, 256, Precision::F32)
        );
        assert_eq!(
            (c3p.m, c3p.n, c3p.k, c3p.epilogue),
            (16384, 512, 256, Epilogue::None)
        );
        assert_eq!(
            (c4.m, c4.n, c4.k, c4.epilogue),
            (16384, 384, 512, Epilogue::None)
        );
    }

    #[test]
    fn slots_are_disjoint_and_sized() {
        let s = EncoderBf16Sizes::new(1024, 128, [128, 256, 512, 384]).unwrap();
        let mut plan = ArenaPlan::new();
        let slots = EncoderBf16Slots::plan(&s, &mut plan);
        let mut spans = slots.spans();
        assert_eq!(spans.len(), 14);
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
        assert_eq!(slots.w1t.offset, 0, "the memset starts at the arena base");
        assert!(spans.iter().all(|sp| sp.0 % 256 == 0));
        assert_eq!(slots.a.len, 16384 * 384);
        assert_eq!(slots.h3.len, 16384 * 512);
        // One pass's activations and the weights: under 40 MB at M3DM sizes (an H100's L2
        // holds 50 MB).
        assert!(plan.bytes() < 40_000_000, "{}", plan.bytes());
    }

    #[test]
    fn weights_are_split_and_rounded() {
        let cfg = ModelConfig::demo();
        let t = random_model(&cfg, 3);
        let pc = cfg.point.as_ref().unwrap();
        let w = PointMaeWeights::load(&t, pc).unwrap();
        let [c1, c2, c3] = pc.encoder_widths.map(|x| x as usize);
        let d = pc.dim as usize;
        let s = EncoderBf16Sizes::new(256, 32, [c1, c2, c3, d]).unwrap();
        let (f, h) = encoder_bf16_weights(&s, &w.conv).unwrap();
        let (w1, _) = w.conv[0];
        let (w3, b3) = w.conv[2];
        assert_eq!(f[0][2 * c1 + 5], w1[5 * 3 + 2], "w1ᵀ[k][o] = w1[o][k]");
        assert_eq!(f[2], b3);
        let r = |v: f32| bf16::from_f32(v).to_bits();
        for (o, i) in [(0, 0), (7, 3), (c3 - 1, c2 - 1)] {
            assert_eq!(h[2][o * c2 + i], r(w3[o * 2 * c2 + i]), "group half");
            assert_eq!(h[3][o * c2 + i], r(w3[o * 2 * c2 + c2 + i]), "point half");
        }
        let lens: Vec<usize> = h.iter().map(Vec::len).collect();
        assert_eq!(lens, [c2 * c1, c2, c3 * c2, c3 * c2, d * c3]);
        // Weights of other widths: refused.
        let other = EncoderBf16Sizes::new(256, 32, [c1, c2, c3 + 8, d]).unwrap();
        assert!(encoder_bf16_weights(&other, &w.conv).is_err());
    }
}
