//! Independent references shared by the kernel tests on the emulator (`tests/kernels_sim`)
//! and on a GPU (`tests/cuda`): written from SPEC, not from the code they check.

use miad::types::Region;

/// Independent reference: 8-connected components of `map > t` (a NaN threshold: every
/// non-NaN pixel alone, as `find_regions`), root = first pixel, sorted by (peak desc,
/// root asc), first `limit`. Returns (labels, kept (root, region), found).
pub fn regions_ref(
    map: &[f32],
    s: usize,
    t: f32,
    limit: usize,
) -> (Vec<u32>, Vec<(u32, Region)>, usize) {
    let start = |v: f32| !v.is_nan() && (t.is_nan() || v > t);
    let mut labels = vec![u32::MAX; s * s];
    let mut all = vec![];
    let mut stack = vec![];
    for root in 0..s * s {
        if labels[root] != u32::MAX || !start(map[root]) {
            continue;
        }
        labels[root] = root as u32;
        stack.push(root);
        let mut r = Region {
            x0: u32::MAX,
            y0: u32::MAX,
            x1: 0,
            y1: 0,
            area: 0,
            max: f32::NEG_INFINITY,
            mean: 0.0,
        };
        let mut sum = 0f64;
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % s) as u32, (i / s) as u32);
            (r.x0, r.x1) = (r.x0.min(x), r.x1.max(x));
            (r.y0, r.y1) = (r.y0.min(y), r.y1.max(y));
            r.area += 1;
            r.max = r.max.max(map[i]);
            sum += map[i] as f64;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= s as i64 || ny >= s as i64 {
                        continue;
                    }
                    let j = ny as usize * s + nx as usize;
                    if labels[j] == u32::MAX && map[j] > t {
                        labels[j] = root as u32;
                        stack.push(j);
                    }
                }
            }
        }
        r.mean = (sum / r.area as f64) as f32;
        all.push((root as u32, r));
    }
    let found = all.len();
    all.sort_by(|a, b| b.1.max.total_cmp(&a.1.max).then(a.0.cmp(&b.0)));
    all.truncate(limit);
    (labels, all, found)
}

/// LayerNorm of one row with the f32 statistics of the bf16 fast path, in the order
/// kernels/embed.cu states (lane `l` sums columns `c ≡ l (mod 32)` of `x − x[0]`, then an
/// xor butterfly; two passes; correctly rounded f32 throughout). Output in f32, before the
/// kernel's one rounding to bf16.
pub fn layer_norm_row_f32_stats(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    // The xor butterfly over 32 lane sums (every lane ends with the same value).
    fn butterfly(mut lanes: [f32; 32]) -> f32 {
        for o in [16, 8, 4, 2, 1] {
            let prev = lanes;
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = prev[l] + prev[l ^ o];
            }
        }
        lanes[0]
    }
    let n = x.len() as f32;
    let shift = x[0];
    let mut lanes = [0f32; 32];
    for (c, &v) in x.iter().enumerate() {
        lanes[c % 32] += v - shift;
    }
    let mean = shift + butterfly(lanes) / n;
    let mut lanes = [0f32; 32];
    for (c, &v) in x.iter().enumerate() {
        let dc = v - mean;
        lanes[c % 32] = dc.mul_add(dc, lanes[c % 32]);
    }
    let rstd = 1.0 / (butterfly(lanes) / n + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * rstd * w + b;
    }
}

/// The stated first-order bound (kernels/embed.cu) on how far the fast path's normalised
/// value x̂ may lie from the f64 statistics' one, for a row of `n` values with f64 mean
/// `mean` and standard deviation `sigma`: `abs + rel·|x̂|`.
pub fn layer_norm_f32_stats_bound(n: usize, mean: f64, sigma: f64) -> (f64, f64) {
    let u = f64::powi(2.0, -24);
    let k = n.div_ceil(32) as f64 + 5.0;
    let e = (k + 3.0) * u * (((n - 1) as f64).sqrt() + 1.0) + u * mean.abs() / sigma;
    (e, (k + 4.0) * u + e * e)
}

/// Checks the fast path's LayerNorm output `got` (bf16 bits, rows × cols packed) of the rows
/// `x` (after any position add): bitwise the rounded [`layer_norm_row_f32_stats`], and that
/// reference within twice [`layer_norm_f32_stats_bound`] (a first-order bound) of
/// `want_f64`, the f64-statistics output (`cpu::transformer::layer_norm_row`'s). NaN rows
/// must be NaN on both. Returns the largest |Δx̂| seen (the measured error of the
/// statistics, in units of the normalised value): over all rows, and over the rows whose
/// mean lies within 4σ of 0 (as a transformer's residual stream; the others have a large
/// u·|mean|/σ term in the bound).
pub fn check_layer_norm_fast(
    x: &[f32],
    cols: usize,
    (w, b): (&[f32], &[f32]),
    eps: f32,
    got: &[u16],
    want_f64: &[f32],
) -> Result<(f64, f64), String> {
    let mut fast = vec![0f32; x.len()];
    let (mut worst, mut worst_centred) = (0f64, 0f64);
    let u = f64::powi(2.0, -24);
    for (r, (xr, fr)) in x.chunks(cols).zip(fast.chunks_mut(cols)).enumerate() {
        layer_norm_row_f32_stats(xr, fr, w, b, eps);
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let sigma = (var + eps as f64).sqrt();
        let (abs, rel) = layer_norm_f32_stats_bound(cols, mean, sigma);
        for c in 0..cols {
            let i = r * cols + c;
            let (f, want) = (fr[c] as f64, want_f64[i] as f64);
            if f.is_nan() || want.is_nan() {
                if f.is_nan() != want.is_nan() {
                    return Err(format!(
                        "row {r} col {c}: fast {f} vs f64 statistics {want}"
                    ));
                }
                continue;
            }
            let xhat = (xr[c] as f64 - mean) / sigma;
            let (gc, bc) = (w[c] as f64, b[c] as f64);
            // The affine steps round in f32 on both paths: a few ulps of their terms.
            let allowed = 2.0 * gc.abs() * (abs + rel * xhat.abs())
                + 4.0 * u * ((gc * xhat).abs() + bc.abs() + want.abs());
            if (f - want).abs() > allowed {
                return Err(format!(
                    "row {r} col {c}: fast {f} vs f64 statistics {want}: {:e} > bound {allowed:e}",
                    (f - want).abs()
                ));
            }
            if gc != 0.0 {
                let e = (f - want).abs() / gc.abs();
                worst = worst.max(e);
                if mean.abs() <= 4.0 * sigma {
                    worst_centred = worst_centred.max(e);
                }
            }
        }
    }
    for (i, (&g, &f)) in got.iter().zip(&fast).enumerate() {
        let want = half::bf16::from_f32(f);
        let gb = half::bf16::from_bits(g);
        if !(gb.to_bits() == want.to_bits() || (gb.is_nan() && want.is_nan())) {
            return Err(format!(
                "[{i}]: bf16 {gb} is not the rounded f32-statistics reference {f}"
            ));
        }
    }
    Ok((worst, worst_centred))
}
