//! Nearest-neighbour search in a memory bank on the device (`kernels/bank_search.cu`).
//!
//! The distance matrix never reaches device memory: a tile kernel keeps, per query and
//! bank split, the smallest (distance, index) in registers, and a second kernel reduces the
//! splits. (distance, index) is compared lexicographically, so ties go to the lower index
//! and the result does not depend on the split count. Two paths:
//! - exact f32: sums of squared differences;
//! - fast: f16 tensor cores on `||q||^2 - 2 q.b + ||b||^2` with f32 norms and accumulation,
//!   keeping [`FAST_KEEP`] candidates per (query, split); then every candidate whose fast
//!   distance lies within twice a proven error bound of the query's best is re-scored with
//!   the f32 path's arithmetic, and a split that may hold more such rows than it kept is
//!   scanned exactly. The result is the f32 path's (index, distance bits); the bound and
//!   its proof are in the kernel file's header and `docs/BANK-SEARCH.md`.
//!
//! Raw-driver style (see [`super`]): the module is loaded once, launches take [`DevPtr`]s
//! and a [`SearchPlan`] made at creation, run on the [`Device`]'s stream with typed
//! argument lists and allocate nothing. Buffer sizes come from the plan
//! ([`SearchPlan::query_len`], [`SearchPlan::bank_len`], [`SearchPlan::part_len`]).

use crate::cuda::device::arena::DevPtr;
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{Error, Result};

const F32_TILE_Q: usize = 64;
const F32_TILE_B: usize = 64;
const F16_TILE_Q: usize = 64;
const F16_TILE_B: usize = 128;
const DIM_MULTIPLE: usize = 32;
const MAX_GRID_Y: usize = 65_535;
/// Candidates the fast path keeps per (query, split) (`FAST_KEEP` in the kernel).
pub const FAST_KEEP: usize = 4;
/// The largest finite f16 value: rows beyond it have no f16 copy within the bound.
const F16_MAX: f32 = 65504.0;

/// Which arithmetic a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    F32,
    F16,
}

/// Split plan of one (queries, bank) shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchPlan {
    pub nq: usize,
    pub nb: usize,
    pub dim: usize,
    pub path: SearchPath,
    pub splits: usize,
    pub tiles_per_split: usize,
}

impl SearchPlan {
    /// Plans a search: about 8 blocks per multiprocessor over the whole grid.
    pub fn new(nq: usize, nb: usize, dim: usize, path: SearchPath, sms: usize) -> Result<Self> {
        if nq == 0
            || nb == 0
            || dim == 0
            || !dim.is_multiple_of(DIM_MULTIPLE)
            || nb > i32::MAX as usize
            || nq > i32::MAX as usize
            || dim > i32::MAX as usize
        {
            return Err(Error::Config(format!(
                "bank search: unsupported shape {nq} queries, {nb} x {dim} bank (dim must be a positive multiple of {DIM_MULTIPLE})"
            )));
        }
        let (tq, tb) = match path {
            SearchPath::F32 => (F32_TILE_Q, F32_TILE_B),
            SearchPath::F16 => (F16_TILE_Q, F16_TILE_B),
        };
        let q_tiles = nq.div_ceil(tq);
        let b_tiles = nb.div_ceil(tb);
        let target_splits = (8 * sms.max(1)).div_ceil(q_tiles).clamp(1, MAX_GRID_Y);
        let tiles_per_split = b_tiles.div_ceil(target_splits).max(1);
        let splits = b_tiles.div_ceil(tiles_per_split);
        Ok(Self {
            nq,
            nb,
            dim,
            path,
            splits,
            tiles_per_split,
        })
    }

    /// Length of the per-(query, split) partial buffers (`part_d`, `part_i`): one pair
    /// per split on the f32 path, [`FAST_KEEP`] on the fast path.
    pub fn part_len(&self) -> usize {
        match self.path {
            SearchPath::F32 => self.nq * self.splits,
            SearchPath::F16 => self.nq * self.splits * FAST_KEEP,
        }
    }

    /// Bank rows of one split (the last split may hold fewer).
    pub fn rows_per_split(&self) -> usize {
        let tb = match self.path {
            SearchPath::F32 => F32_TILE_B,
            SearchPath::F16 => F16_TILE_B,
        };
        self.tiles_per_split * tb
    }

    /// Elements of the query matrix (and of its f16 copy).
    pub fn query_len(&self) -> usize {
        self.nq * self.dim
    }

    /// Elements of the bank matrix (and of its f16 copy).
    pub fn bank_len(&self) -> usize {
        self.nb * self.dim
    }

    fn search_grid(&self) -> (u32, u32, u32) {
        let tq = match self.path {
            SearchPath::F32 => F32_TILE_Q,
            SearchPath::F16 => F16_TILE_Q,
        };
        (self.nq.div_ceil(tq) as u32, self.splits as u32, 1)
    }

    fn expect(&self, path: SearchPath) -> Result<()> {
        if self.path != path {
            return Err(Error::Config(format!(
                "bank search: plan is for the {:?} path, not {path:?}",
                self.path
            )));
        }
        Ok(())
    }
}

/// The fast path's bank term of the error bound: the largest squared row norm of the bank
/// (`sq_norms`, f32 as stored), or +inf when a value does not fit f16 (or is not finite),
/// which makes the fast path scan every split exactly.
pub fn fast_bank_sq(rows: &[f32], sq_norms: &[f32]) -> f32 {
    // Written so that a NaN fails.
    let fits = rows.iter().all(|v| v.abs() <= F16_MAX) && sq_norms.iter().all(|v| v.is_finite());
    if !fits {
        return f32::INFINITY;
    }
    sq_norms.iter().fold(0.0f32, |m, &v| m.max(v))
}

/// Device buffers of a search's partial results, [`SearchPlan::part_len`] each.
#[derive(Debug, Clone, Copy)]
pub struct Partials {
    pub dist: DevPtr<f32>,
    pub index: DevPtr<i32>,
}

/// The inputs of the fast path: f32 originals, their f16 copies ([`BankSearch::to_f16`])
/// and f32 squared row norms ([`BankSearch::row_sqnorms`]), the bank's bound term
/// ([`fast_bank_sq`]) and a scratch buffer of `nq` floats (the queries' error bounds).
#[derive(Debug, Clone, Copy)]
pub struct F16Inputs {
    pub q32: DevPtr<f32>,
    pub q16: DevPtr<u16>,
    pub qnorm: DevPtr<f32>,
    pub bank32: DevPtr<f32>,
    pub bank16: DevPtr<u16>,
    pub bnorm: DevPtr<f32>,
    pub bank_sq: f32,
    pub margin: DevPtr<f32>,
}

/// The bank-search kernels (`kernels/bank_search.cu`).
pub struct BankSearch {
    norm: Kernel,
    convert: Kernel,
    search_f32: Kernel,
    search_f16: Kernel,
    reduce: Kernel,
    margin: Kernel,
    finish: Kernel,
    // Declared last: the functions above belong to it.
    _module: Module,
}

// SAFETY: driver handles used from the engine's thread; they may move between threads.
unsafe impl Send for BankSearch {}

fn launch_dims(what: &str, blocks: usize) -> Result<(u32, u32, u32)> {
    if blocks == 0 || blocks > i32::MAX as usize {
        return Err(Error::Config(format!(
            "bank search: {what} needs {blocks} blocks"
        )));
    }
    Ok((blocks as u32, 1, 1))
}

impl BankSearch {
    /// Loads `bank_search` for `dev` and looks its kernels up (creation time).
    pub fn new(dev: &Device) -> Result<Self> {
        let module = Module::load(dev, "bank_search")?;
        Ok(Self {
            norm: Kernel::find(&module, "row_sqnorm_f32")?,
            convert: Kernel::find(&module, "convert_f32_f16")?,
            search_f32: Kernel::find(&module, "bank_search_f32")?,
            search_f16: Kernel::find(&module, "bank_search_f16")?,
            reduce: Kernel::find(&module, "bank_reduce_f32")?,
            margin: Kernel::find(&module, "bank_fast_margin")?,
            finish: Kernel::find(&module, "bank_finish_exact")?,
            _module: module,
        })
    }

    /// Squared norms of `rows` rows of width `dim`.
    ///
    /// # Safety
    /// `x` must hold rows x dim and `out` rows f32 values on `dev`.
    pub unsafe fn row_sqnorms(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        rows: usize,
        dim: usize,
        out: DevPtr<f32>,
    ) -> Result<()> {
        if rows > i32::MAX as usize || dim == 0 || dim > i32::MAX as usize {
            return Err(Error::Config(format!(
                "bank search: norms of {rows} x {dim}"
            )));
        }
        let grid = launch_dims("row norms", rows.div_ceil(8))?;
        let (r, d) = (rows as i32, dim as i32);
        let mut a = kernel_args![x, out, r, d];
        dev.launch(self.norm, grid, (256, 1, 1), 0, &mut a)
    }

    /// Rounds `n` f32 values to f16 bit patterns (round to nearest even).
    ///
    /// # Safety
    /// `x` and `y` must hold `n` elements on `dev`.
    pub unsafe fn to_f16(
        &self,
        dev: &Device,
        x: DevPtr<f32>,
        y: DevPtr<u16>,
        n: usize,
    ) -> Result<()> {
        let grid = launch_dims("f16 conversion", n.div_ceil(256))?;
        let (n, y) = (n as i64, y.cast::<half::f16>());
        let mut a = kernel_args![x, y, n];
        dev.launch(self.convert, grid, (256, 1, 1), 0, &mut a)
    }

    /// Exact f32 search: nearest index and squared distance for every query.
    ///
    /// # Safety
    /// `queries`/`bank` must hold the plan's [`SearchPlan::query_len`] /
    /// [`SearchPlan::bank_len`] elements, `parts` [`SearchPlan::part_len`] each, `out_d` and
    /// `out_i` `nq` each, all on `dev`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn search_f32(
        &self,
        dev: &Device,
        plan: &SearchPlan,
        queries: DevPtr<f32>,
        bank: DevPtr<f32>,
        parts: Partials,
        out_d: DevPtr<f32>,
        out_i: DevPtr<i32>,
    ) -> Result<()> {
        plan.expect(SearchPath::F32)?;
        let (nq, nb, dim) = (plan.nq as i32, plan.nb as i32, plan.dim as i32);
        let tps = plan.tiles_per_split as i32;
        let mut a = kernel_args![queries, bank, nq, nb, dim, tps, parts.dist, parts.index,];
        dev.launch(self.search_f32, plan.search_grid(), (256, 1, 1), 0, &mut a)?;
        let splits = plan.splits as i32;
        let mut r = kernel_args![parts.dist, parts.index, nq, splits, out_d, out_i,];
        let grid = launch_dims("reduce", plan.nq.div_ceil(128))?;
        dev.launch(self.reduce, grid, (128, 1, 1), 0, &mut r)
    }

    /// Fast search with the f32 path's result: the queries' error bounds, f16 tensor
    /// cores keeping [`FAST_KEEP`] candidates per (query, split), then the exact finish
    /// (module doc). `scanned[q]` receives the number of splits query `q` scanned exactly
    /// (0 when the kept candidates sufficed).
    ///
    /// # Safety
    /// As [`Self::search_f32`]; the f16 copies hold as many elements as their originals,
    /// the norms `nq` / `nb` values, `inputs.margin` and `scanned` `nq` each.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn search_f16(
        &self,
        dev: &Device,
        plan: &SearchPlan,
        inputs: &F16Inputs,
        parts: Partials,
        out_d: DevPtr<f32>,
        out_i: DevPtr<i32>,
        scanned: DevPtr<i32>,
    ) -> Result<()> {
        plan.expect(SearchPath::F16)?;
        let (nq, nb, dim) = (plan.nq as i32, plan.nb as i32, plan.dim as i32);
        let tps = plan.tiles_per_split as i32;
        // One warp per query, 8 warps per block (bounds and finish).
        let warp_grid = launch_dims("finish", plan.nq.div_ceil(8))?;
        let bank_sq = inputs.bank_sq;
        let mut m = kernel_args![inputs.q32, inputs.qnorm, nq, dim, bank_sq, inputs.margin,];
        dev.launch(self.margin, warp_grid, (256, 1, 1), 0, &mut m)?;
        let (q16, bank16) = (
            inputs.q16.cast::<half::f16>(),
            inputs.bank16.cast::<half::f16>(),
        );
        let mut a = kernel_args![
            q16,
            bank16,
            inputs.qnorm,
            inputs.bnorm,
            nq,
            nb,
            dim,
            tps,
            parts.dist,
            parts.index,
        ];
        dev.launch(self.search_f16, plan.search_grid(), (128, 1, 1), 0, &mut a)?;
        let splits = plan.splits as i32;
        let rows_per_split = i32::try_from(plan.rows_per_split()).map_err(|_| {
            Error::Config(format!(
                "bank search: {} rows per split",
                plan.rows_per_split()
            ))
        })?;
        let mut r = kernel_args![
            inputs.q32,
            inputs.bank32,
            dim,
            parts.dist,
            parts.index,
            inputs.margin,
            nq,
            nb,
            splits,
            rows_per_split,
            out_d,
            out_i,
            scanned,
        ];
        dev.launch(self.finish, warp_grid, (256, 1, 1), 0, &mut r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_rejects_bad_shapes() {
        assert!(SearchPlan::new(10, 10, 33, SearchPath::F32, 1).is_err());
        assert!(SearchPlan::new(0, 10, 32, SearchPath::F16, 1).is_err());
        assert!(SearchPlan::new(10, 0, 32, SearchPath::F16, 1).is_err());
        assert!(SearchPlan::new(10, 10, 0, SearchPath::F32, 1).is_err());
        assert!(SearchPlan::new(10, i32::MAX as usize + 1, 32, SearchPath::F32, 1).is_err());
    }

    #[test]
    fn plan_covers_the_bank_exactly_once() {
        for (nq, nb, path, tb) in [
            (784, 150_000, SearchPath::F16, F16_TILE_B),
            (784, 150_000, SearchPath::F32, F32_TILE_B),
            (3136, 40_000, SearchPath::F16, F16_TILE_B),
            (1, 1, SearchPath::F32, F32_TILE_B),
            (70, 333, SearchPath::F32, F32_TILE_B),
        ] {
            let p = SearchPlan::new(nq, nb, 64, path, 132).unwrap();
            assert!(p.splits >= 1 && p.splits <= MAX_GRID_Y);
            assert!(p.splits * p.tiles_per_split * tb >= nb);
            assert!((p.splits - 1) * p.tiles_per_split * tb < nb);
            let keep = if path == SearchPath::F16 {
                FAST_KEEP
            } else {
                1
            };
            assert_eq!(p.part_len(), nq * p.splits * keep);
            assert_eq!(p.rows_per_split(), p.tiles_per_split * tb);
            assert_eq!(p.query_len(), nq * 64);
            assert_eq!(p.bank_len(), nb * 64);
        }
        let p = SearchPlan::new(784, 150_000, 1920, SearchPath::F16, 132).unwrap();
        assert_eq!(p.search_grid().0, 13);
        assert!(p.expect(SearchPath::F32).is_err());
        assert!(p.expect(SearchPath::F16).is_ok());
    }

    #[test]
    fn fast_bank_term() {
        assert_eq!(fast_bank_sq(&[1.0, -2.0, 3.0, 0.5], &[5.0, 9.25]), 9.25);
        assert_eq!(fast_bank_sq(&[1.0, 65504.0], &[1.0, 2.0]), 2.0);
        assert_eq!(fast_bank_sq(&[1.0, -65505.0], &[1.0, 2.0]), f32::INFINITY);
        assert_eq!(fast_bank_sq(&[1.0, f32::NAN], &[1.0, 2.0]), f32::INFINITY);
        assert_eq!(
            fast_bank_sq(&[1.0, 2.0], &[1.0, f32::INFINITY]),
            f32::INFINITY
        );
    }
}
