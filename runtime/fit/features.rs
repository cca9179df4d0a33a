//! Training features from files: a directory of safetensors files, one per part (sorted
//! by file name), each holding `xyz_features`, `rgb_features` and `fused_features` as
//! `[grid, grid, dim]` or `[grid², dim]` f32 tensors — what `miad extract` writes. Lets
//! `miad fit` run on features extracted elsewhere (or by another backend), and tests run
//! the fit without a model.

use super::banks::{extract_in_turn, FeatureExtractor, FeatureLayout, PartSink};
use crate::cpu::pool::Pool;
use crate::eval::dataset::PartFiles;
use crate::eval::missing::MissingModality;
use crate::format::OwnedTensors;
use crate::pipeline::extract::Extractor;
use crate::pipeline::preprocess::ModalityStatus;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

/// Tensor names per bank in score-vector order (xyz, rgb, fused).
pub const FEATURE_NAMES: [&str; 3] = ["xyz_features", "rgb_features", "fused_features"];

/// Per-part feature files of one directory.
pub struct DirFeatures {
    files: Vec<PathBuf>,
    layout: FeatureLayout,
}

fn grid_dim(shape: &[usize], what: &str, path: &Path) -> Result<(usize, usize)> {
    let bad = || {
        Error::Input(format!(
            "{}: {what} has shape {shape:?}, not [g, g, d] or [g², d]",
            path.display()
        ))
    };
    match *shape {
        [g, g2, d] if g == g2 && g > 0 && d > 0 => Ok((g, d)),
        [p, d] if d > 0 => {
            let g = (p as f64).sqrt().round() as usize;
            if g * g == p && g > 0 {
                Ok((g, d))
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

impl DirFeatures {
    /// Lists `dir/*.safetensors`; the first file fixes the layout, every other file is
    /// checked against it when read.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        let first = files.first().ok_or_else(|| {
            Error::Input(format!("{}: no .safetensors feature files", dir.display()))
        })?;
        let t = OwnedTensors::from_safetensors_file(first)?;
        let mut gd = [(0usize, 0usize); 3];
        for (b, name) in FEATURE_NAMES.iter().enumerate() {
            let (shape, _) = t
                .tensors
                .get(*name)
                .ok_or_else(|| Error::Input(format!("{}: no tensor {name}", first.display())))?;
            gd[b] = grid_dim(shape, name, first)?;
        }
        if gd[0].0 != gd[2].0 {
            return Err(Error::Input(format!(
                "{}: xyz grid {} and fused grid {} differ",
                first.display(),
                gd[0].0,
                gd[2].0
            )));
        }
        Ok(DirFeatures {
            files,
            layout: FeatureLayout {
                xyz_grid: gd[0].0,
                xyz_dim: gd[0].1,
                rgb_grid: gd[1].0,
                rgb_dim: gd[1].1,
                fused_dim: gd[2].1,
            },
        })
    }
}

impl FeatureExtractor for DirFeatures {
    fn layout(&self) -> FeatureLayout {
        self.layout
    }
    fn parts(&self) -> usize {
        self.files.len()
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> Result<()> {
        let path = &self.files[part];
        let t = OwnedTensors::from_safetensors_file(path)?;
        for (b, out) in [xyz, rgb, fused].into_iter().enumerate() {
            let name = FEATURE_NAMES[b];
            let (_, data) = t
                .tensors
                .get(name)
                .ok_or_else(|| Error::Input(format!("{}: no tensor {name}", path.display())))?;
            if data.len() != out.len() {
                return Err(Error::Input(format!(
                    "{}: {name} has {} values, the first part had {}",
                    path.display(),
                    data.len(),
                    out.len()
                )));
            }
            out.copy_from_slice(data);
        }
        Ok(())
    }
}

/// The first `max` parts of another extractor (`--max-parts`, `--shots`).
pub struct Capped<E> {
    pub inner: E,
    pub max: usize,
}

impl<E: FeatureExtractor> FeatureExtractor for Capped<E> {
    fn layout(&self) -> FeatureLayout {
        self.inner.layout()
    }
    fn parts(&self) -> usize {
        self.inner.parts().min(self.max)
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> Result<()> {
        self.inner.extract(part, xyz, rgb, fused)
    }
}

/// Training features computed by the inspection pipeline from the parts' files: what
/// `miad fit` uses. Reads one part at a time per extractor.
pub struct PipelineFeatures<'p, 'm> {
    pub pool: &'p crate::cpu::pool::Pool,
    pub extractor: Extractor<'m>,
    /// More extractors of the same model ([`Extractor::sibling`], planned for one thread):
    /// with them, [`FeatureExtractor::extract_all`] runs that many parts more side by side,
    /// one thread each, instead of one part on every thread of `pool`. The features are the
    /// same bits (every stage's result is independent of the thread count). Empty: one
    /// part at a time on `pool`.
    pub siblings: Vec<Extractor<'m>>,
    pub parts: Vec<PartFiles>,
    /// Per part: modalities removed before extraction (RADAR's missing training data);
    /// empty = every part complete.
    pub missing: Vec<Option<MissingModality>>,
}

/// The features of part `files` with `drop` removed, through `extractor` on `pool`, left
/// in the extractor's buffers (`xyz`, `rgb`, `fused`).
fn run_part(
    pool: &Pool,
    extractor: &mut Extractor<'_>,
    files: &PartFiles,
    drop: Option<MissingModality>,
) -> Result<ModalityStatus> {
    let p = files.load()?;
    let keep_rgb = !matches!(drop, Some(MissingModality::Rgb | MissingModality::Both));
    let keep_cloud = !matches!(drop, Some(MissingModality::Cloud | MissingModality::Both));
    let rgb_view = p.rgb.as_ref().filter(|_| keep_rgb).map(|r| r.view());
    let cloud_view = p.cloud.as_ref().filter(|_| keep_cloud).map(|c| c.view());
    extractor.run(pool, rgb_view, cloud_view)
}

/// Copies the extractor's three feature blocks into `out` (xyz, rgb, fused).
fn copy_features(extractor: &Extractor<'_>, out: [&mut [f32]; 3]) {
    let [xyz, rgb, fused] = out;
    xyz.copy_from_slice(&extractor.xyz);
    rgb.copy_from_slice(&extractor.rgb);
    fused.copy_from_slice(&extractor.fused);
}

/// [`run_part`] for the fit's features: the part's sampled removal (`drop`), and a
/// warning when a complete part turns out incomplete.
fn training_part(
    pool: &Pool,
    extractor: &mut Extractor<'_>,
    files: &PartFiles,
    drop: Option<MissingModality>,
) -> Result<()> {
    let status = run_part(pool, extractor, files, drop)?;
    if drop.is_none() && (!status.rgb_usable() || !status.cloud_usable()) {
        // Not an error: that modality's features are the pseudo input's, as in
        // inspection. Said per part so that a bad training set is visible.
        eprintln!(
            "miad: warning: training part {} is incomplete (rgb {:?}, cloud {:?})",
            files.name, status.rgb, status.cloud
        );
    }
    Ok(())
}

impl PipelineFeatures<'_, '_> {
    /// [`FeatureExtractor::extract_all`] with the siblings: each extractor on its own
    /// thread with a one-thread pool takes the next unstarted part until none is left. The
    /// first error (by part) is returned after every worker has stopped; a failing worker
    /// makes the others stop before their next part. Each part's blocks go from its
    /// extractor's buffers straight to `out`.
    fn extract_side_by_side(
        &mut self,
        out: &dyn PartSink,
        done: &mut dyn FnMut(usize),
    ) -> Result<()> {
        let layout = self.extractor.layout();
        let (plen, offsets) = (layout.part_len(), layout.offsets());
        let (parts, missing) = (&self.parts, &self.missing);
        let next = Mutex::new(0..parts.len());
        let stop = AtomicBool::new(false);
        let (report, finished) = mpsc::channel::<(usize, Result<()>)>();
        let mut first_error: Option<(usize, Error)> = None;
        let mut finished_parts = 0;
        std::thread::scope(|scope| {
            for extractor in std::iter::once(&mut self.extractor).chain(&mut self.siblings) {
                let (next, stop, report) = (&next, &stop, report.clone());
                scope.spawn(move || {
                    let pool = Pool::new(1);
                    while !stop.load(Ordering::Relaxed) {
                        // The lock is held only to take the part, not while computing it.
                        let taken = next.lock().map(|mut it| it.next());
                        let Ok(Some(p)) = taken else { break };
                        let drop = missing.get(p).copied().flatten();
                        let result =
                            training_part(&pool, extractor, &parts[p], drop).and_then(|()| {
                                let blocks = [&extractor.xyz, &extractor.rgb, &extractor.fused];
                                blocks
                                    .iter()
                                    .zip(offsets)
                                    .try_for_each(|(block, o)| out.write(p * plen + o, block))
                            });
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        if report.send((p, result)).is_err() {
                            break;
                        }
                    }
                });
            }
            // Only the workers hold senders now: the loop ends when all have stopped.
            std::mem::drop(report);
            for (p, result) in finished {
                match result {
                    Ok(()) => {
                        finished_parts += 1;
                        done(finished_parts);
                    }
                    Err(e) => {
                        if first_error.as_ref().is_none_or(|(q, _)| p < *q) {
                            first_error = Some((p, e));
                        }
                    }
                }
            }
        });
        match first_error {
            Some((_, e)) => Err(e),
            // A worker that stopped without an error (its lock poisoned) must not leave
            // parts unextracted silently.
            None if finished_parts < parts.len() => Err(Error::Input(format!(
                "training features: the workers stopped after {finished_parts} of {} parts",
                parts.len()
            ))),
            None => Ok(()),
        }
    }
}

impl FeatureExtractor for PipelineFeatures<'_, '_> {
    fn layout(&self) -> FeatureLayout {
        self.extractor.layout()
    }
    fn parts(&self) -> usize {
        self.parts.len()
    }
    fn extract(
        &mut self,
        part: usize,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> Result<()> {
        let drop = self.missing.get(part).copied().flatten();
        training_part(self.pool, &mut self.extractor, &self.parts[part], drop)?;
        copy_features(&self.extractor, [xyz, rgb, fused]);
        Ok(())
    }
    fn extract_without(
        &mut self,
        part: usize,
        drop: MissingModality,
        xyz: &mut [f32],
        rgb: &mut [f32],
        fused: &mut [f32],
    ) -> Result<bool> {
        run_part(
            self.pool,
            &mut self.extractor,
            &self.parts[part],
            Some(drop),
        )?;
        copy_features(&self.extractor, [xyz, rgb, fused]);
        Ok(true)
    }
    fn extract_all(&mut self, out: &dyn PartSink, done: &mut dyn FnMut(usize)) -> Result<()> {
        if self.siblings.is_empty() {
            extract_in_turn(self, out, done)
        } else {
            self.extract_side_by_side(out, done)
        }
    }
}
