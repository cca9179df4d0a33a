//! `fit`: from the features of defect-free training parts to a bank file (SPEC §6–8).
//!
//! 1. Extract every part's patch features (through a [`FeatureExtractor`]: the pipeline's
//!    extractor in the product, fake features in tests) and stream them to a memory-mapped
//!    scratch file: RAM holds one part per extractor, whatever the category's size (the
//!    pipeline's extractor runs as many parts side by side as it has threads, one thread
//!    each: [`FeatureExtractor::extract_all`]).
//! 2. Per bank, one scalar mean and standard deviation (unbiased, as `torch.std`) over all
//!    of that bank's training features (the xyz bank: over its non-background rows).
//! 3. Coreset per bank (SPEC §6): the normalised rows are projected (JL dimension for
//!    ε = 0.9, seeded sparse matrix) into a second scratch file, then the greedy
//!    farthest-first selection keeps `ratio · rows` of them; the bank stores the selected
//!    *unprojected* normalised rows and their squared norms. The xyz bank drops rows that
//!    are all zero (patches without points) and appends exactly one row that is the
//!    normalised image of the zero feature, `(0 − mean)/std` — the "all-zero row" of
//!    SPEC §6 expressed after normalisation, so background patches match it at distance 0.
//! 4. Training scores, leave-one-out style: every training part is scored against the
//!    finished banks with the bank rows that came from that part masked out (the bank file
//!    never stores origins; the fit keeps them in memory). This uses every part for the
//!    banks and still gives honest defect-free scores; no separate coreset per fold.
//! 5. The two linear one-class SVMs are trained on the part score vectors and on a
//!    deterministic subsample of pixel vectors (every k-th pixel, at most
//!    `pixel_samples`), through the caller's trainer (`fit::ocsvm`).
//! 6. Thresholds (see [`super::calibrate`]).
//!
//! Progress goes through a callback; the library never draws progress bars itself.

use super::calibrate;
use super::scratch::{peak_rss_kib, ScratchFile};
use crate::backend::Backend;
use crate::config::{BankConfig, BankVariant, FeatureNorm, FitInfo, LinearSvm, Thresholds};
use crate::cpu::bank_neighbours::neighbour_table_pruned;
use crate::cpu::bank_prune::BankPartition;
use crate::cpu::bank_search::{neighbour_table, sq_norms, BankView, TABLE_NEIGHBOURS};
use crate::cpu::coreset;
use crate::cpu::pool::Pool;
use crate::eval::missing::MissingModality;
use crate::format::Writer;
use crate::pipeline::score::{add_partition, neighbour_table_name, BankSet, Scorer};
pub use crate::types::FeatureLayout;
use crate::types::{BANK_NAMES, FUSED, RGB, XYZ};
use crate::util::row_table::{row_table_len, RowTable};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Where the fit gets each training part's patch features.
pub trait FeatureExtractor {
    fn layout(&self) -> FeatureLayout;
    /// Number of training parts.
    fn parts(&self) -> usize;
    /// Writes part `part`'s raw patch features: `xyz` (`xyz_grid² × xyz_dim`), `rgb`
    /// (`rgb_grid² × rgb_dim`), `fused` (`xyz_grid² × fused_dim`), row-major grids.
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> Result<()>;
    /// The same part's features with `drop` removed (replaced by the pseudo input), for
    /// RADAR's per-case statistics. `Ok(false)`: this extractor cannot (no RADAR stats).
    fn extract_without(
        &mut self,
        _part: usize,
        _drop: MissingModality,
        _xyz: &mut [f32],
        _rgb: &mut [f32],
        _fused: &mut [f32],
    ) -> Result<bool> {
        Ok(false)
    }
    /// Writes every part's features into `out` (`parts × part_len` floats, part after
    /// part, each as [`FeatureLayout::split_part_mut`]) and calls `done(n)` as the count of
    /// finished parts grows. Part by part here; an extractor may run parts side by side.
    fn extract_all(&mut self, out: &dyn PartSink, done: &mut dyn FnMut(usize)) -> Result<()> {
        extract_in_turn(self, out, done)
    }
}

/// Where [`FeatureExtractor::extract_all`] writes: `parts × part_len` floats, written a
/// range at a time, from several threads at once on disjoint ranges.
pub trait PartSink: Sync {
    /// Writes `values` at float `offset`.
    fn write(&self, offset: usize, values: &[f32]) -> Result<()>;
}

/// The fit's scratch file, written through the file rather than the map.
impl PartSink for ScratchFile {
    fn write(&self, offset: usize, values: &[f32]) -> Result<()> {
        self.write_at(offset, values)
    }
}

/// Features held in memory (tests, small tools).
impl PartSink for std::sync::Mutex<Vec<f32>> {
    fn write(&self, offset: usize, values: &[f32]) -> Result<()> {
        let mut all = self.lock().unwrap_or_else(|e| e.into_inner());
        all[offset..offset + values.len()].copy_from_slice(values);
        Ok(())
    }
}

/// [`FeatureExtractor::extract_all`] part after part, through one part's buffer.
pub fn extract_in_turn<E: FeatureExtractor + ?Sized>(
    ex: &mut E,
    out: &dyn PartSink,
    done: &mut dyn FnMut(usize),
) -> Result<()> {
    let layout = ex.layout();
    let plen = layout.part_len();
    let mut part = vec![0f32; plen];
    for p in 0..ex.parts() {
        let [xyz, rgb, fused] = layout.split_part_mut(&mut part);
        ex.extract(p, xyz, rgb, fused)?;
        out.write(p * plen, &part)?;
        done(p + 1);
    }
    Ok(())
}

/// Options of a fit.
#[derive(Clone, Debug)]
pub struct FitOptions {
    pub variant: BankVariant,
    pub coreset_ratio: f64,
    pub coreset_eps: f64,
    pub seed: u64,
    /// False-reject rate the thresholds are calibrated at (0.01 by default).
    pub frr: f32,
    pub score_weights: [f32; 3],
    pub map_size: usize,
    pub blur_sigma: f32,
    /// At most this many pixel vectors train the pixel SVM.
    pub pixel_samples: usize,
    /// Directory of the scratch files.
    pub scratch_dir: PathBuf,
    /// Fit RADAR's decision statistics for the rgb-only and cloud-only cases (SPEC §9),
    /// when the extractor can remove a modality.
    pub radar: bool,
    /// Ridge of the per-case covariances, relative to their mean diagonal.
    pub radar_ridge: f64,
    /// Where the greedy coreset selection runs: [`Backend::Cuda`] / [`Backend::Auto`] use
    /// CUDA device 0 (feature `cuda`; same indices as the CPU); without a usable device it
    /// runs on the CPU (and, for `Cuda`, says why on stderr).
    pub backend: Backend,
    /// Search the banks' partitions ([`crate::cpu::bank_prune`]) in the leave-one-out
    /// scoring: the same results, fewer distances (off: the brute-force search, for
    /// comparison). The partitions are built and stored in the bank file either way.
    pub prune_search: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            variant: BankVariant::Full,
            coreset_ratio: 0.1,
            coreset_eps: 0.9,
            seed: 0x6d69_6164,
            frr: 0.01,
            score_weights: [1.0, 0.1, 1.0],
            map_size: 224,
            blur_sigma: 4.0,
            pixel_samples: 200_000,
            scratch_dir: std::env::temp_dir(),
            radar: true,
            radar_ridge: 1e-3,
            backend: Backend::Cpu,
            prune_search: true,
        }
    }
}

/// What the fit is doing, for progress reports.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    Extract {
        done: usize,
        total: usize,
    },
    Coreset {
        bank: &'static str,
        done: usize,
        total: usize,
    },
    /// The greedy selection of a bank's coreset (centres chosen of `total`).
    Select {
        bank: &'static str,
        done: usize,
        total: usize,
    },
    /// The neighbour table of a bank (rows done).
    Neighbours {
        bank: &'static str,
        done: usize,
        total: usize,
    },
    Score {
        done: usize,
        total: usize,
    },
    /// RADAR's per-case statistics: parts re-extracted with a modality removed.
    Case {
        case: &'static str,
        done: usize,
        total: usize,
    },
    Done,
}

/// A trainer of linear one-class SVMs over 3-vectors (scikit-learn SGDOneClassSVM, ν=0.5).
pub type SvmTrainer<'a> = dyn Fn(&[[f32; 3]]) -> Result<LinearSvm> + 'a;

/// A finished fit: the bank configuration and tensors, ready to write.
pub struct Fitted {
    pub config: BankConfig,
    /// `(name, shape, data)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The banks' neighbour tables, `(name, shape, rows)`.
    pub tables: Vec<(String, Vec<usize>, Vec<u32>)>,
    /// Per bank (xyz, rgb, fused): the partition of the pruned search, where one applies.
    pub partitions: [Option<BankPartition>; 3],
    /// Leave-one-out part scores of the training parts (after the part SVM).
    pub train_scores: Vec<f32>,
    /// Peak resident memory of the process after the fit, KiB (where known).
    pub peak_rss_kib: Option<u64>,
    /// Wall time of each phase, in order (not written to the bank file: its bytes must
    /// not depend on the machine's speed).
    pub phases: Vec<PhaseTime>,
    /// Per bank: (patch, row) pairs of the training scores (every patch with every
    /// row) and those the searches computed (the distinct patches' pairs without pruning).
    pub search_pairs: [(u64, u64); 3],
}

/// The wall time of one phase of a fit and how much it processed.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
    /// Items processed (parts, rows, centres), for a rate.
    pub items: usize,
    pub unit: &'static str,
}

/// Times consecutive phases: each [`PhaseClock::end`] closes the phase started at the
/// previous one.
struct PhaseClock {
    last: std::time::Instant,
    phases: Vec<PhaseTime>,
}

impl PhaseClock {
    fn new() -> Self {
        PhaseClock {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }
    fn end(&mut self, phase: String, items: usize, unit: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push(PhaseTime {
            phase,
            seconds: (now - self.last).as_secs_f64(),
            items,
            unit,
        });
        self.last = now;
    }
}

impl Fitted {
    /// Writes the bank file.
    pub fn write(&self, path: &Path) -> Result<[u8; 16]> {
        let mut w = Writer::bank(self.config.clone());
        w.provenance("fit.scoring", self.config.fit.scoring.clone());
        for (name, shape, data) in &self.tensors {
            w.add_f32(name.clone(), shape, data);
        }
        for (name, shape, rows) in &self.tables {
            w.add_typed(name.clone(), shape, rows);
        }
        let c = &self.config;
        let dims = [c.xyz_dim, c.rgb_dim, c.fused_dim];
        for (b, p) in self.partitions.iter().enumerate() {
            if let Some(p) = p {
                add_partition(&mut w, b, p, dims[b] as usize);
            }
        }
        Ok(w.write(path)?)
    }
}

/// One part's feature slice per bank (empty for an unused bank) within its `part`
/// buffer, laid out as [`FeatureLayout`] offsets.
fn bank_slices(
    part: &[f32],
    used: [bool; 3],
    shapes: [(usize, usize); 3],
    offsets: [usize; 3],
) -> [&[f32]; 3] {
    std::array::from_fn(|b| {
        if used[b] {
            let (rows, d) = shapes[b];
            &part[offsets[b]..offsets[b] + rows * d]
        } else {
            &part[0..0]
        }
    })
}

/// The coreset's greedy selection: on the GPU when asked for and possible, else the CPU
/// (identical indices either way).
/// `x` holds `n × dim` rows and room for [`coreset::tiled_len`]; the CPU rearranges it
/// and reports `progress(centres, m)`.
fn greedy_selection(
    pool: &Pool,
    backend: Backend,
    x: &mut [f32],
    n: usize,
    dim: usize,
    m: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<u32> {
    if backend != Backend::Cpu {
        #[cfg(feature = "cuda")]
        let why = match crate::cuda::ops::coreset::greedy_on_first_device(&x[..n * dim], dim, m) {
            Ok(idx) => return idx,
            Err(e) => e.to_string(),
        };
        #[cfg(not(feature = "cuda"))]
        let why = "this miad was built without the `cuda` feature";
        if backend == Backend::Cuda {
            eprintln!("miad: GPU coreset not used: {why}; selecting on the CPU");
        }
    }
    coreset::select_in_place(pool, x, n, dim, m, progress)
}

/// Environment variable naming a folder: the fit writes each bank's projected rows there
/// before its coreset selection, for `cargo bench --bench coreset`.
pub const PROJECTED_DUMP_VAR: &str = "MIAD_FIT_PROJECTED_DUMP";

/// With [`PROJECTED_DUMP_VAR`] set: writes `rows` (`n × dim`, native-endian f32) to
/// `{folder}/{bank}-{n}x{dim}-m{m}.f32`.
fn dump_projected(bank: &str, rows: &[f32], n: usize, dim: usize, m: usize) -> Result<()> {
    let Some(dir) = std::env::var_os(PROJECTED_DUMP_VAR) else {
        return Ok(());
    };
    let path = Path::new(&dir).join(format!("{bank}-{n}x{dim}-m{m}.f32"));
    std::fs::write(&path, bytemuck::cast_slice(rows)).map_err(|e| Error::io(&path, e))
}

/// Runs the fit (module doc). `base` carries the model identity and category.
pub fn fit(
    pool: &Pool,
    ex: &mut dyn FeatureExtractor,
    base: BankConfig,
    opts: &FitOptions,
    svm: &SvmTrainer<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted> {
    let layout = ex.layout();
    let parts = ex.parts();
    if parts == 0 {
        return Err(Error::Config("fit: no training parts".into()));
    }
    if !(opts.coreset_ratio > 0.0 && opts.coreset_ratio <= 1.0) {
        return Err(Error::Config(format!(
            "coreset ratio {} is not in (0, 1]",
            opts.coreset_ratio
        )));
    }
    if !(0.0..1.0).contains(&opts.frr) {
        return Err(Error::Config(format!(
            "false-reject rate {} is not in [0, 1)",
            opts.frr
        )));
    }
    let used = opts.variant.banks();
    let shapes = layout.bank_shapes();
    let offsets = layout.offsets();
    let plen = layout.part_len();
    let tag = format!("miad-fit-{}", std::process::id());
    let mut clock = PhaseClock::new();

    // 1. Extract to the scratch file.
    let feats = ScratchFile::create(&opts.scratch_dir, &format!("{tag}.features"), parts * plen)?;
    ex.extract_all(&feats, &mut |done| {
        progress(Progress::Extract { done, total: parts })
    })?;
    clock.end("features".into(), parts, "parts");
    let all = feats.as_slice();
    let row = |b: usize, p: usize, r: usize| -> &[f32] {
        let (_, d) = shapes[b];
        let s = p * plen + offsets[b] + r * d;
        &all[s..s + d]
    };

    let mut cfg = base;
    cfg.variant = opts.variant;
    cfg.rgb_grid = layout.rgb_grid as u32;
    cfg.xyz_grid = layout.xyz_grid as u32;
    cfg.map_size = opts.map_size as u32;
    cfg.blur_sigma = opts.blur_sigma;
    cfg.score_weights = opts.score_weights;

    // 2–3. Normalisation and coreset per bank.
    let mut norms = [FeatureNorm::default(); 3];
    let mut bank_data: [Vec<f32>; 3] = Default::default();
    let mut origins: [Vec<u32>; 3] = Default::default();
    for b in 0..3 {
        if !used[b] {
            continue;
        }
        let (rows, d) = shapes[b];
        let keep = |p: usize, r: usize| b != XYZ || row(b, p, r).iter().any(|v| *v != 0.0);
        // Candidate rows (part, row) in order, and which of them are the first of their
        // part's bit-equal rows (`distinct`, indices into `cand`).
        let mut cand: Vec<(u32, u32)> = Vec::new();
        let mut distinct: Vec<u32> = Vec::new();
        let mut slots = vec![0u32; row_table_len(rows)];
        let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0u64);
        for p in 0..parts {
            let mut table = RowTable::new(&mut slots, rows);
            for r in 0..rows {
                if keep(p, r) {
                    if table
                        .find_or_insert(row(b, p, r), r, |k| row(b, p, k))
                        .is_none()
                    {
                        distinct.push(cand.len() as u32);
                    }
                    cand.push((p as u32, r as u32));
                    for &v in row(b, p, r) {
                        sum += v as f64;
                        sum2 += (v as f64) * (v as f64);
                    }
                    count += d as u64;
                }
            }
        }
        let norm = if count > 1 {
            let mean = sum / count as f64;
            let var = ((sum2 - count as f64 * mean * mean) / (count - 1) as f64).max(0.0);
            let std = var.sqrt();
            FeatureNorm {
                mean: mean as f32,
                std: if std > 0.0 { std as f32 } else { 1.0 },
            }
        } else {
            FeatureNorm::default()
        };
        norms[b] = norm;
        let n = cand.len();
        let m = ((n as f64 * opts.coreset_ratio - 1e-9).ceil() as usize).clamp(n.min(1), n.max(1));
        // The greedy selection over the distinct rows only: an equal row later in its part
        // has the same distance to every centre as the first, which wins its ties (lower
        // index), so the selection is the same. Not when the centres outnumber the distinct
        // rows (then duplicates are selected too).
        if distinct.len() < m {
            distinct = (0..n as u32).collect();
        }
        let nd = distinct.len();
        let selected: Vec<u32> = if n == 0 {
            Vec::new()
        } else {
            let k = coreset::jl_min_dim(n, opts.coreset_eps);
            let (pd, r) = if k > 0 && k < d {
                (
                    k,
                    Some(coreset::projection_matrix(k, d, opts.seed ^ b as u64)),
                )
            } else {
                (d, None)
            };
            let mut proj = ScratchFile::create(
                &opts.scratch_dir,
                &format!("{tag}.proj{b}"),
                coreset::tiled_len(nd, pd),
            )?;
            let out = proj.as_mut_slice();
            let chunk = 4096;
            let mut buf = vec![0f32; chunk.min(nd) * d];
            let inv = 1.0 / norm.std;
            let mut c0 = 0;
            while c0 < nd {
                let cn = chunk.min(nd - c0);
                for (i, &c) in distinct[c0..c0 + cn].iter().enumerate() {
                    let (p, r) = cand[c as usize];
                    for (o, v) in buf[i * d..(i + 1) * d]
                        .iter_mut()
                        .zip(row(b, p as usize, r as usize))
                    {
                        *o = (v - norm.mean) * inv;
                    }
                }
                let dst = &mut out[c0 * pd..(c0 + cn) * pd];
                match &r {
                    Some(r) => coreset::project_rows(pool, &buf[..cn * d], d, r, pd, dst),
                    None => dst.copy_from_slice(&buf[..cn * d]),
                }
                c0 += cn;
                progress(Progress::Coreset {
                    bank: BANK_NAMES[b],
                    done: c0,
                    total: nd,
                });
            }
            clock.end(
                format!(
                    "stats+project {} ({n} × {pd}, {nd} distinct)",
                    BANK_NAMES[b]
                ),
                n,
                "rows",
            );
            let bank = BANK_NAMES[b];
            dump_projected(bank, &proj.as_slice()[..nd * pd], nd, pd, m)?;
            let mut report = |done, total| progress(Progress::Select { bank, done, total });
            let sel = greedy_selection(
                pool,
                opts.backend,
                proj.as_mut_slice(),
                nd,
                pd,
                m,
                &mut report,
            );
            clock.end(
                format!("coreset {} ({nd} distinct of {n} → {m})", BANK_NAMES[b]),
                m,
                "centres",
            );
            sel.iter().map(|&s| distinct[s as usize]).collect()
        };
        let extra = usize::from(b == XYZ);
        let mut data = Vec::with_capacity((selected.len() + extra) * d);
        let mut org = Vec::with_capacity(selected.len() + extra);
        let inv = 1.0 / norm.std;
        for &s in &selected {
            let (p, r) = cand[s as usize];
            data.extend(
                row(b, p as usize, r as usize)
                    .iter()
                    .map(|v| (v - norm.mean) * inv),
            );
            org.push(p);
        }
        if b == XYZ {
            data.extend(std::iter::repeat_n(-norm.mean * inv, d));
            org.push(u32::MAX);
        }
        bank_data[b] = data;
        origins[b] = org;
    }
    cfg.xyz_norm = norms[XYZ];
    cfg.rgb_norm = norms[RGB];
    cfg.fused_norm = norms[FUSED];
    let mut bank_norms: [Vec<f32>; 3] = Default::default();
    for b in 0..3 {
        let d = shapes[b].1;
        let rows = bank_data[b].len() / d;
        bank_norms[b] = vec![0f32; rows];
        sq_norms(&bank_data[b], d, &mut bank_norms[b]);
    }
    cfg.xyz_rows = (bank_data[XYZ].len() / shapes[XYZ].1) as u32;
    cfg.rgb_rows = (bank_data[RGB].len() / shapes[RGB].1) as u32;
    cfg.fused_rows = (bank_data[FUSED].len() / shapes[FUSED].1) as u32;
    cfg.xyz_dim = shapes[XYZ].1 as u32;
    cfg.rgb_dim = shapes[RGB].1 as u32;
    cfg.fused_dim = shapes[FUSED].1 as u32;

    // The partitions of the pruned search (stored in the file for inspection; the
    // neighbour tables are searched through them too).
    let mut partitions: [Option<BankPartition>; 3] = Default::default();
    for b in 0..3 {
        if bank_data[b].is_empty() {
            continue;
        }
        let view = BankView::new(&bank_data[b], &bank_norms[b], shapes[b].1);
        let k = BankPartition::clusters_for(view.n);
        partitions[b] = BankPartition::build(pool, view, k);
        clock.end(
            format!("partition {} ({k} clusters)", BANK_NAMES[b]),
            view.n,
            "rows",
        );
    }

    // 4. The neighbour tables of the re-weighting (SPEC §7), stored in the file.
    let mut bank_tables: [Option<Vec<u32>>; 3] = Default::default();
    for b in 0..3 {
        if bank_data[b].is_empty() {
            continue;
        }
        let view = BankView::new(&bank_data[b], &bank_norms[b], shapes[b].1);
        let bank = BANK_NAMES[b];
        let mut report = |done, total| progress(Progress::Neighbours { bank, done, total });
        // A bank with a non-finite value gets no table (the scan keeps its NaN handling).
        // The partition's search gives the same table, computing fewer distances.
        let table = match partitions[b].as_ref().and_then(|p| p.view(&view).ok()) {
            Some(part) => neighbour_table_pruned(pool, view, part, &mut report),
            None => neighbour_table(pool, view, &mut report),
        };
        bank_tables[b] = table.map(|t| t.rows);
        clock.end(format!("neighbours {bank}"), view.n, "rows");
    }

    // 5. Leave-one-out training scores (the scan: the tables hold the neighbours in the
    // whole bank, not in the bank without the part's own rows), then the RADAR cases.
    let set = BankSet {
        banks: std::array::from_fn(|b| {
            (!bank_data[b].is_empty()).then(|| {
                let mut view = BankView::new(&bank_data[b], &bank_norms[b], shapes[b].1);
                if let Some(t) = &bank_tables[b] {
                    view = view.with_neighbours(t);
                }
                if let Some(p) = partitions[b].as_ref().filter(|_| opts.prune_search) {
                    // Built from this very bank: its arrays are a partition of it.
                    if let Ok(p) = p.view(&view) {
                        view = view.with_partition(p);
                    }
                }
                view
            })
        }),
        norms,
        grids: [layout.xyz_grid, layout.rgb_grid, layout.xyz_grid],
    };
    // Leave-one-out: part `p`'s own bank rows are masked when it is scored.
    let own_rows = |p: usize| -> [Option<(&[u32], u32)>; 3] {
        std::array::from_fn(|b| used[b].then(|| (origins[b].as_slice(), p as u32)))
    };
    let mut scorer = Scorer::new(&cfg, &set, pool.threads());
    scorer.set_svms([1.0; 3], [1.0; 3]);
    let s2 = opts.map_size * opts.map_size;
    let mut scratch = vec![0f32; scorer.scratch_len()];
    // Every part's three bank maps, kept for the pixel threshold below: the maps do not
    // depend on the decision layers, so the parts are searched once.
    let mut part_maps = ScratchFile::create(
        &opts.scratch_dir,
        &format!("{tag}.bankmaps"),
        parts * 3 * s2,
    )?;
    let mut vectors = Vec::with_capacity(parts);
    let stride = ((parts * s2) / opts.pixel_samples.max(1)).max(1);
    let mut pixels: Vec<[f32; 3]> = Vec::new();
    let w = opts.score_weights;
    for p in 0..parts {
        let f = bank_slices(&all[p * plen..(p + 1) * plen], used, shapes, offsets);
        let excl = own_rows(p);
        let bank_maps = &mut part_maps.as_mut_slice()[p * 3 * s2..(p + 1) * 3 * s2];
        let sc = scorer.score(pool, &set, f, excl, bank_maps, None, &mut scratch)?;
        vectors.push(sc.vector);
        for px in 0..s2 {
            let v: [f32; 3] = std::array::from_fn(|b| w[b] * bank_maps[b * s2 + px]);
            if (p * s2 + px).is_multiple_of(stride) {
                pixels.push(v);
            }
        }
        progress(Progress::Score {
            done: p + 1,
            total: parts,
        });
    }
    clock.end("scoring (leave-one-out)".into(), parts, "parts");
    // Pairs of every patch with every row, against those computed: equal patches are
    // searched once, and the partition skips most pairs of the rest.
    let searched = scorer.searched_patches();
    let search_pairs = std::array::from_fn(|b| {
        let rows = bank_norms[b].len() as u64;
        let all = (parts * shapes[b].0) as u64 * rows;
        match partitions[b].as_ref().filter(|_| opts.prune_search) {
            Some(p) => (all, p.pair_counts().1),
            None => (all, searched[b] * rows),
        }
    });

    // 5. Decision layers.
    cfg.part_svm = svm(&vectors)?;
    cfg.pixel_svm = svm(&pixels)?;
    let dot = |w: &[f32; 3], v: &[f32; 3]| w[0] * v[0] + w[1] * v[1] + w[2] * v[2];
    let train_scores: Vec<f32> = vectors.iter().map(|v| dot(&cfg.part_svm.w, v)).collect();

    // 6. Thresholds. The pixel threshold uses each part's final map maximum (after the
    // pixel SVM), fused from the bank maps of the scoring pass with the trained layers.
    let mut map = vec![0f32; s2];
    scorer.set_svms(cfg.part_svm.w, cfg.pixel_svm.w);
    let pixel_max: Vec<f32> = part_maps
        .as_slice()
        .chunks_exact(3 * s2)
        .map(|bank_maps| {
            scorer.pixel_map(bank_maps, &mut map);
            map.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    drop(part_maps);
    clock.end("decision layers, thresholds".into(), parts, "parts");
    let (mean, std, max) = calibrate::stats(&train_scores);
    cfg.thresholds = Thresholds {
        part: calibrate::reject_quantile(&train_scores, opts.frr),
        pixel: calibrate::reject_quantile(&pixel_max, opts.frr),
        grey_band: None,
        false_reject_rate: opts.frr,
        train_score_mean: mean,
        train_score_std: std,
        train_score_max: max,
        train_parts: parts as u32,
    };
    cfg.fit = FitInfo {
        parts: parts as u32,
        coreset_ratio: opts.coreset_ratio as f32,
        coreset_seed: opts.seed,
        scoring: "leave-one-out (own bank rows masked)".into(),
        extra: Vec::new(),
    };
    let mut tensors = Vec::new();

    // 7. RADAR: per-case statistics from the training parts with a modality removed,
    // scored leave-one-out like the complete parts.
    if opts.radar {
        let mut buf = vec![0f32; plen];
        let mut case_maps = ScratchFile::create(
            &opts.scratch_dir,
            &format!("{tag}.casemaps"),
            parts * 3 * s2,
        )?;
        // Scores and maps of an incomplete part are mapped affinely onto the complete
        // parts' training distribution (same mean and spread), so that one table of
        // scores, and one metric over all parts, compares parts of different cases.
        let affine = |from: (f32, f32), to: (f32, f32)| -> [f32; 2] {
            let a = if from.1 > 0.0 { to.1 / from.1 } else { 1.0 };
            [a, to.0 - a * from.0]
        };
        let (ref_mean, ref_std, _) = calibrate::stats(&train_scores);
        let pc: [f32; 3] = std::array::from_fn(|b| cfg.pixel_svm.w[b]);
        let ref_pixels: Vec<f32> = pixels
            .iter()
            .map(|v| pc[0] * v[0] + pc[1] * v[1] + pc[2] * v[2])
            .collect();
        let (ref_pmean, ref_pstd, _) = calibrate::stats(&ref_pixels);
        'cases: for (case, drop, dropped_bank) in [
            ("rgb_only", MissingModality::Cloud, XYZ),
            ("cloud_only", MissingModality::Rgb, RGB),
        ] {
            let mut vecs: Vec<f64> = Vec::with_capacity(3 * parts);
            let mut case_pixels: Vec<[f32; 3]> = Vec::new();
            for p in 0..parts {
                {
                    let (xyz, rest) = buf.split_at_mut(offsets[1]);
                    let (rgb, fused) = rest.split_at_mut(offsets[2] - offsets[1]);
                    if !ex.extract_without(p, drop, xyz, rgb, fused)? {
                        break 'cases;
                    }
                }
                let f = bank_slices(&buf, used, shapes, offsets);
                let excl = own_rows(p);
                scorer.set_svms([1.0; 3], [1.0; 3]);
                let stored = &mut case_maps.as_mut_slice()[p * 3 * s2..(p + 1) * 3 * s2];
                let sc = scorer.score(pool, &set, f, excl, stored, None, &mut scratch)?;
                let v = super::radar::informative(dropped_bank, sc.vector);
                vecs.extend(v.iter().map(|&x| x as f64));
                // The dropped modality's own bank only sees the constant pseudo input:
                // its map carries no information about this part, so it gets no weight.
                let wk = super::radar::informative(dropped_bank, w);
                for px in (0..s2).filter(|px| (p * s2 + px).is_multiple_of(stride)) {
                    case_pixels.push(std::array::from_fn(|b| wk[b] * stored[b * s2 + px]));
                }
                progress(Progress::Case {
                    case,
                    done: p + 1,
                    total: parts,
                });
            }
            let stats = super::radar::CaseStats::fit(&vecs, 3, opts.radar_ridge)
                .map_err(|e| Error::Config(format!("RADAR {case} statistics: {e}")))?;
            let dists: Vec<f32> = vecs
                .chunks_exact(3)
                .map(|v| stats.mahalanobis(v) as f32)
                .collect();
            let mut pixel = svm(&case_pixels)?;
            pixel.w = super::radar::informative(dropped_bank, pixel.w);
            let maps = case_maps.as_slice();
            let c: [f32; 3] = std::array::from_fn(|b| pixel.w[b] * w[b]);
            let sampled: Vec<f32> = case_pixels
                .iter()
                .map(|v| pixel.w[0] * v[0] + pixel.w[1] * v[1] + pixel.w[2] * v[2])
                .collect();
            let (pm, ps, _) = calibrate::stats(&sampled);
            let (dm, ds, _) = calibrate::stats(&dists);
            let score_affine = affine((dm, ds), (ref_mean, ref_std));
            let map_affine = affine((pm, ps), (ref_pmean, ref_pstd));
            let maxima: Vec<f32> = (0..parts)
                .map(|p| {
                    let m = &maps[p * 3 * s2..(p + 1) * 3 * s2];
                    (0..s2)
                        .map(|i| c[0] * m[i] + c[1] * m[s2 + i] + c[2] * m[2 * s2 + i])
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .collect();
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let name = |field: &str| format!("radar.{case}.{field}");
            tensors.push((name("mean"), vec![3], f32s(&stats.mean)));
            tensors.push((name("precision"), vec![3, 3], f32s(&stats.inv_cov)));
            let aligned = |v: f32, [a, b]: [f32; 2]| a * v + b;
            tensors.push((
                name("threshold"),
                vec![1],
                vec![aligned(
                    calibrate::reject_quantile(&dists, opts.frr),
                    score_affine,
                )],
            ));
            tensors.push((name("pixel_w"), vec![3], pixel.w.to_vec()));
            tensors.push((
                name("pixel_threshold"),
                vec![1],
                vec![aligned(
                    calibrate::reject_quantile(&maxima, opts.frr),
                    map_affine,
                )],
            ));
            tensors.push((name("score_affine"), vec![2], score_affine.to_vec()));
            tensors.push((name("map_affine"), vec![2], map_affine.to_vec()));
        }
    }

    let mut tables = Vec::new();
    for b in 0..3 {
        if let Some(t) = bank_tables[b].take() {
            let rows = t.len() / TABLE_NEIGHBOURS;
            tables.push((neighbour_table_name(b), vec![rows, TABLE_NEIGHBOURS], t));
        }
        if bank_data[b].is_empty() {
            continue;
        }
        let d = shapes[b].1;
        let rows = bank_data[b].len() / d;
        tensors.push((
            format!("bank.{}_norms", BANK_NAMES[b]),
            vec![rows],
            std::mem::take(&mut bank_norms[b]),
        ));
        tensors.push((
            format!("bank.{}", BANK_NAMES[b]),
            vec![rows, d],
            std::mem::take(&mut bank_data[b]),
        ));
    }
    if opts.radar {
        clock.end("radar cases".into(), 2 * parts, "parts");
    }
    progress(Progress::Done);
    Ok(Fitted {
        config: cfg,
        tensors,
        tables,
        partitions,
        train_scores,
        peak_rss_kib: peak_rss_kib(),
        phases: clock.phases,
        search_pairs,
    })
}
