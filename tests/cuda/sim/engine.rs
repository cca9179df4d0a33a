//! The engine on the simulated device (backend `cuda-sim`) against the same engine on the
//! CPU backend: every device stage in use (no fallback), complete parts and both RADAR
//! cases, f32 and bf16 paths, on the small preset (heads of 32) and on its variant with
//! heads of 64 (`common::small_hd64`, the M3DM head size); one device object per engine.

use crate::common;

use miad::backend::{Backend, Precision};
use miad::config::{FeatureNorm, ModelConfig};
use miad::cpu::bank_search::{score_part, score_scratch_len, BankScore};
use miad::cpu::pool::Pool;
use miad::cuda::device::DEVICES_OPENED;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::synth::Category;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::score::BankSet;
use miad::types::Case;
use std::sync::atomic::Ordering;

pub fn options(backend: Backend, precision: Precision) -> EngineOptions {
    EngineOptions {
        threads: 2,
        max_width: 96,
        max_height: 96,
        backend,
        precision,
        ..EngineOptions::default()
    }
}

/// Scores and maps (relative) on the f32 path: they are distances to bank rows, see
/// `parity`.
const DISTANCE_TOLERANCE_F32: f32 = 2e-3;

/// The CPU search of bank `bk` on a part's features: its bank score (s*, w, worst patch,
/// m*).
fn cpu_search(set: &BankSet, bk: usize, feats: &[f32]) -> BankScore {
    let view = set.banks[bk].unwrap();
    let FeatureNorm { mean, std } = set.norms[bk];
    let x: Vec<f32> = feats.iter().map(|v| (v - mean) / std).collect();
    let n = x.len() / view.dim;
    let (mut dmap, mut nn) = (vec![0f32; n], vec![0u32; n]);
    let mut scratch = vec![0f32; score_scratch_len(1, view.n)];
    score_part(
        &Pool::new(1),
        &x,
        view,
        None,
        &mut dmap,
        &mut nn,
        &mut scratch,
    )
}

/// Distance of the part's (normalised) patch `patch` to row `row` of bank `bk`.
fn row_distance(set: &BankSet, bk: usize, feats: &[f32], patch: usize, row: u32) -> f32 {
    let view = set.banks[bk].unwrap();
    let FeatureNorm { mean, std } = set.norms[bk];
    let d = view.dim;
    let q = &feats[patch * d..(patch + 1) * d];
    let m = &view.data[row as usize * d..(row as usize + 1) * d];
    let sq: f64 = q
        .iter()
        .zip(m)
        .map(|(v, w)| (((v - mean) / std - w) as f64).powi(2))
        .sum();
    sq.sqrt() as f32
}

/// Bank `bk`'s scores on the bf16 path, the CPU engine's (`score_a`, features `fa`) and
/// the device's (`score_b`, `fb`): each equal to the CPU search on its own features, s*
/// within `tol`, and w and the score within `tol` wherever both chose the same worst patch
/// and m*. The re-weighting (SPEC §7) takes `w` from the neighbourhood of m*, the nearest
/// row of the worst patch: where two patches are about equally far from the bank, or two
/// rows about equally near the worst patch, the features' bf16 error picks either, and the
/// bank score moves by more than the features. So a different choice must be a tie within
/// `tol` on the CPU's features: the two worst patches' distances to their nearest rows,
/// or, the same patch, its distances to both rows.
#[allow(clippy::too_many_arguments)]
fn assert_bank_scores_agree_up_to_ties(
    set: &BankSet,
    bk: usize,
    fa: &[f32],
    fb: &[f32],
    score_a: f32,
    score_b: f32,
    tol: f32,
    what: &str,
) {
    let (x, y) = (cpu_search(set, bk, fa), cpu_search(set, bk, fb));
    eprintln!(
        "{what} bank {bk}: score {score_a} {score_b}, s* {} {}, w {} {}, patch {} {}, m* {} {}",
        x.s_star, y.s_star, x.weight, y.weight, x.patch, y.patch, x.nearest, y.nearest
    );
    assert!(
        rel(score_a, x.score) <= DISTANCE_TOLERANCE_F32,
        "{what}: bank {bk} cpu"
    );
    assert!(
        rel(score_b, y.score) <= DISTANCE_TOLERANCE_F32,
        "{what}: bank {bk} sim"
    );
    assert!(rel(x.s_star, y.s_star) <= tol, "{what}: bank {bk} s*");
    if x.patch != y.patch {
        let other = cpu_search_patch_distance(set, bk, fa, y.patch);
        eprintln!(
            "{what} bank {bk}: worst patches {} and {} at {} and {other}",
            x.patch, y.patch, x.s_star
        );
        assert!(
            rel(x.s_star, other) <= tol,
            "{what}: bank {bk} worst patch flipped off a tie"
        );
    } else if x.nearest != y.nearest {
        let (da, db) = (
            row_distance(set, bk, fa, x.patch, x.nearest),
            row_distance(set, bk, fa, x.patch, y.nearest),
        );
        eprintln!("{what} bank {bk}: patch {} to m* {da} and {db}", x.patch);
        assert!(rel(da, db) <= tol, "{what}: bank {bk} m* flipped off a tie");
    } else {
        assert!(rel(x.weight, y.weight) <= tol, "{what}: bank {bk} w");
        assert!(
            rel(score_a, score_b) <= tol,
            "{what}: bank {bk} cpu {score_a} sim {score_b}"
        );
    }
}

/// Distance of the part's patch `patch` to its nearest row of bank `bk`.
fn cpu_search_patch_distance(set: &BankSet, bk: usize, feats: &[f32], patch: usize) -> f32 {
    let view = set.banks[bk].unwrap();
    (0..view.n as u32)
        .map(|row| row_distance(set, bk, feats, patch, row))
        .fold(f32::INFINITY, f32::min)
}

/// The device stages an engine on the simulated device must use: all of them (RADAR's
/// fusion stays on the CPU, see `parity`).
pub const STAGES: [&str; 6] = [
    "preprocessing",
    "point branch",
    "rgb branch",
    "fusion",
    "bank search",
    "maps and decision",
];

/// The fixture's engine on the CPU and on the simulated device (every stage there).
pub fn cpu_and_sim(fx: &common::Fixture, precision: Precision) -> (Engine, Engine) {
    let cpu = Engine::open(&fx.model, &fx.bank, &options(Backend::Cpu, precision)).unwrap();
    let sim = Engine::open(&fx.model, &fx.bank, &options(Backend::CudaSim, precision)).unwrap();
    assert_on_the_simulated_device(&sim);
    (cpu, sim)
}

pub fn assert_on_the_simulated_device(e: &Engine) {
    assert_on_the_simulated_device_but(e, &[]);
}

/// [`assert_on_the_simulated_device`] for an engine whose stages `on_cpu` stay on the CPU,
/// each with its reason in the fallback note.
pub fn assert_on_the_simulated_device_but(e: &Engine, on_cpu: &[&str]) {
    let c = e.backend();
    assert_eq!(c.used, Backend::CudaSim, "{}", c.describe());
    if on_cpu.is_empty() {
        assert_eq!(c.fallback, None, "a stage fell back: {}", c.describe());
    }
    for s in on_cpu {
        let note = c.fallback.as_deref().unwrap_or_default();
        assert!(note.contains(&format!("{s}: ")), "{s}: {}", c.describe());
        assert!(!c.device_stages.contains(s), "{s}: {}", c.describe());
    }
    for s in STAGES.iter().filter(|s| !on_cpu.contains(s)) {
        assert!(c.device_stages.contains(s), "{s}: {}", c.describe());
    }
    assert!(
        c.device.as_deref().is_some_and(|d| d.contains("simulated")),
        "{}",
        c.describe()
    );
}

fn rel(x: f32, y: f32) -> f32 {
    (x - y).abs() / x.abs().max(y.abs()).max(1e-6)
}

/// Largest |a − b| over the largest |a|.
fn rel_max(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let peak = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / peak
}

/// Parity on every test part, complete and with each modality missing. `tol` bounds
/// features and (with at least `dist_tol`) scores, `map_tol` maps, all relative;
/// `exact_decisions` asks for identical verdicts and regions (the f32 path), else
/// verdicts only where the score is clear of the threshold. `both_parts`: the good and the
/// defective test part, else the defective one only (the variants of the model: every
/// emulated inspection costs seconds).
fn parity(
    cfg: ModelConfig,
    precision: Precision,
    tol: f32,
    dist_tol: f32,
    map_tol: f32,
    exact_decisions: bool,
    both_parts: bool,
) {
    let fx = common::fitted_with(
        common::for_the_emulator(cfg.clone()),
        &format!("sim-{}-{precision}", cfg.name),
        Category::Disc,
        11,
        4,
        1,
    );
    let (mut cpu, mut sim) = cpu_and_sim(&fx, precision);
    assert_eq!(sim.backend().precision, precision);
    let bank = BankFile::open(&fx.bank, &OpenOptions::default(), None).unwrap();
    let set = BankSet::from_file(&bank).unwrap();
    let opts = InspectOptions {
        map: true,
        regions: true,
        ..InspectOptions::default()
    };
    let mut parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| (p.name.clone(), p.load().unwrap()))
        .collect();
    assert!(parts.len() >= 2);
    if !both_parts {
        // list_test lists the good parts first.
        parts.drain(..parts.len() - 1);
    }
    let dist_tol = tol.max(dist_tol);
    let mut checked = 0;
    for (name, p) in &parts {
        let (r, c) = p.views();
        for (case, r, c) in [
            (Case::Complete, r, c),
            (Case::RgbOnly, r, None),
            (Case::CloudOnly, None, c),
        ] {
            let a = cpu.inspect(r, c, &opts).unwrap();
            let (sa, ba, va, ca, cal_a, tha) = (
                a.score,
                a.bank_scores,
                a.verdict,
                a.case,
                a.case_calibrated,
                a.part_threshold,
            );
            let regions_a = a.regions.to_vec();
            let map_a = a.map.unwrap().to_vec();
            let feats_a: Vec<Vec<f32>> =
                cpu.features().unwrap().iter().map(|f| f.to_vec()).collect();
            let b = sim.inspect(r, c, &opts).unwrap();
            let (map_b, rb) = (b.map.unwrap().to_vec(), b.regions.to_vec());
            let (sb, bb, vb, cb, cal_b) =
                (b.score, b.bank_scores, b.verdict, b.case, b.case_calibrated);
            let what = format!("{name} {case:?} ({precision})");
            let feats_b: Vec<Vec<f32>> =
                sim.features().unwrap().iter().map(|f| f.to_vec()).collect();
            eprintln!(
                "{what}: score {:.2e}, map {:.2e}, features {:.2e} {:.2e} {:.2e}",
                rel(sa, sb),
                rel_max(&map_a, &map_b),
                rel_max(&feats_a[0], &feats_b[0]),
                rel_max(&feats_a[1], &feats_b[1]),
                rel_max(&feats_a[2], &feats_b[2])
            );
            assert_eq!(ca, case, "{what}");
            assert_eq!(cb, ca, "{what}: case");
            assert_eq!(cal_b, cal_a, "{what}: calibration");
            // A bank score that a tie moved (bf16) moves the part score too: within 1e-1
            // then, as in the RADAR test (measured 9.0e-2: a 5.1 % move of the RGB bank's
            // score on a part without its cloud).
            let mut score_tol = dist_tol;
            for k in 0..3 {
                if precision == Precision::Bf16 && rel(ba[k], bb[k]) > dist_tol {
                    let (fa, fb) = (&feats_a[k], &feats_b[k]);
                    assert_bank_scores_agree_up_to_ties(
                        &set, k, fa, fb, ba[k], bb[k], dist_tol, &what,
                    );
                    score_tol = 1e-1;
                } else {
                    assert!(
                        rel(ba[k], bb[k]) <= dist_tol,
                        "{what}: bank {k} cpu {} sim {}",
                        ba[k],
                        bb[k]
                    );
                }
            }
            assert!(rel(sa, sb) <= score_tol, "{what}: score cpu {sa} sim {sb}");
            let clear = (sa - tha).abs() > 2.0 * score_tol * sa.abs().max(tha.abs());
            if exact_decisions || clear {
                assert_eq!(vb, va, "{what}: verdict (score {sa}, threshold {tha})");
            }
            if exact_decisions {
                assert_eq!(rb.len(), regions_a.len(), "{what}: regions");
                for (x, y) in regions_a.iter().zip(&rb) {
                    assert_eq!(
                        (x.x0, x.y0, x.x1, x.y1, x.area),
                        (y.x0, y.y0, y.x1, y.y1, y.area),
                        "{what}: region"
                    );
                }
            }
            for (k, (fa, fb)) in feats_a.iter().zip(&feats_b).enumerate() {
                let e = rel_max(fa, fb);
                assert!(e <= tol, "{what}: features {k} differ by {e}");
            }
            // Maps and scores are patch distances to the banks, which both searches compute in f32 as
            // |q|² + |b|² − 2q·b with different summation orders: a distance d carries an
            // error of about √dim·ε·(|q|² + |b|²)/2d, ~1e-3 of d for the normalised
            // 256-wide xyz features of this model (measured 6.4e-4 on a cloud-only part,
            // whose map is the xyz bank's, 1.1e-4 on an xyz bank score), while the features
            // agree to 1e-6.
            let e = rel_max(&map_a, &map_b);
            assert!(e <= map_tol, "{what}: map differs by {e} of its peak");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * parts.len());
}

/// The f32 path: features within the tolerance the creation self-checks use (1e-4;
/// measured 1e-6), scores and maps within the distances' rounding (2e-3), identical
/// verdicts, cases and regions.
#[test]
fn f32_engine_on_the_simulated_device_matches_the_cpu() {
    parity(
        common::small_hd64(),
        Precision::F32,
        Precision::F32.feature_tolerance(),
        DISTANCE_TOLERANCE_F32,
        DISTANCE_TOLERANCE_F32,
        true,
        true,
    );
}

/// A model with RADAR's fusion, on the device too (heads of 32: the attention kernels'
/// size; the fit tests' tiny RADAR has heads of 16, which stay on the CPU with a reason):
/// the f32 path as above, each case's instruction in use.
#[test]
fn f32_radar_engine_on_the_simulated_device_matches_the_cpu() {
    let mut cfg = common::small_hd64();
    cfg.name = "small-hd64-radar".into();
    cfg.radar = common::small_radar().radar;
    if let Some(r) = cfg.radar.as_mut() {
        r.heads = 1;
    }
    parity(
        cfg,
        Precision::F32,
        Precision::F32.feature_tolerance(),
        DISTANCE_TOLERANCE_F32,
        DISTANCE_TOLERANCE_F32,
        true,
        false,
    );
}

/// A RADAR model whose heads no attention kernel has (16 wide): the engine keeps its
/// fusion on the CPU and says why, every other stage on the device.
#[test]
fn radar_heads_without_a_kernel_leave_the_fusion_on_the_cpu_with_a_reason() {
    let mut cfg = common::small_hd64();
    cfg.name = "small-hd64-radar16".into();
    cfg.radar = common::small_radar().radar;
    assert_eq!(cfg.radar.as_ref().map(|r| r.dim / r.heads), Some(16));
    let fx = common::fitted_with(
        common::for_the_emulator(cfg),
        "sim-radar-heads16",
        Category::Disc,
        11,
        4,
        1,
    );
    let e = Engine::open(
        &fx.model,
        &fx.bank,
        &options(Backend::CudaSim, Precision::F32),
    )
    .unwrap();
    assert_on_the_simulated_device_but(&e, &["fusion"]);
    let note = e.backend().fallback.clone().unwrap_or_default();
    assert!(note.contains("head dimension of 16"), "{note}");
}

/// The bf16 path: features within its stated tolerance (1e-2; measured 6e-3), scores
/// within the same (bank scores up to the re-weighting's ties:
/// `assert_bank_scores_agree_up_to_ties`), maps within 5e-2 of their peak (a map is per-patch distances, which
/// carry their features' error unaveraged: measured 3e-2 on a cloud-only part), the
/// same cases, and the same verdicts where the score is clear of the threshold.
#[test]
fn bf16_engine_on_the_simulated_device_matches_the_cpu() {
    let tol = Precision::Bf16.feature_tolerance();
    parity(
        common::small_hd64(),
        Precision::Bf16,
        tol,
        tol,
        5e-2,
        false,
        true,
    );
}

/// Part scores of a bf16 RADAR model may differ from the CPU's by more than the features
/// do: a bank score is `w · s*`, and the re-weighting `w` (SPEC §7) is a function of the
/// nearest bank row m* of the worst patch, not of the distance. Where two rows are about
/// equally near that patch, the bf16 features' error picks the other row, whose
/// neighbourhood gives another `w`. Measured on the complete good part (this test's
/// eprintln): s* of the fused bank 5.3230 (CPU) vs 5.3118 (device), same patch, but m* 86
/// vs 4 (from the CPU's patch, row 86 is at 5.322975 and row 4 at 5.323046: a tie to
/// 1.3e-5) and w 0.5117 vs 0.5449, so its bank score 2.7240 vs 2.8942 (6.2 %) and the part
/// score (part SVM weight 1.17 on the fused bank) 3.3706 vs 3.5696 (5.6 %). The RADAR case
/// statistics are not involved (a complete part is scored by the linear part SVM; the
/// incomplete parts, which use them, agree within 2.4e-3), nor is the device fusion or
/// search: the device's bank scores equal the CPU search's on the device's own features.
/// Ties are frequent with this fixture: its fusion, fitted on 4 parts, gives nearly alike
/// fused features (the good part's four worst fused patches lie within 1e-4 of each other).
/// So: features within the bf16 tolerance, each engine's bank scores equal to the CPU
/// search on its own features, s* within the bf16 tolerance, w and the bank score too
/// wherever both engines chose the same m* (else the two rows tie within the bf16
/// tolerance from the CPU's worst patch), the part score within 1e-1 (measured 5.6e-2),
/// identical cases, and the same verdicts where the score is clear of the threshold.
#[test]
fn bf16_radar_engine_on_the_simulated_device_matches_the_cpu_up_to_the_reweighting() {
    let mut cfg = common::small_hd64();
    cfg.name = "small-hd64-radar".into();
    cfg.radar = common::small_radar().radar;
    if let Some(r) = cfg.radar.as_mut() {
        r.heads = 1;
    }
    let precision = Precision::Bf16;
    let tol = Precision::Bf16.feature_tolerance();
    let part_tol = 1e-1;
    let fx = common::fitted_with(
        common::for_the_emulator(cfg),
        "sim-radar-bf16",
        Category::Disc,
        11,
        4,
        1,
    );
    let (mut cpu, mut sim) = cpu_and_sim(&fx, precision);
    let bank = BankFile::open(&fx.bank, &OpenOptions::default(), None).unwrap();
    let set = BankSet::from_file(&bank).unwrap();
    let opts = InspectOptions::default();
    let mut checked = 0;
    for part in list_test(&fx.category).unwrap() {
        let p = part.load().unwrap();
        let (r, c) = p.views();
        for (case, r, c) in [
            (Case::Complete, r, c),
            (Case::RgbOnly, r, None),
            (Case::CloudOnly, None, c),
        ] {
            let what = format!("{} {case:?}", part.name);
            let a = cpu.inspect(r, c, &opts).unwrap();
            let (sa, ba, va, ca, cal_a, tha) = (
                a.score,
                a.bank_scores,
                a.verdict,
                a.case,
                a.case_calibrated,
                a.part_threshold,
            );
            let fa: Vec<Vec<f32>> = cpu.features().unwrap().iter().map(|f| f.to_vec()).collect();
            let b = sim.inspect(r, c, &opts).unwrap();
            let (sb, bb, vb, cb, cal_b) =
                (b.score, b.bank_scores, b.verdict, b.case, b.case_calibrated);
            let fb: Vec<Vec<f32>> = sim.features().unwrap().iter().map(|f| f.to_vec()).collect();
            assert_eq!(ca, case, "{what}");
            assert_eq!(cb, ca, "{what}: case");
            assert_eq!(cal_b, cal_a, "{what}: calibration");
            for k in 0..3 {
                let e = rel_max(&fa[k], &fb[k]);
                assert!(e <= tol, "{what}: features {k} differ by {e}");
                assert_bank_scores_agree_up_to_ties(
                    &set, k, &fa[k], &fb[k], ba[k], bb[k], tol, &what,
                );
            }
            eprintln!("{what}: part score {sa} {sb} ({:.2e})", rel(sa, sb));
            assert!(rel(sa, sb) <= part_tol, "{what}: score cpu {sa} sim {sb}");
            if (sa - tha).abs() > 2.0 * part_tol * sa.abs().max(tha.abs()) {
                assert_eq!(vb, va, "{what}: verdict (score {sa}, threshold {tha})");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6);
}

/// The small preset (heads of 32 in the ViT and the Point-MAE encoder) on the device
/// networks, with the f32 path's tolerances: no stage falls back to the CPU.
#[test]
fn f32_small_preset_on_the_simulated_device_matches_the_cpu() {
    assert_eq!(ModelConfig::small().vit.unwrap().head_dim(), 32);
    parity(
        ModelConfig::small(),
        Precision::F32,
        Precision::F32.feature_tolerance(),
        DISTANCE_TOLERANCE_F32,
        DISTANCE_TOLERANCE_F32,
        true,
        false,
    );
}

/// The small preset on the bf16 path: features within the bf16 tolerance (1e-2; measured
/// 6e-3), scores within 5e-2 and maps within 1e-1 of their peak. A map value is a
/// distance to the nearest bank row, which moves by up to the size of its feature's
/// error; this model's patch distances are small next to its features (narrow 96-wide
/// encoders, 2 blocks), so the features' 6e-3 becomes up to 2e-2 of a bank score
/// (measured: the xyz bank of a complete part) and 8.2e-2 of a cloud-only map's peak
/// (measured), against 3e-2 with heads of 64 (`bf16_engine_...`).
#[test]
fn bf16_small_preset_on_the_simulated_device_matches_the_cpu() {
    let tol = Precision::Bf16.feature_tolerance();
    parity(
        ModelConfig::small(),
        Precision::Bf16,
        tol,
        5e-2,
        1e-1,
        false,
        false,
    );
}

/// One device (context and stream) per engine, shared by its three device stages.
#[test]
fn one_device_per_engine() {
    if !common::alone_in_process!(one_device_per_engine) {
        return;
    }
    let fx = common::fitted_with(
        common::for_the_emulator(common::small_hd64()),
        "sim-one",
        Category::Disc,
        12,
        4,
        1,
    );
    let before = DEVICES_OPENED.load(Ordering::Relaxed);
    let e = Engine::open(
        &fx.model,
        &fx.bank,
        &options(Backend::CudaSim, Precision::F32),
    )
    .unwrap();
    assert_on_the_simulated_device(&e);
    assert_eq!(DEVICES_OPENED.load(Ordering::Relaxed) - before, 1);
}

/// One arena, one stream, one cuBLASLt handle and each kernel module once per engine, on
/// the f32 and the bf16 path (the same check runs on a GPU: `engine::`).
#[test]
fn one_device_object_per_engine() {
    for p in [Precision::F32, Precision::Bf16] {
        assert!(crate::engine::assert_one_device_object(
            Backend::CudaSim,
            p,
            &format!("sim-one-{p}")
        ));
    }
}

/// What one inspection decided, copied out of the engine.
#[derive(Debug)]
struct Decided {
    score: f32,
    bank: [f32; 3],
    verdict: miad::engine::Verdict,
    case: Case,
    status: miad::pipeline::preprocess::ModalityStatus,
    calibrated: bool,
    thresholds: (f32, f32),
    map: Option<Vec<f32>>,
    regions: Vec<(u32, u32, u32, u32, u32)>,
    found: usize,
}

fn decided(
    e: &mut Engine,
    rgb: Option<miad::pipeline::input::RgbView<'_>>,
    cloud: Option<miad::pipeline::input::CloudView<'_>>,
    opts: &InspectOptions,
) -> Decided {
    let r = e.inspect(rgb, cloud, opts).unwrap();
    Decided {
        score: r.score,
        bank: r.bank_scores,
        verdict: r.verdict,
        case: r.case,
        status: r.status,
        calibrated: r.case_calibrated,
        thresholds: (r.part_threshold, r.pixel_threshold),
        map: r.map.map(<[f32]>::to_vec),
        regions: r
            .regions
            .iter()
            .map(|g| (g.x0, g.y0, g.x1, g.y1, g.area))
            .collect(),
        found: r.regions_found,
    }
}

/// Parts the one recording must serve as the CPU engine does, without re-recording: an
/// unusable cloud (every point zero) beside a usable image, inputs cropped to other sizes
/// than the first part's, and per-part options (no map, regions without the map, other
/// thresholds, no case statistics). The f32 path's tolerances; identical decisions.
#[test]
fn one_recording_serves_unusable_clouds_other_sizes_and_per_part_options() {
    let fx = common::fitted_with(
        common::for_the_emulator(common::small_hd64()),
        "sim-variety",
        Category::Disc,
        13,
        4,
        1,
    );
    let (mut cpu, mut sim) = cpu_and_sim(&fx, Precision::F32);
    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let full = InspectOptions::default();
    let variants = [
        (
            "no map, no regions",
            InspectOptions {
                map: false,
                regions: false,
                ..full
            },
        ),
        ("regions only", InspectOptions { map: false, ..full }),
        (
            "thresholds",
            InspectOptions {
                part_threshold: Some(0.0),
                pixel_threshold: Some(0.5),
                ..full
            },
        ),
        (
            "no case statistics",
            InspectOptions {
                case_statistics: false,
                ..full
            },
        ),
    ];
    let mut seen_zero_cloud = false;
    for (i, p) in parts.iter().enumerate() {
        let (r, c) = p.views();
        let (r, c) = (r.unwrap(), c.unwrap());
        let zeros = vec![0f32; c.data.len()];
        let zero_cloud = miad::pipeline::input::CloudView { data: &zeros, ..c };
        let crop = |w: usize, h: usize| {
            (
                miad::pipeline::input::RgbView {
                    width: w,
                    height: h,
                    ..r
                },
                miad::pipeline::input::CloudView {
                    width: w,
                    height: h,
                    ..c
                },
            )
        };
        let (r_small, c_small) = crop(r.width - 16, r.height - 24);
        let (r_wide, c_wide) = crop(r.width, r.height - 8);
        let mut runs = vec![
            (
                "unusable cloud".to_string(),
                Some(r),
                Some(zero_cloud),
                full,
            ),
            ("cropped".into(), Some(r_small), Some(c_small), full),
            ("cropped, cloud missing".into(), Some(r_wide), None, full),
            ("cropped, RGB missing".into(), None, Some(c_wide), full),
            ("full size again".into(), Some(r), Some(c), full),
        ];
        // The other part: the cloud and size changes that reach its regions; the rest
        // does not depend on the part.
        if i > 0 {
            runs.truncate(2);
        }
        // The per-part options on the first part only: every emulated inspection costs
        // seconds.
        for (name, o) in variants.iter().filter(|_| i == 0) {
            runs.push((name.to_string(), Some(r), Some(c), *o));
            runs.push((format!("{name}, RGB only"), Some(r), None, *o));
        }
        for (what, rv, cv, o) in runs {
            let what = format!("part {i}: {what}");
            let a = decided(&mut cpu, rv, cv, &o);
            let b = decided(&mut sim, rv, cv, &o);
            seen_zero_cloud |= a.status.cloud.is_some() && cv.is_some();
            assert_eq!((b.case, b.status), (a.case, a.status), "{what}");
            assert_eq!(b.calibrated, a.calibrated, "{what}");
            assert_eq!(b.thresholds, a.thresholds, "{what}");
            assert!(
                rel(a.score, b.score) <= DISTANCE_TOLERANCE_F32,
                "{what}: score cpu {} sim {}",
                a.score,
                b.score
            );
            for k in 0..3 {
                assert!(
                    rel(a.bank[k], b.bank[k]) <= DISTANCE_TOLERANCE_F32,
                    "{what}: bank {k}"
                );
            }
            assert_eq!(b.verdict, a.verdict, "{what}: verdict (score {})", a.score);
            assert_eq!(b.map.is_some(), a.map.is_some(), "{what}: map asked for");
            if let (Some(ma), Some(mb)) = (&a.map, &b.map) {
                let e = rel_max(ma, mb);
                assert!(e <= DISTANCE_TOLERANCE_F32, "{what}: map differs by {e}");
            }
            assert_eq!(b.regions, a.regions, "{what}: regions");
            assert_eq!(b.found, a.found, "{what}: regions found");
            // The last map the engine keeps is the one it returned.
            assert_eq!(sim.last_map().is_some(), o.map || o.regions, "{what}");
            // The picture of the part as the networks saw it (downloaded from the device
            // preprocessing when asked for).
            let (pa, pb) = (cpu.preview_image(), sim.preview_image());
            let worst = pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap_or(0);
            assert!(
                pa.len() == pb.len() && worst <= 1,
                "{what}: preview differs by {worst}"
            );
        }
    }
    assert!(seen_zero_cloud, "no part had an unusable cloud");
}
