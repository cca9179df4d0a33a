//! The CUDA path of `Engine::inspect`: the device work of one part recorded once, at
//! engine creation, into CUDA graphs that every part replays.
//!
//! ```text
//! inputs:    pinned status word, RGB network input, points, count, pixel map →
//! networks:  ┬ ViT (engine stream) ───────────────────────────────┬→ pseudo-feature
//!            └ FPS · kNN · Point-MAE · alignment (side stream) ────┘  selection
//! fusion:    UFF on the device (DeviceFusion)
//! decision:  pinned decision parameters of every case → per bank: normalisation,
//!            nearest-row search → bank scores, maps, blur, the case's decision (chosen
//!            on the device), pixel map, regions → decision record, map, regions into
//!            pinned memory
//! ```
//!
//! With the device fusion ([`super::fusion::FusionGraph`], UFF and RADAR models whose
//! fusion the device runs) all of it is one graph: one launch and one host wait per part,
//! the caller's inputs preprocessed on the device when [`DevicePart::preprocesses`]; the
//! features stay on the device unless asked for ([`DevicePart::download_features`]).
//! Without it (a fusion the device cannot run) the CPU fuses between two graphs, inputs →
//! networks → features into pinned memory, then fused features → decision: two launches,
//! two waits.
//!
//! Nothing in a recording depends on the part: the point count and the pixel map are
//! read from device memory, an unusable modality's network runs on a fixed valid input
//! and its features are replaced on the device by the pseudo input's (chosen by the
//! status word), and the decision parameters of all three modality cases are copied in
//! per part, the kernels choosing the part's case from the status word. The pixel map and
//! the regions are always made. What changes per part without re-recording: the sizes of
//! the input copies (the part's bytes only, set in the instantiated graph before the
//! launch, [`Graph::set_copy_len`]). Time marks between the stages give each stage's
//! device time ([`DevicePart::stage_times`]); the fast bank search's exact-scan counts
//! come back with the results ([`DevicePart::exact_scans`]).
//!
//! The stages come in checked: the ViT, the point branch and the fusion by the
//! extractor's self-checks against the CPU, the bank search by its own
//! ([`DeviceBankSearch`]).

use std::sync::Arc;

use super::bank_search::{DeviceBankSearch, ExactScans};
use super::forward::DeviceVit;
use super::fusion::{DeviceFusion, FusionGraph};
use super::point_branch::DevicePointBranch;
use super::preprocess::{
    decode_status, DevicePreprocess, PreprocessStaging, PreprocessTargets, StagingCopies,
};
use super::vit::DeviceRgb;
use crate::config::BankConfig;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::graph::{CopyNode, Graph, Pinned, TimeMarks};
use crate::cuda::device::Device;
use crate::cuda::ops::maps::{
    BankInput, CaseParams, DecisionParams, MapBuffers, MapKernels, MapPlan, MapSlots,
    PartDecisionRec, PartParams, PixelParams, RegionRec,
};
use crate::pipeline::extract::NetworkOutputs;
use crate::pipeline::input::{CloudView, RgbView};
use crate::pipeline::preprocess::{ModalityStatus, PreprocessOutput};
use crate::pipeline::score::BankSet;
use crate::types::{FeatureLayout, BANK_NAMES, FUSED, RGB, XYZ};
use crate::{DeviceError, Error, Result};

fn bad_call(msg: String) -> Error {
    Error::Device(DeviceError::BadCall(format!("device part: {msg}")))
}

/// The time marks of the part's graphs ([`TimeMarks`]), in recording order: the stage
/// times of [`DevicePart::stage_times`] are the spans between them.
mod mark {
    /// Before the inputs' copies.
    pub const START: usize = 0;
    /// After the inputs' copies and the device preprocessing.
    pub const PREPROCESSED: usize = 1;
    /// Around the point branch (side stream) and the ViT (engine stream).
    pub const POINT_START: usize = 2;
    pub const POINT_END: usize = 3;
    pub const RGB_START: usize = 4;
    pub const RGB_END: usize = 5;
    /// After the join and the pseudo-feature selection.
    pub const NETWORKS: usize = 6;
    /// After the device fusion (two graphs: the decision graph's start).
    pub const FUSED: usize = 7;
    /// After the bank searches, maps, decision, regions and the results' copies.
    pub const DECIDED: usize = 8;
    pub const COUNT: usize = 9;
}

/// Device time of each stage of the last part, seconds (the spans between the graph's
/// time marks). The two networks run at the same time on a GPU, so the stages may sum
/// to more than the part's time there; on the simulated device, one in-order stream,
/// they do not.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceStageTimes {
    /// The inputs' copies, and the preprocessing when the device runs it.
    pub preprocess: f64,
    pub rgb: f64,
    pub point: f64,
    /// 0 when the CPU fuses (two graphs).
    pub fusion: f64,
    /// Bank searches, maps, decision and regions, with the results' copies.
    pub score: f64,
}

/// Feature sizes of one part (floats).
#[derive(Clone, Copy, Debug)]
struct Sizes {
    rgb: usize,
    xyz: usize,
    fused: usize,
    /// Side of the anomaly map.
    map_side: usize,
}

/// The arena slots of the part (besides the stages' own).
#[derive(Clone, Copy, Debug)]
struct PartSlots {
    status: Slot<i32>,
    part_params: Slot<PartParams>,
    pixel_params: Slot<PixelParams>,
    pseudo_rgb: Slot<f32>,
    pseudo_xyz: Slot<f32>,
    rgb: Slot<f32>,
    fused: Slot<f32>,
    /// Per bank: normalised features, squared nearest distances, nearest rows.
    queries: [Slot<f32>; 3],
    sq_dist: [Slot<f32>; 3],
    nearest: [Slot<i32>; 3],
    maps: MapSlots,
}

impl PartSlots {
    fn plan(sizes: &Sizes, map_plan: &MapPlan, arena: &mut ArenaPlan) -> PartSlots {
        let feats = [sizes.xyz, sizes.rgb, sizes.fused];
        let patches: [usize; 3] =
            std::array::from_fn(|b| map_plan.banks[b].map_or(0, |s| s.grid * s.grid));
        PartSlots {
            status: arena.add(2),
            part_params: arena.add(3),
            pixel_params: arena.add(3),
            pseudo_rgb: arena.add(sizes.rgb),
            pseudo_xyz: arena.add(sizes.xyz),
            rgb: arena.add(sizes.rgb),
            fused: arena.add(sizes.fused),
            queries: std::array::from_fn(|b| arena.add(feats[b])),
            sq_dist: std::array::from_fn(|b| arena.add(patches[b])),
            nearest: std::array::from_fn(|b| arena.add(patches[b])),
            maps: map_plan.slots(arena),
        }
    }
}

/// One part's inputs: preprocessed on the CPU, or as the caller gave them (the device
/// preprocesses them, [`DevicePart::preprocesses`]).
#[derive(Clone, Copy)]
pub enum PartInput<'a> {
    Preprocessed {
        pre: &'a PreprocessOutput,
        status: ModalityStatus,
    },
    Raw {
        rgb: Option<RgbView<'a>>,
        cloud: Option<CloudView<'a>>,
    },
}

/// Pinned host memory the recorded copies read (inputs) and write (results).
struct HostIo {
    /// The caller's inputs, for the device preprocessing.
    staging: Option<PreprocessStaging>,
    /// Its status word (RGB reason | cloud reason << 8).
    status_word: Pinned<u32>,
    status: Pinned<i32>,
    rgb_input: Pinned<f32>,
    points: Pinned<f32>,
    count: Pinned<i32>,
    pixel_map: Pinned<i32>,
    fused: Pinned<f32>,
    part_params: Pinned<PartParams>,
    pixel_params: Pinned<PixelParams>,
    rgb: Pinned<f32>,
    xyz: Pinned<f32>,
    centers: Pinned<u32>,
    groups: Pinned<u32>,
    decision: Pinned<PartDecisionRec>,
    map: Pinned<f32>,
    regions: Pinned<RegionRec>,
    /// [regions found, regions kept].
    region_count: Pinned<u32>,
    /// Per bank on the fast search path: the exact split scans of each query, and
    /// whether the graph copies them here.
    scanned: [Option<Pinned<i32>>; 3],
    scans_copied: [bool; 3],
}

/// The recorded input copies sized per part before the replay.
enum InputCopies {
    /// The caller's inputs, for the device preprocessing.
    Staged(StagingCopies),
    /// The CPU-preprocessed points (3 values each).
    Points(CopyNode),
}

/// What the decision leaves in pinned memory for the engine.
pub struct PartResults<'a> {
    /// Score, verdict of the kernels, thresholds, per-bank scores and score vector.
    pub decision: PartDecisionRec,
    /// The pixel map (map side²), made for every part.
    pub map: &'a [f32],
    /// The kept regions, best first.
    pub regions: &'a [RegionRec],
    /// Regions found in all.
    pub regions_found: usize,
}

/// The recorded work.
enum Graphs {
    /// Everything in one graph (device fusion); `features` only downloads the features.
    One { part: Graph, features: Graph },
    /// Inputs → networks → features; fused features → decision (fusion on the CPU).
    Two { networks: Graph, decision: Graph },
}

/// What the recordings use, borrowed while recording.
struct Recorder<'a> {
    preprocess: Option<&'a DevicePreprocess>,
    vit: &'a DeviceVit,
    point: &'a DevicePointBranch,
    fusion: Option<&'a DeviceFusion>,
    search: &'a DeviceBankSearch,
    maps: &'a MapKernels,
    set: &'a BankSet<'a>,
    arena: &'a Arena,
    marks: &'a TimeMarks,
    slots: PartSlots,
    sizes: Sizes,
}

impl Recorder<'_> {
    fn status(&self) -> DevPtr<i32> {
        self.arena.ptr(self.slots.status)
    }
    fn rgb(&self) -> DevPtr<f32> {
        self.arena.ptr(self.slots.rgb)
    }
    fn fused(&self) -> DevPtr<f32> {
        self.arena.ptr(self.slots.fused)
    }

    /// The part's inputs from pinned memory, the two networks on forked streams, the
    /// pseudo-feature selection. Returns the input copies to size per part.
    fn networks(&self, d: &Device, h: &mut HostIo) -> Result<InputCopies> {
        let (io, vit) = (self.point.io(), self.vit);
        let np = self.point.sizes().max_points();
        let marks = self.marks;
        marks.record(d, mark::START)?;
        let copies = match (self.preprocess, &h.staging) {
            (Some(pre), Some(staging)) => {
                let own = pre.targets();
                let targets = PreprocessTargets {
                    points: io.points,
                    count: io.count,
                    pixels: own.pixels,
                    pixel_map: io.pixel_map,
                    rgb_input: vit.input_ptr(),
                    status: own.status,
                };
                let copies = staging.record_upload(d, pre.inputs())?;
                let min = self.point.sizes().min_points();
                // SAFETY: the stage's own inputs and the consumers' buffers, sized for
                // its side (the point branch's and the ViT's, checked in `new`).
                unsafe {
                    pre.record(d, pre.inputs(), targets)?;
                    self.maps.status_from_word(
                        d,
                        own.status,
                        min,
                        self.status(),
                        io.count,
                        io.points,
                    )?;
                }
                h.status_word.copy_from(d, own.status, 1)?;
                InputCopies::Staged(copies)
            }
            _ => {
                h.status.copy_to(d, self.status(), 2)?;
                h.rgb_input.copy_to(d, vit.input_ptr(), h.rgb_input.len())?;
                // Only the part's points are read (the count says how many).
                let points = h.points.copy_to_resizable(d, io.points, 3 * np)?;
                h.count.copy_to(d, io.count, 1)?;
                h.pixel_map.copy_to(d, io.pixel_map, np)?;
                InputCopies::Points(points)
            }
        };
        marks.record(d, mark::PREPROCESSED)?;
        let (rgb, sz) = (self.rgb(), self.sizes);
        let pseudo = |s: Slot<f32>| self.arena.ptr(s);
        // SAFETY: every buffer is the stages' own or planned for these sizes.
        unsafe {
            d.fork_join(
                |d| {
                    marks.record(d, mark::POINT_START)?;
                    self.point.record_on_device(d)?;
                    marks.record(d, mark::POINT_END)
                },
                |d| {
                    marks.record(d, mark::RGB_START)?;
                    vit.record_input(d, vit.input_ptr(), rgb)?;
                    marks.record(d, mark::RGB_END)
                },
            )?;
            let st = self.status();
            self.maps
                .pseudo_select(d, st, 0, sz.rgb, pseudo(self.slots.pseudo_rgb), rgb)?;
            self.maps
                .pseudo_select(d, st, 1, sz.xyz, pseudo(self.slots.pseudo_xyz), io.xyz)?;
        }
        marks.record(d, mark::NETWORKS)?;
        Ok(copies)
    }

    /// The features into pinned memory (with the fused ones when `fused`).
    fn feature_downloads(&self, d: &Device, h: &mut HostIo, fused: bool) -> Result<()> {
        let io = self.point.io();
        h.rgb.copy_from(d, self.rgb(), self.sizes.rgb)?;
        h.xyz.copy_from(d, io.xyz, self.sizes.xyz)?;
        h.centers.copy_from(d, io.centers, h.centers.len())?;
        h.groups.copy_from(d, io.groups, h.groups.len())?;
        if fused {
            h.fused.copy_from(d, self.fused(), self.sizes.fused)?;
        }
        Ok(())
    }

    /// The device fusion of the part's features, its case first (RADAR's instruction).
    fn fusion(&self, d: &Device, fusion: &DeviceFusion) -> Result<()> {
        // SAFETY: the features and the fused buffer planned for these sizes.
        unsafe {
            self.maps.case_of(d, self.status(), fusion.case_ptr())?;
            fusion.record(d, self.point.io().xyz, self.rgb(), self.fused())?;
        }
        self.marks.record(d, mark::FUSED)
    }

    /// The decision parameters from pinned memory, the bank searches, the maps, the
    /// case's decision and the regions, the results into pinned memory.
    fn decision(&self, d: &Device, h: &mut HostIo) -> Result<()> {
        let (slots, arena) = (&self.slots, self.arena);
        let cases = CaseParams {
            status: self.status(),
            part: arena.ptr(slots.part_params),
            pixel: arena.ptr(slots.pixel_params),
        };
        h.part_params.copy_to(d, cases.part, 3)?;
        h.pixel_params.copy_to(d, cases.pixel, 3)?;
        let mut features = [DevPtr::null(); 3];
        (features[XYZ], features[RGB], features[FUSED]) =
            (self.point.io().xyz, self.rgb(), self.fused());
        let plan = &self.maps.plan;
        let mut inputs = [BankInput::absent(); 3];
        for b in 0..3 {
            let (Some(view), Some(rows), Some(shape)) =
                (self.set.banks[b], self.search.rows(b), plan.banks[b])
            else {
                continue;
            };
            let n = shape.grid * shape.grid * view.dim;
            let norm = self.set.norms[b];
            let (x, dist, nn) = (
                arena.ptr(slots.queries[b]),
                arena.ptr(slots.sq_dist[b]),
                arena.ptr(slots.nearest[b]),
            );
            // SAFETY: the features, queries and results planned for this bank.
            unsafe {
                self.maps
                    .normalise(d, n, norm.mean, 1.0 / norm.std, features[b], x)?;
                self.search.record_search(d, b, x, dist, nn)?;
            }
            // The fast path's exact-scan counts come back with the results.
            if let Some(host) = h.scanned[b].as_mut() {
                h.scans_copied[b] = self.search.record_scans_download(d, b, host)?;
            }
            // With the bank file's neighbour table the re-weighting looks m*'s
            // neighbours up; without it, it scans the bank (the same result).
            inputs[b] = BankInput {
                dist,
                nn,
                x,
                rows,
                neighbours: self.search.neighbours(b).unwrap_or(DevPtr::null()),
            };
        }
        let bufs: MapBuffers = slots.maps.ptrs(arena);
        // SAFETY: the inputs above; the map buffers planned for this plan.
        unsafe {
            self.maps
                .post_search_case(d, &inputs, true, &cases, &bufs)?
        };
        h.decision.copy_from(d, bufs.decision, 1)?;
        h.map.copy_from(d, bufs.map, h.map.len())?;
        h.regions.copy_from(d, bufs.regions, h.regions.len())?;
        h.region_count.copy_from(d, bufs.count, 2)?;
        self.marks.record(d, mark::DECIDED)
    }
}

/// The part's device work, recorded once (module doc).
pub struct DevicePart {
    // Field order is drop order: the graphs and pinned buffers first, then the kernels,
    // the arena and the stages, the device last.
    graphs: Graphs,
    host: HostIo,
    /// The input copies of the first graph, sized per part.
    inputs: InputCopies,
    marks: TimeMarks,
    /// The fast bank search's exact scans, counted since creation.
    scans: ExactScans,
    _maps: MapKernels,
    _arena: Arena,
    _fusion: Option<FusionGraph>,
    preprocess: Option<DevicePreprocess>,
    _rgb: DeviceRgb,
    point: DevicePointBranch,
    search: DeviceBankSearch,
    sizes: Sizes,
    slots: PartSlots,
    /// Width of each bank's rows (0: absent).
    set_dims: [usize; 3],
    dev: Arc<Device>,
}

// SAFETY: as the stages it owns: driver handles, device memory and pinned host memory,
// used by one thread at a time (`&mut self`), which makes the context current first.
unsafe impl Send for DevicePart {}

impl DevicePart {
    /// The name of the part's region in the engine's arena.
    pub const ARENA_REGION: &'static str = "part";

    fn sizes(layout: &FeatureLayout, cfg: &BankConfig) -> Sizes {
        Sizes {
            rgb: layout.rgb_grid * layout.rgb_grid * layout.rgb_dim,
            xyz: layout.xyz_grid * layout.xyz_grid * layout.xyz_dim,
            fused: layout.xyz_grid * layout.xyz_grid * layout.fused_dim,
            map_side: cfg.map_size as usize,
        }
    }

    /// The device memory of the part's own buffers (host only: the engine plans its arena
    /// from it).
    pub fn arena_needs(
        cfg: &BankConfig,
        layout: &FeatureLayout,
    ) -> Result<Vec<(&'static str, ArenaPlan)>> {
        let map_plan = MapPlan::new(cfg)?;
        let sizes = Self::sizes(layout, cfg);
        let mut plan = ArenaPlan::new();
        PartSlots::plan(&sizes, &map_plan, &mut plan);
        Ok(vec![(Self::ARENA_REGION, plan)])
    }

    /// Records the part from the engine's checked device stages (`fusion`: the device
    /// fusion, `None` when the CPU fuses). `pseudo` holds the pseudo inputs' features
    /// (RGB, xyz) the CPU computed at creation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Arc<Device>,
        rgb: DeviceRgb,
        point: DevicePointBranch,
        search: DeviceBankSearch,
        fusion: Option<FusionGraph>,
        preprocess: Option<DevicePreprocess>,
        cfg: &BankConfig,
        set: &BankSet<'_>,
        layout: &FeatureLayout,
        pseudo: (&[f32], &[f32]),
    ) -> Result<Self> {
        let sizes = Self::sizes(layout, cfg);
        let vit = rgb.vit();
        let (n_in, n_rgb) = (vit.plan().input_len(), vit.plan().features_len());
        let bs = point.sizes().clone();
        let fused_len = fusion.as_ref().map(|f| f.fusion().dims().fused_len());
        if n_rgb != sizes.rgb
            || bs.xyz_len() != sizes.xyz
            || pseudo.0.len() != sizes.rgb
            || pseudo.1.len() != sizes.xyz
            || fused_len.is_some_and(|n| n != sizes.fused)
        {
            return Err(bad_call(format!(
                "feature sizes differ: ViT {n_rgb}, point branch {}, fusion {fused_len:?}, \
                 pseudo {} and {}, model {}, {} and {}",
                bs.xyz_len(),
                pseudo.0.len(),
                pseudo.1.len(),
                sizes.rgb,
                sizes.xyz,
                sizes.fused
            )));
        }
        if let Some(pre) = &preprocess {
            let (side, min) = (pre.side(), pre.min_points());
            if side * side != bs.max_points() || 3 * side * side != n_in || min != bs.min_points() {
                return Err(bad_call(format!(
                    "the device preprocessing makes {side}² pixels and needs {min} points, \
                     the networks take {} points ({} at least) and {n_in} input values",
                    bs.max_points(),
                    bs.min_points()
                )));
            }
        }
        let map_plan = MapPlan::new(cfg)?;
        for (b, name) in BANK_NAMES.iter().enumerate() {
            let want = map_plan.banks[b].map(|s| s.grid * s.grid);
            if search.queries(b) != want {
                return Err(bad_call(format!(
                    "bank {name}: the search has {:?} patches, the maps {want:?}",
                    search.queries(b)
                )));
            }
        }
        let maps = MapKernels::new(&dev, map_plan.clone())?;
        let mut layout_plan = ArenaPlan::new();
        let slots = PartSlots::plan(&sizes, &map_plan, &mut layout_plan);
        let arena = dev.stage_arena(Self::ARENA_REGION, &layout_plan)?;
        dev.memset_u8(arena.ptr(slots.status).raw(), 0, arena.bytes())?;
        arena.upload(&dev, slots.pseudo_rgb, pseudo.0)?;
        arena.upload(&dev, slots.pseudo_xyz, pseudo.1)?;
        let np = bs.max_points();
        let s2 = sizes.map_side * sizes.map_side;
        let mut host = HostIo {
            staging: preprocess
                .as_ref()
                .map(PreprocessStaging::new)
                .transpose()?,
            status_word: Pinned::new(&dev, 1)?,
            status: Pinned::new(&dev, 2)?,
            rgb_input: Pinned::new(&dev, n_in)?,
            points: Pinned::new(&dev, 3 * np)?,
            count: Pinned::new(&dev, 1)?,
            pixel_map: Pinned::new(&dev, np)?,
            fused: Pinned::new(&dev, sizes.fused)?,
            part_params: Pinned::new(&dev, 3)?,
            pixel_params: Pinned::new(&dev, 3)?,
            rgb: Pinned::new(&dev, sizes.rgb)?,
            xyz: Pinned::new(&dev, sizes.xyz)?,
            centers: Pinned::new(&dev, bs.centers_len())?,
            groups: Pinned::new(&dev, bs.groups_len())?,
            decision: Pinned::new(&dev, 1)?,
            map: Pinned::new(&dev, s2)?,
            regions: Pinned::new(&dev, map_plan.max_regions)?,
            region_count: Pinned::new(&dev, 2)?,
            scanned: [None, None, None],
            scans_copied: [false; 3],
        };
        for (b, scanned) in host.scanned.iter_mut().enumerate() {
            if let Some(nq) = search.queries(b) {
                *scanned = Some(Pinned::new(&dev, nq)?);
            }
        }
        let marks = TimeMarks::new(&dev, mark::COUNT)?;
        let rec = Recorder {
            preprocess: preprocess.as_ref(),
            vit,
            point: &point,
            fusion: fusion.as_ref().map(FusionGraph::fusion),
            search: &search,
            maps: &maps,
            set,
            arena: &arena,
            marks: &marks,
            slots,
            sizes,
        };
        let mut inputs = None;
        let graphs = match rec.fusion {
            Some(f) => Graphs::One {
                part: Graph::capture(&dev, |d| {
                    inputs = Some(rec.networks(d, &mut host)?);
                    rec.fusion(d, f)?;
                    rec.decision(d, &mut host)
                })?,
                features: Graph::capture(&dev, |d| rec.feature_downloads(d, &mut host, true))?,
            },
            // Kept for a model whose fusion the device cannot run (the CPU fuses between
            // the two; see `fuses`): the engine's fallback, tested in tests/cuda/sim.
            None => Graphs::Two {
                networks: Graph::capture(&dev, |d| {
                    inputs = Some(rec.networks(d, &mut host)?);
                    rec.feature_downloads(d, &mut host, false)
                })?,
                decision: Graph::capture(&dev, |d| {
                    rec.marks.record(d, mark::FUSED)?;
                    host.fused.copy_to(d, rec.fused(), sizes.fused)?;
                    rec.decision(d, &mut host)
                })?,
            },
        };
        let inputs = inputs.ok_or_else(|| bad_call("the inputs were not recorded".into()))?;
        Ok(DevicePart {
            graphs,
            host,
            inputs,
            marks,
            scans: ExactScans::default(),
            _maps: maps,
            _arena: arena,
            _fusion: fusion,
            preprocess,
            _rgb: rgb,
            point,
            search,
            sizes,
            slots,
            set_dims: std::array::from_fn(|b| set.banks[b].map_or(0, |v| v.dim)),
            dev,
        })
    }

    /// The device's name and compute capability.
    pub fn device_name(&self) -> String {
        self.search.device_name()
    }

    /// Whether the fusion runs on the device (then the whole part is one graph:
    /// [`DevicePart::inspect`]); else the CPU fuses between [`DevicePart::features`] and
    /// [`DevicePart::decide`].
    pub fn fuses(&self) -> bool {
        matches!(self.graphs, Graphs::One { .. })
    }

    /// Side of the anomaly map.
    pub fn map_side(&self) -> usize {
        self.sizes.map_side
    }

    /// Whether the device preprocesses the parts (then [`PartInput::Raw`] is expected).
    pub fn preprocesses(&self) -> bool {
        self.preprocess.is_some()
    }

    /// Writes the inputs of one part into the pinned buffers.
    fn stage_inputs(&mut self, input: PartInput<'_>) -> Result<()> {
        match (input, &self.preprocess, &mut self.host.staging) {
            (PartInput::Raw { rgb, cloud }, Some(stage), Some(staging)) => {
                staging.fill(stage, rgb, cloud)?;
                Ok(())
            }
            (PartInput::Preprocessed { pre, status }, None, _) => {
                self.stage_preprocessed(pre, status)
            }
            _ => Err(bad_call(format!(
                "inputs {} for an engine whose preprocessing runs on the {}",
                match input {
                    PartInput::Raw { .. } => "as given",
                    PartInput::Preprocessed { .. } => "preprocessed",
                },
                if self.preprocesses() { "device" } else { "CPU" }
            ))),
        }
    }

    /// The part's status after its inputs ran: the device preprocessing's, or the one the
    /// CPU preprocessing gave.
    fn status_of(&self, input: PartInput<'_>) -> Result<ModalityStatus> {
        match input {
            PartInput::Preprocessed { status, .. } => Ok(status),
            PartInput::Raw { .. } => decode_status(self.host.status_word.as_slice()[0]),
        }
    }

    /// Writes the inputs of one part the CPU preprocessed into the pinned buffers.
    fn stage_preprocessed(&mut self, pre: &PreprocessOutput, status: ModalityStatus) -> Result<()> {
        let h = &mut self.host;
        h.status.as_mut_slice()[0] = status.rgb_usable() as i32;
        h.status.as_mut_slice()[1] = status.cloud_usable() as i32;
        if status.rgb_usable() {
            let n = h.rgb_input.len();
            if pre.rgb_input.len() != n {
                return Err(bad_call(format!(
                    "{} RGB input values for a ViT of {n}",
                    pre.rgb_input.len()
                )));
            }
            h.rgb_input.as_mut_slice().copy_from_slice(&pre.rgb_input);
        }
        let sizes = self.point.sizes();
        if status.cloud_usable() {
            let n = pre.n_points;
            let (lo, hi) = (sizes.min_points(), sizes.max_points());
            if !(lo..=hi).contains(&n) || pre.points.len() < 3 * n || pre.point_pixels.len() < n {
                return Err(Error::Input(format!(
                    "device part: {n} points (the branch takes {lo}..={hi})"
                )));
            }
            let points = &pre.points[..3 * n];
            if let Some(i) = points.iter().position(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "device part: point {} has a non-finite coordinate ({})",
                    i / 3,
                    points[i]
                )));
            }
            sizes.fill_pixel_map(&pre.point_pixels[..n], h.pixel_map.as_mut_slice())?;
            h.points.as_mut_slice()[..3 * n].copy_from_slice(points);
            h.count.as_mut_slice()[0] = n as i32;
        } else {
            // The branch runs on a fixed valid cloud; its features are replaced.
            let n = sizes.min_points();
            write_filler_cloud(n, h.points.as_mut_slice(), h.pixel_map.as_mut_slice());
            h.count.as_mut_slice()[0] = n as i32;
        }
        Ok(())
    }

    /// Writes the decision parameters of every modality case (`params[case]`, see
    /// [`DecisionParams`]) into the pinned buffers.
    fn stage_params(&mut self, params: &[DecisionParams; 3]) {
        for (c, p) in params.iter().enumerate() {
            self.host.part_params.as_mut_slice()[c] = p.part;
            self.host.pixel_params.as_mut_slice()[c] = p.pixel;
        }
    }

    /// The whole part in one graph (when [`DevicePart::fuses`]): one launch, one wait.
    /// The features stay on the device ([`DevicePart::download_features`]). Returns the
    /// part's status ([`DevicePart::results`] holds the rest). No allocation.
    pub fn inspect(
        &mut self,
        input: PartInput<'_>,
        params: &[DecisionParams; 3],
    ) -> Result<ModalityStatus> {
        if !self.fuses() {
            return Err(bad_call(
                "one-graph inspection without the device fusion".into(),
            ));
        }
        self.stage_inputs(input)?;
        self.stage_params(params);
        self.replay(Which::Part)?;
        self.count_scans();
        self.status_of(input)
    }

    /// The networks of one preprocessed part (the first of two graphs, when the CPU
    /// fuses): writes `out` (the pseudo inputs' features for an unusable modality). No
    /// allocation.
    pub fn features(
        &mut self,
        input: PartInput<'_>,
        out: NetworkOutputs<'_>,
    ) -> Result<ModalityStatus> {
        self.stage_inputs(input)?;
        self.replay(Which::Networks)?;
        self.copy_features(out, None)?;
        self.status_of(input)
    }

    /// Scores and decides the part whose features the last [`DevicePart::features`]
    /// left on the device, with its fused features `fused` (the second graph, when the
    /// CPU fuses); the device picks the part's case among `params`. No allocation.
    pub fn decide(
        &mut self,
        fused: &[f32],
        params: &[DecisionParams; 3],
    ) -> Result<PartResults<'_>> {
        let n = self.host.fused.len();
        if fused.len() != n {
            return Err(bad_call(format!(
                "{} fused feature values for a plan of {n}",
                fused.len()
            )));
        }
        self.host.fused.as_mut_slice().copy_from_slice(fused);
        self.stage_params(params);
        self.replay(Which::Decision)?;
        self.count_scans();
        Ok(self.results())
    }

    /// Counts the exact scans the last part's fast bank searches copied back.
    fn count_scans(&mut self) {
        let h = &self.host;
        for (scanned, &copied) in h.scanned.iter().zip(&h.scans_copied) {
            if let (Some(s), true) = (scanned, copied) {
                self.scans.add(s.as_slice());
            }
        }
    }

    /// The fast bank search's exact split scans over every part since creation (as
    /// [`DeviceBankSearch::exact_scans`] counts them for its own graphs): how often the
    /// kept candidates did not suffice. Zero on the f32 search path.
    pub fn exact_scans(&self) -> ExactScans {
        self.scans
    }

    /// The device time of each stage of the last part (after [`DevicePart::inspect`], or
    /// [`DevicePart::decide`] when the CPU fuses), read from the graphs' time marks: no
    /// extra wait, no allocation.
    pub fn stage_times(&self) -> Result<DeviceStageTimes> {
        let span = |a, b| self.marks.elapsed_s(a, b);
        Ok(DeviceStageTimes {
            preprocess: span(mark::START, mark::PREPROCESSED)?,
            rgb: span(mark::RGB_START, mark::RGB_END)?,
            point: span(mark::POINT_START, mark::POINT_END)?,
            fusion: if self.fuses() {
                span(mark::NETWORKS, mark::FUSED)?
            } else {
                0.0
            },
            score: span(mark::FUSED, mark::DECIDED)?,
        })
    }

    /// The last part's features (RGB, xyz, centers, groups into `out`, fused into
    /// `fused`): downloaded by a graph of their own when the part ran as one graph (a
    /// launch and a wait, only when asked for), else from the pinned buffers the first
    /// graph filled (then `fused` is left as it is: the CPU made it).
    pub fn download_features(&mut self, out: NetworkOutputs<'_>, fused: &mut [f32]) -> Result<()> {
        if !self.fuses() {
            return self.copy_features(out, None);
        }
        self.replay(Which::Features)?;
        self.copy_features(out, Some(fused))
    }

    fn copy_features(&self, out: NetworkOutputs<'_>, fused: Option<&mut [f32]>) -> Result<()> {
        let h = &self.host;
        let lens = [
            (out.rgb.len(), h.rgb.len()),
            (out.point.xyz.len(), h.xyz.len()),
            (out.point.centers.len(), h.centers.len()),
            (out.point.groups.len(), h.groups.len()),
            (
                fused.as_ref().map_or(0, |f| f.len()),
                fused.as_ref().map_or(0, |_| h.fused.len()),
            ),
        ];
        if lens.iter().any(|(a, b)| a != b) {
            return Err(bad_call(format!("output buffers of {lens:?} values")));
        }
        out.rgb.copy_from_slice(h.rgb.as_slice());
        out.point.xyz.copy_from_slice(h.xyz.as_slice());
        out.point.centers.copy_from_slice(h.centers.as_slice());
        out.point.groups.copy_from_slice(h.groups.as_slice());
        if let Some(f) = fused {
            f.copy_from_slice(h.fused.as_slice());
        }
        Ok(())
    }

    /// The last part as the device preprocessing left it, into `out` (network input,
    /// valid points, their pixels, and the resized cloud rebuilt from them), for
    /// pictures: direct downloads (host waits), only when asked for. Nothing to do when
    /// the CPU preprocesses.
    pub fn download_preprocessed(&self, out: &mut PreprocessOutput) -> Result<()> {
        let Some(pre) = &self.preprocess else {
            return Ok(());
        };
        let s2 = out.size * out.size;
        let io = self.point.io();
        let vit = self._rgb.vit();
        if out.rgb_input.len() != vit.plan().input_len() || out.cloud.len() != 3 * s2 {
            return Err(bad_call(format!(
                "a preprocessed part of side {} for a ViT input of {} values",
                out.size,
                vit.plan().input_len()
            )));
        }
        let status = decode_status(self.host.status_word.as_slice()[0])?;
        self.dev.bind()?;
        self.dev
            .download(&mut out.rgb_input[..], vit.input_ptr().raw())?;
        let mut n = 0usize;
        if status.cloud_usable() {
            let mut count = [0i32];
            self.dev.download(&mut count, io.count.raw())?;
            n = (count[0].max(0) as usize).min(s2);
            self.dev
                .download(&mut out.points[..3 * n], io.points.raw())?;
            self.dev
                .download(&mut out.point_pixels[..n], pre.targets().pixels.raw())?;
        }
        out.n_points = n;
        out.cloud.fill(0.0);
        for i in 0..n {
            let q = out.point_pixels[i] as usize;
            if q < s2 {
                out.cloud[3 * q..3 * q + 3].copy_from_slice(&out.points[3 * i..3 * i + 3]);
            }
        }
        Ok(())
    }

    /// The last part's search in bank `bank` as the device ran it: its normalised
    /// queries (patches × the bank's width) into `queries` and the nearest row of each
    /// patch into `rows`. Direct downloads (host waits), for tests and diagnostics.
    pub fn download_search(
        &self,
        bank: usize,
        queries: &mut [f32],
        rows: &mut [u32],
    ) -> Result<()> {
        let n = self.search.queries(bank).unwrap_or(0);
        let dim = self.set_dims[bank];
        if n == 0 || rows.len() != n || queries.len() != n * dim {
            return Err(bad_call(format!(
                "{} rows and {} query values asked of bank {bank}, which has {n} patches \
                 of {dim}",
                rows.len(),
                queries.len()
            )));
        }
        self.dev.bind()?;
        let (q, nn) = (
            self._arena.ptr(self.slots.queries[bank]),
            self._arena.ptr(self.slots.nearest[bank]),
        );
        self.dev.download(queries, q.raw())?;
        self.dev.download(rows, nn.raw())
    }

    /// What the last [`DevicePart::inspect`] or [`DevicePart::decide`] left in pinned
    /// memory.
    pub fn results(&self) -> PartResults<'_> {
        let h = &self.host;
        let [found, kept] = [h.region_count.as_slice()[0], h.region_count.as_slice()[1]];
        let kept = (kept as usize).min(h.regions.len());
        PartResults {
            decision: h.decision.as_slice()[0],
            map: h.map.as_slice(),
            regions: &h.regions.as_slice()[..kept],
            regions_found: found as usize,
        }
    }

    fn replay(&self, which: Which) -> Result<()> {
        let g = match (&self.graphs, which) {
            (Graphs::One { part, .. }, Which::Part) => {
                self.size_inputs(part)?;
                part
            }
            (Graphs::One { features, .. }, Which::Features) => features,
            (Graphs::Two { networks, .. }, Which::Networks) => {
                self.size_inputs(networks)?;
                networks
            }
            (Graphs::Two { decision, .. }, Which::Decision) => decision,
            _ => {
                return Err(bad_call(
                    "this graph was not recorded for this engine".into(),
                ))
            }
        };
        self.dev.bind()?;
        // Wait even when the launch failed: earlier copies may still use the buffers.
        let launched = g.replay(&self.dev);
        let done = self.dev.synchronize();
        launched.and(done)
    }
}

impl DevicePart {
    /// Sizes the input copies of `graph` (the one that recorded them) to the part just
    /// staged: its bytes only, whatever the largest part is.
    fn size_inputs(&self, graph: &Graph) -> Result<()> {
        match (&self.inputs, &self.host.staging) {
            (InputCopies::Staged(copies), Some(staging)) => {
                staging.size_upload(&self.dev, graph, copies)?;
                Ok(())
            }
            (InputCopies::Points(points), _) => {
                let n = self.host.count.as_slice()[0].max(0) as usize;
                graph.set_copy_len(&self.dev, points, 3 * n)
            }
            (InputCopies::Staged(_), None) => {
                Err(bad_call("staged inputs without the staging".into()))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Part,
    Features,
    Networks,
    Decision,
}

/// A fixed valid cloud of `n` points for a part whose cloud is unusable: a small lattice
/// (distinct points) at pixels 0..n, as the point branch's warm-up.
fn write_filler_cloud(n: usize, points: &mut [f32], pixel_map: &mut [i32]) {
    let n = n.min(pixel_map.len()).min(points.len() / 3);
    for i in 0..n {
        let (a, b, c) = (i % 17, (i / 17) % 17, i / 289);
        points[3 * i..3 * i + 3].copy_from_slice(&[
            a as f32 * 1e-3,
            b as f32 * 1e-3,
            c as f32 * 1e-3,
        ]);
    }
    for (i, m) in pixel_map.iter_mut().enumerate() {
        *m = if i < n { i as i32 } else { -1 };
    }
}

impl Drop for DevicePart {
    fn drop(&mut self) {
        // Queued copies into the pinned buffers finish before they are freed.
        let _ = self.dev.bind();
        let _ = self.dev.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::DevicePointMae;
    use super::super::group_encoder::DeviceGroupEncoderBf16;
    use super::*;
    use crate::cuda::device::SIDE_STREAM_GEMM_REGIONS;

    /// The point branch's GEMM stages, which run on the side stream inside the part's
    /// graph, get the side stream's GEMM workspace (and the ViT's does not).
    #[test]
    fn the_side_stream_stages_are_the_point_branch_gemms() {
        for r in [
            DevicePointMae::ARENA_REGION,
            DeviceGroupEncoderBf16::ARENA_REGION,
        ] {
            assert!(SIDE_STREAM_GEMM_REGIONS.contains(&r), "{r}");
        }
        assert!(!SIDE_STREAM_GEMM_REGIONS.contains(&DeviceVit::ARENA_REGION));
        assert!(!SIDE_STREAM_GEMM_REGIONS.contains(&DevicePart::ARENA_REGION));
    }

    #[test]
    fn the_filler_cloud_is_distinct_points_at_the_first_pixels() {
        let (mut points, mut map) = (vec![f32::NAN; 3 * 400], vec![7i32; 400]);
        write_filler_cloud(300, &mut points, &mut map);
        let mut seen: Vec<[u32; 3]> = points[..900]
            .chunks_exact(3)
            .map(|p| [p[0].to_bits(), p[1].to_bits(), p[2].to_bits()])
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 300);
        assert!(points[900..].iter().all(|v| v.is_nan()));
        assert!((0..300).all(|i| map[i] == i as i32));
        assert!(map[300..].iter().all(|&m| m == -1));
    }
}
