//! Greedy coreset selection on the GPU (SPEC §6, fit time), with indices identical to
//! [`crate::cpu::coreset::greedy`] for any input.
//!
//! The kernels (`kernels/coreset.cu`) mirror the CPU's arithmetic bit for bit: squared
//! distances summed left to right over the dimensions with every operation rounded on its
//! own (no FMA), a triangle-inequality pruning test with a rounding margin (per row; the
//! CPU prunes per tile of rows, and both skip only rows that provably cannot move), strict
//! `<` for a row's update and ties of the arg-max to the lowest row. So the GPU computes the
//! very same running distances as the CPU, step for step.
//!
//! Layout on the device (one [`Arena`] per selection, allocated at fit time): the rows
//! (`n × k`, row-major, each padded to a multiple of 32 floats so that every 32-dimension
//! tile is one aligned 128-byte line), running distance and nearest centre per row, the chosen
//! centres copied column-major (`k × m`, for coalesced centre-to-centre distances), the
//! centre-to-centre distances of the current step, one arg-max key per block, the output
//! indices and two state words (current centre, finished-block counter).
//!
//! Per step two launches, no host synchronisation: `coreset_cc_f32` (distances from the new
//! centre to the earlier ones) and `coreset_update_f32` (pruning test, distances of the rows
//! that need them, running minimum, block arg-max; the last block reduces the block keys
//! and publishes the next centre). The host only queues launches and reads the indices back
//! at the end.
//!
//! The projection ([`coreset_on_device`]) runs on the CPU with
//! [`crate::cpu::coreset::project_rows`]: it is a faer GEMM whose accumulation order is
//! faer's and this CPU's, which a GPU cannot reproduce bit for bit, and identical indices
//! need identical projected rows.

use crate::cpu::coreset as cpu;
use crate::cpu::pool::Pool;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::{DeviceError, Error, Result};

/// Rows per block of `coreset_update_f32` (`CS_SEG` in kernels/coreset.cu).
pub const SEGMENT: usize = 1024;
const UPDATE_THREADS: u32 = 256;
const CC_THREADS: u32 = 256;
const INIT_THREADS: u32 = 256;
/// `1 + PRUNE_MARGIN` of [`crate::cpu::coreset`] (margin 1e-3), the same f32 expression, so
/// the pruning test is the CPU's to the bit.
const PRUNE_FACTOR: f32 = 1.0 + 1e-3;
/// Device memory left free beyond a plan (driver and other allocations), bytes.
pub const HEADROOM: usize = 64 << 20;
/// Row and centre strides are multiples of this many floats (one 128-byte line).
const PAD: usize = 32;
/// Rows per host-side repacking chunk when rows are padded on upload.
const UPLOAD_ROWS: usize = 16_384;

/// Sizes and device-memory layout of one selection: `m` of `n` rows of dimension `k`.
#[derive(Debug)]
pub struct CoresetPlan {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// Row stride on the device, floats (`k` rounded up to a multiple of 32).
    pub ld: usize,
    /// Leading dimension of the centres, floats (`m` rounded up to a multiple of 32).
    pub ldc: usize,
    /// Blocks of the update kernel (`n / SEGMENT` rounded up).
    pub blocks: usize,
    /// `n × ld` rows, row-major (the first `k` of each row are used).
    pub rows: Slot<f32>,
    /// Running squared distance of each row to its nearest centre.
    pub min_d: Slot<f32>,
    /// Selection step of each row's nearest centre (`u32::MAX`: none yet).
    pub owner: Slot<u32>,
    /// The chosen centres, column-major `k × m` (leading dimension `ldc`).
    pub centres: Slot<f32>,
    /// Squared distances from the current centre to the earlier ones.
    pub cc: Slot<f32>,
    /// The selected row indices, in selection order.
    pub out: Slot<u32>,
    /// One arg-max key per update block.
    pub keys: Slot<u64>,
    /// Current centre, finished-block counter.
    pub state: Slot<u32>,
    arena: ArenaPlan,
}

impl CoresetPlan {
    /// Validates the sizes (`n ≥ 1`, `k ≥ 1`, `1 ≤ m ≤ n`, 32-bit row indices) and lays out
    /// the device memory.
    pub fn new(n: usize, k: usize, m: usize) -> Result<CoresetPlan> {
        let bad = |msg: String| Err(Error::Config(format!("GPU coreset: {msg}")));
        if n == 0 {
            return bad("no rows to select from".into());
        }
        if k == 0 {
            return bad("rows of dimension 0".into());
        }
        if m == 0 || m > n {
            return bad(format!("{m} rows to keep out of {n} (need 1 ≤ m ≤ n)"));
        }
        if n >= u32::MAX as usize {
            return bad(format!(
                "{n} rows: at most {} (row indices are 32-bit)",
                u32::MAX - 1
            ));
        }
        if k > (u32::MAX as usize) - PAD {
            return bad(format!("dimension {k} does not fit 32 bits"));
        }
        let blocks = n.div_ceil(SEGMENT);
        let (ld, ldc) = (k.div_ceil(PAD) * PAD, m.div_ceil(PAD) * PAD);
        // Byte count in u128 first, so the arena's own arithmetic cannot overflow.
        let (n1, ld1, k1, c1, m1) = (n as u128, ld as u128, k as u128, ldc as u128, m as u128);
        let need = 4 * (n1 * ld1 + 2 * n1 + k1 * c1 + 2 * m1) + 8 * blocks as u128 + 8 + 9 * 256;
        if need > (isize::MAX as u128) / 2 {
            return bad(format!(
                "{n} rows × {k} dimensions, {m} kept: {need} bytes cannot be addressed"
            ));
        }
        let mut arena = ArenaPlan::new();
        let rows = arena.add::<f32>(n * ld);
        let min_d = arena.add::<f32>(n);
        let owner = arena.add::<u32>(n);
        let centres = arena.add::<f32>(k * ldc);
        let cc = arena.add::<f32>(m);
        let out = arena.add::<u32>(m);
        let keys = arena.add::<u64>(blocks);
        let state = arena.add::<u32>(2);
        Ok(CoresetPlan {
            n,
            k,
            m,
            ld,
            ldc,
            blocks,
            rows,
            min_d,
            owner,
            centres,
            cc,
            out,
            keys,
            state,
            arena,
        })
    }

    /// Device memory the selection needs, bytes.
    pub fn device_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// The clear error when `free` bytes (of `total`) cannot hold the plan plus
    /// [`HEADROOM`]; `Ok` otherwise.
    pub fn check_fits(&self, free: usize, total: usize) -> Result<()> {
        let need = self.device_bytes();
        if need.saturating_add(HEADROOM) > free {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            return Err(Error::Device(DeviceError::OutOfMemory(format!(
                "GPU coreset of {} rows × {} dimensions keeping {} needs {:.2} GiB of device \
                 memory (+{} MiB headroom); {:.2} GiB of {:.2} GiB are free",
                self.n,
                self.k,
                self.m,
                gib(need),
                HEADROOM >> 20,
                gib(free),
                gib(total)
            ))));
        }
        Ok(())
    }
}

/// Free and total memory of `dev`, bytes.
pub fn device_memory(dev: &Device) -> Result<(usize, usize)> {
    dev.mem_info()
}

/// The coreset kernels, looked up once. Drop before the [`Device`] that made them.
pub struct GpuCoreset {
    init: Kernel,
    cc: Kernel,
    update: Kernel,
    _module: Module,
}

impl GpuCoreset {
    pub fn new(dev: &Device) -> Result<GpuCoreset> {
        let module = Module::load(dev, "coreset")?;
        Ok(GpuCoreset {
            init: Kernel::find(&module, "coreset_init_f32")?,
            cc: Kernel::find(&module, "coreset_cc_f32")?,
            update: Kernel::find(&module, "coreset_update_f32")?,
            _module: module,
        })
    }

    /// Farthest-first selection of `m` rows of `projected_rows` (`n × k`, row-major): the
    /// indices of [`crate::cpu::coreset::greedy`] (`m` is clamped to `n`; no rows, no
    /// indices). Allocates the device memory of a [`CoresetPlan`] for the call, after
    /// checking that it fits in the free memory.
    pub fn select(
        &self,
        dev: &Device,
        projected_rows: &[f32],
        k: usize,
        m: usize,
    ) -> Result<Vec<u32>> {
        if k == 0 {
            return Err(Error::Config("GPU coreset: rows of dimension 0".into()));
        }
        if !projected_rows.len().is_multiple_of(k) {
            return Err(Error::Config(format!(
                "GPU coreset: {} values are not whole rows of {k}",
                projected_rows.len()
            )));
        }
        let n = projected_rows.len() / k;
        let m = m.min(n);
        if m == 0 {
            return Ok(Vec::new());
        }
        let plan = CoresetPlan::new(n, k, m)?;
        let arena = allocate(dev, &plan)?;
        upload_rows(dev, &plan, &arena, projected_rows)?;
        self.run(dev, &plan, &arena)
    }

    /// Runs the selection on rows already in `arena` (laid out by `plan`).
    fn run(&self, dev: &Device, plan: &CoresetPlan, arena: &Arena) -> Result<Vec<u32>> {
        let (n, k, m) = (plan.n as u32, plan.k as u32, plan.m as u32);
        let (ld, ldc) = (plan.ld as u32, plan.ldc as u32);
        let rows: DevPtr<f32> = arena.ptr(plan.rows);
        let min_d: DevPtr<f32> = arena.ptr(plan.min_d);
        let owner: DevPtr<u32> = arena.ptr(plan.owner);
        let centres: DevPtr<f32> = arena.ptr(plan.centres);
        let cc: DevPtr<f32> = arena.ptr(plan.cc);
        let out: DevPtr<u32> = arena.ptr(plan.out);
        let keys: DevPtr<u64> = arena.ptr(plan.keys);
        let state: DevPtr<u32> = arena.ptr(plan.state);
        let factor = PRUNE_FACTOR;
        dev.bind()?;
        // SAFETY: every pointer is a slot of `arena`, sized by `plan` for n, k and m; the
        // argument lists match the kernels' parameter lists in kernels/coreset.cu.
        unsafe {
            let mut a = kernel_args![rows, n, k, min_d, owner, centres, ldc, out, state,];
            let grid = plan.n.div_ceil(INIT_THREADS as usize) as u32;
            dev.launch(self.init, (grid, 1, 1), (INIT_THREADS, 1, 1), 0, &mut a)?;
            // The update of the last step would only choose a centre nobody keeps.
            for step in 0..m - 1 {
                if step > 0 {
                    let mut a = kernel_args![rows, k, ld, centres, ldc, state, step, cc,];
                    let grid = step.div_ceil(CC_THREADS);
                    dev.launch(self.cc, (grid, 1, 1), (CC_THREADS, 1, 1), 0, &mut a)?;
                }
                let mut a = kernel_args![
                    rows, n, k, ld, step, m, cc, factor, min_d, owner, centres, ldc, out, keys,
                    state,
                ];
                let grid = plan.blocks as u32;
                dev.launch(self.update, (grid, 1, 1), (UPDATE_THREADS, 1, 1), 0, &mut a)?;
            }
        }
        dev.synchronize()?;
        let mut idx = vec![0u32; plan.m];
        arena.download(dev, plan.out, &mut idx)?;
        if let Some(bad) = idx.iter().find(|&&i| i >= n) {
            return Err(Error::Device(DeviceError::Fault(format!(
                "GPU coreset returned row {bad} of {n} (kernel fault)"
            ))));
        }
        Ok(idx)
    }
}

/// Copies `rows` (`n × k`) into the plan's row slot with the device stride `ld`: one copy
/// when no padding is needed, otherwise through a padded host chunk of [`UPLOAD_ROWS`].
fn upload_rows(dev: &Device, plan: &CoresetPlan, arena: &Arena, rows: &[f32]) -> Result<()> {
    let (k, ld) = (plan.k, plan.ld);
    if rows.len() != plan.n * k {
        return Err(Error::Config(format!(
            "GPU coreset: {} values for {} rows of {k}",
            rows.len(),
            plan.n
        )));
    }
    if ld == k {
        return arena.upload(dev, plan.rows, rows);
    }
    let base = arena.ptr(plan.rows);
    let mut buf = vec![0f32; UPLOAD_ROWS.min(plan.n) * ld];
    for (c, chunk) in rows.chunks(UPLOAD_ROWS * k).enumerate() {
        let cn = chunk.len() / k;
        for (dst, src) in buf.chunks_mut(ld).zip(chunk.chunks(k)) {
            dst[..k].copy_from_slice(src);
        }
        dev.upload(base.offset(c * UPLOAD_ROWS * ld).raw(), &buf[..cn * ld])?;
    }
    Ok(())
}

/// Checks `plan` against the device's free memory, then allocates it.
fn allocate(dev: &Device, plan: &CoresetPlan) -> Result<Arena> {
    let (free, total) = device_memory(dev)?;
    plan.check_fits(free, total)?;
    Arena::new(dev, &plan.arena)
}

/// [`crate::cpu::coreset::coreset`] with the selection on `dev`: the same JL dimension for
/// `eps`, the same seeded sparse matrix and the same projection on the CPU (`pool`), then
/// [`GpuCoreset::select`]. Same indices as the CPU function. The device memory is checked
/// before the projection starts.
pub fn coreset_on_device(
    dev: &Device,
    pool: &Pool,
    x: &[f32],
    d: usize,
    m: usize,
    eps: f64,
    seed: u64,
) -> Result<Vec<u32>> {
    if d == 0 {
        return Err(Error::Config("GPU coreset: rows of dimension 0".into()));
    }
    let n = x.len() / d;
    let x = &x[..n * d];
    let m = m.min(n);
    if m == 0 {
        return Ok(Vec::new());
    }
    let gpu = GpuCoreset::new(dev)?;
    let k = cpu::jl_min_dim(n, eps);
    if k == 0 || k >= d {
        return gpu.select(dev, x, d, m);
    }
    let plan = CoresetPlan::new(n, k, m)?;
    let arena = allocate(dev, &plan)?;
    let r = cpu::projection_matrix(k, d, seed);
    let mut p = vec![0f32; n * k];
    cpu::project_rows(pool, x, d, &r, k, &mut p);
    upload_rows(dev, &plan, &arena, &p)?;
    drop(p);
    gpu.run(dev, &plan, &arena)
}

/// For the fit: [`GpuCoreset::select`] on CUDA device 0 (opened and closed here). An error
/// (no driver, no device, too little memory, a failed launch) lets the caller fall back to
/// [`crate::cpu::coreset::greedy`], which gives the same indices.
pub fn greedy_on_first_device(x: &[f32], dim: usize, m: usize) -> Result<Vec<u32>> {
    let dev = Device::new(0)?;
    let gpu = GpuCoreset::new(&dev)?;
    let idx = gpu.select(&dev, x, dim, m);
    drop(gpu);
    drop(dev);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_rejects_bad_sizes_with_clear_errors() {
        let msg = |r: Result<CoresetPlan>| r.unwrap_err().to_string();
        assert!(msg(CoresetPlan::new(0, 8, 1)).contains("no rows"));
        assert!(msg(CoresetPlan::new(10, 0, 1)).contains("dimension 0"));
        assert!(msg(CoresetPlan::new(10, 8, 0)).contains("0 rows to keep out of 10"));
        assert!(msg(CoresetPlan::new(10, 8, 11)).contains("11 rows to keep out of 10"));
        assert!(msg(CoresetPlan::new(u32::MAX as usize, 1, 1)).contains("32-bit"));
        assert!(msg(CoresetPlan::new(8, 1 << 33, 1)).contains("32 bits"));
        let big = u32::MAX as usize - 64;
        assert!(msg(CoresetPlan::new(big, big, 1)).contains("addressed"));
        let e = CoresetPlan::new(10, 8, 0).unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }

    #[test]
    fn plan_lays_out_disjoint_aligned_slots() {
        // The scale: 1.25 M rows, JL dimension for ε = 0.9, 10 % kept.
        let n = 1_250_000;
        let k = cpu::jl_min_dim(n, 0.9);
        assert!(k > 300 && k < 400, "k {k}");
        let m = n / 10;
        let p = CoresetPlan::new(n, k, m).unwrap();
        assert_eq!(p.blocks, n.div_ceil(SEGMENT));
        let spans = [
            (p.rows.offset, p.rows.bytes()),
            (p.min_d.offset, p.min_d.bytes()),
            (p.owner.offset, p.owner.bytes()),
            (p.centres.offset, p.centres.bytes()),
            (p.cc.offset, p.cc.bytes()),
            (p.out.offset, p.out.bytes()),
            (p.keys.offset, p.keys.bytes()),
            (p.state.offset, p.state.bytes()),
        ];
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        assert!(spans
            .iter()
            .all(|(o, _)| o % crate::cuda::device::arena::ALIGN == 0));
        let last = spans[spans.len() - 1];
        assert!(last.0 + last.1 <= p.device_bytes());
        assert_eq!((p.ld, p.ldc), (k.div_ceil(32) * 32, m.div_ceil(32) * 32));
        let exact = 4 * (n * p.ld + 2 * n + k * p.ldc + 2 * m) + 8 * p.blocks + 8;
        assert!(p.device_bytes() >= exact && p.device_bytes() < exact + 9 * 256);
        // About 1.9 GB: comfortably inside an H100.
        assert!(p.device_bytes() < 2_100_000_000, "{}", p.device_bytes());
        assert_eq!(p.state.len, 2);
        assert_eq!(p.centres.len, k * p.ldc);
        assert_eq!(p.rows.len, n * p.ld);
    }

    #[test]
    fn memory_check_names_need_and_free() {
        let p = CoresetPlan::new(1000, 64, 100).unwrap();
        let need = p.device_bytes();
        assert!(p.check_fits(need + HEADROOM, 1 << 34).is_ok());
        let e = p.check_fits(need + HEADROOM - 1, 1 << 34).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, Error::Device(DeviceError::OutOfMemory(_))));
        assert!(s.contains("1000 rows × 64 dimensions keeping 100"), "{s}");
        assert!(
            s.contains("GiB of device memory") && s.contains("free"),
            "{s}"
        );
    }

    #[test]
    fn prune_factor_is_the_cpu_expression() {
        let margin: f32 = 1e-3;
        assert_eq!(PRUNE_FACTOR.to_bits(), (1.0f32 + margin).to_bits());
    }

    #[test]
    fn fit_helper_errs_without_a_device_or_on_bad_shapes() {
        // Either no device (an error to fall back on) or the shape error: never a panic.
        assert!(greedy_on_first_device(&[1.0, 2.0, 3.0], 2, 1).is_err());
        assert!(greedy_on_first_device(&[1.0, 2.0], 0, 1).is_err());
    }
}
