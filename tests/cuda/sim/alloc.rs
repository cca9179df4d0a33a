//! `Engine::inspect` on the simulated device performs no heap allocation after the first
//! part: graph replays, copies through pinned buffers and the CPU GEMM allocate nothing
//! on the Rust side, on the f32 and the bf16 path (the emulator's C++ runtime is outside the counting allocator, as a
//! GPU driver would be). Run alone in a child process (`common::alone_in_process`).

use super::engine::{assert_on_the_simulated_device, options};
use crate::common;

use miad::backend::{Backend, Precision};
use miad::engine::{Engine, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::synth::Category;
use miad::util::alloc_counter::total_counts;

#[test]
fn inspect_on_the_simulated_device_allocates_nothing_after_the_first_part() {
    if !common::alone_in_process!(
        inspect_on_the_simulated_device_allocates_nothing_after_the_first_part
    ) {
        return;
    }
    assert_no_allocations(common::small_hd64(), "sim-alloc");
}

/// The same with RADAR's fusion on the device (heads of 32): its one graph serves the
/// three cases without an allocation.
#[test]
fn inspect_with_radar_fusion_on_the_simulated_device_allocates_nothing() {
    if !common::alone_in_process!(
        inspect_with_radar_fusion_on_the_simulated_device_allocates_nothing
    ) {
        return;
    }
    let mut cfg = common::small_hd64();
    cfg.name = "small-hd64-radar".into();
    cfg.radar = common::small_radar().radar;
    if let Some(r) = cfg.radar.as_mut() {
        r.heads = 1;
    }
    assert_no_allocations(cfg, "sim-alloc-radar");
}

fn assert_no_allocations(cfg: miad::config::ModelConfig, name: &str) {
    let f = common::fitted_with(
        common::for_the_emulator(cfg),
        name,
        Category::Torus,
        5,
        4,
        1,
    );
    let parts: Vec<_> = list_test(&f.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    assert!(
        parts.len() >= 2,
        "the fixture has a good and a defective test part"
    );
    // The f32 path, then the bf16 one (its group encoder's GEMMs and kernels included).
    for precision in [Precision::F32, Precision::Bf16] {
        let mut e = Engine::open(&f.model, &f.bank, &options(Backend::CudaSim, precision)).unwrap();
        assert_on_the_simulated_device(&e);
        assert!(e.backend().device_stages.contains(&"fusion"));
        let opts = InspectOptions {
            map: true,
            regions: true,
            ..InspectOptions::default()
        };
        let (r0, c0) = parts[0].views();
        e.inspect(r0, c0, &opts).unwrap();
        let mut scores = Vec::with_capacity(64);
        // Another part (the emulated device is slow: one part serves all three cases),
        // complete, then each modality missing.
        let (r, c) = parts[parts.len() - 1].views();
        let before = total_counts();
        for (r, c) in [(r, c), (r, None), (None, c)] {
            scores.push(e.inspect(r, c, &opts).unwrap().score);
        }
        let after = total_counts();
        assert_eq!(
            after, before,
            "{precision}: inspect allocated (allocations, bytes)"
        );
        assert!(scores.iter().all(|s| s.is_finite()));
    }
}
