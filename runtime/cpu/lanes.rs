//! Squared Euclidean distances summed in order, [`LANES`] rows at a time.
//!
//! `Σ_k (a_k − b_k)²` summed from k = 0 with every subtraction, product and addition
//! rounded on its own is what the coreset (SPEC §6) and the re-weighting's neighbours
//! (SPEC §7) are defined with. One such sum is a chain of dependent additions; here the
//! lanes of a vector are rows instead: a block of [`LANES`] rows is stored
//! dimension-major (a "tile", [`to_tile`]) and one instruction advances all of their
//! sums by one term, each lane doing exactly the scalar operations of its own row. The
//! result is bit-identical to the scalar sum, on every instruction set.

/// Rows per tile.
pub const LANES: usize = 64;

/// Floats of one tile of rows of `dim` values.
pub fn tile_len(dim: usize) -> usize {
    LANES * dim
}

/// Writes `rows` (at most [`LANES`] rows of `dim` values, row-major) into `tile`
/// dimension-major (lane fastest); the lanes past the last row are zero.
pub fn to_tile(rows: &[f32], dim: usize, tile: &mut [f32]) {
    gather_tile(rows.chunks_exact(dim), dim, tile)
}

/// [`to_tile`] of rows that need not be adjacent (at most [`LANES`] rows of `dim`
/// values).
pub fn gather_tile<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize, tile: &mut [f32]) {
    assert!(tile.len() >= tile_len(dim), "gather_tile: shapes");
    let mut valid = 0;
    for (l, row) in rows.enumerate() {
        assert!(l < LANES && row.len() == dim, "gather_tile: shapes");
        for (j, &v) in row.iter().enumerate() {
            tile[j * LANES + l] = v;
        }
        valid = l + 1;
    }
    for col in tile[..tile_len(dim)].chunks_exact_mut(LANES) {
        col[valid..].fill(0.0);
    }
}

/// For each row `r` of `rows` (`rows.len() / dim` rows of `dim` values, row-major) and
/// each lane `l` of `tile`: `out[r][l]` = the ordered squared distance between the lane's
/// row and row `r` (bit-identical to `Σ (a − b)²` summed in order, either way round).
pub fn sq_dists(tile: &[f32], rows: &[f32], dim: usize, out: &mut [[f32; LANES]]) {
    let count = rows.len() / dim;
    assert!(
        tile.len() >= tile_len(dim) && out.len() >= count,
        "lanes::sq_dists: shapes"
    );
    let tile = &tile[..tile_len(dim)];
    #[cfg(target_arch = "x86_64")]
    match super::gemm::isa() {
        // SAFETY: isa() reports only instruction sets this CPU runs.
        super::gemm::Isa::Avx512 => return unsafe { sq_dists_avx512(tile, rows, dim, out) },
        // SAFETY: as above.
        super::gemm::Isa::Avx2 => return unsafe { sq_dists_avx2(tile, rows, dim, out) },
        super::gemm::Isa::Portable => {}
    }
    sq_dists_in_groups::<1>(tile, rows, dim, out)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sq_dists_avx512(tile: &[f32], rows: &[f32], dim: usize, out: &mut [[f32; LANES]]) {
    // 4 rows × 4 registers of sums: 16 of the 32 vector registers.
    sq_dists_in_groups::<4>(tile, rows, dim, out)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sq_dists_avx2(tile: &[f32], rows: &[f32], dim: usize, out: &mut [[f32; LANES]]) {
    // One row: 8 of the 16 registers hold its sums.
    sq_dists_in_groups::<1>(tile, rows, dim, out)
}

/// Dimensions summed between two tests of [`sq_dists_unless_none_below`].
const CHECK_EVERY: usize = 32;

/// The ordered squared distances between `row` (`dim` values) and each lane of `tile`,
/// bit for bit as [`sq_dists`] computes them, or `None` as soon as every lane's partial
/// sum has reached its `floor`. Exact: the terms are never negative and rounding is
/// monotone, so a partial sum never exceeds the full sum, and no lane's full distance can
/// then be below its floor (a NaN partial sum never reaches a floor: that lane is summed
/// to the end). The greedy coreset uses it to drop a tile of rows none of which the new
/// centre can come closer to, usually long before the last dimension.
pub fn sq_dists_unless_none_below(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
) -> Option<[f32; LANES]> {
    let dim = row.len();
    assert!(
        tile.len() >= tile_len(dim),
        "lanes::sq_dists_unless_none_below: shapes"
    );
    let tile = &tile[..tile_len(dim)];
    #[cfg(target_arch = "x86_64")]
    match super::gemm::isa() {
        // SAFETY: isa() reports only instruction sets this CPU runs.
        super::gemm::Isa::Avx512 => return unsafe { unless_none_below_avx512(tile, row, floor) },
        // SAFETY: as above.
        super::gemm::Isa::Avx2 => return unsafe { unless_none_below_avx2(tile, row, floor) },
        super::gemm::Isa::Portable => {}
    }
    unless_none_below(tile, row, floor)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn unless_none_below_avx512(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
) -> Option<[f32; LANES]> {
    unless_none_below(tile, row, floor)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unless_none_below_avx2(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
) -> Option<[f32; LANES]> {
    unless_none_below(tile, row, floor)
}

#[inline(always)]
fn unless_none_below(tile: &[f32], row: &[f32], floor: &[f32; LANES]) -> Option<[f32; LANES]> {
    let mut acc = [[0f32; LANES]];
    for (cols, part) in tile
        .chunks(CHECK_EVERY * LANES)
        .zip(row.chunks(CHECK_EVERY))
    {
        add_sq_dists(&mut acc, cols, [part]);
        // Every lane tested, no early exit (one vector compare per register). `>=` is
        // false for NaN: such a lane keeps the tile going.
        let mut all_reached = true;
        for (a, f) in acc[0].iter().zip(floor) {
            all_reached &= *a >= *f;
        }
        if all_reached {
            return None;
        }
    }
    Some(acc[0])
}

/// `R` rows at a time (each tile column loaded once for all of them), the rest one by one.
#[inline(always)]
fn sq_dists_in_groups<const R: usize>(
    tile: &[f32],
    rows: &[f32],
    dim: usize,
    out: &mut [[f32; LANES]],
) {
    let count = rows.len() / dim;
    let grouped = count / R * R;
    for g in (0..grouped).step_by(R) {
        let group: [&[f32]; R] = std::array::from_fn(|r| &rows[(g + r) * dim..(g + r + 1) * dim]);
        let sums = group_sq_dists(tile, group);
        out[g..g + R].copy_from_slice(&sums);
    }
    for r in grouped..count {
        out[r] = group_sq_dists(tile, [&rows[r * dim..(r + 1) * dim]])[0];
    }
}

#[inline(always)]
fn group_sq_dists<const R: usize>(tile: &[f32], rows: [&[f32]; R]) -> [[f32; LANES]; R] {
    let mut acc = [[0f32; LANES]; R];
    add_sq_dists(&mut acc, tile, rows);
    acc
}

/// Adds to `acc` the terms of the tile columns `cols` (dimension-major, [`LANES`] per
/// dimension) against the same dimensions of each row, in order.
#[inline(always)]
fn add_sq_dists<const R: usize>(acc: &mut [[f32; LANES]; R], cols: &[f32], rows: [&[f32]; R]) {
    for (k, col) in cols.chunks_exact(LANES).enumerate() {
        for r in 0..R {
            let c = rows[r][k];
            for (a, &v) in acc[r].iter_mut().zip(col) {
                let d = v - c;
                *a += d * d;
            }
        }
    }
}
