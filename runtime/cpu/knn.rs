//! Grouping (SPEC §3.2): the k nearest points of each center, sorted by (squared
//! distance, index), the center itself included (distance 0).
//!
//! A KD-tree ([`super::point_kdtree`]) is searched depth first, nearer child first, with a
//! sorted candidate list of length k; a node is skipped only when its box is strictly
//! farther than the current k-th candidate, so ties on distance are resolved by index
//! exactly as a brute-force sort would. Centers are split over the pool in fixed chunks;
//! each center's result depends only on the points, never on the thread count.

use super::point_kdtree::{kdtree_scratch_len, sq_dist, KdTree, Node};
use super::pool::{Pool, SharedMut};

/// Centers per pool task.
const CHUNK: usize = 16;
/// Traversal stack depth (the tree's depth is ≤ log2(n) + 1).
const STACK: usize = 128;

/// Scratch floats [`group_knn`] needs for `n` points, `k` neighbours, `threads` workers.
pub fn knn_scratch_len(n: usize, k: usize, threads: usize) -> usize {
    kdtree_scratch_len(n) + threads.max(1) * per_worker(k)
}

fn per_worker(k: usize) -> usize {
    2 * k + STACK
}

/// For each of the `centers_idx.len()` centers (indices into the first `n` points of
/// `points`, N×3), writes its `k` nearest point indices, sorted by (distance, index),
/// into `out_idx[c·k .. (c+1)·k]`. `k ≤ n`. `scratch`: [`knn_scratch_len`] floats for
/// `pool.threads()`. Panics on short buffers (caller bugs).
pub fn group_knn(
    pool: &Pool,
    points: &[f32],
    n: usize,
    centers_idx: &[u32],
    k: usize,
    out_idx: &mut [u32],
    scratch: &mut [f32],
) {
    let m = centers_idx.len();
    assert!(k <= n && out_idx.len() >= m * k, "knn: {k} of {n} points");
    assert!(
        scratch.len() >= knn_scratch_len(n, k, pool.threads()),
        "knn: scratch too short"
    );
    if m == 0 || k == 0 {
        return;
    }
    let (tree, rest) = KdTree::build(points, n, scratch);
    let tree = &tree;
    let work = SharedMut::new(&mut rest[..pool.threads() * per_worker(k)]);
    let out = SharedMut::new(out_idx);
    pool.run(m.div_ceil(CHUNK), &|task, worker| {
        // SAFETY: each worker owns its scratch slice; each task its rows of `out`.
        let ws = unsafe { work.slice(worker * per_worker(k), per_worker(k)) };
        let (cand_d, rest) = ws.split_at_mut(k);
        let (cand_i, stack) = rest.split_at_mut(k);
        let cand_i: &mut [u32] = bytemuck::cast_slice_mut(cand_i);
        let stack: &mut [u32] = bytemuck::cast_slice_mut(stack);
        let c0 = task * CHUNK;
        let c1 = (c0 + CHUNK).min(m);
        let dst = unsafe { out.slice(c0 * k, (c1 - c0) * k) };
        for (ci, row) in (c0..c1).zip(dst.chunks_exact_mut(k)) {
            let c = centers_idx[ci] as usize;
            let q = [points[3 * c], points[3 * c + 1], points[3 * c + 2]];
            knn_search(tree, q, k, cand_d, cand_i, stack);
            row.copy_from_slice(cand_i);
        }
    });
}

/// The k nearest points of `q` into the lists `cand_d`/`cand_i` (length k), sorted by
/// (squared distance, index). `stack` holds the traversal (≥ 2 × tree depth entries).
pub(crate) fn knn_search(
    tree: &KdTree<'_>,
    q: [f32; 3],
    k: usize,
    cand_d: &mut [f32],
    cand_i: &mut [u32],
    stack: &mut [u32],
) {
    let nodes: &[Node] = &tree.nodes[..tree.n_nodes];
    let mut len = 0usize;
    let mut top = 1usize;
    stack[0] = 0;
    while top > 0 {
        top -= 1;
        let node = &nodes[stack[top] as usize];
        if len == k && node.box_dist(q) > cand_d[k - 1] {
            continue;
        }
        if node.is_leaf() {
            for s in node.start as usize..node.end as usize {
                let d = sq_dist([tree.xs[s], tree.ys[s], tree.zs[s]], q);
                let i = tree.perm[s];
                if len == k && (d > cand_d[k - 1] || (d == cand_d[k - 1] && i > cand_i[k - 1])) {
                    continue;
                }
                // insertion into the sorted list, dropping the last when full
                let mut p = if len == k { k - 1 } else { len };
                if len < k {
                    len += 1;
                }
                while p > 0 && (cand_d[p - 1] > d || (cand_d[p - 1] == d && cand_i[p - 1] > i)) {
                    cand_d[p] = cand_d[p - 1];
                    cand_i[p] = cand_i[p - 1];
                    p -= 1;
                }
                cand_d[p] = d;
                cand_i[p] = i;
            }
        } else {
            let (l, r) = (node.left, node.right);
            let (dl, dr) = (nodes[l as usize].box_dist(q), nodes[r as usize].box_dist(q));
            // push the farther child first so the nearer one is searched first
            let (first, second) = if dl <= dr { (r, l) } else { (l, r) };
            if top + 2 <= stack.len() {
                stack[top] = first;
                stack[top + 1] = second;
                top += 2;
            }
        }
    }
}

/// Brute force: every distance, sorted by (distance, index). For tests and references.
pub fn group_knn_brute(points: &[f32], n: usize, centers_idx: &[u32], k: usize) -> Vec<u32> {
    let p = |i: usize| [points[3 * i], points[3 * i + 1], points[3 * i + 2]];
    let mut out = Vec::with_capacity(centers_idx.len() * k);
    let mut all: Vec<(f32, u32)> = Vec::with_capacity(n);
    for &c in centers_idx {
        all.clear();
        all.extend((0..n).map(|i| (sq_dist(p(i), p(c as usize)), i as u32)));
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        out.extend(all[..k].iter().map(|x| x.1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn tree_search_equals_brute_force_with_ties() {
        let mut rng = Rng::new(21);
        for case in 0..8 {
            let n = [16, 100, 2000, 6000][case % 4];
            let mut pts: Vec<f32> = (0..3 * n).map(|_| rng.uniform()).collect();
            if case >= 4 {
                for v in pts.iter_mut() {
                    *v = (*v * 5.0).floor() * 0.2;
                }
            }
            let centers: Vec<u32> = (0..50).map(|_| rng.below(n as u64) as u32).collect();
            let k = n.min(64);
            for threads in [1, 2] {
                let pool = Pool::new(threads);
                let mut out = vec![0u32; centers.len() * k];
                let mut scratch = vec![0f32; knn_scratch_len(n, k, threads)];
                group_knn(&pool, &pts, n, &centers, k, &mut out, &mut scratch);
                assert_eq!(out, group_knn_brute(&pts, n, &centers, k), "case {case}");
            }
        }
    }
}
