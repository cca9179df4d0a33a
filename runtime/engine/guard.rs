//! Checks that keep an engine from crashing, hanging or misleading: the process that
//! opened it is the one calling (no worker thread survives `fork`), its mapped files are
//! unchanged (a file truncated in place would fault on the next read), and what it
//! reports as a success is finite. All of them run without allocating on success.

use super::{Case, CaseDecision, Files, Inspection};
use crate::{Error, Result};
use std::path::Path;

/// The id of the calling process (one `getpid`, no allocation).
pub(super) fn current_pid() -> u32 {
    std::process::id()
}

/// Refuses an engine used in a process other than the one that opened it: after
/// `fork()` the child has none of the engine's worker threads, and waiting for them
/// would hang forever.
pub(super) fn check_process(opened_by: u32) -> Result<()> {
    let now = current_pid();
    if now == opened_by {
        return Ok(());
    }
    Err(Error::Forked(format!(
        "the engine was opened by process {opened_by} and is used by process {now} \
         (a child after fork()); its worker threads do not exist here: open a new engine \
         in this process"
    )))
}

/// Refuses to touch mapped files that changed in place since they were opened.
pub(super) fn check_files(files: &Files) -> Result<()> {
    files.model.container().check_unchanged()?;
    files.bank.container().check_unchanged()?;
    Ok(())
}

/// Refuses a result with a non-finite score, bank score or region statistic (the
/// engine never reports NaN or infinity as a success).
pub(super) fn check_finite(r: &Inspection<'_>) -> Result<()> {
    if !r.score.is_finite() {
        return non_finite("the part score", r.score);
    }
    for (b, &s) in r.bank_scores.iter().enumerate() {
        if !s.is_finite() {
            let name = crate::types::BANK_NAMES[b];
            return non_finite(&format!("the {name} bank score"), s);
        }
    }
    for reg in r.regions {
        if !reg.max.is_finite() || !reg.mean.is_finite() {
            return non_finite("a region's peak or mean", reg.max + reg.mean);
        }
    }
    Ok(())
}

/// Refuses an anomaly map (`s × s`) holding NaN or infinity: regions would silently skip
/// those pixels.
pub(super) fn check_map(map: &[f32], s: usize) -> Result<()> {
    match map.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let s = s.max(1);
            non_finite(
                &format!("the anomaly map at ({}, {})", i % s, i / s),
                map[i],
            )
        }
    }
}

fn non_finite(what: &str, v: f32) -> Result<()> {
    Err(Error::NonFinite(format!(
        "{what} is {v}: the bank file's statistics or the part's values overflow \
         (check the bank file; refit it if a faulty writer produced it)"
    )))
}

/// Refuses a case's RADAR statistics holding NaN, infinity or subnormal numbers (they
/// would give non-finite scores or maps for every part of that case).
pub(super) fn check_case(path: &Path, case: Case, d: Option<&CaseDecision>) -> Result<()> {
    let Some(d) = d else { return Ok(()) };
    let c = case.name();
    let groups: [(&str, &[f32]); 7] = [
        ("mean", &d.mean),
        ("precision", &d.precision),
        ("threshold", std::slice::from_ref(&d.threshold)),
        ("pixel_w", &d.pixel_w),
        ("pixel_threshold", std::slice::from_ref(&d.pixel_threshold)),
        ("score_affine", &d.score_affine),
        ("map_affine", &d.map_affine),
    ];
    for (name, values) in groups {
        for (i, &v) in values.iter().enumerate() {
            let plain = v.is_finite() && (v == 0.0 || v.is_normal()) && v.abs() <= 1e12;
            if !plain {
                return Err(Error::Config(format!(
                    "{}: tensor radar.{c}.{name}[{i}] = {v:e} is not a finite number of \
                     sensible size",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}
