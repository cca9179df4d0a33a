//! `miad inspect`: score, verdict, per-bank scores, defect regions and a heatmap per part.

use miad::engine::InspectOptions;
use miad::eval::io::{read_mask_png, read_rgb_png, read_xyz_tiff};
use miad::eval::picture::heatmap_panel_range;
use miad::pipeline::preprocess::{preprocess_mask, PreprocessMode};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub engine: crate::args::EngineArgs,
    /// Parts: `.png` images, `.tiff` clouds, or folders of the MVTec layout holding
    /// `rgb/` and/or `xyz/` (every part in them). `rgb/NNN.png` is paired with
    /// `xyz/NNN.tiff` and `gt/NNN.png` automatically.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Inspect without the RGB image (RADAR).
    #[arg(long)]
    pub no_rgb: bool,
    /// Inspect without the point cloud (RADAR).
    #[arg(long)]
    pub no_cloud: bool,
    /// Part threshold (overrides the bank file's).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Pixel threshold for regions (overrides the bank file's).
    #[arg(long)]
    pub pixel_threshold: Option<f32>,
    /// Write heatmaps (image | map overlay | mask) into this folder.
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
}

/// The parts named on the command line: files as given; a folder of the MVTec layout
/// (`rgb/*.png`, else `xyz/*.tiff`) as its parts, in name order.
fn expand_parts(parts: &[PathBuf]) -> miad::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in parts {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let list = |sub: &str, ext: &str| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p.join(sub))
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().and_then(|e| e.to_str()) == Some(ext))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let mut found = list("rgb", "png");
        if found.is_empty() {
            found = list("xyz", "tiff");
        }
        if found.is_empty() {
            return Err(miad::Error::Input(format!(
                "{}: a folder without rgb/*.png or xyz/*.tiff parts",
                p.display()
            )));
        }
        out.extend(found);
    }
    Ok(out)
}

/// The RGB, cloud and mask files of a part given by any one of them.
fn part_files(p: &Path) -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
    let stem = p.file_stem().map(|s| s.to_os_string()).unwrap_or_default();
    let kind_dir = p.parent().and_then(Path::parent);
    let sibling = |sub: &str, ext: &str| {
        kind_dir
            .map(|d| d.join(sub).join(&stem).with_extension(ext))
            .filter(|f| f.is_file())
    };
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => (
            Some(p.to_path_buf()),
            sibling("xyz", "tiff"),
            sibling("gt", "png"),
        ),
        "tiff" | "tif" => (
            sibling("rgb", "png"),
            Some(p.to_path_buf()),
            sibling("gt", "png"),
        ),
        _ => (None, None, None),
    }
}

pub fn run(a: Args) -> miad::Result<()> {
    let mut engine = a.engine.open()?;
    let inspect = InspectOptions {
        part_threshold: a.threshold,
        pixel_threshold: a.pixel_threshold,
        ..InspectOptions::default()
    };
    if let Some(d) = &a.heatmaps {
        std::fs::create_dir_all(d).map_err(|e| miad::Error::io(d, e))?;
    }
    let pre = engine.model_file().config().preprocess.clone();
    let mode = if a.engine.preprocessed {
        PreprocessMode::AlreadyClean
    } else {
        PreprocessMode::Full
    };
    let mut failed = 0;
    for p in &expand_parts(&a.parts)? {
        let (rgb_p, xyz_p, gt_p) = part_files(p);
        if rgb_p.is_none() && xyz_p.is_none() {
            return Err(miad::Error::Input(format!(
                "{}: not a .png image or a .tiff point cloud",
                p.display()
            )));
        }
        let rgb = rgb_p
            .as_deref()
            .filter(|_| !a.no_rgb)
            .map(read_rgb_png)
            .transpose()?;
        let cloud = xyz_p
            .as_deref()
            .filter(|_| !a.no_cloud)
            .map(read_xyz_tiff)
            .transpose()?;
        let r = engine.inspect(
            rgb.as_ref().map(|x| x.view()),
            cloud.as_ref().map(|x| x.view()),
            &inspect,
        )?;
        println!(
            "{}: score {:.4} (threshold {:.4}) {:?}  [{}{}]  banks xyz {:.3} rgb {:.3} fused {:.3}  {:.1} ms",
            p.display(),
            r.score,
            r.part_threshold,
            r.verdict,
            r.case.name(),
            if r.case_calibrated {
                ""
            } else {
                ", the bank file has no statistics for this case (fitted with --no-radar): \
                 it cannot decide it"
            },
            r.bank_scores[0],
            r.bank_scores[1],
            r.bank_scores[2],
            1e3 * r.total_time
        );
        let t = r.times;
        println!(
            "  stages: preprocess {:.1} ms, rgb {:.1} ms, point {:.1} ms, fusion {:.1} ms, banks+decision {:.1} ms",
            1e3 * t.preprocess,
            1e3 * t.rgb,
            1e3 * t.point,
            1e3 * t.fusion,
            1e3 * r.score_time
        );
        for (i, g) in r.regions.iter().enumerate() {
            println!(
                "  region {i}: box ({},{})–({},{}) area {} px, max {:.3}, mean {:.3}",
                g.x0, g.y0, g.x1, g.y1, g.area, g.max, g.mean
            );
        }
        if r.regions_found > r.regions.len() {
            println!("  … {} regions in all", r.regions_found);
        }
        if r.verdict == miad::engine::Verdict::Fail {
            failed += 1;
        }
        let (title, pixel_t) = (
            format!("{} {:.3} {:?}", p.display(), r.score, r.verdict),
            r.pixel_threshold,
        );
        if let Some(dir) = &a.heatmaps {
            let s = engine.map_size();
            let mask = match &gt_p {
                Some(g) => {
                    let m = read_mask_png(g)?;
                    let mut out = vec![0u8; s * s];
                    preprocess_mask(&pre, &m.data, m.width, m.height, mode, &mut out)?;
                    Some(out)
                }
                None => None,
            };
            let panel = heatmap_panel_range(
                &engine.preview_image(),
                engine.last_map().expect("inspect asks for the map"),
                mask.as_deref(),
                &title,
                (0.0, 2.0 * pixel_t.max(1e-6)),
            )?;
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("part");
            let out = dir.join(format!("{stem}.png"));
            panel.save_png(&out)?;
            println!("  heatmap: {}", out.display());
        }
    }
    println!("{failed} of {} parts failed", a.parts.len());
    Ok(())
}
