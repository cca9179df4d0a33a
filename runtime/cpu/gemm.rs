//! Dense products on the CPU: `out = a · wᵀ + bias`, then an optional epilogue, with the
//! weight in PyTorch's `[out_features, in_features]` row-major layout ([`linear`]), and a
//! plain sequential product for use inside pool tasks ([`matmul_seq`]).
//!
//! Our own GEMM (no external crate): the classic packed-panel design. The right-hand
//! operand is packed, `KC` inner elements at a time, into strips of `NR` columns
//! (`p`-major inside a strip), scaled by `alpha` while packing; the left-hand rows are
//! read in place (`MR` rows × `KC`, stays in L1 while the strips of one `NC`-wide block go
//! by). A register-blocked micro-kernel computes an `MR × NR` tile of the output from one
//! strip; the instruction set is chosen once at run time: AVX-512F (12 × 32), AVX2+FMA
//! (6 × 16), or a portable kernel (4 × 8) that every target builds.
//!
//! Determinism: the sum of an output element runs over `k` in `KC` blocks fixed by the
//! shape, and inside a block in order; a task's tile grid is fixed by the shape, never by
//! the thread count. So the bits depend only on the shape and the instruction set.
//! No allocation per call: each thread owns packing buffers of fixed size, made on its
//! first product ([`warm_up_thread`], which the pool runs on each of its threads).
//!
//! The epilogue (bias, GELU, ReLU) runs on each micro-tile right after its last `KC`
//! block, while the tile is in L1; the residual add (`Epilogue::Accumulate`) adds `out`
//! to the first `KC` block's sums as they are stored (so for `k ≤ KC_MAX` the result is
//! `(out + product) + bias`, the order the CUDA kernels reproduce bit for bit).

use super::pool::{Pool, SharedMut};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Inner (`k`) elements per packed block; a shape's `k` is split into equal blocks of at
/// most this many.
pub const KC_MAX: usize = 384;
/// Output columns per packed block of the right-hand operand (a multiple of every `NR`).
pub const NC: usize = 128;
/// The largest `MR` and `NR` of the kernels.
const MR_MAX: usize = 12;
const NR_MAX: usize = 32;
/// Row blocks of [`linear`] tasks are multiples of this (every kernel's `MR` divides it),
/// so the task grid does not depend on the instruction set.
const ROW_QUANTUM: usize = 12;
/// [`linear`] splits rows too when the columns give fewer tasks than this.
const MIN_TASKS: usize = 16;

/// What happens to a tile after `a · wᵀ + bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Store the result.
    None,
    /// Store GELU (exact, erf) of the result, through [`super::vmath::gelu_fast`] (error
    /// bound stated there; the bf16 GEMM through [`super::vmath::gelu_for_bf16`]).
    Gelu,
    /// Store ReLU of the result.
    Relu,
    /// Add the result to what `out` holds (residual connection).
    Accumulate,
}

/// A row-major matrix view: `rows × cols`, rows `stride` elements apart.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            stride: cols,
        }
    }
    fn check(&self, what: &str) {
        assert!(
            self.rows == 0 || self.data.len() >= (self.rows - 1) * self.stride + self.cols,
            "{what}: {}×{} (stride {}) does not fit in {} elements",
            self.rows,
            self.cols,
            self.stride,
            self.data.len()
        );
        assert!(self.stride >= self.cols, "{what}: stride below width");
    }
}

/// A product operand: a [`Mat`] read as it is or as its transpose.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub mat: Mat<'a>,
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    pub fn plain(mat: Mat<'a>) -> Self {
        Operand {
            mat,
            transposed: false,
        }
    }
    pub fn transposed(mat: Mat<'a>) -> Self {
        Operand {
            mat,
            transposed: true,
        }
    }
    /// Rows of the operand as the product reads it.
    pub fn rows(&self) -> usize {
        if self.transposed {
            self.mat.cols
        } else {
            self.mat.rows
        }
    }
    pub fn cols(&self) -> usize {
        if self.transposed {
            self.mat.rows
        } else {
            self.mat.cols
        }
    }
    #[inline]
    fn at(&self, r: usize, c: usize) -> f32 {
        if self.transposed {
            self.mat.data[c * self.mat.stride + r]
        } else {
            self.mat.data[r * self.mat.stride + c]
        }
    }
}

/// Exact GELU: x · Φ(x) with Φ through erf, as PyTorch's default `nn.GELU()`, one value
/// at a time (the reference of the device kernels' tests and of training; the products'
/// epilogue uses [`super::vmath::gelu_fast`], which vectorises).
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The instruction set of the micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The environment variable that caps the instruction set of the CPU kernels
/// (`avx2` or `portable`), so one binary's narrower paths can be measured and checked on
/// a wider CPU; a value naming a set this CPU lacks, or none, leaves the widest.
pub const ISA_VAR: &str = "MIAD_CPU_ISA";

/// The instruction set of every CPU kernel (GEMM, bf16, vectorised maths, the peak
/// measurement): the widest this CPU runs, or the narrower one [`ISA_VAR`] names; chosen
/// once per process.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| capped_isa(widest_isa(), std::env::var(ISA_VAR).ok().as_deref()))
}

/// `widest`, or the narrower set `cap` names (`avx2`, `portable`; anything else: no cap).
fn capped_isa(widest: Isa, cap: Option<&str>) -> Isa {
    let cap = match cap {
        Some("portable") => Isa::Portable,
        Some("avx2") => Isa::Avx2,
        _ => Isa::Avx512,
    };
    let rank = |isa: Isa| match isa {
        Isa::Portable => 0,
        Isa::Avx2 => 1,
        Isa::Avx512 => 2,
    };
    if rank(cap) < rank(widest) {
        cap
    } else {
        widest
    }
}

/// The widest instruction set this CPU runs.
fn widest_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// What a micro-kernel's sums start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Zero: `c ← a·b`.
    Zero,
    /// The tile in `c` (the partial sums of earlier `k` blocks): `c ← c + a·b` term by term.
    FromC,
    /// Zero, with `c` added once at the end: `c ← c + (a·b)`, the residual add of
    /// [`Epilogue::Accumulate`] in the order `out + product` (its first `k` block).
    ZeroThenAddC,
}

/// `c[mr × nr] (+)= a[mr × kc] · b[kc × nr]`: `a` rows `lda` apart, `b` one packed strip
/// (`kc × nr`, `p`-major), `c` rows `ldc` apart; `start` says what the sums start from.
type KernelFn = unsafe fn(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    start: Start,
);

/// A micro-kernel and its tile.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub mr: usize,
    pub nr: usize,
    pub isa: Isa,
    func: KernelFn,
}

impl Kernel {
    /// `c[mr × nr] (+)= a[mr × kc] · b[kc × nr]` (see [`KernelFn`]).
    ///
    /// # Safety
    /// `a` holds `mr` rows of `kc` floats, `lda` apart; `b` one packed strip of `kc · nr`
    /// floats ([`pack_rhs`]); `c` `mr` rows of `nr` floats, `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn run(
        &self,
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        start: Start,
    ) {
        unsafe { (self.func)(kc, a, lda, b, c, ldc, start) }
    }

    /// The kernel of `isa`; `None` when this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Kernel> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => Some(Kernel {
                mr: 12,
                nr: 32,
                isa,
                func: x86::kernel_12x32,
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma") =>
            {
                Some(Kernel {
                    mr: 6,
                    nr: 16,
                    isa,
                    func: x86::kernel_6x16,
                })
            }
            Isa::Portable => Some(Kernel {
                mr: 4,
                nr: 8,
                isa,
                func: kernel_4x8,
            }),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    /// The kernel of the widest instruction set here.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| Kernel::for_isa(isa()).unwrap_or(PORTABLE))
    }
}

const PORTABLE: Kernel = Kernel {
    mr: 4,
    nr: 8,
    isa: Isa::Portable,
    func: kernel_4x8,
};

/// # Safety
/// `a`, `b`, `c` cover the tile as [`KernelFn`] says.
unsafe fn kernel_4x8(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    let mut acc = [[0f32; 8]; 4];
    if start == Start::FromC {
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = unsafe { *c.add(i * ldc + j) };
            }
        }
    }
    for p in 0..kc {
        let bp = unsafe { std::slice::from_raw_parts(b.add(p * 8), 8) };
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = unsafe { *a.add(i * lda + p) };
            for (v, &bv) in row.iter_mut().zip(bp) {
                *v += ai * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let dst = unsafe { &mut *c.add(i * ldc + j) };
            *dst = if start == Start::ZeroThenAddC {
                *dst + v
            } else {
                *v
            };
        }
    }
}

/// Defines one register-blocked micro-kernel: `c[rows × 2·lanes] (+)= a · b` over `steps`
/// inner steps, `rows` × two vectors of f32 accumulators held in registers, the sums
/// starting as [`Start`] says. What differs between instruction sets and precisions is
/// passed in: how a step's two vectors of `b` are loaded (`b` advances `b_step` elements a
/// step, the second vector `b_step / 2` after the first), how one element of a row of `a`
/// is broadcast (`a` rows `lda` apart, one element a step), and the multiply-add
/// (`acc, a, b`). The f32 kernels below and the bf16 kernel of [`super::gemm_bf16`] are
/// this one body (the portable 4 × 8 kernel stays plain Rust: no vectors).
#[cfg(target_arch = "x86_64")]
macro_rules! micro_kernel {
    (
        $(#[$meta:meta])*
        $name:ident($a_elem:ty, $b_elem:ty), features = $features:literal,
        rows = $rows:literal, lanes = $lanes:literal, b_step = $b_step:literal,
        zero = $zero:path, load_c = $load_c:path, store_c = $store_c:path, add = $add:path,
        load_b = $load_b:expr, broadcast_a = $broadcast_a:expr, madd = $madd:expr $(,)?
    ) => {
        $(#[$meta])*
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            steps: usize,
            a: *const $a_elem,
            lda: usize,
            b: *const $b_elem,
            c: *mut f32,
            ldc: usize,
            start: Start,
        ) {
            unsafe {
                let mut lo = [$zero(); $rows];
                let mut hi = [$zero(); $rows];
                if start == Start::FromC {
                    for i in 0..$rows {
                        lo[i] = $load_c(c.add(i * ldc));
                        hi[i] = $load_c(c.add(i * ldc + $lanes));
                    }
                }
                let mut bp = b;
                let mut ap = a;
                // One inner step: `u` elements past `ap`, `u` strips past `bp`.
                macro_rules! step {
                    ($u:expr) => {
                        let b0 = $load_b(bp.add($u * $b_step));
                        let b1 = $load_b(bp.add($u * $b_step + $b_step / 2));
                        for i in 0..$rows {
                            let ai = $broadcast_a(ap.add(i * lda + $u));
                            lo[i] = $madd(lo[i], ai, b0);
                            hi[i] = $madd(hi[i], ai, b1);
                        }
                    };
                }
                // Four steps an iteration (in order: the same sums), so the addresses of
                // three of them are constant offsets instead of pointer arithmetic.
                for _ in 0..steps / 4 {
                    step!(0);
                    step!(1);
                    step!(2);
                    step!(3);
                    bp = bp.add(4 * $b_step);
                    ap = ap.add(4);
                }
                for _ in 0..steps % 4 {
                    step!(0);
                    bp = bp.add($b_step);
                    ap = ap.add(1);
                }
                if start == Start::ZeroThenAddC {
                    for i in 0..$rows {
                        lo[i] = $add($load_c(c.add(i * ldc)), lo[i]);
                        hi[i] = $add($load_c(c.add(i * ldc + $lanes)), hi[i]);
                    }
                }
                for i in 0..$rows {
                    $store_c(c.add(i * ldc), lo[i]);
                    $store_c(c.add(i * ldc + $lanes), hi[i]);
                }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use micro_kernel;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Start;
    use std::arch::x86_64::*;

    micro_kernel!(
        /// # Safety
        /// AVX-512F present; pointers as [`super::KernelFn`] says.
        kernel_12x32(f32, f32), features = "avx512f",
        rows = 12, lanes = 16, b_step = 32,
        zero = _mm512_setzero_ps, load_c = _mm512_loadu_ps, store_c = _mm512_storeu_ps,
        add = _mm512_add_ps,
        load_b = |p: *const f32| _mm512_loadu_ps(p),
        broadcast_a = |p: *const f32| _mm512_set1_ps(*p),
        madd = |acc, a, b| _mm512_fmadd_ps(a, b, acc),
    );

    micro_kernel!(
        /// # Safety
        /// AVX2 and FMA present; pointers as [`super::KernelFn`] says.
        kernel_6x16(f32, f32), features = "avx2,fma",
        rows = 6, lanes = 8, b_step = 16,
        zero = _mm256_setzero_ps, load_c = _mm256_loadu_ps, store_c = _mm256_storeu_ps,
        add = _mm256_add_ps,
        load_b = |p: *const f32| _mm256_loadu_ps(p),
        broadcast_a = |p: *const f32| _mm256_set1_ps(*p),
        madd = |acc, a, b| _mm256_fmadd_ps(a, b, acc),
    );
}

/// Per-thread packing buffers (fixed sizes, made once per thread).
struct Buffers {
    /// One packed block of the right-hand operand: `KC_MAX × NC`.
    b: Vec<f32>,
    /// Left-hand rows copied when they cannot be read in place: `MR_MAX × KC_MAX`.
    a: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Option<Buffers>> = const { RefCell::new(None) };
}

fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let bufs = slot.get_or_insert_with(|| Buffers {
            b: vec![0.0; KC_MAX * NC],
            a: vec![0.0; MR_MAX * KC_MAX],
        });
        f(bufs)
    })
}

/// Gives the calling thread its packing buffers (the only allocation the products make,
/// once per thread). The pool calls this on every thread it runs tasks on, so that no
/// product inside `inspect` allocates, whichever thread runs it.
pub fn warm_up_thread() {
    with_buffers(|_| ());
    super::gemm_bf16::warm_up_thread();
}

/// The fixed split of `k` into blocks: (blocks, elements per block but the last).
fn k_blocks(k: usize) -> (usize, usize) {
    let blocks = k.div_ceil(KC_MAX).max(1);
    (blocks, k.div_ceil(blocks))
}

/// Packs `alpha · b[p0..p0+kc, j0..j0+nc]` into strips of `nr` columns (zero padded),
/// `p`-major inside a strip: the right-hand operand of [`Kernel::run`].
#[allow(clippy::too_many_arguments)]
pub fn pack_rhs(
    b: Operand<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
    alpha: f32,
    dst: &mut [f32],
) {
    for s in 0..nc.div_ceil(nr) {
        let strip = &mut dst[s * kc * nr..(s + 1) * kc * nr];
        let jn = nr.min(nc - s * nr);
        let js = j0 + s * nr;
        let m = b.mat;
        if b.transposed {
            for jj in 0..jn {
                let src = &m.data[(js + jj) * m.stride + p0..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    strip[p * nr + jj] = alpha * v;
                }
            }
        } else {
            for p in 0..kc {
                let src = &m.data[(p0 + p) * m.stride + js..][..jn];
                for (d, &v) in strip[p * nr..p * nr + jn].iter_mut().zip(src) {
                    *d = alpha * v;
                }
            }
        }
        if jn < nr {
            for p in 0..kc {
                strip[p * nr + jn..(p + 1) * nr].fill(0.0);
            }
        }
    }
}

/// Bias and activation of a finished tile.
#[derive(Clone, Copy)]
pub(super) struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub epilogue: Epilogue,
    /// GELU through [`super::vmath::gelu_for_bf16`] (the bf16 path, whose outputs are
    /// rounded to bf16 next) instead of [`super::vmath::gelu_fast`].
    pub bf16_maths: bool,
}

impl Finish<'_> {
    pub const NONE: Finish<'static> = Finish {
        bias: None,
        epilogue: Epilogue::None,
        bf16_maths: false,
    };
    pub fn is_none(&self) -> bool {
        self.bias.is_none() && matches!(self.epilogue, Epilogue::None | Epilogue::Accumulate)
    }
    /// Applies to the finished tile `rows × cols` of the output `c` (rows `ldc` apart),
    /// a whole panel of micro-tiles at a time (fewer, longer rows than tile by tile).
    ///
    /// # Safety
    /// The tile is inside the output and no one else touches it.
    #[inline]
    pub unsafe fn apply_tile(
        &self,
        c: *mut f32,
        ldc: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        if self.is_none() {
            return;
        }
        for i in rows {
            // SAFETY: the caller's contract.
            let row =
                unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc + cols.start), cols.len()) };
            self.apply(row, cols.start);
        }
    }

    /// Applies to `row` (the output columns `j0..j0 + row.len()`).
    #[inline]
    pub fn apply(&self, row: &mut [f32], j0: usize) {
        if let Some(b) = self.bias {
            for (v, b) in row.iter_mut().zip(&b[j0..]) {
                *v += b;
            }
        }
        match self.epilogue {
            Epilogue::Gelu if self.bf16_maths => super::vmath::gelu_row_for_bf16(row),
            Epilogue::Gelu => super::vmath::gelu_row(row),
            Epilogue::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            Epilogue::None | Epilogue::Accumulate => {}
        }
    }
}

/// The right-hand operand of [`gemm_region`]: packed block by block as the product goes,
/// or packed once beforehand ([`pack_rhs_whole`]) and shared.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    Operand(Operand<'a>),
    /// `k × n` packed by [`pack_rhs_whole`] for this kernel's `nr` (with `alpha` applied).
    Packed {
        data: &'a [f32],
        n: usize,
    },
}

/// Floats that [`pack_rhs_whole`] writes for a `k × n` operand (any kernel).
pub fn packed_rhs_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR_MAX) * NR_MAX
}

/// Packs the whole `k × n` operand `alpha · b` for `ker`, in the `KC` blocks the product
/// uses: block `kb` starts at `p0 · n_pad` (`n_pad` = `n` rounded up to `nr`).
pub fn pack_rhs_whole(ker: Kernel, b: Operand<'_>, alpha: f32, dst: &mut [f32]) {
    let (k, n) = (b.rows(), b.cols());
    let n_pad = n.div_ceil(ker.nr) * ker.nr;
    assert!(dst.len() >= k * n_pad, "pack_rhs_whole: buffer");
    let (kblocks, kc_step) = k_blocks(k);
    for kb in 0..kblocks {
        let p0 = kb * kc_step;
        let kc = kc_step.min(k - p0.min(k));
        pack_rhs(b, p0, kc, 0, n, ker.nr, alpha, &mut dst[p0 * n_pad..]);
    }
}

/// `c[rows, cols] (+)= a[rows, :] · alpha·b[:, cols]`, then `finish`, on the calling
/// thread. `c` points at element (0, 0) of an output with rows `ldc` apart; the caller
/// guarantees the region is inside it and that no one else touches the region.
///
/// The `MR` rows of `a` a micro-tile needs are read in place, unless they are a partial
/// tile, transposed, or rows whose stride is a multiple of 2 KiB (k = 1024, 1536, 3072...):
/// those would share one or two L1 sets, so they are copied into a contiguous buffer
/// first (a plain copy, cheap next to the `NC`-wide product that reuses them). The same
/// values either way: the bits do not depend on it.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_region(
    ker: Kernel,
    bufs: &mut Buffers,
    a: Operand<'_>,
    b: Rhs<'_>,
    alpha: f32,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    finish: Finish<'_>,
) {
    let k = a.cols();
    let (kblocks, kc_step) = k_blocks(k);
    let (mr, nr) = (ker.mr, ker.nr);
    let a_in_place = !a.transposed && !a.mat.stride.is_multiple_of(512);
    for kb in 0..kblocks {
        let p0 = kb * kc_step;
        let kc = kc_step.min(k - p0.min(k));
        let start = match (kb, accumulate) {
            (0, false) => Start::Zero,
            (0, true) => Start::ZeroThenAddC,
            _ => Start::FromC,
        };
        let last = kb + 1 == kblocks;
        let mut jc = cols.start;
        while jc < cols.end {
            let nc = NC.min(cols.end - jc);
            // The packed strips of columns jc..jc+nc, `kc · nr` floats each.
            let strips: &[f32] = match b {
                Rhs::Operand(op) => {
                    pack_rhs(op, p0, kc, jc, nc, nr, alpha, &mut bufs.b);
                    &bufs.b
                }
                Rhs::Packed { data, n } => {
                    let n_pad = n.div_ceil(nr) * nr;
                    &data[p0 * n_pad + jc * kc..]
                }
            };
            let mut ir = rows.start;
            while ir < rows.end {
                let rows_here = mr.min(rows.end - ir);
                let (ap, lda) = if rows_here == mr && a_in_place {
                    (a.mat.data[ir * a.mat.stride + p0..].as_ptr(), a.mat.stride)
                } else {
                    for i in 0..mr {
                        let dst = &mut bufs.a[i * kc..(i + 1) * kc];
                        if i >= rows_here {
                            dst.fill(0.0);
                        } else if a.transposed {
                            for (p, d) in dst.iter_mut().enumerate() {
                                *d = a.at(ir + i, p0 + p);
                            }
                        } else {
                            let start = (ir + i) * a.mat.stride + p0;
                            dst.copy_from_slice(&a.mat.data[start..start + kc]);
                        }
                    }
                    (bufs.a.as_ptr(), kc)
                };
                let strip_count = nc.div_ceil(nr);
                // The next panel's rows of `a` (plain layout), their cache lines fetched
                // a share per strip while this panel is multiplied.
                let next_row = ir + mr;
                let next_rows = if a.transposed {
                    0
                } else {
                    mr.min(rows.end.saturating_sub(next_row))
                };
                for s in 0..strip_count {
                    let j = jc + s * nr;
                    let cols_here = nr.min(cols.end - j);
                    let bp = strips[s * kc * nr..].as_ptr();
                    let next = next_row..next_row + next_rows;
                    prefetch_share(a.mat.data, a.mat.stride, next, p0..p0 + kc, s, strip_count);
                    // SAFETY (all below): the tile is inside the caller's region.
                    if rows_here == mr && cols_here == nr {
                        unsafe { ker.run(kc, ap, lda, bp, c.add(ir * ldc + j), ldc, start) };
                    } else {
                        let mut tmp = [0f32; MR_MAX * NR_MAX];
                        if start != Start::Zero {
                            for i in 0..rows_here {
                                let src = unsafe { c.add((ir + i) * ldc + j) };
                                for jj in 0..cols_here {
                                    tmp[i * nr + jj] = unsafe { *src.add(jj) };
                                }
                            }
                        }
                        unsafe { ker.run(kc, ap, lda, bp, tmp.as_mut_ptr(), nr, start) };
                        for i in 0..rows_here {
                            let dst = unsafe { c.add((ir + i) * ldc + j) };
                            for jj in 0..cols_here {
                                unsafe { *dst.add(jj) = tmp[i * nr + jj] };
                            }
                        }
                    }
                }
                if last {
                    // SAFETY: the rows and columns are inside the caller's region.
                    unsafe { finish.apply_tile(c, ldc, ir..ir + rows_here, jc..jc + nc) };
                }
                ir += rows_here;
            }
            jc += nc;
        }
    }
}

/// Fetches share `s` of `shares` of the cache lines of `data`'s rows `rows` (`stride`
/// apart), columns `cols`, into L1: called once per strip of a panel's product, so that
/// the next panel's rows arrive while this one is multiplied (a hint: no effect on
/// results). Two divisions per call, none per line.
#[inline(always)]
pub(super) fn prefetch_share<T>(
    data: &[T],
    stride: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    s: usize,
    shares: usize,
) {
    let per_line = 64 / std::mem::size_of::<T>();
    let lines_per_row = cols.len().div_ceil(per_line);
    let total = rows.len() * lines_per_row;
    let share = total.div_ceil(shares.max(1));
    let (first, end) = (s * share, ((s + 1) * share).min(total));
    if first >= end {
        return;
    }
    let (mut row, mut line) = (rows.start + first / lines_per_row, first % lines_per_row);
    for _ in first..end {
        prefetch(data[row * stride + cols.start + line * per_line..].as_ptr());
        line += 1;
        if line == lines_per_row {
            line = 0;
            row += 1;
        }
    }
}

/// Asks for the cache line at `p` in L1 (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for every cache line of `data` in L2 (a hint: no effect on results): a row
/// that will be read a little later, too large to wait in L1 with its neighbours.
#[inline(always)]
pub(super) fn prefetch_to_l2(data: &[f32]) {
    for line in data.chunks(16) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch does not fault, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr() as *const i8
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }
}

/// The fixed row split of a [`linear`] of `m × n` in column blocks of `nc`: (row blocks,
/// rows per block).
fn row_split(m: usize, n: usize, nc: usize) -> (usize, usize) {
    let col_blocks = n.div_ceil(nc);
    // Enough tasks to balance the threads, but blocks of at least ~96 rows so that each
    // packed weight block is reused over many rows.
    let blocks = MIN_TASKS.div_ceil(col_blocks).min(m.div_ceil(96)).max(1);
    let per = m.div_ceil(blocks).div_ceil(ROW_QUANTUM) * ROW_QUANTUM;
    (m.div_ceil(per), per)
}

/// Checks the bias and the output of a linear of `m × n` (`what` names it in a panic:
/// a mismatch is a bug in the caller).
pub(super) fn check_linear_output(
    what: &str,
    bias: Option<&[f32]>,
    out: &[f32],
    out_stride: usize,
    m: usize,
    n: usize,
) {
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "{what}: bias length");
    }
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
}

/// Runs `region(rows, cols)` on `pool` for each task of the fixed grid of a linear of
/// `m × n` ([`row_split`] × column blocks of `nc`, a multiple of every `NR`): the same
/// grid whatever the threads.
pub(super) fn run_linear_tasks(
    pool: &Pool,
    m: usize,
    n: usize,
    nc: usize,
    region: &(dyn Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync),
) {
    let (row_blocks, rows_per) = row_split(m, n, nc);
    let col_blocks = n.div_ceil(nc);
    pool.run(row_blocks * col_blocks, &|task, _| {
        let (rb, cb) = (task / col_blocks, task % col_blocks);
        let r0 = rb * rows_per;
        let c0 = cb * nc;
        region(r0..(r0 + rows_per).min(m), c0..(c0 + nc).min(n));
    });
}

/// `out[rows × w.rows]` (row stride `out_stride`) ⟵ epilogue(a · wᵀ + bias).
///
/// `w` is `[n, k]` row-major (`w.cols == a.cols`). Sizes are checked (a mismatch is a bug
/// in the caller, not a user error, hence a panic).
pub fn linear(
    pool: &Pool,
    a: Mat<'_>,
    w: Mat<'_>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    assert_eq!(
        w.cols, a.cols,
        "linear: weight has {} inputs, activations {}",
        w.cols, a.cols
    );
    w.check("linear weight");
    let rhs = Rhs::Operand(Operand::transposed(w));
    linear_rhs(
        pool,
        Kernel::best(),
        a,
        rhs,
        w.rows,
        bias,
        out,
        out_stride,
        epilogue,
    );
}

/// A weight `[n, k]` (PyTorch layout) packed once for the f32 kernel of this CPU, in the
/// strips [`linear`] packs task by task: [`linear_packed`] gives the same bits as
/// [`linear`] without repacking the weight in every call (on a block's row split the
/// repacking is several % of the product).
pub struct PackedF32 {
    data: Vec<f32>,
    n: usize,
    k: usize,
    ker: Kernel,
}

impl PackedF32 {
    pub fn new(w: Mat<'_>) -> PackedF32 {
        w.check("packed weight");
        let ker = Kernel::best();
        let (n, k) = (w.rows, w.cols);
        let mut data = vec![0.0; k * n.div_ceil(ker.nr) * ker.nr];
        pack_rhs_whole(ker, Operand::transposed(w), 1.0, &mut data);
        PackedF32 { data, n, k, ker }
    }
    pub fn rows(&self) -> usize {
        self.n
    }
    pub fn cols(&self) -> usize {
        self.k
    }
}

/// [`linear`] with the weight packed beforehand ([`PackedF32`]): the same result, bit
/// for bit.
pub fn linear_packed(
    pool: &Pool,
    a: Mat<'_>,
    w: &PackedF32,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    assert_eq!(w.k, a.cols, "linear_packed: inner sizes");
    let rhs = Rhs::Packed {
        data: &w.data,
        n: w.n,
    };
    linear_rhs(pool, w.ker, a, rhs, w.n, bias, out, out_stride, epilogue);
}

/// [`linear_packed`] on the calling thread, the whole output as one region (for products
/// inside a pool task, where the row blocks of [`linear`]'s task grid would only re-read
/// the weight and leave a partial panel of rows each): the same result, bit for bit.
pub fn linear_packed_seq(
    a: Mat<'_>,
    w: &PackedF32,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    assert_eq!(w.k, a.cols, "linear_packed_seq: inner sizes");
    let m = a.rows;
    a.check("linear input");
    check_linear_output("linear", bias, out, out_stride, m, w.n);
    if m == 0 || w.n == 0 {
        return;
    }
    let rhs = Rhs::Packed {
        data: &w.data,
        n: w.n,
    };
    let finish = Finish {
        bias,
        epilogue,
        bf16_maths: false,
    };
    with_buffers(|bufs| {
        // SAFETY: the region is the checked `out`, borrowed mutably here.
        unsafe {
            gemm_region(
                w.ker,
                bufs,
                Operand::plain(a),
                rhs,
                1.0,
                0..m,
                0..w.n,
                out.as_mut_ptr(),
                out_stride,
                epilogue == Epilogue::Accumulate,
                finish,
            )
        }
    });
}

/// The body of [`linear`] and [`linear_packed`]: `rhs` is the `k × n` right-hand operand.
#[allow(clippy::too_many_arguments)]
fn linear_rhs(
    pool: &Pool,
    ker: Kernel,
    a: Mat<'_>,
    rhs: Rhs<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue,
) {
    let m = a.rows;
    a.check("linear input");
    check_linear_output("linear", bias, out, out_stride, m, n);
    if m == 0 || n == 0 {
        return;
    }
    let out_ptr = SharedMut::new(out);
    let finish = Finish {
        bias,
        epilogue,
        bf16_maths: false,
    };
    run_linear_tasks(pool, m, n, NC, &|rows, cols| {
        with_buffers(|bufs| {
            // SAFETY: tasks cover disjoint regions of the checked output.
            unsafe {
                gemm_region(
                    ker,
                    bufs,
                    Operand::plain(a),
                    rhs,
                    1.0,
                    rows,
                    cols,
                    out_ptr.ptr(),
                    out_stride,
                    epilogue == Epilogue::Accumulate,
                    finish,
                )
            }
        });
    });
}

/// Output rows and columns per task of [`matmul_tiled`]: a grid fixed by the shape, so
/// the result does not depend on the thread count.
pub const TASK_ROWS: usize = 64;
pub const TASK_COLS: usize = 256;

/// [`matmul_seq`] spread over the pool in tiles of [`TASK_ROWS`] × [`TASK_COLS`] of
/// `out` (rows × columns `out_stride` apart): the products of training and of the small
/// fusion networks, whose operands change every call (no packed weights).
#[allow(clippy::too_many_arguments)]
pub fn matmul_tiled(
    pool: &Pool,
    out: &mut [f32],
    out_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    b_transposed: bool,
    alpha: f32,
    accumulate: bool,
) {
    let m = a.rows;
    let n = if b_transposed { b.rows } else { b.cols };
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        out.len() >= (m - 1) * out_stride + n,
        "matmul_tiled: output"
    );
    let (tiles_m, tiles_n) = (m.div_ceil(TASK_ROWS), n.div_ceil(TASK_COLS));
    let ptr = SharedMut::new(out);
    pool.run(tiles_m * tiles_n, &|task, _| {
        let (r0, c0) = ((task / tiles_n) * TASK_ROWS, (task % tiles_n) * TASK_COLS);
        let (rows, cols) = (TASK_ROWS.min(m - r0), TASK_COLS.min(n - c0));
        // SAFETY: tiles are disjoint; this one spans rows r0.., columns c0.. of `out`.
        let tile = unsafe { ptr.slice(r0 * out_stride + c0, (rows - 1) * out_stride + cols) };
        let lhs = Mat {
            data: &a.data[r0 * a.stride..],
            rows,
            cols: a.cols,
            stride: a.stride,
        };
        let rhs = if b_transposed {
            Mat {
                data: &b.data[c0 * b.stride..],
                rows: cols,
                cols: b.cols,
                stride: b.stride,
            }
        } else {
            Mat {
                data: &b.data[c0..],
                rows: b.rows,
                cols,
                stride: b.stride,
            }
        };
        matmul_seq(tile, out_stride, lhs, rhs, b_transposed, alpha, accumulate);
    });
}

/// `out[m×n] (+)= alpha · a[m×k] · b` on the calling thread, where `b` is `[k×n]` or, with
/// `b_transposed`, `[n×k]` read as its transpose. For use inside pool tasks.
pub fn matmul_seq(
    out: &mut [f32],
    out_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    b_transposed: bool,
    alpha: f32,
    accumulate: bool,
) {
    let b = if b_transposed {
        Operand::transposed(b)
    } else {
        Operand::plain(b)
    };
    product_seq(
        Kernel::best(),
        out,
        out_stride,
        Operand::plain(a),
        b,
        alpha,
        accumulate,
    );
}

/// `out[m×n] (+)= alpha · a · b` for operands read plain or transposed, on the calling
/// thread with the given kernel.
pub fn product_seq(
    ker: Kernel,
    out: &mut [f32],
    out_stride: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    alpha: f32,
    accumulate: bool,
) {
    a.mat.check("matmul lhs");
    b.mat.check("matmul rhs");
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(b.rows(), k, "matmul: inner sizes");
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    if m == 0 || n == 0 {
        return;
    }
    with_buffers(|bufs| {
        // SAFETY: the region is the checked `out`, borrowed mutably here.
        unsafe {
            gemm_region(
                ker,
                bufs,
                a,
                Rhs::Operand(b),
                alpha,
                0..m,
                0..n,
                out.as_mut_ptr(),
                out_stride,
                accumulate,
                Finish::NONE,
            )
        }
    });
}

/// `out[m×n] (+)= a[m×k] · b` on the calling thread, `b` packed beforehand by
/// [`pack_rhs_whole`] with the same kernel (its `alpha` already applied).
pub fn product_seq_packed(
    ker: Kernel,
    out: &mut [f32],
    out_stride: usize,
    a: Mat<'_>,
    b_packed: &[f32],
    n: usize,
    accumulate: bool,
) {
    a.check("matmul lhs");
    let (m, k) = (a.rows, a.cols);
    assert!(
        b_packed.len() >= k * n.div_ceil(ker.nr) * ker.nr,
        "matmul: packed rhs"
    );
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    if m == 0 || n == 0 {
        return;
    }
    with_buffers(|bufs| {
        // SAFETY: the region is the checked `out`, borrowed mutably here.
        unsafe {
            gemm_region(
                ker,
                bufs,
                Operand::plain(a),
                Rhs::Packed { data: b_packed, n },
                1.0,
                0..m,
                0..n,
                out.as_mut_ptr(),
                out_stride,
                accumulate,
                Finish::NONE,
            )
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn reference(a: &[f32], w: &[f32], bias: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[j] as f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * w[j * k + p] as f64;
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    #[test]
    fn matches_f64_reference_with_every_epilogue() {
        let mut rng = Rng::new(11);
        let (m, k, n) = (130, 77, 300);
        let mut a = vec![0f32; m * k];
        let mut w = vec![0f32; n * k];
        let mut b = vec![0f32; n];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut w, 0.1);
        rng.fill_normal(&mut b, 0.1);
        let want = reference(&a, &w, &b, m, k, n);
        let pool = Pool::new(2);
        for epi in [
            Epilogue::None,
            Epilogue::Gelu,
            Epilogue::Relu,
            Epilogue::Accumulate,
        ] {
            let mut out = vec![1.0f32; m * n];
            linear(
                &pool,
                Mat::new(&a, m, k),
                Mat::new(&w, n, k),
                Some(&b),
                &mut out,
                n,
                epi,
            );
            for (o, r) in out.iter().zip(&want) {
                let r = *r as f32;
                let expect = match epi {
                    Epilogue::None => r,
                    Epilogue::Gelu => gelu(r),
                    Epilogue::Relu => r.max(0.0),
                    Epilogue::Accumulate => r + 1.0,
                };
                assert!((o - expect).abs() < 1e-4, "{epi:?}: {o} vs {expect}");
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_thread_count() {
        let mut rng = Rng::new(5);
        let (m, k, n) = (200, 96, 520);
        let mut a = vec![0f32; m * k];
        let mut w = vec![0f32; n * k];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut w, 1.0);
        let run = |threads| {
            let mut out = vec![0f32; m * n];
            linear(
                &Pool::new(threads),
                Mat::new(&a, m, k),
                Mat::new(&w, n, k),
                None,
                &mut out,
                n,
                Epilogue::None,
            );
            out
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn the_isa_cap_only_narrows() {
        use Isa::*;
        assert_eq!(capped_isa(Avx512, Some("avx2")), Avx2);
        assert_eq!(capped_isa(Avx512, Some("portable")), Portable);
        assert_eq!(capped_isa(Avx2, Some("portable")), Portable);
        assert_eq!(capped_isa(Avx2, Some("avx512")), Avx2);
        assert_eq!(capped_isa(Portable, Some("avx2")), Portable);
        assert_eq!(capped_isa(Avx512, Some("sse")), Avx512);
        assert_eq!(capped_isa(Avx512, None), Avx512);
    }

    #[test]
    fn gelu_matches_known_values() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.])) in float64
        let want = [
            -0.15865525393145707,
            0.34573123063700656,
            1.9544997361036416,
        ];
        for (x, w) in [-1.0f32, 0.5, 2.0].iter().zip(want) {
            assert!((gelu(*x) as f64 - w).abs() < 1e-6);
        }
    }

    #[test]
    fn every_kernel_matches_f64_for_every_layout_and_edge() {
        let mut rng = Rng::new(21);
        // Shapes with edges in every direction, k split into several blocks, k = 0, rows
        // read in place (k = 800) and copied (k = 1024: a stride of 4 KiB).
        for (m, k, n) in [
            (1, 1, 1),
            (13, 5, 33),
            (25, 800, 70),
            (26, 1024, 40),
            (12, 384, 32),
            (7, 0, 9),
        ] {
            let mut a = vec![0f32; m * k];
            let mut b = vec![0f32; k * n];
            rng.fill_normal(&mut a, 1.0);
            rng.fill_normal(&mut b, 1.0);
            // The transposed copies hold the same logical operands.
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = 1.5
                        + 0.5
                            * (0..k)
                                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                                .sum::<f64>();
                }
            }
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                let Some(ker) = Kernel::for_isa(isa) else {
                    continue;
                };
                let ops_a = [
                    Operand::plain(Mat::new(&a, m, k)),
                    Operand::transposed(Mat::new(&at, k, m)),
                ];
                let ops_b = [
                    Operand::plain(Mat::new(&b, k, n)),
                    Operand::transposed(Mat::new(&bt, n, k)),
                ];
                for oa in ops_a {
                    for ob in ops_b {
                        let stride = n + 3;
                        let mut out = vec![1.5f32; m * stride];
                        product_seq(ker, &mut out, stride, oa, ob, 0.5, true);
                        // The same product from a whole packed operand (as attention).
                        let mut packed = vec![f32::NAN; packed_rhs_len(k, n)];
                        pack_rhs_whole(ker, ob, 0.5, &mut packed);
                        let mut out2 = vec![1.5f32; m * stride];
                        if !oa.transposed {
                            product_seq_packed(ker, &mut out2, stride, oa.mat, &packed, n, true);
                            assert_eq!(out, out2, "{isa:?}: packed once vs block by block");
                        }
                        for i in 0..m {
                            for j in 0..n {
                                let (g, w) = (out[i * stride + j] as f64, want[i * n + j]);
                                assert!(
                                    (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                                    "{isa:?} {m}x{k}x{n}: {g} vs {w}"
                                );
                            }
                            assert!(out[i * stride + n..(i + 1) * stride]
                                .iter()
                                .all(|&v| v == 1.5));
                        }
                    }
                }
            }
        }
    }
}
