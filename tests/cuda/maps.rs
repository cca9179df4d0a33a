//! CUDA post-search stages (kernels/maps.cu, runtime/cuda/ops/maps.rs) against the CPU
//! backend (feature `cuda`).
//!
//! Oracles: `cpu::bank_search::score_part` (grid, j*, m*, re-weighted score),
//! `cpu::maps::{upsample_bilinear, gaussian_blur}`, the decision formulas of
//! `engine::decide` (written out below: that function is private; the RADAR score uses the
//! public `CaseDecision::score` and `fit::radar::informative`), and `engine::find_regions`,
//! plus small independent references where the CPU code does not expose what is checked
//! (the 3 nearest rows of m*, the labels, the order of regions with equal peaks).
//!
//! Tolerances: grids, upsampled maps, j*, m*, the 3 nearest rows (distance bits and
//! index), labels, region boxes, areas and peaks must be identical; blurred maps, pixel
//! maps and scores within 1e-5 relative (they are expected to be identical too, and the
//! tests print how many values are bit-identical); a region's mean within 1e-6 relative
//! (f64 sum in a fixed tree here, in flood-fill order on the CPU). Bank scores, maps,
//! regions and the whole post-search sequence run again must give identical bits; output
//! buffers are poisoned (0xff bytes: NaN) before every run and must be fully written.
//!
//! Without a GPU every device test runs on the simulated device (feature `cuda-sim`), or
//! prints a SKIP line and passes. On a GPU machine:
//! `cargo test --release --features cuda --test cuda maps:: -- --nocapture`.

use miad::config::BankConfig;
use miad::cpu::bank_search::{score_part, score_scratch_len, sq_dist, sq_norms, BankView};
use miad::cpu::maps::{anomaly_map, gaussian_blur, map_scratch_len, upsample_bilinear};
use miad::cpu::pool::Pool;
use miad::cpu::regions::find_regions;
use miad::cuda::ops::maps::{
    BankInput, BankScoreRec, BankShape, DecisionParams, MapBuffers, MapKernels, MapPlan, MapSlots,
    PartDecisionRec, PixelParams, RegionRec,
};
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::engine::{Case, CaseDecision, InspectOptions, Region, MAX_REGIONS};
use miad::fit::radar::informative;
use miad::util::rng::Rng;

use crate::oracles::regions_ref;

fn device() -> Option<Device> {
    crate::test_device("cuda_maps")
}

/// One bank's input slots (empty for an absent bank).
#[derive(Clone, Copy)]
struct InSlots {
    dist: Slot<f32>,
    nn: Slot<i32>,
    x: Slot<f32>,
    rows: Slot<f32>,
}

struct Gpu {
    k: MapKernels,
    arena: Arena,
    s: MapSlots,
    inp: [InSlots; 3],
    dev: Device,
}

impl Gpu {
    fn new(dev: Device, plan: MapPlan) -> Gpu {
        let mut ap = ArenaPlan::new();
        let s = plan.slots(&mut ap);
        let inp = std::array::from_fn(|b| {
            let (p, n) = plan.banks[b].map_or((0, 0), |sh| (sh.grid * sh.grid, sh.rows));
            let d = plan.banks[b].map_or(0, |sh| sh.dim);
            InSlots {
                dist: ap.add(p),
                nn: ap.add(p),
                x: ap.add(p * d),
                rows: ap.add(n * d),
            }
        });
        let k = MapKernels::new(&dev, plan).unwrap();
        let arena = Arena::new(&dev, &ap).unwrap();
        Gpu {
            k,
            arena,
            s,
            inp,
            dev,
        }
    }
    fn b(&self) -> MapBuffers {
        self.s.ptrs(&self.arena)
    }
    fn inputs(&self) -> [BankInput; 3] {
        std::array::from_fn(|b| {
            if self.k.plan.banks[b].is_none() {
                return BankInput::absent();
            }
            let i = self.inp[b];
            BankInput {
                dist: self.arena.ptr(i.dist),
                nn: self.arena.ptr(i.nn),
                x: self.arena.ptr(i.x),
                rows: self.arena.ptr(i.rows),
                neighbours: DevPtr::null(),
            }
        })
    }
    fn put<T: bytemuck::Pod>(&self, s: Slot<T>, v: &[T]) {
        self.arena.upload(&self.dev, s, v).unwrap();
    }
    fn get<T: bytemuck::Pod + Default>(&self, s: Slot<T>) -> Vec<T> {
        let mut v = vec![T::default(); s.len];
        self.arena.download(&self.dev, s, &mut v).unwrap();
        v
    }
    fn poison<T>(&self, s: Slot<T>) {
        self.dev
            .memset_u8(self.arena.ptr(s).raw(), 0xff, s.bytes())
            .unwrap();
    }
    fn poison_outputs(&self) {
        let s = &self.s;
        self.poison(s.grids);
        self.poison(s.scores);
        self.poison(s.knn);
        self.poison(s.bank_maps);
        self.poison(s.tmp);
        self.poison(s.map);
        self.poison(s.labels);
        self.poison(s.peak);
        self.poison(s.sel);
        self.poison(s.count);
        self.poison(s.regions);
        self.poison(s.decision);
    }
    fn sync(&self) {
        self.dev.synchronize().unwrap();
    }
    fn bank_scores(&self, squared: bool) {
        let b = self.b();
        unsafe {
            self.k
                .bank_scores(&self.dev, &self.inputs(), squared, b.grids, b.scores, b.knn)
                .unwrap()
        };
        self.sync();
    }
    fn maps(&self) {
        let b = self.b();
        unsafe {
            self.k.upsample(&self.dev, b.grids, b.bank_maps).unwrap();
            self.k.blur(&self.dev, b.bank_maps, b.tmp).unwrap();
        }
        self.sync();
    }
    fn regions(&self, threshold: f32) {
        let b = self.b();
        let px = PixelParams {
            c: [1.0, 0.0, 0.0],
            affine: [1.0, 0.0],
            threshold,
        };
        unsafe {
            self.k
                .pixel_map(&self.dev, &px, b.bank_maps, b.map, Some((b.labels, b.peak)))
                .unwrap();
            self.k
                .regions(
                    &self.dev, threshold, b.map, b.labels, b.peak, b.sel, b.count, b.regions,
                )
                .unwrap();
        }
        self.sync();
    }
}

fn shape(grid: usize, rows: usize, dim: usize) -> Option<BankShape> {
    Some(BankShape { grid, rows, dim })
}

// ---------- CPU side ----------

/// A bank (rows × dim) and a part (grid² × dim) with a few outlier patches.
struct BankData {
    rows: Vec<f32>,
    x: Vec<f32>,
    dim: usize,
}

fn bank_data(rng: &mut Rng, sh: BankShape) -> BankData {
    let mut rows = vec![0f32; sh.rows * sh.dim];
    rng.fill_normal(&mut rows, 1.0);
    let p = sh.grid * sh.grid;
    let mut x = vec![0f32; p * sh.dim];
    rng.fill_normal(&mut x, 1.0);
    for _ in 0..p.div_ceil(16) {
        let j = rng.below(p as u64) as usize;
        let f = 1.0 + 2.0 * rng.uniform();
        x[j * sh.dim..(j + 1) * sh.dim]
            .iter_mut()
            .for_each(|v| *v *= f);
    }
    BankData {
        rows,
        x,
        dim: sh.dim,
    }
}

struct CpuScore {
    dmap: Vec<f32>,
    nn: Vec<u32>,
    score: miad::cpu::bank_search::BankScore,
}

fn cpu_score(pool: &Pool, d: &BankData) -> CpuScore {
    let n = d.rows.len() / d.dim;
    let mut norms = vec![0f32; n];
    sq_norms(&d.rows, d.dim, &mut norms);
    let view = BankView::new(&d.rows, &norms, d.dim);
    let p = d.x.len() / d.dim;
    let mut dmap = vec![0f32; p];
    let mut nn = vec![0u32; p];
    let mut scratch = vec![0f32; score_scratch_len(pool.threads(), n)];
    let score = score_part(pool, &d.x, view, None, &mut dmap, &mut nn, &mut scratch);
    CpuScore { dmap, nn, score }
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

fn close(got: f32, want: f32, tol: f32) -> bool {
    got.to_bits() == want.to_bits() || (got - want).abs() <= tol * want.abs().max(1e-2)
}

/// Largest |got − want| relative to the largest |want|, and how many are bit-identical.
fn compare(got: &[f32], want: &[f32]) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let mut worst = 0f64;
    let mut same = 0;
    for (g, w) in got.iter().zip(want) {
        if g.to_bits() == w.to_bits() {
            same += 1;
        } else {
            worst = worst.max((*g as f64 - *w as f64).abs() / scale);
        }
    }
    (worst, same)
}

// ---------- bank scores ----------

fn check_bank_scores(
    g: &Gpu,
    pool: &Pool,
    rng: &mut Rng,
    what: &str,
    tweak: &dyn Fn(usize, &mut BankData),
) {
    let plan = g.k.plan.clone();
    let mut cpu: [Option<(BankData, CpuScore)>; 3] = [None, None, None];
    for (b, slot) in cpu.iter_mut().enumerate() {
        let Some(sh) = plan.banks[b] else { continue };
        let mut d = bank_data(rng, sh);
        tweak(b, &mut d);
        let c = cpu_score(pool, &d);
        let i = g.inp[b];
        g.put(i.dist, &c.dmap);
        g.put(i.nn, &c.nn.iter().map(|&v| v as i32).collect::<Vec<_>>());
        g.put(i.x, &d.x);
        g.put(i.rows, &d.rows);
        *slot = Some((d, c));
    }
    g.poison_outputs();
    g.bank_scores(false);
    let grids = g.get(g.s.grids);
    let recs = g.get(g.s.scores);
    let knn = g.get(g.s.knn);
    for b in 0..3 {
        let grid = &grids[b * plan.stride..(b + 1) * plan.stride];
        let r = recs[b];
        let Some((d, c)) = &cpu[b] else {
            assert!(
                grid.iter().all(|v| v.to_bits() == 0),
                "{what}: absent grid {b}"
            );
            assert_eq!((r.present, r.patch, r.nearest), (0, -1, -1), "{what}: {b}");
            assert_eq!((r.score, r.weight), (0.0, 1.0), "{what}: {b}");
            continue;
        };
        let p = c.dmap.len();
        assert!(
            grid[..p]
                .iter()
                .zip(&c.dmap)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: bank {b} grid"
        );
        assert!(
            grid[p..].iter().all(|v| v.to_bits() == 0),
            "{what}: grid tail"
        );
        let s = c.score;
        assert_eq!(r.present, 1);
        assert_eq!(r.patch as usize, s.patch, "{what}: bank {b} j*");
        assert_eq!(r.nearest, s.nearest as i32, "{what}: bank {b} m*");
        assert_eq!(
            r.s_star.to_bits(),
            s.s_star.to_bits(),
            "{what}: bank {b} s*"
        );
        let n = d.rows.len() / d.dim;
        let want = top3_ref(&d.rows, d.dim, s.nearest as usize);
        assert_eq!(r.found as usize, n.min(3), "{what}: bank {b} found");
        let splits = plan.knn_splits[b];
        let base = b * plan.max_splits * 3;
        let mut keys: Vec<u64> = knn[base..base + 3 * splits]
            .iter()
            .copied()
            .filter(|&k| k != u64::MAX)
            .collect();
        keys.sort_unstable();
        let got: Vec<(u32, u32)> = keys
            .iter()
            .take(3)
            .map(|&k| ((k >> 32) as u32, k as u32))
            .collect();
        assert_eq!(got, want, "{what}: bank {b} 3 nearest rows of m*");
        assert!(
            close(r.weight, s.weight, 1e-5) && close(r.score, s.score, 1e-5),
            "{what}: bank {b}: weight {} vs {}, score {} vs {}",
            r.weight,
            s.weight,
            r.score,
            s.score
        );
        eprintln!(
            "{what}: bank {b}: j* {} m* {} s* {} w {} ({}) score {} ({})",
            s.patch,
            s.nearest,
            s.s_star,
            r.weight,
            if r.weight == s.weight {
                "identical"
            } else {
                "close"
            },
            r.score,
            if r.score == s.score {
                "identical"
            } else {
                "close"
            }
        );
    }
    // Twice: identical bits.
    g.poison_outputs();
    g.bank_scores(false);
    assert_eq!(bits(&g.get(g.s.grids)), bits(&grids), "{what}: grids rerun");
    assert_eq!(g.get(g.s.scores), recs, "{what}: scores rerun");

    // Squared distances in: the grid is sqrt(max(d², 0)); j* its first maximum.
    for (b, entry) in cpu.iter().enumerate() {
        if let Some((_, c)) = entry {
            let mut d2: Vec<f32> = c.dmap.iter().map(|v| v * v).collect();
            d2[0] = 0.0;
            if d2.len() > 2 {
                d2[1] = -1.0;
            }
            g.put(g.inp[b].dist, &d2);
        }
    }
    g.poison_outputs();
    g.bank_scores(true);
    let grids = g.get(g.s.grids);
    let recs = g.get(g.s.scores);
    for b in 0..3 {
        let Some((_, c)) = &cpu[b] else { continue };
        let want: Vec<f32> = c
            .dmap
            .iter()
            .enumerate()
            .map(|(j, v)| match j {
                0 => 0.0,
                1 if c.dmap.len() > 2 => 0.0,
                _ => (v * v).max(0.0).sqrt(),
            })
            .collect();
        let grid = &grids[b * plan.stride..b * plan.stride + want.len()];
        assert_eq!(bits(grid), bits(&want), "{what}: bank {b} squared grid");
        let mut js = 0;
        for j in 1..want.len() {
            if want[j] > want[js] {
                js = j;
            }
        }
        assert_eq!(recs[b].patch as usize, js, "{what}: bank {b} squared j*");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn bank_scores_match_the_cpu() {
    let Some(dev) = device() else { return };
    let pool = Pool::new(2);
    let mut rng = Rng::new(41);
    // Small widths: scalar path (dim 37), float4 path with a remainder (dim 100),
    // several splits of the k-nearest scan (5000 rows).
    let plan = MapPlan::from_shapes(
        [shape(8, 2500, 37), shape(4, 300, 32), shape(8, 5000, 100)],
        32,
        2.0,
    )
    .unwrap();
    let g = Gpu::new(dev, plan);
    check_bank_scores(&g, &pool, &mut rng, "small", &|_, _| {});
    // Ties: duplicated bank rows (ties among the 3 nearest) and duplicated farthest
    // patches (j* must be the first).
    check_bank_scores(&g, &pool, &mut rng, "ties", &|_, d| {
        let dim = d.dim;
        let n = d.rows.len() / dim;
        for i in (0..n).step_by(3) {
            let src = d.rows[i * dim..(i + 1) * dim].to_vec();
            for k in 1..3.min(n - i) {
                d.rows[(i + k) * dim..(i + k + 1) * dim].copy_from_slice(&src);
            }
        }
        let p = d.x.len() / dim;
        let far: Vec<f32> = d.x[..dim].iter().map(|v| v * 10.0 + 5.0).collect();
        for j in [p / 3, p / 2, p - 1] {
            d.x[j * dim..(j + 1) * dim].copy_from_slice(&far);
        }
    });
    drop(g);

    // Absent banks; tiny banks (1 row: no neighbour term; 2 rows: one term).
    let dev = device().expect("the device opened before");
    let plan = MapPlan::from_shapes([None, shape(4, 1, 16), shape(4, 2, 16)], 16, 1.0).unwrap();
    let g = Gpu::new(dev, plan);
    check_bank_scores(&g, &pool, &mut rng, "tiny", &|_, _| {});
    drop(g);

    // M3DM widths.
    let dev = device().expect("the device opened before");
    let plan = MapPlan::from_shapes(
        [
            shape(56, 3000, 1152),
            shape(28, 1500, 768),
            shape(56, 2500, 1920),
        ],
        224,
        4.0,
    )
    .unwrap();
    let g = Gpu::new(dev, plan);
    check_bank_scores(&g, &pool, &mut rng, "m3dm", &|_, _| {});
}

// ---------- maps ----------

#[test]
fn anomaly_maps_match_the_cpu() {
    let Some(dev) = device() else { return };
    let mut dev = Some(dev);
    let mut rng = Rng::new(7);
    let cases: [([Option<BankShape>; 3], usize, f32); 4] = [
        (
            [shape(56, 1, 8), shape(28, 1, 8), shape(56, 1, 8)],
            224,
            4.0,
        ),
        ([shape(8, 1, 8), None, shape(8, 1, 8)], 37, 1.5),
        ([shape(3, 1, 8), shape(5, 1, 8), None], 10, 4.0),
        ([None, shape(28, 1, 8), None], 300, 16.0),
    ];
    for (banks, s, sigma) in cases {
        let d = dev
            .take()
            .unwrap_or_else(|| device().expect("the device opened before"));
        let g = Gpu::new(d, MapPlan::from_shapes(banks, s, sigma).unwrap());
        let plan = g.k.plan.clone();
        let mut grids = vec![0f32; 3 * plan.stride];
        rng.fill_normal(&mut grids, 1.0);
        grids.iter_mut().for_each(|v| *v = v.abs() * 3.0);
        g.put(g.s.grids, &grids);
        g.poison_outputs();
        g.put(g.s.grids, &grids);
        let b = g.b();
        unsafe { g.k.upsample(&g.dev, b.grids, b.bank_maps).unwrap() };
        g.sync();
        let up = g.get(g.s.bank_maps);
        g.maps();
        let blurred = g.get(g.s.bank_maps);
        let s2 = s * s;
        let mut scratch = vec![0f32; map_scratch_len(s)];
        for bank in 0..3 {
            let (got_up, got) = (
                &up[bank * s2..(bank + 1) * s2],
                &blurred[bank * s2..(bank + 1) * s2],
            );
            let gi = plan.grid(bank);
            if gi == 0 {
                assert!(
                    got.iter().chain(got_up).all(|v| v.to_bits() == 0),
                    "absent bank {bank}"
                );
                continue;
            }
            let grid = &grids[bank * plan.stride..bank * plan.stride + gi * gi];
            let mut want = vec![0f32; s2];
            upsample_bilinear(grid, gi, s, &mut want);
            assert_eq!(
                bits(got_up),
                bits(&want),
                "s {s} bank {bank}: upsampled map"
            );
            gaussian_blur(&mut want, s, sigma, &mut scratch);
            let (worst, same) = compare(got, &want);
            eprintln!(
                "maps s {s} σ {sigma} bank {bank}: {same}/{s2} bit-identical, worst relative {worst:.2e}"
            );
            assert!(worst <= 1e-5, "s {s} bank {bank}: blurred map {worst:e}");
            // The one-call CPU path agrees too.
            let mut one = vec![0f32; s2];
            anomaly_map(grid, gi, s, sigma, &mut one, &mut scratch);
            assert_eq!(bits(&one), bits(&want));
        }
        g.maps();
        assert_eq!(bits(&g.get(g.s.bank_maps)), bits(&blurred), "maps rerun");
        dev = Some(g.dev);
    }
}

// ---------- decision ----------

/// `engine::decide`'s part score and verdict, written out.
fn decide_ref(
    cfg: &BankConfig,
    bank: [f32; 3],
    present: [bool; 3],
    case: Case,
    cases: &[Option<CaseDecision>; 3],
    opts: &InspectOptions,
) -> (f32, u32, f32, f32) {
    let vector: [f32; 3] = std::array::from_fn(|b| {
        if present[b] {
            cfg.score_weights[b] * bank[b]
        } else {
            0.0
        }
    });
    let d = match case {
        Case::Complete => None,
        _ if !opts.case_statistics => None,
        c => cases[c as usize],
    };
    let dropped = if case == Case::RgbOnly { 0 } else { 1 };
    let (score, mut pt, mut xt) = match &d {
        Some(d) => (
            d.score(&informative(dropped, vector)),
            d.threshold,
            d.pixel_threshold,
        ),
        None => (
            (0..3).map(|b| cfg.part_svm.w[b] * vector[b]).sum::<f32>(),
            cfg.thresholds.part,
            cfg.thresholds.pixel,
        ),
    };
    if let Some(t) = opts.part_threshold.filter(|t| !t.is_nan()) {
        pt = t;
    }
    if let Some(t) = opts.pixel_threshold.filter(|t| !t.is_nan()) {
        xt = t;
    }
    let verdict = match opts.grey_band.or(cfg.thresholds.grey_band) {
        _ if score.is_nan() => 1,
        Some([lo, hi]) if score >= lo && score < hi => 2,
        _ if score > pt => 1,
        _ => 0,
    };
    (score, verdict, pt, xt)
}

#[test]
fn decision_matches_the_engine_formulas() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(3);
    let s = 64usize;
    let plan =
        MapPlan::from_shapes([shape(8, 4, 8), shape(4, 4, 8), shape(8, 4, 8)], s, 2.0).unwrap();
    let g = Gpu::new(dev, plan);
    let mut cfg = BankConfig::empty([0; 16], "m", "c");
    cfg.score_weights = [1.0, 0.1, 1.0];
    cfg.part_svm.w = [0.8, -1.3, 0.45];
    cfg.pixel_svm.w = [0.6, 1.7, -0.2];
    cfg.thresholds.part = 2.0;
    cfg.thresholds.pixel = 1.0;
    let mk = |rng: &mut Rng| CaseDecision {
        mean: [
            rng.uniform() * 3.0,
            rng.uniform() * 0.3,
            rng.uniform() * 3.0,
        ],
        precision: [1.5, 0.2, 0.1, 0.2, 2.5, -0.3, 0.1, -0.3, 0.9],
        threshold: 2.5,
        pixel_w: [rng.uniform(), rng.uniform(), 0.0],
        pixel_threshold: 0.7,
        score_affine: [0.8, 0.3],
        map_affine: [1.7, -0.4],
    };
    let cases = [None, Some(mk(&mut rng)), Some(mk(&mut rng))];
    let s2 = s * s;
    let mut bm = vec![0f32; 3 * s2];
    rng.fill_normal(&mut bm, 1.0);
    g.put(g.s.bank_maps, &bm);
    let mut checked = 0;
    let mut identical = 0;
    for round in 0..40 {
        let mut present = [true; 3];
        if round % 5 == 4 {
            present[(round / 5) % 3] = false;
        }
        let bank: [f32; 3] = std::array::from_fn(|b| match (round, b) {
            (6, 1) | (7, 1) => f32::NAN,
            _ => rng.uniform() * 4.0,
        });
        let case = Case::ALL[round % 3];
        let mut cfg = cfg.clone();
        if round % 4 == 1 {
            cfg.thresholds.grey_band = Some([1.0, 3.0]);
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
        g.put(g.s.scores, &recs);
        let p = DecisionParams::new(&cfg, case, &cases, &opts);
        g.poison(g.s.decision);
        g.poison(g.s.map);
        let b = g.b();
        unsafe {
            g.k.decide_part(&g.dev, &p.part, b.scores, b.decision)
                .unwrap();
            g.k.pixel_map(&g.dev, &p.pixel, b.bank_maps, b.map, None)
                .unwrap();
        }
        g.sync();
        let got: PartDecisionRec = g.get(g.s.decision)[0];
        let (score, verdict, pt, xt) = decide_ref(&cfg, bank, present, case, &cases, &opts);
        let what = format!("round {round} ({case:?})");
        assert_eq!(got.verdict as u32, verdict, "{what}: verdict");
        assert!(
            (score.is_nan() && got.score.is_nan()) || close(got.score, score, 1e-5),
            "{what}: score {} vs {score}",
            got.score
        );
        identical += (got.score.to_bits() == score.to_bits()) as usize;
        assert_eq!(
            (got.part_threshold, got.pixel_threshold),
            (pt, xt),
            "{what}"
        );
        for k in 0..3 {
            let v = if present[k] {
                cfg.score_weights[k] * bank[k]
            } else {
                0.0
            };
            assert_eq!(got.vector[k].to_bits(), v.to_bits(), "{what}: vector");
        }
        // Pixel map: engine's `ma·(c0·m0 + c1·m1 + c2·m2) + mb`.
        let d = match case {
            Case::Complete => None,
            _ if !opts.case_statistics => None,
            c => cases[c as usize],
        };
        let (pw, [ma, mb]) = d.map_or((cfg.pixel_svm.w, [1.0, 0.0]), |d| (d.pixel_w, d.map_affine));
        let c: [f32; 3] = std::array::from_fn(|k| pw[k] * cfg.score_weights[k]);
        let want: Vec<f32> = (0..s2)
            .map(|i| ma * (c[0] * bm[i] + c[1] * bm[s2 + i] + c[2] * bm[2 * s2 + i]) + mb)
            .collect();
        let (worst, same) = compare(&g.get(g.s.map), &want);
        assert!(worst <= 1e-5, "{what}: pixel map {worst:e}");
        assert_eq!(same, s2, "{what}: pixel map not bit-identical");
        checked += 1;
    }
    eprintln!("decision: {checked} rounds, {identical} scores bit-identical");
}

// ---------- regions ----------

fn same_region(a: &Region, b: &Region) -> bool {
    (a.x0, a.y0, a.x1, a.y1, a.area, a.max.to_bits())
        == (b.x0, b.y0, b.x1, b.y1, b.area, b.max.to_bits())
        && (a.mean.to_bits() == b.mean.to_bits()
            || ((a.mean - b.mean).abs() as f64) <= 1e-6 * (b.mean.abs() as f64).max(1e-30))
}

/// Runs the GPU regions on `map` and checks them against both references.
fn check_regions(g: &Gpu, map: &[f32], t: f32, what: &str) {
    let s = g.k.plan.map_size;
    let s2 = s * s;
    let mut bm = vec![0f32; 3 * s2];
    bm[..s2].copy_from_slice(map);
    // The pixel map with c = (1, 0, 0), affine (1, 0) is the input (−0 becomes +0).
    let map: Vec<f32> = map.iter().map(|v| v + 0.0).collect();
    g.poison_outputs();
    g.put(g.s.bank_maps, &bm);
    g.regions(t);
    assert_eq!(bits(&g.get(g.s.map)), bits(&map), "{what}: map");
    let count = g.get(g.s.count);
    let first = g.get(g.s.regions);
    let got: Vec<Region> = first.iter().copied().map(Region::from).collect();
    let labels = g.get(g.s.labels);
    let sel = g.get(g.s.sel);
    let (want_labels, want, found) = regions_ref(&map, s, t, MAX_REGIONS);
    assert_eq!(count[0] as usize, found, "{what}: regions found");
    assert_eq!(count[1] as usize, want.len(), "{what}: regions kept");
    assert_eq!(labels, want_labels, "{what}: labels");
    for (k, (root, r)) in want.iter().enumerate() {
        assert_eq!(sel[k], *root, "{what}: region {k} root");
        assert!(
            same_region(&got[k], r),
            "{what}: region {k}: {:?} vs {r:?}",
            got[k]
        );
    }
    for k in want.len()..MAX_REGIONS {
        assert_eq!(got[k], Region::default(), "{what}: unused region {k}");
        assert_eq!(sel[k], u32::MAX);
    }
    // The engine's find_regions: same count; same regions in the same order where the
    // peaks are distinct (it sorts by peak only), the same set otherwise.
    let (mut l, mut q) = (vec![0u32; s2], vec![0u32; s2]);
    let mut cpu = Vec::with_capacity(MAX_REGIONS);
    let n = find_regions(&map, s, t, &mut l, &mut q, &mut cpu, MAX_REGIONS);
    assert_eq!(n, found, "{what}: find_regions count");
    assert_eq!(cpu.len(), want.len());
    let mut peaks: Vec<u32> = want.iter().map(|r| r.1.max.to_bits()).collect();
    peaks.dedup();
    let distinct = peaks.len() == want.len()
        && (found <= MAX_REGIONS
            || map
                .iter()
                .filter(|v| v.to_bits() == want.last().unwrap().1.max.to_bits())
                .count()
                == 1);
    if distinct {
        for (k, c) in cpu.iter().enumerate() {
            assert!(
                same_region(&got[k], c),
                "{what}: region {k} vs find_regions: {:?} vs {c:?}",
                got[k]
            );
        }
    } else if found <= MAX_REGIONS {
        for c in &cpu {
            assert!(
                got[..want.len()].iter().any(|r| same_region(r, c)),
                "{what}: find_regions' {c:?} missing"
            );
        }
    }
    // Twice: identical bits.
    g.poison_outputs();
    g.put(g.s.bank_maps, &bm);
    g.regions(t);
    let again = g.get(g.s.regions);
    assert!(
        bytemuck::cast_slice::<RegionRec, u8>(&again)
            == bytemuck::cast_slice::<RegionRec, u8>(&first),
        "{what}: regions rerun"
    );
    assert_eq!(g.get(g.s.labels), labels, "{what}: labels rerun");
    eprintln!(
        "{what}: {found} regions, kept {}, identical to the references",
        want.len()
    );
}

/// A smooth random map: a random coarse grid, upsampled and blurred.
fn smooth_map(rng: &mut Rng, s: usize, gi: usize) -> Vec<f32> {
    let mut grid = vec![0f32; gi * gi];
    rng.fill_normal(&mut grid, 1.0);
    let mut out = vec![0f32; s * s];
    let mut scratch = vec![0f32; map_scratch_len(s)];
    anomaly_map(&grid, gi, s, 2.0, &mut out, &mut scratch);
    out
}

fn quantile(map: &[f32], q: f64) -> f32 {
    let mut v: Vec<f32> = map.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f32::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

#[test]
fn regions_match_the_cpu() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(17);
    let s = 224usize;
    let s2 = s * s;
    let g = Gpu::new(
        dev,
        MapPlan::from_shapes([shape(56, 1, 8), None, None], s, 4.0).unwrap(),
    );
    // Smooth random maps at several thresholds (few to many components, > 64 kept).
    for (gi, q) in [(28, 0.9), (56, 0.7), (56, 0.5), (112, 0.8), (112, 0.97)] {
        let map = smooth_map(&mut rng, s, gi);
        check_regions(&g, &map, quantile(&map, q), &format!("smooth {gi} q {q}"));
    }
    // Noise: thousands of small components, 8-connected through corners.
    let mut noise = vec![0f32; s2];
    rng.fill_normal(&mut noise, 1.0);
    check_regions(&g, &noise, 0.8, "noise");
    // Synthetic shapes that need merging across long detours.
    let mut m = vec![0f32; s2];
    // a comb: teeth joined only at the bottom
    for x in (10..200).step_by(4) {
        for y in 10..100 {
            m[y * s + x] = 1.0 + x as f32 * 1e-3;
        }
    }
    for x in 10..197 {
        m[100 * s + x] = 1.5;
    }
    // a spiral
    let (mut x, mut y, mut len, mut dir) = (160i64, 160i64, 2i64, 0);
    'sp: for _ in 0..40 {
        for _ in 0..len {
            let (dx, dy) = [(1, 0), (0, 1), (-1, 0), (0, -1)][dir % 4];
            x += dx;
            y += dy;
            if !(110..224).contains(&x) || !(110..224).contains(&y) {
                break 'sp;
            }
            m[y as usize * s + x as usize] = 2.0 + (x + y) as f32 * 1e-3;
        }
        dir += 1;
        len += 3;
    }
    // diagonal chains (8-connected only) and isolated pixels with distinct peaks
    for k in 0..60usize {
        m[(120 + k) * s + 10 + k] = 3.0;
        m[(120 + k) * s + 80 - k] = 3.5;
    }
    for k in 0..90usize {
        let (yy, xx) = (5 + 2 * (k / 30), 100 + 3 * (k % 30));
        m[yy * s + xx] = 4.0 + k as f32 * 0.01;
    }
    check_regions(&g, &m, 0.5, "synthetic shapes");
    // Equal peaks: many single pixels with the same value (order by first pixel).
    let mut eq = vec![0f32; s2];
    for k in 0..100usize {
        eq[(2 * (k / 10) + 50) * s + 2 * (k % 10) + 50] = 1.0;
    }
    check_regions(&g, &eq, 0.5, "equal peaks");
    // Everything, nothing, NaN pixels, negative values.
    check_regions(&g, &vec![1.0; s2], 0.5, "full map");
    check_regions(&g, &vec![0.0; s2], 0.5, "empty map");
    let mut nan = smooth_map(&mut rng, s, 56);
    for i in (0..s2).step_by(97) {
        nan[i] = f32::NAN;
    }
    check_regions(&g, &nan, quantile(&nan, 0.6), "NaN pixels");
    let neg: Vec<f32> = smooth_map(&mut rng, s, 28)
        .iter()
        .map(|v| v - 10.0)
        .collect();
    check_regions(&g, &neg, quantile(&neg, 0.8), "negative values");
    drop(g);

    // A NaN threshold: the CPU starts a region at every non-NaN pixel and joins none.
    let dev = device().expect("the device opened before");
    let s = 16usize;
    let g = Gpu::new(
        dev,
        MapPlan::from_shapes([shape(4, 1, 8), None, None], s, 1.0).unwrap(),
    );
    let mut m = smooth_map(&mut rng, s, 4);
    m[5] = f32::NAN;
    check_regions(&g, &m, f32::NAN, "NaN threshold");
    check_regions(&g, &m, quantile(&m, 0.5), "s 16");
}

// ---------- everything, once more, as inspect runs it ----------

#[test]
fn post_search_matches_the_cpu_and_is_deterministic() {
    let Some(dev) = device() else { return };
    let pool = Pool::new(2);
    let mut rng = Rng::new(23);
    let plan = MapPlan::from_shapes(
        [shape(16, 1200, 64), shape(8, 600, 48), shape(16, 1500, 96)],
        96,
        3.0,
    )
    .unwrap();
    let g = Gpu::new(dev, plan);
    let plan = g.k.plan.clone();
    let s = plan.map_size;
    let s2 = s * s;
    let mut data = vec![];
    let mut cpu = vec![];
    for b in 0..3 {
        let sh = plan.banks[b].unwrap();
        let d = bank_data(&mut rng, sh);
        let c = cpu_score(&pool, &d);
        let i = g.inp[b];
        // The search's squared distances, as the device bank search leaves them.
        let d2: Vec<f32> = c.dmap.iter().map(|v| v * v).collect();
        g.put(i.dist, &d2);
        g.put(i.nn, &c.nn.iter().map(|&v| v as i32).collect::<Vec<_>>());
        g.put(i.x, &d.x);
        g.put(i.rows, &d.rows);
        data.push(d);
        cpu.push(c);
    }
    let mut cfg = BankConfig::empty([0; 16], "m", "c");
    cfg.score_weights = [1.0, 0.1, 1.0];
    cfg.part_svm.w = [0.7, 0.2, 0.9];
    cfg.pixel_svm.w = [0.5, 0.3, 0.8];
    cfg.thresholds.part = 1.0;
    let opts = InspectOptions::default();
    let cases = [None, None, None];
    let params = DecisionParams::new(&cfg, Case::Complete, &cases, &opts);
    let run = || {
        g.poison_outputs();
        unsafe {
            g.k.post_search(&g.dev, &g.inputs(), true, &params, (true, true), &g.b())
                .unwrap()
        };
        g.sync();
        (
            bits(&g.get(g.s.grids)),
            g.get(g.s.scores),
            bits(&g.get(g.s.bank_maps)),
            bits(&g.get(g.s.map)),
            g.get(g.s.decision),
            g.get(g.s.count),
            g.get(g.s.regions),
        )
    };
    let first = run();
    // CPU: grids from sqrt(d²), maps, scores from the same grids.
    let mut bank_maps = vec![0f32; 3 * s2];
    let mut scratch = vec![0f32; map_scratch_len(s)];
    for b in 0..3 {
        let grid: Vec<f32> = cpu[b]
            .dmap
            .iter()
            .map(|v| (v * v).max(0.0).sqrt())
            .collect();
        let gi = plan.grid(b);
        anomaly_map(
            &grid,
            gi,
            s,
            plan.sigma,
            &mut bank_maps[b * s2..(b + 1) * s2],
            &mut scratch,
        );
        assert_eq!(
            &first.0[b * plan.stride..b * plan.stride + gi * gi],
            &bits(&grid)[..],
            "bank {b}: grid"
        );
    }
    let (worst, same) = compare(
        &first
            .2
            .iter()
            .map(|&v| f32::from_bits(v))
            .collect::<Vec<_>>(),
        &bank_maps,
    );
    eprintln!(
        "post-search: bank maps {same}/{} bit-identical, worst {worst:.2e}",
        3 * s2
    );
    assert!(worst <= 1e-5);
    // Scores: the CPU's when the squared round trip kept the grid (checked per bank).
    for (b, c) in cpu.iter().enumerate() {
        let r = first.1[b];
        let back = (c.dmap.iter().map(|v| (v * v).max(0.0).sqrt()))
            .zip(&c.dmap)
            .all(|(a, b)| a == *b);
        if back {
            assert_eq!(r.patch as usize, c.score.patch, "bank {b}: j*");
            assert!(close(r.score, c.score.score, 1e-5), "bank {b}: score");
        }
    }
    let bank: [f32; 3] = std::array::from_fn(|b| first.1[b].score);
    let (score, verdict, _, _) = decide_ref(&cfg, bank, [true; 3], Case::Complete, &cases, &opts);
    assert!(close(first.4[0].score, score, 1e-5));
    assert_eq!(first.4[0].verdict as u32, verdict);
    let map: Vec<f32> = first.3.iter().map(|&v| f32::from_bits(v)).collect();
    let c: [f32; 3] = std::array::from_fn(|k| cfg.pixel_svm.w[k] * cfg.score_weights[k]);
    let gpu_bm: Vec<f32> = first.2.iter().map(|&v| f32::from_bits(v)).collect();
    let want: Vec<f32> = (0..s2)
        .map(|i| c[0] * gpu_bm[i] + c[1] * gpu_bm[s2 + i] + c[2] * gpu_bm[2 * s2 + i])
        .collect();
    assert_eq!(bits(&map), bits(&want), "pixel map");
    let t = quantile(&map, 0.9);
    // Regions at the configured threshold (0 here), then the poisoned buffers.
    let (_, want_regions, found) = regions_ref(&map, s, cfg.thresholds.pixel, MAX_REGIONS);
    assert_eq!(first.5[0] as usize, found);
    for (k, (_, r)) in want_regions.iter().enumerate() {
        assert!(same_region(&Region::from(first.6[k]), r), "region {k}");
    }
    // Fully written: no poison left in any output.
    assert!(
        first.0.iter().all(|&v| !f32::from_bits(v).is_nan()),
        "grids"
    );
    assert!(
        first.2.iter().all(|&v| !f32::from_bits(v).is_nan()),
        "bank maps"
    );
    assert!(first.3.iter().all(|&v| !f32::from_bits(v).is_nan()), "map");
    assert!(
        first.1.iter().all(|r| !r.score.is_nan() && r.found >= 0),
        "scores"
    );
    assert!(first.5.iter().all(|&v| v != u32::MAX), "count");
    assert!(
        first.6.iter().all(|r| r.x0 != u32::MAX && !r.max.is_nan()),
        "regions"
    );
    assert!(!first.4[0].score.is_nan() && first.4[0].verdict >= 0);
    // Same input, same bits.
    for _ in 0..3 {
        let again = run();
        assert_eq!(again.0, first.0);
        assert_eq!(again.1, first.1);
        assert_eq!(again.2, first.2);
        assert_eq!(again.3, first.3);
        assert_eq!(again.4, first.4);
        assert_eq!(again.5, first.5);
        assert_eq!(again.6, first.6);
    }
    // Regions only at a busier threshold, map not asked for: same regions as from the map.
    let mut p2 = params;
    p2.pixel.threshold = t;
    g.poison_outputs();
    unsafe {
        g.k.post_search(&g.dev, &g.inputs(), true, &p2, (false, true), &g.b())
            .unwrap()
    };
    g.sync();
    let (_, want_regions, found) = regions_ref(&map, s, t, MAX_REGIONS);
    assert_eq!(g.get(g.s.count)[0] as usize, found);
    let got = g.get(g.s.regions);
    for (k, (_, r)) in want_regions.iter().enumerate() {
        assert!(same_region(&Region::from(got[k]), r), "busy region {k}");
    }
    eprintln!("post-search: {found} regions at the 0.9 quantile; deterministic over 4 runs");
}
