//! `miad extract`: the stage outputs of one part, written to a safetensors file (for
//! debugging a model and for parity checks against other implementations).

use miad::cpu::pool::Pool;
use miad::eval::io::{read_rgb_png, read_xyz_tiff};
use miad::format::{write_safetensors, ModelFile, OpenOptions, StTensor};
use miad::pipeline::extract::Extractor;
use miad::pipeline::preprocess::PreprocessMode;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub model: PathBuf,
    /// RGB image (PNG).
    #[arg(long)]
    pub rgb: Option<PathBuf>,
    /// Organized point cloud (3-channel float32 TIFF).
    #[arg(long)]
    pub xyz: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// The data are already cleaned: only resize.
    #[arg(long)]
    pub preprocessed: bool,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: Args) -> miad::Result<()> {
    if a.rgb.is_none() && a.xyz.is_none() {
        return Err(miad::Error::Input("give --rgb, --xyz or both".into()));
    }
    let model = ModelFile::open(&a.model, &OpenOptions::default())?;
    let pool = if a.threads == 0 {
        Pool::with_available_cores()
    } else {
        Pool::new(a.threads)
    };
    let rgb = a.rgb.as_deref().map(read_rgb_png).transpose()?;
    let cloud = a.xyz.as_deref().map(read_xyz_tiff).transpose()?;
    let (w, h) = rgb
        .as_ref()
        .map(|r| (r.width, r.height))
        .or(cloud.as_ref().map(|c| (c.width, c.height)))
        .unwrap_or((1, 1));
    let mode = if a.preprocessed {
        PreprocessMode::AlreadyClean
    } else {
        PreprocessMode::Full
    };
    let mut ex = Extractor::new(&pool, &model, w, h, mode)?;
    let status = ex.run(
        &pool,
        rgb.as_ref().map(|r| r.view()),
        cloud.as_ref().map(|c| c.view()),
    )?;
    let l = ex.layout();
    let pre = ex.preprocessed();
    let s = pre.size;
    let n = pre.n_points;
    let cfg = ex
        .config()
        .point
        .clone()
        .expect("the extractor checked the point branch");
    let (m, k) = (cfg.num_groups as usize, cfg.group_size as usize);
    let mut tensors = vec![StTensor::F32("rgb_input", vec![3, s, s], &pre.rgb_input)];
    tensors.push(StTensor::F32(
        "rgb_features",
        vec![l.rgb_grid, l.rgb_grid, l.rgb_dim],
        &ex.rgb,
    ));
    if status.cloud_usable() {
        tensors.push(StTensor::F32("points", vec![n, 3], pre.points()));
        tensors.push(StTensor::U32(
            "point_pixels",
            vec![n],
            &pre.point_pixels[..n],
        ));
        tensors.push(StTensor::U32("center_indices", vec![m], ex.centers()));
        tensors.push(StTensor::U32("group_indices", vec![m, k], ex.groups()));
        tensors.push(StTensor::F32(
            "group_features",
            vec![m, l.xyz_dim],
            &ex.group_features,
        ));
    }
    tensors.push(StTensor::F32(
        "xyz_features",
        vec![l.xyz_grid, l.xyz_grid, l.xyz_dim],
        &ex.xyz,
    ));
    tensors.push(StTensor::F32(
        "fused_features",
        vec![l.xyz_grid, l.xyz_grid, l.fused_dim],
        &ex.fused,
    ));
    write_safetensors(&a.out, &tensors)?;
    println!(
        "wrote {} ({} tensors; rgb {:?}, cloud {:?}, {} points)",
        a.out.display(),
        tensors.len(),
        status.rgb.map_or("used".into(), |u| format!("{u:?}")),
        status.cloud.map_or("used".into(), |u| format!("{u:?}")),
        n
    );
    Ok(())
}
