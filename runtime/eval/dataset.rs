//! The parts of one category in the MVTec 3D-AD layout:
//! `CATEGORY/{train,validation}/good/{rgb/NNN.png, xyz/NNN.tiff}` and
//! `CATEGORY/test/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}`.
//! A part is named by its file stem; a part with only one of the two files is listed with
//! the other missing (RADAR inspects it with one modality).

use super::io::{read_mask_png, read_rgb_png, read_xyz_tiff, Cloud, Mask, Rgb};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of one part.
#[derive(Clone, Debug, PartialEq)]
pub struct PartFiles {
    /// `<split>/<kind>/<stem>`, for reports.
    pub name: String,
    pub rgb: Option<PathBuf>,
    pub xyz: Option<PathBuf>,
    pub gt: Option<PathBuf>,
    /// `None` for a defect-free part, else the defect kind (the folder name).
    pub defect: Option<String>,
}

/// A part read from disk.
#[derive(Clone, Debug)]
pub struct LoadedPart {
    pub rgb: Option<Rgb>,
    pub cloud: Option<Cloud>,
    pub mask: Option<Mask>,
}

impl LoadedPart {
    /// Borrowed views of the part's image and cloud, as the engine takes them.
    pub fn views(
        &self,
    ) -> (
        Option<crate::pipeline::input::RgbView<'_>>,
        Option<crate::pipeline::input::CloudView<'_>>,
    ) {
        (
            self.rgb.as_ref().map(|r| r.view()),
            self.cloud.as_ref().map(|c| c.view()),
        )
    }
}

impl LoadedPart {
    /// [`LoadedPart::views`] with the modalities `avail` lacks removed (RADAR protocol).
    pub fn views_as(
        &self,
        avail: super::missing::Availability,
    ) -> (
        Option<crate::pipeline::input::RgbView<'_>>,
        Option<crate::pipeline::input::CloudView<'_>>,
    ) {
        let (rgb, cloud) = self.views();
        (
            rgb.filter(|_| avail.has_rgb()),
            cloud.filter(|_| avail.has_cloud()),
        )
    }
}

impl PartFiles {
    pub fn is_defective(&self) -> bool {
        self.defect.is_some()
    }

    /// Reads the part's files (any may be absent).
    pub fn load(&self) -> Result<LoadedPart> {
        Ok(LoadedPart {
            rgb: self.rgb.as_deref().map(read_rgb_png).transpose()?,
            cloud: self.xyz.as_deref().map(read_xyz_tiff).transpose()?,
            mask: self.gt.as_deref().map(read_mask_png).transpose()?,
        })
    }
}

fn stems(dir: &Path, ext: &str) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext)) {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                out.insert(stem.to_string(), p.clone());
            }
        }
    }
    Ok(out)
}

/// The parts of one `<split>/<kind>` folder, sorted by name.
fn list_kind(category: &Path, split: &str, kind: &str) -> Result<Vec<PartFiles>> {
    let base = category.join(split).join(kind);
    let rgb = stems(&base.join("rgb"), "png")?;
    let xyz = stems(&base.join("xyz"), "tiff")?;
    let gt = stems(&base.join("gt"), "png")?;
    let mut names: Vec<&String> = rgb.keys().chain(xyz.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|n| PartFiles {
            name: format!("{split}/{kind}/{n}"),
            rgb: rgb.get(n).cloned(),
            xyz: xyz.get(n).cloned(),
            gt: gt.get(n).cloned(),
            defect: (kind != "good").then(|| kind.to_string()),
        })
        .collect())
}

/// Defect-free parts of a split (`train` or `validation`).
pub fn list_good(category: &Path, split: &str) -> Result<Vec<PartFiles>> {
    list_kind(category, split, "good")
}

/// Every test part: `test/good` first, then each defect folder in name order.
pub fn list_test(category: &Path) -> Result<Vec<PartFiles>> {
    let test = category.join("test");
    let mut kinds: Vec<String> = std::fs::read_dir(&test)
        .map_err(|e| Error::io(&test, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    kinds.sort_by_key(|k| (k != "good", k.clone()));
    let mut out = Vec::new();
    for k in kinds {
        out.extend(list_kind(category, "test", &k)?);
    }
    Ok(out)
}

/// Training parts, refusing an empty folder with a message that says where it looked.
pub fn list_train(category: &Path) -> Result<Vec<PartFiles>> {
    let parts = list_good(category, "train")?;
    if parts.is_empty() {
        return Err(Error::Input(format!(
            "{}: no training parts (expected train/good/rgb/*.png and/or train/good/xyz/*.tiff)",
            category.display()
        )));
    }
    Ok(parts)
}
