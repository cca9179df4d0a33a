//! Preprocessing (SPEC §1) on synthetic organized clouds with a known background plane and
//! known clusters, the bad-input cases, and the bicubic resize against PIL fixtures.

use miad::config::PreprocessConfig;
use miad::pipeline::input::{CloudView, RgbView};
use miad::pipeline::preprocess::{
    nearest_src, preprocess, preprocess_mask, preprocess_scratch_len, resize_bicubic_pil,
    PreprocessMode, PreprocessOutput, Unusable,
};

const W: usize = 120;
const H: usize = 100;

/// A tilted background plane everywhere, a 30×30 object 5 cm above it (smooth, connected)
/// and a 5×5 speck 8 cm above it, away from the object.
fn scene() -> (Vec<f32>, Vec<u8>) {
    let mut cloud = vec![0f32; W * H * 3];
    let mut rgb = vec![0u8; W * H * 3];
    for r in 0..H {
        for c in 0..W {
            let (x, y) = (c as f32 * 0.001, r as f32 * 0.001);
            let mut z = 0.5 + 0.1 * x + 0.2 * y;
            let mut colour = [40u8, 50, 60];
            if (30..60).contains(&r) && (40..70).contains(&c) {
                z += 0.05 + 0.0005 * ((r - 30) as f32).sin();
                colour = [200, 100, 50];
            }
            if (70..75).contains(&r) && (95..100).contains(&c) {
                z += 0.08;
                colour = [10, 250, 10];
            }
            cloud[3 * (r * W + c)..3 * (r * W + c) + 3].copy_from_slice(&[x, y, z]);
            rgb[3 * (r * W + c)..3 * (r * W + c) + 3].copy_from_slice(&colour);
        }
    }
    (cloud, rgb)
}

fn cfg_identity() -> PreprocessConfig {
    // padded side of 120×100 is 200: resizing to 200 is the identity
    PreprocessConfig {
        image_size: 200,
        ransac_iterations: 50,
        ..PreprocessConfig::default()
    }
}

fn run(
    cfg: &PreprocessConfig,
    rgb: Option<RgbView<'_>>,
    cloud: Option<CloudView<'_>>,
    mode: PreprocessMode,
    out: &mut PreprocessOutput,
) -> miad::Result<miad::pipeline::preprocess::ModalityStatus> {
    let mut scratch = vec![0f32; preprocess_scratch_len(cfg, W, H)];
    preprocess(cfg, rgb, cloud, mode, out, &mut scratch)
}

#[test]
fn plane_and_small_cluster_are_removed_object_kept() {
    let cfg = cfg_identity();
    let (cloud, rgb) = scene();
    let mut out = PreprocessOutput::new(&cfg);
    let st = run(
        &cfg,
        Some(RgbView::packed(&rgb, W, H)),
        Some(CloudView::packed(&cloud, W, H)),
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert!(st.cloud_usable() && st.rgb_usable(), "{st:?}");
    let (top, left) = ((200 - H) / 2, (200 - W) / 2);
    // exactly the object's pixels remain, in row-major order
    let want: Vec<u32> = (30..60)
        .flat_map(|r| (40..70).map(move |c| ((r + top) * 200 + c + left) as u32))
        .collect();
    assert_eq!(out.n_points, 900);
    assert_eq!(&out.point_pixels[..900], &want[..]);
    for (k, &px) in want.iter().enumerate() {
        let (r, c) = (px as usize / 200 - top, px as usize % 200 - left);
        assert_eq!(
            &out.points[3 * k..3 * k + 3],
            &cloud[3 * (r * W + c)..3 * (r * W + c) + 3]
        );
    }
    // RGB: object colour kept, removed plane and speck pixels zeroed (black), padding black
    let plane = 200 * 200;
    let black = (0.0 - cfg.rgb_mean[0]) / cfg.rgb_std[0];
    let obj = (200.0 / 255.0 - cfg.rgb_mean[0]) / cfg.rgb_std[0];
    let red = |r: usize, c: usize| out.rgb_input[r * 200 + c];
    assert!((red(top + 45, left + 55) - obj).abs() < 1e-4);
    assert!(
        (red(top + 5, left + 5) - black).abs() < 1e-4,
        "plane pixel not zeroed"
    );
    assert!(
        (red(top + 72, left + 97) - black).abs() < 1e-4,
        "speck pixel not zeroed"
    );
    assert!((red(0, 0) - black).abs() < 1e-4);
    assert_eq!(out.rgb_input.len(), 3 * plane);
    // same input, same bits
    let mut again = PreprocessOutput::new(&cfg);
    run(
        &cfg,
        Some(RgbView::packed(&rgb, W, H)),
        Some(CloudView::packed(&cloud, W, H)),
        PreprocessMode::Full,
        &mut again,
    )
    .unwrap();
    assert_eq!(again.rgb_input, out.rgb_input);
    assert_eq!(again.cloud, out.cloud);
}

#[test]
fn already_clean_mode_only_resizes() {
    let cfg = PreprocessConfig {
        image_size: 50,
        ..PreprocessConfig::default()
    };
    let (cloud, _) = scene();
    let mut out = PreprocessOutput::new(&cfg);
    let st = run(
        &cfg,
        None,
        Some(CloudView::packed(&cloud, W, H)),
        PreprocessMode::AlreadyClean,
        &mut out,
    )
    .unwrap();
    assert!(st.cloud_usable());
    assert_eq!(st.rgb, Some(Unusable::Missing));
    // nearest resize of the unpadded 120×100 cloud: every output pixel is a source pixel;
    // the scene's row 0 (y = 0) and column 0 (x = 0) are no points (SPEC §1.5: all three
    // coordinates must be non-zero), so 50 + 50 - 1 output pixels are empty.
    assert_eq!(out.n_points, 2500 - 99);
    for oy in 0..50 {
        for ox in 0..50 {
            let (sy, sx) = (nearest_src(oy, H, 50), nearest_src(ox, W, 50));
            let o = 3 * (oy * 50 + ox);
            let src = &cloud[3 * (sy * W + sx)..3 * (sy * W + sx) + 3];
            let want: &[f32] = if src.contains(&0.0) { &[0.0; 3] } else { src };
            assert_eq!(&out.cloud[o..o + 3], want);
        }
    }
}

#[test]
fn nearest_index_follows_pytorch() {
    // PyTorch: min(floor(dst * (in / out)), in - 1) with the ratio in f32
    assert_eq!(nearest_src(223, 800, 224), 796);
    assert_eq!(nearest_src(1, 800, 224), 3);
    assert_eq!(nearest_src(5, 10, 10), 5);
    assert_eq!(nearest_src(63, 32, 64), 31);
}

#[test]
fn bad_inputs_mark_the_modality_or_fail_typed() {
    let cfg = cfg_identity();
    let (cloud, rgb) = scene();
    let mut out = PreprocessOutput::new(&cfg);
    let rgbv = RgbView::packed(&rgb, W, H);

    let zeros = vec![0f32; W * H * 3];
    let st = run(
        &cfg,
        Some(rgbv),
        Some(CloudView::packed(&zeros, W, H)),
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert_eq!(st.cloud, Some(Unusable::AllZero));
    assert!(st.rgb_usable());
    assert_eq!(out.n_points, 0);

    // One NaN or infinite pixel is a missing point (SPEC §1.6), not a broken cloud...
    let mut nan = cloud.clone();
    nan[3 * 500 + 1] = f32::NAN;
    nan[7] = f32::INFINITY;
    let st = run(
        &cfg,
        None,
        Some(CloudView::packed(&nan, W, H)),
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert!(st.cloud_usable(), "{st:?}");
    assert!(out.points().iter().all(|v| v.is_finite()));
    // ... and a cloud without one finite point is a missing modality.
    let inf = vec![f32::INFINITY; W * H * 3];
    let st = run(
        &cfg,
        None,
        Some(CloudView::packed(&inf, W, H)),
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert_eq!(st.cloud, Some(Unusable::NonFinite));

    // only the plane: nothing left after plane removal
    let mut flat = cloud.clone();
    for r in 0..H {
        for c in 0..W {
            flat[3 * (r * W + c) + 2] = 0.5 + 0.1 * c as f32 * 0.001 + 0.2 * r as f32 * 0.001;
        }
    }
    let st = run(
        &cfg,
        Some(rgbv),
        Some(CloudView::packed(&flat, W, H)),
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert_eq!(st.cloud, Some(Unusable::EmptyAfterCleaning));
    assert!(st.rgb_usable());

    // fewer points than the point branch needs
    let mut few = PreprocessOutput::new(&cfg);
    few.min_points = 901;
    let st = run(
        &cfg,
        None,
        Some(CloudView::packed(&cloud, W, H)),
        PreprocessMode::Full,
        &mut few,
    )
    .unwrap();
    assert_eq!(st.cloud, Some(Unusable::TooFewPoints));

    // sizes that differ: typed error
    let small = vec![0.1f32; 10 * 10 * 3];
    let e = run(
        &cfg,
        Some(rgbv),
        Some(CloudView::packed(&small, 10, 10)),
        PreprocessMode::Full,
        &mut out,
    );
    assert!(matches!(e, Err(miad::Error::Input(_))), "{e:?}");

    // blank image
    let blank = vec![77u8; W * H * 3];
    let st = run(
        &cfg,
        Some(RgbView::packed(&blank, W, H)),
        None,
        PreprocessMode::Full,
        &mut out,
    )
    .unwrap();
    assert_eq!(st.rgb, Some(Unusable::Blank));
    assert_eq!(st.cloud, Some(Unusable::Missing));

    // nothing at all
    let st = run(&cfg, None, None, PreprocessMode::Full, &mut out).unwrap();
    assert_eq!(
        (st.rgb, st.cloud),
        (Some(Unusable::Missing), Some(Unusable::Missing))
    );

    // an input larger than planned: typed error, no panic
    let big_cfg = cfg.clone();
    let mut scratch = vec![0f32; preprocess_scratch_len(&big_cfg, 10, 10)];
    let e = preprocess(
        &big_cfg,
        Some(rgbv),
        None,
        PreprocessMode::Full,
        &mut out,
        &mut scratch,
    );
    assert!(e.is_err());
}

#[test]
fn masks_follow_the_cloud_geometry() {
    let cfg = cfg_identity();
    let mut mask = vec![0u8; W * H];
    mask[10 * W + 20] = 255;
    let mut out = vec![9u8; 200 * 200];
    preprocess_mask(&cfg, &mask, W, H, PreprocessMode::Full, &mut out).unwrap();
    let (top, left) = ((200 - H) / 2, (200 - W) / 2);
    assert_eq!(out.iter().map(|&v| v as usize).sum::<usize>(), 1);
    assert_eq!(out[(10 + top) * 200 + 20 + left], 1);
}

/// PIL's BICUBIC (what torchvision applies to PIL images) from
/// tests/reference/point_reference.py. Both round to 8 bits after each pass; PIL's
/// weights are 22-bit fixed point, ours f32, so a value may be off by one 8-bit step
/// (1/255 after scaling) near a rounding boundary, and rarely so.
#[test]
fn bicubic_matches_pil_within_its_rounding() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["down", "up"] {
        let src = miad::eval::io::read_rgb_png(&dir.join(format!("point_bicubic_{name}_src.png")))
            .unwrap();
        let pil = miad::eval::io::read_rgb_png(&dir.join(format!("point_bicubic_{name}_pil.png")))
            .unwrap();
        assert_eq!((pil.width, pil.height), (64, 64));
        let srcf: Vec<f32> = src.data.iter().map(|&v| v as f32).collect();
        let mut out = vec![0f32; 3 * 64 * 64];
        let mut scratch = vec![0f32; 3 * src.height * 64 + 4 * 64 * 64];
        resize_bicubic_pil(&srcf, src.width, src.height, 64, 64, &mut out, &mut scratch);
        let (mut max, mut sum) = (0f32, 0f32);
        for i in 0..64 * 64 {
            for c in 0..3 {
                let ours = out[c * 64 * 64 + i].clamp(0.0, 255.0);
                let d = (ours - pil.data[3 * i + c] as f32).abs();
                max = max.max(d);
                sum += d;
            }
        }
        let mean = sum / (3.0 * 64.0 * 64.0);
        assert!(max <= 1.0 && mean < 0.02, "{name}: max {max} mean {mean}");
    }
}
