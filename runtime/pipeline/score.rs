//! Scoring one part against all banks of a bank file and fusing the decisions
//! (SPEC §6–8): normalise each modality's patch features with its bank's scalars, search
//! the bank (re-weighted image score and patch-grid distance map), upsample and blur the
//! map, then the score vector `a = (w_x·s_xyz, w_r·s_rgb, w_f·s_fused)`, the part score
//! `part_svm.w · a` and the pixel map `pixel_svm.w · (w_x·m_xyz, w_r·m_rgb, w_f·m_fused)`.
//!
//! Used by inspection and evaluation, and by `fit` (with the part's own bank rows
//! excluded). The decision rules themselves live in [`super::decide`].
//! Planned: [`Scorer::scratch_len`] floats, no allocation per part.

use super::decide::{fuse_map, linear_part_score};
use crate::config::{BankConfig, FeatureNorm};
use crate::cpu::bank_prune::{nearest_pruned, pruned_scratch_len, BankPartition, PartitionView};
use crate::cpu::bank_search::{self, BankScore, BankView, SearchForm, TABLE_NEIGHBOURS};
use crate::cpu::maps;
use crate::cpu::pool::Pool;
use crate::format::{BankFile, FormatError, Writer};
pub use crate::types::{BANK_NAMES, FUSED, RGB, XYZ};
use crate::util::row_table::{row_table_len, RowTable};
use std::cell::Cell;

/// The banks of one bank file (any of them may be absent), borrowed.
#[derive(Clone, Copy, Debug)]
pub struct BankSet<'a> {
    pub banks: [Option<BankView<'a>>; 3],
    pub norms: [FeatureNorm; 3],
    /// Patch grid side of each bank's features.
    pub grids: [usize; 3],
}

impl<'a> BankSet<'a> {
    /// Views of `bank.{xyz,rgb,fused}`, `bank.*_norms` and, where the file has them (fits
    /// since they were added), the neighbour table `bank.*_neighbours` and the partition
    /// of the pruned search ([`partition_names`]), all read in place.
    pub fn from_file(file: &'a BankFile) -> Result<Self, FormatError> {
        let c = file.config();
        let rows = [c.xyz_rows, c.rgb_rows, c.fused_rows];
        let dims = [c.xyz_dim, c.rgb_dim, c.fused_dim];
        let mut banks = [None; 3];
        for b in 0..3 {
            if rows[b] > 0 {
                let (n, d) = (rows[b] as usize, dims[b] as usize);
                let data = file.typed::<f32>(&format!("bank.{}", BANK_NAMES[b]), Some(&[n, d]))?;
                let norms =
                    file.typed::<f32>(&format!("bank.{}_norms", BANK_NAMES[b]), Some(&[n]))?;
                let view = BankView::new(data, norms, d);
                let table = neighbour_table_name(b);
                let mut view = if file.container().entry(&table).is_some() {
                    view.with_neighbours(file.typed::<u32>(&table, Some(&[n, TABLE_NEIGHBOURS]))?)
                } else {
                    view
                };
                let [order, starts, radii, basis, records] = partition_names(b);
                if file.container().entry(&order).is_some() {
                    let invalid = |e: String| FormatError::InvalidManifest {
                        path: file.path().to_path_buf(),
                        reason: format!("bank {} partition: {e}", BANK_NAMES[b]),
                    };
                    let radii = file.typed::<f32>(&radii, None)?;
                    let starts = file.typed::<u32>(&starts, Some(&[radii.len() + 1]))?;
                    let order = file.typed::<u32>(&order, Some(&[n]))?;
                    let mut part =
                        PartitionView::new(&view, order, starts, radii).map_err(invalid)?;
                    // Files fitted before the projection bound have the cluster bound only.
                    if file.container().entry(&basis).is_some() {
                        let basis = file.typed::<f32>(&basis, None)?;
                        let records = file.typed::<f32>(&records, None)?;
                        part = part
                            .with_projection(&view, basis, records)
                            .map_err(invalid)?;
                    }
                    view = view.with_partition(part);
                }
                banks[b] = Some(view);
            }
        }
        Ok(BankSet {
            banks,
            norms: [c.xyz_norm, c.rgb_norm, c.fused_norm],
            grids: [
                c.xyz_grid as usize,
                c.rgb_grid as usize,
                c.xyz_grid as usize,
            ],
        })
    }
}

impl BankSet<'_> {
    /// The same banks without their partitions: the scorer then runs the unpruned search.
    pub fn without_partitions(mut self) -> Self {
        for v in self.banks.iter_mut().flatten() {
            v.partition = None;
        }
        self
    }
}

/// The bank file's tensors holding bank `b`'s partition for the pruned search
/// ([`crate::cpu::bank_prune`]): the rows in cluster order (`rows` u32), where each
/// cluster starts (`clusters + 1` u32) and each cluster's radius (`clusters` f32); the
/// centres are the bank's first `clusters` rows. Then, optional (fits since the
/// projection bound, banks of ≥ 64 values), the projection bound
/// ([`crate::cpu::bank_proj`]): its basis (`dim × 33` f32: per coordinate the mean,
/// then 32 directions) and one record per row in cluster order (`rows × 36` f32). Bank files
/// written before them have none; the search is then the unpruned one (no partition) or
/// the cluster bound alone (no projection).
pub fn partition_names(b: usize) -> [String; 5] {
    let n = BANK_NAMES[b];
    [
        format!("bank.{n}_cluster_order"),
        format!("bank.{n}_cluster_starts"),
        format!("bank.{n}_cluster_radii"),
        format!("bank.{n}_cluster_proj_basis"),
        format!("bank.{n}_cluster_proj_rows"),
    ]
}

/// Adds bank `b`'s partition (of a bank of `dim` values per row) to a bank file being
/// written, under [`partition_names`] (the one place that lays a partition out in a file).
pub fn add_partition(w: &mut Writer, b: usize, p: &BankPartition, dim: usize) {
    let [order, starts, radii, basis, records] = partition_names(b);
    let n = p.order.len();
    w.add_typed(order, &[n], &p.order);
    w.add_typed(starts, &[p.clusters() + 1], &p.starts);
    w.add_f32(radii, &[p.clusters()], &p.radii);
    if let Some(proj) = &p.projection {
        w.add_f32(basis, &[dim, proj.basis.len() / dim.max(1)], &proj.basis);
        w.add_f32(records, &[n, proj.rows.len() / n.max(1)], &proj.rows);
    }
}

/// The bank file's tensor holding bank `b`'s neighbour table
/// ([`bank_search::neighbour_table`]: `rows × 2` u32, the re-weighting's b_1, b_2 of
/// every row). Bank files written before it have none; the re-weighting then scans the
/// bank for the 3 nearest rows of m* on every part.
pub fn neighbour_table_name(b: usize) -> String {
    format!("bank.{}_neighbours", BANK_NAMES[b])
}

/// One part's scores.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PartScores {
    /// Per bank (xyz, rgb, fused): the re-weighted image score, 0 when absent.
    pub bank: [f32; 3],
    /// The weighted score vector `a`.
    pub vector: [f32; 3],
    /// Final part score `part_svm.w · a`.
    pub score: f32,
}

/// A nearest-bank-row search that runs outside the CPU backend (the CUDA backend's bank
/// search). For bank `bank` (score-vector order) and the part's normalised patch
/// features `x` (`n × dim`), fills `dist[..n]` with the Euclidean distance to the nearest
/// bank row and `index[..n]` with that row, exactly as [`bank_search::nearest`] does.
pub trait NearestSearch {
    fn nearest(
        &mut self,
        bank: usize,
        x: &[f32],
        dist: &mut [f32],
        index: &mut [u32],
    ) -> crate::Result<()>;
}

/// Plans and runs the scoring of parts against a [`BankSet`].
#[derive(Clone, Debug)]
pub struct Scorer {
    map_size: usize,
    sigma: f32,
    weights: [f32; 3],
    part_w: [f32; 3],
    pixel_w: [f32; 3],
    threads: usize,
    max_rows: usize,
    max_dim: usize,
    max_feat: usize,
    max_patches: usize,
    /// Scratch of the pruned search of the banks with a partition (0: none has one).
    pruned_len: usize,
    /// The CPU search's arithmetic (f32 unless [`Scorer::use_bf16_search`]).
    search: SearchForm,
    /// Per bank: parts left to search in f32 before the bf16 search is tried again
    /// ([`BF16_RETRY_PARTS`]).
    bf16_rest: [Cell<u32>; 3],
    /// Per bank: the patches searched so far (equal patches of a part count once).
    searched: [Cell<u64>; 3],
}

/// Parts a bank is searched in f32 after a part on which the bf16 search did not pay
/// (more than half of its queries scanned the bank in f32 after the bf16 pass): then the
/// bf16 search is tried again. Either search gives the same bits; this only picks the
/// faster one for the features at hand (on M3DM's features the worst-case bf16 bound is
/// wider than the gaps between nearest rows: bench/results/cpu-banksearch-2026-12-07.md).
pub const BF16_RETRY_PARTS: u32 = 64;

impl Scorer {
    pub fn new(cfg: &BankConfig, set: &BankSet<'_>, threads: usize) -> Self {
        let mut max_rows = 1;
        let mut max_dim = 1;
        let mut max_feat = 1;
        let mut max_patches = 1;
        let mut pruned_len = 0;
        for b in 0..3 {
            if let Some(v) = &set.banks[b] {
                max_rows = max_rows.max(v.n);
                max_dim = max_dim.max(v.dim);
                let p = set.grids[b] * set.grids[b];
                max_patches = max_patches.max(p);
                max_feat = max_feat.max(p * v.dim);
                if let Some(part) = &v.partition {
                    let len = pruned_scratch_len(threads, p, v.dim, part.clusters());
                    pruned_len = pruned_len.max(len);
                }
            }
        }
        Scorer {
            map_size: cfg.map_size as usize,
            sigma: cfg.blur_sigma,
            weights: cfg.score_weights,
            part_w: cfg.part_svm.w,
            pixel_w: cfg.pixel_svm.w,
            threads,
            max_rows,
            max_dim,
            max_feat,
            max_patches,
            pruned_len,
            search: SearchForm::F32,
            bf16_rest: Default::default(),
            searched: Default::default(),
        }
    }

    /// Whether bank `b`'s next search is the bf16 one (counts down the f32 parts).
    fn bf16_turn(&self, b: usize) -> bool {
        let rest = self.bf16_rest[b].get();
        if rest > 0 {
            self.bf16_rest[b].set(rest - 1);
        }
        self.search == SearchForm::Bf16 && rest == 0
    }

    /// Searches the banks through [`bank_search::nearest_bf16`] (the same rows and
    /// distance bits as the f32 search) when this CPU has AVX512-BF16; returns whether
    /// it will. A bank on which it does not pay goes back to f32 for
    /// [`BF16_RETRY_PARTS`] parts. The fit's leave-one-out scoring (with `exclude`) and
    /// banks with a partition in use stay f32. Call before sizing the scratch
    /// ([`Scorer::scratch_len`]).
    pub fn use_bf16_search(&mut self) -> bool {
        if bank_search::bf16_search_available() {
            self.search = SearchForm::Bf16;
        }
        self.search == SearchForm::Bf16
    }

    /// The CPU search's arithmetic.
    pub fn search_form(&self) -> SearchForm {
        self.search
    }

    /// Per bank, the patches searched so far: the distinct patches of each part.
    pub fn searched_patches(&self) -> [u64; 3] {
        std::array::from_fn(|b| self.searched[b].get())
    }

    /// Parts bank `b` is still searched in f32 before the bf16 search is tried again.
    pub fn bf16_parts_left(&self, b: usize) -> u32 {
        self.bf16_rest[b].get()
    }

    /// Floats of the nearest-row search's scratch (the f32 search's always fits: it runs
    /// with `exclude`).
    fn nearest_len(&self) -> usize {
        let f32_len = bank_search::nearest_scratch_len(self.threads).max(self.pruned_len);
        match self.search {
            SearchForm::F32 => f32_len,
            SearchForm::Bf16 => f32_len.max(bank_search::nearest_bf16_scratch_len(
                self.threads,
                self.max_dim,
            )),
        }
    }

    /// Floats of the bank search's scratch: the nearest-row search, then the k-nearest
    /// scan of the re-weighting.
    fn search_len(&self) -> usize {
        self.nearest_len() + bank_search::knn_scratch_len(self.max_rows, 3)
    }

    /// Uses these decision layers instead of the configuration's (fit trains them after
    /// scoring).
    pub fn set_svms(&mut self, part_w: [f32; 3], pixel_w: [f32; 3]) {
        self.part_w = part_w;
        self.pixel_w = pixel_w;
    }

    /// Floats of scratch [`Scorer::score`] needs.
    pub fn scratch_len(&self) -> usize {
        self.max_feat
            + 3 * self.max_patches
            + row_table_len(self.max_patches)
            + self.search_len()
            + maps::map_scratch_len(self.map_size)
    }

    pub fn map_size(&self) -> usize {
        self.map_size
    }

    /// Scores one part. `feats` holds the raw (unnormalised) patch features per bank in
    /// score-vector order (xyz, rgb, fused); an entry may be empty when its bank is absent.
    /// `bank_maps` receives the three per-bank `S×S` maps (absent banks: zeros), `map`
    /// the fused pixel map. `exclude` skips bank rows of origin `id` (fit only).
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &self,
        pool: &Pool,
        set: &BankSet<'_>,
        feats: [&[f32]; 3],
        exclude: [Option<(&[u32], u32)>; 3],
        bank_maps: &mut [f32],
        map: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> crate::Result<PartScores> {
        self.score_with(pool, None, set, feats, exclude, bank_maps, map, scratch)
    }

    /// [`Scorer::score`] with the nearest-row search of every bank done by `search` when
    /// given (the CUDA backend); its error, if any, is returned.
    #[allow(clippy::too_many_arguments)]
    pub fn score_with(
        &self,
        pool: &Pool,
        mut search: Option<&mut dyn NearestSearch>,
        set: &BankSet<'_>,
        feats: [&[f32]; 3],
        exclude: [Option<(&[u32], u32)>; 3],
        bank_maps: &mut [f32],
        map: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> crate::Result<PartScores> {
        let s2 = self.map_size * self.map_size;
        let (norm_buf, rest) = scratch.split_at_mut(self.max_feat);
        let (dmap, rest) = rest.split_at_mut(self.max_patches);
        let (nn_f, rest) = rest.split_at_mut(self.max_patches);
        let nn: &mut [u32] = bytemuck::cast_slice_mut(nn_f);
        let (rep_f, rest) = rest.split_at_mut(self.max_patches);
        let rep: &mut [u32] = bytemuck::cast_slice_mut(rep_f);
        let (table_f, rest) = rest.split_at_mut(row_table_len(self.max_patches));
        let table: &mut [u32] = bytemuck::cast_slice_mut(table_f);
        let (cpu_search, map_scratch) = rest.split_at_mut(self.search_len());
        let mut out = PartScores::default();
        for b in 0..3 {
            let m = &mut bank_maps[b * s2..(b + 1) * s2];
            let Some(view) = set.banks[b] else {
                m.fill(0.0);
                continue;
            };
            let f = feats[b];
            let n = f.len() / view.dim;
            let xb = &mut norm_buf[..f.len()];
            let FeatureNorm { mean, std } = set.norms[b];
            let inv = 1.0 / std;
            for (o, v) in xb.iter_mut().zip(f) {
                *o = (v - mean) * inv;
            }
            // Equal patches have equal answers: only the first of each is searched (not
            // on the device, whose search replays a graph planned for every patch).
            let on_device = search.is_some() && exclude[b].is_none();
            let u = if on_device {
                n
            } else {
                dedupe_rows(xb, view.dim, &mut rep[..n], table)
            };
            self.searched[b].set(self.searched[b].get() + u as u64);
            let xb = &xb[..u * view.dim];
            // The nearest rows, by the device's search, the pruned search (f32) where the
            // bank has a partition in use, the bf16 search where it pays, else f32.
            let (near, knn_scratch) = cpu_search.split_at_mut(self.nearest_len());
            let (d, i) = (&mut dmap[..u], &mut nn[..u]);
            match (search.as_deref_mut(), view.partition) {
                (Some(device), _) if exclude[b].is_none() => device.nearest(b, xb, d, i)?,
                (_, Some(part)) => nearest_pruned(pool, xb, view, part, exclude[b], d, i, near),
                _ if exclude[b].is_none() && self.bf16_turn(b) => {
                    let scans = bank_search::nearest_bf16(pool, xb, view, d, i, near);
                    if 2 * scans > u {
                        self.bf16_rest[b].set(BF16_RETRY_PARTS);
                    }
                }
                _ => bank_search::nearest(pool, xb, view, exclude[b], d, i, near),
            }
            let BankScore { score, .. } = bank_search::reweighted_score(
                pool,
                xb,
                view,
                exclude[b],
                &dmap[..u],
                &nn[..u],
                knn_scratch,
            );
            // Back to one distance per patch; rep[j] ≤ j, so from the end in place.
            if u < n {
                for j in (0..n).rev() {
                    dmap[j] = dmap[rep[j] as usize];
                }
            }
            maps::anomaly_map(
                &dmap[..n],
                set.grids[b],
                self.map_size,
                self.sigma,
                m,
                map_scratch,
            );
            out.bank[b] = score;
            out.vector[b] = self.weights[b] * score;
        }
        out.score = linear_part_score(&self.part_w, &out.vector);
        if let Some(map) = map {
            self.pixel_map(bank_maps, &mut map[..s2]);
        }
        Ok(out)
    }

    /// The fused pixel map (`map_size²` values) of a part's three per-bank maps as
    /// [`Scorer::score`] leaves them in `bank_maps`, with the current pixel layer: what
    /// `score` writes to its `map` (the fit reuses the maps of its scoring pass).
    pub fn pixel_map(&self, bank_maps: &[f32], map: &mut [f32]) {
        let c: [f32; 3] = std::array::from_fn(|b| self.pixel_w[b] * self.weights[b]);
        fuse_map(&c, [1.0, 0.0], bank_maps, map);
    }
}

/// Keeps the first of each set of bit-equal `dim`-rows of `x`, in order, at the front of
/// `x`; `rep[j]` receives the kept index of row `j`'s set. Returns the number kept.
///
/// The score is the same over the kept rows: each row's nearest bank row and distance
/// depend on the row alone, `s*` is the first maximum (the first row of its set comes
/// first) and `x_{j*}` the same values. An M3DM fused grid repeats each RGB cell 2×2 and
/// the background's xyz half is one constant, so 2×2 background blocks are one query; a
/// synthetic part's 3136 fused patches are ≈ 1200 distinct ones.
fn dedupe_rows(x: &mut [f32], dim: usize, rep: &mut [u32], slots: &mut [u32]) -> usize {
    let mut table = RowTable::new(slots, rep.len());
    let mut kept = 0;
    for (j, rep) in rep.iter_mut().enumerate() {
        let row = &x[j * dim..(j + 1) * dim];
        let found = table.find_or_insert(row, kept, |k| &x[k * dim..(k + 1) * dim]);
        *rep = match found {
            Some(k) => k as u32,
            None => {
                // Kept rows move only forward (kept ≤ j): row j is still intact here.
                x.copy_within(j * dim..(j + 1) * dim, kept * dim);
                kept += 1;
                kept as u32 - 1
            }
        };
    }
    kept
}
