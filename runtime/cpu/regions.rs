//! Defect regions (SPEC §8): the 8-connected components of the anomaly map's pixels
//! above the pixel threshold, with bounding box, area, peak and mean, the strongest
//! peaks first.

use crate::types::Region;

/// 8-connected components of `map > threshold` into `regions` (largest peak first, at
/// most `limit`, which must not exceed the capacity reserved in `regions` for the call
/// to stay allocation-free); returns how many were found. Uses only the given buffers.
pub fn find_regions(
    map: &[f32],
    s: usize,
    threshold: f32,
    labels: &mut [u32],
    queue: &mut [u32],
    regions: &mut Vec<Region>,
    limit: usize,
) -> usize {
    regions.clear();
    let cap = limit;
    labels[..s * s].fill(0);
    let mut found = 0;
    for start in 0..s * s {
        if labels[start] != 0 || map[start].is_nan() || map[start] <= threshold {
            continue;
        }
        found += 1;
        labels[start] = 1;
        queue[0] = start as u32;
        let (mut head, mut tail) = (0usize, 1usize);
        let (x, y) = ((start % s) as u32, (start / s) as u32);
        let mut r = Region {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
            area: 0,
            max: f32::NEG_INFINITY,
            mean: 0.0,
        };
        let mut sum = 0f64;
        while head < tail {
            let i = queue[head] as usize;
            head += 1;
            let (x, y) = (i % s, i / s);
            r.x0 = r.x0.min(x as u32);
            r.x1 = r.x1.max(x as u32);
            r.y0 = r.y0.min(y as u32);
            r.y1 = r.y1.max(y as u32);
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
                    if labels[j] == 0 && map[j] > threshold {
                        labels[j] = 1;
                        queue[tail] = j as u32;
                        tail += 1;
                    }
                }
            }
        }
        r.mean = (sum / r.area as f64) as f32;
        if regions.len() < cap {
            regions.push(r);
        } else if let Some(weakest) = regions
            .iter_mut()
            .min_by(|a, b| a.max.total_cmp(&b.max))
            .filter(|w| w.max < r.max)
        {
            *weakest = r;
        }
    }
    regions.sort_unstable_by(|a, b| b.max.total_cmp(&a.max));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_8_connected_components_sorted_by_peak() {
        let s = 8;
        let mut map = vec![0f32; s * s];
        // a diagonal pair (one region by 8-connectivity) and a lone stronger pixel
        map[s + 1] = 2.0;
        map[2 * s + 2] = 3.0;
        map[6 * s + 6] = 5.0;
        let (mut labels, mut queue) = (vec![0; s * s], vec![0; s * s]);
        let mut regions = Vec::with_capacity(4);
        let n = find_regions(&map, s, 1.0, &mut labels, &mut queue, &mut regions, 4);
        assert_eq!(n, 2);
        assert_eq!(regions[0].area, 1);
        assert_eq!(regions[0].max, 5.0);
        assert_eq!(
            (regions[1].x0, regions[1].y0, regions[1].x1, regions[1].y1),
            (1, 1, 2, 2)
        );
        assert_eq!(regions[1].area, 2);
        assert_eq!(regions[1].mean, 2.5);
        // capacity 1 keeps the strongest
        let mut one = Vec::with_capacity(1);
        assert_eq!(
            find_regions(&map, s, 1.0, &mut labels, &mut queue, &mut one, 1),
            2
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].max, 5.0);
    }
}
