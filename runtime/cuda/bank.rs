//! Nearest-neighbour search in a memory bank on the device (`kernels/bank_search.cu`).
//!
//! The distance matrix never reaches device memory: a tile kernel keeps, per query and
//! bank split, the smallest (distance, index) in registers, and a second kernel reduces the
//! splits. (distance, index) is compared lexicographically, so ties go to the lower index
//! and the result does not depend on the split count. Two paths:
//! - exact f32: sums of squared differences;
//! - fast: f16 tensor cores on `||q||^2 - 2 q.b + ||b||^2` with f32 norms and accumulation,
//!   then the `rerank` best split winners of each query are re-scored exactly in f32.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use super::transformer::cuda_err;
use crate::{Error, Result};

const F32_TILE_Q: usize = 64;
const F32_TILE_B: usize = 64;
const F16_TILE_Q: usize = 64;
const F16_TILE_B: usize = 128;
const DIM_MULTIPLE: usize = 32;
/// Most split winners the fast path re-ranks per query.
pub const MAX_RERANK: usize = 32;

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
    /// Plans a search: about `waves` blocks per multiprocessor over the whole grid.
    pub fn new(nq: usize, nb: usize, dim: usize, path: SearchPath, sms: usize) -> Result<Self> {
        if nq == 0
            || nb == 0
            || dim == 0
            || !dim.is_multiple_of(DIM_MULTIPLE)
            || nb > i32::MAX as usize
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
        let target_splits = (8 * sms.max(1)).div_ceil(q_tiles).max(1);
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

    /// Length of the per-(query, split) partial buffers (`part_d`, `part_i`).
    pub fn part_len(&self) -> usize {
        self.nq * self.splits
    }
}

/// The bank-search kernels of one module.
pub struct BankSearch {
    norm: CudaFunction,
    convert: CudaFunction,
    search_f32: CudaFunction,
    search_f16: CudaFunction,
    reduce: CudaFunction,
    rerank: CudaFunction,
}

/// Device buffers of a search's partial results.
pub struct Partials<'a> {
    pub dist: &'a mut CudaSlice<f32>,
    pub index: &'a mut CudaSlice<i32>,
}

fn cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn need(what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(Error::Config(format!(
            "bank search: {what} holds {have} elements, needs {want}"
        )));
    }
    Ok(())
}

impl BankSearch {
    /// Looks up the kernels in a module built from `kernels/bank_search.cu`.
    pub fn new(module: &Arc<CudaModule>) -> Result<Self> {
        let f = |n: &str| module.load_function(n).map_err(cuda_err);
        Ok(Self {
            norm: f("row_sqnorm_f32")?,
            convert: f("convert_f32_f16")?,
            search_f32: f("bank_search_f32")?,
            search_f16: f("bank_search_f16")?,
            reduce: f("bank_reduce_f32")?,
            rerank: f("bank_rerank_f32")?,
        })
    }

    /// Squared norms of `rows` rows of width `dim`.
    pub fn row_sqnorms(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need("x", x.len(), rows * dim)?;
        need("norms", out.len(), rows)?;
        let (r, d) = (rows as i32, dim as i32);
        let mut b = stream.launch_builder(&self.norm);
        b.arg(x).arg(out).arg(&r).arg(&d);
        // SAFETY: sizes checked; the signature is (const float*, float*, int, int).
        unsafe { b.launch(cfg((rows.div_ceil(8) as u32, 1), 256)) }.map_err(cuda_err)?;
        Ok(())
    }

    /// Rounds f32 values to f16 bit patterns.
    pub fn to_f16(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<u16>,
    ) -> Result<()> {
        need("f16 copy", y.len(), x.len())?;
        let n = x.len() as i64;
        let mut b = stream.launch_builder(&self.convert);
        b.arg(x).arg(y).arg(&n);
        // SAFETY: sizes checked; the signature is (const float*, half*, long).
        unsafe { b.launch(cfg((x.len().div_ceil(256) as u32, 1), 256)) }.map_err(cuda_err)?;
        Ok(())
    }

    /// Exact f32 search: nearest index and squared distance for every query.
    #[allow(clippy::too_many_arguments)]
    pub fn search_f32(
        &self,
        stream: &CudaStream,
        plan: &SearchPlan,
        queries: &CudaSlice<f32>,
        bank: &CudaSlice<f32>,
        parts: Partials<'_>,
        out_d: &mut CudaSlice<f32>,
        out_i: &mut CudaSlice<i32>,
    ) -> Result<()> {
        if plan.path != SearchPath::F32 {
            return Err(Error::Config(
                "bank search: plan is not for the f32 path".into(),
            ));
        }
        need("queries", queries.len(), plan.nq * plan.dim)?;
        need("bank", bank.len(), plan.nb * plan.dim)?;
        need(
            "partials",
            parts.dist.len().min(parts.index.len()),
            plan.part_len(),
        )?;
        need("outputs", out_d.len().min(out_i.len()), plan.nq)?;
        let (nq, nb, dim) = (plan.nq as i32, plan.nb as i32, plan.dim as i32);
        let tps = plan.tiles_per_split as i32;
        let mut b = stream.launch_builder(&self.search_f32);
        b.arg(queries)
            .arg(bank)
            .arg(&nq)
            .arg(&nb)
            .arg(&dim)
            .arg(&tps);
        b.arg(&mut *parts.dist).arg(&mut *parts.index);
        let grid = (plan.nq.div_ceil(F32_TILE_Q) as u32, plan.splits as u32);
        // SAFETY: sizes checked against the plan; the signature matches bank_search_f32.
        unsafe { b.launch(cfg(grid, 256)) }.map_err(cuda_err)?;
        let splits = plan.splits as i32;
        let mut r = stream.launch_builder(&self.reduce);
        r.arg(&*parts.dist).arg(&*parts.index).arg(&nq).arg(&splits);
        r.arg(out_d).arg(out_i);
        // SAFETY: as above, bank_reduce_f32.
        unsafe { r.launch(cfg((plan.nq.div_ceil(128) as u32, 1), 128)) }.map_err(cuda_err)?;
        Ok(())
    }

    /// Fast search: f16 tensor cores, then exact f32 re-ranking of the `rerank` best split
    /// winners. `q16`/`bank16` are f16 copies and `qnorm`/`bnorm` the f32 squared norms of
    /// `q32`/`bank32`.
    #[allow(clippy::too_many_arguments)]
    pub fn search_f16(
        &self,
        stream: &CudaStream,
        plan: &SearchPlan,
        q32: &CudaSlice<f32>,
        q16: &CudaSlice<u16>,
        qnorm: &CudaSlice<f32>,
        bank32: &CudaSlice<f32>,
        bank16: &CudaSlice<u16>,
        bnorm: &CudaSlice<f32>,
        rerank: usize,
        parts: Partials<'_>,
        out_d: &mut CudaSlice<f32>,
        out_i: &mut CudaSlice<i32>,
    ) -> Result<()> {
        if plan.path != SearchPath::F16 {
            return Err(Error::Config(
                "bank search: plan is not for the f16 path".into(),
            ));
        }
        if rerank == 0 || rerank > MAX_RERANK {
            return Err(Error::Config(format!(
                "bank search: rerank {rerank} outside 1..={MAX_RERANK}"
            )));
        }
        need("queries", q32.len().min(q16.len()), plan.nq * plan.dim)?;
        need("bank", bank32.len().min(bank16.len()), plan.nb * plan.dim)?;
        need("query norms", qnorm.len(), plan.nq)?;
        need("bank norms", bnorm.len(), plan.nb)?;
        need(
            "partials",
            parts.dist.len().min(parts.index.len()),
            plan.part_len(),
        )?;
        need("outputs", out_d.len().min(out_i.len()), plan.nq)?;
        let (nq, nb, dim) = (plan.nq as i32, plan.nb as i32, plan.dim as i32);
        let tps = plan.tiles_per_split as i32;
        let mut b = stream.launch_builder(&self.search_f16);
        b.arg(q16).arg(bank16).arg(qnorm).arg(bnorm);
        b.arg(&nq).arg(&nb).arg(&dim).arg(&tps);
        b.arg(&mut *parts.dist).arg(&mut *parts.index);
        let grid = (plan.nq.div_ceil(F16_TILE_Q) as u32, plan.splits as u32);
        // SAFETY: sizes checked against the plan; the signature matches bank_search_f16.
        unsafe { b.launch(cfg(grid, 128)) }.map_err(cuda_err)?;
        let (splits, rr) = (plan.splits as i32, rerank as i32);
        let mut r = stream.launch_builder(&self.rerank);
        r.arg(q32)
            .arg(bank32)
            .arg(&dim)
            .arg(&*parts.dist)
            .arg(&*parts.index);
        r.arg(&nq).arg(&splits).arg(&rr).arg(out_d).arg(out_i);
        // SAFETY: as above, bank_rerank_f32 (one warp per query, 8 warps per block).
        unsafe { r.launch(cfg((plan.nq.div_ceil(8) as u32, 1), 256)) }.map_err(cuda_err)?;
        Ok(())
    }
}
