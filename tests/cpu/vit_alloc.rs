//! The ViT forward pass allocates nothing once its buffers exist: after one warm-up pass
//! on a pool, 20 more passes perform zero heap allocations (on any thread), and every
//! pass gives the warm-up's bits. Run alone in a child process
//! (`common::alone_in_process`), so `total_counts` sees only this code.

use crate::common;
use miad::config::{ModelConfig, VitConfig};
use miad::cpu::pool::Pool;
use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
use miad::format::random_model;
use miad::util::alloc_counter::total_counts;
use miad::util::rng::Rng;

#[test]
fn vit_forward_allocates_nothing_after_warm_up() {
    if !common::alone_in_process!(vit_forward_allocates_nothing_after_warm_up) {
        return;
    }
    let cfg = VitConfig::small();
    let model = ModelConfig {
        vit: Some(cfg.clone()),
        point: None,
        fusion: None,
        radar: None,
        ..ModelConfig::small()
    };
    let tensors = random_model(&model, 11);
    let w = VitWeights::load(&tensors, &cfg).unwrap();
    let s = cfg.image_size as usize;
    let mut input = vec![0f32; cfg.in_chans as usize * s * s];
    Rng::new(5).fill_normal(&mut input, 1.0);
    let pool = Pool::new(2);
    let mut out = vec![0f32; cfg.patches() * cfg.dim as usize];
    let mut scratch = vec![0f32; vit_scratch_len(&cfg, pool.threads())];

    vit_forward(&pool, &cfg, &w, &input, &mut out, &mut scratch).unwrap(); // warm-up
    let first = out.clone();
    assert!(first.iter().all(|v| v.is_finite()));

    let before = total_counts();
    let mut same = true;
    for _ in 0..20 {
        vit_forward(&pool, &cfg, &w, &input, &mut out, &mut scratch).unwrap();
        same &= out == first;
    }
    let after = total_counts();
    assert_eq!(
        before, after,
        "(allocations, frees) changed over 20 ViT forward passes"
    );
    assert!(same, "a later pass gave other bits than the warm-up");
}
