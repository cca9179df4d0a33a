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

/// Most rows one call of [`rows_unless_none_below`] takes.
pub const MAX_ROWS: usize = 64;

/// [`sq_dists_unless_none_below`] of several rows against one tile: for each row `i`,
/// `kept[i]` tells whether its sums were completed into `sums[i]` (bit for bit as
/// [`sq_dists`]), false once every lane's partial sum reached `floors[i]`. The tile is
/// walked in blocks of [`CHECK_EVERY`] dimensions, each block once for all the rows still
/// being summed (four at a time): a tile of wide rows does not fit the L1 cache, one block
/// does, so the tile is read from L2 once per block instead of once per row.
pub fn rows_unless_none_below(
    tile: &[f32],
    rows: &[&[f32]],
    floors: &[[f32; LANES]],
    sums: &mut [[f32; LANES]],
    kept: &mut [bool],
) {
    let count = rows.len();
    let Some(dim) = rows.first().map(|r| r.len()) else {
        return;
    };
    assert!(
        count <= MAX_ROWS
            && tile.len() >= tile_len(dim)
            && rows.iter().all(|r| r.len() == dim)
            && floors.len() >= count
            && sums.len() >= count
            && kept.len() >= count,
        "lanes::rows_unless_none_below: shapes"
    );
    let tile = &tile[..tile_len(dim)];
    #[cfg(target_arch = "x86_64")]
    match super::gemm::isa() {
        // SAFETY: isa() reports only instruction sets this CPU runs.
        super::gemm::Isa::Avx512 if std::arch::is_x86_feature_detected!("fma") => {
            return unsafe { rows_unless_avx512(tile, rows, floors, sums, kept) }
        }
        // SAFETY: as above (Avx2 includes FMA).
        super::gemm::Isa::Avx2 => {
            return unsafe { rows_unless_avx2(tile, rows, floors, sums, kept) }
        }
        _ => {}
    }
    rows_unless::<1, false>(tile, rows, floors, sums, kept)
}

/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn rows_unless_avx512(
    tile: &[f32],
    rows: &[&[f32]],
    floors: &[[f32; LANES]],
    sums: &mut [[f32; LANES]],
    kept: &mut [bool],
) {
    // 4 rows × 4 registers of sums, as sq_dists; half the subtractions on the FMA units.
    rows_unless::<4, true>(tile, rows, floors, sums, kept)
}

/// # Safety
/// The CPU must support AVX2 and FMA ([`super::gemm::Isa::Avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_unless_avx2(
    tile: &[f32],
    rows: &[&[f32]],
    floors: &[[f32; LANES]],
    sums: &mut [[f32; LANES]],
    kept: &mut [bool],
) {
    rows_unless::<1, true>(tile, rows, floors, sums, kept)
}

#[inline(always)]
fn rows_unless<const R: usize, const FMA: bool>(
    tile: &[f32],
    rows: &[&[f32]],
    floors: &[[f32; LANES]],
    sums: &mut [[f32; LANES]],
    kept: &mut [bool],
) {
    let count = rows.len();
    let dim = rows.first().map_or(0, |r| r.len());
    // The rows still being summed, in order.
    let mut active = [0u8; MAX_ROWS];
    for (i, a) in active[..count].iter_mut().enumerate() {
        *a = i as u8;
    }
    let mut live = count;
    // 1, hidden from the compiler, which would otherwise turn `v·1 − c` back into `v − c`.
    let one = std::hint::black_box(1.0f32);
    for s in sums[..count].iter_mut() {
        *s = [0.0; LANES];
    }
    kept[..count].fill(true);
    for start in (0..dim).step_by(CHECK_EVERY) {
        let end = (start + CHECK_EVERY).min(dim);
        let cols = &tile[start * LANES..end * LANES];
        let grouped = live / R * R;
        for g in (0..grouped).step_by(R) {
            let idx: [usize; R] = std::array::from_fn(|r| active[g + r] as usize);
            let mut acc: [[f32; LANES]; R] = std::array::from_fn(|r| sums[idx[r]]);
            let group = std::array::from_fn(|r| &rows[idx[r]][start..end]);
            add_sq_dists_with::<R, FMA>(&mut acc, cols, group, one);
            for r in 0..R {
                sums[idx[r]] = acc[r];
            }
        }
        for &i in &active[grouped..live] {
            let i = i as usize;
            let mut acc = [sums[i]];
            add_sq_dists_with::<1, FMA>(&mut acc, cols, [&rows[i][start..end]], one);
            sums[i] = acc[0];
        }
        // Rows whose every lane reached its floor are dropped (`>=` is false for NaN).
        let mut still = 0;
        for a in 0..live {
            let i = active[a] as usize;
            let mut all_reached = true;
            for (s, f) in sums[i].iter().zip(&floors[i]) {
                all_reached &= *s >= *f;
            }
            if all_reached {
                kept[i] = false;
            } else {
                active[still] = i as u8;
                still += 1;
            }
        }
        live = still;
        if live == 0 {
            return;
        }
    }
}

/// [`add_sq_dists`], with `FMA` the first half of the lanes' differences computed as
/// `v·one − c` in one fused multiply-add (`one` = 1: the exact `v − c` rounded once, the
/// same bits as the subtraction), so that the subtractions and additions do not all queue
/// on the adder units while the multiply units idle. Only where the CPU has FMA (the
/// AVX-512 path): elsewhere `mul_add` would be a library call.
#[inline(always)]
fn add_sq_dists_with<const R: usize, const FMA: bool>(
    acc: &mut [[f32; LANES]; R],
    cols: &[f32],
    rows: [&[f32]; R],
    one: f32,
) {
    if !FMA {
        return add_sq_dists(acc, cols, rows);
    }
    const HALF: usize = LANES / 2;
    for (k, col) in cols.chunks_exact(LANES).enumerate() {
        for r in 0..R {
            let c = rows[r][k];
            let (lo, hi) = acc[r].split_at_mut(HALF);
            for (a, &v) in lo.iter_mut().zip(&col[..HALF]) {
                let d = v.mul_add(one, -c);
                *a += d * d;
            }
            for (a, &v) in hi.iter_mut().zip(&col[HALF..]) {
                let d = v - c;
                *a += d * d;
            }
        }
    }
}

/// [`sq_dists_unless_none_below`] of the lanes of one half of the tile (`upper`: lanes
/// [`LANES`]/2.., else ..[`LANES`]/2): only that half's columns are read, and the other
/// half's lanes come back +∞. For a caller whose other half has nothing to learn (its
/// floors are −∞ because no row there can move): half the memory traffic of the tile.
pub fn sq_dists_unless_none_below_half(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
    upper: bool,
) -> Option<[f32; LANES]> {
    let dim = row.len();
    assert!(
        tile.len() >= tile_len(dim),
        "lanes::sq_dists_unless_none_below_half: shapes"
    );
    let tile = &tile[..tile_len(dim)];
    let first = if upper { LANES / 2 } else { 0 };
    #[cfg(target_arch = "x86_64")]
    match super::gemm::isa() {
        // SAFETY: isa() reports only instruction sets this CPU runs.
        super::gemm::Isa::Avx512 => return unsafe { half_avx512(tile, row, floor, first) },
        // SAFETY: as above.
        super::gemm::Isa::Avx2 => return unsafe { half_avx2(tile, row, floor, first) },
        super::gemm::Isa::Portable => {}
    }
    unless_none_below_half(tile, row, floor, first)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn half_avx512(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
    first: usize,
) -> Option<[f32; LANES]> {
    unless_none_below_half(tile, row, floor, first)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn half_avx2(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
    first: usize,
) -> Option<[f32; LANES]> {
    unless_none_below_half(tile, row, floor, first)
}

#[inline(always)]
fn unless_none_below_half(
    tile: &[f32],
    row: &[f32],
    floor: &[f32; LANES],
    first: usize,
) -> Option<[f32; LANES]> {
    const HALF: usize = LANES / 2;
    let floor = &floor[first..first + HALF];
    let mut acc = [0f32; HALF];
    for (cols, part) in tile
        .chunks(CHECK_EVERY * LANES)
        .zip(row.chunks(CHECK_EVERY))
    {
        for (col, &c) in cols.chunks_exact(LANES).zip(part) {
            for (a, &v) in acc.iter_mut().zip(&col[first..first + HALF]) {
                let d = v - c;
                *a += d * d;
            }
        }
        let mut all_reached = true;
        for (a, f) in acc.iter().zip(floor) {
            all_reached &= *a >= *f;
        }
        if all_reached {
            return None;
        }
    }
    let mut out = [f32::INFINITY; LANES];
    out[first..first + HALF].copy_from_slice(&acc);
    Some(out)
}
