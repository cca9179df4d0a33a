//! `--precision bf16` on the CPU backend: where the CPU has AVX512-BF16 the engine says
//! it runs bf16 and its scores stay within the bf16 path's stated tolerance of the f32
//! engine's (the ViT features within `Precision::Bf16.feature_tolerance()`, checked in
//! tests/cpu/vit_parity.rs; scores within 5e-2 relative, as the CUDA bf16 path's engine
//! test); elsewhere it says f32 and why, and gives the f32 bits.

use miad::backend::Precision;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::synth::Category;

use crate::common;

/// A fitted fixture, its test parts, and an engine on it opener (2 threads, parts ≤ 96²).
fn fixture(
    name: &str,
    seed: u64,
) -> (
    common::Fixture,
    Vec<miad::eval::dataset::LoadedPart>,
    impl Fn(&common::Fixture, Precision) -> Engine,
) {
    let f = common::fitted(name, Category::Torus, seed, 4, 2);
    let parts = list_test(&f.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let open = |f: &common::Fixture, precision| {
        let opts = EngineOptions {
            threads: 2,
            max_width: 96,
            max_height: 96,
            precision,
            ..EngineOptions::default()
        };
        Engine::open(&f.model, &f.bank, &opts).unwrap()
    };
    (f, parts, open)
}

#[test]
fn cpu_bf16_engine_scores_stay_within_tolerance_of_f32() {
    let (f, parts, open) = fixture("cpu-bf16", 7);
    let (mut e32, mut e16) = (open(&f, Precision::F32), open(&f, Precision::Bf16));
    let bf16_runs = miad::cpu::gemm_bf16::available();
    let choice = e16.backend().clone();
    if bf16_runs {
        assert_eq!(choice.precision, Precision::Bf16);
        assert!(choice.fallback.is_none());
        assert!(
            choice.describe().contains("bank search"),
            "{}",
            choice.describe()
        );
    } else {
        assert_eq!(choice.precision, Precision::F32);
        assert!(choice.fallback.is_some(), "the fallback is said");
    }
    let opts = InspectOptions::default();
    for p in &parts {
        let (r, c) = p.views();
        let s32 = e32.inspect(r, c, &opts).unwrap().score;
        let s16 = e16.inspect(r, c, &opts).unwrap().score;
        if bf16_runs {
            assert!(
                (s16 - s32).abs() <= 5e-2 * s32.abs().max(1e-3),
                "bf16 score {s16} vs f32 {s32}"
            );
        } else {
            assert_eq!(s16.to_bits(), s32.to_bits());
        }
    }
}

/// The bf16 bank search (`Scorer::use_bf16_search`, what `--precision bf16` turns on with
/// AVX512-BF16) on fitted banks and real features: the same nearest rows and distance
/// bits as the f32 search in every bank, hence the same scores and maps, bit for bit; a
/// bank whose bf16 pass left most queries to the f32 scan goes back to f32 for a while.
#[test]
fn cpu_bf16_bank_search_equals_f32_on_fitted_banks() {
    use miad::cpu::bank_search::{
        nearest, nearest_bf16, nearest_bf16_scratch_len, nearest_scratch_len, SearchForm,
    };
    use miad::cpu::pool::Pool;
    use miad::format::{BankFile, OpenOptions};
    use miad::pipeline::score::{BankSet, Scorer, BF16_RETRY_PARTS};
    let (f, parts, open) = fixture("cpu-bf16-search", 11);
    let mut engine = open(&f, Precision::F32);
    let file = BankFile::open(&f.bank, &OpenOptions::default(), None).unwrap();
    let set = BankSet::from_file(&file).unwrap();
    let pool = Pool::new(2);
    let f32_scorer = Scorer::new(file.config(), &set, 2);
    let mut bf16_scorer = f32_scorer.clone();
    let bf16_runs = bf16_scorer.use_bf16_search();
    assert_eq!(bf16_runs, miad::cpu::bank_search::bf16_search_available());
    let want_form = if bf16_runs {
        SearchForm::Bf16
    } else {
        SearchForm::F32
    };
    assert_eq!(bf16_scorer.search_form(), want_form);
    let s = f32_scorer.map_size() * f32_scorer.map_size();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut searched = 0;
    for (part, p) in parts.iter().enumerate() {
        let (r, c) = p.views();
        engine.inspect(r, c, &InspectOptions::default()).unwrap();
        let feats: Vec<Vec<f32>> = engine
            .features()
            .unwrap()
            .iter()
            .map(|f| f.to_vec())
            .collect();
        let feats = [&feats[0][..], &feats[1][..], &feats[2][..]];
        // Each bank's search directly: rows and distance bits.
        let mut pays = [true; 3];
        for (b, view) in set.banks.iter().enumerate() {
            let Some(view) = *view else { continue };
            let norm = set.norms[b];
            let x: Vec<f32> = feats[b]
                .iter()
                .map(|v| (v - norm.mean) * (1.0 / norm.std))
                .collect();
            let nq = x.len() / view.dim;
            let (mut d32, mut i32) = (vec![0f32; nq], vec![0u32; nq]);
            let (mut d16, mut i16) = (vec![0f32; nq], vec![0u32; nq]);
            let mut s32 = vec![0f32; nearest_scratch_len(2)];
            let mut s16 = vec![0f32; nearest_bf16_scratch_len(2, view.dim)];
            nearest(&pool, &x, view, None, &mut d32, &mut i32, &mut s32);
            let scans = nearest_bf16(&pool, &x, view, &mut d16, &mut i16, &mut s16);
            pays[b] = 2 * scans <= nq;
            assert_eq!(i16, i32, "bank {b}: nearest rows");
            assert_eq!(bits(&d16), bits(&d32), "bank {b}: distance bits");
            searched += nq;
        }
        // The scorer as the engine runs it: scores and every map, bit for bit.
        let run = |scorer: &Scorer| {
            let mut maps = vec![0f32; 3 * s];
            let mut map = vec![0f32; s];
            let mut scratch = vec![0f32; scorer.scratch_len()];
            let sc = scorer
                .score(
                    &pool,
                    &set,
                    feats,
                    [None; 3],
                    &mut maps,
                    Some(&mut map),
                    &mut scratch,
                )
                .unwrap();
            (sc, maps, map)
        };
        let (sc32, maps32, map32) = run(&f32_scorer);
        let (sc16, maps16, map16) = run(&bf16_scorer);
        if part == 0 && bf16_runs {
            // The first part tried the bf16 search on every bank.
            for (b, &pays) in pays.iter().enumerate() {
                let left = if pays { 0 } else { BF16_RETRY_PARTS };
                assert_eq!(bf16_scorer.bf16_parts_left(b), left, "bank {b}");
            }
        }
        assert_eq!(bits(&sc16.bank), bits(&sc32.bank), "bank scores");
        assert_eq!(sc16.score.to_bits(), sc32.score.to_bits(), "part score");
        assert_eq!(bits(&maps16), bits(&maps32), "bank maps");
        assert_eq!(bits(&map16), bits(&map32), "pixel map");
    }
    assert!(searched > 0, "the fixture's banks were searched");
}
