//! Preprocessing of one part (SPEC §1), the same function at fit and at inspection time.
//!
//! [`PreprocessMode::Full`]: background plane removal (RANSAC on the border frame, fixed
//! seed and iteration count from the config), padding to a centred square whose side is a
//! multiple of `pad_multiple`, largest connected cluster, resizing.
//! [`PreprocessMode::AlreadyClean`]: data already cleaned and padded offline (as the
//! reference implementation leaves MVTec 3D-AD): only the resizing.
//!
//! Choices where SPEC leaves room (documented, deterministic):
//! - RANSAC: each hypothesis is the least-squares plane of `ransac_points` border points
//!   drawn with replacement by `util::rng::Rng(ransac_seed)`; the hypothesis with the most
//!   inliers (|distance| < `ransac_threshold`, first one on ties) is refitted by least
//!   squares on its inliers. Fewer than 3 non-zero border points: no plane is removed.
//! - Padding: top/left offset = ⌊(side − size)/2⌋.
//! - Clustering: union–find over 8-neighbour pixels whose points are closer than
//!   `cluster_eps` in 3-D; the largest component is kept (ties: the one whose first pixel
//!   in row-major order comes first). A largest component below `cluster_min_points`
//!   makes the cloud unusable for this part.
//! - RGB pixels are zeroed exactly where a non-zero point was removed (plane or cluster),
//!   and only when the cloud stays usable.
//! - RGB resize: PIL's `BICUBIC` (a = −0.5, support widened by the scale when
//!   downscaling, weights normalised), as torchvision applies it to PIL images, with
//!   PIL's 8-bit store (rounded, clipped) after the horizontal and the vertical pass.
//!   PIL's weights are 22-bit fixed point and ours f32, so a value can differ from PIL by
//!   1/255 where a sum lands next to a rounding boundary (the fixture test bounds it).
//! - Cloud resize: nearest, source = min(⌊dst · (in/out)⌋, in − 1) with the ratio in f32
//!   (PyTorch `interpolate(mode='nearest')`).

use crate::config::PreprocessConfig;
use crate::pipeline::input::{CloudView, RgbView};
use crate::util::linalg::symmetric_eigen3;
use crate::util::rng::Rng;
use crate::{Error, Result};

/// What preprocessing does beyond resizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreprocessMode {
    /// Plane removal, padding, cluster cleaning, resizing.
    Full,
    /// Only resizing: the data were cleaned (and padded) offline.
    AlreadyClean,
}

/// Why a modality cannot be used for this part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not given.
    Missing,
    /// An image with one colour everywhere.
    Blank,
    /// No point at all (every pixel has a zero coordinate: (0,0,0) or partly zero).
    AllZero,
    /// No valid point, and some pixels had NaN or infinite coordinates (SPEC §1.6: such
    /// a pixel is a missing point; only a cloud without any valid point is unusable).
    NonFinite,
    /// Nothing left after plane removal, or the largest cluster is below the minimum.
    EmptyAfterCleaning,
    /// Fewer valid points than the point branch needs (`PreprocessOutput::min_points`).
    TooFewPoints,
}

/// Which modalities of the part are usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModalityStatus {
    pub rgb: Option<Unusable>,
    pub cloud: Option<Unusable>,
}

impl ModalityStatus {
    pub fn rgb_usable(&self) -> bool {
        self.rgb.is_none()
    }
    pub fn cloud_usable(&self) -> bool {
        self.cloud.is_none()
    }
}

/// The preprocessed part, allocated once per engine ([`PreprocessOutput::new`]).
#[derive(Clone, Debug)]
pub struct PreprocessOutput {
    /// S = image_size.
    pub size: usize,
    /// 3×S×S normalised CHW image (zeros when the RGB is missing).
    pub rgb_input: Vec<f32>,
    /// S×S×3 resized cloud.
    pub cloud: Vec<f32>,
    /// N×3 valid points (non-zero pixels of `cloud`, row-major); capacity S².
    pub points: Vec<f32>,
    /// Pixel index (row·S + column) of each valid point.
    pub point_pixels: Vec<u32>,
    pub n_points: usize,
    /// Fewer valid points than this make the cloud unusable (default 1; set it to
    /// max(num_groups, group_size) of the point branch, see [`Self::for_point_branch`]).
    pub min_points: usize,
}

impl PreprocessOutput {
    pub fn new(cfg: &PreprocessConfig) -> Self {
        let s = cfg.image_size as usize;
        PreprocessOutput {
            size: s,
            rgb_input: vec![0.0; 3 * s * s],
            cloud: vec![0.0; 3 * s * s],
            points: vec![0.0; 3 * s * s],
            point_pixels: vec![0; s * s],
            n_points: 0,
            min_points: 1,
        }
    }
    /// With `min_points` = max(num_groups, group_size) of `point`.
    pub fn for_point_branch(cfg: &PreprocessConfig, point: &crate::config::PointConfig) -> Self {
        let mut o = Self::new(cfg);
        o.min_points = (point.num_groups.max(point.group_size) as usize).max(1);
        o
    }
    /// The valid points, N×3.
    pub fn points(&self) -> &[f32] {
        &self.points[..3 * self.n_points]
    }
}

/// Side of the padded square for an input of `w × h`.
pub fn padded_side(cfg: &PreprocessConfig, w: usize, h: usize) -> usize {
    let m = (cfg.pad_multiple as usize).max(1);
    w.max(h).div_ceil(m) * m
}

/// Most taps of one resampling kernel for `input → out` (PIL bicubic, support 2).
fn max_taps(input: usize, out: usize) -> usize {
    let scale = (input as f64 / out as f64).max(1.0);
    (2.0 * 2.0 * scale).ceil() as usize + 3
}

/// Scratch floats [`preprocess`] needs for inputs up to `max_width × max_height`.
pub fn preprocess_scratch_len(
    cfg: &PreprocessConfig,
    max_width: usize,
    max_height: usize,
) -> usize {
    let p = padded_side(cfg, max_width, max_height).max(max_width.max(max_height));
    let s = cfg.image_size as usize;
    let grid = p * p;
    let border = (2 * cfg.border as usize * (2 * p)).min(grid);
    // cloud 3, rgb 3, parent 1, keep 1, counts 1 per pixel; border points; RANSAC
    // sample; resize: horizontal pass (p × s × 3) and two weight tables.
    grid * 9
        + 3 * border
        + 3 * cfg.ransac_points.max(3) as usize
        + 3 * p * s
        + 2 * s * (max_taps(p, s) + 1)
}

/// Preprocesses one part into `out`. Either input may be absent. Sizes that differ
/// between image and cloud, or inputs larger than `scratch` was planned for, are errors;
/// bad content (blank image, empty or broken cloud) marks that modality unusable.
pub fn preprocess(
    cfg: &PreprocessConfig,
    rgb: Option<RgbView<'_>>,
    cloud: Option<CloudView<'_>>,
    mode: PreprocessMode,
    out: &mut PreprocessOutput,
    scratch: &mut [f32],
) -> Result<ModalityStatus> {
    let s = cfg.image_size as usize;
    if s == 0 || out.size != s || out.rgb_input.len() < 3 * s * s || out.cloud.len() < 3 * s * s {
        return Err(Error::Config(format!(
            "preprocess output planned for {} but image_size is {s}",
            out.size
        )));
    }
    if let Some(v) = &rgb {
        v.validate()?;
    }
    if let Some(v) = &cloud {
        v.validate()?;
    }
    let (w, h) = match (&rgb, &cloud) {
        (Some(r), Some(c)) => {
            if (r.width, r.height) != (c.width, c.height) {
                return Err(Error::Input(format!(
                    "point cloud is {}×{} but the RGB image is {}×{}",
                    c.width, c.height, r.width, r.height
                )));
            }
            (r.width, r.height)
        }
        (Some(r), None) => (r.width, r.height),
        (None, Some(c)) => (c.width, c.height),
        (None, None) => (1, 1),
    };
    let mut status = ModalityStatus {
        rgb: rgb.as_ref().map_or(Some(Unusable::Missing), |r| {
            (is_blank(r)).then_some(Unusable::Blank)
        }),
        cloud: cloud
            .as_ref()
            .map_or(Some(Unusable::Missing), cloud_content_issue),
    };
    out.n_points = 0;
    if rgb.is_none() && cloud.is_none() {
        out.rgb_input[..3 * s * s].fill(0.0);
        out.cloud[..3 * s * s].fill(0.0);
        return Ok(status);
    }
    let side = match mode {
        PreprocessMode::Full => padded_side(cfg, w, h),
        PreprocessMode::AlreadyClean => 0,
    };
    let (ww, wh) = if mode == PreprocessMode::Full {
        (side, side)
    } else {
        (w, h)
    };
    let needed = preprocess_scratch_len(cfg, w, h);
    if scratch.len() < needed {
        return Err(Error::Input(format!(
            "input {w}×{h} is larger than the preprocessing was planned for"
        )));
    }
    let grid = ww * wh;
    let (wcloud, rest) = scratch.split_at_mut(3 * grid);
    let (wrgb, rest) = rest.split_at_mut(3 * grid);
    let (parent_f, rest) = rest.split_at_mut(grid);
    let (keep_f, rest) = rest.split_at_mut(grid);
    let (counts_f, rest) = rest.split_at_mut(grid);
    let counts: &mut [u32] = bytemuck::cast_slice_mut(counts_f);
    let parent: &mut [u32] = bytemuck::cast_slice_mut(parent_f);
    let keep: &mut [u32] = bytemuck::cast_slice_mut(keep_f);
    let (top, left) = ((wh - h) / 2, (ww - w) / 2);

    // 1. copy (and pad) into the working buffers
    wcloud.fill(0.0);
    wrgb.fill(0.0);
    if let Some(c) = &cloud {
        for r in 0..h {
            let src = &c.data[r * c.stride..r * c.stride + 3 * w];
            let d0 = 3 * ((r + top) * ww + left);
            let dst = &mut wcloud[d0..d0 + 3 * w];
            dst.copy_from_slice(src);
            // SPEC §1.5–1.6: a point missing a coordinate (0) or with a non-finite one
            // is no point; from here on "no point" is (0, 0, 0) in every step.
            for p in dst.chunks_exact_mut(3) {
                if !is_valid_point(p) {
                    p.fill(0.0);
                }
            }
        }
        if status.cloud.is_some() {
            wcloud.fill(0.0);
        }
    }
    if let Some(im) = &rgb {
        for r in 0..h {
            let d0 = 3 * ((r + top) * ww + left);
            for (d, &v) in wrgb[d0..d0 + 3 * w]
                .iter_mut()
                .zip(&im.data[r * im.stride..r * im.stride + 3 * w])
            {
                *d = v as f32;
            }
        }
    }

    // 2. plane removal and cluster cleaning
    if mode == PreprocessMode::Full && status.cloud.is_none() {
        for (k, p) in keep.iter_mut().zip(wcloud.chunks_exact(3)) {
            *k = u32::from(p != [0.0, 0.0, 0.0]);
        }
        remove_plane(cfg, wcloud, ww, wh, top, left, w, h, rest);
        // Short-circuit: an all-zero cloud has no cluster to keep.
        let emptied = wcloud.iter().all(|&v| v == 0.0)
            || !keep_largest_cluster(cfg, wcloud, ww, wh, parent, counts);
        if emptied {
            status.cloud = Some(Unusable::EmptyAfterCleaning);
        }
        if status.cloud.is_none() {
            for (i, &k) in keep.iter().enumerate() {
                if k == 1 && wcloud[3 * i..3 * i + 3] == [0.0, 0.0, 0.0] {
                    wrgb[3 * i..3 * i + 3].fill(0.0);
                }
            }
        } else {
            wcloud.fill(0.0);
        }
    }

    // 3. resize
    let resize_scratch = &mut rest[..3 * ww.max(wh) * s + 2 * s * (max_taps(ww.max(wh), s) + 1)];
    resize_bicubic_pil(
        wrgb,
        ww,
        wh,
        s,
        s,
        &mut out.rgb_input[..3 * s * s],
        resize_scratch,
    );
    let plane = s * s;
    for (c, (m, sd)) in cfg.rgb_mean.iter().zip(&cfg.rgb_std).enumerate() {
        for v in &mut out.rgb_input[c * plane..(c + 1) * plane] {
            *v = (*v / 255.0 - m) / sd;
        }
    }
    if rgb.is_none() {
        out.rgb_input[..3 * plane].fill(0.0);
    }
    resize_nearest(wcloud, ww, wh, 3, s, s, &mut out.cloud[..3 * plane]);
    let mut n = 0usize;
    for (i, p) in out.cloud[..3 * plane].chunks_exact(3).enumerate() {
        if p != [0.0, 0.0, 0.0] {
            out.points[3 * n..3 * n + 3].copy_from_slice(p);
            out.point_pixels[n] = i as u32;
            n += 1;
        }
    }
    out.n_points = n;
    if status.cloud.is_none() && n < out.min_points.max(1) {
        status.cloud = Some(Unusable::TooFewPoints);
    }
    if status.cloud.is_some() {
        out.n_points = 0;
    }
    Ok(status)
}

fn is_blank(r: &RgbView<'_>) -> bool {
    let first = r.pixel(0, 0);
    (0..r.height).all(|y| {
        r.data[y * r.stride..y * r.stride + 3 * r.width]
            .chunks_exact(3)
            .all(|p| p == first)
    })
}

/// Whether a cloud pixel is a point (SPEC §1.5–1.6): all three coordinates non-zero
/// (M3DM's `np.all(pc != 0, axis=1)`) and finite (sensors mark "no return" with NaN).
#[inline]
pub fn is_valid_point(p: &[f32]) -> bool {
    p.iter().all(|&v| v != 0.0 && v.is_finite())
}

/// `None` when the cloud has a valid point; otherwise why not: `NonFinite` when some
/// pixel had a NaN or infinite coordinate, else `AllZero`.
fn cloud_content_issue(c: &CloudView<'_>) -> Option<Unusable> {
    let mut non_finite = false;
    for y in 0..c.height {
        for p in c.data[y * c.stride..y * c.stride + 3 * c.width].chunks_exact(3) {
            if is_valid_point(p) {
                return None;
            }
            non_finite |= p.iter().any(|v| !v.is_finite());
        }
    }
    Some(if non_finite {
        Unusable::NonFinite
    } else {
        Unusable::AllZero
    })
}

/// Least-squares plane (unit normal n, offset d with n·p + d = 0) of `pts` (k×3), in f64.
fn fit_plane(pts: &[f32]) -> Option<([f64; 3], f64)> {
    let k = pts.len() / 3;
    if k < 3 {
        return None;
    }
    let mut mean = [0f64; 3];
    for p in pts.chunks_exact(3) {
        for a in 0..3 {
            mean[a] += p[a] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= k as f64);
    let mut cov = [[0f64; 3]; 3];
    for p in pts.chunks_exact(3) {
        let d = [
            p[0] as f64 - mean[0],
            p[1] as f64 - mean[1],
            p[2] as f64 - mean[2],
        ];
        for (r, row) in cov.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v += d[r] * d[c];
            }
        }
    }
    // The normal is the eigenvector of the smallest eigenvalue (the first one on ties).
    let (values, vectors) = symmetric_eigen3(cov);
    let (mut best, mut val) = (0usize, f64::INFINITY);
    for (i, &v) in values.iter().enumerate() {
        if v < val {
            val = v;
            best = i;
        }
    }
    let n = vectors[best];
    let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return None;
    }
    let n = [n[0] / norm, n[1] / norm, n[2] / norm];
    let d = -(n[0] * mean[0] + n[1] * mean[1] + n[2] * mean[2]);
    Some((n, d))
}

#[inline]
fn plane_dist(n: &[f64; 3], d: f64, p: &[f32]) -> f64 {
    (n[0] * p[0] as f64 + n[1] * p[1] as f64 + n[2] * p[2] as f64 + d).abs()
}

/// RANSAC plane of the non-zero points of the `border`-pixel frame of the original
/// (unpadded) image area, then zeroes every point closer than `plane_distance` to it.
#[allow(clippy::too_many_arguments)]
fn remove_plane(
    cfg: &PreprocessConfig,
    wcloud: &mut [f32],
    ww: usize,
    _wh: usize,
    top: usize,
    left: usize,
    w: usize,
    h: usize,
    rest: &mut [f32],
) {
    let b = cfg.border as usize;
    let grid = ww * _wh;
    let cap = (2 * b * (2 * ww.max(_wh))).min(grid);
    let (border_pts, rest) = rest.split_at_mut(3 * cap);
    let sample = &mut rest[..3 * (cfg.ransac_points.max(3) as usize)];
    let mut nb = 0usize;
    for r in 0..h {
        for c in 0..w {
            if r < b || c < b || r + b >= h || c + b >= w {
                let i = 3 * ((r + top) * ww + c + left);
                let p = &wcloud[i..i + 3];
                if p != [0.0, 0.0, 0.0] && nb < cap {
                    border_pts[3 * nb..3 * nb + 3].copy_from_slice(p);
                    nb += 1;
                }
            }
        }
    }
    let Some((n, d)) = ransac_plane(cfg, &mut border_pts[..3 * nb], sample) else {
        return;
    };
    let dist = cfg.plane_distance as f64;
    for p in wcloud.chunks_exact_mut(3) {
        if p != [0.0, 0.0, 0.0] && plane_dist(&n, d, p) < dist {
            p.fill(0.0);
        }
    }
}

/// The RANSAC plane of `border_pts` (k×3, the frame's points in raster order; reordered
/// in place): the hypothesis with the most inliers (first on ties), refitted on its
/// inliers. `None` below 3 points or without a hypothesis that has an inlier.
fn ransac_plane(
    cfg: &PreprocessConfig,
    border_pts: &mut [f32],
    sample: &mut [f32],
) -> Option<([f64; 3], f64)> {
    let nb = border_pts.len() / 3;
    if nb < 3 {
        return None;
    }
    let mut rng = Rng::new(cfg.ransac_seed);
    let thr = cfg.ransac_threshold as f64;
    let mut best: Option<([f64; 3], f64)> = None;
    let mut best_count = 0usize;
    for _ in 0..cfg.ransac_iterations {
        for j in 0..sample.len() / 3 {
            let i = rng.below(nb as u64) as usize;
            sample[3 * j..3 * j + 3].copy_from_slice(&border_pts[3 * i..3 * i + 3]);
        }
        let Some((n, d)) = fit_plane(sample) else {
            continue;
        };
        let count = border_pts
            .chunks_exact(3)
            .filter(|p| plane_dist(&n, d, p) < thr)
            .count();
        if count > best_count {
            best_count = count;
            best = Some((n, d));
        }
    }
    let (n, d) = best?;
    // refit on the inliers (compacted to the front of the border buffer)
    let mut k = 0usize;
    for i in 0..nb {
        if plane_dist(&n, d, &border_pts[3 * i..3 * i + 3]) < thr {
            border_pts.copy_within(3 * i..3 * i + 3, 3 * k);
            k += 1;
        }
    }
    Some(fit_plane(&border_pts[..3 * k]).unwrap_or((n, d)))
}

/// The background plane (unit normal, offset) that [`PreprocessMode::Full`] removes from
/// `cloud`, or `None` when none is removed. Allocates: for tests and diagnostics (the
/// device preprocessing is checked against it bit for bit).
pub fn background_plane(cfg: &PreprocessConfig, cloud: &CloudView<'_>) -> Option<([f64; 3], f64)> {
    let (w, h, b) = (cloud.width, cloud.height, cfg.border as usize);
    let mut border_pts = Vec::new();
    for r in 0..h {
        for c in 0..w {
            let p = &cloud.data[r * cloud.stride + 3 * c..r * cloud.stride + 3 * c + 3];
            if (r < b || c < b || r + b >= h || c + b >= w) && is_valid_point(p) {
                border_pts.extend_from_slice(p);
            }
        }
    }
    let mut sample = vec![0f32; 3 * cfg.ransac_points.max(3) as usize];
    ransac_plane(cfg, &mut border_pts, &mut sample)
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let g = parent[parent[i as usize] as usize];
        parent[i as usize] = g;
        i = g;
    }
    i
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    // the smaller index becomes the root: deterministic, and roots are first pixels
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

/// Keeps the largest 8-connected component (links closer than `cluster_eps`); returns
/// false when it has fewer than `cluster_min_points` points.
fn keep_largest_cluster(
    cfg: &PreprocessConfig,
    wcloud: &mut [f32],
    ww: usize,
    wh: usize,
    parent: &mut [u32],
    counts: &mut [u32],
) -> bool {
    let eps2 = cfg.cluster_eps * cfg.cluster_eps;
    let nz = |cl: &[f32], i: usize| cl[3 * i..3 * i + 3] != [0.0, 0.0, 0.0];
    for (i, p) in parent.iter_mut().enumerate() {
        *p = i as u32;
    }
    let pt = |cl: &[f32], i: usize| [cl[3 * i], cl[3 * i + 1], cl[3 * i + 2]];
    for r in 0..wh {
        for c in 0..ww {
            let i = r * ww + c;
            if !nz(wcloud, i) {
                continue;
            }
            let p = pt(wcloud, i);
            let link = |j: usize, parent: &mut [u32]| {
                if nz(wcloud, j) && crate::cpu::point_kdtree::sq_dist(p, pt(wcloud, j)) < eps2 {
                    union(parent, i as u32, j as u32);
                }
            };
            if c + 1 < ww {
                link(i + 1, parent);
            }
            if r + 1 < wh {
                if c > 0 {
                    link(i + ww - 1, parent);
                }
                link(i + ww, parent);
                if c + 1 < ww {
                    link(i + ww + 1, parent);
                }
            }
        }
    }
    // every pixel's root; roots are the smallest index of their component
    counts.fill(0);
    for i in 0..parent.len() {
        let r = find(parent, i as u32);
        parent[i] = r;
        if nz(wcloud, i) {
            counts[r as usize] += 1;
        }
    }
    let (mut best_root, mut best_size) = (u32::MAX, 0usize);
    for (i, &c) in counts.iter().enumerate() {
        if c as usize > best_size {
            best_size = c as usize;
            best_root = i as u32;
        }
    }
    for i in 0..parent.len() {
        if parent[i] != best_root {
            wcloud[3 * i..3 * i + 3].fill(0.0);
        }
    }
    best_size >= cfg.cluster_min_points as usize && best_size > 0
}

/// Nearest resize of an `ih × iw × ch` image to `oh × ow × ch` (PyTorch `nearest`).
pub fn resize_nearest(
    src: &[f32],
    iw: usize,
    ih: usize,
    ch: usize,
    ow: usize,
    oh: usize,
    dst: &mut [f32],
) {
    for oy in 0..oh {
        let sy = nearest_src(oy, ih, oh);
        for ox in 0..ow {
            let sx = nearest_src(ox, iw, ow);
            let s0 = ch * (sy * iw + sx);
            let d0 = ch * (oy * ow + ox);
            dst[d0..d0 + ch].copy_from_slice(&src[s0..s0 + ch]);
        }
    }
}

/// PyTorch's nearest source index: min(⌊dst · (in/out)⌋, in − 1), ratio in f32.
#[inline]
pub fn nearest_src(dst: usize, input: usize, out: usize) -> usize {
    if input == out {
        return dst;
    }
    let scale = input as f32 / out as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PIL's resampling coefficients for one axis: for each output index, the first source
/// index and `taps` normalised weights (zeros past the kernel's end).
fn pil_coeffs(input: usize, out: usize, taps: usize, first: &mut [f32], weights: &mut [f32]) {
    let scale = input as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    for o in 0..out {
        let center = (o as f64 + 0.5) * scale;
        let ww = 1.0 / filterscale;
        let xmin = ((center - support + 0.5).floor() as i64).max(0) as usize;
        let xmax = (((center + support + 0.5).floor() as i64).min(input as i64) as usize)
            .saturating_sub(xmin)
            .min(taps);
        let wrow = &mut weights[o * taps..(o + 1) * taps];
        wrow.fill(0.0);
        let mut sum = 0f64;
        let mut tmp = [0f64; 64];
        let cnt = xmax.min(tmp.len());
        for (x, t) in tmp.iter_mut().take(cnt).enumerate() {
            let v = bicubic((x as f64 + xmin as f64 - center + 0.5) * ww);
            *t = v;
            sum += v;
        }
        for (wv, t) in wrow.iter_mut().zip(&tmp[..cnt]) {
            *wv = if sum != 0.0 { (t / sum) as f32 } else { 0.0 };
        }
        first[o] = xmin as f32;
    }
}

/// PIL's 8-bit store after each pass: round half up, clip to 0..=255.
#[inline]
fn pil_u8(v: f32) -> f32 {
    (v + 0.5).floor().clamp(0.0, 255.0)
}

/// PIL-style bicubic resize of an `ih × iw × 3` (HWC, 0..255 floats) image to planar
/// `3 × oh × ow` (CHW), horizontal pass first, then vertical, each stored as 8-bit
/// values like PIL (outputs are integers in 0..=255 held in f32).
pub fn resize_bicubic_pil(
    src: &[f32],
    iw: usize,
    ih: usize,
    ow: usize,
    oh: usize,
    dst: &mut [f32],
    scratch: &mut [f32],
) {
    let tx = max_taps(iw, ow).min(64);
    let ty = max_taps(ih, oh).min(64);
    let (tmp, rest) = scratch.split_at_mut(3 * ih * ow);
    let (fx, rest) = rest.split_at_mut(ow);
    let (wx, rest) = rest.split_at_mut(ow * tx);
    pil_coeffs(iw, ow, tx, fx, wx);
    for y in 0..ih {
        let row = &src[3 * y * iw..3 * (y + 1) * iw];
        for ox in 0..ow {
            let x0 = fx[ox] as usize;
            let mut acc = [0f32; 3];
            for (t, &wt) in wx[ox * tx..(ox + 1) * tx].iter().enumerate() {
                if wt == 0.0 || x0 + t >= iw {
                    continue;
                }
                let p = &row[3 * (x0 + t)..3 * (x0 + t) + 3];
                acc[0] += wt * p[0];
                acc[1] += wt * p[1];
                acc[2] += wt * p[2];
            }
            for (t, a) in tmp[3 * (y * ow + ox)..3 * (y * ow + ox) + 3]
                .iter_mut()
                .zip(acc)
            {
                *t = pil_u8(a);
            }
        }
    }
    let (fy, rest) = rest.split_at_mut(oh);
    let wy = &mut rest[..oh * ty];
    pil_coeffs(ih, oh, ty, fy, wy);
    let plane = oh * ow;
    for oy in 0..oh {
        let y0 = fy[oy] as usize;
        for ox in 0..ow {
            let mut acc = [0f32; 3];
            for (t, &wt) in wy[oy * ty..(oy + 1) * ty].iter().enumerate() {
                if wt == 0.0 || y0 + t >= ih {
                    continue;
                }
                let p = &tmp[3 * ((y0 + t) * ow + ox)..3 * ((y0 + t) * ow + ox) + 3];
                acc[0] += wt * p[0];
                acc[1] += wt * p[1];
                acc[2] += wt * p[2];
            }
            for (c, a) in acc.iter().enumerate() {
                dst[c * plane + oy * ow + ox] = pil_u8(*a);
            }
        }
    }
}

/// Pads (Full mode) and nearest-resizes a ground-truth mask (h × w, > 0 = defect) to
/// S × S bytes (1 = defect) in `out`, with the geometry [`preprocess`] gives the cloud.
pub fn preprocess_mask(
    cfg: &PreprocessConfig,
    mask: &[u8],
    w: usize,
    h: usize,
    mode: PreprocessMode,
    out: &mut [u8],
) -> Result<()> {
    let s = cfg.image_size as usize;
    if mask.len() < w * h || out.len() < s * s || w == 0 || h == 0 {
        return Err(Error::Input(format!(
            "mask {w}×{h}: buffer sizes do not match"
        )));
    }
    let (side_w, side_h) = match mode {
        PreprocessMode::Full => {
            let p = padded_side(cfg, w, h);
            (p, p)
        }
        PreprocessMode::AlreadyClean => (w, h),
    };
    let (top, left) = ((side_h - h) / 2, (side_w - w) / 2);
    for oy in 0..s {
        let sy = nearest_src(oy, side_h, s);
        for ox in 0..s {
            let sx = nearest_src(ox, side_w, s);
            let inside = sy >= top && sy < top + h && sx >= left && sx < left + w;
            out[oy * s + ox] =
                u8::from(inside && mask[(sy - top.min(sy)) * w + (sx - left.min(sx))] > 0);
        }
    }
    Ok(())
}
