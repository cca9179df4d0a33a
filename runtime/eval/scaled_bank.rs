//! Banks at the size of a large category without fitting one: `miad bench --bank-rows`.
//!
//! Fitting a 300-part category takes over an hour on a small machine, yet the score
//! stage's cost is set by the bank sizes. This writes a copy of a fitted bank file whose
//! banks have the requested row counts:
//! - fewer rows than fitted: the first rows (the coreset keeps its rows in farthest-first
//!   order, so a prefix is itself a coreset);
//! - more rows: every fitted row, then rows drawn uniformly from the fitted ones plus
//!   Gaussian noise. The noise is scaled so that a drawn row lies about half the bank's
//!   typical nearest-row spacing from its source: the new rows fill the gaps between
//!   fitted rows as the rows of a larger fit would, and a part's nearest distances stay
//!   realistic (slightly below those against the fitted bank).
//!
//! The xyz bank's last row (the background row, SPEC §6) stays last and is never drawn.
//! Everything else in the file (normalisation, decision layers, thresholds) is copied, so
//! the engine runs exactly as with the fitted file; only the search is larger. Each
//! resized bank gets the partition of the pruned search built for its new rows, as the
//! fit builds it, so the bench measures the search inspection runs by default; it gets no
//! neighbour table (that is quadratic in the rows: its re-weighting scans the bank).

use crate::cpu::bank_prune::BankPartition;
use crate::cpu::bank_search::{sq_norms, BankView};
use crate::cpu::pool::Pool;
use crate::format::{BankFile, Writer};
use crate::pipeline::score::{add_partition, neighbour_table_name, partition_names};
use crate::types::{BANK_NAMES, RGB, XYZ};
use crate::util::rng::Rng;
use crate::{Error, Result};
use std::path::Path;

/// Provenance key of a synthesised bank file (the latency report shows its value).
pub const PROVENANCE_KEY: &str = "bench.scaled_bank";
/// A drawn row lies about this fraction of the typical nearest-row spacing from its source.
const NOISE_FRACTION: f32 = 0.5;
/// Fitted rows whose nearest-row distance estimates the spacing.
const SPACING_SAMPLE: usize = 64;

/// What was written for one bank.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaledBankInfo {
    pub name: &'static str,
    pub fitted_rows: usize,
    pub rows: usize,
    /// Median distance of a sample of fitted rows to their nearest other row.
    pub spacing: f32,
    /// Standard deviation of the noise per value.
    pub noise_std: f32,
    /// Clusters of the partition built for the resized bank (0: none applies, the
    /// search is unpruned).
    pub clusters: usize,
}

/// Writes `src` to `path` with the banks resized to `rows` (xyz, rgb, fused; `None` keeps
/// the fitted size). Deterministic in `seed` (not in `pool`'s size: the partitions are
/// exact whatever the threads). Refuses a size for a bank the file lacks, and an xyz size
/// of 1 (only the background row) or 0.
pub fn write_scaled_bank(
    pool: &Pool,
    src: &BankFile,
    rows: [Option<usize>; 3],
    seed: u64,
    path: &Path,
) -> Result<Vec<ScaledBankInfo>> {
    let cfg = src.config();
    let fitted = [cfg.xyz_rows, cfg.rgb_rows, cfg.fused_rows].map(|r| r as usize);
    let dims = [cfg.xyz_dim, cfg.rgb_dim, cfg.fused_dim].map(|d| d as usize);
    let mut rng = Rng::new(seed);
    let mut banks: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut infos = Vec::new();
    for b in 0..3 {
        let Some(want) = rows[b] else { continue };
        let name = BANK_NAMES[b];
        if fitted[b] == 0 {
            return Err(Error::Input(format!(
                "the bank file has no {name} bank to resize"
            )));
        }
        let background = usize::from(b == XYZ);
        if want <= background {
            return Err(Error::Input(format!(
                "{name} bank: {want} rows is too few (at least {})",
                background + 1
            )));
        }
        let d = dims[b];
        let data = src.typed::<f32>(&format!("bank.{name}"), Some(&[fitted[b], d]))?;
        let (features, tail) = data.split_at((fitted[b] - background) * d);
        let (scaled, spacing, noise_std) = scale_rows(features, d, want - background, &mut rng);
        let mut all = scaled;
        all.extend_from_slice(tail);
        infos.push(ScaledBankInfo {
            name,
            fitted_rows: fitted[b],
            rows: want,
            spacing,
            noise_std,
            clusters: 0,
        });
        banks.push((b, all));
    }
    let summary: Vec<String> = infos
        .iter()
        .map(|i| format!("{} {} -> {}", i.name, i.fitted_rows, i.rows))
        .collect();
    let provenance = format!(
        "synthesised from {} (seed {seed}): {}",
        src.path().display(),
        summary.join(", ")
    );
    let clusters = write_with_banks(pool, src, banks, &provenance, path)?;
    for (info, (_, k)) in infos.iter_mut().zip(clusters) {
        info.clusters = k;
    }
    Ok(infos)
}

/// Writes `src` to `path` with the banks of `banks` (bank index, rows × its width)
/// replaced, their squared norms recomputed, their partitions built again for the new
/// rows and their neighbour tables dropped; everything else copied. `provenance` goes
/// under [`PROVENANCE_KEY`]. Returns, per bank of `banks` in order, the bank index and
/// its partition's clusters (0 where none applies).
pub fn write_with_banks(
    pool: &Pool,
    src: &BankFile,
    banks: Vec<(usize, Vec<f32>)>,
    provenance: &str,
    path: &Path,
) -> Result<Vec<(usize, usize)>> {
    let mut cfg = src.config().clone();
    let dims = [cfg.xyz_dim, cfg.rgb_dim, cfg.fused_dim].map(|d| d as usize);
    let mut with_norms = Vec::with_capacity(banks.len());
    for (b, rows) in banks {
        let d = dims[b];
        if d == 0 || rows.is_empty() || rows.len() % d != 0 {
            return Err(Error::Input(format!(
                "{} bank: {} values for rows of {d}",
                BANK_NAMES[b],
                rows.len()
            )));
        }
        let n = rows.len() / d;
        let mut norms = vec![0.0; n];
        sq_norms(&rows, d, &mut norms);
        match b {
            XYZ => cfg.xyz_rows = n as u32,
            RGB => cfg.rgb_rows = n as u32,
            _ => cfg.fused_rows = n as u32,
        }
        with_norms.push((b, rows, norms));
    }
    let banks = with_norms;
    let resized = |name: &str| {
        banks.iter().any(|(b, _, _)| {
            let bank = BANK_NAMES[*b];
            // The neighbour table and the partition of the fitted rows do not describe
            // the new rows: the partition is built again below, the table is not.
            name == format!("bank.{bank}")
                || name == format!("bank.{bank}_norms")
                || name == neighbour_table_name(*b)
                || partition_names(*b).iter().any(|p| p == name)
        })
    };
    let mut w = Writer::bank(cfg);
    for (key, value) in &src.container().manifest().provenance {
        if key != "writer" && key != PROVENANCE_KEY {
            w.provenance(key.clone(), value.clone());
        }
    }
    w.provenance(PROVENANCE_KEY, provenance.to_string());
    for entry in &src.container().manifest().tensors {
        if resized(&entry.name) {
            continue;
        }
        let (e, bytes) = src.container().raw(&entry.name)?;
        w.add(e.name.clone(), e.dtype, &e.shape_usize(), bytes);
    }
    let mut clusters = Vec::with_capacity(banks.len());
    for (b, data, norms) in banks {
        let name = BANK_NAMES[b];
        let (n, d) = (norms.len(), dims[b]);
        let view = BankView::new(&data, &norms, d);
        let partition = BankPartition::build(pool, view, BankPartition::clusters_for(n));
        if let Some(p) = &partition {
            add_partition(&mut w, b, p, d);
        }
        clusters.push((b, partition.as_ref().map_or(0, BankPartition::clusters)));
        w.add_f32(format!("bank.{name}_norms"), &[n], &norms);
        w.add_f32(format!("bank.{name}"), &[n, d], &data);
    }
    w.write(path)?;
    Ok(clusters)
}

/// `want` rows of width `d` from the `rows` (row-major): a prefix, or all of them then
/// noisy copies. Returns the rows, the spacing estimate and the noise std.
fn scale_rows(rows: &[f32], d: usize, want: usize, rng: &mut Rng) -> (Vec<f32>, f32, f32) {
    let n = rows.len() / d;
    if want <= n {
        return (rows[..want * d].to_vec(), 0.0, 0.0);
    }
    let spacing = nearest_row_spacing(rows, d);
    let noise_std = NOISE_FRACTION * spacing / (d as f32).sqrt();
    let mut out = Vec::with_capacity(want * d);
    out.extend_from_slice(rows);
    let mut noise = vec![0.0; d];
    for _ in n..want {
        let j = rng.below(n as u64) as usize;
        rng.fill_normal(&mut noise, noise_std);
        out.extend(
            rows[j * d..(j + 1) * d]
                .iter()
                .zip(&noise)
                .map(|(v, e)| v + e),
        );
    }
    (out, spacing, noise_std)
}

/// Median, over up to [`SPACING_SAMPLE`] evenly spread rows, of the Euclidean distance to
/// the nearest other row (0 for a single row).
fn nearest_row_spacing(rows: &[f32], d: usize) -> f32 {
    let n = rows.len() / d;
    if n < 2 {
        return 0.0;
    }
    let step = n.div_ceil(SPACING_SAMPLE);
    let mut nearest: Vec<f32> = (0..n)
        .step_by(step)
        .map(|i| {
            let a = &rows[i * d..(i + 1) * d];
            (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let b = &rows[j * d..(j + 1) * d];
                    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min)
                .sqrt()
        })
        .collect();
    nearest.sort_by(f32::total_cmp);
    nearest[nearest.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_when_shrinking_noisy_copies_when_growing() {
        // Four rows on a line, 1 apart: spacing 1.
        let rows: Vec<f32> = (0..4).flat_map(|i| [i as f32, 0.0]).collect();
        let mut rng = Rng::new(1);
        let (small, _, _) = scale_rows(&rows, 2, 3, &mut rng);
        assert_eq!(small, rows[..6]);
        let (big, spacing, std) = scale_rows(&rows, 2, 400, &mut rng);
        assert_eq!(spacing, 1.0);
        assert_eq!(std, NOISE_FRACTION / 2f32.sqrt());
        assert_eq!(big.len(), 800);
        assert_eq!(big[..8], rows[..]);
        // Every drawn row is near some fitted row, and not a verbatim copy.
        for r in big[8..].chunks_exact(2) {
            let nearest = (0..4)
                .map(|i| ((r[0] - i as f32).powi(2) + r[1].powi(2)).sqrt())
                .fold(f32::INFINITY, f32::min);
            assert!(nearest > 0.0 && nearest < 3.0, "{r:?}");
        }
        // The y value of a drawn row is its noise alone: mean |N(0, σ)| = σ·√(2/π).
        let mean_offset: f32 = big[8..].chunks_exact(2).map(|r| r[1].abs()).sum::<f32>() / 396.0;
        let expected = std * (2.0 / std::f32::consts::PI).sqrt();
        assert!(
            (mean_offset - expected).abs() < 0.2 * expected,
            "{mean_offset} vs {expected}"
        );
    }
}
