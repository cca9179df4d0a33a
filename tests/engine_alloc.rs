//! `Engine::inspect` performs no heap allocation after the first part (complete and
//! incomplete parts alike). Its own test binary with one test, so that the counting
//! allocator sees only this code.

use miad::config::ModelConfig;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::synth::{write_dataset, Category, SynthOptions};
use miad::fit::banks::FitOptions;
use miad::fit::category::{fit_category, CategoryFit};
use miad::format::{random_model, write_model};
use miad::util::alloc_counter::{total_counts, CountingAlloc};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

type Views<'a> = (
    Option<miad::pipeline::input::RgbView<'a>>,
    Option<miad::pipeline::input::CloudView<'a>>,
);

fn views(p: &miad::eval::dataset::LoadedPart) -> Views<'_> {
    (
        p.rgb.as_ref().map(|r| r.view()),
        p.cloud.as_ref().map(|c| c.view()),
    )
}

#[test]
fn inspect_allocates_nothing_after_the_first_part() {
    let dir = std::env::temp_dir().join(format!("miad-engine-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_dataset(&SynthOptions {
        out: dir.join("data"),
        seed: 5,
        categories: vec![Category::Torus],
        train: 4,
        validation: 0,
        test_good: 1,
        test_bad: 2,
        size: 96,
    })
    .unwrap();
    let cfg = ModelConfig::small();
    let model = dir.join("m.miad");
    write_model(&cfg, &random_model(&cfg, 2), &[], &model).unwrap();
    let bank = dir.join("b.bank");
    let cat = dir.join("data/torus");
    let fit_opts = FitOptions {
        scratch_dir: dir.clone(),
        ..FitOptions::default()
    };
    fit_category(
        &model,
        &cat,
        &bank,
        &CategoryFit::default(),
        &fit_opts,
        &mut |_| {},
    )
    .unwrap();
    let parts: Vec<_> = list_test(&cat)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    for threads in [1, 2] {
        let mut e = Engine::open(
            &model,
            &bank,
            &EngineOptions {
                threads,
                max_width: 96,
                max_height: 96,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let opts = InspectOptions::default();
        let (r0, c0) = views(&parts[0]);
        e.inspect(r0, c0, &opts).unwrap();
        let mut scores = Vec::with_capacity(64);
        let before = total_counts();
        for round in 0..3 {
            for p in &parts {
                let (r, c) = views(p);
                // complete, then each modality missing
                let (r, c) = match round {
                    0 => (r, c),
                    1 => (r, None),
                    _ => (None, c),
                };
                scores.push(e.inspect(r, c, &opts).unwrap().score);
            }
        }
        let after = total_counts();
        assert_eq!(
            after, before,
            "inspect allocated (allocations, bytes) with {threads} threads"
        );
        assert!(scores.iter().all(|s| s.is_finite()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
