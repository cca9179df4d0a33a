//! The stages of `inspect` after the bank search, on the device (`kernels/maps.cu`):
//! per-bank PatchCore image score with re-weighting (SPEC §7), bilinear upsampling and
//! Gaussian blur of the three patch-distance grids, the pixel map and part decision of
//! the decision layer (SPEC §8, RADAR's per-case statistics of §9), and the defect regions
//! (8-connected components of the thresholded map, as [`crate::cpu::regions::find_regions`]).
//!
//! Same shape as [`super::point`]: a [`MapPlan`] (sizes from the bank configuration,
//! validated with clear errors), the arena slots it needs ([`MapSlots`]), and
//! [`MapKernels`] (module loaded and functions looked up once; `unsafe` launch methods
//! taking [`DevPtr`]s with typed argument lists: nothing is allocated on the hot path).
//!
//! CPU oracles: [`crate::cpu::bank_search::score_part`] (first maximum, `knn_scan`,
//! re-weighting in f64), [`crate::cpu::maps::upsample_bilinear`] and
//! [`crate::cpu::maps::gaussian_blur`], the decision policy of
//! [`crate::pipeline::decide::Decision`] (linear OCSVM, [`CaseDecision::score`], map
//! affine, thresholds, grey band; [`DecisionParams`] only lays it out for the kernels)
//! and [`crate::cpu::regions::find_regions`]. The kernels round every operation as the CPU does
//! (no fused multiply-adds), so grids, maps and scores are the CPU's bits, up to the f64
//! `exp` of the re-weighting and the f64 sum of a region's mean (summed in a fixed tree
//! here, in flood-fill order on the CPU): see tests/cuda/maps.rs for the tolerances.
//!
//! Regions: the root of each component is its first pixel in raster order (the CPU's
//! discovery order). Kept regions are the best [`MAX_REGIONS`] by (peak desc, first pixel
//! asc), in that order; the CPU sorts by peak only (`sort_unstable`), so only regions with
//! equal peaks may be listed in another order than the CPU lists them.

use bytemuck::{Pod, Zeroable};

use crate::config::BankConfig;
use crate::cpu::maps::{gaussian_radius, MAX_RADIUS};
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::kernel::{ArgKind, CType, DeviceElem, KernelArg};
use crate::cuda::device::module::Module;
use crate::cuda::device::{Device, Kernel};
use crate::kernel_args;
use crate::pipeline::decide::{CaseDecision, Decision};
use crate::types::{Case, InspectOptions, Region, MAX_REGIONS};
use crate::{Error, Result};

/// Threads per block of every kernel but the region selection.
pub const THREADS: u32 = 256;
/// Threads of the region selection's single block.
pub const SELECT_THREADS: u32 = 1024;
/// Bank rows per block of the k-nearest scan of the re-weighting.
pub const KNN_CHUNK: usize = 1024;
/// Largest Gaussian radius the kernels hold (`MAPS_MAX_RADIUS`).
pub const KERNEL_MAX_RADIUS: usize = 64;
/// Most regions the selection kernel keeps (`MAPS_MAX_REGIONS`).
pub const KERNEL_MAX_REGIONS: usize = 64;
/// Largest map side (labels are pixel indices, below `u32::MAX`).
pub const MAX_MAP_SIDE: usize = 8192;
/// Widest bank row: the k-nearest scan keeps one row in 48 KiB of shared memory.
pub const MAX_DIM: usize = 12 * 1024;

static_assertions::const_assert_eq!(MAX_RADIUS, KERNEL_MAX_RADIUS);
static_assertions::const_assert!(MAX_REGIONS <= KERNEL_MAX_REGIONS);

/// One bank's score as the kernels leave it (`BankScoreRec` in kernels/maps.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BankScoreRec {
    /// Re-weighted image score `w · s*` (0 for an absent bank).
    pub score: f32,
    pub s_star: f32,
    pub weight: f32,
    /// Patch `j*` (−1: absent bank).
    pub patch: i32,
    /// Its nearest bank row `m*` (−1: none).
    pub nearest: i32,
    /// Neighbours of `m*` found by the k-nearest scan (≤ 3).
    pub found: i32,
    /// 1 when the bank exists.
    pub present: i32,
    pub pad: i32,
}

/// The part decision (`PartDecisionRec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PartDecisionRec {
    pub score: f32,
    /// 0 pass, 1 fail, 2 uncertain ([`crate::types::Verdict`] as `u32`).
    pub verdict: i32,
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    /// Per bank re-weighted scores and the weighted score vector `a`.
    pub bank: [f32; 3],
    pub vector: [f32; 3],
}

/// One region (`RegionRec`), the layout of [`Region`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct RegionRec {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    pub area: u32,
    pub max: f32,
    pub mean: f32,
}

impl From<RegionRec> for Region {
    fn from(r: RegionRec) -> Region {
        Region {
            x0: r.x0,
            y0: r.y0,
            x1: r.x1,
            y1: r.y1,
            area: r.area,
            max: r.max,
            mean: r.mean,
        }
    }
}

/// Normalised Gaussian taps, passed to the blur kernels by value (`BlurWeights`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlurWeights {
    pub radius: i32,
    pub w: [f32; 2 * KERNEL_MAX_RADIUS + 1],
}

impl BlurWeights {
    /// The taps of `cpu::maps::gaussian_blur`, computed the same way (f64 `exp`, rounded to
    /// f32, then divided by the f64 sum and rounded again).
    pub fn new(sigma: f32) -> BlurWeights {
        let r = gaussian_radius(sigma, 4.0);
        let mut w = [0f32; 2 * KERNEL_MAX_RADIUS + 1];
        let mut sum = 0.0f64;
        for (t, k) in w[..2 * r + 1].iter_mut().enumerate() {
            let x = t as f64 - r as f64;
            let v = (-0.5 * x * x / (sigma as f64 * sigma as f64)).exp();
            *k = v as f32;
            sum += v;
        }
        for k in w[..2 * r + 1].iter_mut() {
            *k = (*k as f64 / sum) as f32;
        }
        BlurWeights {
            radius: r as i32,
            w,
        }
    }
    pub fn taps(&self) -> &[f32] {
        &self.w[..2 * self.radius as usize + 1]
    }
}

/// The pixel decision (`PixelParams`): `map = affine[0]·(c·m) + affine[1]`, regions above
/// `threshold`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct PixelParams {
    /// `pixel_w[b] · score_weights[b]`.
    pub c: [f32; 3],
    pub affine: [f32; 2],
    pub threshold: f32,
}

/// The part decision's inputs (`PartParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct PartParams {
    /// 0: linear part OCSVM `part_w · a`; 1: the case's Mahalanobis score.
    pub kind: i32,
    /// Bank zeroed with the fused one by [`crate::pipeline::decide::informative`] (kind 1).
    pub dropped: i32,
    pub weights: [f32; 3],
    pub part_w: [f32; 3],
    pub mean: [f32; 3],
    pub precision: [f32; 9],
    pub affine: [f32; 2],
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    /// 1: scores in `[band_lo, band_hi)` are uncertain.
    pub band: i32,
    pub band_lo: f32,
    pub band_hi: f32,
}

/// Both decision parameter blocks of one inspection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecisionParams {
    pub part: PartParams,
    pub pixel: PixelParams,
    /// As `Inspection::case_calibrated`.
    pub case_calibrated: bool,
}

impl DecisionParams {
    /// The kernels' layout of the decision [`Decision::resolve`] makes for a part of
    /// modality `case` (the policy itself lives there, once for every backend).
    pub fn new(
        cfg: &BankConfig,
        case: Case,
        cases: &[Option<CaseDecision>; 3],
        opts: &InspectOptions,
    ) -> DecisionParams {
        DecisionParams::from_decision(cfg, &Decision::resolve(cfg, case, cases, opts))
    }

    /// Lays a resolved decision out as the kernels' parameter blocks.
    pub fn from_decision(cfg: &BankConfig, d: &Decision) -> DecisionParams {
        let mut part = PartParams {
            kind: 0,
            dropped: d.dropped_bank as i32,
            weights: cfg.score_weights,
            part_w: d.part_w,
            mean: [0.0; 3],
            precision: [0.0; 9],
            affine: [1.0, 0.0],
            part_threshold: d.part_threshold,
            pixel_threshold: d.pixel_threshold,
            band: 0,
            band_lo: 0.0,
            band_hi: 0.0,
        };
        if let Some(stats) = &d.statistics {
            part.kind = 1;
            part.mean = stats.mean;
            part.precision = stats.precision;
            part.affine = stats.score_affine;
        }
        if let Some([lo, hi]) = d.grey_band {
            (part.band, part.band_lo, part.band_hi) = (1, lo, hi);
        }
        let pixel = PixelParams {
            c: d.pixel_c,
            affine: d.map_affine,
            threshold: d.pixel_threshold,
        };
        DecisionParams {
            part,
            pixel,
            case_calibrated: d.case_calibrated,
        }
    }
}

/// One bank's kernel arguments (`MapBank`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MapBankArg {
    dist: u64,
    nn: u64,
    x: u64,
    rows: u64,
    patches: i32,
    grid: i32,
    rows_n: i32,
    dim: i32,
    knn_splits: i32,
    knn_chunk: i32,
    neighbours: u64,
}

/// All three banks (`MapBanks`), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MapBanksArg {
    b: [MapBankArg; 3],
}

// The structs the kernels take by value or point to, by their names in kernels/maps.cu.
// SAFETY: each is `repr(C)` with the C struct's fields in order (sizes asserted below; the
// simulated device also compares every argument's size with the compiled kernel's).
unsafe impl KernelArg for MapBanksArg {
    const KIND: ArgKind = ArgKind::Value(CType::Struct("MapBanks"));
}
unsafe impl KernelArg for BlurWeights {
    const KIND: ArgKind = ArgKind::Value(CType::Struct("BlurWeights"));
}
unsafe impl KernelArg for PixelParams {
    const KIND: ArgKind = ArgKind::Value(CType::Struct("PixelParams"));
}
unsafe impl KernelArg for PartParams {
    const KIND: ArgKind = ArgKind::Value(CType::Struct("PartParams"));
}
unsafe impl DeviceElem for BankScoreRec {
    const C_TYPE: CType = CType::Struct("BankScoreRec");
}
unsafe impl DeviceElem for PartDecisionRec {
    const C_TYPE: CType = CType::Struct("PartDecisionRec");
}
unsafe impl DeviceElem for RegionRec {
    const C_TYPE: CType = CType::Struct("RegionRec");
}
unsafe impl DeviceElem for PixelParams {
    const C_TYPE: CType = CType::Struct("PixelParams");
}
unsafe impl DeviceElem for PartParams {
    const C_TYPE: CType = CType::Struct("PartParams");
}

static_assertions::const_assert_eq!(std::mem::size_of::<MapBankArg>(), 64);
static_assertions::const_assert_eq!(std::mem::size_of::<MapBanksArg>(), 192);
static_assertions::const_assert_eq!(std::mem::size_of::<BlurWeights>(), 520);
static_assertions::const_assert_eq!(std::mem::size_of::<PixelParams>(), 24);
static_assertions::const_assert_eq!(std::mem::size_of::<PartParams>(), 108);
static_assertions::const_assert_eq!(std::mem::size_of::<BankScoreRec>(), 32);
static_assertions::const_assert_eq!(std::mem::size_of::<PartDecisionRec>(), 40);
static_assertions::const_assert_eq!(std::mem::size_of::<RegionRec>(), 28);
static_assertions::const_assert_eq!(
    std::mem::size_of::<RegionRec>(),
    std::mem::size_of::<Region>()
);

/// The shape of one bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BankShape {
    /// Side of its patch grid.
    pub grid: usize,
    /// Bank rows.
    pub rows: usize,
    /// Feature width.
    pub dim: usize,
}

/// One bank's device inputs: the bank search's result (`dist`: distance, or squared
/// distance, to the nearest row per patch; `nn`: that row, −1 for none), the part's
/// normalised features `x` (patches × dim, the search's queries) and the bank rows
/// (rows × dim), and the bank file's neighbour table (rows × 2, the re-weighting's b_1, b_2
/// of every row; null: the k-nearest kernel scans the bank). All null for an absent bank.
#[derive(Clone, Copy, Debug)]
pub struct BankInput {
    pub dist: DevPtr<f32>,
    pub nn: DevPtr<i32>,
    pub x: DevPtr<f32>,
    pub rows: DevPtr<f32>,
    pub neighbours: DevPtr<u32>,
}

impl BankInput {
    pub fn absent() -> BankInput {
        BankInput {
            dist: DevPtr::null(),
            nn: DevPtr::null(),
            x: DevPtr::null(),
            rows: DevPtr::null(),
            neighbours: DevPtr::null(),
        }
    }
}

/// Sizes the map kernels are planned for.
#[derive(Clone, Debug)]
pub struct MapPlan {
    /// (xyz, rgb, fused); `None`: absent.
    pub banks: [Option<BankShape>; 3],
    /// Side `S` of the maps.
    pub map_size: usize,
    pub sigma: f32,
    pub blur: BlurWeights,
    /// Floats per bank in the grids slot (the largest patch count).
    pub stride: usize,
    pub max_dim: usize,
    /// Blocks of the k-nearest scan per bank (0: absent), and the largest.
    pub knn_splits: [usize; 3],
    pub max_splits: usize,
    /// Regions kept (≤ [`KERNEL_MAX_REGIONS`]).
    pub max_regions: usize,
}

impl MapPlan {
    /// The plan of a bank file's configuration (grids: xyz, rgb, and the xyz grid for the
    /// fused bank, as `BankSet`).
    pub fn new(cfg: &BankConfig) -> Result<MapPlan> {
        let rows = [cfg.xyz_rows, cfg.rgb_rows, cfg.fused_rows];
        let dims = [cfg.xyz_dim, cfg.rgb_dim, cfg.fused_dim];
        let grids = [cfg.xyz_grid, cfg.rgb_grid, cfg.xyz_grid];
        let banks = std::array::from_fn(|b| {
            (rows[b] > 0).then(|| BankShape {
                grid: grids[b] as usize,
                rows: rows[b] as usize,
                dim: dims[b] as usize,
            })
        });
        MapPlan::from_shapes(banks, cfg.map_size as usize, cfg.blur_sigma)
    }

    pub fn from_shapes(
        banks: [Option<BankShape>; 3],
        map_size: usize,
        sigma: f32,
    ) -> Result<MapPlan> {
        const NAMES: [&str; 3] = ["xyz", "rgb", "fused"];
        let bad = |m: String| Err(Error::Config(format!("CUDA maps: {m}")));
        if banks.iter().all(Option::is_none) {
            return bad("no memory bank".into());
        }
        if map_size == 0 || map_size > MAX_MAP_SIDE {
            return bad(format!("map side {map_size} outside 1..={MAX_MAP_SIDE}"));
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return bad(format!("blur sigma {sigma} is not a positive number"));
        }
        let mut stride = 1;
        let mut max_dim = 1;
        let mut knn_splits = [0; 3];
        for (b, shape) in banks.iter().enumerate() {
            let Some(BankShape { grid, rows, dim }) = *shape else {
                continue;
            };
            let name = NAMES[b];
            if grid == 0 || grid > MAX_MAP_SIDE {
                return bad(format!("bank {name}: patch grid side {grid}"));
            }
            if dim == 0 || dim > MAX_DIM {
                return bad(format!(
                    "bank {name}: feature width {dim} outside 1..={MAX_DIM}"
                ));
            }
            let too_big = rows
                .checked_mul(dim)
                .is_none_or(|n| n > isize::MAX as usize / 4);
            if rows == 0 || rows > i32::MAX as usize || too_big {
                return bad(format!("bank {name}: {rows} rows of {dim}"));
            }
            stride = stride.max(grid * grid);
            max_dim = max_dim.max(dim);
            knn_splits[b] = rows.div_ceil(KNN_CHUNK);
        }
        Ok(MapPlan {
            banks,
            map_size,
            sigma,
            blur: BlurWeights::new(sigma),
            stride,
            max_dim,
            knn_splits,
            max_splits: knn_splits.into_iter().max().unwrap_or(1).max(1),
            max_regions: MAX_REGIONS,
        })
    }

    /// Pixels of one map.
    pub fn pixels(&self) -> usize {
        self.map_size * self.map_size
    }
    /// Blocks of the per-pixel kernels (per bank where they cover three maps).
    pub fn pixel_blocks(&self) -> u32 {
        self.pixels().div_ceil(THREADS as usize) as u32
    }
    /// Bit b set when bank b exists.
    pub fn present_mask(&self) -> i32 {
        (0..3)
            .filter(|&b| self.banks[b].is_some())
            .map(|b| 1 << b)
            .sum()
    }
    /// Patch grid side of bank b (0: absent).
    pub fn grid(&self, b: usize) -> usize {
        self.banks[b].map_or(0, |s| s.grid)
    }
    /// Dynamic shared memory of the k-nearest scan (one bank row).
    pub fn knn_smem(&self) -> u32 {
        (self.max_dim * 4).next_multiple_of(16) as u32
    }
    /// Grid of the k-nearest scan: (splits, banks).
    pub fn knn_grid(&self) -> (u32, u32, u32) {
        (self.max_splits as u32, 3, 1)
    }

    /// Reserves the slots of [`MapSlots`] in `plan`.
    pub fn slots(&self, plan: &mut ArenaPlan) -> MapSlots {
        let s2 = self.pixels();
        MapSlots {
            grids: plan.add(3 * self.stride),
            scores: plan.add(3),
            knn: plan.add(3 * self.max_splits * 3),
            bank_maps: plan.add(3 * s2),
            tmp: plan.add(3 * s2),
            map: plan.add(s2),
            labels: plan.add(s2),
            peak: plan.add(s2),
            sel: plan.add(self.max_regions),
            count: plan.add(2),
            regions: plan.add(self.max_regions),
            decision: plan.add(1),
        }
    }

    fn banks_arg(&self, inputs: &[BankInput; 3]) -> MapBanksArg {
        let mut a = MapBanksArg::default();
        for (b, arg) in a.b.iter_mut().enumerate() {
            if let Some(BankShape { grid, rows, dim }) = self.banks[b] {
                let i = &inputs[b];
                *arg = MapBankArg {
                    dist: i.dist.raw(),
                    nn: i.nn.raw(),
                    x: i.x.raw(),
                    rows: i.rows.raw(),
                    patches: (grid * grid) as i32,
                    grid: grid as i32,
                    rows_n: rows as i32,
                    dim: dim as i32,
                    knn_splits: self.knn_splits[b] as i32,
                    knn_chunk: KNN_CHUNK as i32,
                    neighbours: i.neighbours.raw(),
                };
            }
        }
        a
    }
}

/// The arena slots of the map stages (all written by the kernels; see [`MapPlan::slots`]).
#[derive(Clone, Copy, Debug)]
pub struct MapSlots {
    /// 3 × stride: Euclidean patch-distance grids (bank b at b·stride).
    pub grids: Slot<f32>,
    /// 3 bank scores.
    pub scores: Slot<BankScoreRec>,
    /// 3 × max_splits × 3: top-3 keys of the k-nearest scan.
    pub knn: Slot<u64>,
    /// 3 × S²: per-bank anomaly maps.
    pub bank_maps: Slot<f32>,
    /// 3 × S²: the blur's intermediate.
    pub tmp: Slot<f32>,
    /// S²: the final pixel map.
    pub map: Slot<f32>,
    /// S²: component labels (root pixel index, `u32::MAX` outside the mask).
    pub labels: Slot<u32>,
    /// S²: per root, the order-preserving bits of the component's peak.
    pub peak: Slot<u32>,
    /// max_regions: kept roots in output order.
    pub sel: Slot<u32>,
    /// [found, kept].
    pub count: Slot<u32>,
    pub regions: Slot<RegionRec>,
    pub decision: Slot<PartDecisionRec>,
}

impl MapSlots {
    pub fn ptrs(&self, arena: &Arena) -> MapBuffers {
        MapBuffers {
            grids: arena.ptr(self.grids),
            scores: arena.ptr(self.scores),
            knn: arena.ptr(self.knn),
            bank_maps: arena.ptr(self.bank_maps),
            tmp: arena.ptr(self.tmp),
            map: arena.ptr(self.map),
            labels: arena.ptr(self.labels),
            peak: arena.ptr(self.peak),
            sel: arena.ptr(self.sel),
            count: arena.ptr(self.count),
            regions: arena.ptr(self.regions),
            decision: arena.ptr(self.decision),
        }
    }
}

/// Device pointers of [`MapSlots`].
#[derive(Clone, Copy, Debug)]
pub struct MapBuffers {
    pub grids: DevPtr<f32>,
    pub scores: DevPtr<BankScoreRec>,
    pub knn: DevPtr<u64>,
    pub bank_maps: DevPtr<f32>,
    pub tmp: DevPtr<f32>,
    pub map: DevPtr<f32>,
    pub labels: DevPtr<u32>,
    pub peak: DevPtr<u32>,
    pub sel: DevPtr<u32>,
    pub count: DevPtr<u32>,
    pub regions: DevPtr<RegionRec>,
    pub decision: DevPtr<PartDecisionRec>,
}

/// The map kernels of one engine.
pub struct MapKernels {
    _module: Module,
    pub bank_argmax: Kernel,
    pub bank_knn: Kernel,
    pub bank_finish: Kernel,
    pub upsample: Kernel,
    pub blur_h: Kernel,
    pub blur_v: Kernel,
    pub pixels: Kernel,
    pub part: Kernel,
    pub label_merge: Kernel,
    pub label_resolve: Kernel,
    pub regions_select: Kernel,
    pub regions_stats: Kernel,
    pub pseudo_select: Kernel,
    pub normalise: Kernel,
    pub pixels_case: Kernel,
    pub part_case: Kernel,
    pub label_merge_case: Kernel,
    pub case_of: Kernel,
    pub status_from_word: Kernel,
    pub plan: MapPlan,
}

/// The decision parameters of every modality case on the device (3 each, by [`Case`]),
/// and the part's status word (`[RGB usable, cloud usable]`, 2 × i32) that chooses one.
#[derive(Clone, Copy, Debug)]
pub struct CaseParams {
    pub status: DevPtr<i32>,
    pub part: DevPtr<PartParams>,
    pub pixel: DevPtr<PixelParams>,
}

// The function handles belong to the module held here; the engine uses them from one
// thread at a time (as `Device`).
unsafe impl Send for MapKernels {}

impl MapKernels {
    pub fn new(dev: &Device, plan: MapPlan) -> Result<MapKernels> {
        let m = Module::load(dev, "maps")?;
        let k = MapKernels {
            bank_argmax: Kernel::find(&m, "maps_bank_argmax")?,
            bank_knn: Kernel::find(&m, "maps_bank_knn")?,
            bank_finish: Kernel::find(&m, "maps_bank_finish")?,
            upsample: Kernel::find(&m, "maps_upsample")?,
            blur_h: Kernel::find(&m, "maps_blur_h")?,
            blur_v: Kernel::find(&m, "maps_blur_v")?,
            pixels: Kernel::find(&m, "maps_pixels")?,
            part: Kernel::find(&m, "maps_part")?,
            label_merge: Kernel::find(&m, "maps_label_merge")?,
            label_resolve: Kernel::find(&m, "maps_label_resolve")?,
            regions_select: Kernel::find(&m, "maps_regions_select")?,
            regions_stats: Kernel::find(&m, "maps_regions_stats")?,
            pseudo_select: Kernel::find(&m, "maps_pseudo_select")?,
            normalise: Kernel::find(&m, "maps_normalise")?,
            pixels_case: Kernel::find(&m, "maps_pixels_case")?,
            part_case: Kernel::find(&m, "maps_part_case")?,
            label_merge_case: Kernel::find(&m, "maps_label_merge_case")?,
            case_of: Kernel::find(&m, "maps_case_of")?,
            status_from_word: Kernel::find(&m, "maps_status_from_word")?,
            _module: m,
            plan,
        };
        dev.set_max_dynamic_smem(k.bank_knn, k.plan.knn_smem())?;
        Ok(k)
    }

    /// Per-bank image scores: grids (Euclidean distances; `squared`: the inputs are
    /// squared distances, `sqrt(max(d², 0))` is taken), `j*`, `s*`, `m*`, then the
    /// re-weighting. Writes `grids` (3 × stride) and `scores` (3); `knn` is scratch.
    ///
    /// # Safety
    /// Each present bank's inputs valid for the plan's sizes (see [`BankInput`]); the
    /// buffers valid for [`MapSlots`]' sizes.
    pub unsafe fn bank_scores(
        &self,
        dev: &Device,
        inputs: &[BankInput; 3],
        squared: bool,
        grids: DevPtr<f32>,
        scores: DevPtr<BankScoreRec>,
        knn: DevPtr<u64>,
    ) -> Result<()> {
        let banks = self.plan.banks_arg(inputs);
        let sq = squared as i32;
        let stride = self.plan.stride as i32;
        let max_splits = self.plan.max_splits as i32;
        let mut a = kernel_args![banks, sq, stride, grids, scores,];
        dev.launch(self.bank_argmax, (3, 1, 1), (THREADS, 1, 1), 0, &mut a)?;
        let mut a = kernel_args![banks, max_splits, scores, knn];
        dev.launch(
            self.bank_knn,
            self.plan.knn_grid(),
            (THREADS, 1, 1),
            self.plan.knn_smem(),
            &mut a,
        )?;
        let mut a = kernel_args![banks, max_splits, knn, scores];
        dev.launch(self.bank_finish, (3, 1, 1), (THREADS, 1, 1), 0, &mut a)
    }

    /// Bilinear upsampling of the three grids (`grids`, 3 × stride) to `maps` (3 × S²);
    /// absent banks give zeros.
    ///
    /// # Safety
    /// Buffers valid for those sizes.
    pub unsafe fn upsample(
        &self,
        dev: &Device,
        grids: DevPtr<f32>,
        maps: DevPtr<f32>,
    ) -> Result<()> {
        let g = [0, 1, 2].map(|b| self.plan.grid(b) as i32);
        let s = self.plan.map_size as i32;
        let stride = self.plan.stride as i32;
        let mut a = kernel_args![g[0], g[1], g[2], s, grids, stride, maps,];
        let grid = (self.plan.pixel_blocks(), 3, 1);
        dev.launch(self.upsample, grid, (THREADS, 1, 1), 0, &mut a)
    }

    /// In-place Gaussian blur of the three maps (`maps`, 3 × S²) through `tmp` (3 × S²);
    /// absent banks give zeros.
    ///
    /// # Safety
    /// Buffers valid for those sizes, not overlapping.
    pub unsafe fn blur(&self, dev: &Device, maps: DevPtr<f32>, tmp: DevPtr<f32>) -> Result<()> {
        let present = self.plan.present_mask();
        let s = self.plan.map_size as i32;
        let w = &self.plan.blur;
        let grid = (self.plan.pixel_blocks(), 3, 1);
        let mut a = kernel_args![present, s, *w, maps, tmp];
        dev.launch(self.blur_h, grid, (THREADS, 1, 1), 0, &mut a)?;
        let mut a = kernel_args![present, s, *w, tmp, maps];
        dev.launch(self.blur_v, grid, (THREADS, 1, 1), 0, &mut a)
    }

    /// The part score and verdict from the three bank scores.
    ///
    /// # Safety
    /// `scores` holds 3 records written by [`MapKernels::bank_scores`].
    pub unsafe fn decide_part(
        &self,
        dev: &Device,
        params: &PartParams,
        scores: DevPtr<BankScoreRec>,
        out: DevPtr<PartDecisionRec>,
    ) -> Result<()> {
        let mut a = kernel_args![*params, scores, out];
        dev.launch(self.part, (1, 1, 1), (32, 1, 1), 0, &mut a)
    }

    /// The pixel map (S²) from the bank maps (3 × S²); with `labels` = (labels, peak),
    /// also the labels' initialisation for [`MapKernels::regions`].
    ///
    /// # Safety
    /// Buffers valid for those sizes.
    pub unsafe fn pixel_map(
        &self,
        dev: &Device,
        params: &PixelParams,
        bank_maps: DevPtr<f32>,
        map: DevPtr<f32>,
        labels: Option<(DevPtr<u32>, DevPtr<u32>)>,
    ) -> Result<()> {
        let s2 = self.plan.pixels() as i32;
        let (l, p) = labels.unwrap_or((DevPtr::null(), DevPtr::null()));
        let mut a = kernel_args![*params, s2, bank_maps, map, l, p,];
        dev.launch(
            self.pixels,
            (self.plan.pixel_blocks(), 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// Connected components of the labels initialised by [`MapKernels::pixel_map`] (with
    /// the same `threshold`): union-find, roots, peaks, selection and statistics. Writes
    /// `labels`, `peak`, `sel`, `count` ([found, kept]) and `regions` (all `max_regions`
    /// records; zeros past `kept`).
    ///
    /// # Safety
    /// Buffers valid for [`MapSlots`]' sizes; `labels`/`peak` initialised by `pixel_map`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn regions(
        &self,
        dev: &Device,
        threshold: f32,
        map: DevPtr<f32>,
        labels: DevPtr<u32>,
        peak: DevPtr<u32>,
        sel: DevPtr<u32>,
        count: DevPtr<u32>,
        regions: DevPtr<RegionRec>,
    ) -> Result<()> {
        let s = self.plan.map_size as i32;
        let blocks = (self.plan.pixel_blocks(), 1, 1);
        let mut a = kernel_args![s, threshold, labels];
        dev.launch(self.label_merge, blocks, (THREADS, 1, 1), 0, &mut a)?;
        self.regions_after_merge(dev, map, labels, peak, sel, count, regions)
    }

    /// [`MapKernels::regions`] after the union-find's merge: roots, peaks, selection and
    /// statistics.
    ///
    /// # Safety
    /// As [`MapKernels::regions`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn regions_after_merge(
        &self,
        dev: &Device,
        map: DevPtr<f32>,
        labels: DevPtr<u32>,
        peak: DevPtr<u32>,
        sel: DevPtr<u32>,
        count: DevPtr<u32>,
        regions: DevPtr<RegionRec>,
    ) -> Result<()> {
        let s = self.plan.map_size as i32;
        let s2 = self.plan.pixels() as i32;
        let limit = self.plan.max_regions as i32;
        let blocks = (self.plan.pixel_blocks(), 1, 1);
        let mut a = kernel_args![s, map, labels, peak];
        dev.launch(self.label_resolve, blocks, (THREADS, 1, 1), 0, &mut a)?;
        let mut a = kernel_args![s2, limit, labels, peak, sel, count,];
        dev.launch(
            self.regions_select,
            (1, 1, 1),
            (SELECT_THREADS, 1, 1),
            0,
            &mut a,
        )?;
        let mut a = kernel_args![s, map, labels, sel, count, regions,];
        dev.launch(
            self.regions_stats,
            (self.plan.max_regions as u32, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// Replaces the `n` features at `features` by the pseudo input's (`pseudo`) when the
    /// part cannot use `modality` (0: RGB, 1: cloud; read from the status word).
    ///
    /// # Safety
    /// `status` holds 2 values; `pseudo` and `features` `n` each.
    pub unsafe fn pseudo_select(
        &self,
        dev: &Device,
        status: DevPtr<i32>,
        modality: i32,
        n: usize,
        pseudo: DevPtr<f32>,
        features: DevPtr<f32>,
    ) -> Result<()> {
        let n32 = n as i32;
        let mut a = kernel_args![status, modality, n32, pseudo, features];
        let blocks = n.div_ceil(THREADS as usize) as u32;
        dev.launch(
            self.pseudo_select,
            (blocks, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// Writes the part's modality case (0 complete, 1 RGB only, 2 cloud only, as
    /// [`Case`]) from its status word (2 values) into `out`.
    ///
    /// # Safety
    /// `status` holds 2 values, `out` 1.
    pub unsafe fn case_of(
        &self,
        dev: &Device,
        status: DevPtr<i32>,
        out: DevPtr<i32>,
    ) -> Result<()> {
        let mut a = kernel_args![status, out];
        dev.launch(self.case_of, (1, 1, 1), (32, 1, 1), 0, &mut a)
    }

    /// The status pair (`[RGB usable, cloud usable]`) from the device preprocessing's
    /// status word, and for an unusable cloud a fixed valid cloud of `min_points` points
    /// and that count (see `maps_status_from_word`).
    ///
    /// # Safety
    /// `word` holds 1 value, `status` 2, `count` 1, `points` 3 × `min_points`.
    pub unsafe fn status_from_word(
        &self,
        dev: &Device,
        word: DevPtr<u32>,
        min_points: usize,
        status: DevPtr<i32>,
        count: DevPtr<i32>,
        points: DevPtr<f32>,
    ) -> Result<()> {
        let n = min_points as i32;
        let mut a = kernel_args![word, n, status, count, points];
        let blocks = min_points.max(1).div_ceil(THREADS as usize) as u32;
        dev.launch(
            self.status_from_word,
            (blocks, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut a,
        )
    }

    /// `out = (input − mean)·inv` over `n` values (a bank's feature normalisation).
    ///
    /// # Safety
    /// `input` and `out` hold `n` values each.
    pub unsafe fn normalise(
        &self,
        dev: &Device,
        n: usize,
        mean: f32,
        inv: f32,
        input: DevPtr<f32>,
        out: DevPtr<f32>,
    ) -> Result<()> {
        let n32 = n as i32;
        let mut a = kernel_args![n32, mean, inv, input, out];
        let blocks = n.div_ceil(THREADS as usize) as u32;
        dev.launch(self.normalise, (blocks, 1, 1), (THREADS, 1, 1), 0, &mut a)
    }

    /// [`MapKernels::post_search`] with the decision parameters of the part's case chosen
    /// on the device from `cases` by its status word, and the pixel map and the regions
    /// always made (so that one recording serves every part, whatever it asks for).
    ///
    /// # Safety
    /// As [`MapKernels::post_search`]; `cases` as [`CaseParams`] says.
    pub unsafe fn post_search_case(
        &self,
        dev: &Device,
        inputs: &[BankInput; 3],
        squared: bool,
        cases: &CaseParams,
        b: &MapBuffers,
    ) -> Result<()> {
        self.bank_scores(dev, inputs, squared, b.grids, b.scores, b.knn)?;
        self.upsample(dev, b.grids, b.bank_maps)?;
        self.blur(dev, b.bank_maps, b.tmp)?;
        let CaseParams {
            status,
            part,
            pixel,
        } = *cases;
        let (scores, decision) = (b.scores, b.decision);
        let mut a = kernel_args![status, part, scores, decision];
        dev.launch(self.part_case, (1, 1, 1), (32, 1, 1), 0, &mut a)?;
        let s = self.plan.map_size as i32;
        let s2 = self.plan.pixels() as i32;
        let blocks = (self.plan.pixel_blocks(), 1, 1);
        let (bank_maps, map, labels, peak) = (b.bank_maps, b.map, b.labels, b.peak);
        let mut a = kernel_args![status, pixel, s2, bank_maps, map, labels, peak,];
        dev.launch(self.pixels_case, blocks, (THREADS, 1, 1), 0, &mut a)?;
        let mut a = kernel_args![status, pixel, s, labels];
        dev.launch(self.label_merge_case, blocks, (THREADS, 1, 1), 0, &mut a)?;
        self.regions_after_merge(dev, b.map, b.labels, b.peak, b.sel, b.count, b.regions)
    }

    /// Everything after the bank search, in order: bank scores, anomaly maps, part
    /// decision, and (when `map` or `regions`) the pixel map, (when `regions`) the regions.
    ///
    /// # Safety
    /// As [`MapKernels::bank_scores`] and [`MapKernels::regions`].
    pub unsafe fn post_search(
        &self,
        dev: &Device,
        inputs: &[BankInput; 3],
        squared: bool,
        params: &DecisionParams,
        (map, regions): (bool, bool),
        b: &MapBuffers,
    ) -> Result<()> {
        self.bank_scores(dev, inputs, squared, b.grids, b.scores, b.knn)?;
        self.upsample(dev, b.grids, b.bank_maps)?;
        self.blur(dev, b.bank_maps, b.tmp)?;
        self.decide_part(dev, &params.part, b.scores, b.decision)?;
        if map || regions {
            let labels = regions.then_some((b.labels, b.peak));
            self.pixel_map(dev, &params.pixel, b.bank_maps, b.map, labels)?;
        }
        if regions {
            self.regions(
                dev,
                params.pixel.threshold,
                b.map,
                b.labels,
                b.peak,
                b.sel,
                b.count,
                b.regions,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::maps::{gaussian_blur, map_scratch_len};

    fn m3dm(rows: [usize; 3]) -> [Option<BankShape>; 3] {
        let grid = [56, 28, 56];
        let dim = [1152, 768, 1920];
        std::array::from_fn(|b| {
            (rows[b] > 0).then_some(BankShape {
                grid: grid[b],
                rows: rows[b],
                dim: dim[b],
            })
        })
    }

    #[test]
    fn plan_sizes_and_geometry_at_m3dm_sizes() {
        let p = MapPlan::from_shapes(m3dm([20_000, 5_000, 31_361]), 224, 4.0).unwrap();
        assert_eq!(p.stride, 3136);
        assert_eq!(p.max_dim, 1920);
        assert_eq!(p.knn_splits, [20, 5, 31]);
        assert_eq!(p.max_splits, 31);
        assert_eq!(p.knn_grid(), (31, 3, 1));
        assert_eq!(p.knn_smem(), 1920 * 4);
        assert_eq!(p.pixels(), 50_176);
        assert_eq!(p.pixel_blocks(), 196);
        assert_eq!(p.present_mask(), 0b111);
        assert_eq!(p.blur.radius, 16);
        assert_eq!(p.max_regions, 64);
        let mut a = ArenaPlan::new();
        let s = p.slots(&mut a);
        assert_eq!(s.grids.len, 3 * 3136);
        assert_eq!(s.knn.len, 3 * 31 * 3);
        assert_eq!((s.bank_maps.len, s.tmp.len), (3 * 50_176, 3 * 50_176));
        assert_eq!(
            (s.map.len, s.labels.len, s.peak.len),
            (50_176, 50_176, 50_176)
        );
        assert_eq!((s.sel.len, s.regions.len, s.count.len), (64, 64, 2));
        assert_eq!((s.scores.len, s.decision.len), (3, 1));
        // Slots are disjoint and aligned, in order.
        let spans = [
            (s.grids.offset, s.grids.bytes()),
            (s.scores.offset, s.scores.bytes()),
            (s.knn.offset, s.knn.bytes()),
            (s.bank_maps.offset, s.bank_maps.bytes()),
            (s.tmp.offset, s.tmp.bytes()),
            (s.map.offset, s.map.bytes()),
            (s.labels.offset, s.labels.bytes()),
            (s.peak.offset, s.peak.bytes()),
            (s.sel.offset, s.sel.bytes()),
            (s.count.offset, s.count.bytes()),
            (s.regions.offset, s.regions.bytes()),
            (s.decision.offset, s.decision.bytes()),
        ];
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
            assert!(w[1].0.is_multiple_of(crate::cuda::device::arena::ALIGN));
        }
        assert!(a.bytes() >= spans[11].0 + spans[11].1);
    }

    #[test]
    fn absent_banks_and_small_maps() {
        let p = MapPlan::from_shapes(m3dm([0, 700, 0]), 37, 1.5).unwrap();
        assert_eq!(p.present_mask(), 0b010);
        assert_eq!((p.grid(0), p.grid(1), p.grid(2)), (0, 28, 0));
        assert_eq!(p.stride, 784);
        assert_eq!(p.knn_splits, [0, 1, 0]);
        assert_eq!(p.max_splits, 1);
        assert_eq!(p.pixel_blocks(), (37 * 37usize).div_ceil(256) as u32);
        assert_eq!(p.blur.radius, 6);
        let a = p.banks_arg(&[BankInput::absent(); 3]);
        assert_eq!(a.b[0].patches, 0);
        assert_eq!((a.b[1].patches, a.b[1].dim, a.b[1].rows_n), (784, 768, 700));
        assert_eq!((a.b[1].knn_splits, a.b[1].knn_chunk), (1, KNN_CHUNK as i32));
    }

    #[test]
    fn plan_refuses_bad_shapes_clearly() {
        let err = |banks, s, sigma| {
            MapPlan::from_shapes(banks, s, sigma)
                .unwrap_err()
                .to_string()
        };
        assert!(err(m3dm([0, 0, 0]), 224, 4.0).contains("no memory bank"));
        assert!(err(m3dm([10, 10, 10]), 0, 4.0).contains("map side"));
        assert!(err(m3dm([10, 10, 10]), MAX_MAP_SIDE + 1, 4.0).contains("map side"));
        assert!(err(m3dm([10, 10, 10]), 224, 0.0).contains("sigma"));
        assert!(err(m3dm([10, 10, 10]), 224, f32::NAN).contains("sigma"));
        let mut b = m3dm([10, 10, 10]);
        b[2] = Some(BankShape {
            grid: 56,
            rows: 10,
            dim: MAX_DIM + 1,
        });
        assert!(err(b, 224, 4.0).contains("bank fused: feature width"));
        b[2] = Some(BankShape {
            grid: 0,
            rows: 10,
            dim: 8,
        });
        assert!(err(b, 224, 4.0).contains("bank fused: patch grid"));
        b[2] = Some(BankShape {
            grid: 4,
            rows: i32::MAX as usize + 1,
            dim: 8,
        });
        assert!(err(b, 224, 4.0).contains("bank fused:"));
    }

    #[test]
    fn plan_from_a_bank_config() {
        let mut cfg = BankConfig::empty([0; 16], "m", "c");
        (cfg.xyz_rows, cfg.rgb_rows, cfg.fused_rows) = (3000, 900, 0);
        (cfg.xyz_dim, cfg.rgb_dim, cfg.fused_dim) = (64, 32, 96);
        (cfg.xyz_grid, cfg.rgb_grid) = (16, 8);
        cfg.map_size = 64;
        cfg.blur_sigma = 2.0;
        let p = MapPlan::new(&cfg).unwrap();
        assert_eq!(
            p.banks,
            [
                Some(BankShape {
                    grid: 16,
                    rows: 3000,
                    dim: 64
                }),
                Some(BankShape {
                    grid: 8,
                    rows: 900,
                    dim: 32
                }),
                None
            ]
        );
        assert_eq!((p.stride, p.max_dim, p.knn_splits), (256, 64, [3, 1, 0]));
    }

    /// The taps are the CPU blur's: blurring a delta on the CPU gives exactly the f32
    /// products of two taps.
    #[test]
    fn blur_taps_are_the_cpu_taps() {
        for sigma in [4.0f32, 1.3, 0.4, 16.0] {
            let w = BlurWeights::new(sigma);
            let r = w.radius as usize;
            let s = 2 * r + 3;
            let c = r + 1;
            let mut map = vec![0f32; s * s];
            map[c * s + c] = 1.0;
            let mut scratch = vec![0f32; map_scratch_len(s)];
            gaussian_blur(&mut map, s, sigma, &mut scratch);
            for y in 1..s - 1 {
                for x in 1..s - 1 {
                    let want = w.w[c + r - y] * w.w[c + r - x];
                    assert_eq!(map[y * s + x], want, "sigma {sigma} at ({y}, {x})");
                }
            }
            let sum: f64 = w.taps().iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn decision_params_lay_out_the_resolved_decision() {
        // The policy itself is tested in `pipeline::decide`; here: every field of the
        // kernels' blocks comes from the `Decision` (or the configuration's weights).
        let mut cfg = BankConfig::empty([0; 16], "m", "c");
        cfg.score_weights = [1.0, 0.1, 1.0];
        cfg.part_svm.w = [0.5, 2.0, 0.25];
        cfg.thresholds.grey_band = Some([1.0, 1.5]);
        let stats = CaseDecision {
            mean: [1.0, 2.0, 3.0],
            precision: [2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            threshold: 7.0,
            pixel_w: [0.0, 4.0, 0.0],
            pixel_threshold: 0.9,
            score_affine: [2.0, 1.0],
            map_affine: [3.0, -1.0],
        };
        let cases = [None, Some(stats), None];
        for case in Case::ALL {
            let d = Decision::resolve(&cfg, case, &cases, &InspectOptions::default());
            let p = DecisionParams::from_decision(&cfg, &d);
            assert_eq!(
                p,
                DecisionParams::new(&cfg, case, &cases, &InspectOptions::default())
            );
            assert_eq!(p.part.kind, d.statistics.is_some() as i32);
            assert_eq!(p.part.dropped, d.dropped_bank as i32);
            assert_eq!(
                (p.part.weights, p.part.part_w),
                (cfg.score_weights, d.part_w)
            );
            assert_eq!(p.part.part_threshold, d.part_threshold);
            assert_eq!(
                (p.part.pixel_threshold, p.pixel.threshold),
                (d.pixel_threshold, d.pixel_threshold)
            );
            assert_eq!((p.part.band, p.part.band_lo, p.part.band_hi), (1, 1.0, 1.5));
            assert_eq!((p.pixel.c, p.pixel.affine), (d.pixel_c, d.map_affine));
            assert_eq!(p.case_calibrated, d.case_calibrated);
            if let Some(st) = d.statistics {
                assert_eq!(
                    (p.part.mean, p.part.precision, p.part.affine),
                    (st.mean, st.precision, st.score_affine)
                );
            }
        }
    }
}
