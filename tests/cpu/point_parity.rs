//! The point branch against the PyTorch reference (tests/reference/point_reference.py,
//! fixture tests/fixtures/point_small.safetensors): FPS indices and group memberships
//! exactly, group features and xyz patch features within 1e-4 relative.

use miad::config::{ModelConfig, PointConfig};
use miad::cpu::fps::{farthest_point_sample, fps_scratch_len};
use miad::cpu::knn::{group_knn, knn_scratch_len};
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::pool::Pool;
use miad::format::{OwnedTensors, TensorSource};

fn fixture() -> OwnedTensors {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/point_small.safetensors");
    OwnedTensors::from_safetensors_file(&path).expect("fixture")
}

fn get<'a>(t: &'a OwnedTensors, name: &str) -> &'a [f32] {
    let (shape, _) = &t.tensors[name];
    t.f32(name, shape).unwrap()
}

fn as_u32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// |a − b| ≤ tol · max(1, |b|) element-wise, with the worst case in the message.
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = (a - b).abs() / b.abs().max(1.0);
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: relative error {} at {} ({} vs {})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

struct Groups {
    n: usize,
    centers: Vec<u32>,
    groups: Vec<u32>,
}

fn groups(t: &OwnedTensors, cfg: &PointConfig, pool: &Pool) -> Groups {
    let points = get(t, "ref.points").to_vec();
    let n = points.len() / 3;
    let m = cfg.num_groups as usize;
    let k = cfg.group_size as usize;
    let mut centers = vec![0u32; m];
    let mut scratch = vec![0f32; fps_scratch_len(n)];
    farthest_point_sample(&points, n, m, &mut centers, &mut scratch);
    let mut groups = vec![0u32; m * k];
    let mut scratch = vec![0f32; knn_scratch_len(n, k, pool.threads())];
    group_knn(pool, &points, n, &centers, k, &mut groups, &mut scratch);
    Groups { n, centers, groups }
}

#[test]
fn fps_and_groups_match_exactly() {
    let t = fixture();
    let cfg = PointConfig::small();
    let g = groups(&t, &cfg, &Pool::new(2));
    assert_eq!(g.n, 2048);
    assert_eq!(g.centers, as_u32(get(&t, "ref.center_indices")));
    assert_eq!(g.groups, as_u32(get(&t, "ref.group_indices")));
}

#[test]
fn preprocessed_fixture_cloud_gives_the_reference_points() {
    use miad::pipeline::input::CloudView;
    use miad::pipeline::preprocess::*;
    let t = fixture();
    let pre = ModelConfig::small().preprocess;
    let cloud = get(&t, "ref.cloud");
    let mut out = PreprocessOutput::new(&pre);
    let mut scratch = vec![0f32; preprocess_scratch_len(&pre, 64, 64)];
    let st = preprocess(
        &pre,
        None,
        Some(CloudView::packed(cloud, 64, 64)),
        PreprocessMode::AlreadyClean,
        &mut out,
        &mut scratch,
    )
    .unwrap();
    assert!(st.cloud_usable());
    assert_eq!(out.points(), get(&t, "ref.points"));
    assert_eq!(
        &out.point_pixels[..out.n_points],
        &as_u32(get(&t, "ref.point_pixels"))[..]
    );
}

#[test]
fn alignment_matches_the_dense_reference() {
    let t = fixture();
    let cfg = PointConfig::small();
    let pre = ModelConfig::small().preprocess;
    let pool = Pool::new(2);
    let points = get(&t, "ref.points");
    let n = points.len() / 3;
    let pixels = as_u32(get(&t, "ref.point_pixels"));
    let centers_idx = as_u32(get(&t, "ref.center_indices"));
    let centers: Vec<f32> = centers_idx
        .iter()
        .flat_map(|&c| points[3 * c as usize..3 * c as usize + 3].to_vec())
        .collect();
    let gf = get(&t, "ref.group_features");
    let f = cfg.feature_dim();
    let g = pre.xyz_grid as usize;
    let mut out = vec![0f32; g * g * f];
    let mut scratch = vec![0f32; pfa_scratch_len(&pre, centers_idx.len(), n, pool.threads())];
    point_feature_align(
        &pool,
        &pre,
        points,
        n,
        &pixels,
        &centers,
        gf,
        f,
        &mut out,
        &mut scratch,
    );
    assert_close(&out, get(&t, "ref.xyz_features"), 1e-4, "xyz features");
}
