//! The engine: opens a model file and a bank file, checks that they belong together,
//! plans every buffer for a declared maximum input size, and inspects parts one at a
//! time with no heap allocation (SPEC §1–9 on the CPU backend).
//!
//! ```text
//! part ─ preprocess ─┬─ ViT ──────────────────────────┐
//!                    └─ FPS ─ kNN ─ Point-MAE ─ PFA ──┴─ fusion ─ 3 banks ─ decision ─ map, regions
//! ```
//!
//! A missing or unusable modality is replaced by its pseudo-input features (computed once
//! in [`Engine::open`]); the part is then decided with the statistics of its modality
//! case (RADAR, SPEC §9) when the bank file has them, else with the complete-data
//! decision layers, and the result says so.

use crate::backend::{Backend, BackendChoice, Precision};
use crate::config::BankConfig;
use crate::cpu::dense::DensePrecision;
use crate::cpu::pool::Pool;
use crate::cpu::regions::find_regions;
use crate::format::{BankFile, ModelFile, OpenOptions};
pub use crate::pipeline::decide::CaseDecision;
use crate::pipeline::decide::Decision;
use crate::pipeline::extract::{Extractor, StageTimes};
use crate::pipeline::input::{CloudView, RgbView};
use crate::pipeline::preprocess::{padded_side, ModalityStatus, PreprocessMode, Unusable};
use crate::pipeline::score::{BankSet, NearestSearch, PartScores, Scorer};
use crate::types::BANK_NAMES;
pub use crate::types::{Case, InspectOptions, Region, Verdict, MAX_REGIONS, MAX_THREADS};
use crate::{Error, Result};
use std::path::Path;
use std::time::Instant;

mod guard;

/// How an engine is created.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Worker threads (the calling thread included); 0 = one per available core.
    pub threads: usize,
    /// Largest input (width, height) that `inspect` will accept; buffers are planned for it.
    pub max_width: usize,
    pub max_height: usize,
    /// The inputs are already cleaned (plane removed, padded, largest cluster kept), as
    /// MVTec 3D-AD is after the reference implementation's offline preprocessing:
    /// only resizing applies.
    pub preprocessed: bool,
    /// Verify every tensor checksum of both files when opening (slower boot).
    pub verify_checksums: bool,
    /// Compute backend (see [`crate::backend`]); without a usable GPU the engine runs on
    /// the CPU and [`Engine::backend`] says why.
    pub backend: Backend,
    /// CUDA device ordinal, when the CUDA backend is used.
    pub device: usize,
    /// Arithmetic of the networks: f32 (the parity path) or bf16 (the fast path). On the
    /// CPU backend bf16 runs the networks' dense layers through AVX512-BF16 where the CPU
    /// has it (f32 elsewhere, said in the backend choice), and the bank search's candidate
    /// pass too (re-scored in f32: the same nearest rows and distances as f32).
    pub precision: Precision,
    /// Read both files into the engine's own memory instead of mapping them: later
    /// changes to the files, even in place, cannot affect the engine (costs their size
    /// in memory). Mapped files (the default) must be replaced by renaming a new file
    /// over them; a change in place is detected before each inspection where possible.
    pub in_memory: bool,
    /// Search the banks through their stored partitions where the bank file has them
    /// ([`crate::cpu::bank_prune`], the CPU backend): the same nearest rows and distances
    /// with fewer distances computed (on a synthetic M3DM category the score stage took
    /// 0.70–0.80 of the unpruned search's time: bench/results/cpu-banksearch-2026-12-07.md).
    /// On by default; files without partitions search unpruned.
    pub pruned_search: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            max_width: 1024,
            max_height: 1024,
            preprocessed: false,
            verify_checksums: true,
            backend: Backend::Cpu,
            device: 0,
            precision: Precision::F32,
            in_memory: false,
            pruned_search: true,
        }
    }
}

/// The result of one inspection, borrowing the engine's buffers until the next call.
#[derive(Clone, Copy, Debug)]
pub struct Inspection<'e> {
    /// The final part score (higher = more anomalous).
    pub score: f32,
    pub verdict: Verdict,
    /// The threshold the verdict used.
    pub part_threshold: f32,
    pub pixel_threshold: f32,
    /// Per bank (xyz, rgb, fused) re-weighted image scores.
    pub bank_scores: [f32; 3],
    /// The modality case, and why a modality was not used.
    pub case: Case,
    pub status: ModalityStatus,
    /// Whether the case had its own fitted decision statistics (false: an incomplete part
    /// decided with the complete-data layers on pseudo-input features).
    pub case_calibrated: bool,
    /// `map_size × map_size` anomaly map (when asked for).
    pub map: Option<&'e [f32]>,
    pub map_size: usize,
    /// Regions, largest peak first, at most [`MAX_REGIONS`].
    pub regions: &'e [Region],
    /// Regions found in all (may exceed `regions.len()`).
    pub regions_found: usize,
    /// Stage times of this part, seconds: the host's clock on the CPU backend; with the
    /// whole part on the device, the device's own time of each stage it ran (time marks
    /// in the part's graph; the two networks overlap on a GPU), the CPU's for a stage
    /// the CPU ran.
    pub times: StageTimes,
    /// Bank searches, maps and decision (on the device path: their device time plus the
    /// host's copy of the results).
    pub score_time: f64,
    /// The whole call, host clock.
    pub total_time: f64,
}

/// The opened files (the owner of everything the planned pipeline borrows).
struct Files {
    model: ModelFile,
    bank: BankFile,
}

/// Everything planned once, borrowing the mapped files.
struct Planned<'f> {
    extractor: Extractor<'f>,
    set: BankSet<'f>,
    scorer: Scorer,
    cases: [Option<CaseDecision>; 3],
    bank_maps: Vec<f32>,
    map: Vec<f32>,
    scratch: Vec<f32>,
    labels: Vec<u32>,
    queue: Vec<u32>,
    regions: Vec<Region>,
    /// Whether `map` holds the last part's map.
    map_valid: bool,
    /// The bank search on the device (CUDA backend, when a network stays on the CPU),
    /// planned at creation.
    device_search: Option<Box<dyn NearestSearch + Send>>,
    /// The whole part's device work (CUDA backend, every device stage in use): then
    /// `inspect` runs only preprocessing and fusion on the CPU.
    #[cfg(feature = "cuda")]
    device_part: Option<crate::cuda::stages::part::DevicePart>,
    /// The last part's features are on the device only (one-graph part): `features`
    /// downloads them.
    #[cfg(feature = "cuda")]
    features_on_device: bool,
    /// The last part was preprocessed on the device only: `preview_image` downloads it.
    #[cfg(feature = "cuda")]
    preprocessed_on_device: bool,
    backend: BackendChoice,
}

/// What [`open_backend`] sets up on the device.
struct OnDevice {
    search: Option<Box<dyn NearestSearch + Send>>,
    #[cfg(feature = "cuda")]
    part: Option<crate::cuda::stages::part::DevicePart>,
}

impl OnDevice {
    fn none() -> Self {
        OnDevice {
            search: None,
            #[cfg(feature = "cuda")]
            part: None,
        }
    }
}

self_cell::self_cell!(
    struct EngineCell {
        owner: Files,
        #[covariant]
        dependent: Planned,
    }
);

/// An inspection engine (module doc). Not `Sync`: one inspection at a time per engine;
/// create one engine per line/thread.
pub struct Engine {
    cell: EngineCell,
    pool: Pool,
    options: EngineOptions,
    /// The process that opened the engine (see `guard::check_process`).
    pid: u32,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.cell.borrow_owner().model.path())
            .field("bank", &self.cell.borrow_owner().bank.path())
            .field("threads", &self.pool.threads())
            .finish()
    }
}

impl Engine {
    /// Opens and validates both files, checks that the bank was built with this model,
    /// plans the workspace and computes the pseudo-input features.
    pub fn open(model: &Path, bank: &Path, options: &EngineOptions) -> Result<Self> {
        let open = OpenOptions {
            verify_checksums: options.verify_checksums,
            in_memory: options.in_memory,
        };
        if options.threads > MAX_THREADS {
            return Err(Error::Config(format!(
                "{} threads requested, at most {MAX_THREADS}",
                options.threads
            )));
        }
        let model = ModelFile::open(model, &open)?;
        let bank = BankFile::open(bank, &open, Some(&model))?;
        let pool = if options.threads == 0 {
            Pool::with_available_cores()
        } else {
            Pool::new(options.threads)
        };
        let mode = if options.preprocessed {
            PreprocessMode::AlreadyClean
        } else {
            PreprocessMode::Full
        };
        let cell = EngineCell::try_new(Files { model, bank }, |files| {
            plan(&pool, files, options, mode)
        })?;
        Ok(Engine {
            cell,
            pool,
            options: options.clone(),
            pid: guard::current_pid(),
        })
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
    pub fn bank_config(&self) -> &BankConfig {
        self.cell.borrow_owner().bank.config()
    }
    pub fn model_file(&self) -> &ModelFile {
        &self.cell.borrow_owner().model
    }
    pub fn bank_file(&self) -> &BankFile {
        &self.cell.borrow_owner().bank
    }
    /// Per bank (xyz, rgb, fused): the clusters of the partition the CPU bank search
    /// prunes with ([`crate::cpu::bank_prune`]); 0 where it searches unpruned (no such
    /// bank, no partition in the file, `pruned_search` off) or the device searches.
    pub fn search_clusters(&self) -> [usize; 3] {
        if !self.backend().cpu_stages().contains(&"bank search") {
            return [0; 3];
        }
        let set = &self.cell.borrow_dependent().set;
        std::array::from_fn(|b| {
            set.banks[b]
                .and_then(|v| v.partition)
                .map_or(0, |p| p.clusters())
        })
    }
    /// How the CPU searches each present bank, for reports (the C ABI's `backend_note`):
    /// `bank search: xyz pruned (247 clusters), rgb unpruned, fused pruned (1470 clusters)`;
    /// `None` when the device searches.
    pub fn search_description(&self) -> Option<String> {
        if !self.backend().cpu_stages().contains(&"bank search") {
            return None;
        }
        let set = &self.cell.borrow_dependent().set;
        let banks: Vec<String> = (0..3)
            .filter_map(|b| {
                let v = set.banks[b]?;
                Some(match v.partition {
                    Some(p) => format!("{} pruned ({} clusters)", BANK_NAMES[b], p.clusters()),
                    None => format!("{} unpruned", BANK_NAMES[b]),
                })
            })
            .collect();
        Some(format!("bank search: {}", banks.join(", ")))
    }
    /// Side of the anomaly map.
    pub fn map_size(&self) -> usize {
        self.cell.borrow_dependent().scorer.map_size()
    }
    /// The backend this engine runs on and, when CUDA was asked for but not used, why.
    pub fn backend(&self) -> &BackendChoice {
        &self.cell.borrow_dependent().backend
    }
    /// The exact split scans of the device's fast bank search over every part so far
    /// (the whole part on the device, bf16; see
    /// [`crate::cuda::stages::bank_search::DeviceBankSearch::exact_scans`]); `None`
    /// without the one-graph device part.
    #[cfg(feature = "cuda")]
    pub fn device_exact_scans(&self) -> Option<crate::cuda::stages::bank_search::ExactScans> {
        let p = self.cell.borrow_dependent();
        p.device_part.as_ref().map(|d| d.exact_scans())
    }

    /// The last part's search in bank `bank` (0 xyz, 1 rgb, 2 fused) as the device ran
    /// it: the normalised queries and the nearest row of each patch (the whole part on
    /// the device; direct downloads, for tests and diagnostics).
    #[cfg(feature = "cuda")]
    pub fn device_search(&self, bank: usize, queries: &mut [f32], rows: &mut [u32]) -> Result<()> {
        let p = self.cell.borrow_dependent();
        match p.device_part.as_ref() {
            Some(d) => d.download_search(bank, queries, rows),
            None => Err(Error::Device(crate::DeviceError::BadCall(
                "the device search of a part without the device part".into(),
            ))),
        }
    }

    /// The RADAR statistics of each case found in the bank file.
    pub fn case_decisions(&self) -> [Option<CaseDecision>; 3] {
        self.cell.borrow_dependent().cases
    }

    /// The patch features of the last inspected part (xyz, rgb, fused), for `extract`.
    /// When the part ran as one device graph they are on the device: they are downloaded
    /// now (a graph launch and a wait of their own).
    pub fn features(&mut self) -> Result<[&[f32]; 3]> {
        self.cell.with_dependent_mut(|_, p| {
            #[cfg(feature = "cuda")]
            if p.features_on_device {
                if let Some(part) = p.device_part.as_mut() {
                    let (out, fused) = p.extractor.outputs_mut();
                    part.download_features(out, fused)?;
                }
                p.features_on_device = false;
            }
            let ex = &p.extractor;
            Ok([&ex.xyz[..], &ex.rgb[..], &ex.fused[..]])
        })
    }

    /// The extractor, for `extract` (preprocessed points, groups).
    pub fn extractor(&self) -> &Extractor<'_> {
        &self.cell.borrow_dependent().extractor
    }

    /// Inspects one part. Either input may be absent (`None`): that modality is then
    /// replaced by its pseudo input. Both absent or unusable is
    /// [`Error::NoUsableModality`]. No heap allocation.
    pub fn inspect(
        &mut self,
        rgb: Option<RgbView<'_>>,
        cloud: Option<CloudView<'_>>,
        opts: &InspectOptions,
    ) -> Result<Inspection<'_>> {
        let t0 = Instant::now();
        guard::check_process(self.pid)?;
        guard::check_files(self.cell.borrow_owner())?;
        let pool = &self.pool;
        self.cell.with_dependent_mut(|files, p| {
            #[cfg(feature = "cuda")]
            if p.device_part.is_some() {
                let r = inspect_on_device(pool, files.bank.config(), p, rgb, cloud, opts, t0)?;
                guard::check_finite(&r)?;
                return Ok(r);
            }
            let status = p.extractor.run(pool, rgb, cloud)?;
            refuse_unusable(status)?;
            let r = decide(pool, files.bank.config(), p, opts, t0)?;
            guard::check_finite(&r)?;
            Ok(r)
        })
    }

    /// The last part's anomaly map (`map_size²`), when the last inspection made one.
    pub fn last_map(&self) -> Option<&[f32]> {
        let p = self.cell.borrow_dependent();
        p.map_valid.then_some(&p.map[..])
    }

    /// The last part as the network saw it, `S×S×3` bytes, for pictures: the
    /// preprocessed RGB image, or the depth of the preprocessed cloud in grey when the
    /// image was not usable. Allocates (offline use). When the device preprocessed the
    /// part, the preprocessed part is downloaded first (host waits of its own); should
    /// that fail, the picture is of the last part the CPU preprocessed.
    pub fn preview_image(&mut self) -> Vec<u8> {
        #[cfg(feature = "cuda")]
        self.cell.with_dependent_mut(|_, p| {
            if let (true, Some(part)) = (p.preprocessed_on_device, p.device_part.as_ref()) {
                let pre = p.extractor.preprocessed_mut();
                p.preprocessed_on_device = part.download_preprocessed(pre).is_err();
            }
        });
        let ex = &self.cell.borrow_dependent().extractor;
        let pre = ex.preprocessed();
        let cfg = &ex.config().preprocess;
        let s = pre.size;
        let mut out = vec![0u8; 3 * s * s];
        if ex.status.rgb_usable() {
            for ch in 0..3 {
                for i in 0..s * s {
                    let v = pre.rgb_input[ch * s * s + i] * cfg.rgb_std[ch] + cfg.rgb_mean[ch];
                    out[3 * i + ch] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
                }
            }
        } else {
            let z = |i: usize| pre.cloud[3 * i + 2];
            let valid = |i: &usize| pre.cloud[3 * i..3 * i + 3] != [0.0; 3];
            let (lo, hi) = (0..s * s)
                .filter(valid)
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), i| {
                    (lo.min(z(i)), hi.max(z(i)))
                });
            for i in (0..s * s).filter(valid) {
                let t = if hi > lo {
                    (z(i) - lo) / (hi - lo)
                } else {
                    0.5
                };
                let g = (40.0 + 200.0 * (1.0 - t)).round() as u8;
                out[3 * i..3 * i + 3].fill(g);
            }
        }
        out
    }

    /// The last part's anomaly map resampled (bilinear) to the input's `width × height`
    /// pixels, undoing the padding of full preprocessing. `out` has `width·height`
    /// values. No allocation.
    pub fn map_at_input(&self, width: usize, height: usize, out: &mut [f32]) -> Result<()> {
        let fits = width
            .checked_mul(height)
            .is_some_and(|n| n > 0 && out.len() >= n);
        if !fits {
            return Err(Error::Input(format!(
                "map buffer of {} values for a {width}×{height} input",
                out.len()
            )));
        }
        let p = self.cell.borrow_dependent();
        if !p.map_valid {
            return Err(Error::Input(
                "the last inspection made no anomaly map (ask for the map or the regions)".into(),
            ));
        }
        let s = p.scorer.map_size();
        let pre = &self.cell.borrow_owner().model.config().preprocess;
        let (side_w, side_h) = if self.options.preprocessed {
            (width, height)
        } else {
            let side = padded_side(pre, width, height);
            (side, side)
        };
        let (top, left) = ((side_h - height) / 2, (side_w - width) / 2);
        let map = &p.map[..s * s];
        let coord = |v: usize, side: usize| -> (usize, usize, f32) {
            // align_corners = false: source = (dst + 0.5)·s/side − 0.5, clamped.
            let x = ((v as f32 + 0.5) * s as f32 / side as f32 - 0.5).clamp(0.0, (s - 1) as f32);
            let i0 = x.floor() as usize;
            (i0, (i0 + 1).min(s - 1), x - i0 as f32)
        };
        for r in 0..height {
            let (y0, y1, fy) = coord(r + top, side_h);
            for c in 0..width {
                let (x0, x1, fx) = coord(c + left, side_w);
                let a = map[y0 * s + x0] * (1.0 - fx) + map[y0 * s + x1] * fx;
                let b = map[y1 * s + x0] * (1.0 - fx) + map[y1 * s + x1] * fx;
                out[r * width + c] = a * (1.0 - fy) + b * fy;
            }
        }
        Ok(())
    }
}

/// Scores the extracted part against the banks and decides (see [`Engine::inspect`]).
fn decide<'e>(
    pool: &Pool,
    cfg: &BankConfig,
    p: &'e mut Planned<'_>,
    opts: &InspectOptions,
    t0: Instant,
) -> Result<Inspection<'e>> {
    let t1 = Instant::now();
    let status = p.extractor.status;
    let case = Case::of(status.rgb_usable(), status.cloud_usable());
    let ex = &p.extractor;
    let scores: PartScores = p.scorer.score_with(
        pool,
        p.device_search
            .as_deref_mut()
            .map(|d| d as &mut dyn NearestSearch),
        &p.set,
        [&ex.xyz, &ex.rgb, &ex.fused],
        [None; 3],
        &mut p.bank_maps,
        None,
        &mut p.scratch,
    )?;
    let decision = Decision::resolve(cfg, case, &p.cases, opts);
    let score = decision.part_score(&scores.vector);
    let verdict = decision.verdict(score);
    let s = p.scorer.map_size();
    let s2 = s * s;
    let want_map = opts.map || opts.regions;
    let mut found = 0;
    p.map_valid = want_map;
    if want_map {
        decision.pixel_map(&p.bank_maps, &mut p.map[..s2]);
    }
    // A case the bank cannot decide has no regions either (its thresholds are not this
    // case's): see `Decision::lacks_statistics`.
    if opts.regions && !decision.lacks_statistics {
        found = find_regions(
            &p.map[..s2],
            s,
            decision.pixel_threshold,
            &mut p.labels,
            &mut p.queue,
            &mut p.regions,
            MAX_REGIONS,
        );
    } else {
        p.regions.clear();
    }
    if want_map {
        guard::check_map(&p.map[..s2], s)?;
    }
    let t2 = Instant::now();
    Ok(Inspection {
        score,
        verdict,
        part_threshold: decision.part_threshold,
        pixel_threshold: decision.pixel_threshold,
        bank_scores: scores.bank,
        case,
        status,
        case_calibrated: decision.case_calibrated,
        map: opts.map.then_some(&p.map[..s2]),
        map_size: s,
        regions: &p.regions,
        regions_found: found,
        times: p.extractor.times,
        score_time: (t2 - t1).as_secs_f64(),
        total_time: (t2 - t0).as_secs_f64(),
    })
}

/// [`Error::NoUsableModality`] for a part with neither modality usable.
fn refuse_unusable(status: ModalityStatus) -> Result<()> {
    if !status.rgb_usable() && !status.cloud_usable() {
        return Err(Error::NoUsableModality(format!(
            "RGB {}, point cloud {}",
            unusable_name(status.rgb),
            unusable_name(status.cloud)
        )));
    }
    Ok(())
}

/// [`Engine::inspect`] on the device ([`crate::cuda::stages::part::DevicePart`]): the CPU
/// preprocesses and fuses; the networks, the bank searches, the maps, the case's
/// decision and the regions run on the device. The policy stays
/// [`Decision`]'s: the device chooses among the parameter sets the host built from it
/// for every case, and the verdict is the policy's on the device's score.
#[cfg(feature = "cuda")]
fn inspect_on_device<'e>(
    pool: &Pool,
    cfg: &BankConfig,
    p: &'e mut Planned<'_>,
    rgb: Option<RgbView<'_>>,
    cloud: Option<CloudView<'_>>,
    opts: &InspectOptions,
    t0: Instant,
) -> Result<Inspection<'e>> {
    use crate::cuda::ops::maps::DecisionParams;
    use crate::cuda::stages::part::PartInput;
    use crate::pipeline::extract::StageTimes;
    let Some(part) = p.device_part.as_mut() else {
        return Err(Error::Device(crate::DeviceError::BadCall(
            "inspect on the device without a device part".into(),
        )));
    };
    // The device chooses the part's case among the parameters of all three.
    let params = Case::ALL.map(|c| DecisionParams::new(cfg, c, &p.cases, opts));
    let s = part.map_side();
    let ex = &mut p.extractor;
    // Preprocessing on the device: the part's status is known after the graph ran.
    let raw = part.preprocesses();
    p.preprocessed_on_device = raw;
    let mut status = None;
    if raw {
        ex.check_input_sizes(rgb.as_ref(), cloud.as_ref())?;
        ex.times = StageTimes::default();
    } else {
        let st = ex.preprocess_part(rgb, cloud)?;
        refuse_unusable(st)?;
        status = Some(st);
    }
    let status = if part.fuses() {
        let input = match status {
            Some(status) => PartInput::Preprocessed {
                pre: ex.preprocessed(),
                status,
            },
            None => PartInput::Raw { rgb, cloud },
        };
        let st = part.inspect(input, &params)?;
        p.features_on_device = true;
        st
    } else {
        let mut st = None;
        ex.run_networks_with(|pre, given, out| {
            let input = match status {
                Some(_) => PartInput::Preprocessed { pre, status: given },
                None => PartInput::Raw { rgb, cloud },
            };
            st = Some(part.features(input, out)?);
            Ok(())
        })?;
        let st = st.unwrap_or(ex.status);
        ex.status = st;
        refuse_unusable(st)?;
        ex.fuse_part(pool)?;
        p.features_on_device = false;
        st
    };
    ex.status = status;
    refuse_unusable(status)?;
    if !part.fuses() {
        part.decide(&ex.fused, &params)?;
    }
    // The device's own time of each stage it ran (the graphs' time marks); the CPU's
    // stages (preprocessing, fusion) keep the times the CPU measured.
    let dev_times = part.stage_times()?;
    if raw {
        ex.times.preprocess = dev_times.preprocess;
    }
    ex.times.rgb = dev_times.rgb;
    ex.times.point = dev_times.point;
    if part.fuses() {
        ex.times.fusion = dev_times.fusion;
    }
    let t1 = Instant::now();
    let r = part.results();
    let case = Case::of(status.rgb_usable(), status.cloud_usable());
    let decision = Decision::resolve(cfg, case, &p.cases, opts);
    let s2 = s * s;
    let want_map = opts.map || opts.regions;
    p.map_valid = want_map;
    if want_map {
        p.map[..s2].copy_from_slice(&r.map[..s2]);
        guard::check_map(&p.map[..s2], s)?;
    }
    // As on the CPU: a case the bank cannot decide has no regions.
    p.regions.clear();
    let mut found = 0;
    if opts.regions && !decision.lacks_statistics {
        let kept = r.regions.len().min(MAX_REGIONS);
        p.regions
            .extend(r.regions[..kept].iter().map(|&x| Region::from(x)));
        found = r.regions_found;
    }
    let score = r.decision.score;
    let t2 = Instant::now();
    // The device's bank searches, maps and decision, and the host's copy of the results.
    let score_time = dev_times.score + (t2 - t1).as_secs_f64();
    Ok(Inspection {
        score,
        verdict: decision.verdict(score),
        part_threshold: decision.part_threshold,
        pixel_threshold: decision.pixel_threshold,
        bank_scores: r.decision.bank,
        case,
        status,
        case_calibrated: decision.case_calibrated,
        map: opts.map.then_some(&p.map[..s2]),
        map_size: s,
        regions: &p.regions,
        regions_found: found,
        times: p.extractor.times,
        score_time,
        total_time: (t2 - t0).as_secs_f64(),
    })
}

fn unusable_name(u: Option<Unusable>) -> &'static str {
    match u {
        None => "usable",
        Some(Unusable::Missing) => "missing",
        Some(Unusable::Blank) => "blank",
        Some(Unusable::AllZero) => "has no point",
        Some(Unusable::NonFinite) => "has no valid point (only non-finite or missing ones)",
        Some(Unusable::EmptyAfterCleaning) => "empty after cleaning",
        Some(Unusable::TooFewPoints) => "has too few points",
    }
}

fn plan<'f>(
    pool: &Pool,
    files: &'f Files,
    options: &EngineOptions,
    mode: PreprocessMode,
) -> Result<Planned<'f>> {
    let mut extractor = Extractor::new(
        pool,
        &files.model,
        options.max_width,
        options.max_height,
        mode,
    )?;
    let bank = &files.bank;
    let cfg = bank.config();
    let layout = extractor.layout();
    let set = BankSet::from_file(bank)?;
    let set = if options.pruned_search {
        set
    } else {
        set.without_partitions()
    };
    let expect = [
        (layout.xyz_grid, layout.xyz_dim),
        (layout.rgb_grid, layout.rgb_dim),
        (layout.xyz_grid, layout.fused_dim),
    ];
    for (b, view) in set.banks.iter().enumerate() {
        if let Some(v) = view {
            if (set.grids[b], v.dim) != expect[b] {
                return Err(Error::Config(format!(
                    "{}: bank {} holds {}-d features on a {}² grid, the model gives {}-d on {}²",
                    bank.path().display(),
                    BANK_NAMES[b],
                    v.dim,
                    set.grids[b],
                    expect[b].1,
                    expect[b].0
                )));
            }
        }
    }
    if set.banks.iter().all(Option::is_none) {
        return Err(Error::Config(format!(
            "{}: the bank file holds no memory bank",
            bank.path().display()
        )));
    }
    let mut scorer = Scorer::new(cfg, &set, pool.threads());
    let s = scorer.map_size();
    let (on_device, backend) = open_backend(options, files, &set, &mut extractor, pool);
    // bf16 on the CPU backend: the bank search too (the same results as f32; both need
    // AVX512-BF16, which `open_backend` checked).
    if backend.used == Backend::Cpu && backend.precision == Precision::Bf16 {
        scorer.use_bf16_search();
    }
    let mut cases = [None; 3];
    for c in Case::ALL {
        cases[c as usize] = CaseDecision::load(bank, c)?;
        guard::check_case(bank.path(), c, cases[c as usize].as_ref())?;
    }
    Ok(Planned {
        scratch: vec![0.0; scorer.scratch_len()],
        bank_maps: vec![0.0; 3 * s * s],
        map: vec![0.0; s * s],
        labels: vec![0; s * s],
        queue: vec![0; s * s],
        regions: Vec::with_capacity(MAX_REGIONS),
        map_valid: false,
        extractor,
        set,
        scorer,
        cases,
        device_search: on_device.search,
        #[cfg(feature = "cuda")]
        device_part: on_device.part,
        #[cfg(feature = "cuda")]
        features_on_device: false,
        #[cfg(feature = "cuda")]
        preprocessed_on_device: false,
        backend,
    })
}

/// Resolves the backend: on CUDA, the device bank search, the device ViT and the device
/// point branch, each used only when it opens and passes its self-check against the CPU.
/// With all three, the whole part's device work ([`crate::cuda::stages::part::DevicePart`],
/// with the maps and the decision); without the bank search the engine runs on the CPU
/// (see [`crate::backend`]); without a branch that branch stays on the CPU, the bank
/// search is used alone, and the choice says why.
fn open_backend(
    options: &EngineOptions,
    files: &Files,
    set: &BankSet<'_>,
    extractor: &mut Extractor<'_>,
    pool: &Pool,
) -> (OnDevice, BackendChoice) {
    let requested = options.backend;
    if requested == Backend::Cpu {
        let mut choice = BackendChoice::cpu();
        if options.precision == Precision::Bf16 {
            if extractor.pack_networks(DensePrecision::Bf16) {
                choice.precision = Precision::Bf16;
            } else {
                choice.fallback =
                    Some("bf16 asked for, but this CPU has no AVX512-BF16: f32 is used".into());
            }
        }
        if choice.precision == Precision::F32 {
            extractor.pack_networks(DensePrecision::F32);
        }
        return (OnDevice::none(), choice);
    }
    #[cfg(feature = "cuda")]
    {
        use crate::cuda::stages::part::DevicePart;
        use crate::cuda::stages::point_branch::{BranchOptions, DevicePointBranch};
        use crate::cuda::stages::preprocess::DevicePreprocess;
        use crate::cuda::stages::{
            bank_search::DeviceBankSearch, fusion::FusionGraph, vit::DeviceRgb,
        };
        use crate::cuda::Device;
        use crate::pipeline::extract::DeviceNetwork;
        use std::sync::Arc;
        let model = &files.model;
        let fell_back = |e: String| (OnDevice::none(), BackendChoice::fell_back(requested, e));
        // One device (context and streams) for the engine, shared by every device stage.
        let opened = match requested {
            Backend::CudaSim => Device::simulated(),
            _ => Device::new(options.device),
        };
        let dev = match opened {
            Ok(d) => Arc::new(d),
            Err(e) => return fell_back(e.to_string()),
        };
        let used = if dev.is_simulated() {
            Backend::CudaSim
        } else {
            Backend::Cuda
        };
        let precision = options.precision;
        let branch = BranchOptions {
            precision,
            ..BranchOptions::default()
        };
        // Every stage states its memory first; the engine's one arena holds them all. A
        // branch that cannot state its needs stays on the CPU (and gets no region).
        let mut on_cpu = Vec::new();
        let mut needs = match DeviceBankSearch::arena_needs(&dev, set, precision) {
            Ok(n) => n,
            Err(e) => return fell_back(e.to_string()),
        };
        let rgb_needs = DeviceRgb::arena_needs(model, precision)
            .map_err(|e| on_cpu.push(format!("rgb branch: {e}")));
        let point_needs = DevicePointBranch::arena_needs(model, branch)
            .map_err(|e| on_cpu.push(format!("point branch: {e}")));
        let fusion_needs = FusionGraph::arena_needs(model, precision)
            .map_err(|e| on_cpu.push(format!("fusion: {e}")));
        let mode = if options.preprocessed {
            PreprocessMode::AlreadyClean
        } else {
            PreprocessMode::Full
        };
        let (max_w, max_h) = (options.max_width, options.max_height);
        let pre_needs = DevicePreprocess::arena_needs(model, max_w, max_h, mode)
            .map_err(|e| on_cpu.push(format!("preprocessing: {e}")));
        let layout = extractor.layout();
        let part_needs = DevicePart::arena_needs(files.bank.config(), &layout)
            .map_err(|e| on_cpu.push(format!("maps and decision: {e}")));
        for n in [
            &pre_needs,
            &rgb_needs,
            &point_needs,
            &fusion_needs,
            &part_needs,
        ]
        .into_iter()
        .flatten()
        {
            needs.extend(n.iter().cloned());
        }
        if let Err(e) = dev.plan_engine_arena(&needs) {
            return fell_back(e.to_string());
        }
        let search = match DeviceBankSearch::on_device(dev.clone(), set, pool, precision) {
            Ok(s) => s,
            Err(e) => return fell_back(e.to_string()),
        };
        let mut choice = BackendChoice {
            requested,
            used,
            device: Some(search.device_name()),
            precision,
            fallback: None,
            device_stages: vec!["bank search"],
            device_counts: None,
            device_activity: None,
        };
        let tolerance = precision.feature_tolerance();
        // A stage whose memory was planned, opened and checked against the CPU; else
        // `None`, and the reason in `on_cpu`.
        fn checked<T>(
            stage: &str,
            planned: bool,
            on_cpu: &mut Vec<String>,
            open_and_check: impl FnOnce() -> crate::Result<T>,
        ) -> Option<T> {
            if !planned {
                return None;
            }
            open_and_check()
                .map_err(|e| on_cpu.push(format!("{stage}: {e}")))
                .ok()
        }
        let rgb = checked("rgb branch", rgb_needs.is_ok(), &mut on_cpu, || {
            let mut vit = DeviceRgb::on_device(dev.clone(), model, precision)?;
            extractor.check_rgb_network(&mut vit, tolerance)?;
            Ok(vit)
        });
        let point = checked("point branch", point_needs.is_ok(), &mut on_cpu, || {
            let mut b = DevicePointBranch::on_device(dev.clone(), model, branch)?;
            extractor.check_point_network(pool, &mut b, tolerance)?;
            Ok(b)
        });
        let fusion = checked("fusion", fusion_needs.is_ok(), &mut on_cpu, || {
            let mut f = FusionGraph::on_device(dev.clone(), model, precision)?;
            extractor.check_fusion_network(pool, &mut f, tolerance)?;
            Ok(f)
        });
        let preprocess = pre_needs.ok().and_then(|_| {
            DevicePreprocess::on_device(dev.clone(), model, max_w, max_h, mode)
                .map_err(|e| on_cpu.push(format!("preprocessing: {e}")))
                .ok()
        });
        let finish = |mut choice: BackendChoice, on_cpu: Vec<String>| {
            if !on_cpu.is_empty() {
                choice.fallback = Some(on_cpu.join("; "));
            }
            choice.device_counts = Some(dev.counts());
            choice.device_activity = Some(dev.activity());
            choice
        };
        let (rgb, point) = match (rgb, point, part_needs) {
            (Some(rgb), Some(point), Ok(_)) => {
                let part = DevicePart::new(
                    dev.clone(),
                    rgb,
                    point,
                    search,
                    fusion,
                    preprocess,
                    files.bank.config(),
                    set,
                    &layout,
                    extractor.pseudo_input_features(),
                );
                return match part {
                    Ok(part) => {
                        choice.device_stages = Vec::new();
                        if part.preprocesses() {
                            choice.device_stages.push("preprocessing");
                        }
                        choice.device_stages.extend(["point branch", "rgb branch"]);
                        if part.fuses() {
                            choice.device_stages.push("fusion");
                        }
                        choice
                            .device_stages
                            .extend(["bank search", "maps and decision"]);
                        let on_device = OnDevice {
                            search: None,
                            part: Some(part),
                        };
                        (on_device, finish(choice, on_cpu))
                    }
                    // The stages went into the failed part: the CPU runs the engine.
                    Err(e) => fell_back(format!("device part: {e}")),
                };
            }
            (rgb, point, _) => (rgb, point),
        };
        // Some stage stays on the CPU: the others are used one by one, each with its own
        // graph (the stages' per-stage graphs exist for this path), listed as the
        // one-graph part lists them.
        let networks = [
            (
                "point branch",
                point.map(|b| DeviceNetwork::Point(Box::new(b))),
            ),
            ("rgb branch", rgb.map(|v| DeviceNetwork::Rgb(Box::new(v)))),
            ("fusion", fusion.map(|f| DeviceNetwork::Fusion(Box::new(f)))),
        ];
        let mut used = Vec::new();
        for (stage, network) in networks {
            let Some(network) = network else { continue };
            match extractor.use_network(pool, network, tolerance) {
                Ok(_) => used.push(stage),
                Err(e) => on_cpu.push(format!("{stage}: {e}")),
            }
        }
        used.append(&mut choice.device_stages);
        choice.device_stages = used;
        let on_device = OnDevice {
            search: Some(Box::new(search)),
            part: None,
        };
        (on_device, finish(choice, on_cpu))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (files, set, extractor, pool);
        (
            OnDevice::none(),
            BackendChoice::fell_back(
                requested,
                "this miad was built without the `cuda` feature".into(),
            ),
        )
    }
}
