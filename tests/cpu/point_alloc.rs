//! The point branch (preprocess, FPS, grouping, Point-MAE, alignment) allocates nothing once its
//! buffers are planned, and gives identical bits on every run and for 1 or 2 threads.
//! Run alone in a child process (`common::alone_in_process`), so `total_counts` sees
//! only this code.

use crate::common;
use miad::config::ModelConfig;
use miad::cpu::fps::{farthest_point_sample, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
use miad::cpu::pool::Pool;
use miad::format::OwnedTensors;
use miad::pipeline::input::{CloudView, RgbView};
use miad::pipeline::preprocess::*;
use miad::util::alloc_counter::total_counts;
use miad::util::rng::Rng;

const W: usize = 150;
const H: usize = 120;

struct Planned {
    out: PreprocessOutput,
    pre_scratch: Vec<f32>,
    centers: Vec<u32>,
    center_xyz: Vec<f32>,
    groups: Vec<u32>,
    feats: Vec<f32>,
    xyz: Vec<f32>,
    scratch: Vec<f32>,
}

fn run_branch(
    pool: &Pool,
    cfg: &ModelConfig,
    w: &PointMaeWeights<'_>,
    rgb: &[u8],
    cloud: &[f32],
    p: &mut Planned,
) {
    let pre = &cfg.preprocess;
    let point = cfg.point.as_ref().unwrap();
    let st = preprocess(
        pre,
        Some(RgbView::packed(rgb, W, H)),
        Some(CloudView::packed(cloud, W, H)),
        PreprocessMode::Full,
        &mut p.out,
        &mut p.pre_scratch,
    )
    .unwrap();
    assert!(st.cloud_usable(), "{st:?}");
    let n = p.out.n_points;
    let (m, k) = (point.num_groups as usize, point.group_size as usize);
    farthest_point_sample(&p.out.points, n, m, &mut p.centers, &mut p.scratch);
    group_knn(
        pool,
        &p.out.points,
        n,
        &p.centers,
        k,
        &mut p.groups,
        &mut p.scratch,
    );
    for (c, &i) in p.center_xyz.chunks_exact_mut(3).zip(&p.centers) {
        c.copy_from_slice(&p.out.points[3 * i as usize..3 * i as usize + 3]);
    }
    point_mae_forward(
        pool,
        point,
        w,
        &p.out.points,
        n,
        &p.centers,
        &p.groups,
        &mut p.feats,
        &mut p.scratch,
    );
    point_feature_align(
        pool,
        pre,
        &p.out.points,
        n,
        &p.out.point_pixels,
        &p.center_xyz,
        &p.feats,
        point.feature_dim(),
        &mut p.xyz,
        &mut p.scratch,
    );
}

#[test]
fn point_branch_allocates_nothing_and_repeats_bit_for_bit() {
    if !common::alone_in_process!(point_branch_allocates_nothing_and_repeats_bit_for_bit) {
        return;
    }
    let cfg = ModelConfig::small();
    let pre = &cfg.preprocess;
    let point = cfg.point.as_ref().unwrap();
    // a tilted plane with a bumpy dome on it
    let mut rng = Rng::new(2);
    let mut cloud = vec![0f32; W * H * 3];
    let mut rgb = vec![0u8; W * H * 3];
    for r in 0..H {
        for c in 0..W {
            let (x, y) = (c as f32 * 0.001, r as f32 * 0.001);
            let (u, v) = ((c as f32 - 75.0) / 40.0, (r as f32 - 60.0) / 35.0);
            let mut z = 0.4 + 0.05 * x;
            if u * u + v * v < 1.0 {
                z += 0.03 * (1.0 - u * u - v * v).sqrt() + 0.02;
            }
            cloud[3 * (r * W + c)..3 * (r * W + c) + 3].copy_from_slice(&[x, y, z]);
            for ch in 0..3 {
                rgb[3 * (r * W + c) + ch] = (rng.below(200) + 20) as u8;
            }
        }
    }
    let s = pre.image_size as usize;
    let g = pre.xyz_grid as usize;
    let (m, k) = (point.num_groups as usize, point.group_size as usize);
    let max_n = s * s;
    // the PyTorch fixture's weights are ModelConfig::small()'s point encoder
    let weights = OwnedTensors::from_safetensors_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/point_small.safetensors"),
    )
    .unwrap();
    let w = PointMaeWeights::load(&weights, point).unwrap();
    let mut results = Vec::new();
    for threads in [1usize, 2] {
        let pool = Pool::new(threads);
        let scratch_len = fps_scratch_len(max_n)
            .max(knn_scratch_len(max_n, k, threads))
            .max(pfa_scratch_len(pre, m, max_n, threads))
            .max(point_mae_scratch_len(point, threads));
        let mut p = Planned {
            out: PreprocessOutput::for_point_branch(pre, point),
            pre_scratch: vec![0.0; preprocess_scratch_len(pre, W, H)],
            centers: vec![0; m],
            center_xyz: vec![0.0; 3 * m],
            groups: vec![0; m * k],
            feats: vec![0.0; m * point.feature_dim()],
            xyz: vec![0.0; g * g * point.feature_dim()],
            scratch: vec![0.0; scratch_len],
        };
        run_branch(&pool, &cfg, &w, &rgb, &cloud, &mut p); // warm-up
        let first = (
            p.out.rgb_input.clone(),
            p.groups.clone(),
            p.feats.clone(),
            p.xyz.clone(),
        );
        let before = total_counts();
        for _ in 0..3 {
            run_branch(&pool, &cfg, &w, &rgb, &cloud, &mut p);
        }
        let after = total_counts();
        assert_eq!(before, after, "allocations while running the point branch");
        assert_eq!(
            first,
            (
                p.out.rgb_input.clone(),
                p.groups.clone(),
                p.feats.clone(),
                p.xyz.clone()
            )
        );
        assert!(p.out.n_points > m);
        results.push(first);
    }
    assert_eq!(results[0], results[1], "bits depend on the thread count");
}
