//! Farthest point sampling (SPEC §3.1): the first center is point 0; each next center is
//! the point with the largest squared distance to its nearest chosen center, ties to the
//! lowest index. Squared distances are `(dx² + dy²) + dz²` in f32 without fused
//! multiply-add ([`sq_dist`]), the same operation order as every other backend.
//!
//! [`farthest_point_sample`] gives exactly the indices of [`fps_plain`], faster: the points
//! sit in the leaves of a KD-tree ([`super::point_kdtree`]); every node keeps the maximum
//! of its points' distances and where it is (ties → lowest index). A new center can only
//! lower a point's distance when it is closer than that distance, so a subtree whose box
//! is at least its maximum away from the new center (the box distance is a lower bound in
//! f32 too) is skipped entirely, and the next center is the root's argmax. Late in the run
//! almost every subtree is skipped near the root.

pub use super::point_kdtree::sq_dist;
use super::point_kdtree::{kdtree_scratch_len, max_nodes, KdTree, Node};

/// Plain FPS: `out.len()` centers out of the `points.len() / 3` points (N×3, x y z);
/// `dist` is scratch of N floats. O(N·m). Panics if m > N or buffers are short (caller
/// bugs, checked by the stage that plans them).
pub fn fps_plain(points: &[f32], out: &mut [u32], dist: &mut [f32]) {
    let n = points.len() / 3;
    let m = out.len();
    assert!(m <= n && dist.len() >= n, "fps: {m} centers of {n} points");
    if m == 0 {
        return;
    }
    let p = |i: usize| [points[3 * i], points[3 * i + 1], points[3 * i + 2]];
    dist[..n].fill(f32::INFINITY);
    let mut center = 0usize;
    out[0] = 0;
    for slot in out.iter_mut().skip(1) {
        let c = p(center);
        let (mut best, mut best_i) = (-1.0f32, 0usize);
        for (i, d) in dist[..n].iter_mut().enumerate() {
            let nd = d.min(sq_dist(p(i), c));
            *d = nd;
            if nd > best {
                best = nd;
                best_i = i;
            }
        }
        center = best_i;
        *slot = center as u32;
    }
}

/// Scratch floats [`farthest_point_sample`] needs for `n` points.
pub fn fps_scratch_len(n: usize) -> usize {
    // tree + distances (n) + per-leaf maximum and its slot (2 per node)
    kdtree_scratch_len(n) + n + 2 * max_nodes(n)
}

/// Exact FPS of `m` centers among the first `n` points of `points` (N×3) into
/// `out_idx[..m]`, identical to [`fps_plain`]. `scratch`: [`fps_scratch_len`]`(n)` floats.
/// Panics on m > n or short buffers (caller bugs).
pub fn farthest_point_sample(
    points: &[f32],
    n: usize,
    m: usize,
    out_idx: &mut [u32],
    scratch: &mut [f32],
) {
    assert!(
        m <= n && out_idx.len() >= m,
        "fps: {m} centers of {n} points"
    );
    assert!(
        scratch.len() >= fps_scratch_len(n),
        "fps: scratch too short"
    );
    if m == 0 {
        return;
    }
    let (tree, rest) = KdTree::build(points, n, scratch);
    let (dist, rest) = rest.split_at_mut(n);
    let (leaf_max, rest) = rest.split_at_mut(max_nodes(n));
    let leaf_arg: &mut [u32] = bytemuck::cast_slice_mut(&mut rest[..max_nodes(n)]);
    dist.fill(f32::INFINITY);
    let nodes = &tree.nodes[..tree.n_nodes];
    // every node starts "unknown" (+∞), so the first pass visits all of them
    leaf_max[..nodes.len()].fill(f32::INFINITY);
    leaf_arg[..nodes.len()].fill(0);
    let t = Leaves {
        nodes,
        xs: &*tree.xs,
        ys: &*tree.ys,
        zs: &*tree.zs,
        perm: &*tree.perm,
    };
    out_idx[0] = 0;
    let mut center = 0usize;
    for slot in out_idx[1..m].iter_mut() {
        let c = [
            points[3 * center],
            points[3 * center + 1],
            points[3 * center + 2],
        ];
        t.visit(0, c, dist, leaf_max, leaf_arg);
        center = leaf_arg[0] as usize;
        *slot = leaf_arg[0];
    }
}

struct Leaves<'a> {
    nodes: &'a [Node],
    xs: &'a [f32],
    ys: &'a [f32],
    zs: &'a [f32],
    perm: &'a [u32],
}

impl Leaves<'_> {
    /// Lowers the distances under node `i` for the new center `c` and refreshes the
    /// node's maximum (ties → lowest index); skips the subtree when its box is at least
    /// its maximum away from `c` (nothing under it can change).
    fn visit(&self, i: usize, c: [f32; 3], dist: &mut [f32], mx: &mut [f32], arg: &mut [u32]) {
        let node = &self.nodes[i];
        if node.box_dist(c) >= mx[i] {
            return;
        }
        if node.is_leaf() {
            let (s, e) = (node.start as usize, node.end as usize);
            let mut best = f32::NEG_INFINITY;
            let d = &mut dist[s..e];
            let (x, y, z) = (&self.xs[s..e], &self.ys[s..e], &self.zs[s..e]);
            for j in 0..d.len() {
                let (dx, dy, dz) = (x[j] - c[0], y[j] - c[1], z[j] - c[2]);
                let nd = d[j].min(dx * dx + dy * dy + dz * dz);
                d[j] = nd;
                best = best.max(nd);
            }
            // slots of a leaf are in increasing original index: first maximum = lowest index
            let at = d.iter().position(|&v| v == best).unwrap_or(0);
            mx[i] = best;
            arg[i] = self.perm[s + at];
        } else {
            let (l, r) = (node.left as usize, node.right as usize);
            self.visit(l, c, dist, mx, arg);
            self.visit(r, c, dist, mx, arg);
            let take_left = mx[l] > mx[r] || (mx[l] == mx[r] && arg[l] < arg[r]);
            let k = if take_left { l } else { r };
            mx[i] = mx[k];
            arg[i] = arg[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn fast(pts: &[f32], m: usize) -> Vec<u32> {
        let n = pts.len() / 3;
        let mut out = vec![0u32; m];
        let mut scratch = vec![0f32; fps_scratch_len(n)];
        farthest_point_sample(pts, n, m, &mut out, &mut scratch);
        out
    }

    fn plain(pts: &[f32], m: usize) -> Vec<u32> {
        let mut out = vec![0u32; m];
        fps_plain(pts, &mut out, &mut vec![0.0; pts.len() / 3]);
        out
    }

    #[test]
    fn picks_the_farthest_points_of_a_line() {
        // 0, 1, 2, 10 on a line: from 0 pick 10, then 2 (min(4, 64)), then 1.
        let pts = [0., 0., 0., 1., 0., 0., 2., 0., 0., 10., 0., 0.];
        assert_eq!(plain(&pts, 4), [0, 3, 2, 1]);
        assert_eq!(fast(&pts, 4), [0, 3, 2, 1]);
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        let pts = [
            0., 0., 0., 1., 1., 0., -1., 1., 0., 1., -1., 0., -1., -1., 0.,
        ];
        let p = plain(&pts, 3);
        assert_eq!(p[1], 1);
        assert_eq!(p[2], 2);
        assert_eq!(fast(&pts, 3), p);
    }

    #[test]
    fn fast_equals_plain_on_random_clouds_with_duplicates_and_ties() {
        let mut rng = Rng::new(9);
        for case in 0..12 {
            let n = [1, 5, 40, 500, 3000, 7000][case % 6];
            let mut pts: Vec<f32> = (0..3 * n).map(|_| rng.uniform()).collect();
            if case % 2 == 1 {
                // a coarse lattice: many exact ties and duplicate points
                for v in pts.iter_mut() {
                    *v = (*v * 4.0).floor() * 0.25;
                }
            }
            if case % 3 == 2 && n > 10 {
                // a flat sheet with one far outlier
                for i in 0..n {
                    pts[3 * i + 2] = 0.0;
                }
                pts[3 * (n / 2)] = 50.0;
            }
            let m = n.min(700);
            assert_eq!(fast(&pts, m), plain(&pts, m), "case {case} n {n}");
        }
    }
}
