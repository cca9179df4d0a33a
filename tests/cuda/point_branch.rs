//! The engine's point branch on the device (`miad::cuda::stages::point_branch`) against the CPU
//! point branch of `Extractor` (FPS, kNN grouping, Point-MAE, feature alignment), on
//! synthetic parts through `pipeline::preprocess`, with a seeded random model
//! (`ModelConfig::demo()`: Point-MAE heads of 64):
//! - centers and groups identical, xyz features within `Precision::F32.feature_tolerance()`
//!   (max |Δ| / max |ref|), for graph replay, direct launches and the shared-memory FPS / heap kNN kernels;
//! - the same bits on a second run, and graph replay = direct launches;
//! - the bf16 path (Point-MAE and the group encoder on bf16 tensor cores): the same centers
//!   and groups, xyz features within `Precision::Bf16.feature_tolerance()`, the same bits
//!   on a second run, graph replay = direct launches;
//! - bad calls (too few or too many points, short buffers, wrong output lengths, bad
//!   pixels, non-finite points) refused with an error, the branch usable afterwards;
//! - models the kernels cannot run refused at creation, before the device is opened.
//!
//! Without a driver, a GPU or the cuBLASLt library every GPU test prints a SKIP line and
//! passes. On a GPU machine:
//! `cargo test --release --features cuda --test cuda point_branch:: -- --nocapture`. The timing
//! at M3DM sizes is `point_branch` in bench/cuda/.

use miad::backend::Precision;
use miad::config::ModelConfig;
use miad::cpu::pool::Pool;
use miad::cuda::ops::fps::FpsKernel;
use miad::cuda::ops::knn::KnnKernel;
use miad::cuda::ops::point::PointOptions;
use miad::cuda::stages::point_branch::{BranchOptions, DevicePointBranch};
use miad::eval::synth::{synth_part, Category, Defect};
use miad::format::ModelFile;
use miad::pipeline::extract::{Extractor, PointNetwork, PointOutputs};

use miad::pipeline::input::{CloudView, RgbView};
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};
use miad::Error;

use crate::shared::point_branch::{
    check, check_within, cpu_branch, gpu, m3dm_point, scan_points, Branch, TempModel,
    POINT_NETWORK_TOLERANCE,
};

fn temp_model(name: &str, cfg: &ModelConfig, seed: u64) -> TempModel {
    TempModel::new(
        crate::common::scratch_dir(&format!("cuda-point-branch-{name}")),
        cfg,
        seed,
    )
}

/// A synthetic part preprocessed as the extractor does (`size` × `size`).
struct Part {
    rgb: Vec<u8>,
    cloud: Vec<f32>,
    size: usize,
    pre: PreprocessOutput,
}

fn part(cfg: &ModelConfig, cat: Category, defect: Option<Defect>, size: usize, seed: u64) -> Part {
    let p = synth_part(cat, defect, size, seed).unwrap();
    let pc = cfg.point.as_ref().unwrap();
    let mut pre = PreprocessOutput::for_point_branch(&cfg.preprocess, pc);
    let mut scratch = vec![0f32; preprocess_scratch_len(&cfg.preprocess, size, size)];
    let status = preprocess(
        &cfg.preprocess,
        Some(RgbView::packed(&p.rgb, size, size)),
        Some(CloudView::packed(&p.xyz, size, size)),
        PreprocessMode::Full,
        &mut pre,
        &mut scratch,
    )
    .unwrap();
    assert!(status.cloud_usable(), "{cat:?}: cloud {:?}", status.cloud);
    Part {
        rgb: p.rgb,
        cloud: p.xyz,
        size,
        pre,
    }
}

fn run(net: &mut DevicePointBranch, cfg: &ModelConfig, pre: &PreprocessOutput) -> Branch {
    let mut out = Branch::zeros(cfg);
    net.forward(&pre.points, pre.n_points, &pre.point_pixels, out.outputs())
        .unwrap();
    out
}

#[test]
fn unsupported_models_are_refused_before_the_device() {
    // No point branch.
    let mut cfg = ModelConfig::demo();
    cfg.point = None;
    cfg.fusion = None;
    let t = temp_model("no-point", &cfg, 1);
    let e = DevicePointBranch::new(0, &t.model).err().unwrap();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("no point branch"), "{e}");
    drop(t);
    // Heads of 48 (no attention kernel).
    let mut cfg = ModelConfig::small();
    cfg.point.as_mut().unwrap().heads = 2;
    let t = temp_model("heads48", &cfg, 2);
    let e = DevicePointBranch::new(0, &t.model).err().unwrap();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("head dimension"), "{e}");
}

#[test]
fn creation_without_a_device_is_an_error_not_a_panic() {
    let t = temp_model("create", &ModelConfig::demo(), 3);
    match DevicePointBranch::new(0, &t.model) {
        Ok(b) => {
            assert!(b.uses_graph());
            eprintln!(
                "created on {}: kernels {:?}, {} MiB of device memory",
                b.device().name,
                b.kernel_choice(),
                b.device_bytes() >> 20
            );
        }
        Err(e) => {
            assert!(matches!(e, Error::Device(_)), "{e}");
            eprintln!("cuda_point_branch create: SKIP, {e}");
        }
    }
}

const PART_SIZE: usize = 160;

/// Three synthetic parts of the demo model, good and defective.
fn parts(cfg: &ModelConfig) -> [Part; 3] {
    [
        part(cfg, Category::Disc, None, PART_SIZE, 101),
        part(cfg, Category::Torus, Some(Defect::Dent), PART_SIZE, 102),
        part(cfg, Category::Block, Some(Defect::Hole), PART_SIZE, 103),
    ]
}

fn cpu_ref(pool: &Pool, model: &ModelFile, p: &Part) -> Branch {
    let pre = &p.pre;
    cpu_branch(pool, model, &pre.points, pre.n_points, &pre.point_pixels)
}

/// The reference of the GPU tests is what the extractor computes (no GPU needed).
#[test]
fn cpu_reference_is_the_extractor() {
    let cfg = ModelConfig::demo();
    let t = temp_model("reference", &cfg, 11);
    let pool = Pool::with_available_cores();
    let mut ex =
        Extractor::new(&pool, &t.model, PART_SIZE, PART_SIZE, PreprocessMode::Full).unwrap();
    for (i, p) in parts(&cfg).iter().enumerate() {
        let want = cpu_ref(&pool, &t.model, p);
        ex.run(
            &pool,
            Some(RgbView::packed(&p.rgb, p.size, p.size)),
            Some(CloudView::packed(&p.cloud, p.size, p.size)),
        )
        .unwrap();
        let n = ex.preprocessed().n_points;
        assert_eq!(n, p.pre.n_points, "part {i}");
        assert!(n > 2 * ex.centers().len(), "part {i}: {n} points");
        assert_eq!(ex.centers(), &want.centers[..], "part {i}");
        assert_eq!(ex.groups(), &want.groups[..], "part {i}");
        assert_eq!(ex.xyz, want.xyz, "part {i}: xyz features");
        assert!(want.xyz.iter().any(|&v| v != 0.0));
        eprintln!("part {i}: {n} points, CPU reference = extractor");
    }
}

/// One input of the point branch.
struct Input {
    what: String,
    points: Vec<f32>,
    n: usize,
    pixels: Vec<u32>,
}

impl Input {
    fn of_part(i: usize, p: &Part) -> Input {
        Input {
            what: format!("part {i}"),
            points: p.pre.points.clone(),
            n: p.pre.n_points,
            pixels: p.pre.point_pixels.clone(),
        }
    }
    /// A point at every pixel of the `side`×`side` map (the capacity).
    fn full_map(side: usize) -> Input {
        let (points, pixels) = scan_points(side * side, side);
        Input {
            what: format!("full {side}×{side} map"),
            points,
            n: side * side,
            pixels,
        }
    }
    fn cpu(&self, pool: &Pool, model: &ModelFile) -> Branch {
        cpu_branch(pool, model, &self.points, self.n, &self.pixels)
    }
    fn device(&self, net: &mut DevicePointBranch, cfg: &ModelConfig) -> Branch {
        let mut out = Branch::zeros(cfg);
        net.forward(&self.points, self.n, &self.pixels, out.outputs())
            .unwrap();
        out
    }
}

/// Every input through each variant (graph, direct launches, shared-memory FPS / heap kNN kernels): the CPU's
/// centers and groups, its xyz features within the tolerance, the same bits on a second
/// run, graph = direct.
fn parity(model: &ModelFile, inputs: &[Input], pool: &Pool) {
    let cfg = model.config();
    let refs: Vec<Branch> = inputs.iter().map(|x| x.cpu(pool, model)).collect();
    let direct = BranchOptions {
        graph: false,
        ..BranchOptions::default()
    };
    let first_kernels = BranchOptions {
        kernels: PointOptions {
            fps: Some(FpsKernel::SharedMemory),
            knn: Some(KnnKernel::LaneHeaps),
            fps_regs_cluster: None,
        },
        ..BranchOptions::default()
    };
    let mut nets = vec![
        (
            "graph",
            DevicePointBranch::with_options(0, model, BranchOptions::default()).unwrap(),
        ),
        (
            "direct",
            DevicePointBranch::with_options(0, model, direct).unwrap(),
        ),
    ];
    if nets[0].1.kernel_choice() != (FpsKernel::SharedMemory, KnnKernel::LaneHeaps) {
        nets.push((
            "shared-memory FPS / heap kNN kernels",
            DevicePointBranch::with_options(0, model, first_kernels).unwrap(),
        ));
    }
    let mut first: Option<Vec<Branch>> = None;
    let mut worst = 0f32;
    for (name, net) in nets.iter_mut() {
        assert_eq!(net.uses_graph(), *name != "direct");
        let mut outs = vec![];
        for (x, want) in inputs.iter().zip(&refs) {
            let what = format!(
                "'{}' {name} {:?}, {}, {} points",
                cfg.name,
                net.kernel_choice(),
                x.what,
                x.n
            );
            let got = x.device(net, cfg);
            worst = worst.max(check(&what, &got, want));
            outs.push(got);
        }
        // Second pass, inputs in reverse order: the same bits.
        for (i, x) in inputs.iter().enumerate().rev() {
            let again = x.device(net, cfg);
            assert!(
                again == outs[i],
                "{name}: {} differs on a second run",
                x.what
            );
        }
        match &first {
            None => first = Some(outs),
            Some(f) if *name == "direct" => {
                assert!(*f == outs, "graph replay and direct launches differ")
            }
            Some(_) => {}
        }
    }
    println!(
        "'{}': worst xyz difference {worst:.3e} (tolerance {POINT_NETWORK_TOLERANCE:e})",
        cfg.name
    );
}

#[test]
fn matches_the_cpu_point_branch() {
    if !gpu("parity") {
        return;
    }
    let cfg = ModelConfig::demo();
    let t = temp_model("parity", &cfg, 11);
    let pool = Pool::with_available_cores();
    let mut inputs: Vec<Input> = parts(&cfg)
        .iter()
        .enumerate()
        .map(|(i, p)| Input::of_part(i, p))
        .collect();
    inputs.push(Input::full_map(cfg.preprocess.image_size as usize));
    parity(&t.model, &inputs, &pool);
}

/// The bf16 path on the demo model: graph replay and direct launches against the CPU's
/// f32 branch within the bf16 tolerance (measured, printed), deterministic, graph = direct;
/// the bf16 encoder's memory counted in the branch's.
#[test]
fn bf16_matches_the_cpu_point_branch() {
    if !gpu("parity bf16") {
        return;
    }
    let cfg = ModelConfig::demo();
    let t = temp_model("parity-bf16", &cfg, 11);
    let pool = Pool::with_available_cores();
    let mut inputs: Vec<Input> = parts(&cfg)
        .iter()
        .enumerate()
        .map(|(i, p)| Input::of_part(i, p))
        .collect();
    inputs.push(Input::full_map(cfg.preprocess.image_size as usize));
    let refs: Vec<Branch> = inputs.iter().map(|x| x.cpu(&pool, &t.model)).collect();
    let tol = Precision::Bf16.feature_tolerance();
    let f32_bytes = DevicePointBranch::with_options(0, &t.model, BranchOptions::default())
        .unwrap()
        .device_bytes();
    let mut first: Option<Vec<Branch>> = None;
    let mut worst = 0f32;
    for graph in [true, false] {
        let opts = BranchOptions {
            graph,
            precision: Precision::Bf16,
            ..BranchOptions::default()
        };
        let mut net = DevicePointBranch::with_options(0, &t.model, opts).unwrap();
        assert_eq!(net.uses_graph(), graph);
        assert!(net.device_bytes() > f32_bytes, "the bf16 encoder's memory");
        let mut outs = vec![];
        for (x, want) in inputs.iter().zip(&refs) {
            let what = format!("bf16 graph {graph}, {}, {} points", x.what, x.n);
            let got = x.device(&mut net, &cfg);
            worst = worst.max(check_within(&what, &got, want, tol));
            outs.push(got);
        }
        for (i, x) in inputs.iter().enumerate().rev() {
            assert!(
                x.device(&mut net, &cfg) == outs[i],
                "{}: second run differs",
                x.what
            );
        }
        match &first {
            None => first = Some(outs),
            Some(f) => assert!(*f == outs, "bf16: graph replay and direct launches differ"),
        }
    }
    println!("bf16 point branch: worst xyz difference {worst:.3e} (tolerance {tol:e})");
}

/// M3DM sizes (1024 groups of 128, Point-MAE 12 × 384, 224×224 map, 56×56 grid): a
/// scan of ~50 000 points and the full map. The model has only the point branch.
#[test]
fn matches_the_cpu_point_branch_at_m3dm_sizes() {
    if !gpu("parity m3dm") {
        return;
    }
    let cfg = m3dm_point();
    let t = temp_model("parity-m3dm", &cfg, 12);
    let pool = Pool::with_available_cores();
    let side = cfg.preprocess.image_size as usize;
    let (points, pixels) = scan_points(50_000, side);
    let inputs = [
        Input {
            what: "scan".into(),
            points,
            n: 50_000,
            pixels,
        },
        Input::full_map(side),
    ];
    parity(&t.model, &inputs, &pool);
}

#[test]
fn bad_calls_are_refused() {
    if !gpu("errors") {
        return;
    }
    let cfg = ModelConfig::demo();
    let t = temp_model("errors", &cfg, 12);
    let pool = Pool::new(2);
    let p = part(&cfg, Category::Disc, None, 128, 201);
    let pre = &p.pre;
    let n = pre.n_points;
    let want = cpu_branch(&pool, &t.model, &pre.points, n, &pre.point_pixels);
    let mut net = DevicePointBranch::new(0, &t.model).unwrap();
    let sizes = net.sizes().clone();
    let min = sizes.min_points();
    assert!(n > min, "{n} points");
    let mut out = Branch::zeros(&cfg);
    let pts = &pre.points;
    let pix = &pre.point_pixels;
    refused(&mut net, pts, min - 1, pix, out.outputs(), "at least");
    refused(&mut net, pts, 0, pix, out.outputs(), "at least");
    let big = vec![0.5f32; 3 * (sizes.max_points() + 1)];
    let big_pix: Vec<u32> = (0..sizes.max_points() as u32 + 1).collect();
    refused(
        &mut net,
        &big,
        sizes.max_points() + 1,
        &big_pix,
        out.outputs(),
        "at most",
    );
    refused(
        &mut net,
        &pts[..3 * n - 1],
        n,
        pix,
        out.outputs(),
        "coordinates",
    );
    refused(
        &mut net,
        pts,
        n,
        &pix[..n - 1],
        out.outputs(),
        "pixel indices",
    );
    let mut short = vec![0u32; out.centers.len() - 1];
    let o = PointOutputs {
        centers: &mut short,
        groups: &mut out.groups,
        xyz: &mut out.xyz,
    };
    refused(&mut net, pts, n, pix, o, "center");
    let mut short = vec![0f32; out.xyz.len() - 1];
    let o = PointOutputs {
        centers: &mut out.centers,
        groups: &mut out.groups,
        xyz: &mut short,
    };
    refused(&mut net, pts, n, pix, o, "xyz feature");
    let mut bad_pix = pix[..n].to_vec();
    bad_pix[n / 2] = sizes.max_points() as u32;
    refused(&mut net, pts, n, &bad_pix, out.outputs(), "outside");
    bad_pix[n / 2] = bad_pix[0];
    refused(&mut net, pts, n, &bad_pix, out.outputs(), "same pixel");
    let mut nan = pts[..3 * n].to_vec();
    nan[3 * (n - 1) + 2] = f32::NAN;
    refused(&mut net, &nan, n, pix, out.outputs(), "non-finite");
    // Still usable, and exactly the buffers' start is read: trimmed inputs give the same.
    let a = run(&mut net, &cfg, pre);
    check("after refused calls", &a, &want);
    let mut b = Branch::zeros(&cfg);
    net.forward(&pts[..3 * n], n, &pix[..n], b.outputs())
        .unwrap();
    assert!(a == b, "trimmed inputs give other results");
    // The smallest accepted part: a prefix of the points.
    let want = cpu_branch(&pool, &t.model, pts, min, pix);
    let mut c = Branch::zeros(&cfg);
    net.forward(pts, min, pix, c.outputs()).unwrap();
    check(&format!("{min} points (the minimum)"), &c, &want);
}

fn refused(
    net: &mut DevicePointBranch,
    points: &[f32],
    n: usize,
    pixels: &[u32],
    out: PointOutputs<'_>,
    needle: &str,
) {
    let e = net.forward(points, n, pixels, out).unwrap_err();
    assert!(matches!(e, Error::Input(_)), "{e}");
    assert!(e.to_string().contains(needle), "{e} (wanted {needle:?})");
}
