//! `Engine::inspect` performs no heap allocation after the first part (complete and
//! incomplete parts alike), with M3DM's fusion and with RADAR's (a model with `radar`,
//! banks and per-case statistics fitted through it, each case's instruction in use). Run alone in a child process
//! (`common::alone_in_process`), so that the counting allocator sees only this code.

use miad::backend::Precision;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::synth::Category;

use crate::common;
use miad::util::alloc_counter::total_counts;

#[test]
fn inspect_allocates_nothing_after_the_first_part() {
    if !common::alone_in_process!(inspect_allocates_nothing_after_the_first_part) {
        return;
    }
    let f = common::fitted("alloc", Category::Torus, 5, 4, 1);
    check_no_allocation(&f);
    let radar = common::fitted_radar("alloc-radar", Category::Torus, 5, 4, 1);
    let m = miad::format::ModelFile::open(&radar.model, &Default::default()).unwrap();
    assert!(
        m.config().radar.is_some(),
        "the fixture must use RADAR's fusion"
    );
    check_no_allocation(&radar);
}

fn check_no_allocation(f: &common::Fixture) {
    let (model, bank, cat) = (&f.model, &f.bank, &f.category);
    let parts: Vec<_> = list_test(cat)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    // bf16 on the CPU too (its kernels where the CPU has AVX512-BF16, else f32).
    // The pruned search too (the partitions the fit stored).
    for (threads, precision, pruned_search) in [
        (1, Precision::F32, false),
        (2, Precision::F32, false),
        (2, Precision::Bf16, false),
        (2, Precision::F32, true),
    ] {
        let mut e = Engine::open(
            model,
            bank,
            &EngineOptions {
                threads,
                max_width: 96,
                max_height: 96,
                precision,
                pruned_search,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let opts = InspectOptions::default();
        let (r0, c0) = parts[0].views();
        e.inspect(r0, c0, &opts).unwrap();
        let mut scores = Vec::with_capacity(64);
        let before = total_counts();
        for round in 0..3 {
            for p in &parts {
                let (r, c) = p.views();
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
            "inspect allocated (allocations, bytes) with {threads} threads, {precision}"
        );
        assert!(scores.iter().all(|s| s.is_finite()));
    }
}
