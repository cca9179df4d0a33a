//! Anomaly maps (SPEC §7): bilinear upsampling of a patch-grid distance map to the
//! `S × S` input resolution, then a Gaussian blur.
//!
//! - Upsampling is PyTorch's `interpolate(mode='bilinear', align_corners=False)`: source
//!   coordinate `(dst + 0.5) · in/out − 0.5`, clamped below at 0, neighbours `floor` and
//!   `floor + 1` (clamped to the last row/column).
//! - Blur: separable Gaussian, σ from the caller (4 in the method), kernel radius
//!   `floor(truncate·σ + 0.5)` with truncate = 4 (16 pixels for σ = 4), weights
//!   `exp(−t²/2σ²)` normalised to sum 1, boundary mode "reflect" about the edge
//!   (`d c b a | a b c d | d c b a`, the sample at the edge repeated): exactly
//!   `scipy.ndimage.gaussian_filter(x, sigma, mode='reflect', truncate=4.0)`, without
//!   the 8-bit quantisation of the reference code (deliberate fix, SPEC §7).
//!
//! Planned: [`map_scratch_len`] floats of scratch, no allocation.

/// The largest Gaussian radius supported (σ up to 16 at truncate 4).
pub const MAX_RADIUS: usize = 64;

/// Radius of the truncated Gaussian, as scipy computes it.
pub fn gaussian_radius(sigma: f32, truncate: f32) -> usize {
    ((truncate * sigma + 0.5).floor() as usize).min(MAX_RADIUS)
}

/// Floats of scratch [`anomaly_map`] needs for an `s × s` map.
pub fn map_scratch_len(s: usize) -> usize {
    s * s + 2 * MAX_RADIUS + 1
}

/// Bilinear upsampling (align_corners = false) of a `gi × gi` grid to `s × s`.
pub fn upsample_bilinear(grid: &[f32], gi: usize, s: usize, out: &mut [f32]) {
    assert!(grid.len() >= gi * gi && out.len() >= s * s && gi > 0);
    let scale = gi as f32 / s as f32;
    let coord = |d: usize| -> (usize, usize, f32) {
        let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(gi - 1);
        let i1 = (i0 + 1).min(gi - 1);
        (i0, i1, src - i0 as f32)
    };
    for oy in 0..s {
        let (y0, y1, ly) = coord(oy);
        for ox in 0..s {
            let (x0, x1, lx) = coord(ox);
            let top = grid[y0 * gi + x0] * (1.0 - lx) + grid[y0 * gi + x1] * lx;
            let bot = grid[y1 * gi + x0] * (1.0 - lx) + grid[y1 * gi + x1] * lx;
            out[oy * s + ox] = top * (1.0 - ly) + bot * ly;
        }
    }
}

/// Reflect index `i` (may be outside `0..n`) into range, scipy "reflect" mode.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// In-place separable Gaussian blur of an `s × s` map. `scratch`: `map_scratch_len(s)`.
pub fn gaussian_blur(map: &mut [f32], s: usize, sigma: f32, scratch: &mut [f32]) {
    let r = gaussian_radius(sigma, 4.0);
    let (kernel, tmp) = scratch.split_at_mut(2 * MAX_RADIUS + 1);
    let kernel = &mut kernel[..2 * r + 1];
    let mut sum = 0.0f64;
    for (t, k) in kernel.iter_mut().enumerate() {
        let x = t as f64 - r as f64;
        let v = (-0.5 * x * x / (sigma as f64 * sigma as f64)).exp();
        *k = v as f32;
        sum += v;
    }
    kernel
        .iter_mut()
        .for_each(|k| *k = (*k as f64 / sum) as f32);
    let tmp = &mut tmp[..s * s];
    // Horizontal pass into tmp.
    for y in 0..s {
        let row = &map[y * s..(y + 1) * s];
        for x in 0..s {
            let mut acc = 0.0f32;
            for (t, k) in kernel.iter().enumerate() {
                let xi = reflect(x as isize + t as isize - r as isize, s);
                acc += k * row[xi];
            }
            tmp[y * s + x] = acc;
        }
    }
    // Vertical pass back into map.
    for y in 0..s {
        for x in 0..s {
            let mut acc = 0.0f32;
            for (t, k) in kernel.iter().enumerate() {
                let yi = reflect(y as isize + t as isize - r as isize, s);
                acc += k * tmp[yi * s + x];
            }
            map[y * s + x] = acc;
        }
    }
}

/// Upsample then blur: the anomaly map of one bank at `s × s`.
pub fn anomaly_map(
    grid: &[f32],
    gi: usize,
    s: usize,
    sigma: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    upsample_bilinear(grid, gi, s, out);
    gaussian_blur(out, s, sigma, scratch);
}
