//! The CUDA path of `Engine::inspect`: the device work of one part recorded once, at
//! engine creation, into CUDA graphs that every part replays.
//!
//! ```text
//! features graph:  pinned inputs (status, RGB network input, points, count, pixel map) →
//!                  ┬ ViT (engine stream) ─────────────────────────────┬→ pseudo-feature
//!                  └ FPS · kNN · Point-MAE · alignment (side stream) ──┘  selection →
//!                  RGB and xyz features (and centers, groups) into pinned memory
//! decision graph:  pinned fused features and decision parameters →
//!                  per bank: normalisation, nearest-row search →
//!                  bank scores, maps, blur, the case's decision, pixel map, regions →
//!                  decision record, map and regions into pinned memory
//! ```
//!
//! Preprocessing and fusion still run on the CPU, before and between the two graphs (two
//! launches and two host waits per part); when the device preprocessing and fusion stages
//! exist they move into the graphs, which then become one.
//!
//! Nothing in a recording depends on the part: the point count and the pixel map are
//! read from device memory, the whole point buffer is copied, an unusable modality's
//! network runs on a fixed valid input and its features are replaced on the device by
//! the pseudo input's (chosen by the status word the host writes), and the decision
//! parameters of all three modality cases are copied in per part, the kernels choosing
//! the part's case from the status word. The pixel map and the regions are always made.
//!
//! The stages come in checked: the ViT and the point branch by the extractor's
//! self-checks against the CPU, the bank search by its own ([`DeviceBankSearch`]).

use std::sync::Arc;

use super::bank_search::DeviceBankSearch;
use super::point_branch::DevicePointBranch;
use super::vit::DeviceRgb;
use crate::config::BankConfig;
use crate::cuda::device::arena::{Arena, ArenaPlan, DevPtr, Slot};
use crate::cuda::device::graph::{Graph, Pinned};
use crate::cuda::device::Device;
use crate::cuda::ops::maps::{
    BankInput, CaseParams, DecisionParams, MapBuffers, MapKernels, MapPlan, MapSlots,
    PartDecisionRec, PartParams, PixelParams, RegionRec,
};
use crate::pipeline::extract::NetworkOutputs;
use crate::pipeline::preprocess::{ModalityStatus, PreprocessOutput};
use crate::pipeline::score::BankSet;
use crate::types::{FeatureLayout, BANK_NAMES, FUSED, RGB, XYZ};
use crate::{DeviceError, Error, Result};

fn bad_call(msg: String) -> Error {
    Error::Device(DeviceError::BadCall(format!("device part: {msg}")))
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

/// Pinned host memory the recorded copies read (inputs) and write (results).
struct HostIo {
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
}

/// What the decision graph leaves in pinned memory for the engine.
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

/// The part's device work, recorded once (module doc).
pub struct DevicePart {
    // Field order is drop order: the graphs and pinned buffers first, then the kernels,
    // the arena and the stages, the device last.
    features_graph: Graph,
    decision_graph: Graph,
    host: HostIo,
    _maps: MapKernels,
    _arena: Arena,
    _rgb: DeviceRgb,
    point: DevicePointBranch,
    search: DeviceBankSearch,
    sizes: Sizes,
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

    /// Records the part from the engine's checked device stages. `pseudo` holds the
    /// pseudo inputs' features (RGB, xyz) the CPU computed at creation.
    pub fn new(
        dev: Arc<Device>,
        rgb: DeviceRgb,
        point: DevicePointBranch,
        search: DeviceBankSearch,
        cfg: &BankConfig,
        set: &BankSet<'_>,
        layout: &FeatureLayout,
        pseudo: (&[f32], &[f32]),
    ) -> Result<Self> {
        let sizes = Self::sizes(layout, cfg);
        let vit = rgb.vit();
        let (n_in, n_rgb) = (vit.plan().input_len(), vit.plan().features_len());
        let bs = point.sizes().clone();
        if n_rgb != sizes.rgb
            || bs.xyz_len() != sizes.xyz
            || pseudo.0.len() != sizes.rgb
            || pseudo.1.len() != sizes.xyz
        {
            return Err(bad_call(format!(
                "feature sizes differ: ViT {n_rgb}, point branch {}, pseudo {} and {}, \
                 model {} and {}",
                bs.xyz_len(),
                pseudo.0.len(),
                pseudo.1.len(),
                sizes.rgb,
                sizes.xyz
            )));
        }
        let map_plan = MapPlan::new(cfg)?;
        for b in 0..3 {
            let want = map_plan.banks[b].map(|s| s.grid * s.grid);
            if search.queries(b) != want {
                return Err(bad_call(format!(
                    "bank {}: the search has {:?} patches, the maps {want:?}",
                    BANK_NAMES[b],
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
        };
        let io = point.io();
        let p = |s: Slot<f32>| arena.ptr(s);
        let status = arena.ptr(slots.status);
        let rgb_feats = p(slots.rgb);
        let features_graph = Graph::capture(&dev, |d| {
            let h = &mut host;
            h.status.copy_to(d, status, 2)?;
            h.rgb_input.copy_to(d, vit.input_ptr(), n_in)?;
            h.points.copy_to(d, io.points, 3 * np)?;
            h.count.copy_to(d, io.count, 1)?;
            h.pixel_map.copy_to(d, io.pixel_map, np)?;
            // SAFETY: every buffer is the stages' own or planned above for these sizes.
            unsafe {
                d.fork_join(
                    |d| point.record_on_device(d),
                    |d| vit.record_input(d, vit.input_ptr(), rgb_feats),
                )?;
                maps.pseudo_select(d, status, 0, sizes.rgb, p(slots.pseudo_rgb), rgb_feats)?;
                maps.pseudo_select(d, status, 1, sizes.xyz, p(slots.pseudo_xyz), io.xyz)?;
            }
            h.rgb.copy_from(d, rgb_feats, sizes.rgb)?;
            h.xyz.copy_from(d, io.xyz, sizes.xyz)?;
            h.centers.copy_from(d, io.centers, bs.centers_len())?;
            h.groups.copy_from(d, io.groups, bs.groups_len())
        })?;
        let bufs: MapBuffers = slots.maps.ptrs(&arena);
        let cases = CaseParams {
            status,
            part: arena.ptr(slots.part_params),
            pixel: arena.ptr(slots.pixel_params),
        };
        let features: [DevPtr<f32>; 3] = {
            let mut f = [DevPtr::null(); 3];
            (f[XYZ], f[RGB], f[FUSED]) = (io.xyz, rgb_feats, p(slots.fused));
            f
        };
        let decision_graph = Graph::capture(&dev, |d| {
            let h = &mut host;
            h.fused.copy_to(d, p(slots.fused), sizes.fused)?;
            h.part_params.copy_to(d, cases.part, 3)?;
            h.pixel_params.copy_to(d, cases.pixel, 3)?;
            let mut inputs = [BankInput::absent(); 3];
            for b in 0..3 {
                let (Some(view), Some(rows)) = (set.banks[b], search.rows(b)) else {
                    continue;
                };
                let n = map_plan.banks[b].map_or(0, |s| s.grid * s.grid) * view.dim;
                let norm = set.norms[b];
                let (x, dist, nn) = (
                    p(slots.queries[b]),
                    p(slots.sq_dist[b]),
                    arena.ptr(slots.nearest[b]),
                );
                // SAFETY: the features, queries and results planned above for this bank.
                unsafe {
                    maps.normalise(d, n, norm.mean, 1.0 / norm.std, features[b], x)?;
                    search.record_search(d, b, x, dist, nn)?;
                }
                inputs[b] = BankInput { dist, nn, x, rows };
            }
            // SAFETY: the inputs above; the map buffers planned for this plan.
            unsafe { maps.post_search_case(d, &inputs, true, &cases, &bufs)? };
            h.decision.copy_from(d, bufs.decision, 1)?;
            h.map.copy_from(d, bufs.map, s2)?;
            h.regions.copy_from(d, bufs.regions, map_plan.max_regions)?;
            h.region_count.copy_from(d, bufs.count, 2)
        })?;
        Ok(DevicePart {
            features_graph,
            decision_graph,
            host,
            _maps: maps,
            _arena: arena,
            _rgb: rgb,
            point,
            search,
            sizes,
            dev,
        })
    }

    /// The device's name and compute capability.
    pub fn device_name(&self) -> String {
        self.search.device_name()
    }

    /// The networks of one preprocessed part (the features graph): writes `out` (the
    /// pseudo inputs' features for an unusable modality). No allocation.
    pub fn features(
        &mut self,
        pre: &PreprocessOutput,
        status: ModalityStatus,
        out: NetworkOutputs<'_>,
    ) -> Result<()> {
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
            sizes.check_call(pre.points.len(), n, pre.point_pixels.len(), &out.point)?;
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
        self.replay(Which::Features)?;
        let h = &self.host;
        let lens = [
            (out.rgb.len(), h.rgb.len()),
            (out.point.xyz.len(), h.xyz.len()),
            (out.point.centers.len(), h.centers.len()),
            (out.point.groups.len(), h.groups.len()),
        ];
        if lens.iter().any(|(a, b)| a != b) {
            return Err(bad_call(format!("output buffers of {lens:?} values")));
        }
        out.rgb.copy_from_slice(h.rgb.as_slice());
        out.point.xyz.copy_from_slice(h.xyz.as_slice());
        out.point.centers.copy_from_slice(h.centers.as_slice());
        out.point.groups.copy_from_slice(h.groups.as_slice());
        Ok(())
    }

    /// Scores and decides the part whose features the last [`DevicePart::features`]
    /// left on the device, with its fused features `fused` and the decision parameters
    /// of every modality case (`params[case]`, see [`DecisionParams`]); the device picks
    /// the part's case. No allocation.
    pub fn decide(
        &mut self,
        fused: &[f32],
        params: &[DecisionParams; 3],
    ) -> Result<PartResults<'_>> {
        let h = &mut self.host;
        if fused.len() != h.fused.len() {
            return Err(bad_call(format!(
                "{} fused feature values for a plan of {}",
                fused.len(),
                h.fused.len()
            )));
        }
        h.fused.as_mut_slice().copy_from_slice(fused);
        for (c, p) in params.iter().enumerate() {
            h.part_params.as_mut_slice()[c] = p.part;
            h.pixel_params.as_mut_slice()[c] = p.pixel;
        }
        self.replay(Which::Decision)?;
        let h = &self.host;
        let [found, kept] = [h.region_count.as_slice()[0], h.region_count.as_slice()[1]];
        let kept = (kept as usize).min(h.regions.len());
        Ok(PartResults {
            decision: h.decision.as_slice()[0],
            map: h.map.as_slice(),
            regions: &h.regions.as_slice()[..kept],
            regions_found: found as usize,
        })
    }

    /// Side of the anomaly map.
    pub fn map_side(&self) -> usize {
        self.sizes.map_side
    }

    fn replay(&self, which: Which) -> Result<()> {
        let g = match which {
            Which::Features => &self.features_graph,
            Which::Decision => &self.decision_graph,
        };
        self.dev.bind()?;
        // Wait even when the launch failed: earlier copies may still use the buffers.
        let launched = g.replay(&self.dev);
        let done = self.dev.synchronize();
        launched.and(done)
    }
}

enum Which {
    Features,
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
