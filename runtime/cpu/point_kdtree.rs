//! A small KD-tree over an N×3 point set, built inside caller scratch (no allocation),
//! shared by farthest point sampling and k-nearest-neighbour grouping.
//!
//! Median splits on the longest box axis until a node holds at most [`LEAF`] points.
//! Points are copied into structure-of-arrays order (leaf by leaf, each leaf sorted by
//! original index, so "first maximum in a leaf" is "lowest index").
//!
//! Exactness: the squared distance from a query `c` to a node's box,
//! `bx² + by² + bz²` with `bx = max(lo.x − c.x, 0, c.x − hi.x)`, is computed with the
//! same operations in the same order as [`sq_dist`]. IEEE rounding is monotone, so for
//! every point p in the box, `box_dist(c) ≤ sq_dist(p, c)` holds *in f32*, which lets FPS
//! and kNN skip nodes without changing a single result.

/// Points per leaf at most.
pub const LEAF: usize = 64;

/// Squared distance `(dx² + dy²) + dz²` in f32, no fused multiply-add: the one operation
/// order every backend uses, so all of them pick the same indices.
#[inline(always)]
pub fn sq_dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    dx * dx + dy * dy + dz * dz
}

/// One node: a box and either two children or a leaf range `start..end` of the SoA arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Node {
    pub lo: [f32; 3],
    pub hi: [f32; 3],
    pub start: u32,
    pub end: u32,
    /// Child node indices; `u32::MAX` for a leaf.
    pub left: u32,
    pub right: u32,
}

const NODE_F32: usize = std::mem::size_of::<Node>() / 4;

impl Node {
    #[inline(always)]
    pub fn is_leaf(&self) -> bool {
        self.left == u32::MAX
    }
    /// Squared distance from `c` to the box (0 inside), ≤ that of any point in it.
    #[inline(always)]
    pub fn box_dist(&self, c: [f32; 3]) -> f32 {
        let bx = (self.lo[0] - c[0]).max(0.0).max(c[0] - self.hi[0]);
        let by = (self.lo[1] - c[1]).max(0.0).max(c[1] - self.hi[1]);
        let bz = (self.lo[2] - c[2]).max(0.0).max(c[2] - self.hi[2]);
        bx * bx + by * by + bz * bz
    }
}

/// Upper bound on the node count for `n` points: every split leaves more than LEAF/2
/// points on each side, so there are at most max(1, 2n/LEAF) leaves.
pub fn max_nodes(n: usize) -> usize {
    2 * (2 * n / LEAF + 1)
}

/// Scratch floats needed for a tree over `n` points.
pub fn kdtree_scratch_len(n: usize) -> usize {
    4 * n + max_nodes(n) * NODE_F32
}

/// The tree, borrowing its arrays from scratch.
pub struct KdTree<'a> {
    /// Original point index of each SoA slot.
    pub perm: &'a mut [u32],
    pub xs: &'a mut [f32],
    pub ys: &'a mut [f32],
    pub zs: &'a mut [f32],
    pub nodes: &'a mut [Node],
    pub n_nodes: usize,
}

impl<'a> KdTree<'a> {
    /// Builds the tree of the first `n` points of `points` (N×3) in `scratch`
    /// (at least [`kdtree_scratch_len`]`(n)` floats); returns it and the unused scratch.
    pub fn build(points: &[f32], n: usize, scratch: &'a mut [f32]) -> (Self, &'a mut [f32]) {
        assert!(
            points.len() >= 3 * n,
            "kdtree: {n} points need {} floats",
            3 * n
        );
        assert!(
            scratch.len() >= kdtree_scratch_len(n),
            "kdtree: scratch too short"
        );
        let (perm_f, rest) = scratch.split_at_mut(n);
        let (xs, rest) = rest.split_at_mut(n);
        let (ys, rest) = rest.split_at_mut(n);
        let (zs, rest) = rest.split_at_mut(n);
        let (nodes_f, rest) = rest.split_at_mut(max_nodes(n) * NODE_F32);
        let perm: &mut [u32] = bytemuck::cast_slice_mut(perm_f);
        let nodes: &mut [Node] = bytemuck::cast_slice_mut(nodes_f);
        for (i, p) in perm.iter_mut().enumerate() {
            *p = i as u32;
        }
        let pt = |i: u32| {
            let i = i as usize;
            [points[3 * i], points[3 * i + 1], points[3 * i + 2]]
        };
        let mut n_nodes = 0usize;
        // Explicit stack of (node, start, end); median splits keep the depth ≤ log2(n)+1.
        let mut stack = [(0u32, 0u32, 0u32); 64];
        let mut top = 0usize;
        if n > 0 {
            n_nodes = 1;
            stack[0] = (0, 0, n as u32);
            top = 1;
        }
        while top > 0 {
            top -= 1;
            let (id, s, e) = stack[top];
            let (s, e) = (s as usize, e as usize);
            let mut lo = [f32::INFINITY; 3];
            let mut hi = [f32::NEG_INFINITY; 3];
            for &i in &perm[s..e] {
                let p = pt(i);
                for a in 0..3 {
                    lo[a] = lo[a].min(p[a]);
                    hi[a] = hi[a].max(p[a]);
                }
            }
            let node = &mut nodes[id as usize];
            node.lo = lo;
            node.hi = hi;
            node.start = s as u32;
            node.end = e as u32;
            node.left = u32::MAX;
            node.right = u32::MAX;
            if e - s <= LEAF || top + 2 > stack.len() {
                perm[s..e].sort_unstable();
                continue;
            }
            let ext = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
            let axis = if ext[0] >= ext[1] && ext[0] >= ext[2] {
                0
            } else if ext[1] >= ext[2] {
                1
            } else {
                2
            };
            let mid = (e - s) / 2;
            perm[s..e].select_nth_unstable_by(mid, |&a, &b| {
                points[3 * a as usize + axis]
                    .total_cmp(&points[3 * b as usize + axis])
                    .then(a.cmp(&b))
            });
            let (l, r) = (n_nodes as u32, n_nodes as u32 + 1);
            n_nodes += 2;
            let node = &mut nodes[id as usize];
            node.left = l;
            node.right = r;
            stack[top] = (r, (s + mid) as u32, e as u32);
            stack[top + 1] = (l, s as u32, (s + mid) as u32);
            top += 2;
        }
        for (slot, &i) in perm.iter().enumerate() {
            let p = pt(i);
            xs[slot] = p[0];
            ys[slot] = p[1];
            zs[slot] = p[2];
        }
        (
            KdTree {
                perm,
                xs,
                ys,
                zs,
                nodes,
                n_nodes,
            },
            rest,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn leaves_partition_the_points_and_boxes_contain_them() {
        let mut rng = Rng::new(5);
        for n in [0usize, 1, 31, 33, 1000, 4097] {
            let pts: Vec<f32> = (0..3 * n).map(|_| rng.uniform()).collect();
            let mut scratch = vec![0f32; kdtree_scratch_len(n)];
            let (t, _) = KdTree::build(&pts, n, &mut scratch);
            let mut seen = vec![0u8; n];
            for node in &t.nodes[..t.n_nodes] {
                if node.is_leaf() {
                    assert!((node.end - node.start) as usize <= LEAF);
                    for s in node.start as usize..node.end as usize {
                        seen[t.perm[s] as usize] += 1;
                        let p = [t.xs[s], t.ys[s], t.zs[s]];
                        assert_eq!(node.box_dist(p), 0.0);
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1));
        }
    }
}
