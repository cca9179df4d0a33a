//! The post-search stages (kernels/maps.cu), launched as runtime/cuda/ops/maps.rs does:
//!
//! * maps_bank_argmax → maps_bank_knn → maps_bank_finish against
//!   `cpu::bank_search::reweighted_score` (the second half of `score_part`): grid, j*, m*,
//!   s*, weight and score bit-identical (glibc's `exp` on both sides), the 3 nearest rows
//!   of m* (distance bits and index) identical to a direct sort;
//! * maps_upsample, maps_blur_h/_v against `cpu::maps::{upsample_bilinear, gaussian_blur}`:
//!   bit-identical;
//! * maps_part, maps_pixels against `pipeline::decide::Decision` (part score, verdict,
//!   pixel map): bit-identical;
//! * maps_pixels (labels) → maps_label_merge → maps_label_resolve → maps_regions_select →
//!   maps_regions_stats against an independent flood fill (labels, roots, order by (peak
//!   desc, root asc)) and `cpu::regions::find_regions`: everything identical but a
//!   region's mean, within 1e-6 relative (f64 sum in a fixed tree vs flood-fill order).

use miad::config::BankConfig;
use miad::cpu::bank_search::{
    reweighted_score, score_part, score_scratch_len, sq_dist, sq_norms, BankView,
};
use miad::cpu::maps::{gaussian_blur, gaussian_radius, map_scratch_len, upsample_bilinear};
use miad::cpu::pool::Pool;
use miad::cpu::regions::find_regions;
use miad::pipeline::decide::{CaseDecision, Decision};
use miad::types::{Case, InspectOptions, Region, MAX_REGIONS};

use crate::oracles::regions_ref;
use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same, same_bits, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("maps_bank_scores_match_cpu", bank_scores),
    ("maps_upsample_and_blur_match_cpu", upsample_blur),
    ("maps_part_and_pixels_match_decision", decision),
    ("maps_regions_match_cpu", regions),
    ("maps_case_kernels_choose_the_host_layout", case_kernels),
];

// runtime/cuda/ops/maps.rs
const THREADS: u32 = 256;
const SELECT_THREADS: u32 = 1024;
const KNN_CHUNK: usize = 1024;
const KERNEL_MAX_RADIUS: usize = 64;
const NONE: u32 = u32::MAX;

/// `MapBank` / `MapBankArg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MapBank {
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

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MapBanks {
    b: [MapBank; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct BankScoreRec {
    score: f32,
    s_star: f32,
    weight: f32,
    patch: i32,
    nearest: i32,
    found: i32,
    present: i32,
    pad: i32,
}

const POISON_REC: BankScoreRec = BankScoreRec {
    score: f32::NAN,
    s_star: f32::NAN,
    weight: f32::NAN,
    patch: 0x5555,
    nearest: 0x5555,
    found: 0x5555,
    present: 0x5555,
    pad: 0x5555,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct BlurWeights {
    radius: i32,
    w: [f32; 2 * KERNEL_MAX_RADIUS + 1],
}

/// `BlurWeights::new` of runtime/cuda/ops/maps.rs: the CPU blur's taps, computed its way.
fn blur_weights(sigma: f32) -> BlurWeights {
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

#[repr(C)]
#[derive(Clone, Copy)]
struct PixelParams {
    c: [f32; 3],
    affine: [f32; 2],
    threshold: f32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PartParams {
    kind: i32,
    dropped: i32,
    weights: [f32; 3],
    part_w: [f32; 3],
    mean: [f32; 3],
    precision: [f32; 9],
    affine: [f32; 2],
    part_threshold: f32,
    pixel_threshold: f32,
    band: i32,
    band_lo: f32,
    band_hi: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PartDecisionRec {
    score: f32,
    verdict: i32,
    part_threshold: f32,
    pixel_threshold: f32,
    bank: [f32; 3],
    vector: [f32; 3],
}

/// `DecisionParams::from_decision` of runtime/cuda/ops/maps.rs (the cuda module is not built
/// here): the kernels' layout of a resolved decision.
fn layout(cfg: &BankConfig, d: &Decision) -> (PartParams, PixelParams) {
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
    if let Some(st) = &d.statistics {
        part.kind = 1;
        part.mean = st.mean;
        part.precision = st.precision;
        part.affine = st.score_affine;
    }
    if let Some([lo, hi]) = d.grey_band {
        (part.band, part.band_lo, part.band_hi) = (1, lo, hi);
    }
    let pixel = PixelParams {
        c: d.pixel_c,
        affine: d.map_affine,
        threshold: d.pixel_threshold,
    };
    (part, pixel)
}

fn grid2(x: u32, y: u32, block: u32) -> Cfg {
    let mut c = Cfg::new(x, block);
    c.grid[1] = y;
    c
}

// ---------- bank scores ----------

/// One bank: rows × dim, a part of grid² patches, and the search's result (dist, nn).
struct Bank {
    grid: usize,
    dim: usize,
    rows: Vec<f32>,
    x: Vec<f32>,
    dist: Vec<f32>,
    nn: Vec<i32>,
}

fn bank(g: &mut Gen, grid: usize, n: usize, dim: usize, pool: &Pool) -> Bank {
    let rows: Vec<f32> = (0..n * dim).map(|_| g.normal()).collect();
    let p = grid * grid;
    let mut x: Vec<f32> = (0..p * dim).map(|_| g.normal()).collect();
    for _ in 0..p.div_ceil(16) {
        let j = g.below(p);
        let f = 1.0 + 2.0 * g.f32();
        x[j * dim..(j + 1) * dim].iter_mut().for_each(|v| *v *= f);
    }
    let mut norms = vec![0f32; n];
    sq_norms(&rows, dim, &mut norms);
    let mut dist = vec![0f32; p];
    let mut nn = vec![0u32; p];
    let mut scratch = vec![0f32; score_scratch_len(pool.threads(), n)];
    let view = BankView::new(&rows, &norms, dim);
    score_part(pool, &x, view, None, &mut dist, &mut nn, &mut scratch);
    Bank {
        grid,
        dim,
        rows,
        x,
        dist,
        nn: nn.iter().map(|&v| v as i32).collect(),
    }
}

/// The 3 rows nearest to row `m` by (sequential squared distance, index).
fn top3_ref(rows: &[f32], dim: usize, m: usize) -> Vec<(u32, u32)> {
    let q = &rows[m * dim..(m + 1) * dim];
    let mut v: Vec<(f32, u32)> = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, r)| (sq_dist(q, r), i as u32))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v.iter().take(3).map(|&(d, i)| (d.to_bits(), i)).collect()
}

/// [`run_bank_scores_with`] with the k-nearest scan, then with the bank file's neighbour
/// tables (the CPU reference scans in both).
fn run_bank_scores(
    banks: &[Option<Bank>; 3],
    squared: bool,
    seed: u64,
    pool: &Pool,
) -> Result<(), String> {
    run_bank_scores_with(banks, squared, seed, pool, false)?;
    run_bank_scores_with(banks, squared, seed, pool, true).map_err(|e| format!("table: {e}"))
}

/// Runs the three bank-score kernels on `banks` (`dist` squared when `squared`; with
/// `tables`, each bank's neighbour table instead of the scan) and checks them against the
/// CPU.
fn run_bank_scores_with(
    banks: &[Option<Bank>; 3],
    squared: bool,
    seed: u64,
    pool: &Pool,
    tables: bool,
) -> Result<(), String> {
    let table_bufs: Vec<Option<Buf<u32>>> = banks
        .iter()
        .map(|b| {
            let b = b.as_ref().filter(|_| tables)?;
            let mut norms = vec![0f32; b.rows.len() / b.dim];
            sq_norms(&b.rows, b.dim, &mut norms);
            let view = BankView::new(&b.rows, &norms, b.dim);
            let t = miad::cpu::bank_search::neighbour_table(pool, view, &mut |_, _| {})?;
            Some(Buf::from(&t.rows))
        })
        .collect();
    let bufs: Vec<Option<[Buf<f32>; 3]>> = banks
        .iter()
        .map(|b| {
            b.as_ref()
                .map(|b| [Buf::from(&b.dist), Buf::from(&b.x), Buf::from(&b.rows)])
        })
        .collect();
    let nn_bufs: Vec<Option<Buf<i32>>> = banks
        .iter()
        .map(|b| b.as_ref().map(|b| Buf::from(&b.nn)))
        .collect();
    let mut arg = MapBanks::default();
    let mut stride = 1;
    let mut max_dim = 1;
    let mut splits = [0usize; 3];
    for (k, b) in banks.iter().enumerate() {
        let Some(b) = b else { continue };
        let (bf, nb) = (bufs[k].as_ref().unwrap(), nn_bufs[k].as_ref().unwrap());
        let n = b.rows.len() / b.dim;
        splits[k] = n.div_ceil(KNN_CHUNK);
        arg.b[k] = MapBank {
            dist: bf[0].ptr() as u64,
            nn: nb.ptr() as u64,
            x: bf[1].ptr() as u64,
            rows: bf[2].ptr() as u64,
            patches: (b.grid * b.grid) as i32,
            grid: b.grid as i32,
            rows_n: n as i32,
            dim: b.dim as i32,
            knn_splits: splits[k] as i32,
            knn_chunk: KNN_CHUNK as i32,
            neighbours: table_bufs[k].as_ref().map_or(0, |t| t.ptr() as u64),
        };
        stride = stride.max(b.grid * b.grid);
        max_dim = max_dim.max(b.dim);
    }
    let max_splits = splits.into_iter().max().unwrap().max(1);
    let grids = Buf::filled(3 * stride, f32::NAN);
    let recs = Buf::filled(3, POISON_REC);
    let knn = Buf::filled(3 * max_splits * 3, 0x5a5a_5a5a_5a5a_5a5au64);
    let s = sim();
    let mut a = Args::new()
        .val(arg)
        .val(squared as i32)
        .val(stride as i32)
        .buf(&grids)
        .buf(&recs);
    s.launch("maps_bank_argmax", &Cfg::new(3, THREADS), &mut a, seed)?;
    let smem = (max_dim * 4).next_multiple_of(16) as u32;
    let mut a = Args::new()
        .val(arg)
        .val(max_splits as i32)
        .buf(&recs)
        .buf(&knn);
    let cfg = grid2(max_splits as u32, 3, THREADS).smem(smem);
    s.launch("maps_bank_knn", &cfg, &mut a, seed)?;
    let mut a = Args::new()
        .val(arg)
        .val(max_splits as i32)
        .buf(&knn)
        .buf(&recs);
    s.launch("maps_bank_finish", &Cfg::new(3, THREADS), &mut a, seed)?;

    for (k, b) in banks.iter().enumerate() {
        let grid = &grids.get()[k * stride..(k + 1) * stride];
        let r = recs.get()[k];
        let Some(b) = b else {
            same_bits(&format!("absent bank {k}: grid"), grid, &vec![0.0; stride])?;
            let want = BankScoreRec {
                score: 0.0,
                s_star: 0.0,
                weight: 1.0,
                patch: -1,
                nearest: -1,
                found: 0,
                present: 0,
                pad: 0,
            };
            if r != want {
                return Err(format!("absent bank {k}: {r:?}"));
            }
            continue;
        };
        let p = b.grid * b.grid;
        let dmap: Vec<f32> = if squared {
            b.dist.iter().map(|v| v.max(0.0).sqrt()).collect()
        } else {
            b.dist.clone()
        };
        same_bits(&format!("bank {k}: grid"), &grid[..p], &dmap)?;
        same_bits(
            &format!("bank {k}: grid tail"),
            &grid[p..],
            &vec![0.0; stride - p],
        )?;
        let n = b.rows.len() / b.dim;
        let mut norms = vec![0f32; n];
        sq_norms(&b.rows, b.dim, &mut norms);
        let nn: Vec<u32> = b.nn.iter().map(|&v| v as u32).collect();
        let mut scratch = vec![0f32; score_scratch_len(pool.threads(), n)];
        let view = BankView::new(&b.rows, &norms, b.dim);
        let want = reweighted_score(pool, &b.x, view, None, &dmap, &nn, &mut scratch);
        let nearest = if want.nearest == u32::MAX {
            -1
        } else {
            want.nearest as i32
        };
        let found = if nearest < 0 { 0 } else { n.min(3) as i32 };
        same(
            &format!("bank {k}: (present, j*, m*, found)"),
            &[r.present, r.patch, r.nearest, r.found],
            &[1, want.patch as i32, nearest, found],
        )?;
        same_bits(
            &format!("bank {k}: (s*, weight, score)"),
            &[r.s_star, r.weight, r.score],
            &[want.s_star, want.weight, want.score],
        )?;
        if nearest >= 0 {
            let base = k * max_splits * 3;
            let mut keys: Vec<u64> = knn.get()[base..base + 3 * splits[k]]
                .iter()
                .copied()
                .filter(|&v| v != u64::MAX)
                .collect();
            keys.sort_unstable();
            let got: Vec<(u32, u32)> = keys
                .iter()
                .take(3)
                .map(|&v| ((v >> 32) as u32, v as u32))
                .collect();
            let mut want = top3_ref(&b.rows, b.dim, nearest as usize);
            if tables {
                // Keys ranked 0, 1, 2 by position: m* itself, then the table's b_1, b_2.
                want = want
                    .iter()
                    .enumerate()
                    .map(|(t, &(_, r))| (t as u32, r))
                    .collect();
                want[0].1 = nearest as u32;
            }
            same(&format!("bank {k}: 3 nearest rows of m*"), &got, &want)?;
        }
    }
    Ok(())
}

fn bank_scores() -> Result<(), String> {
    let pool = Pool::new(1);
    for_seeds(|seed| {
        let mut g = Gen::new(seed + 100);
        // Scalar path (dim 37), float4 path with a remainder (dim 100), several splits of
        // the k-nearest scan (5000 rows: 5 blocks, the last ragged).
        let mk = |g: &mut Gen| {
            [
                Some(bank(g, 8, 2500, 37, &pool)),
                Some(bank(g, 4, 300, 32, &pool)),
                Some(bank(g, 7, 5000, 100, &pool)),
            ]
        };
        let mut banks = mk(&mut g);
        run_bank_scores(&banks, false, seed, &pool).map_err(|e| format!("plain: {e}"))?;
        // Squared distances in, with zeros and negatives (sqrt(max(d², 0))).
        for b in banks.iter_mut().flatten() {
            b.dist.iter_mut().for_each(|v| *v *= *v);
            b.dist[0] = 0.0;
            b.dist[1] = -1.0;
            b.dist[2] = -0.0;
        }
        run_bank_scores(&banks, true, seed, &pool).map_err(|e| format!("squared: {e}"))?;
        // Ties: duplicated bank rows (ties among the 3 nearest, across splits) and equal
        // farthest patches (j* is the first).
        let mut banks = mk(&mut g);
        for b in banks.iter_mut().flatten() {
            let (dim, n) = (b.dim, b.rows.len() / b.dim);
            for i in (0..n).step_by(3) {
                let src = b.rows[i * dim..(i + 1) * dim].to_vec();
                for k in 1..3.min(n - i) {
                    b.rows[(i + k) * dim..(i + k + 1) * dim].copy_from_slice(&src);
                }
            }
            // m* is a row repeated at the last row of the first split, the first of the
            // second and the bank's last row (the 3 nearest cross splits, all ties).
            let far: Vec<f32> = (0..dim).map(|i| 50.0 + i as f32).collect();
            let m = (KNN_CHUNK - 1).min(n / 2);
            for r in [m, KNN_CHUNK.min(n - 2), n - 1] {
                b.rows[r * dim..(r + 1) * dim].copy_from_slice(&far);
            }
            let p = b.dist.len();
            let top = b.dist.iter().copied().fold(0f32, f32::max) + 1.0;
            for j in [p / 3, p / 2, p - 1] {
                b.dist[j] = top;
                b.nn[j] = m as i32;
            }
        }
        run_bank_scores(&banks, false, seed, &pool).map_err(|e| format!("ties: {e}"))?;
        // NaN at patch 0 (nothing beats it on the CPU), NaN elsewhere (never the maximum),
        // and no nearest row at j* (no re-weighting).
        let mut banks = mk(&mut g);
        banks[0].as_mut().unwrap().dist[0] = f32::NAN;
        let b1 = banks[1].as_mut().unwrap();
        b1.dist[5] = f32::NAN;
        b1.dist[9] = f32::INFINITY;
        let b2 = banks[2].as_mut().unwrap();
        let top = b2.dist.iter().copied().fold(0f32, f32::max) + 1.0;
        b2.dist[11] = top;
        b2.nn[11] = -1;
        run_bank_scores(&banks, false, seed, &pool).map_err(|e| format!("NaN/none: {e}"))?;
        // Absent banks, 1 row (no neighbour term) and 2 rows (one term).
        let banks = [
            None,
            Some(bank(&mut g, 4, 1, 16, &pool)),
            Some(bank(&mut g, 3, 2, 16, &pool)),
        ];
        run_bank_scores(&banks, false, seed, &pool).map_err(|e| format!("tiny: {e}"))?;
        Ok(())
    })?;
    // M3DM widths (the 16-wide unrolled path), one seed.
    let mut g = Gen::new(7);
    let banks = [
        Some(bank(&mut g, 8, 1100, 1152, &pool)),
        Some(bank(&mut g, 4, 700, 768, &pool)),
        Some(bank(&mut g, 8, 1030, 1920, &pool)),
    ];
    run_bank_scores(&banks, false, 2, &pool).map_err(|e| format!("m3dm widths: {e}"))
}

// ---------- maps ----------

fn upsample_blur() -> Result<(), String> {
    // (grid sides, 0 = absent; map side; sigma): M3DM sizes, ragged sides, a radius
    // larger than the map (reflection over several periods), σ 16 (radius 64), grids
    // larger than the map (downsampling) with a small radius.
    let cases: [([usize; 3], usize, f32); 5] = [
        ([56, 28, 56], 224, 4.0),
        ([8, 0, 8], 37, 1.5),
        ([3, 5, 0], 10, 4.0),
        ([0, 28, 0], 131, 16.0),
        ([56, 28, 0], 23, 0.4),
    ];
    for (i, (gs, s, sigma)) in cases.into_iter().enumerate() {
        let seed = crate::util::SEEDS[i % 3];
        let mut g = Gen::new(seed + 50);
        let stride = gs.iter().map(|v| v * v).max().unwrap();
        let grids: Vec<f32> = (0..3 * stride).map(|_| 3.0 * g.normal().abs()).collect();
        let s2 = s * s;
        let gb = Buf::from(&grids);
        let maps = Buf::filled(3 * s2, f32::NAN);
        let tmp = Buf::filled(3 * s2, f32::NAN);
        let blocks = s2.div_ceil(THREADS as usize) as u32;
        let what = format!("s {s} σ {sigma}");
        let mut a = Args::new()
            .val(gs[0] as i32)
            .val(gs[1] as i32)
            .val(gs[2] as i32)
            .val(s as i32)
            .buf(&gb)
            .val(stride as i32)
            .buf(&maps);
        sim().launch("maps_upsample", &grid2(blocks, 3, THREADS), &mut a, seed)?;
        let mut want = vec![0f32; 3 * s2];
        for b in 0..3 {
            if gs[b] > 0 {
                let grid = &grids[b * stride..b * stride + gs[b] * gs[b]];
                upsample_bilinear(grid, gs[b], s, &mut want[b * s2..(b + 1) * s2]);
            }
        }
        same_bits(&format!("{what}: upsampled maps"), maps.get(), &want)?;
        let present: i32 = (0..3).filter(|&b| gs[b] > 0).map(|b| 1 << b).sum();
        let w = blur_weights(sigma);
        let mut a = Args::new()
            .val(present)
            .val(s as i32)
            .val(w)
            .buf(&maps)
            .buf(&tmp);
        sim().launch("maps_blur_h", &grid2(blocks, 3, THREADS), &mut a, seed)?;
        let mut a = Args::new()
            .val(present)
            .val(s as i32)
            .val(w)
            .buf(&tmp)
            .buf(&maps);
        sim().launch("maps_blur_v", &grid2(blocks, 3, THREADS), &mut a, seed)?;
        let mut scratch = vec![0f32; map_scratch_len(s)];
        for b in 0..3 {
            if gs[b] > 0 {
                gaussian_blur(&mut want[b * s2..(b + 1) * s2], s, sigma, &mut scratch);
            }
        }
        same_bits(&format!("{what}: blurred maps"), maps.get(), &want)?;
    }
    Ok(())
}

// ---------- decision ----------

fn decision() -> Result<(), String> {
    let mut cfg = BankConfig::empty([0; 16], "m", "c");
    cfg.score_weights = [1.0, 0.1, 1.0];
    cfg.part_svm.w = [0.8, -1.3, 0.45];
    cfg.pixel_svm.w = [0.6, 1.7, -0.2];
    cfg.thresholds.part = 2.0;
    cfg.thresholds.pixel = 1.0;
    let mut g = Gen::new(3);
    let mk = |g: &mut Gen| CaseDecision {
        mean: [3.0 * g.f32(), 0.3 * g.f32(), 3.0 * g.f32()],
        precision: [1.5, 0.2, 0.1, 0.2, 2.5, -0.3, 0.1, -0.3, 0.9],
        threshold: 2.5,
        pixel_w: [g.f32(), g.f32(), 0.0],
        pixel_threshold: 0.7,
        score_affine: [0.8, 0.3],
        map_affine: [1.7, -0.4],
    };
    let cases = [None, Some(mk(&mut g)), Some(mk(&mut g))];
    // A ragged pixel count (not a multiple of the block).
    let s2 = 37 * 41;
    let bm: Vec<f32> = (0..3 * s2).map(|_| 2.0 * g.normal()).collect();
    let bmb = Buf::from(&bm);
    for round in 0..40usize {
        let seed = crate::util::SEEDS[round % 3];
        let mut present = [true; 3];
        if round % 5 == 4 {
            present[(round / 5) % 3] = false;
        }
        let bank: [f32; 3] = std::array::from_fn(|b| match (round, b) {
            (6, 1) | (7, 1) => f32::NAN,
            (9, 0) => 1.0, // on the grey band's lower bound (complete part, linear score)
            (12, 0) => 3.0, // on its upper bound
            _ => 4.0 * g.f32(),
        });
        let case = Case::ALL[round % 3];
        let mut cfg = cfg.clone();
        if round % 4 == 1 || round == 9 || round == 12 {
            cfg.thresholds.grey_band = Some([1.0, 3.0]);
            cfg.part_svm.w = [1.0, 0.0, 0.0];
        }
        let opts = InspectOptions {
            part_threshold: (round % 6 == 2).then_some(1.5),
            pixel_threshold: match round % 7 {
                3 => Some(f32::NAN),
                5 => Some(0.25),
                _ => None,
            },
            grey_band: (round % 9 == 8).then_some([0.5, 2.5]),
            case_statistics: round % 8 != 6,
            ..InspectOptions::default()
        };
        let mut d = Decision::resolve(&cfg, case, &cases, &opts);
        // The caller, not the kernel, makes a part without statistics uncertain.
        d.lacks_statistics = false;
        let (pp, px) = layout(&cfg, &d);
        let recs: Vec<BankScoreRec> = (0..3)
            .map(|b| BankScoreRec {
                score: if present[b] { bank[b] } else { 0.0 },
                s_star: 0.0,
                weight: 1.0,
                patch: if present[b] { 0 } else { -1 },
                nearest: -1,
                found: 0,
                present: present[b] as i32,
                pad: 0,
            })
            .collect();
        let rb = Buf::from(&recs);
        let out = Buf::filled(
            1,
            PartDecisionRec {
                score: f32::NAN,
                verdict: -7,
                part_threshold: f32::NAN,
                pixel_threshold: f32::NAN,
                bank: [f32::NAN; 3],
                vector: [f32::NAN; 3],
            },
        );
        let mut a = Args::new().val(pp).buf(&rb).buf(&out);
        sim().launch("maps_part", &Cfg::new(1, 32), &mut a, seed)?;
        let got = out.get()[0];
        let vector: [f32; 3] = std::array::from_fn(|b| {
            if present[b] {
                cfg.score_weights[b] * bank[b]
            } else {
                0.0
            }
        });
        let score = d.part_score(&vector);
        let what = format!("round {round} ({case:?})");
        same_bits(&format!("{what}: vector"), &got.vector, &vector)?;
        let bank_want: [f32; 3] = std::array::from_fn(|b| if present[b] { bank[b] } else { 0.0 });
        same_bits(&format!("{what}: bank scores"), &got.bank, &bank_want)?;
        same_bits(
            &format!("{what}: (score, part threshold, pixel threshold)"),
            &[got.score, got.part_threshold, got.pixel_threshold],
            &[score, d.part_threshold, d.pixel_threshold],
        )?;
        same(
            &format!("{what}: verdict"),
            &[got.verdict as u32],
            &[d.verdict(score) as u32],
        )?;
        // The pixel map, without labels (null pointers, as a map-only inspection).
        let map = Buf::filled(s2, f32::NAN);
        let null = std::ptr::null_mut::<std::ffi::c_void>();
        let mut a = Args::new()
            .val(px)
            .val(s2 as i32)
            .buf(&bmb)
            .buf(&map)
            .val(null)
            .val(null);
        let blocks = s2.div_ceil(THREADS as usize) as u32;
        sim().launch("maps_pixels", &Cfg::new(blocks, THREADS), &mut a, seed)?;
        let mut want = vec![0f32; s2];
        d.pixel_map(&bm, &mut want);
        same_bits(&format!("{what}: pixel map"), map.get(), &want)?;
    }
    Ok(())
}

// ---------- regions ----------

fn region_diff(what: &str, got: &Region, want: &Region) -> Result<(), String> {
    let key = |r: &Region| (r.x0, r.y0, r.x1, r.y1, r.area, r.max.to_bits());
    if key(got) == key(want) {
        close(what, &[got.mean], &[want.mean], 0.0, 1e-6)
    } else {
        Err(format!("{what}: {got:?} vs {want:?}"))
    }
}

/// The region kernels on `map` (through maps_pixels with c = (1, 0, 0), affine (1, 0)),
/// against the references.
fn run_regions(map: &[f32], s: usize, t: f32, limit: usize, seed: u64) -> Result<(), String> {
    let s2 = s * s;
    let mut bm = vec![0f32; 3 * s2];
    bm[..s2].copy_from_slice(map);
    bm[s2..].iter_mut().for_each(|v| *v = 1e9); // weight 0: must not leak in
    let map: Vec<f32> = map.iter().map(|v| v + 0.0).collect(); // −0 becomes +0
    let px = PixelParams {
        c: [1.0, 0.0, 0.0],
        affine: [1.0, 0.0],
        threshold: t,
    };
    let bmb = Buf::from(&bm);
    let mb = Buf::filled(s2, f32::NAN);
    let labels = Buf::filled(s2, 0x1234_5678u32);
    let peak = Buf::filled(s2, 0x8765_4321u32);
    let sel = Buf::filled(limit, 0x4242_4242u32);
    let count = Buf::filled(2, 0x4242_4242u32);
    let poison = Region {
        x0: 7,
        y0: 7,
        x1: 7,
        y1: 7,
        area: 7,
        max: f32::NAN,
        mean: f32::NAN,
    };
    let regions = Buf::filled(limit, poison);
    let blocks = s2.div_ceil(THREADS as usize) as u32;
    let k = sim();
    let mut a = Args::new()
        .val(px)
        .val(s2 as i32)
        .buf(&bmb)
        .buf(&mb)
        .buf(&labels)
        .buf(&peak);
    k.launch("maps_pixels", &Cfg::new(blocks, THREADS), &mut a, seed)?;
    let mut a = Args::new().val(s as i32).val(t).buf(&labels);
    k.launch("maps_label_merge", &Cfg::new(blocks, THREADS), &mut a, seed)?;
    let mut a = Args::new().val(s as i32).buf(&mb).buf(&labels).buf(&peak);
    k.launch(
        "maps_label_resolve",
        &Cfg::new(blocks, THREADS),
        &mut a,
        seed,
    )?;
    let mut a = Args::new()
        .val(s2 as i32)
        .val(limit as i32)
        .buf(&labels)
        .buf(&peak)
        .buf(&sel)
        .buf(&count);
    k.launch(
        "maps_regions_select",
        &Cfg::new(1, SELECT_THREADS),
        &mut a,
        seed,
    )?;
    let mut a = Args::new()
        .val(s as i32)
        .buf(&mb)
        .buf(&labels)
        .buf(&sel)
        .buf(&count)
        .buf(&regions);
    k.launch(
        "maps_regions_stats",
        &Cfg::new(limit as u32, THREADS),
        &mut a,
        seed,
    )?;
    same_bits("pixel map", mb.get(), &map)?;
    let (want_labels, mut want, found) = regions_ref(&map, s, t, usize::MAX);
    // Equal peaks at the cut: find_regions may keep another of them (see below).
    let tied_cut = found > limit && want[limit - 1].1.max == want[limit].1.max;
    want.truncate(limit);
    same("labels", labels.get(), &want_labels)?;
    same(
        "(found, kept)",
        count.get(),
        &[found as u32, want.len() as u32],
    )?;
    let roots: Vec<u32> = want.iter().map(|r| r.0).collect();
    same("kept roots", &sel.get()[..want.len()], &roots)?;
    same(
        "unused roots",
        &sel.get()[want.len()..],
        &vec![NONE; limit - want.len()],
    )?;
    let got = regions.get();
    for (k, (_, r)) in want.iter().enumerate() {
        region_diff(&format!("region {k}"), &got[k], r)?;
    }
    for (k, r) in got.iter().enumerate().skip(want.len()) {
        if *r != Region::default() {
            return Err(format!("unused region {k}: {r:?}"));
        }
    }
    // The engine's find_regions: the same count and peaks, and the same set of regions
    // unless equal peaks straddle the cut (it sorts by peak only and, when full, replaces
    // the weakest it happens to hold first).
    let (mut l, mut q) = (vec![0u32; s * s], vec![0u32; s * s]);
    let mut cpu = Vec::with_capacity(limit);
    let n = find_regions(&map, s, t, &mut l, &mut q, &mut cpu, limit);
    same("find_regions count", &[n], &[found])?;
    let peaks = |v: &mut dyn Iterator<Item = f32>| v.map(f32::to_bits).collect::<Vec<_>>();
    same(
        "find_regions peaks",
        &peaks(&mut cpu.iter().map(|r| r.max)),
        &peaks(&mut got[..want.len()].iter().map(|r| r.max)),
    )?;
    for (k, c) in cpu.iter().enumerate().filter(|_| !tied_cut) {
        if !got[..want.len()]
            .iter()
            .any(|r| region_diff("", r, c).is_ok())
        {
            return Err(format!("find_regions' region {k} {c:?} missing"));
        }
    }
    Ok(())
}

/// A smooth random map: a coarse random grid, upsampled.
fn smooth_map(g: &mut Gen, s: usize, gi: usize) -> Vec<f32> {
    let grid: Vec<f32> = (0..gi * gi).map(|_| g.normal()).collect();
    let mut out = vec![0f32; s * s];
    upsample_bilinear(&grid, gi, s, &mut out);
    out
}

fn quantile(map: &[f32], q: f64) -> f32 {
    let mut v: Vec<f32> = map.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f32::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

fn regions() -> Result<(), String> {
    let limit = MAX_REGIONS;
    let mut g = Gen::new(17);
    let s = 150usize;
    let s2 = s * s;
    let mut maps: Vec<(String, Vec<f32>, f32)> = vec![];
    // Smooth maps at several thresholds: few to many (> 64, the radix select) components.
    for (gi, q) in [(19, 0.9), (38, 0.5), (75, 0.8)] {
        let m = smooth_map(&mut g, s, gi);
        let t = quantile(&m, q);
        maps.push((format!("smooth {gi} q {q}"), m, t));
    }
    // Noise: thousands of components, 8-connected through corners.
    let noise: Vec<f32> = (0..s2).map(|_| g.normal()).collect();
    maps.push(("noise".into(), noise, 0.8));
    // Shapes that merge across long detours: a comb joined at the bottom, a spiral,
    // diagonal chains, isolated pixels with distinct peaks.
    let mut m = vec![0f32; s2];
    for x in (10..140).step_by(4) {
        for y in 10..70 {
            m[y * s + x] = 1.0 + x as f32 * 1e-3;
        }
    }
    for x in 10..137 {
        m[70 * s + x] = 1.5;
    }
    let (mut x, mut y, mut len, mut dir) = (110i64, 110i64, 2i64, 0);
    'sp: for _ in 0..40 {
        for _ in 0..len {
            let (dx, dy) = [(1, 0), (0, 1), (-1, 0), (0, -1)][dir % 4];
            (x, y) = (x + dx, y + dy);
            if !(80..150).contains(&x) || !(80..150).contains(&y) {
                break 'sp;
            }
            m[y as usize * s + x as usize] = 2.0 + (x + y) as f32 * 1e-3;
        }
        dir += 1;
        len += 3;
    }
    for k in 0..50usize {
        m[(90 + k) * s + 5 + k] = 3.0;
        m[(90 + k) * s + 65 - k] = 3.5;
    }
    for k in 0..90usize {
        m[(2 + 2 * (k / 30)) * s + 20 + 3 * (k % 30)] = 4.0 + k as f32 * 0.01;
    }
    maps.push(("synthetic shapes".into(), m, 0.5));
    // Equal peaks: more single pixels than kept, all the same value (ties by root).
    let mut eq = vec![0f32; s2];
    for k in 0..100usize {
        eq[(2 * (k / 10) + 50) * s + 2 * (k % 10) + 50] = 1.0;
    }
    maps.push(("equal peaks".into(), eq, 0.5));
    // Equal peaks straddling the cut: the radix select's last digit decides by root.
    let mut cut = vec![0f32; s2];
    for k in 0..120usize {
        cut[(3 * (k / 12) + 20) * s + 3 * (k % 12) + 20] = 1.0 + (k % 3) as f32;
    }
    maps.push(("tied cut".into(), cut, 0.5));
    maps.push(("full map".into(), vec![1.0; s2], 0.5));
    maps.push(("empty map".into(), vec![0.0; s2], 0.5));
    let mut nan = smooth_map(&mut g, s, 38);
    for i in (0..s2).step_by(97) {
        nan[i] = f32::NAN;
    }
    let t = quantile(&nan, 0.6);
    maps.push(("NaN pixels".into(), nan, t));
    let neg: Vec<f32> = smooth_map(&mut g, s, 19).iter().map(|v| v - 10.0).collect();
    let t = quantile(&neg, 0.8);
    maps.push(("negative values".into(), neg, t));
    let mut signed = smooth_map(&mut g, s, 19);
    signed[3] = -0.0;
    maps.push(("threshold 0, -0 pixel".into(), signed, 0.0));
    // M3DM's 224 × 224 map: smooth, many regions.
    let big = smooth_map(&mut g, 224, 56);
    let t = quantile(&big, 0.8);
    run_regions(&big, 224, t, limit, 2).map_err(|e| format!("224, seed 2: {e}"))?;
    for (i, (what, m, t)) in maps.iter().enumerate() {
        let seed = crate::util::SEEDS[i % 3];
        run_regions(m, s, *t, limit, seed).map_err(|e| format!("{what}, seed {seed}: {e}"))?;
    }
    // A NaN threshold (every non-NaN pixel alone) and a side below one block.
    let s = 13usize;
    let mut m = smooth_map(&mut g, s, 4);
    m[5] = f32::NAN;
    for_seeds(|seed| {
        run_regions(&m, s, f32::NAN, limit, seed).map_err(|e| format!("NaN threshold: {e}"))?;
        run_regions(&m, s, quantile(&m, 0.5), limit, seed).map_err(|e| format!("s 13: {e}"))
    })
}

// ---------- the one-graph part's kernels (runtime/cuda/stages/part.rs) ----------

/// The part's case chosen on the device from its status word picks the parameters the
/// host laid out for that case: maps_part_case, maps_pixels_case and
/// maps_label_merge_case give the bits of maps_part, maps_pixels and maps_label_merge with
/// that case's blocks; maps_case_of writes `Case::of`; maps_pseudo_select replaces exactly
/// an unusable modality's features; maps_normalise is the host's `(v − mean)·inv`;
/// maps_status_from_word decodes the device preprocessing's word and gives an unusable
/// cloud the filler lattice and count.
fn case_kernels() -> Result<(), String> {
    let mut cfg = BankConfig::empty([0; 16], "m", "c");
    cfg.score_weights = [1.0, 0.1, 1.0];
    cfg.part_svm.w = [0.8, -1.3, 0.45];
    cfg.pixel_svm.w = [0.6, 1.7, -0.2];
    cfg.thresholds.part = 2.0;
    cfg.thresholds.pixel = 0.3;
    let stats = CaseDecision {
        mean: [0.5, 0.2, 0.1],
        precision: [1.5, 0.2, 0.1, 0.2, 2.5, -0.3, 0.1, -0.3, 0.9],
        threshold: 2.5,
        pixel_w: [0.4, 0.9, 0.0],
        pixel_threshold: 0.7,
        score_affine: [0.8, 0.3],
        map_affine: [1.7, -0.4],
    };
    let cases = [
        None,
        Some(stats),
        Some(CaseDecision {
            threshold: 1.1,
            pixel_threshold: -0.2,
            ..stats
        }),
    ];
    let opts = InspectOptions::default();
    let laid: Vec<(PartParams, PixelParams)> = Case::ALL
        .iter()
        .map(|&c| layout(&cfg, &Decision::resolve(&cfg, c, &cases, &opts)))
        .collect();
    let parts = Buf::from(&laid.iter().map(|l| l.0).collect::<Vec<_>>());
    let pixels = Buf::from(&laid.iter().map(|l| l.1).collect::<Vec<_>>());
    let mut g = Gen::new(11);
    let recs: Vec<BankScoreRec> = (0..3)
        .map(|_| BankScoreRec {
            score: 3.0 * g.f32(),
            s_star: 0.0,
            weight: 1.0,
            patch: 0,
            nearest: -1,
            found: 0,
            present: 1,
            pad: 0,
        })
        .collect();
    let rb = Buf::from(&recs);
    let side = 30usize;
    let s2 = side * side;
    let bm: Vec<f32> = (0..3 * s2).map(|_| g.normal()).collect();
    let bmb = Buf::from(&bm);
    let blocks = s2.div_ceil(THREADS as usize) as u32;
    let seed = crate::util::SEEDS[0];
    let k = sim();
    let poison = PartDecisionRec {
        score: f32::NAN,
        verdict: -7,
        part_threshold: f32::NAN,
        pixel_threshold: f32::NAN,
        bank: [f32::NAN; 3],
        vector: [f32::NAN; 3],
    };
    let n = 700usize;
    let real: Vec<f32> = (0..n).map(|_| g.normal()).collect();
    let pseudo: Vec<f32> = (0..n).map(|_| 10.0 + g.normal()).collect();
    let pb = Buf::from(&pseudo);
    for (rgb, cloud) in [(1, 1), (1, 0), (0, 1), (0, 0)] {
        let what = format!("status ({rgb}, {cloud})");
        let c = Case::of(rgb == 1, cloud == 1) as usize;
        let status = Buf::from(&[rgb, cloud]);
        let out = Buf::filled(1, -1i32);
        k.launch(
            "maps_case_of",
            &Cfg::new(1, 32),
            &mut Args::new().buf(&status).buf(&out),
            seed,
        )?;
        same(
            &format!("{what}: case"),
            &[out.get()[0] as u32],
            &[c as u32],
        )?;
        // Part decision.
        let (got, want) = (Buf::filled(1, poison), Buf::filled(1, poison));
        let mut a = Args::new().buf(&status).buf(&parts).buf(&rb).buf(&got);
        k.launch("maps_part_case", &Cfg::new(1, 32), &mut a, seed)?;
        let mut a = Args::new().val(laid[c].0).buf(&rb).buf(&want);
        k.launch("maps_part", &Cfg::new(1, 32), &mut a, seed)?;
        let (x, y) = (got.get()[0], want.get()[0]);
        same_bits(
            &format!("{what}: score"),
            &[x.score, x.part_threshold],
            &[y.score, y.part_threshold],
        )?;
        same(
            &format!("{what}: verdict"),
            &[x.verdict as u32],
            &[y.verdict as u32],
        )?;
        // Pixel map, labels, merge.
        let run = |case_kernel: bool| -> Result<(Vec<f32>, Vec<u32>), String> {
            let map = Buf::filled(s2, f32::NAN);
            let labels = Buf::filled(s2, 7u32);
            let peak = Buf::filled(s2, 7u32);
            let mut a = if case_kernel {
                Args::new().buf(&status).buf(&pixels)
            } else {
                Args::new().val(laid[c].1)
            };
            a = a.val(s2 as i32).buf(&bmb).buf(&map).buf(&labels).buf(&peak);
            let name = if case_kernel {
                "maps_pixels_case"
            } else {
                "maps_pixels"
            };
            k.launch(name, &Cfg::new(blocks, THREADS), &mut a, seed)?;
            let mut a = if case_kernel {
                Args::new()
                    .buf(&status)
                    .buf(&pixels)
                    .val(side as i32)
                    .buf(&labels)
            } else {
                Args::new()
                    .val(side as i32)
                    .val(laid[c].1.threshold)
                    .buf(&labels)
            };
            let name = if case_kernel {
                "maps_label_merge_case"
            } else {
                "maps_label_merge"
            };
            k.launch(name, &Cfg::new(blocks, THREADS), &mut a, seed)?;
            Ok((map.get().to_vec(), labels.get().to_vec()))
        };
        let ((ma, la), (mb, lb)) = (run(true)?, run(false)?);
        same_bits(&format!("{what}: pixel map"), &ma, &mb)?;
        same(&format!("{what}: merged labels"), &la, &lb)?;
        // Pseudo features.
        for (m, usable) in [(0, rgb), (1, cloud)] {
            let f = Buf::from(&real);
            let mut a = Args::new()
                .buf(&status)
                .val(m)
                .val(n as i32)
                .buf(&pb)
                .buf(&f);
            let b = n.div_ceil(THREADS as usize) as u32;
            k.launch("maps_pseudo_select", &Cfg::new(b, THREADS), &mut a, seed)?;
            let want = if usable == 1 { &real } else { &pseudo };
            same_bits(&format!("{what}: modality {m} features"), f.get(), want)?;
        }
    }
    // Normalisation.
    let (mean, inv) = (0.37f32, 1.0f32 / 1.9);
    let x = Buf::from(&real);
    let out = Buf::filled(n, f32::NAN);
    let b = n.div_ceil(THREADS as usize) as u32;
    let mut a = Args::new()
        .val(n as i32)
        .val(mean)
        .val(inv)
        .buf(&x)
        .buf(&out);
    k.launch("maps_normalise", &Cfg::new(b, THREADS), &mut a, seed)?;
    let want: Vec<f32> = real.iter().map(|v| (v - mean) * inv).collect();
    same_bits("normalised features", out.get(), &want)?;
    // The device preprocessing's status word.
    let min_points = 300usize;
    for word in [0u32, 1, 3 << 8, 2 | (6 << 8)] {
        let (rgb, cloud) = (word & 0xff == 0, (word >> 8) & 0xff == 0);
        let word_b = Buf::from(&[word]);
        let status = Buf::filled(2, -1i32);
        let count = Buf::filled(1, -5i32);
        let points = Buf::filled(3 * min_points + 3, f32::NAN);
        let b = min_points.div_ceil(THREADS as usize) as u32;
        let mut a = Args::new()
            .buf(&word_b)
            .val(min_points as i32)
            .buf(&status)
            .buf(&count)
            .buf(&points);
        k.launch("maps_status_from_word", &Cfg::new(b, THREADS), &mut a, seed)?;
        let what = format!("status word {word:#x}");
        same(
            &format!("{what}: status"),
            &[status.get()[0] as u32, status.get()[1] as u32],
            &[rgb as u32, cloud as u32],
        )?;
        let p = points.get();
        if cloud {
            same(
                &format!("{what}: count"),
                &[count.get()[0] as u32],
                &[(-5i32) as u32],
            )?;
            if p.iter().any(|v| !v.is_nan()) {
                return Err(format!("{what}: points written for a usable cloud"));
            }
        } else {
            same(
                &format!("{what}: count"),
                &[count.get()[0] as u32],
                &[min_points as u32],
            )?;
            let want: Vec<f32> = (0..min_points)
                .flat_map(|i| {
                    [
                        (i % 17) as f32 * 1e-3,
                        ((i / 17) % 17) as f32 * 1e-3,
                        (i / 289) as f32 * 1e-3,
                    ]
                })
                .collect();
            same_bits(
                &format!("{what}: filler points"),
                &p[..3 * min_points],
                &want,
            )?;
            if !p[3 * min_points..].iter().all(|v| v.is_nan()) {
                return Err(format!("{what}: points written past the filler"));
            }
        }
    }
    Ok(())
}
