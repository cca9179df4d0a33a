//! The bf16 path of the dense layers: bf16 operands, f32 accumulation, through the
//! AVX512-BF16 dot product (`vdpbf16ps`: each f32 lane adds the products of one pair of
//! bf16 values). Weights are converted and packed once ([`PackedBf16::new`], at engine
//! creation); activations are rounded to bf16 row by row as each micro-panel is loaded.
//! Where the CPU has no AVX512-BF16, [`PackedBf16::new`] returns `None` and callers stay
//! on the f32 path.
//!
//! Error against exact arithmetic, per output element `y = Σ_p a_p w_p` (+ bias): both
//! operands rounded to nearest bf16 (unit roundoff u = 2⁻⁸), products exact in f32,
//! sums in f32 over `k` terms:
//! `|ŷ − y| ≤ (2u + u² + k·2⁻²⁴) · Σ_p |a_p w_p|` (f32 accumulation bound γ_k ≈ k·2⁻²⁴).
//! [`error_bound`] computes it; the tests check every element against it.
//!
//! Determinism as in [`super::gemm`]: a fixed task grid and `k` blocks fixed by the shape.

use super::gemm::{
    check_linear_output, prefetch_share, run_linear_tasks, Epilogue, Finish, Mat, Operand, Start,
};
use super::pool::Pool;
use std::cell::RefCell;

/// Inner elements per block (even: blocks are split in pairs).
const KC: usize = 384;
const MR: usize = 12;
const NR: usize = 32;
/// Output columns per task of [`linear_bf16`]: its strips are half the bytes of the f32
/// kernel's (bf16, `KC` pairs), so twice `gemm::NC` keeps the same packed block in L2
/// and converts each panel of activations for twice as many strips.
const NC_TASK: usize = 2 * super::gemm::NC;

/// Whether this CPU runs the bf16 kernel (and [`super::gemm::isa`] is not capped below
/// AVX-512).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm::isa() == super::gemm::Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The error bound of the module doc for a dot product with `Σ|a_p w_p| = abs_sum`
/// over `k` terms.
pub fn error_bound(k: usize, abs_sum: f64) -> f64 {
    let u = 2f64.powi(-8);
    (2.0 * u + u * u + k as f64 * 2f64.powi(-24)) * abs_sum
}

/// Nearest-even bf16 bits of `x` (NaN kept a NaN).
#[inline]
fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A row-major matrix of bf16 values (the bits of `half::bf16`): `rows × cols`, rows
/// `stride` elements apart.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Mat<'a> {
    pub data: &'a [u16],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// The activations of a bf16 product: f32 rows, rounded to nearest-even bf16 as each
/// panel is loaded (once per column task), or rows already rounded so ([`round_into`]),
/// which the panels copy: the same products, bit for bit, without the repeated rounding.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(Mat<'a>),
    Bf16(Bf16Mat<'a>),
}

impl Rows<'_> {
    fn rows(&self) -> usize {
        match self {
            Rows::F32(m) => m.rows,
            Rows::Bf16(m) => m.rows,
        }
    }
    fn cols(&self) -> usize {
        match self {
            Rows::F32(m) => m.cols,
            Rows::Bf16(m) => m.cols,
        }
    }
    /// Panics (a caller's bug) where the data do not hold the rows.
    fn check(&self, what: &str) {
        let (len, stride) = match self {
            Rows::F32(m) => (m.data.len(), m.stride),
            Rows::Bf16(m) => (m.data.len(), m.stride),
        };
        let (m, k) = (self.rows(), self.cols());
        assert!(m == 0 || len >= (m - 1) * stride + k, "{what}: input");
    }
    /// `dst` ← row `r`, elements `p0..p0 + kc`, in bf16, zero padded to `dst.len()`.
    ///
    /// # Safety
    /// AVX512-BF16 present ([`available`]).
    #[inline]
    unsafe fn load(&self, r: usize, p0: usize, kc: usize, dst: &mut [u16]) {
        match self {
            Rows::F32(m) => {
                let start = r * m.stride + p0;
                // SAFETY: the caller's contract.
                unsafe { x86_bf16::convert(&m.data[start..start + kc], dst) }
            }
            Rows::Bf16(m) => {
                let start = r * m.stride + p0;
                dst[..kc].copy_from_slice(&m.data[start..start + kc]);
                dst[kc..].fill(0);
            }
        }
    }
    /// A whole panel of `MR` bf16 rows `r0..`, elements `p0..p0 + kc`, read where it lies:
    /// (its first pair, pairs between rows), where the rows are pairs of whole u32s and
    /// hold what the copied panel would: `kc` even, or the element after it zero in every
    /// row (as the copy's padding; it then meets the packed weight's zero padding). Else
    /// `None`: the panel is copied ([`Rows::load`]). The kernel reads the same values
    /// either way, so the bits do not depend on it.
    #[inline]
    fn panel_in_place(&self, r0: usize, p0: usize, kc: usize) -> Option<(*const u32, usize)> {
        let Rows::Bf16(m) = self else { return None };
        let aligned = (m.data.as_ptr() as usize).is_multiple_of(4)
            && m.stride.is_multiple_of(2)
            && p0.is_multiple_of(2);
        if !aligned || r0 + MR > m.rows {
            return None;
        }
        let padded = kc.is_multiple_of(2)
            || (0..MR).all(|i| m.data.get((r0 + i) * m.stride + p0 + kc) == Some(&0));
        // The last row's last pair must lie inside the data.
        let end = (r0 + MR - 1) * m.stride + p0 + kc.div_ceil(2) * 2;
        (padded && end <= m.data.len()).then(|| {
            let first = m.data[(r0 * m.stride + p0)..].as_ptr() as *const u32;
            (first, m.stride / 2)
        })
    }
    /// [`prefetch_share`] of these rows where they are f32 (each panel converted as it is
    /// loaded). Rows already in bf16 are not fetched ahead: the kernel reads most of their
    /// panels where they lie, and 9 KiB of the next panel pulled into L1 beside the
    /// current panel evicts the weight strip being streamed (the dense layers ran about
    /// 3 % faster per CPU-second without it: `MIAD_BENCH_PARTS=bf16dense`).
    #[inline(always)]
    fn prefetch_share(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        s: usize,
        shares: usize,
    ) {
        if let Rows::F32(m) = self {
            prefetch_share(m.data, m.stride, rows, cols, s, shares)
        }
    }
}

/// `dst[i]` ← nearest-even bf16 of `src[i]` (what a panel of [`Rows::F32`] holds).
pub fn round_into(src: &[f32], dst: &mut [u16]) {
    let dst = &mut dst[..src.len()];
    if available() {
        // SAFETY: `available()`.
        unsafe { x86_bf16::convert(src, dst) };
    } else {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o = to_bf16(v));
    }
}

/// The fixed split of `k` into blocks of an even size: (blocks, elements per block).
fn k_blocks(k: usize) -> (usize, usize) {
    let blocks = k.div_ceil(KC).max(1);
    (blocks, k.div_ceil(blocks).div_ceil(2) * 2)
}

/// A weight `[n, k]` (PyTorch layout) converted to bf16 and packed for the kernel: per
/// `k` block, strips of `NR` outputs, pairs of inner elements interleaved per output.
pub struct PackedBf16 {
    data: Vec<u16>,
    n: usize,
    k: usize,
}

/// Elements of `w` (`n × k`) packed as [`pack_into`] lays it out.
pub fn packed_len(n: usize, k: usize) -> usize {
    let (kblocks, kc_step) = k_blocks(k);
    // The last block is padded to an even length.
    let last_p0 = (kblocks - 1) * kc_step;
    let k_pad = last_p0 + k.saturating_sub(last_p0).div_ceil(2) * 2;
    k_pad * n.div_ceil(NR) * NR
}

/// Converts `w` (`n × k`) to bf16 and packs it into `out` (at least [`packed_len`]; the
/// padding is zeroed): per `k` block, strips of `NR` outputs, pairs of inner elements
/// interleaved per output.
pub fn pack_into(w: Mat<'_>, out: &mut [u16]) {
    pack_scaled_into(Operand::plain(w), 1.0, out);
}

/// [`pack_into`] of `alpha · w`, `w` (`n × k`) read as it is or as the transpose of its
/// matrix (attention's values); each element is `fl(alpha · w)` rounded to bf16 (exact
/// for `alpha` a power of two).
pub fn pack_scaled_into(w: Operand<'_>, alpha: f32, out: &mut [u16]) {
    let (n, k) = (w.rows(), w.cols());
    let (kblocks, kc_step) = k_blocks(k);
    let n_pad = n.div_ceil(NR) * NR;
    let len = packed_len(n, k);
    // Every element is written below, padding included (no zero fill first: a head's keys
    // and values are packed in every block of attention).
    let data = &mut out[..len];
    let m = w.mat;
    // Rounded values: two rows of a strip (transposed); a strip's rows as pairs (plain).
    let mut rounded = [0u16; 2 * NR];
    let mut strip_pairs = [0u32; NR * KC / 2];
    for kb in 0..kblocks {
        let p0 = kb * kc_step;
        let kc = kc_step.min(k.saturating_sub(p0));
        let pairs = kc.div_ceil(2);
        let block = &mut data[p0 * n_pad..];
        for s in 0..n.div_ceil(NR) {
            let (j0, jn) = (s * NR, NR.min(n - s * NR));
            let strip = &mut block[s * pairs * 2 * NR..(s + 1) * pairs * 2 * NR];
            if w.transposed {
                // Matrix rows `p`, `p + 1` hold inner elements `p`, `p + 1` of the strip's
                // outputs: rounded, then interleaved into one pair row.
                let (lo, hi) = rounded.split_at_mut(NR);
                for (q, pair_row) in strip.chunks_exact_mut(2 * NR).enumerate() {
                    for (i, half) in [&mut *lo, &mut *hi].into_iter().enumerate() {
                        let p = 2 * q + i;
                        prefetch_row(m, p0 + p + PACK_AHEAD, j0..j0 + jn);
                        if p < kc {
                            let src = &m.data[(p0 + p) * m.stride + j0..][..jn];
                            round_scaled(src, alpha, &mut half[..jn]);
                            half[jn..].fill(0);
                        } else {
                            half.fill(0);
                        }
                    }
                    // Whole rows of fixed length (the padding of a partial strip is
                    // zero on both sides), so that the interleave vectorises.
                    for (pair, (&l, &h)) in pair_row.chunks_exact_mut(2).zip(lo.iter().zip(&*hi)) {
                        pair[0] = l;
                        pair[1] = h;
                    }
                }
            } else {
                // The strip's rows rounded first (as pairs of one u32), then written pair
                // row by pair row: a transpose of u32 pairs.
                let row_pairs = KC / 2;
                for jj in 0..jn {
                    prefetch_row(m, j0 + jj + PACK_AHEAD, p0..p0 + kc);
                    let src = &m.data[(j0 + jj) * m.stride + p0..][..kc];
                    let dst = &mut strip_pairs[jj * row_pairs..jj * row_pairs + pairs];
                    let dst: &mut [u16] = bytemuck::cast_slice_mut(dst);
                    round_scaled(src, alpha, &mut dst[..kc]);
                    dst[kc..].fill(0);
                }
                for (q, pair_row) in strip.chunks_exact_mut(2 * NR).enumerate() {
                    let (outputs, padding) = pair_row.split_at_mut(2 * jn);
                    for (jj, pair) in outputs.chunks_exact_mut(2).enumerate() {
                        let v = strip_pairs[jj * row_pairs + q];
                        pair[0] = v as u16;
                        pair[1] = (v >> 16) as u16;
                    }
                    padding.fill(0);
                }
            }
        }
    }
}

/// Rows fetched ahead while packing: attention's keys and values are rows of 64 values
/// 9 KiB apart in the qkv output (each on another page, where the hardware prefetchers
/// stop), so without it every row read waits on memory (a block's 12 heads packed on one
/// thread: 2.18 → 1.39 ms, `MIAD_BENCH_PARTS=block`).
const PACK_AHEAD: usize = 8;

/// Asks for elements `cols` of `m`'s row `row` in the cache, if that row exists (a hint:
/// no effect on results).
#[inline(always)]
fn prefetch_row(m: Mat<'_>, row: usize, cols: std::ops::Range<usize>) {
    if row < m.rows {
        let start = row * m.stride + cols.start;
        for off in (0..cols.len()).step_by(16) {
            if let Some(v) = m.data.get(start + off) {
                super::gemm::prefetch(v);
            }
        }
    }
}

/// `dst[i]` ← bf16 of `fl(alpha · src[i])` (nearest even), vectorised with AVX512-BF16.
fn round_scaled(src: &[f32], alpha: f32, dst: &mut [u16]) {
    // 32 values a step: one conversion instruction, and a small buffer to set up.
    let mut scaled = [0f32; 32];
    for (s, d) in src.chunks(32).zip(dst.chunks_mut(32)) {
        let scaled = &mut scaled[..s.len()];
        scaled.iter_mut().zip(s).for_each(|(o, &v)| *o = alpha * v);
        if available() {
            // SAFETY: `available()`.
            unsafe { x86_bf16::convert(scaled, d) };
        } else {
            d.iter_mut()
                .zip(scaled.iter())
                .for_each(|(o, &v)| *o = to_bf16(v));
        }
    }
}

/// Rows of one tile of [`walk_dots`] and columns of one of its strips.
pub const TILE_ROWS: usize = MR;
pub const TILE_COLS: usize = NR;
/// u32 elements of the activation panel [`walk_dots`] needs.
pub const PANEL_LEN: usize = MR * KC / 2;

/// Dot products, bf16 operands and f32 accumulation (the bound of the module doc), of
/// every row of `rows` (`r × k`, rounded to bf16 [`TILE_ROWS`] rows at a time as they are
/// loaded) with the `n` columns packed by [`pack_into`] (`n × k`). After each group of
/// rows `r0..r0 + rows_here`, `visit(r0, rows_here, tiles)` gets, for column strip `s`,
/// the tile `tiles[s·MR·NR..]` (`MR × NR`, row-major: `tiles[s·MR·NR + i·NR + j]` is row
/// `r0 + i` with column `s·NR + j`). `panel`: [`PANEL_LEN`]; `tiles`: `n.div_ceil(NR)`
/// tiles. Only with AVX512-BF16 ([`available`]); without it nothing is visited.
pub fn walk_dots(
    rows: Mat<'_>,
    packed: &[u16],
    n: usize,
    panel: &mut [u32],
    tiles: &mut [f32],
    mut visit: impl FnMut(usize, usize, &[f32]),
) {
    if !available() {
        return;
    }
    let k = rows.cols;
    let (kblocks, kc_step) = k_blocks(k);
    let n_pad = n.div_ceil(NR) * NR;
    let strips = n.div_ceil(NR);
    assert!(packed.len() >= packed_len(n, k) && panel.len() >= PANEL_LEN);
    assert!(tiles.len() >= strips * MR * NR, "walk_dots: tiles");
    let mut r0 = 0;
    while r0 < rows.rows {
        let rows_here = MR.min(rows.rows - r0);
        for kb in 0..kblocks {
            let p0 = kb * kc_step;
            let kc = kc_step.min(k.saturating_sub(p0));
            let pairs = kc.div_ceil(2);
            for i in 0..MR {
                let dst: &mut [u16] =
                    bytemuck::cast_slice_mut(&mut panel[i * pairs..(i + 1) * pairs]);
                if i < rows_here {
                    let start = (r0 + i) * rows.stride + p0;
                    // SAFETY: `available()` checked above.
                    unsafe { x86_bf16::convert(&rows.data[start..start + kc], dst) };
                } else {
                    dst.fill(0);
                }
            }
            let start = if kb == 0 { Start::Zero } else { Start::FromC };
            let block = &packed[p0 * n_pad..];
            for s in 0..strips {
                // SAFETY: the panel holds MR rows of `pairs` pairs, the strip `pairs · NR`
                // pairs, the tile MR × NR floats.
                unsafe {
                    x86_bf16::kernel_12x32(
                        pairs,
                        panel.as_ptr(),
                        pairs,
                        block[s * pairs * 2 * NR..].as_ptr(),
                        tiles[s * MR * NR..].as_mut_ptr(),
                        NR,
                        start,
                    )
                };
            }
        }
        visit(r0, rows_here, &tiles[..strips * MR * NR]);
        r0 += rows_here;
    }
}

impl PackedBf16 {
    /// Converts and packs `w` (`n × k`); `None` without AVX512-BF16.
    pub fn new(w: Mat<'_>) -> Option<PackedBf16> {
        if !available() {
            return None;
        }
        let (n, k) = (w.rows, w.cols);
        let mut data = vec![0u16; packed_len(n, k)];
        pack_into(w, &mut data);
        Some(PackedBf16 { data, n, k })
    }
    pub fn rows(&self) -> usize {
        self.n
    }
    pub fn cols(&self) -> usize {
        self.k
    }
}

/// A thread's buffers for [`region`]: one micro-panel of activations in bf16 pairs
/// ([`PANEL_LEN`]) and one [`Acc::Tile`] (`MR × NC_TASK` floats).
struct ThreadBuffers {
    panel: Vec<u32>,
    tile: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<ThreadBuffers> = const {
        RefCell::new(ThreadBuffers { panel: Vec::new(), tile: Vec::new() })
    };
}

/// Runs `f` on the calling thread's activation panel and tile (made on their first use).
fn with_buffers<R>(f: impl FnOnce(&mut [u32], &mut [f32]) -> R) -> R {
    BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let ThreadBuffers { panel, tile } = &mut *buffers;
        if panel.is_empty() {
            *panel = vec![0u32; PANEL_LEN];
            *tile = vec![0f32; MR * NC_TASK];
        }
        f(panel, tile)
    })
}

/// Gives the calling thread its buffers (called by `gemm::warm_up_thread`).
pub fn warm_up_thread() {
    if available() {
        with_buffers(|_, _| ());
    }
}

/// `out[m × w.rows] ⟵ epilogue(a · wᵀ + bias)` with bf16 operands, as
/// [`super::gemm::linear`] (the same epilogues, the same task grid).
pub fn linear_bf16(
    pool: &Pool,
    a: Mat<'_>,
    w: &PackedBf16,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    linear_bf16_rows(pool, Rows::F32(a), w, bias, out, out_stride, epilogue, None)
}

/// Where [`region`] also writes its finished rows rounded to bf16: element (0, 0) of a
/// matrix with rows `stride` apart.
#[derive(Clone, Copy)]
struct RoundTo {
    data: *mut u16,
    stride: usize,
}

// SAFETY: the tasks that share it write disjoint regions (as the f32 output).
unsafe impl Sync for RoundTo {}

/// [`linear_bf16`] of activations in either form ([`Rows`]). With `out16`, the finished
/// output is also written rounded to bf16 into `out16.0` (rows `out16.1` apart) as each
/// tile is finished: the next product's activations ([`Rows::Bf16`]) rounded once, while
/// the tile is in cache, instead of by each of its column tasks (the same values).
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_rows(
    pool: &Pool,
    a: Rows<'_>,
    w: &PackedBf16,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
    out16: Option<(&mut [u16], usize)>,
) {
    let (m, n) = (a.rows(), w.n);
    check_linear_output("linear_bf16", bias, out, out_stride, m, n);
    let out = Acc::Out {
        c: out.as_mut_ptr(),
        ldc: out_stride,
    };
    run_bf16_tasks(pool, a, w, bias, Some(out), epilogue, out16);
}

/// [`linear_bf16_rows`] where only the output rounded to bf16 is wanted: `out16.0` (rows
/// `out16.1` apart) ⟵ bf16 of `epilogue(a · wᵀ + bias)`, the same values as there, each
/// tile finished and rounded while it is in L1 (no f32 output is written). `epilogue` may
/// not be [`Epilogue::Accumulate`] (there is no f32 output to add to).
pub fn linear_bf16_rows_rounded(
    pool: &Pool,
    a: Rows<'_>,
    w: &PackedBf16,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out16: (&mut [u16], usize),
) {
    assert!(
        epilogue != Epilogue::Accumulate,
        "linear_bf16_rows_rounded: nothing to accumulate into"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n, "linear_bf16_rows_rounded: bias length");
    }
    run_bf16_tasks(pool, a, w, bias, None, epilogue, Some(out16));
}

/// The task grid of [`linear_bf16_rows`] (`out` given) and [`linear_bf16_rows_rounded`]
/// (`out` `None`: each task accumulates in its thread's [`Acc::Tile`]).
fn run_bf16_tasks(
    pool: &Pool,
    a: Rows<'_>,
    w: &PackedBf16,
    bias: Option<&[f32]>,
    out: Option<Acc>,
    epilogue: Epilogue,
    out16: Option<(&mut [u16], usize)>,
) {
    let (m, k, n) = (a.rows(), a.cols(), w.n);
    assert_eq!(w.k, k, "linear_bf16: inner sizes");
    a.check("linear_bf16");
    let round_to = out16.map(|(data, stride)| {
        assert!(stride >= n && (m == 0 || data.len() >= (m - 1) * stride + n));
        RoundTo {
            data: data.as_mut_ptr(),
            stride,
        }
    });
    if m == 0 || n == 0 {
        return;
    }
    let out = out.map(SendAcc);
    let finish = Finish {
        bias,
        epilogue,
        bf16_maths: true,
    };
    run_linear_tasks(pool, m, n, NC_TASK, &|rows, cols| {
        with_buffers(|panel, tile| {
            let acc = out.map_or(Acc::Tile(tile.as_mut_ptr()), |o| o.0);
            // SAFETY: tasks cover disjoint regions of the checked output (or each has its
            // thread's tile, `MR × NC_TASK`, for columns of one block of `NC_TASK`, no
            // accumulation, `round_to` given); `available()` held when the weight was
            // packed.
            unsafe {
                region(
                    panel,
                    a,
                    &w.data,
                    n,
                    rows,
                    cols,
                    acc,
                    epilogue == Epilogue::Accumulate,
                    finish,
                    round_to,
                )
            }
        });
    });
}

/// An [`Acc::Out`] shared by the tasks of one product.
#[derive(Clone, Copy)]
struct SendAcc(Acc);

// SAFETY: the tasks that share it write disjoint regions of the output.
unsafe impl Sync for SendAcc {}
unsafe impl Send for SendAcc {}

/// `out[m × n] ⟵ a · wᵀ` on the calling thread (for use inside pool tasks: attention's
/// products), bf16 operands and f32 accumulation (the bound of the module doc): `a` is
/// `m × k` ([`Rows`]: f32 rounded to bf16 as it is loaded, or bf16); `packed` holds `w`
/// (`n × k`) packed by [`pack_scaled_into`]. Without AVX512-BF16 ([`available`]) nothing
/// is written.
pub fn product_seq(a: Rows<'_>, packed: &[u16], n: usize, out: &mut [f32], out_stride: usize) {
    let (m, k) = (a.rows(), a.cols());
    assert!(
        packed.len() >= packed_len(n, k),
        "bf16 product: packed operand"
    );
    a.check("bf16 product");
    check_linear_output("bf16 product", None, out, out_stride, m, n);
    if m == 0 || n == 0 || !available() {
        return;
    }
    with_buffers(|panel, _| {
        let out = Acc::Out {
            c: out.as_mut_ptr(),
            ldc: out_stride,
        };
        // SAFETY: the region is the checked `out`, borrowed mutably here; `available()`.
        unsafe {
            region(
                panel,
                a,
                packed,
                n,
                0..m,
                0..n,
                out,
                false,
                Finish::NONE,
                None,
            )
        }
    });
}

/// Where [`region`] accumulates its products.
#[derive(Clone, Copy)]
enum Acc {
    /// The output: element (0, 0) of a matrix with rows `ldc` apart.
    Out { c: *mut f32, ldc: usize },
    /// A tile of the calling thread's own, [`MR`] rows of [`NC_TASK`] floats (row `i`,
    /// region column `j` at `i · NC_TASK + j − cols.start`), one panel of rows at a time,
    /// where only the bf16 rounding of the finished output is wanted: the f32 output
    /// never leaves the cache (fc1's, 9.6 MB a ViT-B/8 block, was written to memory and
    /// read back once more only to be rounded).
    Tile(*mut f32),
}

/// `c[rows, cols] (+)= a[rows, :] · wᵀ[:, cols]`, then `finish`, on the calling thread
/// (see `gemm::gemm_region`): `b` holds `w` (`n × a.cols`) packed by [`pack_into`]. Per
/// `k` block and panel of `MR` rows, the rows are rounded to bf16 into `panel` once, then
/// multiplied by every strip of the columns; meanwhile the next panel's f32 rows are
/// fetched into the cache, a share per strip ([`Rows::prefetch_share`]).
///
/// Into [`Acc::Out`], `k` blocks outside panels (each packed block of the weight reused
/// over every panel while it is in L2); into [`Acc::Tile`], every `k` block of a panel
/// before the next panel, so that the tile is finished while it is in L1. Each output
/// element meets the same products in the same order either way: the same bits.
///
/// Where `round_to` is given, the finished rows are also rounded to bf16 there.
///
/// # Safety
/// AVX512-BF16 present ([`available`]); an [`Acc::Out`] holds the region, which no one
/// else touches; so does `round_to`. An [`Acc::Tile`] holds `MR × NC_TASK` floats,
/// `cols` are at most [`NC_TASK`], there is no `accumulate`, and `round_to` is given.
#[allow(clippy::too_many_arguments)]
unsafe fn region(
    panel: &mut [u32],
    a: Rows<'_>,
    b: &[u16],
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acc: Acc,
    accumulate: bool,
    finish: Finish<'_>,
    round_to: Option<RoundTo>,
) {
    let k = a.cols();
    let (kblocks, kc_step) = k_blocks(k);
    let n_pad = n.div_ceil(NR) * NR;
    let strip_count = cols.len().div_ceil(NR);
    // `k` blocks taken together per panel of rows.
    let group = match acc {
        Acc::Out { .. } => 1,
        Acc::Tile(_) => kblocks,
    };
    // Element (0, 0) of the panel of rows `ir..` in the output, its row stride, and the
    // output column at the panel's column 0.
    let panel_at = |ir: usize| match acc {
        // SAFETY: the caller's contract: the output holds the region.
        Acc::Out { c, ldc } => (unsafe { c.add(ir * ldc) }, ldc, 0),
        Acc::Tile(t) => (t, NC_TASK, cols.start),
    };
    for g0 in (0..kblocks).step_by(group) {
        let mut ir = rows.start;
        while ir < rows.end {
            let rows_here = MR.min(rows.end - ir);
            let (c, ldc, col0) = panel_at(ir);
            for kb in g0..(g0 + group).min(kblocks) {
                let p0 = kb * kc_step;
                let kc = kc_step.min(k.saturating_sub(p0));
                let pairs = kc.div_ceil(2);
                let start = match (kb, accumulate) {
                    (0, false) => Start::Zero,
                    (0, true) => Start::ZeroThenAddC,
                    _ => Start::FromC,
                };
                let block = &b[p0 * n_pad..];
                let in_place = if rows_here == MR {
                    a.panel_in_place(ir, p0, kc)
                } else {
                    None
                };
                let (ap, lda) = in_place.unwrap_or_else(|| {
                    for i in 0..MR {
                        let dst: &mut [u16] =
                            bytemuck::cast_slice_mut(&mut panel[i * pairs..(i + 1) * pairs]);
                        if i < rows_here {
                            // SAFETY: the caller's contract (AVX512-BF16).
                            unsafe { a.load(ir + i, p0, kc, dst) };
                        } else {
                            dst.fill(0);
                        }
                    }
                    (panel.as_ptr(), pairs)
                });
                let next = ir + MR..(ir + 2 * MR).min(rows.end.max(ir + MR));
                for s in 0..strip_count {
                    a.prefetch_share(next.clone(), p0..p0 + kc, s, strip_count);
                    let j = cols.start + s * NR;
                    let cols_here = NR.min(cols.end - j);
                    let bp = block[(j / NR) * pairs * 2 * NR..].as_ptr();
                    // SAFETY (all below): the tile is inside the panel of the caller's
                    // region; the panel holds MR rows of `pairs` pairs, `lda` apart; the
                    // strip `pairs · NR` pairs.
                    let c = unsafe { c.add(j - col0) };
                    if rows_here == MR && cols_here == NR {
                        unsafe { x86_bf16::kernel_12x32(pairs, ap, lda, bp, c, ldc, start) };
                    } else {
                        let mut tmp = [0f32; MR * NR];
                        if start != Start::Zero {
                            for i in 0..rows_here {
                                for jj in 0..cols_here {
                                    tmp[i * NR + jj] = unsafe { *c.add(i * ldc + jj) };
                                }
                            }
                        }
                        unsafe {
                            x86_bf16::kernel_12x32(pairs, ap, lda, bp, tmp.as_mut_ptr(), NR, start)
                        };
                        for i in 0..rows_here {
                            for jj in 0..cols_here {
                                unsafe { *c.add(i * ldc + jj) = tmp[i * NR + jj] };
                            }
                        }
                    }
                }
            }
            if g0 + group >= kblocks {
                for i in 0..rows_here {
                    // SAFETY: the panel's rows and the region's columns, inside the
                    // output or the tile, and inside `round_to` (checked to hold the whole
                    // product).
                    unsafe {
                        let row = std::slice::from_raw_parts_mut(
                            c.add(i * ldc + cols.start - col0),
                            cols.len(),
                        );
                        finish.apply(row, cols.start);
                        if let Some(to) = round_to {
                            let row16 = std::slice::from_raw_parts_mut(
                                to.data.add((ir + i) * to.stride + cols.start),
                                cols.len(),
                            );
                            x86_bf16::convert(row, row16);
                        }
                    }
                }
            }
            ir += rows_here;
        }
    }
}

/// The micro-kernel alone (for the benches' in-L1 ceiling): `c[12 × 32] (+)= a · b` over
/// `steps` pairs of inner elements, `a` 12 rows of bf16 pairs `lda` apart, `b` one strip
/// packed by [`pack_into`].
///
/// # Safety
/// AVX512-BF16 present ([`available`]); `a`, `b` and `c` cover the tile.
pub unsafe fn micro_kernel(
    steps: usize,
    a: *const u32,
    lda: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    // SAFETY: the caller's contract.
    unsafe { x86_bf16::kernel_12x32(steps, a, lda, b, c, ldc, start) }
}

/// Never called: no [`PackedBf16`] exists without AVX512-BF16 (see [`available`]).
#[cfg(not(target_arch = "x86_64"))]
mod x86_bf16 {
    pub unsafe fn convert(_: &[f32], _: &mut [u16]) {
        unreachable!("bf16 kernels need x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel_12x32(
        _: usize,
        _: *const u32,
        _: usize,
        _: *const u16,
        _: *mut f32,
        _: usize,
        _: super::Start,
    ) {
        unreachable!("bf16 kernels need x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_bf16 {
    use super::super::gemm::micro_kernel;
    use super::Start;
    use std::arch::x86_64::*;

    /// `dst` ← nearest-even bf16 of `src`, zero padded to `dst.len()` (≥ `src.len()`).
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 present.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let mut chunks = src.chunks_exact(32);
        let mut o = 0;
        for ch in &mut chunks {
            unsafe {
                let lo = _mm512_loadu_ps(ch.as_ptr());
                let hi = _mm512_loadu_ps(ch.as_ptr().add(16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(o) as *mut _, v);
            }
            o += 32;
        }
        for &v in chunks.remainder() {
            dst[o] = super::to_bf16(v);
            o += 1;
        }
        dst[o..].fill(0);
    }

    micro_kernel!(
        /// `c[12 × 32] (+)= a · b` over `steps` pairs of inner elements: `a` 12 rows of
        /// u32 (bf16 pairs), `lda` apart; `b` one packed strip (`vdpbf16ps` adds the
        /// products of one pair to each f32 lane).
        ///
        /// # Safety
        /// AVX-512F and AVX512-BF16 present; pointers cover the tile.
        kernel_12x32(u32, u16), features = "avx512f,avx512bf16",
        rows = 12, lanes = 16, b_step = 64,
        zero = _mm512_setzero_ps, load_c = _mm512_loadu_ps, store_c = _mm512_storeu_ps,
        add = _mm512_add_ps,
        load_b = |p: *const u16| -> __m512bh {
            std::mem::transmute(_mm512_loadu_si512(p as *const _))
        },
        broadcast_a = |p: *const u32| -> __m512bh {
            std::mem::transmute(_mm512_set1_epi32(*p as i32))
        },
        madd = |acc, a, b| _mm512_dpbf16_ps(acc, a, b),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::linear;
    use crate::util::rng::Rng;

    #[test]
    fn packing_writes_every_element_padding_included() {
        let mut rng = Rng::new(8);
        // Partial strips, an odd last `k` block, more than one block; plain and transposed.
        for (n, k) in [(1, 1), (33, 5), (70, 801), (785, 64), (64, 785)] {
            let mut w = vec![0f32; n * k];
            rng.fill_normal(&mut w, 1.0);
            for transposed in [false, true] {
                let op = if transposed {
                    Operand::transposed(Mat::new(&w, k, n))
                } else {
                    Operand::plain(Mat::new(&w, n, k))
                };
                let len = packed_len(n, k);
                let mut zeroed = vec![0u16; len];
                let mut dirty = vec![0xffffu16; len];
                pack_scaled_into(op, 0.125, &mut zeroed);
                pack_scaled_into(op, 0.125, &mut dirty);
                assert_eq!(zeroed, dirty, "{n}x{k}, transposed {transposed}");
            }
        }
    }

    #[test]
    fn every_element_is_within_the_stated_bound_and_threads_do_not_matter() {
        if !available() {
            eprintln!("no AVX512-BF16 here: the bf16 path is not built");
            return;
        }
        let mut rng = Rng::new(31);
        for (m, k, n, epi) in [
            (1, 1, 1, Epilogue::None),
            (13, 5, 33, Epilogue::Accumulate),
            (30, 801, 70, Epilogue::None),
            (25, 768, 130, Epilogue::Relu),
            // More than one column task and `k` block, partial panels and strips.
            (29, 1000, 300, Epilogue::Gelu),
        ] {
            let mut a = vec![0f32; m * k];
            let mut w = vec![0f32; n * k];
            let mut bias = vec![0f32; n];
            rng.fill_normal(&mut a, 1.0);
            rng.fill_normal(&mut w, 0.1);
            rng.fill_normal(&mut bias, 0.1);
            let packed = PackedBf16::new(Mat::new(&w, n, k)).expect("available");
            let run = |threads| {
                let mut out = vec![0.5f32; m * n];
                let pool = Pool::new(threads);
                linear_bf16(
                    &pool,
                    Mat::new(&a, m, k),
                    &packed,
                    Some(&bias),
                    &mut out,
                    n,
                    epi,
                );
                out
            };
            let out = run(2);
            assert_eq!(out, run(1), "{m}x{k}x{n}: threads");
            // Activations rounded beforehand, rows a wider and even stride apart (whole
            // panels read in place; for an odd `k` only while the padding is zero, which
            // it is, then is not): the same bits.
            let stride = (k + 3).next_multiple_of(2);
            for pad in [0u16, 0x3f80] {
                let mut a16 = vec![pad; m * stride];
                for (row, row16) in a.chunks_exact(k).zip(a16.chunks_exact_mut(stride)) {
                    round_into(row, &mut row16[..k]);
                }
                let rows16 = Rows::Bf16(Bf16Mat {
                    data: &a16,
                    rows: m,
                    cols: k,
                    stride,
                });
                let mut out16 = vec![0.5f32; m * n];
                linear_bf16_rows(
                    &Pool::new(2),
                    rows16,
                    &packed,
                    Some(&bias),
                    &mut out16,
                    n,
                    epi,
                    None,
                );
                assert_eq!(
                    out, out16,
                    "{m}x{k}x{n}: activations in bf16, padding {pad:#x}"
                );
            }
            // The output also rounded to bf16 as its tiles finish (rows a wider stride
            // apart): the same f32 output, and its rows rounded as `round_into` does.
            let stride16 = n + 5;
            let mut rounded = vec![7u16; m * stride16];
            let mut out_r = vec![0.5f32; m * n];
            linear_bf16_rows(
                &Pool::new(2),
                Rows::F32(Mat::new(&a, m, k)),
                &packed,
                Some(&bias),
                &mut out_r,
                n,
                epi,
                Some((&mut rounded, stride16)),
            );
            assert_eq!(out, out_r, "{m}x{k}x{n}: output with its rounding");
            for (row, row16) in out.chunks_exact(n).zip(rounded.chunks(stride16)) {
                let mut want = vec![0u16; n];
                round_into(row, &mut want);
                assert_eq!(want, row16[..n], "{m}x{k}x{n}: rounded output");
                assert!(
                    row16[n..].iter().all(|&v| v == 7),
                    "{m}x{k}x{n}: past the rows"
                );
            }
            // Only the rounded output, each tile finished in the thread's own tile: the
            // same bf16 values, and nothing past the rows written.
            if epi != Epilogue::Accumulate {
                let mut only = vec![7u16; m * stride16];
                let a = Rows::F32(Mat::new(&a, m, k));
                linear_bf16_rows_rounded(
                    &Pool::new(2),
                    a,
                    &packed,
                    Some(&bias),
                    epi,
                    (&mut only, stride16),
                );
                assert_eq!(only, rounded, "{m}x{k}x{n}: the rounded output alone");
            }
            let mut f32_out = vec![0.5f32; m * n];
            linear(
                &Pool::new(2),
                Mat::new(&a, m, k),
                Mat::new(&w, n, k),
                Some(&bias),
                &mut f32_out,
                n,
                epi,
            );
            for i in 0..m {
                for j in 0..n {
                    let (mut y, mut abs) = (bias[j] as f64, 0f64);
                    for p in 0..k {
                        let t = a[i * k + p] as f64 * w[j * k + p] as f64;
                        y += t;
                        abs += t.abs();
                    }
                    let want = match epi {
                        Epilogue::Accumulate => y + 0.5,
                        Epilogue::Relu => y.max(0.0),
                        Epilogue::Gelu => 0.5 * y * libm::erfc(-y / std::f64::consts::SQRT_2),
                        Epilogue::None => y,
                    };
                    // The bias and residual adds round once more in f32. GELU's slope is
                    // below 1.13, and its bf16 path's own error is stated.
                    let bound = match epi {
                        Epilogue::Gelu => {
                            1.13 * error_bound(k, abs)
                                + crate::cpu::vmath::gelu_for_bf16_error_bound(y, want)
                        }
                        _ => error_bound(k, abs),
                    } + 4.0 * f32::EPSILON as f64 * (1.0 + want.abs());
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= bound,
                        "{m}x{k}x{n} ({i},{j}): {got} vs {want}, bound {bound}"
                    );
                    // And against the f32 path: the f32 path's own error is far smaller.
                    let f = f32_out[i * n + j] as f64;
                    assert!(
                        (got - f).abs() <= 2.0 * bound,
                        "vs f32 ({i},{j}): {got} vs {f}"
                    );
                }
            }
        }
    }
}
