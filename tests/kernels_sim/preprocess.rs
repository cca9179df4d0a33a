//! preprocess.cu's preprocess_cloud_f32 against `pipeline::preprocess` (issue 16, SPEC
//! §1.5–1.6): a point needs three non-zero, finite coordinates, on the device as on the
//! CPU. A square cloud with exact zeros in one coordinate, NaN and infinite pixels,
//! resized to the network side with no plane and no cluster mask: the kernel's points,
//! pixel indices and count equal the CPU's already-clean preprocessing.

use miad::config::PreprocessConfig;
use miad::pipeline::input::CloudView;
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};

use miad::eval::synth::{synth_part, Category, Defect};
use miad::pipeline::input::RgbView;
use miad::pipeline::preprocess::{background_plane, padded_side, ModalityStatus, Unusable};
use miad::util::rng::Rng;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::for_seeds;
use crate::Test;

pub const TESTS: &[Test] = &[
    ("preprocess_cloud_f32_keeps_points_as_the_cpu", keep_rule),
    ("pre_kernels_full_preprocessing_as_the_cpu", full_chain),
    ("pre_kernels_incomplete_parts_as_the_cpu", incomplete_chain),
    ("pre_kernels_already_clean_as_the_cpu", clean_chain),
    ("pre_kernels_tiny_parts_as_the_cpu", tiny_chain),
];

fn keep_rule() -> Result<(), String> {
    let side = 80usize;
    let cfg = PreprocessConfig {
        image_size: 32,
        xyz_grid: 8,
        ..PreprocessConfig::default()
    };
    let s = cfg.image_size as usize;
    let mut cloud = vec![0f32; 3 * side * side];
    for (i, p) in cloud.chunks_exact_mut(3).enumerate() {
        let (r, c) = ((i / side) as f32, (i % side) as f32);
        p.copy_from_slice(&[0.01 + 0.001 * c, 0.02 + 0.001 * r, 0.5 + 0.0001 * (r + c)]);
    }
    for i in (0..side * side).step_by(5) {
        cloud[3 * i + i % 3] = 0.0; // one exact zero coordinate
    }
    for i in (1..side * side).step_by(7) {
        cloud[3 * i + 1] = f32::NAN;
    }
    for i in (2..side * side).step_by(11) {
        cloud[3 * i + 2] = f32::NEG_INFINITY;
    }
    for i in (3..side * side).step_by(13) {
        cloud[3 * i..3 * i + 3].fill(0.0);
    }
    let mut out = PreprocessOutput::new(&cfg);
    let mut scratch = vec![0f32; preprocess_scratch_len(&cfg, side, side)];
    preprocess(
        &cfg,
        None,
        Some(CloudView::packed(&cloud, side, side)),
        PreprocessMode::AlreadyClean,
        &mut out,
        &mut scratch,
    )
    .map_err(|e| e.to_string())?;
    let n = out.n_points;
    if n == 0 || n == s * s {
        return Err(format!(
            "{n} points: the test cloud does not exercise the rule"
        ));
    }
    for_seeds(|seed| {
        let cb = Buf::from(&cloud);
        let pts = Buf::filled(3 * s * s, 0f32);
        let pix = Buf::filled(s * s, -7i32);
        let p2p = Buf::filled(s * s, -7i32);
        let count = Buf::filled(1, -7i32);
        let mut a = Args::new()
            .buf(&cb)
            .val(side as i32)
            .val(side as i32)
            .val(3 * side as i32)
            .val(0usize) // no plane
            .val(0f32)
            .val(0usize) // no keep mask
            .val(side as i32)
            .val(0i32)
            .val(0i32)
            .val(s as i32)
            .buf(&pts)
            .buf(&pix)
            .buf(&p2p)
            .buf(&count);
        sim().launch("preprocess_cloud_f32", &Cfg::new(1, 1024), &mut a, seed)?;
        let got = count.get()[0] as usize;
        if got != n {
            return Err(format!("device kept {got} points, the CPU {n}"));
        }
        if pts.get()[..3 * n] != out.points[..3 * n] {
            return Err("device points differ from the CPU's".into());
        }
        let want: Vec<i32> = out.point_pixels[..n].iter().map(|&p| p as i32).collect();
        if pix.get()[..n] != want[..] {
            return Err("device pixel indices differ from the CPU's".into());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The pre_* kernels (the device preprocessing stage), launched in the stage's order on
// exact-size buffers (AddressSanitizer), each stage's result checked against an
// independent host computation where one exists (load: padded cloud and content flags;
// border: the frame's points; RANSAC: hypothesis draws from util::rng::Rng and the
// choice rule) and the end result against `pipeline::preprocess::preprocess` (points,
// pixels, count, status bits-exact; RGB input bits-exact).

const PRE_BLOCK: u32 = 256;
const PRE_THREADS: u32 = 1024;

/// `PreHeader`: width, height, rgb_stride, cloud_stride, has_rgb, has_cloud, work_w,
/// work_h, top, left, pad, pad.
type Header = [i32; 12];
/// `PreState` (72 bytes) as u64 words: flags in 0..3, best_cluster in 3, plane in 4..9.
type State = [u64; 9];
/// `PrePlane` (40 bytes): n0 n1 n2 d as f64 bits, then count | ok << 32.
type Plane = [u64; 5];

fn blocks(n: usize) -> u32 {
    n.div_ceil(PRE_BLOCK as usize).max(1) as u32
}

fn code(u: Option<Unusable>) -> u32 {
    match u {
        None => 0,
        Some(Unusable::Missing) => 1,
        Some(Unusable::Blank) => 2,
        Some(Unusable::AllZero) => 3,
        Some(Unusable::NonFinite) => 4,
        Some(Unusable::EmptyAfterCleaning) => 5,
        Some(Unusable::TooFewPoints) => 6,
    }
}

fn word(s: ModalityStatus) -> u32 {
    code(s.rgb) | (code(s.cloud) << 8)
}

struct Part<'a> {
    w: usize,
    h: usize,
    /// Values (bytes, floats) from one row to the next, ≥ 3w; the same for both inputs.
    stride: usize,
    rgb: Option<&'a [u8]>,
    cloud: Option<&'a [f32]>,
}

impl<'a> Part<'a> {
    fn packed(w: usize, h: usize, rgb: Option<&'a [u8]>, cloud: Option<&'a [f32]>) -> Self {
        Part {
            w,
            h,
            stride: 3 * w,
            rgb,
            cloud,
        }
    }
    fn rgb_view(&self) -> Option<RgbView<'a>> {
        self.rgb.map(|r| RgbView {
            data: r,
            width: self.w,
            height: self.h,
            stride: self.stride,
        })
    }
    fn cloud_view(&self) -> Option<CloudView<'a>> {
        self.cloud.map(|c| CloudView {
            data: c,
            width: self.w,
            height: self.h,
            stride: self.stride,
        })
    }
}

fn cpu_run(
    cfg: &PreprocessConfig,
    part: &Part<'_>,
    mode: PreprocessMode,
    min_points: usize,
) -> Result<(PreprocessOutput, ModalityStatus), String> {
    let mut out = PreprocessOutput::new(cfg);
    out.min_points = min_points;
    let mut scratch = vec![0f32; preprocess_scratch_len(cfg, part.w, part.h)];
    let st = preprocess(
        cfg,
        part.rgb_view(),
        part.cloud_view(),
        mode,
        &mut out,
        &mut scratch,
    )
    .map_err(|e| e.to_string())?;
    Ok((out, st))
}

fn max_taps(input: usize, out: usize) -> usize {
    let scale = (input as f64 / out as f64).max(1.0);
    (4.0 * scale).ceil() as usize + 3
}

/// Runs the kernel chain on `part` and compares every stage (module comment above).
fn chain(
    cfg: &PreprocessConfig,
    part: &Part<'_>,
    mode: PreprocessMode,
    min_points: usize,
    seed: u64,
) -> Result<ModalityStatus, String> {
    let (w, h) = (part.w, part.h);
    let full = mode == PreprocessMode::Full;
    let (ww, wh) = if full {
        let p = padded_side(cfg, w, h);
        (p, p)
    } else {
        (w, h)
    };
    let (top, left) = ((wh - h) / 2, (ww - w) / 2);
    let s = cfg.image_size as usize;
    let wp = ww * wh;
    let header: Header = [
        w as i32,
        h as i32,
        3 * w as i32,
        3 * w as i32,
        part.rgb.is_some() as i32,
        part.cloud.is_some() as i32,
        ww as i32,
        wh as i32,
        top as i32,
        left as i32,
        0,
        0,
    ];
    let hd = Buf::from(&header);
    let cloud = Buf::from(part.cloud.unwrap_or(&vec![0f32; part.stride * h]));
    let rgb = Buf::from(part.rgb.unwrap_or(&vec![0u8; part.stride * h]));
    let st = Buf::filled(1, [0xdeadu64; 9] as State);
    let wcloud = Buf::filled(3 * wp, f32::NAN);
    let launch = |k: &str, cfgl: Cfg, a: &mut Args| sim().launch(k, &cfgl, a, seed);

    launch("pre_reset", Cfg::new(1, 1), &mut Args::new().buf(&st))?;
    launch(
        "pre_load",
        Cfg::new(blocks(wp), PRE_BLOCK),
        &mut Args::new()
            .buf(&hd)
            .buf(&cloud)
            .buf(&rgb)
            .buf(&wcloud)
            .buf(&st),
    )?;
    // load: the padded cloud with invalid points zeroed, and the content flags.
    let mut want = vec![0f32; 3 * wp];
    let (mut any_valid, mut any_nonfinite, mut differs) = (false, false, false);
    if let Some(c) = part.cloud {
        for r in 0..h {
            for col in 0..w {
                let p = &c[r * part.stride + 3 * col..r * part.stride + 3 * col + 3];
                any_nonfinite |= p.iter().any(|v| !v.is_finite());
                if p.iter().all(|&v| v != 0.0 && v.is_finite()) {
                    any_valid = true;
                    let d = 3 * ((r + top) * ww + col + left);
                    want[d..d + 3].copy_from_slice(p);
                }
            }
        }
    }
    if let Some(im) = part.rgb {
        differs = (0..h).any(|r| {
            im[r * part.stride..r * part.stride + 3 * w]
                .chunks_exact(3)
                .any(|p| p != &im[..3])
        });
    }
    if wcloud.get() != &want[..] {
        return Err("pre_load: working cloud differs".into());
    }
    let stv = st.get()[0];
    let flags = [stv[0] as u32, (stv[0] >> 32) as u32, stv[1] as u32];
    if flags != [any_valid as u32, any_nonfinite as u32, differs as u32] {
        return Err(format!("pre_load: flags {flags:?}"));
    }

    let (labels, sizes) = (Buf::filled(wp, 7u32), Buf::filled(wp, 7u32));
    if full {
        let b = cfg.border as usize;
        // border: the frame's points in raster order.
        let mut frame = Vec::new();
        for r in 0..h {
            for col in 0..w {
                if r < b || col < b || r + b >= h || col + b >= w {
                    let i = (r + top) * ww + col + left;
                    if want[3 * i..3 * i + 3] != [0.0; 3] {
                        frame.push(i as i32);
                    }
                }
            }
        }
        let cap = (2 * b * (w + h)).min(w * h).max(1);
        let border = Buf::filled(cap, -9i32);
        launch(
            "pre_border",
            Cfg::new(1, PRE_THREADS),
            &mut Args::new()
                .buf(&hd)
                .val(b as i32)
                .buf(&wcloud)
                .buf(&border)
                .buf(&st),
        )?;
        let nb = (st.get()[0][1] >> 32) as usize;
        if nb != frame.len() || border.get()[..nb] != frame[..] {
            return Err(format!("pre_border: {nb} points, {} expected", frame.len()));
        }
        let iters = cfg.ransac_iterations as usize;
        let draws = cfg.ransac_points.max(3) as i32;
        let hyps = Buf::filled(iters.max(1), [0u64; 5] as Plane);
        let inliers = Buf::filled(3 * cap, f32::NAN);
        launch(
            "pre_ransac_hyp",
            Cfg::new(iters.max(1) as u32, PRE_BLOCK),
            &mut Args::new()
                .buf(&wcloud)
                .buf(&border)
                .buf(&st)
                .val(cfg.ransac_seed)
                .val(draws)
                .val(cfg.ransac_threshold)
                .buf(&hyps),
        )?;
        // Hypotheses: inlier counts of the device planes recounted on the host (the
        // plane's f64 arithmetic, the CPU's `plane_dist` order); draws as util::rng.
        let mut rng = Rng::new(cfg.ransac_seed);
        let thr = cfg.ransac_threshold as f64;
        let dist = |pl: &Plane, p: &[f32]| {
            let n = [
                f64::from_bits(pl[0]),
                f64::from_bits(pl[1]),
                f64::from_bits(pl[2]),
            ];
            (n[0] * p[0] as f64 + n[1] * p[1] as f64 + n[2] * p[2] as f64 + f64::from_bits(pl[3]))
                .abs()
        };
        let mut best: Option<(usize, u32)> = None;
        for (k, pl) in hyps.get()[..iters].iter().enumerate() {
            let drawn: Vec<usize> = (0..draws)
                .map(|_| rng.below(nb.max(1) as u64) as usize)
                .collect();
            let (count, ok) = (pl[4] as u32, (pl[4] >> 32) as u32);
            if nb >= 3 && ok == 1 {
                // The plane passes near its own sample's centroid.
                let mut c = [0f64; 3];
                for &d in &drawn {
                    for a in 0..3 {
                        c[a] += want[3 * frame[d] as usize + a] as f64;
                    }
                }
                let c: Vec<f32> = c.iter().map(|v| (v / draws as f64) as f32).collect();
                if dist(pl, &c) > 1e-5 {
                    return Err(format!(
                        "pre_ransac_hyp: plane {k} misses its sample's centroid"
                    ));
                }
                let recount = frame
                    .iter()
                    .filter(|&&i| dist(pl, &want[3 * i as usize..3 * i as usize + 3]) < thr)
                    .count() as u32;
                if recount != count {
                    return Err(format!(
                        "pre_ransac_hyp: plane {k} counts {count} inliers, {recount} on the host"
                    ));
                }
                if count > 0 && best.is_none_or(|(_, c)| count > c) {
                    best = Some((k, count));
                }
            } else if count != 0 {
                return Err(format!(
                    "pre_ransac_hyp: plane {k} without a fit has {count} inliers"
                ));
            }
        }
        launch(
            "pre_ransac_refit",
            Cfg::new(1, PRE_THREADS),
            &mut Args::new()
                .buf(&wcloud)
                .buf(&border)
                .buf(&hyps)
                .val(iters as i32)
                .val(cfg.ransac_threshold)
                .buf(&inliers)
                .buf(&st),
        )?;
        let plane = &st.get()[0][4..9];
        let (count, ok) = (plane[4] as u32, (plane[4] >> 32) as u32);
        match best {
            None if ok != 0 => return Err("pre_ransac_refit: a plane without an inlier".into()),
            Some((_, c)) if ok != 1 || count != c => {
                return Err(format!(
                    "pre_ransac_refit: plane of {count} inliers, best has {c}"
                ))
            }
            _ => {}
        }
        // The plane itself: the CPU's bits.
        let want_plane = part.cloud_view().and_then(|c| background_plane(cfg, &c));
        let got_plane = (ok == 1).then(|| {
            let f = |i: usize| f64::from_bits(plane[i]);
            ([f(0), f(1), f(2)], f(3))
        });
        let plane_bits = |p: Option<([f64; 3], f64)>| {
            p.map(|(n, d)| [n[0].to_bits(), n[1].to_bits(), n[2].to_bits(), d.to_bits()])
        };
        if plane_bits(got_plane) != plane_bits(want_plane) {
            return Err(format!(
                "pre_ransac_refit: plane {got_plane:?}, the CPU's {want_plane:?}"
            ));
        }
        let grid = Cfg::new(blocks(wp), PRE_BLOCK);
        launch(
            "pre_plane_remove",
            grid,
            &mut Args::new()
                .buf(&hd)
                .buf(&st)
                .val(cfg.plane_distance)
                .buf(&wcloud)
                .buf(&labels)
                .buf(&sizes),
        )?;
        launch(
            "pre_cluster_merge",
            grid,
            &mut Args::new()
                .buf(&hd)
                .buf(&wcloud)
                .val(cfg.cluster_eps * cfg.cluster_eps)
                .buf(&labels),
        )?;
        launch(
            "pre_cluster_resolve",
            grid,
            &mut Args::new().buf(&hd).buf(&labels).buf(&sizes),
        )?;
        // resolve: every label is the smallest pixel of a component, sizes sum to the points.
        let pts_left = wcloud
            .get()
            .chunks_exact(3)
            .filter(|p| p != &[0.0; 3])
            .count() as u64;
        let total: u64 = sizes.get().iter().map(|&v| v as u64).sum();
        if total != pts_left {
            return Err(format!(
                "pre_cluster_resolve: sizes sum to {total}, {pts_left} points"
            ));
        }
        if labels
            .get()
            .iter()
            .enumerate()
            .any(|(i, &l)| l != u32::MAX && (l as usize > i || labels.get()[l as usize] != l))
        {
            return Err("pre_cluster_resolve: a label is not its component's first pixel".into());
        }
        launch(
            "pre_cluster_best",
            grid,
            &mut Args::new().buf(&hd).buf(&sizes).buf(&st),
        )?;
        launch(
            "pre_cluster_keep",
            grid,
            &mut Args::new()
                .buf(&hd)
                .buf(&labels)
                .val(cfg.cluster_min_points as i32)
                .buf(&wcloud)
                .buf(&st),
        )?;
    }
    let taps = max_taps(ww.max(wh), s);
    let (fx, wx) = (Buf::filled(s, -1i32), Buf::filled(s * taps, f32::NAN));
    let (fy, wy) = (Buf::filled(s, -1i32), Buf::filled(s * taps, f32::NAN));
    let tmp = Buf::filled(3 * wh * s, f32::NAN);
    let rgb_in = Buf::filled(3 * s * s, f32::NAN);
    launch(
        "pre_rgb_coeffs",
        Cfg {
            grid: [blocks(s), 2, 1],
            ..Cfg::new(1, PRE_BLOCK)
        },
        &mut Args::new()
            .buf(&hd)
            .val(s as i32)
            .val(taps as i32)
            .buf(&fx)
            .buf(&wx)
            .buf(&fy)
            .buf(&wy),
    )?;
    launch(
        "pre_rgb_h",
        Cfg::new(blocks(wh * s), PRE_BLOCK),
        &mut Args::new()
            .buf(&hd)
            .buf(&rgb)
            .buf(&cloud)
            .buf(&wcloud)
            .buf(&st)
            .val(full as i32)
            .val(s as i32)
            .val(taps as i32)
            .buf(&fx)
            .buf(&wx)
            .buf(&tmp),
    )?;
    let [m0, m1, m2] = cfg.rgb_mean;
    let [s0, s1, s2] = cfg.rgb_std;
    launch(
        "pre_rgb_v",
        Cfg::new(blocks(s * s), PRE_BLOCK),
        &mut Args::new()
            .buf(&hd)
            .buf(&tmp)
            .val(s as i32)
            .val(taps as i32)
            .buf(&fy)
            .buf(&wy)
            .val(m0)
            .val(m1)
            .val(m2)
            .val(s0)
            .val(s1)
            .val(s2)
            .buf(&rgb_in),
    )?;
    let pts = Buf::filled(3 * s * s, f32::NAN);
    let pix = Buf::filled(s * s, -9i32);
    let map = Buf::filled(s * s, -9i32);
    let count = Buf::filled(1, -9i32);
    let status = Buf::filled(1, 0xdeadu32);
    launch(
        "pre_compact",
        Cfg::new(1, PRE_THREADS),
        &mut Args::new()
            .buf(&hd)
            .buf(&wcloud)
            .buf(&st)
            .val(s as i32)
            .val(min_points as i32)
            .buf(&pts)
            .buf(&pix)
            .buf(&map)
            .buf(&count)
            .buf(&status),
    )?;

    let (cpu, want_status) = cpu_run(cfg, part, mode, min_points)?;
    if status.get()[0] != word(want_status) {
        return Err(format!(
            "status word {:#x}, the CPU's {:#x}",
            status.get()[0],
            word(want_status)
        ));
    }
    let n = cpu.n_points;
    if count.get()[0] != n as i32 {
        return Err(format!("{} points, the CPU {n}", count.get()[0]));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(&pts.get()[..3 * n]) != bits(&cpu.points[..3 * n]) {
        return Err("points differ from the CPU's".into());
    }
    let want_pix: Vec<i32> = cpu.point_pixels[..n].iter().map(|&p| p as i32).collect();
    if pix.get()[..n] != want_pix[..] {
        return Err("pixel indices differ from the CPU's".into());
    }
    let mut want_map = vec![-1i32; s * s];
    for (i, &q) in want_pix.iter().enumerate() {
        want_map[q as usize] = i as i32;
    }
    if map.get() != &want_map[..] {
        return Err("pixel map differs".into());
    }
    if bits(rgb_in.get()) != bits(&cpu.rgb_input) {
        let d = rgb_in
            .get()
            .iter()
            .zip(&cpu.rgb_input)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        return Err(format!("RGB input differs from the CPU's (max |Δ| {d})"));
    }
    Ok(want_status)
}

fn small_cfg() -> PreprocessConfig {
    PreprocessConfig {
        image_size: 32,
        xyz_grid: 8,
        ransac_iterations: 12,
        ..PreprocessConfig::default()
    }
}

fn full_chain() -> Result<(), String> {
    let cfg = small_cfg();
    for_seeds(|seed| {
        for (cat, defect, size) in [
            (Category::Torus, Some(Defect::Bump), 64usize),
            (Category::Block, None, 48),
        ] {
            let p = synth_part(cat, defect, size, seed).map_err(|e| e.to_string())?;
            let part = Part {
                w: size,
                h: size,
                stride: 3 * size,
                rgb: Some(&p.rgb),
                cloud: Some(&p.xyz),
            };
            let st = chain(&cfg, &part, PreprocessMode::Full, 1, seed)?;
            if !st.cloud_usable() || !st.rgb_usable() {
                return Err(format!(
                    "{cat:?}: status {st:?}: the part does not exercise the cleaning"
                ));
            }
        }
        Ok(())
    })
}

fn incomplete_chain() -> Result<(), String> {
    let cfg = small_cfg();
    let size = 40;
    let p = synth_part(Category::Disc, None, size, 9).map_err(|e| e.to_string())?;
    let mut nans = vec![0f32; 3 * size * size];
    nans.iter_mut().step_by(4).for_each(|v| *v = f32::NAN);
    let blank = vec![9u8; 3 * size * size];
    let cases: [(&str, Part, usize, ModalityStatus); 4] = [
        (
            "no RGB",
            Part {
                w: size,
                h: size,
                stride: 3 * size,
                rgb: None,
                cloud: Some(&p.xyz),
            },
            1,
            ModalityStatus {
                rgb: Some(Unusable::Missing),
                cloud: None,
            },
        ),
        (
            "NaN cloud, blank image",
            Part {
                w: size,
                h: size,
                stride: 3 * size,
                rgb: Some(&blank),
                cloud: Some(&nans),
            },
            1,
            ModalityStatus {
                rgb: Some(Unusable::Blank),
                cloud: Some(Unusable::NonFinite),
            },
        ),
        (
            "no cloud",
            Part {
                w: size,
                h: size,
                stride: 3 * size,
                rgb: Some(&p.rgb),
                cloud: None,
            },
            1,
            ModalityStatus {
                rgb: None,
                cloud: Some(Unusable::Missing),
            },
        ),
        (
            "too few points",
            Part {
                w: size,
                h: size,
                stride: 3 * size,
                rgb: Some(&p.rgb),
                cloud: Some(&p.xyz),
            },
            1 << 20,
            ModalityStatus {
                rgb: None,
                cloud: Some(Unusable::TooFewPoints),
            },
        ),
    ];
    for_seeds(|seed| {
        for (what, part, min_points, want) in &cases {
            let got = chain(&cfg, part, PreprocessMode::Full, *min_points, seed)
                .map_err(|e| format!("{what}: {e}"))?;
            if got != *want {
                return Err(format!(
                    "{what}: the CPU says {got:?}, the test expects {want:?}"
                ));
            }
        }
        Ok(())
    })
}

fn clean_chain() -> Result<(), String> {
    let cfg = small_cfg();
    let (w, h) = (48, 40);
    let p = synth_part(Category::Disc, Some(Defect::Hole), 48, 2).map_err(|e| e.to_string())?;
    // A non-square part: the synthetic one's first 40 rows.
    let part = Part::packed(w, h, Some(&p.rgb[..3 * w * h]), Some(&p.xyz[..3 * w * h]));
    for_seeds(|seed| chain(&cfg, &part, PreprocessMode::AlreadyClean, 1, seed).map(|_| ()))
}

/// Parts smaller than the border frame (every pixel is a frame pixel) and a one-row part:
/// a tilted plane with a raised block in the middle.
fn tiny_chain() -> Result<(), String> {
    let cfg = PreprocessConfig {
        cluster_min_points: 4,
        ..small_cfg()
    };
    for_seeds(|seed| {
        for (w, h) in [(12usize, 9usize), (25, 1), (30, 24)] {
            let mut xyz = vec![0f32; 3 * w * h];
            let mut rgb = vec![0u8; 3 * w * h];
            for r in 0..h {
                for c in 0..w {
                    let i = 3 * (r * w + c);
                    let raised =
                        (w / 3..2 * w / 3).contains(&c) && (h / 3..=2 * h / 3).contains(&r);
                    let z = 0.5 + 0.0005 * c as f32 + if raised { 0.02 } else { 0.0 };
                    xyz[i..i + 3].copy_from_slice(&[
                        0.001 * (c as f32 + 1.0),
                        0.001 * (r as f32 + 1.0),
                        z,
                    ]);
                    rgb[i..i + 3].copy_from_slice(&[
                        (7 * c) as u8,
                        (11 * r) as u8,
                        (seed * 40) as u8,
                    ]);
                }
            }
            let part = Part::packed(w, h, Some(&rgb), Some(&xyz));
            chain(&cfg, &part, PreprocessMode::Full, 1, seed)
                .map_err(|e| format!("{w}×{h}: {e}"))?;
        }
        Ok(())
    })
}
