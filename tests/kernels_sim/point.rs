//! The point-branch kernels around FPS and kNN, launched as runtime/cuda/ops/ does
//! (preprocess.rs, pfa.rs, group_encoder.rs):
//!
//! * preprocess_cloud_f32 (kernels/preprocess.cu) against the CPU preprocessing's rules
//!   (`pipeline::preprocess::{is_valid_point, nearest_src}`: SPEC §1.5–1.6, a point needs
//!   three non-zero finite coordinates) with the device's f32 plane distance: points,
//!   pixels, pixel → point map and count identical;
//! * pfa_nn3_f32 (kernels/pfa.cu) against a brute-force (distance, index) sort with the
//!   CPU's weights (`cpu::pfa`'s 1/(d + 1e-8), normalised): indices identical, weights
//!   bit-identical; pfa_project_f32 against `cpu::pfa::point_feature_align`, within 1e-6
//!   of the output's largest magnitude (fused multiply-adds in another order than the
//!   CPU's merge; the emulator shows 4e-7; the GPU test allows 1e-4 against f64);
//! * group_encoder_f32 (kernels/group_encoder.cu) against an f64 evaluation of the
//!   Point-MAE group encoder (SPEC §3.3), within 2e-6 of each group's largest magnitude
//!   (f32 fused multiply-adds; the emulator shows 5e-7; the GPU test allows 1e-4). The
//!   CPU encoder is private to `cpu::point_mae::point_mae_forward`;
//! * the bf16 fast path's kernels around its GEMMs (kernels/group_encoder.cu,
//!   runtime/cuda/ops/group_encoder.rs): group_conv1_bf16 (the f32 fma chain rounded to
//!   bf16), group_max_bf16, group_max_bias_f32 and group_bias_relu_bf16, each equal to a
//!   CPU evaluation value for value (maxima are exact; the rest one f32 rounding then one
//!   bf16 rounding, in the same order).

use miad::config::PreprocessConfig;
use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
use miad::cpu::point_kdtree::sq_dist;
use miad::cpu::pool::Pool;
use miad::pipeline::preprocess::{is_valid_point, nearest_src};

use half::bf16;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same, same_bits, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("preprocess_cloud_f32_matches_cpu_rules", preprocess),
    ("pfa_nn3_f32_matches_cpu", nn3),
    ("pfa_project_f32_matches_cpu", project),
    ("group_encoder_f32_matches_f64", encoder),
    (
        "group_encoder_bf16_kernels_match_the_cpu",
        encoder_bf16_kernels,
    ),
];

// runtime/cuda/ops/preprocess.rs and group_encoder.rs
const PRE_THREADS: u32 = 1024;
const ENC_THREADS: u32 = 256;

// ---------- preprocess ----------

/// A cloud of h × w pixels (row stride `stride` floats) with everything the validity rule
/// must reject: all-zero points, one or two zero coordinates, −0, NaN and infinities.
fn cloud(g: &mut Gen, h: usize, w: usize, stride: usize) -> Vec<f32> {
    let mut c = vec![f32::NAN; h * stride];
    for r in 0..h {
        for x in 0..w {
            let mut p = [g.range(-1.0, 1.0), g.range(-1.0, 1.0), 0.3 + 0.02 * g.f32()];
            match g.below(20) {
                0 => p = [0.0; 3],
                1 => p[g.below(3)] = 0.0,
                2 => p[g.below(3)] = -0.0,
                3 => {
                    p[g.below(3)] = 0.0;
                    p[g.below(3)] = 0.0;
                }
                4 => p[g.below(3)] = f32::NAN,
                5 => p[g.below(3)] = f32::INFINITY,
                6 => p[g.below(3)] = f32::NEG_INFINITY,
                7 => p = [f32::NAN; 3],
                8 => p[2] = 0.3, // on the plane below
                _ => {}
            }
            c[r * stride + 3 * x..r * stride + 3 * x + 3].copy_from_slice(&p);
        }
    }
    c
}

struct PreCase<'a> {
    cloud: &'a [f32],
    h: usize,
    w: usize,
    stride: usize,
    plane: Option<[f32; 4]>,
    plane_dist: f32,
    keep: Option<&'a [u8]>,
    pad: usize,
    off: (usize, usize),
    side: usize,
}

fn pre_ref(c: &PreCase) -> (Vec<f32>, Vec<i32>, Vec<i32>) {
    let (mut pts, mut pix, mut p2p) = (vec![], vec![], vec![-1; c.side * c.side]);
    for (q, slot) in p2p.iter_mut().enumerate() {
        let sr = nearest_src(q / c.side, c.pad, c.side) as i64 - c.off.0 as i64;
        let sc = nearest_src(q % c.side, c.pad, c.side) as i64 - c.off.1 as i64;
        if sr < 0 || sc < 0 || sr >= c.h as i64 || sc >= c.w as i64 {
            continue;
        }
        let (sr, sc) = (sr as usize, sc as usize);
        let p = &c.cloud[sr * c.stride + 3 * sc..sr * c.stride + 3 * sc + 3];
        if !is_valid_point(p) || c.keep.is_some_and(|k| k[sr * c.w + sc] == 0) {
            continue;
        }
        if let Some([a, b, cc, d]) = c.plane {
            if (((a * p[0] + b * p[1]) + cc * p[2]) + d).abs() < c.plane_dist {
                continue;
            }
        }
        *slot = pix.len() as i32;
        pix.push(q as i32);
        pts.extend_from_slice(p);
    }
    (pts, pix, p2p)
}

fn run_pre(c: &PreCase, seed: u64) -> Result<(), String> {
    let n = c.side * c.side;
    let cb = Buf::from(c.cloud);
    let plane = c.plane.map(|p| Buf::from(&p));
    let keep = c.keep.map(Buf::from);
    let null = std::ptr::null_mut::<std::ffi::c_void>();
    let pts = Buf::filled(3 * n, f32::NAN);
    let pix = Buf::filled(n, -7i32);
    let p2p = Buf::filled(n, -7i32);
    let count = Buf::filled(1, -7i32);
    let mut a = Args::new()
        .buf(&cb)
        .val(c.h as i32)
        .val(c.w as i32)
        .val(c.stride as i32)
        .val(plane.as_ref().map_or(null, |b| b.ptr()))
        .val(c.plane_dist)
        .val(keep.as_ref().map_or(null, |b| b.ptr()))
        .val(c.pad as i32)
        .val(c.off.0 as i32)
        .val(c.off.1 as i32)
        .val(c.side as i32)
        .buf(&pts)
        .buf(&pix)
        .buf(&p2p)
        .buf(&count);
    sim().launch(
        "preprocess_cloud_f32",
        &Cfg::new(1, PRE_THREADS),
        &mut a,
        seed,
    )?;
    let (wp, wi, wm) = pre_ref(c);
    let k = wi.len();
    same("count", count.get(), &[k as i32])?;
    same("pixel → point", p2p.get(), &wm)?;
    same("pixels", &pix.get()[..k], &wi)?;
    same_bits("points", &pts.get()[..3 * k], &wp)
}

fn preprocess() -> Result<(), String> {
    for_seeds(|seed| {
        let mut g = Gen::new(seed + 300);
        // A portrait cloud padded to a square (column offset), rows with extra stride,
        // resized down to 224 (50 176 outputs: 49 per thread, ragged last threads).
        let (h, w, stride) = (300usize, 220usize, 3 * 220 + 5);
        let c = cloud(&mut g, h, w, stride);
        let keep: Vec<u8> = (0..h * w).map(|_| (g.below(10) > 0) as u8).collect();
        let base = PreCase {
            cloud: &c,
            h,
            w,
            stride,
            plane: Some([0.0, 0.0, 1.0, -0.3]),
            plane_dist: 0.005,
            keep: Some(&keep),
            pad: 300,
            off: (0, 40),
            side: 224,
        };
        run_pre(&base, seed).map_err(|e| format!("300×220 → 224: {e}"))?;
        // No plane, no keep mask (null pointers); a tilted plane with the mask.
        let bare = PreCase {
            plane: None,
            keep: None,
            ..base
        };
        run_pre(&bare, seed).map_err(|e| format!("no plane, no mask: {e}"))?;
        let tilted = PreCase {
            plane: Some([0.3, -0.2, 0.9, -0.25]),
            plane_dist: 0.05,
            ..base
        };
        run_pre(&tilted, seed).map_err(|e| format!("tilted plane: {e}"))?;
        // A landscape cloud resized up (outputs repeat source pixels), fewer outputs than
        // threads, and a side equal to the padded side (scale 1).
        let (h, w) = (15usize, 20usize);
        let c = cloud(&mut g, h, w, 3 * w);
        for (side, pad) in [(50usize, 20usize), (31, 20), (20, 20)] {
            let up = PreCase {
                cloud: &c,
                h,
                w,
                stride: 3 * w,
                plane: None,
                plane_dist: 0.0,
                keep: None,
                pad,
                off: (2, 0),
                side,
            };
            run_pre(&up, seed).map_err(|e| format!("15×20 → {side}: {e}"))?;
        }
        Ok(())
    })
}

// ---------- pfa ----------

/// Centers: random, or on a lattice with points on it too (distance ties).
fn pfa_inputs(g: &mut Gen, n: usize, m: usize, lattice: bool) -> (Vec<f32>, Vec<f32>) {
    if lattice {
        let c: Vec<f32> = (0..m)
            .flat_map(|i| [(i % 4) as f32, ((i / 4) % 4) as f32, (i / 16) as f32])
            .collect();
        let p: Vec<f32> = (0..n)
            .flat_map(|_| {
                [
                    g.below(9) as f32 * 0.5 - 0.5,
                    g.below(9) as f32 * 0.5 - 0.5,
                    g.below(9) as f32 * 0.5 - 0.5,
                ]
            })
            .collect();
        (p, c)
    } else {
        (g.vec(3 * n, -1.0, 1.0), g.vec(3 * m, -1.0, 1.0))
    }
}

/// The CPU's 3-NN (brute force by (distance, index)) and weights.
fn nn3_ref(pts: &[f32], centers: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let m = centers.len() / 3;
    let nn = m.min(3);
    let p3 = |v: &[f32], i: usize| [v[3 * i], v[3 * i + 1], v[3 * i + 2]];
    let (mut idx, mut wts) = (vec![], vec![]);
    for j in 0..pts.len() / 3 {
        let q = p3(pts, j);
        let mut d: Vec<(f32, usize)> = (0..m).map(|c| (sq_dist(q, p3(centers, c)), c)).collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut w = [0f32; 3];
        let mut sum = 0f32;
        for k in 0..nn {
            w[k] = 1.0 / (d[k].0 + 1e-8);
            sum += w[k];
        }
        for k in 0..3 {
            idx.push(if k < nn { d[k].1 as i32 } else { 0 });
            wts.push(if k < nn { w[k] / sum } else { 0.0 });
        }
    }
    (idx, wts)
}

/// pfa_nn3_f32 over `max_points` slots (the plan's size) for the first n points.
fn run_nn3(
    pts: &[f32],
    max_points: usize,
    centers: &[f32],
    seed: u64,
) -> Result<(Buf<i32>, Buf<f32>), String> {
    let n = pts.len() / 3;
    let m = centers.len() / 3;
    let mut padded = pts.to_vec();
    padded.resize(3 * max_points, f32::NAN);
    let (pb, nb, cb) = (
        Buf::from(&padded),
        Buf::from(&[n as i32]),
        Buf::from(centers),
    );
    let idx = Buf::filled(3 * max_points, -7i32);
    let w = Buf::filled(3 * max_points, f32::NAN);
    let mut a = Args::new()
        .buf(&pb)
        .buf(&nb)
        .buf(&cb)
        .val(m as i32)
        .buf(&idx)
        .buf(&w);
    let cfg = Cfg::new(max_points.div_ceil(256) as u32, 256).smem((12 * m) as u32);
    sim().launch("pfa_nn3_f32", &cfg, &mut a, seed)?;
    Ok((idx, w))
}

fn nn3() -> Result<(), String> {
    for_seeds(|seed| {
        let mut g = Gen::new(seed + 400);
        // n not a multiple of the block, m not of anything; lattice ties; 1 and 2 centers.
        for (n, max, m, lattice) in [
            (1000usize, 1100usize, 77usize, false),
            (700, 700, 64, true),
            (300, 513, 2, false),
            (40, 64, 1, false),
        ] {
            let (pts, centers) = pfa_inputs(&mut g, n, m, lattice);
            let (idx, w) = run_nn3(&pts, max, &centers, seed)?;
            let (wi, ww) = nn3_ref(&pts, &centers);
            let what = format!("n {n} m {m} lattice {lattice}");
            same(&format!("{what}: indices"), &idx.get()[..3 * n], &wi)?;
            same_bits(&format!("{what}: weights"), &w.get()[..3 * n], &ww)?;
        }
        Ok(())
    })
}

fn project() -> Result<(), String> {
    let pool = Pool::new(1);
    // (side, grid, points, centers, features): M3DM's 224 → 56 (field 7), a ragged 37 → 5
    // (field 10, uneven bins) with more channels than threads and only 2 centers.
    for (i, (side, grid, n, m, f)) in [
        (224usize, 56usize, 9000usize, 96usize, 40usize),
        (37, 5, 700, 2, 300),
        (40, 38, 1200, 33, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = crate::util::SEEDS[i % 3];
        let mut g = Gen::new(seed + 500 + i as u64);
        let (pts, centers) = pfa_inputs(&mut g, n, m, false);
        // Points at distinct random pixels, in pixel order as preprocessing leaves them.
        let mut pix: Vec<u32> = (0..(side * side) as u32).collect();
        for k in 0..n {
            let j = k + g.below(pix.len() - k);
            pix.swap(k, j);
        }
        pix.truncate(n);
        pix.sort_unstable();
        let mut p2p = vec![-1i32; side * side];
        for (k, &q) in pix.iter().enumerate() {
            p2p[q as usize] = k as i32;
        }
        let feat: Vec<f32> = (0..m * f).map(|_| g.normal()).collect();
        let (idx, w) = run_nn3(&pts, side * side, &centers, seed)?;
        let field = (side - 2).div_ceil(grid) + 3;
        let (pb, fb) = (Buf::from(&p2p), Buf::from(&feat));
        let out = Buf::filled(grid * grid * f, f32::NAN);
        let mut a = Args::new()
            .buf(&pb)
            .buf(&idx)
            .buf(&w)
            .buf(&fb)
            .val(f as i32)
            .val(side as i32)
            .val(grid as i32)
            .val(field as i32)
            .buf(&out);
        let cfg = Cfg::new((grid * grid) as u32, 256).smem((3 * field * field * 8) as u32);
        sim().launch("pfa_project_f32", &cfg, &mut a, seed)?;
        let pre = PreprocessConfig {
            image_size: side as u32,
            xyz_grid: grid as u32,
            ..PreprocessConfig::default()
        };
        let mut want = vec![0f32; grid * grid * f];
        let mut scratch = vec![0f32; pfa_scratch_len(&pre, m, n, pool.threads())];
        point_feature_align(
            &pool,
            &pre,
            &pts,
            n,
            &pix,
            &centers,
            &feat,
            f,
            &mut want,
            &mut scratch,
        );
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        close(
            &format!("side {side} grid {grid} f {f}, seed {seed}"),
            out.get(),
            &want,
            1e-6 * scale,
            0.0,
        )?;
    }
    Ok(())
}

// ---------- group encoder ----------

/// f64 group encoder of one group; weights in PyTorch layout [out][in].
fn encoder_ref(rel: &[f32], s: usize, dims: [usize; 4], w: &[Vec<f32>]) -> Vec<f64> {
    let [c1, c2, c3, d] = dims;
    let lin = |x: &[f64], wt: &[f32], b: &[f32], o: usize, i: usize| -> Vec<f64> {
        (0..o)
            .map(|r| b[r] as f64 + (0..i).map(|k| wt[r * i + k] as f64 * x[k]).sum::<f64>())
            .collect()
    };
    let mut f = vec![];
    for p in 0..s {
        let x: Vec<f64> = rel[3 * p..3 * p + 3].iter().map(|&v| v as f64).collect();
        let h: Vec<f64> = lin(&x, &w[0], &w[1], c1, 3)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        f.push(lin(&h, &w[2], &w[3], c2, c1));
    }
    let g: Vec<f64> = (0..c2)
        .map(|o| f.iter().map(|r| r[o]).fold(f64::MIN, f64::max))
        .collect();
    let mut out = vec![f64::MIN; d];
    for fp in &f {
        let cat: Vec<f64> = g.iter().chain(fp.iter()).copied().collect();
        let h: Vec<f64> = lin(&cat, &w[4], &w[5], c3, 2 * c2)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        for (a, b) in out.iter_mut().zip(lin(&h, &w[6], &w[7], d, c3)) {
            *a = a.max(b);
        }
    }
    out
}

fn transpose(w: &[f32], o: usize, i: usize) -> Vec<f32> {
    let mut t = vec![0f32; o * i];
    for r in 0..o {
        for k in 0..i {
            t[k * o + r] = w[r * i + k];
        }
    }
    t
}

fn run_encoder(
    groups: usize,
    s: usize,
    dims: [usize; 4],
    seed: u64,
    tol: f64,
) -> Result<(), String> {
    let [c1, c2, c3, d] = dims;
    // PointPlan::new: the chunk is the largest of 32, 16, 8 dividing the group size.
    let pc = [32, 16, 8]
        .into_iter()
        .find(|&c| s.is_multiple_of(c))
        .unwrap();
    let mut g = Gen::new(seed + 600);
    let mut w = vec![];
    for (o, i) in [(c1, 3), (c2, c1), (c3, 2 * c2), (d, c3)] {
        let sc = (3.0 / i as f32).sqrt();
        w.push((0..o * i).map(|_| sc * g.normal()).collect::<Vec<f32>>());
        w.push((0..o).map(|_| 0.1 * g.normal()).collect::<Vec<f32>>());
    }
    let rel: Vec<f32> = (0..groups * s * 3).map(|_| 0.1 * g.normal()).collect();
    let shapes = [(c1, 3), (c2, c1), (c3, 2 * c2), (d, c3)];
    let bufs: Vec<Buf<f32>> = (0..8)
        .map(|k| {
            if k % 2 == 0 {
                let (o, i) = shapes[k / 2];
                Buf::from(&transpose(&w[k], o, i))
            } else {
                Buf::from(&w[k])
            }
        })
        .collect();
    let rb = Buf::from(&rel);
    let out = Buf::filled(groups * d, f32::NAN);
    let mut a = Args::new()
        .buf(&rb)
        .val(s as i32)
        .val(c1 as i32)
        .val(c2 as i32)
        .val(c3 as i32)
        .val(d as i32)
        .val(pc as i32);
    for b in &bufs {
        a = a.buf(b);
    }
    let mut a = a.buf(&out);
    let smem = ((c1 * s).max(c3 * pc) + c2 * s + c2 + c3 + (pc / 8) * d + d) * 4;
    let cfg = Cfg::new(groups as u32, ENC_THREADS).smem(smem as u32);
    sim().launch("group_encoder_f32", &cfg, &mut a, seed)?;
    for grp in 0..groups {
        let want = encoder_ref(&rel[grp * s * 3..(grp + 1) * s * 3], s, dims, &w);
        let got = &out.get()[grp * d..(grp + 1) * d];
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let e = (a as f64 - b).abs() / scale;
            if e.is_nan() || e > tol {
                return Err(format!(
                    "group {grp} channel {k}: {a} vs {b} (relative to the scale {e:.2e})"
                ));
            }
        }
    }
    Ok(())
}

fn encoder() -> Result<(), String> {
    // Small widths, many groups, each chunk size (s 40: 8, 48: 16, 96: 32); then M3DM's
    // widths (128, 256, 512 → 384, s 128: 207 KiB of shared memory) on a few groups.
    for_seeds(|seed| {
        for (groups, s, dims) in [
            (9usize, 40usize, [16usize, 24usize, 32usize, 40usize]),
            (5, 48, [8, 32, 16, 24]),
            (3, 96, [24, 16, 40, 8]),
        ] {
            run_encoder(groups, s, dims, seed, 2e-6)
                .map_err(|e| format!("s {s} widths {dims:?}: {e}"))?;
        }
        Ok(())
    })?;
    run_encoder(2, 128, [128, 256, 512, 384], 1, 2e-6).map_err(|e| format!("M3DM widths: {e}"))?;
    Ok(())
}

// ---------- the bf16 fast path's small kernels ----------

const EW_THREADS: u32 = 256;

fn per_value(n: usize) -> Cfg {
    Cfg::new(n.div_ceil(EW_THREADS as usize) as u32, EW_THREADS)
}

fn to_bf16(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

fn of_bf16(b: u16) -> f32 {
    bf16::from_bits(b).to_f32()
}

/// Equal as numbers (a ReLU or max of zeros of either sign may give either zero).
fn same_values(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, {} expected",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: value {i}: {} vs {}", got[i], want[i])),
    }
}

fn encoder_bf16_kernels() -> Result<(), String> {
    for_seeds(|seed| {
        // Sizes whose value counts are not multiples of the block (partial last block).
        for (groups, s, c) in [(5usize, 7usize, 24usize), (3, 32, 40), (1, 1, 8)] {
            let mut g = Gen::new(seed + 700);
            let rows = groups * s;
            let (gi, si, ci, ri) = (groups as i32, s as i32, c as i32, rows as i32);

            // conv1: rel (rows × 3) → h1 (rows × c), w1t [3][c].
            let rel: Vec<f32> = (0..3 * rows).map(|_| 0.1 * g.normal()).collect();
            let w1t: Vec<f32> = (0..3 * c).map(|_| g.normal()).collect();
            let b1: Vec<f32> = (0..c).map(|_| 0.1 * g.normal()).collect();
            let want: Vec<f32> = (0..rows * c)
                .map(|i| {
                    let (r, o) = (i / c, i % c);
                    let x = &rel[3 * r..3 * r + 3];
                    let v = w1t[o].mul_add(x[0], b1[o]);
                    let v = w1t[c + o].mul_add(x[1], v);
                    let v = w1t[2 * c + o].mul_add(x[2], v);
                    of_bf16(to_bf16(v.max(0.0)))
                })
                .collect();
            let (rb, wb, bb) = (Buf::from(&rel), Buf::from(&w1t), Buf::from(&b1));
            let hb = Buf::filled(rows * c, 0xffffu16);
            let mut a = Args::new()
                .buf(&rb)
                .val(ri)
                .val(ci)
                .buf(&wb)
                .buf(&bb)
                .buf(&hb);
            sim().launch("group_conv1_bf16", &per_value(rows * c), &mut a, seed)?;
            let got: Vec<f32> = hb.get().iter().map(|&b| of_bf16(b)).collect();
            same_values("group_conv1_bf16", &got, &want)?;
            if rows * c >= 64 && (!want.iter().any(|&v| v > 0.0) || !want.contains(&0.0)) {
                return Err("conv1 test data: no positive or no clipped value".into());
            }

            // Maxima over each group's rows of bf16 values (negative ones included).
            let x: Vec<u16> = (0..rows * c).map(|_| to_bf16(g.normal())).collect();
            let bias: Vec<f32> = (0..c).map(|_| g.normal()).collect();
            let gmax: Vec<f32> = (0..groups * c)
                .map(|i| {
                    let (grp, o) = (i / c, i % c);
                    (0..s)
                        .map(|p| of_bf16(x[(grp * s + p) * c + o]))
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .collect();
            let xb = Buf::from(&x);
            let mb = Buf::filled(groups * c, 0xffffu16);
            let mut a = Args::new().buf(&xb).val(gi).val(si).val(ci).buf(&mb);
            sim().launch("group_max_bf16", &per_value(groups * c), &mut a, seed)?;
            let got: Vec<f32> = mb.get().iter().map(|&b| of_bf16(b)).collect();
            same_values("group_max_bf16", &got, &gmax)?;
            let (biasb, ob) = (Buf::from(&bias), Buf::filled(groups * c, f32::NAN));
            let mut a = Args::new()
                .buf(&xb)
                .val(gi)
                .val(si)
                .val(ci)
                .buf(&biasb)
                .buf(&ob);
            sim().launch("group_max_bias_f32", &per_value(groups * c), &mut a, seed)?;
            let want: Vec<f32> = gmax
                .iter()
                .enumerate()
                .map(|(i, m)| m + bias[i % c])
                .collect();
            same_values("group_max_bias_f32", ob.get(), &want)?;

            // conv3's join, in place: h = bf16(relu(h + u[group])).
            let u: Vec<f32> = (0..groups * c).map(|_| g.normal()).collect();
            let want: Vec<f32> = (0..rows * c)
                .map(|i| {
                    let (r, o) = (i / c, i % c);
                    of_bf16(to_bf16((of_bf16(x[i]) + u[(r / s) * c + o]).max(0.0)))
                })
                .collect();
            let (hb, ub) = (Buf::from(&x), Buf::from(&u));
            let mut a = Args::new().buf(&hb).val(ri).val(si).val(ci).buf(&ub);
            sim().launch("group_bias_relu_bf16", &per_value(rows * c), &mut a, seed)?;
            let got: Vec<f32> = hb.get().iter().map(|&b| of_bf16(b)).collect();
            same_values("group_bias_relu_bf16", &got, &want)?;
        }
        Ok(())
    })
}
