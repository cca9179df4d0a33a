//! The fit on fake features: bank sizes, normalisation, the xyz background row,
//! leave-one-out scores, calibration, the bank file round trip, and that an anomalous
//! part scores above every defect-free one.

use miad::config::{BankConfig, BankVariant, LinearSvm};
use miad::cpu::pool::Pool;
use miad::fit::banks::{fit, FeatureExtractor, FeatureLayout, FitOptions, Fitted, Progress};
use miad::fit::calibrate::reject_quantile;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::score::{BankSet, Scorer};
use miad::util::rng::Rng;

/// Parts whose patch features are smooth random fields around a shared pattern; the
/// xyz features of a border of cells are all zero (background).
struct Fake {
    layout: FeatureLayout,
    parts: usize,
    seed: u64,
    /// Parts at or above this index get an anomalous blob.
    anomalous_from: usize,
}

impl FeatureExtractor for Fake {
    fn layout(&self) -> FeatureLayout {
        self.layout
    }
    fn parts(&self) -> usize {
        self.parts
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> miad::Result<()> {
        let l = self.layout;
        let mut base = Rng::new(self.seed);
        let mut rng = Rng::new(self.seed + 1000 + part as u64);
        let fill = |out: &mut [f32],
                    grid: usize,
                    dim: usize,
                    base: &mut Rng,
                    rng: &mut Rng,
                    zero_border: bool,
                    bad: bool| {
            for c in 0..grid * grid {
                let (y, x) = (c / grid, c % grid);
                let border = zero_border && (y == 0 || x == 0 || y == grid - 1 || x == grid - 1);
                let blob =
                    bad && y >= grid / 2 && y < grid / 2 + 2 && x >= grid / 2 && x < grid / 2 + 2;
                for k in 0..dim {
                    let pattern = base.normal() + 3.0;
                    let v = pattern + 0.1 * rng.normal() + if blob { 3.0 } else { 0.0 };
                    out[c * dim + k] = if border { 0.0 } else { v };
                }
            }
        };
        let bad = part >= self.anomalous_from;
        fill(xyz, l.xyz_grid, l.xyz_dim, &mut base, &mut rng, true, bad);
        fill(rgb, l.rgb_grid, l.rgb_dim, &mut base, &mut rng, false, bad);
        fill(
            fused,
            l.xyz_grid,
            l.fused_dim,
            &mut base,
            &mut rng,
            false,
            bad,
        );
        Ok(())
    }
}

fn layout() -> FeatureLayout {
    FeatureLayout {
        rgb_grid: 4,
        rgb_dim: 12,
        xyz_grid: 8,
        xyz_dim: 20,
        fused_dim: 32,
    }
}

/// The fit of `ex` with the default options, 32² maps and scratch in `dir`.
fn fit_32(pool: &Pool, ex: &mut impl FeatureExtractor, dir: &std::path::Path) -> Fitted {
    let opts = FitOptions {
        map_size: 32,
        scratch_dir: dir.to_path_buf(),
        ..FitOptions::default()
    };
    let base = BankConfig::empty([7; 16], "fake", "widget");
    fit(pool, ex, base, &opts, &svm, &mut |_| {}).unwrap()
}

/// Part `p`'s raw (xyz, rgb, fused) features from `ex`.
fn features_of(ex: &mut impl FeatureExtractor, p: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let l = ex.layout();
    let mut x = vec![0f32; l.xyz_grid * l.xyz_grid * l.xyz_dim];
    let mut r = vec![0f32; l.rgb_grid * l.rgb_grid * l.rgb_dim];
    let mut f = vec![0f32; l.xyz_grid * l.xyz_grid * l.fused_dim];
    ex.extract(p, &mut x, &mut r, &mut f).unwrap();
    (x, r, f)
}

fn svm(v: &[[f32; 3]]) -> miad::Result<LinearSvm> {
    assert!(!v.is_empty());
    Ok(LinearSvm {
        w: [1.0, 1.0, 1.0],
        offset: 0.0,
    })
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    crate::common::scratch_dir(&format!("fit-{name}"))
}

#[test]
fn fit_builds_banks_calibrates_and_round_trips() {
    let dir = tmpdir("full");
    let pool = Pool::new(2);
    let parts = 12;
    let mut ex = Fake {
        layout: layout(),
        parts,
        seed: 5,
        anomalous_from: usize::MAX,
    };
    let opts = FitOptions {
        map_size: 32,
        scratch_dir: dir.clone(),
        frr: 0.1,
        ..FitOptions::default()
    };
    let mut events = 0usize;
    let base = BankConfig::empty([7; 16], "fake", "widget");
    let fitted = fit(&pool, &mut ex, base, &opts, &svm, &mut |p| {
        events += 1;
        if let Progress::Extract { done, total } = p {
            assert!(done <= total);
        }
    })
    .unwrap();
    assert!(events >= parts);
    let c = &fitted.config;
    // Coreset sizes: ceil(0.1 · candidates); xyz has 36 non-border cells per part plus
    // the appended background row.
    assert_eq!(c.rgb_rows as usize, (16 * parts).div_ceil(10));
    assert_eq!(c.fused_rows as usize, (64 * parts).div_ceil(10));
    assert_eq!(c.xyz_rows as usize, (36 * parts).div_ceil(10) + 1);
    // Normalisation: the rgb values are ~N(3, 1) per cell: mean ≈ 3, std ≈ 1.
    assert!((c.rgb_norm.mean - 3.0).abs() < 0.5, "{:?}", c.rgb_norm);
    assert!((c.rgb_norm.std - 1.0).abs() < 0.3, "{:?}", c.rgb_norm);
    // The xyz background row is the normalised zero feature.
    let (_, _, xyz) = fitted.tensors.iter().find(|t| t.0 == "bank.xyz").unwrap();
    let last = &xyz[xyz.len() - 20..];
    let want = -c.xyz_norm.mean / c.xyz_norm.std;
    assert!(last.iter().all(|v| (v - want).abs() < 1e-6));
    // Calibration: at most floor(frr · n) training scores above the part threshold.
    let above = fitted
        .train_scores
        .iter()
        .filter(|s| **s > c.thresholds.part)
        .count();
    assert!(above <= 1, "{above}");
    assert_eq!(
        c.thresholds.part,
        reject_quantile(&fitted.train_scores, 0.1)
    );
    // No scratch file left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    // Bank file round trip, then score unseen parts: anomalous above every normal one.
    let path = dir.join("widget.bank");
    fitted.write(&path).unwrap();
    let file = BankFile::open(&path, &OpenOptions::default(), None).unwrap();
    assert_eq!(file.config(), c);
    let set = BankSet::from_file(&file).unwrap();
    let scorer = Scorer::new(file.config(), &set, pool.threads());
    let mut scratch = vec![0f32; scorer.scratch_len()];
    let s2 = 32 * 32;
    let mut maps = vec![0f32; 3 * s2];
    let mut map = vec![0f32; s2];
    let l = layout();
    let mut test = Fake {
        layout: l,
        parts: 20,
        seed: 5,
        anomalous_from: 16,
    };
    let mut scores = Vec::new();
    for p in 12..20 {
        let (x, r, f) = features_of(&mut test, p);
        let s = scorer
            .score(
                &pool,
                &set,
                [&x, &r, &f],
                [None; 3],
                &mut maps,
                Some(&mut map),
                &mut scratch,
            )
            .unwrap();
        scores.push(s.score);
        if p >= 16 {
            // The map peaks inside the blob (cells 4..6 of 8 → pixels 16..24 of 32).
            let arg = map
                .iter()
                .enumerate()
                .fold(0, |a, (i, v)| if *v > map[a] { i } else { a });
            let (y, x) = (arg / 32, arg % 32);
            assert!(
                (12..28).contains(&y) && (12..28).contains(&x),
                "peak at {y},{x}"
            );
        }
    }
    let normal_max = scores[..4].iter().copied().fold(f32::MIN, f32::max);
    let bad_min = scores[4..].iter().copied().fold(f32::MAX, f32::min);
    assert!(bad_min > normal_max, "{scores:?}");
    assert!(bad_min > c.thresholds.part);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn variants_keep_only_their_banks_and_bad_options_are_errors() {
    let dir = tmpdir("variants");
    let pool = Pool::new(1);
    let opts = FitOptions {
        map_size: 16,
        scratch_dir: dir.clone(),
        variant: BankVariant::Rgb,
        ..FitOptions::default()
    };
    let mut ex = Fake {
        layout: layout(),
        parts: 3,
        seed: 1,
        anomalous_from: usize::MAX,
    };
    let f = fit(
        &pool,
        &mut ex,
        BankConfig::empty([0; 16], "m", "c"),
        &opts,
        &svm,
        &mut |_| {},
    )
    .unwrap();
    assert!(f.config.rgb_rows > 0 && f.config.xyz_rows == 0 && f.config.fused_rows == 0);
    assert_eq!(f.tensors.len(), 2);
    let bad = FitOptions {
        coreset_ratio: 0.0,
        ..opts.clone()
    };
    assert!(fit(
        &pool,
        &mut ex,
        BankConfig::empty([0; 16], "m", "c"),
        &bad,
        &svm,
        &mut |_| {}
    )
    .is_err());
    let mut empty = Fake {
        layout: layout(),
        parts: 0,
        seed: 1,
        anomalous_from: 0,
    };
    assert!(fit(
        &pool,
        &mut empty,
        BankConfig::empty([0; 16], "m", "c"),
        &opts,
        &svm,
        &mut |_| {}
    )
    .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The re-weighting's rows of every bank row by brute force: the 3 nearest by f32
/// `Σ (a − b)²` summed in order ((distance, index) order), without the first.
fn brute_neighbours(b: &[f32], dim: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for x in b.chunks_exact(dim) {
        let mut all: Vec<(f32, u32)> = b
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, r)| {
                let d: f32 = x.iter().zip(r).map(|(a, c)| (a - c) * (a - c)).sum();
                (d, i as u32)
            })
            .collect();
        all.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
        out.extend((1..3).map(|t| all.get(t).map_or(u32::MAX, |v| v.1)));
    }
    out
}

#[test]
fn fitted_banks_carry_neighbour_tables_and_files_without_them_score_the_same() {
    use miad::format::Writer;
    use miad::pipeline::score::{neighbour_table_name, BANK_NAMES};
    let dir = tmpdir("tables");
    let pool = Pool::new(2);
    let mut ex = Fake {
        layout: layout(),
        parts: 10,
        seed: 9,
        anomalous_from: usize::MAX,
    };
    let opts = FitOptions {
        map_size: 32,
        scratch_dir: dir.clone(),
        ..FitOptions::default()
    };
    let mut phases = Vec::new();
    let mut selected = Vec::new();
    let base = BankConfig::empty([7; 16], "fake", "widget");
    let fitted = fit(&pool, &mut ex, base, &opts, &svm, &mut |p| match p {
        Progress::Neighbours { bank, done, total } => {
            assert!(done <= total);
            phases.push(bank);
        }
        Progress::Select { bank, done, total } => {
            assert!(done <= total);
            if done == total {
                selected.push(bank);
            }
        }
        _ => {}
    })
    .unwrap();
    // A progress report per bank (the selection's up to its last centre), and each table
    // equals brute force on the bank's rows.
    for (b, name) in BANK_NAMES.iter().enumerate() {
        assert!(phases.contains(name), "no progress for {name}");
        assert!(selected.contains(name), "no selection progress for {name}");
        let (_, shape, rows) = fitted
            .tensors
            .iter()
            .find(|t| t.0 == format!("bank.{name}"))
            .unwrap();
        let (_, tshape, table) = fitted
            .tables
            .iter()
            .find(|t| t.0 == neighbour_table_name(b))
            .unwrap();
        assert_eq!(tshape, &vec![shape[0], 2]);
        assert_eq!(table, &brute_neighbours(rows, shape[1]), "{name} table");
    }
    let path = dir.join("new.bank");
    fitted.write(&path).unwrap();
    let new = BankFile::open(&path, &OpenOptions::default(), None).unwrap();
    // The same bank file as written before the tables: every tensor but them.
    let old_path = dir.join("old.bank");
    let mut w = Writer::bank(new.config().clone());
    for e in &new.container().manifest().tensors {
        if !e.name.ends_with("_neighbours") {
            let (e, bytes) = new.container().raw(&e.name).unwrap();
            w.add(e.name.clone(), e.dtype, &e.shape_usize(), bytes);
        }
    }
    w.write(&old_path).unwrap();
    let old = BankFile::open(&old_path, &OpenOptions::default(), None).unwrap();
    let (set_new, set_old) = (
        BankSet::from_file(&new).unwrap(),
        BankSet::from_file(&old).unwrap(),
    );
    for b in 0..3 {
        assert!(set_new.banks[b].unwrap().neighbours.is_some());
        assert!(set_old.banks[b].unwrap().neighbours.is_none());
    }
    // Scores and maps of unseen parts (normal and anomalous): the same bits.
    let scorer = Scorer::new(new.config(), &set_new, pool.threads());
    let mut scratch = vec![0f32; scorer.scratch_len()];
    let s2 = 32 * 32;
    let l = layout();
    let mut test = Fake {
        layout: l,
        parts: 16,
        seed: 9,
        anomalous_from: 13,
    };
    for p in 10..16 {
        let (x, r, f) = features_of(&mut test, p);
        let mut run = |set: &BankSet<'_>| {
            let mut maps = vec![0f32; 3 * s2];
            let s = scorer
                .score(
                    &pool,
                    set,
                    [&x, &r, &f],
                    [None; 3],
                    &mut maps,
                    None,
                    &mut scratch,
                )
                .unwrap();
            (s.bank.map(f32::to_bits), s.score.to_bits(), maps)
        };
        let (a, b) = (run(&set_new), run(&set_old));
        assert_eq!(a.0, b.0, "part {p}: bank scores");
        assert_eq!(a.1, b.1, "part {p}: part score");
        assert!(a
            .2
            .iter()
            .zip(&b.2)
            .all(|(u, v)| u.to_bits() == v.to_bits()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fit with the pruned leave-one-out search equals the fit with the brute-force
/// search (every tensor, table, threshold and training score, and the bank file's
/// bytes), at 1 and 2 threads (how much it prunes: `tests/cpu/bank_prune.rs`).
#[test]
fn pruned_fit_equals_the_brute_force_fit() {
    let dir = tmpdir("pruned");
    let l = FeatureLayout {
        rgb_grid: 8,
        rgb_dim: 24,
        xyz_grid: 16,
        xyz_dim: 40,
        fused_dim: 64,
    };
    let run = |threads: usize, prune: bool| {
        let pool = Pool::new(threads);
        let mut ex = Fake {
            layout: l,
            parts: 10,
            seed: 13,
            anomalous_from: usize::MAX,
        };
        let opts = FitOptions {
            map_size: 32,
            scratch_dir: dir.clone(),
            prune_search: prune,
            ..FitOptions::default()
        };
        let base = BankConfig::empty([7; 16], "fake", "widget");
        let fitted = fit(&pool, &mut ex, base, &opts, &svm, &mut |_| {}).unwrap();
        let path = dir.join(format!("{threads}-{prune}.bank"));
        fitted.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (fitted, bytes)
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (brute, brute_bytes) = run(2, false);
    for (threads, prune) in [(2, true), (1, true), (1, false)] {
        let (f, bytes) = run(threads, prune);
        let what = format!("{threads} threads, pruning {prune}");
        assert_eq!(f.config, brute.config, "{what}: configuration, thresholds");
        assert_eq!(bits(&f.train_scores), bits(&brute.train_scores), "{what}");
        assert_eq!(f.tensors.len(), brute.tensors.len());
        for (a, b) in f.tensors.iter().zip(&brute.tensors) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{what}");
            assert_eq!(bits(&a.2), bits(&b.2), "{what}: {}", a.0);
        }
        assert_eq!(f.tables, brute.tables, "{what}: neighbour tables");
        assert!(bytes == brute_bytes, "{what}: bank file bytes");
        for b in 0..3 {
            let (asked, computed) = f.search_pairs[b];
            assert_eq!(asked, brute.search_pairs[b].0, "{what}: pairs asked");
            // Small clusters are widened to the kernel's row group: rows may count twice.
            assert!(computed > 0 || asked == 0, "{what}: {computed} of {asked}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Scorer::score` searches each set of bit-equal patches once (`pipeline/score.rs`): its
/// per-bank scores and maps must be the bits of searching every patch, computed here by
/// the brute-force scan, the re-weighting and the map on all rows. The parts get extra
/// equal rows (an anomalous row copied to an earlier patch moves the first maximum), and
/// the xyz background border is equal rows already.
#[test]
fn equal_patches_searched_once_score_the_bits_of_every_patch() {
    use miad::cpu::{bank_search, maps};
    let dir = tmpdir("dedupe");
    let pool = Pool::new(2);
    let l = layout();
    let mut ex = Fake {
        layout: l,
        parts: 12,
        seed: 21,
        anomalous_from: usize::MAX,
    };
    let fitted = fit_32(&pool, &mut ex, &dir);
    let path = dir.join("dedupe.bank");
    fitted.write(&path).unwrap();
    let file = BankFile::open(&path, &OpenOptions::default(), None).unwrap();
    let c = file.config();
    let set = BankSet::from_file(&file).unwrap();
    let scorer = Scorer::new(c, &set, pool.threads());
    let mut scratch = vec![0f32; scorer.scratch_len()];
    let s = c.map_size as usize;
    let mut test = Fake {
        layout: l,
        parts: 4,
        seed: 22,
        anomalous_from: 2,
    };
    for p in 0..4 {
        let (mut x, mut r, mut f) = features_of(&mut test, p);
        let copy = |v: &mut [f32], dim: usize, from: usize, to: &[usize]| {
            for &t in to {
                v.copy_within(from * dim..(from + 1) * dim, t * dim);
            }
        };
        // Patch 36 is in the anomalous blob of parts 2 and 3.
        copy(&mut f, 32, 36, &[3, 50]);
        copy(&mut f, 32, 9, &[10, 17, 63]);
        copy(&mut r, 12, 10, &[1, 15]);
        copy(&mut x, 20, 27, &[28, 35]);
        let mut bank_maps = vec![0f32; 3 * s * s];
        let got = scorer
            .score(
                &pool,
                &set,
                [&x, &r, &f],
                [None; 3],
                &mut bank_maps,
                None,
                &mut scratch,
            )
            .unwrap();
        for (b, feats) in [&x, &r, &f].into_iter().enumerate() {
            let view = set.banks[b].unwrap();
            let norm = set.norms[b];
            let inv = 1.0 / norm.std;
            let q: Vec<f32> = feats.iter().map(|v| (v - norm.mean) * inv).collect();
            let n = q.len() / view.dim;
            let (mut d, mut i) = (vec![0f32; n], vec![0u32; n]);
            let mut near = vec![0f32; bank_search::nearest_scratch_len(2)];
            bank_search::nearest(&pool, &q, view, None, &mut d, &mut i, &mut near);
            let mut knn = vec![0f32; bank_search::knn_scratch_len(view.n, 3)];
            let want = bank_search::reweighted_score(&pool, &q, view, None, &d, &i, &mut knn);
            assert_eq!(
                got.bank[b].to_bits(),
                want.score.to_bits(),
                "part {p} bank {b}"
            );
            let mut map = vec![0f32; s * s];
            let mut ms = vec![0f32; maps::map_scratch_len(s)];
            let grid = set.grids[b];
            maps::anomaly_map(&d, grid, s, c.blur_sigma, &mut map, &mut ms);
            let got_map = &bank_maps[b * s * s..(b + 1) * s * s];
            assert!(
                got_map
                    .iter()
                    .zip(&map)
                    .all(|(a, w)| a.to_bits() == w.to_bits()),
                "part {p} bank {b}: map"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Parts of [`Fake`] with equal rows inside each part: every fused row of an even column
/// copied to the next column, and a few rgb rows.
struct WithEqualRows(Fake);

impl FeatureExtractor for WithEqualRows {
    fn layout(&self) -> FeatureLayout {
        self.0.layout
    }
    fn parts(&self) -> usize {
        self.0.parts
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> miad::Result<()> {
        self.0.extract(part, xyz, rgb, fused)?;
        let l = self.0.layout;
        let fd = l.fused_dim;
        for c in (0..l.xyz_grid * l.xyz_grid).step_by(2) {
            fused.copy_within(c * fd..(c + 1) * fd, (c + 1) * fd);
        }
        let rd = l.rgb_dim;
        rgb.copy_within(0..rd, 5 * rd);
        Ok(())
    }
}

/// The fit's greedy coreset runs over each part's distinct rows only (`fit::banks`): the
/// bank must hold the rows `greedy_plain` selects from every candidate row, in order.
#[test]
fn coreset_over_distinct_rows_selects_what_every_row_selects() {
    use miad::cpu::coreset::{greedy_plain, jl_min_dim, project_rows, projection_matrix};
    let dir = tmpdir("distinct");
    let pool = Pool::new(2);
    let l = layout();
    let parts = 12;
    let fake = |seed| Fake {
        layout: l,
        parts,
        seed,
        anomalous_from: usize::MAX,
    };
    let opts = FitOptions::default();
    let mut ex = WithEqualRows(fake(31));
    let fitted = fit_32(&pool, &mut ex, &dir);
    let c = &fitted.config;
    let phase = |name: &str| {
        let p = fitted.phases.iter().find(|p| p.phase.starts_with(name));
        p.map(|p| p.phase.clone()).unwrap_or_default()
    };
    let rows = l.xyz_grid * l.xyz_grid;
    let n = parts * rows;
    let want_phase = format!("coreset fused ({} distinct of {n} ", n / 2);
    assert!(
        phase("coreset fused").starts_with(&want_phase),
        "{}",
        phase("coreset fused")
    );
    // The reference: every candidate row normalised, projected, selected.
    let d = l.fused_dim;
    let mut all = vec![0f32; n * d];
    let mut ex = WithEqualRows(fake(31));
    let (mut x, mut r) = (vec![0f32; rows * l.xyz_dim], vec![0f32; 16 * l.rgb_dim]);
    for p in 0..parts {
        ex.extract(
            p,
            &mut x,
            &mut r,
            &mut all[p * rows * d..(p + 1) * rows * d],
        )
        .unwrap();
    }
    let inv = 1.0 / c.fused_norm.std;
    for v in &mut all {
        *v = (*v - c.fused_norm.mean) * inv;
    }
    let k = jl_min_dim(n, opts.coreset_eps);
    let (proj, pd) = if k > 0 && k < d {
        let m = projection_matrix(k, d, opts.seed ^ 2);
        let mut out = vec![0f32; n * k];
        project_rows(&pool, &all, d, &m, k, &mut out);
        (out, k)
    } else {
        (all.clone(), d)
    };
    let m = (n as f64 * opts.coreset_ratio).ceil() as usize;
    let selected = greedy_plain(&proj, pd, m);
    let want: Vec<u32> = selected
        .iter()
        .flat_map(|&s| &all[s as usize * d..(s as usize + 1) * d])
        .map(|v| v.to_bits())
        .collect();
    let (_, _, bank) = fitted.tensors.iter().find(|t| t.0 == "bank.fused").unwrap();
    let got: Vec<u32> = bank.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got.len(), want.len(), "fused bank rows");
    assert!(
        got == want,
        "the fused bank is not greedy_plain's selection"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
