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
//! - f16 path: each split winner of bank_search_f16 is the split's nearest row by the
//!   approximate distance of the f16-rounded rows (within the mma rounding), and
//!   bank_rerank_f32 returns the exact nearest of the `rerank` best winners, bit-identical
//!   with a host model; end to end the exact index except near-ties (the GPU test asks
//!   >= 99.9% agreement);
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
    ("bank_search_f16_and_rerank_match_exact_search", search_f16),
    ("bank_rerank_f32_selects_the_best_winners", rerank_only),
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

/// The fast path as `BankSearch::search_f16` launches it (after `to_f16` and
/// `row_sqnorms` of both matrices). Returns (partials d, i, out d, i, splits, tps).
struct F16Run {
    pd: Vec<f32>,
    pi: Vec<i32>,
    od: Vec<f32>,
    oi: Vec<i32>,
    splits: usize,
    tps: usize,
}

fn run_f16(d: &Data, sms: usize, rerank: usize, seed: u64) -> Result<F16Run, String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    let (splits, tps) = plan(nq, nb, true, sms);
    let q16 = to_f16(&d.q, seed)?;
    let b16 = to_f16(&d.bank, seed)?;
    let qn = row_sqnorms(&d.q, nq, dim, seed)?;
    let bn = row_sqnorms(&d.bank, nb, dim, seed)?;
    let (q16, b16, qn, bn) = (
        Buf::from(&q16),
        Buf::from(&b16),
        Buf::from(&qn),
        Buf::from(&bn),
    );
    let pd = Buf::filled(nq * splits, f32::NAN);
    let pi = Buf::filled(nq * splits, -3i32);
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
    let (od, oi) = rerank_launch(d, pd.get(), pi.get(), splits, rerank, seed)?;
    Ok(F16Run {
        pd: pd.get().to_vec(),
        pi: pi.get().to_vec(),
        od,
        oi,
        splits,
        tps,
    })
}

fn rerank_launch(
    d: &Data,
    pd: &[f32],
    pi: &[i32],
    splits: usize,
    rerank: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<i32>), String> {
    let nq = d.nq();
    let (q, b) = (Buf::from(&d.q), Buf::from(&d.bank));
    let (pdb, pib) = (Buf::from(pd), Buf::from(pi));
    let od = Buf::filled(nq, f32::NAN);
    let oi = Buf::filled(nq, -5i32);
    let mut a = Args::new()
        .buf(&q)
        .buf(&b)
        .val(d.dim as i32)
        .buf(&pdb)
        .buf(&pib)
        .val(nq as i32)
        .val(splits as i32)
        .val(rerank as i32)
        .buf(&od)
        .buf(&oi);
    sim().launch(
        "bank_rerank_f32",
        &Cfg::new(nq.div_ceil(8) as u32, 256),
        &mut a,
        seed,
    )?;
    Ok((od.get().to_vec(), oi.get().to_vec()))
}

/// Host model of bank_rerank_f32: the `rerank` lexicographically smallest (approximate
/// distance, index) winners (NaN never), re-scored in the kernel's exact f32 order.
fn rerank_model(d: &Data, pd: &[f32], pi: &[i32], splits: usize, rerank: usize) -> Vec<(f32, i32)> {
    let dim = d.dim;
    (0..d.nq())
        .map(|k| {
            let mut c: Vec<(f32, i32)> = (0..splits)
                .map(|s| (pd[k * splits + s], pi[k * splits + s]))
                .filter(|(x, i)| !x.is_nan() && *i != NONE)
                .collect();
            c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (mut bd, mut bi) = (f32::INFINITY, NONE);
            for &(_, i) in c.iter().take(rerank) {
                let (qr, br) = (&d.q[k * dim..][..dim], &d.bank[i as usize * dim..][..dim]);
                let s = lane_sum(dim, |c| qr[c] - br[c]);
                if pair_less(s, i, bd, bi) {
                    (bd, bi) = (s, i);
                }
            }
            (bd, bi)
        })
        .collect()
}

fn check_rerank(d: &Data, r: &F16Run, rerank: usize, what: &str) -> Result<(), String> {
    let want = rerank_model(d, &r.pd, &r.pi, r.splits, rerank);
    let (wd, wi): (Vec<f32>, Vec<i32>) = want.into_iter().unzip();
    same(&format!("{what}: rerank index"), &r.oi, &wi)?;
    same_bits(&format!("{what}: rerank distance"), &r.od, &wd)
}

/// Checks bank_search_f16's split winners against the approximate distance of the
/// f16-rounded rows (exact products, f32 norms) within the tensor cores' rounding: one f32
/// rounding of the accumulator per k16 step, bounded by 4e-7 · (norms) · sqrt(dim / 16)
/// (the emulator's largest error is about a quarter of it).
fn check_winners(d: &Data, r: &F16Run, what: &str) -> Result<(), String> {
    let (nq, nb, dim) = (d.nq(), d.nb(), d.dim);
    let h = |v: &f32| f16::from_f32(*v).to_f64();
    let q16: Vec<f64> = d.q.iter().map(h).collect();
    let b16: Vec<f64> = d.bank.iter().map(h).collect();
    let qn: Vec<f32> = d.q.chunks(dim).map(|r| lane_sum(dim, |c| r[c])).collect();
    let bn: Vec<f32> = d
        .bank
        .chunks(dim)
        .map(|r| lane_sum(dim, |c| r[c]))
        .collect();
    for k in 0..nq {
        let approx = |j: usize| -> f64 {
            let dot: f64 = (0..dim).map(|c| q16[k * dim + c] * b16[j * dim + c]).sum();
            (qn[k] as f64 + bn[j] as f64 - 2.0 * dot).max(0.0)
        };
        let tol = 4e-7 * (qn[k] as f64 + 1.0) * (dim as f64 / 16.0).sqrt();
        for s in 0..r.splits {
            let lo = s * r.tps * F16_TILE_B;
            let hi = nb.min(lo + r.tps * F16_TILE_B);
            let (gd, gi) = (r.pd[k * r.splits + s], r.pi[k * r.splits + s]);
            let at = format!("{what}: query {k} split {s} ({lo}..{hi})");
            if gi < lo as i32 || gi >= hi as i32 {
                return Err(format!("{at}: winner {gi} outside the split"));
            }
            let t = tol + 4e-7 * bn[gi as usize] as f64;
            let ad = approx(gi as usize);
            if (gd as f64 - ad).abs() > t {
                return Err(format!("{at}: distance {gd} vs {ad} (tolerance {t:.1e})"));
            }
            let best = (lo..hi).map(approx).fold(f64::INFINITY, f64::min);
            if ad > best + 2.0 * t {
                return Err(format!("{at}: winner {gi} at {ad}, best {best}"));
            }
            first_copy(d, lo, gi as usize, &at)?;
        }
    }
    Ok(())
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
        let want = exact(&d.q, &d.bank, dim);
        // Schedules (seeds, run-ahead orders) on the small shapes; the large ones, for
        // the tile and split arithmetic, once (time).
        let (seeds, orders): (&[u64], &[u64]) = if i < 2 {
            (&SEEDS, &RUN_AHEAD)
        } else {
            (&SEEDS[..1], &[])
        };
        for s in seeds.iter().chain(orders).copied() {
            let what = format!("{nq} x {nb} x {dim} sms {sms} seed {s:#x}");
            let r = run_f16(&d, sms, 8, s).map_err(|e| format!("{what}: {e}"))?;
            check_winners(&d, &r, &what)?;
            check_rerank(&d, &r, 8, &what)?;
            // End to end (tests/cuda/bank.rs asks >= 99.9% of a GPU; here all but near-ties
            // of the approximate distances' precision).
            for (k, &(bi, bd, sd)) in want.iter().enumerate() {
                if sd - bd > 1e-3 * bd + 1e-4 && r.oi[k] as usize != bi {
                    return Err(format!(
                        "{what}: query {k}: fast path {} vs exact {bi} ({bd} / {sd})",
                        r.oi[k]
                    ));
                }
            }
        }
    }
    // Exact copies of each query (the GPU test has 100+k and 900+k): the lowest copy, in
    // every split (sms 132: one tile each) and with one split (sms 1).
    let dim = 64;
    let mut d = data(10, 1000, dim, false, false, 21);
    plant_copies(&mut d, &COPIES);
    for_seeds(|s| {
        for sms in [132, 1] {
            let r = run_f16(&d, sms, 8, s)?;
            let what = format!("f16 exact copies, sms {sms}");
            same(&what, &r.oi, &(20..30).collect::<Vec<_>>())?;
            same_bits(&what, &r.od, &[0.0; 10])?;
            check_winners(&d, &r, &what)?;
        }
        Ok(())
    })
}

/// bank_rerank_f32 on crafted partials: approximate-distance ties across splits (index
/// order decides), NaN and empty (INF, none) winners, fewer winners than `rerank`, more
/// splits than a warp's 32 lanes, rerank 1 and 32.
fn rerank_only() -> Result<(), String> {
    let mut g = Gen::new(33);
    let (nq, nb, dim) = (21usize, 500usize, 96usize);
    let d = data(nq, nb, dim, true, true, 44);
    for (splits, rerank) in [(3usize, 8usize), (45, 1), (45, 32), (70, 13)] {
        let n = nq * splits;
        let pd: Vec<f32> = (0..n)
            .map(|_| match g.below(12) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                k => (k % 3) as f32,
            })
            .collect();
        let pi: Vec<i32> = (0..n)
            .map(|i| {
                if pd[i] == f32::INFINITY && i % 2 == 0 {
                    NONE
                } else {
                    g.below(nb) as i32
                }
            })
            .collect();
        for_seeds(|s| {
            let (od, oi) = rerank_launch(&d, &pd, &pi, splits, rerank, s)?;
            let r = F16Run {
                pd: pd.clone(),
                pi: pi.clone(),
                od,
                oi,
                splits,
                tps: 0,
            };
            check_rerank(&d, &r, rerank, &format!("{splits} splits, rerank {rerank}"))
        })?;
    }
    Ok(())
}
