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
    let c = model.config();
    if c.vit.is_none() || c.point.is_none() || c.fusion.is_none() {
        return run_branches(&a, &model, &pool, rgb.as_ref(), cloud.as_ref(), mode);
    }
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

/// `extract` with a model that lacks a network (each branch is optional, see
/// `weights/CONVERTING.md`): preprocessing, then whichever branch the model has, each
/// run directly (no fusion, no pseudo input).
fn run_branches(
    a: &Args,
    model: &ModelFile,
    pool: &Pool,
    rgb: Option<&miad::eval::io::Rgb>,
    cloud: Option<&miad::eval::io::Cloud>,
    mode: PreprocessMode,
) -> miad::Result<()> {
    use miad::cpu::fps::{farthest_point_sample, fps_scratch_len};
    use miad::cpu::knn::{group_knn, knn_scratch_len};
    use miad::cpu::pfa::{pfa_scratch_len, point_feature_align};
    use miad::cpu::point_mae::{point_mae_forward, point_mae_scratch_len, PointMaeWeights};
    use miad::cpu::vit::{vit_forward, vit_scratch_len, VitWeights};
    use miad::pipeline::preprocess::{preprocess, preprocess_scratch_len, PreprocessOutput};
    let cfg = model.config();
    let pre_cfg = &cfg.preprocess;
    let (w, h) = rgb
        .map(|r| (r.width, r.height))
        .or(cloud.map(|c| (c.width, c.height)))
        .unwrap_or((1, 1));
    let mut pre = match &cfg.point {
        Some(pc) => PreprocessOutput::for_point_branch(pre_cfg, pc),
        None => PreprocessOutput::new(pre_cfg),
    };
    let mut scratch = vec![0f32; preprocess_scratch_len(pre_cfg, w, h)];
    let status = preprocess(
        pre_cfg,
        rgb.map(|r| r.view()),
        cloud.map(|c| c.view()),
        mode,
        &mut pre,
        &mut scratch,
    )?;
    let s = pre.size;
    let threads = pool.threads();
    let mut rgb_features = Vec::new();
    let mut rgb_grid = 0;
    if let (Some(vc), true) = (&cfg.vit, status.rgb_usable()) {
        rgb_grid = vc.grid();
        rgb_features = vec![0f32; vc.patches() * vc.dim as usize];
        let weights = VitWeights::load(model, vc)?;
        let mut scratch = vec![0f32; vit_scratch_len(vc, threads)];
        vit_forward(
            pool,
            vc,
            &weights,
            &pre.rgb_input,
            &mut rgb_features,
            &mut scratch,
        )?;
    }
    let n = pre.n_points;
    let (mut centers, mut groups, mut group_features, mut xyz) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut m, mut k, mut dim) = (0, 0, 0);
    let grid = pre_cfg.xyz_grid as usize;
    if let (Some(pc), true) = (&cfg.point, status.cloud_usable()) {
        (m, k, dim) = (
            pc.num_groups as usize,
            pc.group_size as usize,
            pc.feature_dim(),
        );
        let weights = PointMaeWeights::load(model, pc)?;
        let max_points = s * s;
        let mut scratch = vec![
            0f32;
            fps_scratch_len(max_points)
                .max(knn_scratch_len(max_points, k, threads))
                .max(point_mae_scratch_len(pc, threads))
                .max(pfa_scratch_len(pre_cfg, m, max_points, threads))
        ];
        let points = &pre.points;
        centers = vec![0u32; m];
        groups = vec![0u32; m * k];
        group_features = vec![0f32; m * dim];
        xyz = vec![0f32; grid * grid * dim];
        farthest_point_sample(points, n, m, &mut centers, &mut scratch);
        group_knn(pool, points, n, &centers, k, &mut groups, &mut scratch);
        let center_xyz: Vec<f32> = centers
            .iter()
            .flat_map(|&i| points[3 * i as usize..3 * i as usize + 3].to_vec())
            .collect();
        point_mae_forward(
            pool,
            pc,
            &weights,
            points,
            n,
            &centers,
            &groups,
            &mut group_features,
            &mut scratch,
        );
        point_feature_align(
            pool,
            pre_cfg,
            points,
            n,
            &pre.point_pixels,
            &center_xyz,
            &group_features,
            dim,
            &mut xyz,
            &mut scratch,
        );
    }
    let mut tensors = vec![StTensor::F32("rgb_input", vec![3, s, s], &pre.rgb_input)];
    if !rgb_features.is_empty() {
        let d = rgb_features.len() / (rgb_grid * rgb_grid);
        tensors.push(StTensor::F32(
            "rgb_features",
            vec![rgb_grid, rgb_grid, d],
            &rgb_features,
        ));
    }
    if !xyz.is_empty() {
        tensors.push(StTensor::F32("points", vec![n, 3], pre.points()));
        tensors.push(StTensor::U32(
            "point_pixels",
            vec![n],
            &pre.point_pixels[..n],
        ));
        tensors.push(StTensor::U32("center_indices", vec![m], &centers));
        tensors.push(StTensor::U32("group_indices", vec![m, k], &groups));
        tensors.push(StTensor::F32(
            "group_features",
            vec![m, dim],
            &group_features,
        ));
        tensors.push(StTensor::F32("xyz_features", vec![grid, grid, dim], &xyz));
    }
    write_safetensors(&a.out, &tensors)?;
    println!(
        "wrote {} ({} tensors; model without {}; rgb {:?}, cloud {:?}, {} points)",
        a.out.display(),
        tensors.len(),
        [
            (cfg.vit.is_none(), "ViT"),
            (cfg.point.is_none(), "Point-MAE"),
            (cfg.fusion.is_none(), "fusion")
        ]
        .iter()
        .filter(|(absent, _)| *absent)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", "),
        status.rgb.map_or("used".into(), |u| format!("{u:?}")),
        status.cloud.map_or("used".into(), |u| format!("{u:?}")),
        n
    );
    Ok(())
}
