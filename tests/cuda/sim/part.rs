//! The one-graph part's bookkeeping on the simulated device: each stage's device time from
//! the graph's time marks, input copies sized to the part (no stale bytes of a larger
//! part used), and the exact fast bank search's scan counts on near-duplicate banks; and
//! the device layer under them (resizable recorded copies, time marks), misuse included.

use crate::common;

use miad::backend::{Backend, Precision};
use miad::config::ModelConfig;
use miad::cpu::pool::Pool;
use miad::cuda::device::graph::{Graph, Pinned, TimeMarks};
use miad::cuda::{Arena, ArenaPlan, Device};
use miad::engine::{Engine, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::scaled_bank::write_with_banks;
use miad::eval::synth::Category;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::input::{CloudView, RgbView};
use miad::types::{BANK_NAMES, RGB, XYZ};
use miad::{DeviceError, Error, Misuse};

use super::engine::{assert_on_the_simulated_device, cpu_and_sim, options};

fn is_misuse<T>(r: miad::Result<T>, kind: Misuse) -> String {
    match r {
        Ok(_) => panic!("expected a {kind:?} misuse"),
        Err(Error::Device(DeviceError::Misuse { kind: k, detail })) if k == kind => detail,
        Err(e) => panic!("{e:?} is not a {kind:?} misuse"),
    }
}

fn rel(x: f32, y: f32) -> f32 {
    (x - y).abs() / x.abs().max(y.abs()).max(1e-6)
}

#[test]
fn a_recorded_copy_moves_the_bytes_it_is_sized_to_and_no_more_than_recorded() {
    let d = Device::simulated().unwrap();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(32);
    let arena = Arena::new(&d, &plan).unwrap();
    arena.upload(&d, s, &[-1.0f32; 32]).unwrap();
    let mut host = Pinned::<f32>::new(&d, 32).unwrap();
    // Outside a capture there is no node to resize.
    assert!(host.copy_to_resizable(&d, arena.ptr(s), 32).is_err());
    let mut node = None;
    let g = Graph::capture(&d, |d| {
        node = Some(host.copy_to_resizable(d, arena.ptr(s), 32)?);
        Ok(())
    })
    .unwrap();
    let node = node.unwrap();
    let probe = d.activity();
    for (i, v) in host.as_mut_slice().iter_mut().enumerate() {
        *v = i as f32;
    }
    g.set_copy_len(&d, &node, 8).unwrap();
    let before = probe.bytes_to_device();
    g.replay(&d).unwrap();
    d.synchronize().unwrap();
    assert_eq!(probe.bytes_to_device() - before, 8 * 4);
    let mut got = [0f32; 32];
    arena.download(&d, s, &mut got).unwrap();
    // The first 8 values copied, the rest as they were.
    assert!((0..8).all(|i| got[i] == i as f32), "{got:?}");
    assert!(got[8..].iter().all(|&v| v == -1.0), "{got:?}");
    // Back to the recorded size: everything.
    g.set_copy_len(&d, &node, 32).unwrap();
    g.replay(&d).unwrap();
    arena.download(&d, s, &mut got).unwrap();
    assert!((0..32).all(|i| got[i] == i as f32), "{got:?}");
    // Beyond the recorded bytes: refused, and the size stays.
    let msg = is_misuse(g.set_copy_len(&d, &node, 33), Misuse::GraphUpdate);
    assert!(msg.contains("beyond the 128"), "{msg}");
    let before = probe.bytes_to_device();
    g.replay(&d).unwrap();
    assert_eq!(probe.bytes_to_device() - before, 32 * 4);
}

#[test]
fn time_marks_are_read_after_a_replay_reached_them() {
    let d = Device::simulated().unwrap();
    let mut plan = ArenaPlan::new();
    let s = plan.add::<f32>(1 << 16);
    let arena = Arena::new(&d, &plan).unwrap();
    let host = Pinned::<f32>::new(&d, 1 << 16).unwrap();
    let marks = TimeMarks::new(&d, 3).unwrap();
    let g = Graph::capture(&d, |d| {
        marks.record(d, 0)?;
        host.copy_to(d, arena.ptr(s), 1 << 16)?;
        marks.record(d, 1)
    })
    .unwrap();
    // Recorded, not run: no time yet.
    let msg = is_misuse(marks.elapsed_s(0, 1), Misuse::UnrecordedMark);
    assert!(msg.contains("mark 0"), "{msg}");
    g.replay(&d).unwrap();
    d.synchronize().unwrap();
    let t = marks.elapsed_s(0, 1).unwrap();
    assert!(t > 0.0 && t < 10.0, "{t}");
    // Mark 2 was never recorded into the graph.
    is_misuse(marks.elapsed_s(1, 2), Misuse::UnrecordedMark);
    assert!(marks.elapsed_s(0, 3).is_err());
}

/// `view` cropped to `w × h` at (`top`, `left`), in the caller's strides.
fn crop_rgb<'a>(v: &RgbView<'a>, top: usize, left: usize, w: usize, h: usize) -> RgbView<'a> {
    RgbView {
        data: &v.data[top * v.stride + 3 * left..],
        width: w,
        height: h,
        stride: v.stride,
    }
}

fn crop_cloud<'a>(v: &CloudView<'a>, top: usize, left: usize, w: usize, h: usize) -> CloudView<'a> {
    CloudView {
        data: &v.data[top * v.stride + 3 * left..],
        width: w,
        height: h,
        stride: v.stride,
    }
}

/// One part is one graph whose time marks give every stage its device time; a smaller
/// part after a larger one uploads its own bytes only (the difference is exactly the
/// pixels' bytes) and still gives the CPU's result.
#[test]
fn a_part_times_its_stages_on_the_device_and_uploads_only_its_bytes() {
    let fx = common::fitted_with(
        common::for_the_emulator(ModelConfig::small()),
        "sim-part",
        Category::Disc,
        4,
        2,
        1,
    );
    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let (mut cpu, mut sim) = cpu_and_sim(&fx, Precision::F32);
    let opts = InspectOptions::default();

    for p in &parts {
        let (r, c) = p.views();
        let x = sim.inspect(r, c, &opts).unwrap();
        let t = x.times;
        let stages = [
            ("preprocess", t.preprocess),
            ("rgb", t.rgb),
            ("point", t.point),
            ("fusion", t.fusion),
            ("score", x.score_time),
        ];
        eprintln!("device stage times (s): {stages:?}, total {}", x.total_time);
        for (name, v) in stages {
            assert!(v > 0.0 && v.is_finite(), "{name}: {v}");
        }
        // One in-order stream on the simulated device: the stages do not overlap.
        let sum: f64 = stages.iter().map(|(_, v)| v).sum();
        assert!(
            sum <= x.total_time,
            "stages {sum} s, part {} s",
            x.total_time
        );
    }

    let probe = sim.backend().device_activity.clone().unwrap();
    let (r, c) = parts[0].views();
    let (r, c) = (r.unwrap(), c.unwrap());
    let (w, h) = (r.width, r.height);
    let (cw, ch, top, left) = (3 * w / 4, 3 * h / 4, h / 8, w / 8);
    let (small_r, small_c) = (
        crop_rgb(&r, top, left, cw, ch),
        crop_cloud(&c, top, left, cw, ch),
    );
    let mut uploaded = |r: RgbView<'_>, c: CloudView<'_>| {
        let before = probe.bytes_to_device();
        let x = sim.inspect(Some(r), Some(c), &opts).unwrap();
        let s = (x.score, x.verdict, x.bank_scores);
        (probe.bytes_to_device() - before, s)
    };
    let (big, _) = uploaded(r, c);
    let (small, (score, verdict, banks)) = uploaded(small_r, small_c);
    let (again, _) = uploaded(small_r, small_c);
    eprintln!("uploaded per part: {w}x{h} {big} bytes, {cw}x{ch} {small} bytes");
    // RGB bytes and cloud floats: 3 + 12 bytes a pixel; everything else the same.
    assert_eq!(big - small, 15 * (w * h - cw * ch) as u64);
    assert_eq!(again, small);
    let want = cpu.inspect(Some(small_r), Some(small_c), &opts).unwrap();
    assert!(
        rel(want.score, score) <= 2e-3,
        "cpu {} sim {score}",
        want.score
    );
    for (k, (&a, &b)) in want.bank_scores.iter().zip(&banks).enumerate() {
        assert!(rel(a, b) <= 2e-3, "bank {k}: cpu {a} sim {b}");
    }
    assert_eq!(want.verdict, verdict);
}

/// Rows the f16 pass cannot tell apart.
const REPEAT: usize = 5;

/// The f32 search's nearest row (BANK-SEARCH.md): e'(q, b) = Σ_k (q_k − b_k)² in k order
/// with fused multiply-adds from 0, the smallest (e', index).
fn f32_search(q: &[f32], rows: &[f32], dim: usize) -> u32 {
    let mut best = (f32::INFINITY, u32::MAX);
    for (i, b) in rows.chunks_exact(dim).enumerate() {
        let e = q.iter().zip(b).fold(0f32, |acc, (x, y)| {
            let d = x - y;
            d.mul_add(d, acc)
        });
        if e < best.0 {
            best = (e, i as u32);
        }
    }
    best.1
}

/// The bf16 engine's exact fast search inside the part's graph, on banks whose rows come
/// in groups of identical copies: the nearest rows are the f32 search's (ties to the
/// lowest copy), the kept candidates do not suffice, and the split scans this forces are
/// counted (they come back with the part's results).
#[test]
fn the_one_graph_fast_search_counts_its_exact_scans_on_near_duplicate_banks() {
    let fx = common::fitted_with(
        common::for_the_emulator(ModelConfig::small()),
        "sim-part-dup",
        Category::Disc,
        4,
        2,
        1,
    );
    let src = BankFile::open(&fx.bank, &OpenOptions::default(), None).unwrap();
    let cfg = src.config().clone();
    let fitted = [cfg.xyz_rows, cfg.rgb_rows, cfg.fused_rows].map(|r| r as usize);
    let dims = [cfg.xyz_dim, cfg.rgb_dim, cfg.fused_dim].map(|d| d as usize);
    let mut banks = Vec::new();
    for b in (0..3).filter(|&b| fitted[b] > 0) {
        let (n, d) = (fitted[b], dims[b]);
        let name = BANK_NAMES[b];
        let data = src
            .typed::<f32>(&format!("bank.{name}"), Some(&[n, d]))
            .unwrap();
        // The xyz bank's background row stays last, alone.
        let background = usize::from(b == XYZ);
        let (features, tail) = data.split_at((n - background) * d);
        let mut rows = Vec::with_capacity(REPEAT * n * d);
        for row in features.chunks_exact(d) {
            for _ in 0..REPEAT {
                rows.extend_from_slice(row);
            }
        }
        rows.extend_from_slice(tail);
        banks.push((b, rows));
    }
    let dup = fx.dir.join("repeated.bank");
    write_with_banks(
        &Pool::new(2),
        &src,
        banks.clone(),
        "test: every row repeated",
        &dup,
    )
    .unwrap();

    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let mut f32_engine =
        Engine::open(&fx.model, &dup, &options(Backend::CudaSim, Precision::F32)).unwrap();
    let mut bf16 =
        Engine::open(&fx.model, &dup, &options(Backend::CudaSim, Precision::Bf16)).unwrap();
    assert_on_the_simulated_device(&bf16);
    let opts = InspectOptions::default();
    let (r, c) = parts[0].views();
    f32_engine.inspect(r, c, &opts).unwrap();
    // The f32 search scans nothing.
    assert_eq!(f32_engine.device_exact_scans().unwrap().queries, 0);

    bf16.inspect(r, c, &opts).unwrap();
    let mut patches = 0u64;
    for (b, rows) in &banks {
        let d = dims[*b];
        // The fused bank's patches are the xyz grid's.
        let grid = if *b == RGB {
            cfg.rgb_grid
        } else {
            cfg.xyz_grid
        } as usize;
        let nq = grid * grid;
        patches += nq as u64;
        let (mut q, mut got) = (vec![0f32; nq * d], vec![0u32; nq]);
        bf16.device_search(*b, &mut q, &mut got).unwrap();
        for (j, qj) in q.chunks_exact(d).enumerate() {
            let want = f32_search(qj, rows, d);
            assert_eq!(got[j], want, "bank {} patch {j}", BANK_NAMES[*b]);
        }
    }
    let scans = bf16.device_exact_scans().unwrap();
    eprintln!("exact scans after one part: {scans:?}");
    assert_eq!(scans.queries, patches);
    assert!(scans.queries_scanning > 0, "{scans:?}");
    assert!(scans.splits_scanned >= scans.queries_scanning, "{scans:?}");
    // A second part adds its own.
    bf16.inspect(r, c, &opts).unwrap();
    let twice = bf16.device_exact_scans().unwrap();
    assert_eq!(twice.queries, 2 * patches);
    assert_eq!(twice.splits_scanned, 2 * scans.splits_scanned);
}
