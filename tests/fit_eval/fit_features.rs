//! The fit's feature phase on a synthetic category through the inspection pipeline: parts
//! side by side (one extractor per thread, one thread each) give the same bits as one part
//! at a time on every thread, report each finished part once, and stop at a broken part
//! with an error that names it.

use crate::train_fusion::synth_category;
use miad::cpu::pool::Pool;
use miad::eval::dataset::list_train;
use miad::fit::banks::FeatureExtractor;
use miad::fit::features::PipelineFeatures;
use miad::format::{ModelFile, OpenOptions};
use miad::pipeline::extract::Extractor;
use miad::pipeline::preprocess::PreprocessMode;
use std::path::Path;

/// Every part's features of `category` by [`FeatureExtractor::extract_all`] with
/// `siblings` more extractors, and the progress counts it reported.
fn features(
    model: &Path,
    category: &Path,
    siblings: usize,
) -> (miad::Result<()>, Vec<f32>, Vec<usize>) {
    let model = ModelFile::open(model, &OpenOptions::default()).unwrap();
    let pool = Pool::new(2);
    let parts = list_train(category).unwrap();
    let mut extractor = Extractor::new(&pool, &model, 96, 96, PreprocessMode::Full).unwrap();
    extractor.pack_networks(miad::cpu::dense::DensePrecision::F32);
    let siblings = (0..siblings)
        .map(|_| extractor.sibling(&model, 1).unwrap())
        .collect();
    let mut f = PipelineFeatures {
        pool: &pool,
        extractor,
        siblings,
        parts,
        missing: Vec::new(),
    };
    let all = std::sync::Mutex::new(vec![f32::NAN; f.parts() * f.layout().part_len()]);
    let mut reported = Vec::new();
    let result = f.extract_all(&all, &mut |done| reported.push(done));
    let all = all.into_inner().unwrap();
    (result, all, reported)
}

#[test]
fn parts_side_by_side_give_the_bits_of_one_part_at_a_time() {
    let s = synth_category("side-by-side", 5);
    let (r1, one_at_a_time, counts1) = features(&s.model, &s.category, 0);
    let (r2, side_by_side, counts2) = features(&s.model, &s.category, 1);
    r1.unwrap();
    r2.unwrap();
    let want: Vec<usize> = (1..=5).collect();
    assert_eq!(counts1, want);
    assert_eq!(counts2, want);
    // Every value written (NaN marks an untouched one) and the parts differ from each other.
    assert!(one_at_a_time.iter().all(|v| v.is_finite()));
    let plen = one_at_a_time.len() / 5;
    assert_ne!(one_at_a_time[..plen], one_at_a_time[plen..2 * plen]);
    let same = one_at_a_time
        .iter()
        .zip(&side_by_side)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "side-by-side features differ from one part at a time");
}

#[test]
fn a_broken_part_stops_the_side_by_side_phase_and_is_named() {
    let s = synth_category("side-by-side-broken", 4);
    let rgb = s.category.join("train/good/rgb");
    let mut names: Vec<_> = std::fs::read_dir(&rgb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let broken = &names[1];
    std::fs::write(broken, b"not a png").unwrap();
    let (result, _, counts) = features(&s.model, &s.category, 1);
    let e = result
        .expect_err("a broken part must fail the phase")
        .to_string();
    let name = broken.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "the error does not name {name}: {e}");
    // The counts stay consecutive and never include the broken part.
    assert!(counts.len() < 4, "{counts:?}");
    assert!(counts.iter().enumerate().all(|(i, &c)| c == i + 1));
}
