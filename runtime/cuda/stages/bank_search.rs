//! The engine's bank search on the device: the CUDA backend's first stage in `inspect`.
//!
//! At engine creation the three banks are uploaded once into one arena, the search kernels
//! are looked up, and for each bank one CUDA graph is recorded: copy the part's
//! normalised patch features from a pinned buffer, search (exact f32,
//! [`crate::cuda::ops::bank_search::BankSearch::search_f32`], or the fast path,
//! [`crate::cuda::ops::bank_search::BankSearch::search_f16`], f16 tensor cores whose
//! candidates within a proven error bound are re-scored in f32, so that it returns the f32
//! search's rows and distances), copy the nearest squared distances and rows (and, on the
//! fast path, how many bank splits each query had to scan exactly) back into pinned
//! buffers. Per part and bank, [`NearestSearch::nearest`] fills the
//! pinned input, replays the graph and waits: one driver call, no allocation. The CPU
//! then finishes the bank's score (re-weighting, maps), exactly as on the CPU backend.
//!
//! Before the engine accepts the device, [`DeviceBankSearch::new`] checks it against the
//! CPU search on probe queries near the bank's own rows; a device that disagrees is not
//! used (the engine falls back to the CPU and says why).

use std::sync::Arc;

use crate::backend::Precision;
use crate::cpu::bank_search::{self, BankView};
use crate::cpu::pool::Pool;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::graph::{Graph, Pinned};
use crate::cuda::device::Device;
use crate::cuda::ops::bank_search::{
    fast_bank_sq, BankSearch, F16Inputs, Partials, SearchPath, SearchPlan,
};
use crate::pipeline::score::{BankSet, NearestSearch};
use crate::types::BANK_NAMES;
use crate::util::rng::Rng;
use crate::{DeviceError, Error, Result};

/// One bank's search on the device.
struct DeviceBank {
    plan: SearchPlan,
    /// The bank's own graph (pinned queries → search → pinned results), kept besides
    /// the one-graph part's recording ([`DeviceBankSearch::record_search`]): the
    /// self-check at creation runs it against the CPU search, and an engine with a
    /// network on the CPU searches through it ([`NearestSearch`]).
    graph: Graph,
}

/// The device buffers one bank's search reads and works in (see [`record_bank`]).
#[derive(Clone, Copy)]
struct SearchBufs {
    /// Per bank: rows, their f16 copy and squared norms (fast path).
    rows: [DevPtr<f32>; 3],
    rows16: [DevPtr<u16>; 3],
    norms: [DevPtr<f32>; 3],
    /// Per bank: the bank file's neighbour table (rows × 2), null without one.
    neighbours: [DevPtr<u32>; 3],
    /// Per bank: the fast path's squared bound of its rows (`fast_bank_sq`).
    bank_sq: [f32; 3],
    queries16: DevPtr<u16>,
    query_norms: DevPtr<f32>,
    /// Fast path: per query, the re-scoring margin and the splits scanned exactly.
    margins: DevPtr<f32>,
    scanned: DevPtr<i32>,
    parts: Partials,
}

/// Enqueues the search of bank `b` (plan `plan`) for the normalised queries `q`: the
/// squared distance to the nearest row into `out_d`, that row into `out_i` (on the fast
/// path also the splits each query scanned exactly, into `bufs.scanned`).
///
/// # Safety
/// `q`, `out_d` and `out_i` valid for the plan's queries; `bufs` from the search's arena.
#[allow(clippy::too_many_arguments)]
unsafe fn record_bank(
    dev: &Device,
    search: &BankSearch,
    plan: &SearchPlan,
    bufs: &SearchBufs,
    b: usize,
    q: DevPtr<f32>,
    out_d: DevPtr<f32>,
    out_i: DevPtr<i32>,
) -> Result<()> {
    match plan.path {
        SearchPath::F32 => search.search_f32(dev, plan, q, bufs.rows[b], bufs.parts, out_d, out_i),
        SearchPath::F16 => {
            let inputs = F16Inputs {
                q32: q,
                q16: bufs.queries16,
                qnorm: bufs.query_norms,
                bank32: bufs.rows[b],
                bank16: bufs.rows16[b],
                bnorm: bufs.norms[b],
                bank_sq: bufs.bank_sq[b],
                margin: bufs.margins,
            };
            search.to_f16(dev, q, inputs.q16, plan.query_len())?;
            search.row_sqnorms(dev, q, plan.nq, plan.dim, inputs.qnorm)?;
            search.search_f16(dev, plan, &inputs, bufs.parts, out_d, out_i, bufs.scanned)
        }
    }
}

/// How often the fast path's kept candidates did not suffice (see
/// [`DeviceBankSearch::exact_scans`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactScans {
    /// Queries searched on the fast path.
    pub queries: u64,
    /// Of those, queries that scanned at least one bank split exactly.
    pub queries_scanning: u64,
    /// Bank splits scanned exactly, summed over queries.
    pub splits_scanned: u64,
}

impl ExactScans {
    /// Counts one fast-path search: `scanned` holds, per query, the splits it scanned
    /// exactly (as the search kernel leaves them).
    pub fn add(&mut self, scanned: &[i32]) {
        self.queries += scanned.len() as u64;
        self.queries_scanning += scanned.iter().filter(|&&s| s > 0).count() as u64;
        self.splits_scanned += scanned.iter().map(|&s| s.max(0) as u64).sum::<u64>();
    }
}

/// Device memory and recorded work of the bank search (see the module doc).
pub struct DeviceBankSearch {
    // Field order is drop order: graphs and buffers before the module, the device last.
    banks: [Option<DeviceBank>; 3],
    bufs: SearchBufs,
    host_queries: Pinned<f32>,
    host_dist: Pinned<f32>,
    host_index: Pinned<i32>,
    host_scanned: Pinned<i32>,
    scans: ExactScans,
    _arena: Arena,
    search: BankSearch,
    device_name: String,
    dev: Arc<Device>,
}

/// The arena slots of one bank: its rows, and for the fast path their f16 copy and
/// squared norms.
struct BankSlots {
    rows: Slot<f32>,
    rows16: Slot<u16>,
    norms: Slot<f32>,
    /// The bank file's neighbour table (empty without one).
    neighbours: Slot<u32>,
}

/// The searches' plans and device memory, planned on the host.
struct BankLayout {
    plans: [Option<SearchPlan>; 3],
    slots: [Option<BankSlots>; 3],
    queries: Slot<f32>,
    queries16: Slot<u16>,
    query_norms: Slot<f32>,
    part_dist: Slot<f32>,
    part_index: Slot<i32>,
    out_dist: Slot<f32>,
    out_index: Slot<i32>,
    margins: Slot<f32>,
    scanned: Slot<i32>,
    max_query: usize,
    max_nq: usize,
    /// 1 on the fast path (f16 copies and norms planned), else 0.
    fast: usize,
    layout: ArenaPlan,
}

impl BankLayout {
    /// Plans every bank's search for `dev` (its multiprocessor count sets the split).
    fn plan(dev: &Device, set: &BankSet<'_>, precision: Precision) -> Result<Self> {
        let sms = dev.sm_count.max(1) as usize;
        let (path, fast) = match precision {
            Precision::F32 => (SearchPath::F32, 0),
            Precision::Bf16 => (SearchPath::F16, 1),
        };
        let mut plans = [None; 3];
        for b in 0..3 {
            if let Some(view) = &set.banks[b] {
                let patches = set.grids[b] * set.grids[b];
                let plan = SearchPlan::new(patches, view.n, view.dim, path, sms).map_err(|e| {
                    Error::Device(DeviceError::Unsupported(format!(
                        "bank {}: {e}",
                        BANK_NAMES[b]
                    )))
                })?;
                plans[b] = Some(plan);
            }
        }
        let max = |f: fn(&SearchPlan) -> usize| plans.iter().flatten().map(f).max().unwrap_or(1);
        let (max_query, max_part, max_nq) = (
            max(SearchPlan::query_len),
            max(SearchPlan::part_len),
            max(|p| p.nq),
        );
        let mut layout = ArenaPlan::new();
        let slots: [Option<BankSlots>; 3] = std::array::from_fn(|b| {
            plans[b].map(|p| BankSlots {
                rows: layout.add::<f32>(p.bank_len()),
                rows16: layout.add::<u16>(fast * p.bank_len()),
                norms: layout.add::<f32>(fast * p.nb),
                neighbours: layout.add::<u32>(
                    set.banks[b]
                        .and_then(|v| v.neighbours)
                        .map_or(0, |t| t.len()),
                ),
            })
        });
        Ok(BankLayout {
            plans,
            slots,
            queries: layout.add::<f32>(max_query),
            queries16: layout.add::<u16>(fast * max_query),
            query_norms: layout.add::<f32>(fast * max_nq),
            part_dist: layout.add::<f32>(max_part),
            part_index: layout.add::<i32>(max_part),
            out_dist: layout.add::<f32>(max_nq),
            out_index: layout.add::<i32>(max_nq),
            margins: layout.add::<f32>(fast * max_nq),
            scanned: layout.add::<i32>(fast * max_nq),
            max_query,
            max_nq,
            fast,
            layout,
        })
    }
}

impl DeviceBankSearch {
    /// The name of the search's region in the engine's arena.
    pub const ARENA_REGION: &'static str = "bank search";

    /// The device memory the search of `set` needs on `dev`, per arena region (nothing is
    /// allocated: the engine plans its arena from it).
    pub fn arena_needs(
        dev: &Device,
        set: &BankSet<'_>,
        precision: Precision,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        Ok(vec![(
            Self::ARENA_REGION,
            BankLayout::plan(dev, set, precision)?.layout,
        )])
    }

    /// Opens device `ordinal`, uploads every bank of `set` and records the searches:
    /// exact f32 for [`Precision::F32`]; for [`Precision::Bf16`] the fast path (f16 tensor
    /// cores, then every candidate within the proven bound re-scored in f32: the same
    /// result). Errors (no driver, no
    /// device, a bank width the kernels do not support, too little device memory, a
    /// failed self-check) name the problem; the engine then runs on the CPU.
    pub fn new(
        ordinal: usize,
        set: &BankSet<'_>,
        pool: &Pool,
        precision: Precision,
    ) -> Result<Self> {
        Self::on_device(Arc::new(Device::new(ordinal)?), set, pool, precision)
    }

    /// The search on the engine's device (shared with its other device stages).
    pub fn on_device(
        dev: Arc<Device>,
        set: &BankSet<'_>,
        pool: &Pool,
        precision: Precision,
    ) -> Result<Self> {
        let search = BankSearch::new(&dev)?;
        let BankLayout {
            plans,
            slots,
            queries,
            queries16,
            query_norms,
            part_dist,
            part_index,
            out_dist,
            out_index,
            margins,
            scanned,
            max_query,
            max_nq,
            fast,
            layout,
        } = BankLayout::plan(&dev, set, precision)?;
        let arena = dev.stage_arena(Self::ARENA_REGION, &layout)?;
        for (s, view) in slots.iter().zip(&set.banks) {
            if let (Some(s), Some(view)) = (s, view) {
                arena.upload(&dev, s.rows, view.data)?;
                if let Some(table) = view.neighbours {
                    arena.upload(&dev, s.neighbours, table)?;
                }
                if fast == 1 {
                    arena.upload(&dev, s.norms, view.sq_norms)?;
                    // SAFETY: both slots hold the bank's rows × dim values.
                    unsafe {
                        search.to_f16(
                            &dev,
                            arena.ptr(s.rows),
                            arena.ptr(s.rows16),
                            view.data.len(),
                        )?
                    };
                }
            }
        }
        dev.synchronize()?;
        let host_queries = Pinned::<f32>::new(&dev, max_query)?;
        let mut host_dist = Pinned::<f32>::new(&dev, max_nq)?;
        let mut host_index = Pinned::<i32>::new(&dev, max_nq)?;
        let mut host_scanned = Pinned::<i32>::new(&dev, max_nq)?;
        let parts = Partials {
            dist: arena.ptr(part_dist),
            index: arena.ptr(part_index),
        };
        let bufs = SearchBufs {
            rows: std::array::from_fn(|b| {
                slots[b]
                    .as_ref()
                    .map_or(DevPtr::null(), |s| arena.ptr(s.rows))
            }),
            rows16: std::array::from_fn(|b| {
                slots[b]
                    .as_ref()
                    .map_or(DevPtr::null(), |s| arena.ptr(s.rows16))
            }),
            norms: std::array::from_fn(|b| {
                slots[b]
                    .as_ref()
                    .map_or(DevPtr::null(), |s| arena.ptr(s.norms))
            }),
            neighbours: std::array::from_fn(|b| match (&slots[b], set.banks[b]) {
                (Some(s), Some(v)) if v.neighbours.is_some() => arena.ptr(s.neighbours),
                _ => DevPtr::null(),
            }),
            bank_sq: std::array::from_fn(|b| {
                set.banks[b].map_or(0.0, |v| fast_bank_sq(v.data, v.sq_norms))
            }),
            queries16: arena.ptr(queries16),
            query_norms: arena.ptr(query_norms),
            margins: arena.ptr(margins),
            scanned: arena.ptr(scanned),
            parts,
        };
        let mut banks: [Option<DeviceBank>; 3] = [None, None, None];
        for b in 0..3 {
            let Some(plan) = plans[b] else {
                continue;
            };
            let graph = Graph::capture(&dev, |dev| {
                host_queries.copy_to(dev, arena.ptr(queries), plan.query_len())?;
                let (q, out_d, out_i) = (
                    arena.ptr(queries),
                    arena.ptr(out_dist),
                    arena.ptr(out_index),
                );
                // SAFETY: every buffer was planned above for this plan's sizes.
                unsafe { record_bank(dev, &search, &plan, &bufs, b, q, out_d, out_i)? };
                if plan.path == SearchPath::F16 {
                    host_scanned.copy_from(dev, arena.ptr(scanned), plan.nq)?;
                }
                host_dist.copy_from(dev, arena.ptr(out_dist), plan.nq)?;
                host_index.copy_from(dev, arena.ptr(out_index), plan.nq)
            })?;
            banks[b] = Some(DeviceBank { plan, graph });
        }
        let mut search_on_device = DeviceBankSearch {
            banks,
            bufs,
            host_queries,
            host_dist,
            host_index,
            host_scanned,
            scans: ExactScans::default(),
            _arena: arena,
            search,
            device_name: format!("{} (sm_{})", dev.name, dev.sm()),
            dev,
        };
        for b in 0..3 {
            if let Some(view) = set.banks[b] {
                search_on_device.self_check(b, view, pool)?;
            }
        }
        search_on_device.scans = ExactScans::default();
        Ok(search_on_device)
    }

    /// Compares the device search with the CPU search on probe queries: bank rows plus
    /// noise of half the features' unit scale, so that distances are well above the
    /// rounding of either method. Distances must agree to 1e-4 relative on both paths
    /// (the fast path returns the f32 path's result; the CPU's GEMM form rounds
    /// differently, so a different nearest row is accepted only at a near-tie).
    fn self_check(&mut self, bank: usize, view: BankView<'_>, pool: &Pool) -> Result<()> {
        let Some(Some(d)) = self.banks.get(bank) else {
            return Ok(());
        };
        let (nq, dim) = (d.plan.nq, view.dim);
        let rel_tol = 1e-4;
        let mut rng = Rng::new(0x5e1f_c4ec + bank as u64);
        let mut probe = vec![0f32; nq * dim];
        for (j, q) in probe.chunks_exact_mut(dim).enumerate() {
            let row = view.row(j * 7919 % view.n);
            for (v, &r) in q.iter_mut().zip(row) {
                *v = r + 0.5 * rng.normal();
            }
        }
        let (mut cpu_d, mut cpu_i) = (vec![0f32; nq], vec![0u32; nq]);
        let mut scratch = vec![0f32; bank_search::nearest_scratch_len(pool.threads())];
        bank_search::nearest(
            pool,
            &probe,
            view,
            None,
            &mut cpu_d,
            &mut cpu_i,
            &mut scratch,
        );
        let (mut dev_d, mut dev_i) = (vec![0f32; nq], vec![0u32; nq]);
        self.nearest(bank, &probe, &mut dev_d, &mut dev_i)?;
        for j in 0..nq {
            let tol = rel_tol * cpu_d[j].abs().max(1.0);
            // Written so that a NaN fails.
            let agrees = (dev_d[j] - cpu_d[j]).abs() <= tol;
            if !agrees || dev_i[j] as usize >= view.n {
                return Err(Error::Device(DeviceError::SelfCheck(format!(
                    "self-check of the device bank search failed (bank {}, probe {j}): \
                     device distance {} to row {}, CPU {} to row {}",
                    BANK_NAMES[bank], dev_d[j], dev_i[j], cpu_d[j], cpu_i[j]
                ))));
            }
        }
        Ok(())
    }

    /// Counts of the fast path's exact split scans since creation (the self-check's
    /// probes not counted): how often the kept candidates did not suffice.
    pub fn exact_scans(&self) -> ExactScans {
        self.scans
    }

    /// The GPU's name and compute capability.
    pub fn device_name(&self) -> String {
        self.device_name.clone()
    }

    /// Patches searched in bank `bank` (its plan's queries), `None` for an absent bank.
    pub fn queries(&self, bank: usize) -> Option<usize> {
        self.banks.get(bank)?.as_ref().map(|d| d.plan.nq)
    }

    /// The device rows of bank `bank` (rows × dim, f32), `None` for an absent bank.
    pub fn rows(&self, bank: usize) -> Option<DevPtr<f32>> {
        self.banks.get(bank)?.as_ref().map(|_| self.bufs.rows[bank])
    }

    /// The device copy of bank `bank`'s neighbour table (rows × 2, the bank file's
    /// `bank.*_neighbours`), `None` for an absent bank or a file without the table (the
    /// re-weighting then scans the bank).
    pub fn neighbours(&self, bank: usize) -> Option<DevPtr<u32>> {
        self.banks.get(bank)?.as_ref()?;
        let t = self.bufs.neighbours[bank];
        (t.raw() != 0).then_some(t)
    }

    /// Enqueues the search of bank `bank` for the normalised patch features at `queries`
    /// (patches × dim) on `dev`'s current stream, for another stage's graph: the squared
    /// distance to the nearest row into `sq_dist`, that row into `index` (one per patch).
    /// No host copy, no graph of its own.
    ///
    /// # Safety
    /// `dev` is this search's device; `queries`, `sq_dist` and `index` valid for the
    /// bank's patches (see [`DeviceBankSearch::queries`]); the scratch of this search is
    /// shared by its banks, so their searches must run one after the other.
    pub unsafe fn record_search(
        &self,
        dev: &Device,
        bank: usize,
        queries: DevPtr<f32>,
        sq_dist: DevPtr<f32>,
        index: DevPtr<i32>,
    ) -> Result<()> {
        let Some(Some(d)) = self.banks.get(bank) else {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "no device bank {bank} (the bank file has no such bank)"
            ))));
        };
        record_bank(
            dev,
            &self.search,
            &d.plan,
            &self.bufs,
            bank,
            queries,
            sq_dist,
            index,
        )
    }
}

impl DeviceBankSearch {
    /// Enqueues, after [`DeviceBankSearch::record_search`] of bank `bank`, the copy of
    /// its per-query exact split scans into `host` (for [`ExactScans::add`] once the
    /// stream is waited for). Returns whether there was one to copy: only the fast path
    /// scans splits.
    pub fn record_scans_download(
        &self,
        dev: &Device,
        bank: usize,
        host: &mut Pinned<i32>,
    ) -> Result<bool> {
        match self.banks.get(bank) {
            Some(Some(d)) if d.plan.path == SearchPath::F16 => {
                host.copy_from(dev, self.bufs.scanned, d.plan.nq)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl NearestSearch for DeviceBankSearch {
    fn nearest(
        &mut self,
        bank: usize,
        x: &[f32],
        dist: &mut [f32],
        index: &mut [u32],
    ) -> Result<()> {
        let Some(Some(d)) = self.banks.get(bank) else {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "no device bank {bank} (the bank file has no such bank)"
            ))));
        };
        let (nq, len) = (d.plan.nq, d.plan.query_len());
        if x.len() != len || dist.len() < nq || index.len() < nq {
            return Err(Error::Device(DeviceError::BadCall(format!(
                "device bank search {}: {} feature values for a plan of {len}",
                BANK_NAMES[bank],
                x.len()
            ))));
        }
        self.host_queries.as_mut_slice()[..len].copy_from_slice(x);
        self.dev.bind()?;
        d.graph.replay(&self.dev)?;
        self.dev.synchronize()?;
        let (sq, rows) = (self.host_dist.as_slice(), self.host_index.as_slice());
        for j in 0..nq {
            // As the CPU search: the Euclidean distance of the clamped squared distance.
            dist[j] = sq[j].max(0.0).sqrt();
            index[j] = rows[j] as u32;
        }
        if d.plan.path == SearchPath::F16 {
            self.scans.add(&self.host_scanned.as_slice()[..nq]);
        }
        Ok(())
    }
}
