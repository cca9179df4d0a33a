//! Bank search (kernels/bank_search.cu), launched as runtime/cuda/ops/bank_search.rs does,
//! against an exact f64 search and `miad::cpu::bank_search::nearest`:
//! - row_sqnorm_f32 and the re-rank's exact distances: bit-identical with a host model of
//!   their fixed order (per-lane fma, then the xor butterfly);
//! - convert_f32_f16: bit-identical with `half` (round to nearest even; NaN stays NaN);
//! - f32 path (bank_search_f32 + bank_reduce_f32): the exact search's index except
//!   near-ties (second-best within 1e-5 relative of a different row; the GPU test's rule),
//!   distances within 4e-6 relative (the GPU test: 1e-5), the CPU stage's index wherever
//!   the gap exceeds its GEMM-form error, and the same bits for every split plan and
//!   scheduling seed;
//! - bank_reduce_f32 alone: the lexicographic minimum of (distance, index), identical;
//! - f16 path: bank_search_f16 keeps each split's KEEP nearest rows by the approximate
//!   distance of the f16-rounded rows (within the mma rounding); bank_finish_exact equals a
//!   host model bit for bit (threshold, rows re-scored, splits scanned); end to end the
//!   f32 path's index and distance bits on random, clustered, near-duplicate (more
//!   candidates than a split keeps), equidistant, NaN / out-of-f16-range data and the
//!   engine's self-check probes; bank_fast_margin's bound E holds for every measured
//!   |f − e'| and is reached to more than 90 % by a crafted case;
//! - both paths: every split winner is the first of its exact copies (ties to the lower
//!   index at every level), and exact copies of a query give distance 0 and the lowest.

use half::f16;
use miad::cpu::bank_search::{nearest, nearest_scratch_len, BankView};
use miad::cpu::pool::Pool;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same, same_bits, Gen, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[
    (
        "bank_row_sqnorm_and_f16_conversion_match_host",
        norms_convert,
    ),
    (
        "bank_reduce_f32_takes_the_lexicographic_minimum",
        reduce_only,
    ),
    ("bank_search_f32_matches_exact_search", search_f32),
    ("bank_search_f32_ties_duplicates_nan", search_f32_ties),
    ("bank_search_f16_equals_the_f32_path", search_f16),
    (
        "bank_search_f16_equals_the_f32_path_on_near_duplicates",
        search_f16_near_duplicates,
    ),
    ("bank_fast_bound_holds_and_is_tight", fast_bound),
];

// runtime/cuda/ops/bank_search.rs
const F32_TILE_Q: usize = 64;
const F32_TILE_B: usize = 64;
const F16_TILE_Q: usize = 64;
const F16_TILE_B: usize = 128;
const MAX_GRID_Y: usize = 65_535;
const NONE: i32 = i32::MAX;
/// Seeds that run the lowest- (bit 32) or highest-numbered (bit 33) ready thread first:
/// one warp finishes a pipeline step before the others start it, exposing a shared-memory
/// stage that is refilled while still being read.
const RUN_AHEAD: [u64; 2] = [1 << 32 | 1, 2 << 32 | 2];

/// SearchPlan::new: (splits, tiles per split) for about 8 blocks per multiprocessor.
fn plan(nq: usize, nb: usize, f16: bool, sms: usize) -> (usize, usize) {
    let (tq, tb) = if f16 {
        (F16_TILE_Q, F16_TILE_B)
    } else {
        (F32_TILE_Q, F32_TILE_B)
    };
    let target = (8 * sms.max(1))
        .div_ceil(nq.div_ceil(tq))
        .clamp(1, MAX_GRID_Y);
    let b_tiles = nb.div_ceil(tb);
    let tps = b_tiles.div_ceil(target).max(1);
    (b_tiles.div_ceil(tps), tps)
}

fn cfg2(gx: usize, gy: usize, block: u32) -> Cfg {
    let mut c = Cfg::new(gx as u32, block);
    c.grid[1] = gy as u32;
    c
}

/// `x·x` summed as the kernels do: lane l takes columns l, l+32, ... with fma, then the
/// xor butterfly over 32 lanes (every lane ends with the same bits).
fn lane_sum(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    let mut p = [0f32; 32];
    for (l, s) in p.iter_mut().enumerate() {
        for c in (l..n).step_by(32) {
            let t = term(c);
            *s = t.mul_add(t, *s);
        }
    }
    for o in [16, 8, 4, 2, 1] {
        let q = p;
        for l in 0..32 {
            p[l] = q[l] + q[l ^ o];
        }
    }
    p[0]
}

fn f64_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum()
}

/// Exact nearest row per query in f64: (index, distance, distance of the best row whose
/// contents differ from the best one's). Copies of the best row tie exactly in any
/// arithmetic and must go to the lowest index; other rows within 1e-5 relative are
/// near-ties.
fn exact(q: &[f32], bank: &[f32], dim: usize) -> Vec<(usize, f64, f64)> {
    q.chunks(dim)
        .map(|qr| {
            let d: Vec<f64> = bank
                .chunks(dim)
                .map(|br| f64_dist(qr, br))
                .map(|v| if v.is_nan() { f64::INFINITY } else { v })
                .collect();
            let mut bi = 0;
            for (j, &v) in d.iter().enumerate() {
                if v < d[bi] {
                    bi = j;
                }
            }
            let best = &bank[bi * dim..][..dim];
            let sd = (0..d.len())
                .filter(|&j| j != bi && d[j] < f64::INFINITY)
                .filter(|&j| bank[j * dim..][..dim] != *best)
                .map(|j| d[j])
                .fold(f64::INFINITY, f64::min);
            (bi, d[bi], sd)
        })
        .collect()
}

/// A split winner must be the first of its exact copies in the split (copies tie exactly
/// in any arithmetic; ties go to the lower index at every level of the reduction).
fn first_copy(d: &Data, lo: usize, gi: usize, at: &str) -> Result<(), String> {
    let row = |j: usize| &d.bank[j * d.dim..][..d.dim];
    match (lo..gi).find(|&j| row(j) == row(gi)) {
        Some(j) => Err(format!("{at}: winner {gi}, but row {j} is the same")),
        None => Ok(()),
    }
}

/// Copies of query k at offset + k for each offset: exact ties (distance 0) within one
/// thread, across threads/quads, across warps of a block and across splits.
fn plant_copies(d: &mut Data, offsets: &[usize]) {
    let dim = d.dim;
    for k in 0..d.nq() {
        let row = d.q[k * dim..][..dim].to_vec();
        for o in offsets {
            d.bank[(o + k) * dim..][..dim].copy_from_slice(&row);
        }
    }
}

/// Offsets for [`plant_copies`], all copies of a query in different roles: 20+k and
/// 80+k.. in different bank tiles (f32) or warp halves (f16); 80+k and 96+k in the same
/// thread's columns; 100+k in another thread's; 900+k in another split.
const COPIES: [usize; 5] = [900, 100, 96, 80, 20];

fn near_tie(bd: f64, sd: f64) -> bool {
    sd - bd <= 1e-5 * bd
}

/// Normal rows, or clustered rows (64 centres + noise) with queries near bank rows;
/// `dups` adds exact copies of earlier rows and near-copies (one coordinate 1 ulp off).
fn data(nq: usize, nb: usize, dim: usize, clustered: bool, dups: bool, seed: u64) -> Data {
    let mut g = Gen::new(seed);
    let mut bank: Vec<f32>;
    let mut q: Vec<f32>;
    if clustered {
        let centres: Vec<f32> = (0..64 * dim).map(|_| g.normal()).collect();
        bank = Vec::with_capacity(nb * dim);
        for _ in 0..nb {
            let c = g.below(64);
            for d in 0..dim {
                bank.push(centres[c * dim + d] + 0.3 * g.normal());
            }
        }
        q = Vec::with_capacity(nq * dim);
        for _ in 0..nq {
            let b = g.below(nb);
            for d in 0..dim {
                q.push(bank[b * dim + d] + 0.2 * g.normal());
            }
        }
    } else {
        bank = (0..nb * dim).map(|_| g.normal()).collect();
        q = (0..nq * dim).map(|_| g.normal()).collect();
    }
    if dups {
        for i in (7..nb).step_by(5) {
            let j = g.below(i);
            bank.copy_within(j * dim..(j + 1) * dim, i * dim);
            if i % 10 == 2 {
                let c = i * dim + g.below(dim);
                bank[c] = f32::from_bits(bank[c].to_bits() + 1);
            }
        }
        // Some queries equal to a bank row that also appears later (distance 0, a tie).
        for k in (0..nq).step_by(9) {
            let j = g.below(nb);
            q[k * dim..(k + 1) * dim].copy_from_slice(&bank[j * dim..(j + 1) * dim]);
        }
    }
    Data { q, bank, dim }
}

struct Data {
    q: Vec<f32>,
    bank: Vec<f32>,
    dim: usize,
}

impl Data {
    fn nq(&self) -> usize {
        self.q.len() / self.dim
    }
    fn nb(&self) -> usize {
        self.bank.len() / self.dim
    }
}

fn row_sqnorms(x: &[f32], rows: usize, dim: usize, seed: u64) -> Result<Vec<f32>, String> {
    let xb = Buf::from(x);
    let out = Buf::filled(rows, f32::NAN);
    let mut a = Args::new()
        .buf(&xb)
        .buf(&out)
        .val(rows as i32)
        .val(dim as i32);
    sim().launch(
        "row_sqnorm_f32",
        &Cfg::new(rows.div_ceil(8) as u32, 256),
        &mut a,
        seed,
    )?;
    Ok(out.get().to_vec())
}

fn to_f16(x: &[f32], seed: u64) -> Result<Vec<u16>, String> {
    let xb = Buf::from(x);
    let y = Buf::filled(x.len(), 0xabcdu16);
    let mut a = Args::new().buf(&xb).buf(&y).val(x.len() as i64);
    sim().launch(
        "convert_f32_f16",
        &Cfg::new(x.len().div_ceil(256) as u32, 256),
        &mut a,
        seed,
    )?;
    Ok(y.get().to_vec())
}

fn norms_convert() -> Result<(), String> {
    let mut g = Gen::new(5);
    // Rows not a multiple of the 8 rows per block; dims below, at and above one warp's
    // width, not multiples of 32, and the fused features' 1920; one NaN row.
    for (rows, dim) in [(1usize, 1usize), (37, 33), (19, 32), (21, 1920), (9, 100)] {
        let mut x: Vec<f32> = (0..rows * dim).map(|_| 3.0 * g.normal()).collect();
        if rows > 3 {
            x[3 * dim + dim / 2] = f32::NAN;
        }
        let want: Vec<f32> = x.chunks(dim).map(|r| lane_sum(dim, |c| r[c])).collect();
        for_seeds(|s| {
            let got = row_sqnorms(&x, rows, dim, s)?;
            same_bits(&format!("row_sqnorm_f32 {rows} x {dim}"), &got, &want)
        })?;
        // And the CPU stage's norms (summed in order), up to the summation order.
        let mut cpu = vec![0f32; rows];
        miad::cpu::bank_search::sq_norms(&x, dim, &mut cpu);
        close("row_sqnorm_f32 vs sq_norms", &want, &cpu, 1e-6, 2e-6)?;
    }
    // f16 rounding: halfway cases both ways, subnormals, overflow, signed zero, NaN, and a
    // length that is not a multiple of the block.
    let mut x: Vec<f32> = (0..3001).map(|_| g.range(-70000.0, 70000.0)).collect();
    let mut special = vec![
        0.0,
        -0.0,
        1.0 + 1.0 / 2048.0, // halfway, rounds down to even
        1.0 + 3.0 / 2048.0, // halfway, rounds up to even
        65504.0,            // largest f16
        65519.99,           // still rounds to 65504
        65520.0,            // rounds to infinity
        -1e9,               // -inf
        5.960_464_5e-8,     // smallest subnormal
        2.980_232_2e-8,     // half of it: rounds to zero (even)
        4.470_348_4e-8,     // 1.5 units: rounds to 2 units
        6.097_555e-5,       // largest subnormal region
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
    ];
    for i in 0..200 {
        special.push(g.range(-1.0, 1.0) * 2f32.powi(-(i % 30)));
    }
    x[..special.len()].copy_from_slice(&special);
    x[2999] = f32::NAN;
    let want: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
    for_seeds(|s| {
        let got = to_f16(&x, s)?;
        let nan = |b: u16| b & 0x7c00 == 0x7c00 && b & 0x3ff != 0;
        if !nan(got[2999]) {
            return Err(format!("convert_f32_f16: NaN gave {:#06x}", got[2999]));
        }
        let (mut g2, mut w2) = (got.clone(), want.clone());
        g2[2999] = 0;
        w2[2999] = 0;
        same("convert_f32_f16 bits", &g2, &w2)
    })
}

/// Launches bank_reduce_f32 on given partials.
fn reduce(
    pd: &[f32],
    pi: &[i32],
    nq: usize,
    splits: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<i32>), String> {
    let (pdb, pib) = (Buf::from(pd), Buf::from(pi));
    let od = Buf::filled(nq, f32::NAN);
    let oi = Buf::filled(nq, -7i32);
    let mut a = Args::new()
        .buf(&pdb)
        .buf(&pib)
        .val(nq as i32)
        .val(splits as i32)
        .buf(&od)
        .buf(&oi);
    sim().launch(
        "bank_reduce_f32",
        &Cfg::new(nq.div_ceil(128) as u32, 128),
        &mut a,
        seed,
    )?;
    Ok((od.get().to_vec(), oi.get().to_vec()))
}

fn pair_less(da: f32, ia: i32, db: f32, ib: i32) -> bool {
    da < db || (da == db && ia < ib)
}

fn reduce_only() -> Result<(), String> {
    // Distances from a small set (many exact ties), empty splits (INF, none), NaN entries
    // (never taken), ties broken by index in any split order.
    let mut g = Gen::new(17);
    for (nq, splits) in [(300usize, 1usize), (129, 5), (77, 40)] {
        let n = nq * splits;
        let pd: Vec<f32> = (0..n)
            .map(|_| match g.below(10) {
                0 => f32::INFINITY,
                1 => f32::NAN,
                k => (k % 4) as f32 * 0.5,
            })
            .collect();
        let pi: Vec<i32> = (0..n)
            .map(|i| {
                if pd[i] == f32::INFINITY && i % 2 == 0 {
                    NONE
                } else {
                    g.below(1000) as i32
                }
            })
            .collect();
        let mut wd = vec![f32::INFINITY; nq];
        let mut wi = vec![NONE; nq];
        for q in 0..nq {
            for s in 0..splits {
                let (d, i) = (pd[q * splits + s], pi[q * splits + s]);
                if pair_less(d, i, wd[q], wi[q]) {
                    (wd[q], wi[q]) = (d, i);
                }
            }
        }
        for_seeds(|s| {
            let (od, oi) = reduce(&pd, &pi, nq, splits, s)?;
            same(&format!("bank_reduce_f32 {nq} x {splits} index"), &oi, &wi)?;
            same_bits(&format!("bank_reduce_f32 {nq} x {splits} dist"), &od, &wd)
        })?;
    }
    Ok(())
}

/// The f32 path as `BankSearch::search_f32` launches it; returns the partials too.
#[allow(clippy::type_complexity)]
fn run_f32(d: &Data, sms: usize, seed: u64) -> Result<(Vec<f32>, Vec<i32>), String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    let (splits, tps) = plan(nq, nb, false, sms);
    let (q, b) = (Buf::from(&d.q), Buf::from(&d.bank));
    let pd = Buf::filled(nq * splits, f32::NAN);
    let pi = Buf::filled(nq * splits, -3i32);
    let mut a = Args::new()
        .buf(&q)
        .buf(&b)
        .val(nq as i32)
        .val(nb as i32)
        .val(dim as i32)
        .val(tps as i32)
        .buf(&pd)
        .buf(&pi);
    sim().launch(
        "bank_search_f32",
        &cfg2(nq.div_ceil(F32_TILE_Q), splits, 256),
        &mut a,
        seed,
    )?;
    for k in 0..nq {
        for s in 0..splits {
            let lo = s * tps * F32_TILE_B;
            let gi = pi.get()[k * splits + s];
            if gi < lo as i32 || gi as usize >= nb.min(lo + tps * F32_TILE_B) {
                return Err(format!(
                    "query {k} split {s}: winner {gi} outside the split"
                ));
            }
            first_copy(d, lo, gi as usize, &format!("query {k} split {s}"))?;
        }
    }
    reduce(pd.get(), pi.get(), nq, splits, seed)
}

/// Checks one f32-path result against the exact search and the CPU stage.
fn check_f32(d: &Data, od: &[f32], oi: &[i32]) -> Result<(), String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    let want = exact(&d.q, &d.bank, dim);
    let mut cpu_d = vec![0f32; nq];
    let mut cpu_i = vec![0u32; nq];
    let pool = Pool::new(1);
    let mut norms = vec![0f32; nb];
    miad::cpu::bank_search::sq_norms(&d.bank, dim, &mut norms);
    let mut scratch = vec![0f32; nearest_scratch_len(1)];
    let view = BankView::new(&d.bank, &norms, dim);
    nearest(
        &pool,
        &d.q,
        view,
        None,
        &mut cpu_d,
        &mut cpu_i,
        &mut scratch,
    );
    for (k, &(bi, bd, sd)) in want.iter().enumerate() {
        let gi = oi[k];
        if gi < 0 || gi as usize >= nb {
            return Err(format!("query {k}: index {gi} out of range"));
        }
        if !near_tie(bd, sd) && gi as usize != bi {
            return Err(format!(
                "query {k}: index {gi}, exact {bi} (distance {bd}, second {sd})"
            ));
        }
        let rel = (od[k] as f64 - bd).abs() / bd.max(1e-30);
        if rel > 4e-6 && (od[k] as f64 - bd).abs() > 1e-30 {
            return Err(format!(
                "query {k}: distance {} vs exact {bd} (rel {rel:.1e})",
                od[k]
            ));
        }
        // The CPU stage (GEMM form, cancellation error ~ eps · norms): the same index
        // wherever the gap exceeds that error.
        let qn: f64 = d.q[k * dim..][..dim]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum();
        let slack = 1e-5 * bd + 1e-6 * (qn + norms[bi] as f64);
        if sd - bd > slack && cpu_i[k] as i32 != gi {
            return Err(format!(
                "query {k}: index {gi}, CPU nearest {} (gap {:.1e})",
                cpu_i[k],
                sd - bd
            ));
        }
    }
    Ok(())
}

fn search_f32() -> Result<(), String> {
    // (nq, nb, dim, clustered): the GPU test's small shape, ragged tiles, the fused
    // features' dim 1920, a single query and row. Several split plans (sms) each: the
    // bits must not depend on the split count.
    let shapes = [
        (70usize, 333usize, 64usize, true),
        (70, 333, 64, false),
        (130, 1500, 96, true),
        (65, 140, 1920, true),
        (1, 1, 32, false),
    ];
    for (i, &(nq, nb, dim, cl)) in shapes.iter().enumerate() {
        let d = data(nq, nb, dim, cl, i == 2, 100 + i as u64);
        let mut first: Option<(Vec<f32>, Vec<i32>)> = None;
        // (split plan, seed): the small shapes also under the run-ahead orders.
        let mut runs: Vec<(usize, u64)> = [1usize, 132, 5]
            .into_iter()
            .enumerate()
            .map(|(j, sms)| (sms, SEEDS[(i + j) % SEEDS.len()]))
            .collect();
        if i < 2 {
            runs.extend(RUN_AHEAD.map(|o| (132, o)));
        }
        for (sms, seed) in runs {
            let what = format!("{nq} x {nb} x {dim} sms {sms} seed {seed:#x}");
            let (od, oi) = run_f32(&d, sms, seed).map_err(|e| format!("{what}: {e}"))?;
            match &first {
                None => {
                    check_f32(&d, &od, &oi).map_err(|e| format!("{what}: {e}"))?;
                    first = Some((od, oi));
                }
                Some((fd, fi)) => {
                    same(&format!("{what}: index vs the first run"), &oi, fi)?;
                    same_bits(&format!("{what}: distance vs the first run"), &od, fd)?;
                }
            }
        }
    }
    Ok(())
}

fn search_f32_ties() -> Result<(), String> {
    let dim = 64;
    for_seeds(|s| {
        // Exact copies of each query (distance 0, the lowest copy wins; one split per
        // tile with sms 132, one split with sms 1), near-copies and copies elsewhere.
        let mut d = data(10, 1000, dim, false, true, 21 + s);
        plant_copies(&mut d, &COPIES);
        // A NaN row: its distance is NaN and never taken (as the CPU's strict `<`).
        d.bank[5 * dim + 3] = f32::NAN;
        let want: Vec<i32> = (20..30).collect();
        for sms in [132, 1] {
            let (od, oi) = run_f32(&d, sms, s)?;
            same(&format!("exact copies, sms {sms}: index"), &oi, &want)?;
            same_bits("exact copies: distance", &od, &[0.0; 10])?;
            check_f32(&d, &od, &oi)?;
        }
        // All bank rows identical: every distance ties, index 0.
        let mut g = Gen::new(s);
        let row: Vec<f32> = (0..dim).map(|_| g.normal()).collect();
        let same_rows = Data {
            q: (0..7 * dim).map(|_| g.normal()).collect(),
            bank: row.repeat(300),
            dim,
        };
        let (od, oi) = run_f32(&same_rows, 132, s)?;
        same("identical rows: index", &oi, &[0; 7])?;
        check_f32(&same_rows, &od, &oi)
    })
}

/// Candidates kept per (query, split) (runtime/cuda/ops/bank_search.rs FAST_KEEP).
const KEEP: usize = 4;

/// The fast path as `BankSearch::search_f16` launches it (after `to_f16` and
/// `row_sqnorms` of both matrices, with `fast_bank_sq` of the bank).
struct F16Run {
    /// KEEP (f, index) pairs per (query, split), the margins E, the results, the splits
    /// scanned per query and the plan.
    pd: Vec<f32>,
    pi: Vec<i32>,
    margin: Vec<f32>,
    od: Vec<f32>,
    oi: Vec<i32>,
    scanned: Vec<i32>,
    splits: usize,
    tps: usize,
}

/// runtime/cuda/ops/bank_search.rs `fast_bank_sq` (that module needs the `cuda`
/// feature): the largest squared row norm, +inf for a value beyond f16 or not finite.
fn fast_bank_sq(rows: &[f32], sq_norms: &[f32]) -> f32 {
    let fits = rows.iter().all(|v| v.abs() <= 65504.0) && sq_norms.iter().all(|v| v.is_finite());
    if !fits {
        return f32::INFINITY;
    }
    sq_norms.iter().fold(0.0f32, |m, &v| m.max(v))
}

fn margins(d: &Data, qn: &[f32], bank_sq: f32, seed: u64) -> Result<Vec<f32>, String> {
    let nq = d.nq();
    let (q, qnb) = (Buf::from(&d.q), Buf::from(qn));
    let m = Buf::filled(nq, f32::NAN);
    let mut a = Args::new()
        .buf(&q)
        .buf(&qnb)
        .val(nq as i32)
        .val(d.dim as i32)
        .val(bank_sq)
        .buf(&m);
    sim().launch(
        "bank_fast_margin",
        &Cfg::new(nq.div_ceil(8) as u32, 256),
        &mut a,
        seed,
    )?;
    Ok(m.get().to_vec())
}

fn run_f16(d: &Data, sms: usize, seed: u64) -> Result<F16Run, String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    let (splits, tps) = plan(nq, nb, true, sms);
    let q16 = to_f16(&d.q, seed)?;
    let b16 = to_f16(&d.bank, seed)?;
    let qn = row_sqnorms(&d.q, nq, dim, seed)?;
    let bn = row_sqnorms(&d.bank, nb, dim, seed)?;
    let bank_sq = fast_bank_sq(&d.bank, &bn);
    let margin = margins(d, &qn, bank_sq, seed)?;
    let (q16, b16, qn, bn) = (
        Buf::from(&q16),
        Buf::from(&b16),
        Buf::from(&qn),
        Buf::from(&bn),
    );
    let pd = Buf::filled(nq * splits * KEEP, f32::NAN);
    let pi = Buf::filled(nq * splits * KEEP, -3i32);
    let mut a = Args::new()
        .buf(&q16)
        .buf(&b16)
        .buf(&qn)
        .buf(&bn)
        .val(nq as i32)
        .val(nb as i32)
        .val(dim as i32)
        .val(tps as i32)
        .buf(&pd)
        .buf(&pi);
    sim().launch(
        "bank_search_f16",
        &cfg2(nq.div_ceil(F16_TILE_Q), splits, 128),
        &mut a,
        seed,
    )?;
    let (od, oi, scanned) = finish_launch(d, pd.get(), pi.get(), &margin, splits, tps, seed)?;
    Ok(F16Run {
        pd: pd.get().to_vec(),
        pi: pi.get().to_vec(),
        margin,
        od,
        oi,
        scanned,
        splits,
        tps,
    })
}

#[allow(clippy::type_complexity)]
fn finish_launch(
    d: &Data,
    pd: &[f32],
    pi: &[i32],
    margin: &[f32],
    splits: usize,
    tps: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<i32>, Vec<i32>), String> {
    let nq = d.nq();
    let (q, b) = (Buf::from(&d.q), Buf::from(&d.bank));
    let (pdb, pib, mb) = (Buf::from(pd), Buf::from(pi), Buf::from(margin));
    let od = Buf::filled(nq, f32::NAN);
    let oi = Buf::filled(nq, -5i32);
    let sc = Buf::filled(nq, -9i32);
    let mut a = Args::new()
        .buf(&q)
        .buf(&b)
        .val(d.dim as i32)
        .buf(&pdb)
        .buf(&pib)
        .buf(&mb)
        .val(nq as i32)
        .val(d.nb() as i32)
        .val(splits as i32)
        .val((tps * F16_TILE_B) as i32)
        .buf(&od)
        .buf(&oi)
        .buf(&sc);
    sim().launch(
        "bank_finish_exact",
        &Cfg::new(nq.div_ceil(8) as u32, 256),
        &mut a,
        seed,
    )?;
    Ok((od.get().to_vec(), oi.get().to_vec(), sc.get().to_vec()))
}

/// e' of the f32 path: (q_k - b_k)^2 summed in k order with fma from 0.
fn f32_path_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |s, (x, y)| {
        let d = x - y;
        d.mul_add(d, s)
    })
}

/// Host model of bank_finish_exact: (distance, index, splits scanned) per query.
fn finish_model(d: &Data, r: &F16Run) -> Vec<(f32, i32, i32)> {
    let (dim, nb, splits) = (d.dim, d.nb(), r.splits);
    (0..d.nq())
        .map(|k| {
            let at = |s: usize, j: usize| {
                let c = (k * splits + s) * KEEP + j;
                (r.pd[c], r.pi[c])
            };
            let fmin = (0..splits)
                .map(|s| at(s, 0).0)
                .fold(f32::INFINITY, f32::min);
            let thr = fmin as f64 + 2.0 * r.margin[k] as f64;
            let scan_all = thr.is_nan() || thr == f64::INFINITY;
            let complete = |s: usize| !scan_all && at(s, KEEP - 1).0 as f64 > thr;
            let qr = &d.q[k * dim..][..dim];
            let (mut bd, mut bi) = (f32::INFINITY, NONE);
            let mut take = |e: f32, i: i32| {
                if pair_less(e, i, bd, bi) {
                    (bd, bi) = (e, i);
                }
            };
            let mut scanned = 0;
            for s in 0..splits {
                if complete(s) {
                    for j in 0..KEEP {
                        let (f, i) = at(s, j);
                        if f as f64 <= thr && i >= 0 && (i as usize) < nb {
                            take(f32_path_dist(qr, &d.bank[i as usize * dim..][..dim]), i);
                        }
                    }
                } else {
                    scanned += 1;
                    let lo = s * r.tps * F16_TILE_B;
                    for i in lo..nb.min(lo + r.tps * F16_TILE_B) {
                        take(f32_path_dist(qr, &d.bank[i * dim..][..dim]), i as i32);
                    }
                }
            }
            (bd, bi, scanned)
        })
        .collect()
}

fn check_finish(d: &Data, r: &F16Run, what: &str) -> Result<(), String> {
    let want = finish_model(d, r);
    let wi: Vec<i32> = want.iter().map(|w| w.1).collect();
    let wd: Vec<f32> = want.iter().map(|w| w.0).collect();
    let ws: Vec<i32> = want.iter().map(|w| w.2).collect();
    same(&format!("{what}: finish index"), &r.oi, &wi)?;
    same_bits(&format!("{what}: finish distance"), &r.od, &wd)?;
    same(&format!("{what}: finish splits scanned"), &r.scanned, &ws)
}

/// The fast distance of the f16-rounded rows as the emulator computes it (exact products,
/// f32 norms; the mma's rounding is within `tol` of it).
struct Approx {
    q16: Vec<f64>,
    b16: Vec<f64>,
    qn: Vec<f32>,
    bn: Vec<f32>,
}

impl Approx {
    fn new(d: &Data) -> Approx {
        let h = |v: &f32| f16::from_f32(*v).to_f64();
        Approx {
            q16: d.q.iter().map(h).collect(),
            b16: d.bank.iter().map(h).collect(),
            qn: d
                .q
                .chunks(d.dim)
                .map(|r| lane_sum(d.dim, |c| r[c]))
                .collect(),
            bn: d
                .bank
                .chunks(d.dim)
                .map(|r| lane_sum(d.dim, |c| r[c]))
                .collect(),
        }
    }
    fn dist(&self, dim: usize, k: usize, j: usize) -> f64 {
        let dot: f64 = (0..dim)
            .map(|c| self.q16[k * dim + c] * self.b16[j * dim + c])
            .sum();
        (self.qn[k] as f64 + self.bn[j] as f64 - 2.0 * dot).max(0.0)
    }
}

/// Checks bank_search_f16's kept lists against the approximate distance of the f16-rounded
/// rows within the tensor cores' rounding (one f32 rounding of the accumulator per k16
/// step, bounded by 4e-7 · (norms) · sqrt(dim / 16); the emulator's largest error is about
/// a quarter of it): ascending (distance, index) pairs inside the split, and no row of the
/// split left out that is clearly below the last kept one.
fn check_kept(d: &Data, r: &F16Run, ap: &Approx, what: &str) -> Result<(), String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    for k in 0..nq {
        let tol = 4e-7 * (ap.qn[k] as f64 + 1.0) * (dim as f64 / 16.0).sqrt();
        for s in 0..r.splits {
            let lo = s * r.tps * F16_TILE_B;
            let hi = nb.min(lo + r.tps * F16_TILE_B);
            let at = format!("{what}: query {k} split {s} ({lo}..{hi})");
            let o = (k * r.splits + s) * KEEP;
            let (ld, li) = (&r.pd[o..o + KEEP], &r.pi[o..o + KEEP]);
            let n_kept = KEEP.min(hi - lo);
            for j in 0..KEEP {
                if j >= n_kept {
                    if ld[j] != f32::INFINITY || li[j] != NONE {
                        return Err(format!(
                            "{at}: entry {j} ({}, {}) of a short split",
                            ld[j], li[j]
                        ));
                    }
                    continue;
                }
                if li[j] < lo as i32 || li[j] >= hi as i32 {
                    return Err(format!("{at}: kept row {} outside the split", li[j]));
                }
                if j > 0 && !pair_less(ld[j - 1], li[j - 1], ld[j], li[j]) {
                    return Err(format!("{at}: kept list not ascending: {ld:?} {li:?}"));
                }
                let t = tol + 4e-7 * ap.bn[li[j] as usize] as f64;
                let ad = ap.dist(dim, k, li[j] as usize);
                if (ld[j] as f64 - ad).abs() > t {
                    return Err(format!(
                        "{at}: kept {} at {} vs {ad} (tolerance {t:.1e})",
                        li[j], ld[j]
                    ));
                }
            }
            let last = ap.dist(dim, k, li[n_kept - 1] as usize);
            for j in lo..hi {
                if !li[..n_kept].contains(&(j as i32)) {
                    let t =
                        tol + 4e-7 * (ap.bn[j] as f64).max(ap.bn[li[n_kept - 1] as usize] as f64);
                    if ap.dist(dim, k, j) < last - 2.0 * t {
                        return Err(format!("{at}: row {j} left out, below the last kept"));
                    }
                }
            }
            first_copy(d, lo, li[0] as usize, &at)?;
        }
    }
    Ok(())
}

/// The fast path end to end equals the f32 path (index and distance bits), its finish
/// equals the host model, and the kept lists are right. Returns the queries that scanned.
fn check_fast(d: &Data, sms: usize, seed: u64, what: &str) -> Result<usize, String> {
    let r = run_f16(d, sms, seed).map_err(|e| format!("{what}: {e}"))?;
    check_kept(d, &r, &Approx::new(d), what)?;
    check_finish(d, &r, what)?;
    let (fd, fi) = run_f32(d, sms, seed).map_err(|e| format!("{what}: {e}"))?;
    same(
        &format!("{what}: fast path index vs the f32 path"),
        &r.oi,
        &fi,
    )?;
    same_bits(
        &format!("{what}: fast path distance vs the f32 path"),
        &r.od,
        &fd,
    )?;
    Ok(r.scanned.iter().filter(|&&s| s > 0).count())
}

/// The self-check's probes (runtime/cuda/stages/bank_search.rs): bank row j·7919 mod n
/// plus noise of 0.5.
fn self_check_probes(nq: usize, nb: usize, dim: usize, seed: u64) -> Data {
    let mut d = data(1, nb, dim, true, false, seed);
    let mut g = Gen::new(seed ^ 0x5e1f);
    d.q = (0..nq)
        .flat_map(|j| {
            let row = d.bank[(j * 7919 % nb) * dim..][..dim].to_vec();
            row.into_iter()
                .map(|v| v + 0.5 * g.normal())
                .collect::<Vec<_>>()
        })
        .collect();
    d
}

/// Groups of `size` rows f16 cannot tell apart (copies of one row with values moved by 1
/// to 3 f32 ulps, and exact copies) at every `stride`-th row from `at`, and queries equal
/// to a group's rows: more rows within the bound than a split keeps.
fn plant_near_duplicates(d: &mut Data, groups: usize, size: usize, at: usize, stride: usize) {
    let dim = d.dim;
    let mut g = Gen::new(7 + groups as u64);
    for grp in 0..groups {
        let src = (at + grp * stride * size) % d.nb();
        let row = d.bank[src * dim..][..dim].to_vec();
        for m in 1..size {
            let dst = (src + m * stride) % d.nb();
            let out = &mut d.bank[dst * dim..][..dim];
            out.copy_from_slice(&row);
            if m % 3 != 0 {
                let c = g.below(dim);
                out[c] = f32::from_bits(out[c].to_bits() + m as u32 % 4);
            }
        }
        let k = grp * 3 % d.nq();
        d.q[k * dim..][..dim].copy_from_slice(&row);
    }
}

fn search_f16() -> Result<(), String> {
    // (nq, nb, dim, clustered, sms): ragged tiles (nb not a multiple of 128, nq of 64),
    // many splits (sms 132) and one split (sms 1), the fused features' dim 1920.
    let shapes = [
        (70usize, 333usize, 64usize, true, 132usize),
        (70, 333, 64, false, 1),
        (130, 1500, 96, true, 132),
        (65, 300, 1920, true, 132),
    ];
    for (i, &(nq, nb, dim, cl, sms)) in shapes.iter().enumerate() {
        let d = data(nq, nb, dim, cl, i == 2, 200 + i as u64);
        // Schedules (seeds, run-ahead orders) on the small shapes; the large ones, for
        // the tile and split arithmetic, once (time).
        let (seeds, orders): (&[u64], &[u64]) = if i < 2 {
            (&SEEDS, &RUN_AHEAD)
        } else {
            (&SEEDS[..1], &[])
        };
        for s in seeds.iter().chain(orders).copied() {
            let what = format!("{nq} x {nb} x {dim} sms {sms} seed {s:#x}");
            check_fast(&d, sms, s, &what)?;
        }
    }
    // Exact copies of each query (the GPU test has 100+k and 900+k): the lowest copy, in
    // every split (sms 132: one tile each) and with one split (sms 1).
    let dim = 64;
    let mut d = data(10, 1000, dim, false, false, 21);
    plant_copies(&mut d, &COPIES);
    for_seeds(|s| {
        for sms in [132, 1] {
            let what = format!("f16 exact copies, sms {sms}");
            check_fast(&d, sms, s, &what)?;
            let r = run_f16(&d, sms, s)?;
            same(&what, &r.oi, &(20..30).collect::<Vec<_>>())?;
            same_bits(&what, &r.od, &[0.0; 10])?;
        }
        Ok(())
    })?;
    // The engine's self-check probes.
    let d = self_check_probes(60, 700, 128, 77);
    check_fast(&d, 132, SEEDS[0], "self-check probes")?;
    Ok(())
}

/// Near-duplicate banks: groups larger than a split's kept list (the split is then
/// scanned exactly, and must be), groups spread over splits, rows equidistant from a query.
fn search_f16_near_duplicates() -> Result<(), String> {
    let dim = 64;
    // Groups of 9 rows 1 apart (mostly in one split: it cannot keep them all) and 9 rows
    // 130 apart (one per tile, spread over several splits).
    for (stride, sms) in [(1usize, 132usize), (1, 1), (130, 132), (130, 1)] {
        let mut d = data(24, 1300, dim, true, true, 300 + stride as u64);
        plant_near_duplicates(&mut d, 8, 9, 5, stride);
        // Rows equidistant from query 1: q with coordinate c at 1, and rows 1.25 / 0.75.
        let c = 5;
        d.q[dim + c] = 1.0;
        for (j, v) in [(600usize, 1.25f32), (601, 0.75)] {
            let row = d.q[dim..2 * dim].to_vec();
            d.bank[j * dim..][..dim].copy_from_slice(&row);
            d.bank[j * dim + c] = v;
        }
        let what = format!("near-duplicates, stride {stride}, sms {sms}");
        let scanning = check_fast(&d, sms, SEEDS[1], &what)?;
        let r = run_f16(&d, sms, SEEDS[1])?;
        if r.oi[1] != 600 {
            return Err(format!(
                "{what}: equidistant rows gave {}, not 600",
                r.oi[1]
            ));
        }
        if stride == 1 && scanning == 0 {
            return Err(format!(
                "{what}: no query scanned a split (the groups should force it)"
            ));
        }
        eprintln!(
            "{what}: {scanning} of {} queries scanned a split exactly",
            d.nq()
        );
    }
    // A bank value beyond f16's range, a query with NaN and one with a huge value: no
    // bound, every split scanned, still the f32 path's answer.
    let mut d = data(12, 400, dim, true, false, 41);
    d.q[3 * dim + 2] = f32::NAN;
    d.q[5 * dim + 7] = 1e6;
    let r = run_f16(&d, 132, SEEDS[0])?;
    for k in [3usize, 5] {
        if r.margin[k] != f32::INFINITY || r.scanned[k] as usize != r.splits {
            return Err(format!(
                "query {k}: margin {} scanned {}",
                r.margin[k], r.scanned[k]
            ));
        }
    }
    // The NaN query: every distance NaN, none taken (the f32 path's (inf, none)).
    if r.oi[3] != NONE || r.od[3] != f32::INFINITY {
        return Err(format!("NaN query: ({}, {})", r.od[3], r.oi[3]));
    }
    d.q[3 * dim + 2] = 0.0;
    check_fast(&d, 132, SEEDS[0], "an out-of-range query")?;
    d.bank[17 * dim] = 70_000.0;
    let r = run_f16(&d, 132, SEEDS[0])?;
    same(
        "bank beyond f16: every split scanned",
        &r.scanned,
        &[r.splits as i32; 12],
    )?;
    check_fast(&d, 132, SEEDS[0], "bank beyond f16")?;
    Ok(())
}

/// The bound: |f − e'| ≤ E for the kernel's kept distances and for every (query, row) pair
/// of the emulator's model, on random, clustered and offset data of several widths; and a
/// crafted case where the error reaches more than 90 % of E (every value just below an f16
/// rounding midpoint, all errors of one sign).
fn fast_bound() -> Result<(), String> {
    let mut worst = 0f64;
    for (i, &(nq, nb, dim, cl, offset)) in [
        (20usize, 200usize, 64usize, false, 0f32),
        (20, 200, 96, true, 0.0),
        (16, 150, 1920, true, 0.0),
        (16, 150, 256, false, 30.0),
    ]
    .iter()
    .enumerate()
    {
        let mut d = data(nq, nb, dim, cl, false, 500 + i as u64);
        d.q.iter_mut()
            .chain(d.bank.iter_mut())
            .for_each(|v| *v += offset);
        let r = run_f16(&d, 132, SEEDS[0])?;
        let ap = Approx::new(&d);
        for k in 0..nq {
            let qr = &d.q[k * dim..][..dim];
            let e_bound = r.margin[k] as f64;
            let mut check = |f: f64, j: usize, src: &str| -> Result<(), String> {
                let e = f32_path_dist(qr, &d.bank[j * dim..][..dim]) as f64;
                let err = (f - e).abs();
                worst = worst.max(err / e_bound);
                if err.is_nan() || err > e_bound {
                    return Err(format!("{dim}: query {k} row {j} ({src}): |f - e'| = {err:.3e} > E = {e_bound:.3e}"));
                }
                Ok(())
            };
            for c in 0..r.splits * KEEP {
                let (f, j) = (r.pd[k * r.splits * KEEP + c], r.pi[k * r.splits * KEEP + c]);
                if j != NONE {
                    check(f as f64, j as usize, "kernel")?;
                }
            }
            for j in 0..nb {
                check(ap.dist(dim, k, j), j, "model")?;
            }
        }
    }
    eprintln!("fast bound: largest |f - e'| / E on random data {worst:.3e}");
    // Near the bound: q = b, every value 1 + 2^-11 − 2^-20 (rounds down to 1 in f16); a
    // narrow row, where the accumulation and f32 terms of E are small.
    let dim = 64;
    let v = 1.0 + 2f32.powi(-11) - 2f32.powi(-20);
    let d = Data {
        q: vec![v; dim],
        bank: vec![v; 3 * dim],
        dim,
    };
    let r = run_f16(&d, 1, SEEDS[0])?;
    let (f, e) = (r.pd[0] as f64, f32_path_dist(&d.q, &d.bank[..dim]) as f64);
    let ratio = (f - e).abs() / r.margin[0] as f64;
    eprintln!("fast bound: crafted case |f - e'| / E = {ratio:.4}");
    if !(ratio <= 1.0 && ratio > 0.9) {
        return Err(format!(
            "crafted case: |f - e'| / E = {ratio} (f {f}, e' {e}, E {})",
            r.margin[0]
        ));
    }
    same("crafted case: exact answer", &r.oi, &[0])
}
