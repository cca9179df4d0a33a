//! Fitting one product category from its files: the driver behind `miad fit` and the
//! demo. Opens the model, plans an extractor, lists `train/good`, runs [`super::banks::fit`]
//! with the pipeline's features and the OCSVM trainer, and writes the bank file.

use super::banks::{fit, FitOptions, Fitted, Progress};
use super::features::PipelineFeatures;
use crate::config::BankConfig;
use crate::cpu::dense::DensePrecision;
use crate::cpu::pool::Pool;
use crate::eval::dataset::list_train;
use crate::format::{ModelFile, OpenOptions};
use crate::pipeline::extract::Extractor;
use crate::pipeline::preprocess::PreprocessMode;
use crate::Result;
use std::path::Path;

/// What `miad fit` needs besides [`FitOptions`].
#[derive(Clone, Debug)]
pub struct CategoryFit {
    /// Use at most this many training parts (the first ones by name).
    pub max_parts: Option<usize>,
    /// The data are already cleaned (only resizing applies).
    pub preprocessed: bool,
    pub threads: usize,
    /// Largest input side the extractor is planned for.
    pub max_side: usize,
    /// Remove a modality from a fraction of the training parts (RADAR's protocol):
    /// (rate, what, seed).
    pub missing: Option<(f64, crate::eval::missing::MissingModality, u64)>,
}

impl Default for CategoryFit {
    fn default() -> Self {
        CategoryFit {
            max_parts: None,
            preprocessed: false,
            threads: 0,
            max_side: 1024,
            missing: None,
        }
    }
}

/// Fits the banks of the category in `data` (a folder with `train/good`) for `model`,
/// writes them to `out` and returns the fit.
pub fn fit_category(
    model_path: &Path,
    data: &Path,
    out: &Path,
    cat: &CategoryFit,
    opts: &FitOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted> {
    let model = ModelFile::open(model_path, &OpenOptions::default())?;
    let pool = if cat.threads == 0 {
        Pool::with_available_cores()
    } else {
        Pool::new(cat.threads)
    };
    let mut parts = list_train(data)?;
    if let Some(m) = cat.max_parts {
        parts.truncate(m.max(1));
    }
    let mode = if cat.preprocessed {
        PreprocessMode::AlreadyClean
    } else {
        PreprocessMode::Full
    };
    let mut extractor = Extractor::new(&pool, &model, cat.max_side, cat.max_side, mode)?;
    // Pack the weights once, as inspection does: the same bits as packing them in every
    // product, which cost about a tenth of the feature phase.
    extractor.pack_networks(DensePrecision::F32);
    let category = data
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("category");
    let base = BankConfig::empty(model.id(), &model.config().name, category);
    let mut opts = opts.clone();
    // The anomaly map covers the network input, so that masks compare pixel for pixel.
    opts.map_size = model.config().preprocess.image_size as usize;
    let missing = match cat.missing {
        Some((rate, drop, seed)) => {
            crate::eval::missing::sample_missing(parts.len(), rate, drop, seed)
                .map_err(crate::Error::Config)?
                .into_iter()
                .map(|a| a.removed())
                .collect()
        }
        None => Vec::new(),
    };
    // With several threads the parts run side by side, one thread each (the same bits;
    // no barrier per operation, and the reading and preprocessing of one part overlap
    // the networks of the others). One extractor per thread: its buffers, not the
    // weights, which they share.
    let side_by_side = pool.threads().min(parts.len());
    let siblings = (1..side_by_side)
        .map(|_| extractor.sibling(&model, 1))
        .collect::<Result<Vec<_>>>()?;
    let mut features = PipelineFeatures {
        pool: &pool,
        extractor,
        siblings,
        parts,
        missing,
    };
    let fitted = fit(
        &pool,
        &mut features,
        base,
        &opts,
        &super::ocsvm::train_linear3,
        progress,
    )?;
    fitted.write(out)?;
    Ok(fitted)
}
