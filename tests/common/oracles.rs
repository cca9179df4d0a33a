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
