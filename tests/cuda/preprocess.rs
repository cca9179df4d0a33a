//! The preprocessing stage on the device (`miad::cuda::stages::preprocess`) against the CPU
//! oracle `pipeline::preprocess::preprocess` (SPEC §1), through ONE recorded graph per
//! stage (staging upload + `DevicePreprocess::record`), on synthetic parts (`miad synth`'s
//! generator) and incomplete ones:
//! - points, pixel indices, count and modality status identical to the CPU's; the RGB
//!   network input identical too (the device computes the CPU's f64 tables and f32 sums
//!   in the same order); the pixel → point map equal to the one
//!   `BranchSizes::fill_pixel_map` builds on the host;
//! - the RANSAC plane removal really runs (a plane was fitted and points were removed);
//! - incomplete parts: no RGB, no cloud, neither, all-zero cloud, NaN-only cloud, blank
//!   image, too few points, nothing left after cleaning;
//! - parts of different sizes replayed through the same graph (sizes come from the
//!   header in device memory), and the AlreadyClean mode;
//! - inputs beyond the planned size, or image and cloud of different sizes, refused on
//!   the host; no allocation per part after the first;
//! - the default (M3DM) configuration: 1000 hypotheses, 224×224, up- and downscaling;
//! - a model's stage: its preprocessing and its point branch's minimum point count.

use std::sync::Arc;

use miad::config::PreprocessConfig;
use miad::cuda::device::graph::Graph;
use miad::cuda::stages::preprocess::{DevicePreprocess, PreprocessStaging};
use miad::eval::synth::{synth_part, Category, Defect};
use miad::pipeline::input::{CloudView, RgbView};
use miad::pipeline::preprocess::{
    background_plane, preprocess, preprocess_scratch_len, ModalityStatus, PreprocessMode,
    PreprocessOutput, Unusable,
};

use crate::test_device;

/// Small sizes (the emulator runs every RANSAC hypothesis as a block of fibers).
fn config() -> PreprocessConfig {
    PreprocessConfig {
        image_size: 48,
        xyz_grid: 8,
        ransac_iterations: 24,
        ..PreprocessConfig::default()
    }
}

/// A stage, its staging and the graph recorded once.
struct Rig {
    stage: DevicePreprocess,
    staging: PreprocessStaging,
    graph: Graph,
    cfg: PreprocessConfig,
    mode: PreprocessMode,
    min_points: usize,
}

impl Rig {
    fn new(
        who: &str,
        cfg: &PreprocessConfig,
        min_points: usize,
        max: (usize, usize),
        mode: PreprocessMode,
    ) -> Option<Rig> {
        let dev = Arc::new(test_device(who)?);
        let stage = DevicePreprocess::with_config(dev.clone(), cfg, min_points, max.0, max.1, mode)
            .unwrap();
        let staging = PreprocessStaging::new(&stage).unwrap();
        let (inputs, targets) = (stage.inputs(), stage.targets());
        let graph = Graph::capture(&dev, |d| {
            staging.record_upload(d, inputs)?;
            // SAFETY: the stage's own input and output slots, sized by its plan.
            unsafe { stage.record(d, inputs, targets) }
        })
        .unwrap();
        Some(Rig {
            stage,
            staging,
            graph,
            cfg: cfg.clone(),
            mode,
            min_points,
        })
    }

    /// One part on the device and on the CPU; panics on any difference.
    fn check(&mut self, what: &str, rgb: Option<RgbView<'_>>, cloud: Option<CloudView<'_>>) -> Run {
        let mut cpu = PreprocessOutput::new(&self.cfg);
        cpu.min_points = self.min_points;
        let (w, h) = rgb
            .as_ref()
            .map(|r| (r.width, r.height))
            .or(cloud.as_ref().map(|c| (c.width, c.height)))
            .unwrap_or((1, 1));
        let mut scratch = vec![0f32; preprocess_scratch_len(&self.cfg, w, h)];
        let want = preprocess(&self.cfg, rgb, cloud, self.mode, &mut cpu, &mut scratch).unwrap();

        self.staging.fill(&self.stage, rgb, cloud).unwrap();
        let dev = self.stage.device().clone();
        self.graph.replay(&dev).unwrap();
        let mut gpu = PreprocessOutput::new(&self.cfg);
        let got = self.stage.download(&mut gpu).unwrap();
        let s2 = self.cfg.image_size as usize * self.cfg.image_size as usize;
        let mut map = vec![0i32; s2];
        self.stage.download_pixel_map(&mut map).unwrap();

        assert_eq!(got, want, "{what}: status");
        assert_eq!(gpu.n_points, cpu.n_points, "{what}: point count");
        let n = cpu.n_points;
        let same_bits = gpu.points[..3 * n]
            .iter()
            .zip(&cpu.points[..3 * n])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits, "{what}: points differ from the CPU's");
        assert_eq!(
            gpu.point_pixels[..n],
            cpu.point_pixels[..n],
            "{what}: pixel indices"
        );
        let mut want_map = vec![-1i32; s2];
        for (i, &q) in cpu.point_pixels[..n].iter().enumerate() {
            want_map[q as usize] = i as i32;
        }
        assert_eq!(map, want_map, "{what}: pixel map");
        if want.cloud_usable() {
            assert_eq!(gpu.cloud, cpu.cloud, "{what}: resized cloud");
        }
        let rgb_diff = gpu
            .rgb_input
            .iter()
            .zip(&cpu.rgb_input)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            gpu.rgb_input
                .iter()
                .zip(&cpu.rgb_input)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: RGB input differs from the CPU's (max |Δ| {rgb_diff})"
        );
        let state = self.stage.download_state().unwrap();
        let got_plane = (state.plane.ok != 0).then_some((state.plane.n, state.plane.d));
        let want_plane = match (self.mode, cloud.as_ref()) {
            (PreprocessMode::Full, Some(c)) => background_plane(&self.cfg, c),
            _ => None,
        };
        let bits = |p: Option<([f64; 3], f64)>| {
            p.map(|(n, d)| [n[0].to_bits(), n[1].to_bits(), n[2].to_bits(), d.to_bits()])
        };
        assert_eq!(
            bits(got_plane),
            bits(want_plane),
            "{what}: background plane {got_plane:?}, the CPU's {want_plane:?}"
        );
        Run {
            status: got,
            n_points: n,
            plane: state.plane.ok != 0,
        }
    }
}

struct Run {
    status: ModalityStatus,
    n_points: usize,
    plane: bool,
}

fn valid_points(cloud: &[f32]) -> usize {
    cloud
        .chunks_exact(3)
        .filter(|p| p.iter().all(|&v| v != 0.0 && v.is_finite()))
        .count()
}

#[test]
fn full_preprocessing_matches_the_cpu_on_synthetic_parts() {
    let cfg = config();
    let Some(mut rig) = Rig::new("preprocess", &cfg, 1, (80, 80), PreprocessMode::Full) else {
        return;
    };
    let mut planes = 0;
    for (i, (cat, defect)) in [
        (Category::Disc, None),
        (Category::Torus, Some(Defect::Bump)),
        (Category::Block, Some(Defect::Dent)),
    ]
    .into_iter()
    .enumerate()
    {
        let size = 64;
        let p = synth_part(cat, defect, size, 7 + i as u64).unwrap();
        let run = rig.check(
            &format!("{cat:?}"),
            Some(RgbView::packed(&p.rgb, size, size)),
            Some(CloudView::packed(&p.xyz, size, size)),
        );
        assert!(
            run.status.cloud_usable() && run.status.rgb_usable(),
            "{cat:?}"
        );
        assert!(run.n_points > 0);
        planes += usize::from(run.plane);
    }
    assert!(
        planes > 0,
        "no part had a background plane: RANSAC untested"
    );
}

#[test]
fn one_graph_serves_parts_of_different_sizes() {
    let cfg = config();
    let Some(mut rig) = Rig::new("preprocess", &cfg, 1, (120, 96), PreprocessMode::Full) else {
        return;
    };
    // 64 → padded 100, 120×96 → padded 200 (the working size and padding change).
    let a = synth_part(Category::Disc, None, 64, 3).unwrap();
    let b = synth_part(Category::Block, None, 96, 4).unwrap();
    // A 120×96 part: b's rows widened with zeros on the right (a non-square input).
    let (bw, bh) = (120usize, 96usize);
    let mut b_xyz = vec![0f32; 3 * bw * bh];
    let mut b_rgb = vec![0u8; 3 * bw * bh];
    for r in 0..bh {
        b_xyz[3 * bw * r..3 * bw * r + 3 * 96]
            .copy_from_slice(&b.xyz[3 * 96 * r..3 * 96 * (r + 1)]);
        b_rgb[3 * bw * r..3 * bw * r + 3 * 96]
            .copy_from_slice(&b.rgb[3 * 96 * r..3 * 96 * (r + 1)]);
    }
    for round in 0..2 {
        let ra = rig.check(
            &format!("64×64, round {round}"),
            Some(RgbView::packed(&a.rgb, 64, 64)),
            Some(CloudView::packed(&a.xyz, 64, 64)),
        );
        let rb = rig.check(
            &format!("120×96, round {round}"),
            Some(RgbView::packed(&b_rgb, bw, bh)),
            Some(CloudView::packed(&b_xyz, bw, bh)),
        );
        assert!(ra.status.cloud_usable() && rb.status.cloud_usable());
        assert_ne!(
            ra.n_points, rb.n_points,
            "both sizes gave the same point count"
        );
    }
    // Too large for the plan, or image and cloud of different sizes: refused on the host,
    // and the graph still serves the next part.
    let big = vec![0u8; 3 * 130 * 10];
    assert!(rig
        .staging
        .fill(&rig.stage, Some(RgbView::packed(&big, 130, 10)), None)
        .is_err());
    assert!(rig
        .staging
        .fill(
            &rig.stage,
            Some(RgbView::packed(&a.rgb, 64, 64)),
            Some(CloudView::packed(&a.xyz[..3 * 64 * 60], 64, 60)),
        )
        .is_err());
    rig.check(
        "64×64 after refusals",
        Some(RgbView::packed(&a.rgb, 64, 64)),
        Some(CloudView::packed(&a.xyz, 64, 64)),
    );
}

#[test]
fn incomplete_parts_get_the_cpus_status() {
    let cfg = config();
    let Some(mut rig) = Rig::new("preprocess", &cfg, 1, (64, 64), PreprocessMode::Full) else {
        return;
    };
    let size = 64;
    let p = synth_part(Category::Torus, None, size, 11).unwrap();
    let rgb = || Some(RgbView::packed(&p.rgb, size, size));
    let cloud = || Some(CloudView::packed(&p.xyz, size, size));
    let zeros = vec![0f32; 3 * size * size];
    let mut nans = zeros.clone();
    for v in nans.iter_mut().step_by(5) {
        *v = f32::NAN;
    }
    let blank = vec![77u8; 3 * size * size];
    // Only a plane (the background of the part): removed entirely.
    let mut plane_only = p.xyz.clone();
    let z0 = p.xyz[2];
    for q in plane_only.chunks_exact_mut(3) {
        q[2] = z0;
    }

    let r = rig.check("no RGB", None, cloud());
    assert_eq!(r.status.rgb, Some(Unusable::Missing));
    assert!(r.status.cloud_usable());
    let r = rig.check("no cloud", rgb(), None);
    assert_eq!(r.status.cloud, Some(Unusable::Missing));
    assert!(r.status.rgb_usable());
    let r = rig.check("neither", None, None);
    assert_eq!(r.status.cloud, Some(Unusable::Missing));
    let r = rig.check(
        "all-zero cloud",
        rgb(),
        Some(CloudView::packed(&zeros, size, size)),
    );
    assert_eq!(r.status.cloud, Some(Unusable::AllZero));
    let r = rig.check(
        "NaN cloud",
        rgb(),
        Some(CloudView::packed(&nans, size, size)),
    );
    assert_eq!(r.status.cloud, Some(Unusable::NonFinite));
    let r = rig.check(
        "blank image",
        Some(RgbView::packed(&blank, size, size)),
        cloud(),
    );
    assert_eq!(r.status.rgb, Some(Unusable::Blank));
    if valid_points(&plane_only) > 0 {
        let r = rig.check(
            "plane only",
            rgb(),
            Some(CloudView::packed(&plane_only, size, size)),
        );
        assert_eq!(r.status.cloud, Some(Unusable::EmptyAfterCleaning));
    }

    // A minimum above the part's points: TooFewPoints.
    let Some(mut strict) = Rig::new(
        "preprocess",
        &cfg,
        1_000_000,
        (64, 64),
        PreprocessMode::Full,
    ) else {
        return;
    };
    let r = strict.check("too few points", rgb(), cloud());
    assert_eq!(r.status.cloud, Some(Unusable::TooFewPoints));
    assert_eq!(r.n_points, 0);
}

#[test]
fn already_clean_mode_matches_the_cpu() {
    let cfg = config();
    let Some(mut rig) = Rig::new(
        "preprocess",
        &cfg,
        1,
        (100, 100),
        PreprocessMode::AlreadyClean,
    ) else {
        return;
    };
    for (size, seed) in [(64usize, 5u64), (100, 6)] {
        let p = synth_part(Category::Disc, Some(Defect::Crack), size, seed).unwrap();
        let r = rig.check(
            &format!("already clean {size}"),
            Some(RgbView::packed(&p.rgb, size, size)),
            Some(CloudView::packed(&p.xyz, size, size)),
        );
        assert!(r.status.cloud_usable());
        assert!(!r.plane, "AlreadyClean must not remove a plane");
    }
}

#[test]
fn default_m3dm_configuration_matches_the_cpu() {
    // SPEC §1 as configured by default (1000 hypotheses of 50 points, 224×224 output) on a
    // part that is upscaled (200 → 224) and one downscaled and padded (250 → 300).
    let cfg = PreprocessConfig::default();
    let Some(mut rig) = Rig::new("preprocess", &cfg, 1, (250, 250), PreprocessMode::Full) else {
        return;
    };
    for (size, seed) in [(200usize, 21u64), (250, 22)] {
        let p = synth_part(Category::Torus, Some(Defect::Hole), size, seed).unwrap();
        let r = rig.check(
            &format!("default configuration, {size}×{size}"),
            Some(RgbView::packed(&p.rgb, size, size)),
            Some(CloudView::packed(&p.xyz, size, size)),
        );
        assert!(r.status.cloud_usable() && r.plane);
    }
}

#[test]
fn a_part_allocates_nothing_after_the_first() {
    if !crate::common::alone_in_process!(a_part_allocates_nothing_after_the_first) {
        return;
    }
    let cfg = config();
    let Some(mut rig) = Rig::new("preprocess", &cfg, 1, (64, 64), PreprocessMode::Full) else {
        return;
    };
    let p = synth_part(Category::Block, None, 64, 1).unwrap();
    let mut out = PreprocessOutput::new(&cfg);
    let dev = rig.stage.device().clone();
    let run = |rig: &mut Rig, out: &mut PreprocessOutput| {
        rig.staging
            .fill(
                &rig.stage,
                Some(RgbView::packed(&p.rgb, 64, 64)),
                Some(CloudView::packed(&p.xyz, 64, 64)),
            )
            .unwrap();
        rig.graph.replay(&dev).unwrap();
        rig.stage.download(out).unwrap()
    };
    let first = run(&mut rig, &mut out);
    let before = miad::util::alloc_counter::total_counts();
    for _ in 0..3 {
        assert_eq!(run(&mut rig, &mut out), first);
    }
    let after = miad::util::alloc_counter::total_counts();
    assert_eq!(
        after, before,
        "preprocessing a part allocated (allocations, bytes)"
    );
    assert!(out.n_points > 0);
}

#[test]
fn a_models_stage_uses_its_preprocessing_and_point_branch_minimum() {
    use crate::shared::point_branch::TempModel;
    use miad::config::ModelConfig;
    let mut cfg = ModelConfig::demo();
    cfg.preprocess.ransac_iterations = 16;
    let pc = cfg
        .point
        .clone()
        .expect("the demo model has a point branch");
    let tm = TempModel::new(crate::common::scratch_dir("cuda-preprocess-model"), &cfg, 3);
    let needs = DevicePreprocess::arena_needs(&tm.model, 96, 96, PreprocessMode::Full).unwrap();
    assert_eq!(needs.len(), 1);
    assert_eq!(needs[0].0, DevicePreprocess::ARENA_REGION);
    let Some(dev) = test_device("preprocess") else {
        return;
    };
    let stage = DevicePreprocess::on_device(Arc::new(dev), &tm.model, 96, 96, PreprocessMode::Full)
        .unwrap();
    assert_eq!(stage.side(), cfg.preprocess.image_size as usize);
    assert_eq!(
        stage.min_points(),
        PreprocessOutput::for_point_branch(&cfg.preprocess, &pc).min_points
    );
    // A zero-sized plan is refused before the device is touched.
    assert!(DevicePreprocess::arena_needs(&tm.model, 0, 96, PreprocessMode::Full).is_err());
}
