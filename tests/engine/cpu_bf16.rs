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

#[test]
fn cpu_bf16_engine_scores_stay_within_tolerance_of_f32() {
    let f = common::fitted("cpu-bf16", Category::Torus, 7, 4, 2);
    let parts: Vec<_> = list_test(&f.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let open = |precision| {
        Engine::open(
            &f.model,
            &f.bank,
            &EngineOptions {
                threads: 2,
                max_width: 96,
                max_height: 96,
                precision,
                ..EngineOptions::default()
            },
        )
        .unwrap()
    };
    let (mut e32, mut e16) = (open(Precision::F32), open(Precision::Bf16));
    let bf16_runs = miad::cpu::gemm_bf16::available();
    let choice = e16.backend().clone();
    if bf16_runs {
        assert_eq!(choice.precision, Precision::Bf16);
        assert!(choice.fallback.is_none());
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
