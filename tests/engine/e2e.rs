//! The whole method end to end on a tiny synthetic dataset: fit a category, open an
//! engine, inspect complete and incomplete parts (RADAR), evaluate. Small model sizes so
//! that it runs in seconds.

use miad::config::ModelConfig;
use miad::engine::{Case, Engine, EngineOptions, InspectOptions, Verdict};
use miad::eval::dataset::{list_test, list_train};
use miad::eval::run::{evaluate, EvalOptions};
use miad::eval::synth::Category;
use miad::format::{random_model, write_model};
use miad::Error;
use std::path::Path;

use crate::common;
use common::{fitted, Fixture};

fn fixture(name: &str) -> Fixture {
    fitted(name, Category::Disc, 3, 6, 2)
}

fn engine(f: &Fixture) -> Engine {
    let opts = EngineOptions {
        threads: 2,
        max_width: 128,
        max_height: 128,
        ..EngineOptions::default()
    };
    Engine::open(&f.model, &f.bank, &opts).unwrap()
}

fn first_part(category: &Path, defective: bool) -> miad::eval::dataset::LoadedPart {
    let parts = list_test(category).unwrap();
    let p = parts
        .iter()
        .find(|p| p.is_defective() == defective)
        .unwrap();
    p.load().unwrap()
}

#[test]
fn fit_inspect_evaluate_and_missing_modalities() {
    let f = fixture("main");
    assert_eq!(list_train(&f.category).unwrap().len(), 6);
    let mut e = engine(&f);
    // RADAR statistics were fitted for both incomplete cases.
    let cases = e.case_decisions();
    assert!(cases[Case::RgbOnly as usize].is_some());
    assert!(cases[Case::CloudOnly as usize].is_some());

    let bad = first_part(&f.category, true);
    let (rgb, cloud) = (bad.rgb.as_ref().unwrap(), bad.cloud.as_ref().unwrap());
    let opts = InspectOptions::default();
    let (score, map): (f32, Vec<f32>) = {
        let r = e
            .inspect(Some(rgb.view()), Some(cloud.view()), &opts)
            .unwrap();
        assert_eq!(r.case, Case::Complete);
        assert!(r.case_calibrated);
        assert!(r.score.is_finite());
        assert_eq!(r.map_size, 64);
        assert!(r.bank_scores.iter().all(|s| s.is_finite() && *s >= 0.0));
        (r.score, r.map.unwrap().to_vec())
    };
    // Same input, same bits.
    {
        let r = e
            .inspect(Some(rgb.view()), Some(cloud.view()), &opts)
            .unwrap();
        assert_eq!(r.score.to_bits(), score.to_bits());
        assert!(r
            .map
            .unwrap()
            .iter()
            .zip(&map)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // Verdict follows the threshold override.
    {
        let low = InspectOptions {
            part_threshold: Some(score - 1.0),
            ..opts
        };
        assert_eq!(
            e.inspect(Some(rgb.view()), Some(cloud.view()), &low)
                .unwrap()
                .verdict,
            Verdict::Fail
        );
        let high = InspectOptions {
            part_threshold: Some(score + 1.0),
            grey_band: Some([score - 0.5, score + 0.5]),
            ..opts
        };
        assert_eq!(
            e.inspect(Some(rgb.view()), Some(cloud.view()), &high)
                .unwrap()
                .verdict,
            Verdict::Uncertain
        );
        // A pixel threshold below every map value gives one region covering the map.
        let all = InspectOptions {
            pixel_threshold: Some(f32::MIN),
            ..opts
        };
        let r = e
            .inspect(Some(rgb.view()), Some(cloud.view()), &all)
            .unwrap();
        assert_eq!(r.regions_found, 1);
        assert_eq!(r.regions[0].area as usize, 64 * 64);
    }
    // Cloud missing: judged on RGB, with the rgb-only statistics.
    {
        let r = e.inspect(Some(rgb.view()), None, &opts).unwrap();
        assert_eq!(r.case, Case::RgbOnly);
        assert!(r.case_calibrated && r.score.is_finite());
        assert!(r.status.cloud.is_some() && r.status.rgb.is_none());
    }
    // RGB missing.
    {
        let r = e.inspect(None, Some(cloud.view()), &opts).unwrap();
        assert_eq!(r.case, Case::CloudOnly);
        assert!(r.score.is_finite());
    }
    // An all-zero cloud is unusable: the part is judged on RGB.
    {
        let zeros = vec![0f32; cloud.data.len()];
        let z = miad::pipeline::input::CloudView::packed(&zeros, cloud.width, cloud.height);
        let r = e.inspect(Some(rgb.view()), Some(z), &opts).unwrap();
        assert_eq!(r.case, Case::RgbOnly);
    }
    // Both missing: a clear error, and the engine keeps working afterwards.
    assert!(matches!(
        e.inspect(None, None, &opts),
        Err(Error::NoUsableModality(_))
    ));
    // Larger than planned: an input error, not a panic.
    let big = vec![0u8; 200 * 200 * 3];
    let v = miad::pipeline::input::RgbView::packed(&big, 200, 200);
    assert!(matches!(
        e.inspect(Some(v), None, &opts),
        Err(Error::Input(_))
    ));
    let r = e
        .inspect(Some(rgb.view()), Some(cloud.view()), &opts)
        .unwrap();
    assert_eq!(r.score.to_bits(), score.to_bits());

    // A second engine (one thread) gives the same bits.
    {
        let mut e1 = Engine::open(
            &f.model,
            &f.bank,
            &EngineOptions {
                threads: 1,
                max_width: 128,
                max_height: 128,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let r = e1
            .inspect(Some(rgb.view()), Some(cloud.view()), &opts)
            .unwrap();
        assert_eq!(r.score.to_bits(), score.to_bits());
        assert!(r
            .map
            .unwrap()
            .iter()
            .zip(&map)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // The map at input resolution has the input's size and the map's range.
    let mut at_input = vec![0f32; rgb.width * rgb.height];
    e.map_at_input(rgb.width, rgb.height, &mut at_input)
        .unwrap();
    let (lo, hi) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(at_input.iter().all(|&v| v >= lo - 1e-4 && v <= hi + 1e-4));

    // Evaluation: every metric is computed, complete and with half the parts incomplete.
    let report = evaluate(&mut e, &f.category, &EvalOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(report.parts.len(), 4);
    for m in [report.row.i_auroc, report.row.p_auroc, report.row.aupro] {
        let m = m.expect("metric computed");
        assert!((0.0..=1.0).contains(&m), "{m}");
    }
    let heat = f.dir.join("heat");
    let radar = evaluate(
        &mut e,
        &f.category,
        &EvalOptions {
            missing: Some((0.5, miad::eval::missing::MissingModality::Both, 1)),
            heatmaps: Some(heat.clone()),
            max_parts: None,
            complete_decision_only: false,
            worst: None,
            save_predictions: Some(f.dir.join("pred")),
        },
        &mut |_, _| {},
    )
    .unwrap();
    let cases: Vec<Case> = radar.parts.iter().map(|p| p.case).collect();
    assert_eq!(cases.iter().filter(|c| **c != Case::Complete).count(), 2);
    assert_eq!(std::fs::read_dir(&heat).unwrap().count(), 4);
    // Saved predictions: a CSV line per part and its map and mask.
    let csv = std::fs::read_to_string(f.dir.join("pred/predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("name,label,defect,score,verdict,case\n"));
    let first = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .replace('/', "_");
    let bytes = std::fs::read(f.dir.join(format!("pred/{first}.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("map").unwrap().shape(), &[64, 64]);
    let mask = st.tensor("mask").unwrap();
    assert_eq!(mask.dtype(), safetensors::Dtype::U8);
    assert!(mask.data().iter().all(|&v| v <= 1));
    let worst = miad::eval::run::worst_parts(&radar.parts, 3);
    assert_eq!(worst.len(), 3);
    assert!(radar.parts[worst[0]].defective && !radar.parts[worst[1]].defective);
}

#[test]
fn a_bank_of_another_model_is_refused_by_name() {
    let f = fixture("mismatch");
    let cfg = ModelConfig::small();
    let other = f.dir.join("other.miad");
    write_model(&cfg, &random_model(&cfg, 99), &[], &other).unwrap();
    let err = Engine::open(&other, &f.bank, &EngineOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("category.bank"), "{msg}");
    let missing = Engine::open(
        &f.model,
        &f.dir.join("nope.bank"),
        &EngineOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(missing.contains("nope.bank"), "{missing}");
}
