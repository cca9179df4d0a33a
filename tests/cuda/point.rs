//! CUDA point-branch kernels against independent CPU references (feature `cuda`).
//!
//! Without a GPU every device test runs on the simulated device (feature `cuda-sim`: 9
//! groups, the small clouds), or prints a skip message and passes; the tests that need no
//! device (driver detection, module table) always run. Run on a GPU machine with
//! `cargo test --release --features cuda --test cuda point:: -- --nocapture`. The timing
//! report is `point_kernels` in bench/cuda/.

use miad::backend::Precision;
use miad::cuda::ops::fps::FpsKernel;
use miad::cuda::ops::knn::KnnKernel;
use miad::cuda::ops::point::PointKernels;
use miad::cuda::stages::group_encoder::{ConvLayers, DeviceGroupEncoderBf16, EncoderBf16Sizes};
use miad::cuda::{Device, Slot, KERNEL_MODULES};
use miad::util::rng::Rng;

use crate::shared::point::{random_weights, scan_points, surface_points, Gpu, Weights, GRID, SIDE};

fn gpu() -> Option<Gpu> {
    crate::test_device("cuda_point").map(Gpu::new)
}

#[test]
fn driver_detection_never_panics() {
    // Either a device or a clear error; an absurd ordinal is always an error.
    match Device::new(0) {
        Ok(_) => assert!(Device::new(1 << 20).is_err()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[test]
fn module_table_lists_every_kernel_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    if !dir.is_dir() {
        eprintln!("module table: SKIP, source tree not present (test binary copied elsewhere)");
        return;
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "cu").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = KERNEL_MODULES.iter().map(|m| m.name.to_string()).collect();
    names.sort();
    assert_eq!(files, names);
    for m in KERNEL_MODULES {
        assert!(
            !m.source
                .lines()
                .any(|l| l.trim_start().starts_with("#include \"")),
            "{}: local include not inlined",
            m.name
        );
        assert!(
            m.source.contains("miad_sq_dist"),
            "{}: common.cuh missing",
            m.name
        );
        // Either no cubin (no NVRTC at build time) or all three architectures.
        assert!(
            m.cubins.is_empty() || m.cubins.len() == 3,
            "{}: {} cubins",
            m.name,
            m.cubins.len()
        );
    }
}

// ---------- references ----------

fn sq(a: [f32; 3], b: [f32; 3]) -> f32 {
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    dx * dx + dy * dy + dz * dz
}

fn p3(p: &[f32], i: usize) -> [f32; 3] {
    [p[3 * i], p[3 * i + 1], p[3 * i + 2]]
}

fn fps_ref(pts: &[f32], m: usize) -> Vec<u32> {
    let n = pts.len() / 3;
    let mut dist = vec![f32::INFINITY; n];
    let mut out = vec![0u32; m];
    let mut c = 0usize;
    for slot in out.iter_mut().skip(1) {
        let cp = p3(pts, c);
        let (mut best, mut bi) = (-1.0f32, 0usize);
        for (i, d) in dist.iter_mut().enumerate() {
            *d = d.min(sq(p3(pts, i), cp));
            if *d > best {
                best = *d;
                bi = i;
            }
        }
        c = bi;
        *slot = c as u32;
    }
    out
}

fn knn_ref(pts: &[f32], center: [f32; 3], k: usize) -> Vec<u32> {
    let n = pts.len() / 3;
    let mut v: Vec<(f32, u32)> = (0..n).map(|i| (sq(p3(pts, i), center), i as u32)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v[..k].iter().map(|x| x.1).collect()
}

/// f64 group encoder of one group; weights in PyTorch layout [out][in].
fn encoder_ref(rel: &[f32], s: usize, w: &Weights) -> Vec<f64> {
    let [c1, c2, c3, d] = w.dims;
    let lin = |x: &[f64], wt: &[f32], b: &[f32], o: usize, i: usize| -> Vec<f64> {
        (0..o)
            .map(|r| b[r] as f64 + (0..i).map(|k| wt[r * i + k] as f64 * x[k]).sum::<f64>())
            .collect()
    };
    let mut f = vec![];
    for p in 0..s {
        let x: Vec<f64> = rel[3 * p..3 * p + 3].iter().map(|&v| v as f64).collect();
        let h: Vec<f64> = lin(&x, &w.w[0], &w.w[1], c1, 3)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        f.push(lin(&h, &w.w[2], &w.w[3], c2, c1));
    }
    let g: Vec<f64> = (0..c2)
        .map(|o| f.iter().map(|r| r[o]).fold(f64::MIN, f64::max))
        .collect();
    let mut out = vec![f64::MIN; d];
    for fp in &f {
        let cat: Vec<f64> = g.iter().chain(fp.iter()).copied().collect();
        let h: Vec<f64> = lin(&cat, &w.w[4], &w.w[5], c3, 2 * c2)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let o = lin(&h, &w.w[6], &w.w[7], d, c3);
        for (a, b) in out.iter_mut().zip(o) {
            *a = a.max(b);
        }
    }
    out
}

/// Alignment reference in f64 the long way: 3-NN weights, the side×side map, 3×3 average
/// pooling, adaptive average pooling.
fn pfa_ref(pts: &[f32], pix: &[i32], centers: &[f32], g: &[f32], f: usize) -> Vec<f64> {
    let m = centers.len() / 3;
    let mut map = vec![0f64; SIDE * SIDE * f];
    for (j, &q) in pix.iter().enumerate() {
        let mut d: Vec<(f32, usize)> = (0..m)
            .map(|c| (sq(p3(pts, j), p3(centers, c)), c))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let w: Vec<f64> = d[..3].iter().map(|x| 1.0 / (x.0 as f64 + 1e-8)).collect();
        let s: f64 = w.iter().sum();
        let q = q as usize;
        for k in 0..3 {
            for c in 0..f {
                map[q * f + c] += w[k] / s * g[d[k].1 * f + c] as f64;
            }
        }
    }
    let ps = SIDE - 2;
    let mut pooled = vec![0f64; ps * ps * f];
    for y in 0..ps {
        for x in 0..ps {
            for dy in 0..3 {
                for dx in 0..3 {
                    for c in 0..f {
                        pooled[(y * ps + x) * f + c] +=
                            map[((y + dy) * SIDE + x + dx) * f + c] / 9.0;
                    }
                }
            }
        }
    }
    let mut out = vec![0f64; GRID * GRID * f];
    for i in 0..GRID {
        let (r0, r1) = (i * ps / GRID, ((i + 1) * ps).div_ceil(GRID));
        for j in 0..GRID {
            let (c0, c1) = (j * ps / GRID, ((j + 1) * ps).div_ceil(GRID));
            let area = ((r1 - r0) * (c1 - c0)) as f64;
            for y in r0..r1 {
                for x in c0..c1 {
                    for c in 0..f {
                        out[(i * GRID + j) * f + c] += pooled[(y * ps + x) * f + c] / area;
                    }
                }
            }
        }
    }
    out
}

struct Pre {
    pts: Vec<f32>,
    pix: Vec<i32>,
    p2p: Vec<i32>,
}

#[allow(clippy::too_many_arguments)]
fn preprocess_ref(
    cloud: &[f32],
    (h, w): (usize, usize),
    plane: [f32; 4],
    thr: f32,
    keep: &[u8],
    pad: usize,
    (or, oc): (usize, usize),
) -> Pre {
    let scale = pad as f32 / SIDE as f32;
    let mut r = Pre {
        pts: vec![],
        pix: vec![],
        p2p: vec![-1; SIDE * SIDE],
    };
    for q in 0..SIDE * SIDE {
        let (y, x) = (q / SIDE, q % SIDE);
        let sr = ((y as f32 * scale).floor() as i64).min(pad as i64 - 1) - or as i64;
        let sc = ((x as f32 * scale).floor() as i64).min(pad as i64 - 1) - oc as i64;
        if sr < 0 || sc < 0 || sr >= h as i64 || sc >= w as i64 {
            continue;
        }
        let i = sr as usize * w + sc as usize;
        let p = p3(cloud, i);
        if p == [0.0; 3] || keep[i] == 0 {
            continue;
        }
        let dist = (((plane[0] * p[0] + plane[1] * p[1]) + plane[2] * p[2]) + plane[3]).abs();
        if dist < thr {
            continue;
        }
        r.p2p[q] = r.pix.len() as i32;
        r.pix.push(q as i32);
        r.pts.extend_from_slice(&p);
    }
    r
}

// ---------- the device side ----------

impl Gpu {
    fn poison<T>(&self, s: Slot<T>) {
        self.dev
            .memset_u8(self.p(s).raw(), 0xff, s.bytes())
            .unwrap();
    }
    fn fps(&self) {
        self.fps_as(&self.k, self.k.fps_kernel);
    }
    /// FPS with kernel `kind` of kernel set `k` (outputs poisoned first).
    fn fps_as(&self, k: &PointKernels, kind: FpsKernel) {
        let b = &self.b;
        self.poison(b.c_idx);
        self.poison(b.c_xyz);
        unsafe {
            k.fps_with(
                kind,
                &self.dev,
                self.p(b.pts),
                self.p(b.n),
                self.p(b.work),
                self.p(b.c_idx),
                self.p(b.c_xyz),
            )
            .unwrap()
        };
        self.dev.synchronize().unwrap();
    }
    /// Every (kernel set, FPS kind) this device can run, named.
    fn fps_variants(&self) -> Vec<(String, &PointKernels, FpsKernel)> {
        let mut v = vec![(
            "shared-memory fps".to_string(),
            &self.k,
            FpsKernel::SharedMemory,
        )];
        for k in [Some(&self.k), self.alt.as_ref()].into_iter().flatten() {
            if let Some(g) = k.fps_regs_geometry() {
                for kind in [FpsKernel::RegistersBarrier, FpsKernel::RegistersMbarrier] {
                    v.push((format!("{kind:?} cluster {}", g.cluster), k, kind));
                }
            }
        }
        v
    }
    fn knn_as(&self, kind: KnnKernel) {
        let b = &self.b;
        self.poison(b.g_idx);
        self.poison(b.g_rel);
        unsafe {
            self.k
                .knn_with(
                    kind,
                    &self.dev,
                    self.p(b.pts),
                    self.p(b.n),
                    self.p(b.c_xyz),
                    self.p(b.g_idx),
                    self.p(b.g_rel),
                )
                .unwrap()
        };
        self.dev.synchronize().unwrap();
    }
    fn knn_variants(&self) -> Vec<KnnKernel> {
        [KnnKernel::LaneHeaps, KnnKernel::BoundSelect]
            .into_iter()
            .filter(|&k| self.k.knn_available(k))
            .collect()
    }
    fn encoder(&self) {
        let b = &self.b;
        self.poison(b.tokens);
        let w = b.w.map(|s| self.p(s));
        unsafe {
            self.k
                .encoder(&self.dev, self.p(b.g_rel), w, self.p(b.tokens))
                .unwrap()
        };
        self.dev.synchronize().unwrap();
    }
    fn pfa(&self, f: usize) {
        let b = &self.b;
        self.poison(b.out);
        unsafe {
            self.k
                .nn3(
                    &self.dev,
                    self.p(b.pts),
                    self.p(b.n),
                    self.p(b.c_xyz),
                    self.p(b.nn_idx),
                    self.p(b.nn_w),
                )
                .unwrap();
            self.k
                .project(
                    &self.dev,
                    self.p(b.p2p),
                    self.p(b.nn_idx),
                    self.p(b.nn_w),
                    self.p(b.feat),
                    f as i32,
                    self.p(b.out),
                )
                .unwrap();
        }
        self.dev.synchronize().unwrap();
    }
}

/// Points on an integer lattice (many exact distance ties).
fn lattice_points(n: usize) -> Vec<f32> {
    let side = (n as f64).cbrt().ceil() as usize;
    (0..n)
        .flat_map(|i| {
            [
                (i % side) as f32,
                ((i / side) % side) as f32,
                (i / side / side) as f32,
            ]
        })
        .collect()
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// FPS of every kind against the reference: indices, coordinates, determinism.
fn check_fps(g: &Gpu, what: &str, pts: &[f32]) -> Vec<f32> {
    let m = g.pc.num_groups as usize;
    let want = fps_ref(pts, m);
    let mut first: Option<Vec<f32>> = None;
    for (name, k, kind) in g.fps_variants() {
        g.fps_as(k, kind);
        let got = g.get(g.b.c_idx, m);
        assert_eq!(got, want, "{what}: {name}: FPS indices");
        let xyz = g.get(g.b.c_xyz, 3 * m);
        for (i, &c) in want.iter().enumerate() {
            assert_eq!(
                p3(&xyz, i),
                p3(pts, c as usize),
                "{what}: {name}: center {i} coordinates"
            );
        }
        g.fps_as(k, kind);
        assert_eq!(g.get(g.b.c_idx, m), want, "{what}: {name}: FPS run twice");
        eprintln!("{what}: {name} identical to the reference");
        first.get_or_insert(xyz);
    }
    first.unwrap()
}

/// kNN of every kind for the centers in `c_xyz`: the groups in `check` against the
/// reference, and every kind identical to the first (heap) kernel on all groups.
fn check_knn(g: &Gpu, what: &str, pts: &[f32], check: &[usize]) {
    let m = g.pc.num_groups as usize;
    let k = g.pc.group_size as usize;
    let n = pts.len() / 3;
    let xyz = g.get(g.b.c_xyz, 3 * m);
    let mut first: Option<(Vec<u32>, Vec<f32>)> = None;
    for kind in g.knn_variants() {
        g.knn_as(kind);
        let idx = g.get(g.b.g_idx, m * k);
        let rel = g.get(g.b.g_rel, m * k * 3);
        for &c in check {
            let cp = p3(&xyz, c);
            let want = knn_ref(pts, cp, k.min(n));
            assert_eq!(
                &idx[c * k..c * k + want.len()],
                &want[..],
                "{what}: kNN {kind:?}: group {c}"
            );
            for (t, &j) in want.iter().enumerate() {
                let p = p3(pts, j as usize);
                let r = p3(&rel, c * k + t);
                assert_eq!(
                    r,
                    [p[0] - cp[0], p[1] - cp[1], p[2] - cp[2]],
                    "{what}: kNN {kind:?}: rel {c} {t}"
                );
            }
        }
        g.knn_as(kind);
        assert_eq!(
            g.get(g.b.g_idx, m * k),
            idx,
            "{what}: kNN {kind:?} run twice"
        );
        match &first {
            None => first = Some((idx, rel)),
            Some((i1, r1)) => {
                assert!(
                    idx == *i1,
                    "{what}: kNN {kind:?} indices differ from the first kernel"
                );
                let same = rel.iter().zip(r1).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{what}: kNN {kind:?} coordinates differ from the first kernel"
                );
            }
        }
        eprintln!("{what}: kNN {kind:?} identical to the reference (and to the first kernel)");
    }
}

/// Whether only the small clouds run: under compute-sanitizer (`MIAD_SANITIZE` set) and on
/// the simulated device, where the kernels run in the emulator on the CPU.
fn small_cases(dev: &Device) -> bool {
    std::env::var_os("MIAD_SANITIZE").is_some() || dev.is_simulated()
}

#[test]
fn fps_and_knn_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let m = g.pc.num_groups as usize;
    let mut rng = Rng::new(11);
    let mut cases = vec![
        ("surface 3000", surface_points(&mut rng, 3000)),
        ("lattice 4096 (ties)", lattice_points(4096)),
    ];
    // Under compute-sanitizer (MIAD_SANITIZE set) and on the simulated device (the
    // kernels emulated on the CPU) only the small cases run.
    if !small_cases(&g.dev) {
        cases.push(("lattice 20000 (ties)", lattice_points(20_000)));
        cases.push(("surface 50000", surface_points(&mut rng, 50_000)));
        cases.push(("surface 50176", surface_points(&mut rng, 50_176)));
        cases.push(("scan order 50176", scan_points(50_176)));
    }
    for (what, pts) in cases {
        g.put_points(&pts);
        let xyz = check_fps(&g, what, &pts);
        g.arena.upload(&g.dev, g.b.c_xyz, &xyz).unwrap();
        let sample: Vec<usize> = (0..m).step_by(7).chain([m - 1]).collect();
        check_knn(&g, what, &pts, &sample);
    }
}

/// Inputs off the main path: fewer points than centers or than k, a single point, exact
/// duplicates (select kNN overflow and re-scan), sizes that leave partial warps and blocks,
/// centers that are not points of the cloud.
#[test]
fn fps_and_knn_edge_cases() {
    let Some(g) = gpu() else { return };
    let m = g.pc.num_groups as usize;
    let mut rng = Rng::new(23);
    let small = small_cases(&g.dev);
    let mut fps_cases = vec![
        ("1 point", surface_points(&mut rng, 1)),
        ("100 points (< centers, < k)", surface_points(&mut rng, 100)),
        ("513 points", surface_points(&mut rng, 513)),
        ("2000 identical points", vec![0.25f32; 6000]),
    ];
    if !small {
        fps_cases.push(("40961 points", surface_points(&mut rng, 40_961)));
    }
    for (what, pts) in &fps_cases {
        g.put_points(pts);
        check_fps(&g, what, pts);
    }

    // kNN with centers drawn freely (not points of the cloud) and from the cloud.
    let mut knn_cases: Vec<(&str, Vec<f32>)> = vec![
        ("kNN 100 points (< k)", surface_points(&mut rng, 100)),
        ("kNN 128 points (= k)", surface_points(&mut rng, 128)),
        ("kNN 3000 identical points (overflow)", vec![0.5f32; 9000]),
    ];
    // Duplicated lattice: every point 12 times, so thousands of equal distances.
    let dup: Vec<f32> = lattice_points(1000)
        .chunks(3)
        .flat_map(|p| std::iter::repeat_n([p[0], p[1], p[2]], 12).flatten())
        .collect();
    knn_cases.push(("kNN lattice 1000 x 12 duplicates", dup));
    if !small {
        knn_cases.push((
            "kNN surface 50176, free centers",
            surface_points(&mut rng, 50_176),
        ));
    }
    for (what, pts) in &knn_cases {
        g.put_points(pts);
        let n = pts.len() / 3;
        let mut centers = vec![0f32; 3 * m];
        for (i, c) in centers.chunks_mut(3).enumerate() {
            if i % 2 == 0 {
                c.copy_from_slice(&p3(pts, (i * 7919) % n));
            } else {
                let base = p3(pts, (i * 104_729) % n);
                for (a, b) in c.iter_mut().zip(base) {
                    *a = b + 0.01 * (rng.uniform() - 0.5);
                }
            }
        }
        g.arena.upload(&g.dev, g.b.c_xyz, &centers).unwrap();
        let sample: Vec<usize> = (0..m).step_by(61).chain([1, m - 1]).collect();
        check_knn(&g, what, pts, &sample);
    }
}

#[test]
fn group_encoder_matches_f64() {
    let Some(g) = gpu() else { return };
    let (m, s) = (g.pc.num_groups as usize, g.pc.group_size as usize);
    let d = g.pc.dim as usize;
    let mut rng = Rng::new(5);
    let w = random_weights(&mut rng, &g.pc);
    g.upload_weights(&w);
    let mut rel = vec![0f32; m * s * 3];
    rng.fill_normal(&mut rel, 0.05);
    g.arena.upload(&g.dev, g.b.g_rel, &rel).unwrap();
    g.encoder();
    let out = g.get(g.b.tokens, m * d);
    let mut worst = 0f64;
    for grp in (0..m).step_by(61).chain([m - 1]) {
        let want = encoder_ref(&rel[grp * s * 3..(grp + 1) * s * 3], s, &w);
        let e = rel_err(&out[grp * d..(grp + 1) * d], &want);
        worst = worst.max(e);
        assert!(e < 1e-4, "group {grp}: relative error {e:e}");
    }
    g.encoder();
    assert_eq!(g.get(g.b.tokens, m * d), out, "encoder run twice");
    eprintln!("group encoder: worst relative error {worst:.2e} vs f64");
}

/// The bf16 fast path's encoder (`cuda::stages::group_encoder`: bf16 GEMMs with f32
/// accumulation and the small kernels) against the f64 evaluation: within 1e-2 of each
/// group's largest magnitude (`Precision::Bf16.feature_tolerance()`: bf16 activations
/// between the layers; the simulated device measures 3.5e-3, printed), every group checked
/// on the simulated device; the same bits when run again; in one pass and in several.
#[test]
fn group_encoder_bf16_matches_f64() {
    let Some(g) = gpu() else { return };
    let (m, s) = (g.pc.num_groups as usize, g.pc.group_size as usize);
    let d = g.pc.dim as usize;
    let mut rng = Rng::new(5);
    let w = random_weights(&mut rng, &g.pc);
    let conv: ConvLayers<'_> = [0, 1, 2, 3].map(|i| (&w.w[2 * i][..], &w.w[2 * i + 1][..]));
    let mut rel = vec![0f32; m * s * 3];
    rng.fill_normal(&mut rel, 0.05);
    g.arena.upload(&g.dev, g.b.g_rel, &rel).unwrap();
    let one = EncoderBf16Sizes::new(m, s, w.dims).unwrap();
    // Several passes with a partial last one (9 centers on the simulated device).
    let pass_groups = if g.dev.is_simulated() { 4 } else { 11 };
    let several = EncoderBf16Sizes::with_pass_rows(m, s, w.dims, pass_groups * s).unwrap();
    assert!(one.passes() == 1 || !g.dev.is_simulated());
    assert!(several.passes() > 1);
    let step = if g.dev.is_simulated() { 1 } else { 61 };
    let tol = Precision::Bf16.feature_tolerance() as f64;
    for sizes in [one, several] {
        let enc = DeviceGroupEncoderBf16::new(&g.dev, sizes, &conv).unwrap();
        let run = || {
            g.poison(g.b.tokens);
            unsafe { enc.record(&g.dev, g.p(g.b.g_rel), g.p(g.b.tokens)).unwrap() };
            g.dev.synchronize().unwrap();
            g.get(g.b.tokens, m * d)
        };
        let out = run();
        let mut worst = 0f64;
        for grp in (0..m).step_by(step).chain([m - 1]) {
            let want = encoder_ref(&rel[grp * s * 3..(grp + 1) * s * 3], s, &w);
            let got = &out[grp * d..(grp + 1) * d];
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            let e = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0f64, |a, v| if v.is_nan() { f64::NAN } else { a.max(v) })
                / scale;
            assert!(
                e <= tol,
                "group {grp}: max |Δ| {e:e} of the group's largest value"
            );
            worst = worst.max(e);
        }
        assert_eq!(run(), out, "bf16 encoder run twice");
        eprintln!(
            "bf16 group encoder, {} pass(es) of {} groups: worst max|Δ|/max|ref| {worst:.2e} vs f64",
            sizes.passes(),
            sizes.pass_groups
        );
    }
}

#[test]
fn preprocess_and_alignment_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let m = g.pc.num_groups as usize;
    let mut rng = Rng::new(9);
    let (h, w) = (480usize, 560usize);
    let pad = 600usize;
    let off = ((pad - h) / 2, (pad - w) / 2);
    let mut cloud = vec![0f32; h * w * 3];
    let mut keep = vec![1u8; h * w];
    for r in 0..h {
        for c in 0..w {
            let i = r * w + c;
            if rng.uniform() < 0.1 {
                continue; // hole
            }
            let (x, y) = (c as f32 * 2e-4, r as f32 * 2e-4);
            let z = if rng.uniform() < 0.3 {
                0.3 + 0.003 * rng.uniform()
            } else {
                0.31 + 0.02 * rng.uniform()
            };
            cloud[3 * i..3 * i + 3].copy_from_slice(&[x, y, z]);
            keep[i] = (rng.uniform() > 0.05) as u8;
        }
    }
    let plane = [0.0f32, 0.0, 1.0, -0.3];
    let thr = 0.005f32;
    let b = &g.b;
    g.arena.upload(&g.dev, b.cloud, &cloud).unwrap();
    g.arena.upload(&g.dev, b.keep, &keep).unwrap();
    g.arena.upload(&g.dev, b.plane, &plane).unwrap();
    for s in [b.pts, b.nn_w] {
        g.poison(s);
    }
    g.poison(b.pix);
    g.poison(b.p2p);
    unsafe {
        g.k.preprocess(
            &g.dev,
            g.p(b.cloud),
            (h as i32, w as i32, (3 * w) as i32),
            g.p(b.plane),
            thr,
            g.p(b.keep),
            (pad as i32, off.0 as i32, off.1 as i32),
            g.p(b.pts),
            g.p(b.pix),
            g.p(b.p2p),
            g.p(b.n),
        )
        .unwrap()
    };
    g.dev.synchronize().unwrap();
    let want = preprocess_ref(&cloud, (h, w), plane, thr, &keep, pad, off);
    let n = g.get(b.n, 1)[0] as usize;
    assert_eq!(n, want.pix.len(), "point count");
    assert!(n > m);
    assert_eq!(g.get(b.pix, n), want.pix);
    assert_eq!(g.get(b.p2p, SIDE * SIDE), want.p2p);
    let pts = g.get(b.pts, 3 * n);
    assert_eq!(pts, want.pts);
    eprintln!("preprocess: {n} points, identical to the reference");

    // Alignment of random group features over these points and their FPS centers.
    g.fps();
    let centers = g.get(b.c_xyz, 3 * m);
    let f = 48usize;
    let mut feat = vec![0f32; m * f];
    rng.fill_normal(&mut feat, 1.0);
    g.arena.upload(&g.dev, b.feat, &feat).unwrap();
    g.pfa(f);
    let got = g.get(b.out, GRID * GRID * f);
    let want = pfa_ref(&pts, &want.pix, &centers, &feat, f);
    let e = rel_err(&got, &want);
    assert!(e < 1e-4, "alignment relative error {e:e}");
    g.pfa(f);
    assert_eq!(g.get(b.out, GRID * GRID * f), got, "alignment run twice");
    eprintln!("alignment: relative error {e:.2e} vs f64");
}
