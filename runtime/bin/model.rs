//! `miad model info | random | convert`.

use miad::config::ModelConfig;
use miad::format::convert::{convert, ConvertOptions};
use miad::format::{
    hex, random_model, write_model, Container, FileConfig, OpenOptions, OwnedTensors,
};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Describe a model or bank file: configuration, tensors, sizes, checksums, provenance.
    Info {
        file: PathBuf,
        /// Skip checksum verification.
        #[arg(long)]
        no_verify: bool,
    },
    /// Write a model with seeded random weights (tests, benches, the demo).
    Random {
        /// `m3dm` (ViT-B/8, Point-MAE 1024×128, fusion), `demo` (the demo's sizes) or
        /// `small` (test sizes).
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert the published checkpoints (safetensors, see weights/pth2safetensors.py).
    Convert(ConvertArgs),
}

/// Arguments of `miad model convert` (also reachable as `miad convert`).
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// DINO ViT (timm / DINO names).
    #[arg(long)]
    vit: Option<PathBuf>,
    /// Point-MAE pretraining checkpoint.
    #[arg(long)]
    point_mae: Option<PathBuf>,
    /// M3DM fusion (UFF) checkpoint.
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// ViT heads (default: width / 64).
    #[arg(long)]
    vit_heads: Option<u32>,
    /// Point-MAE heads (default: width / 64).
    #[arg(long)]
    point_heads: Option<u32>,
    /// Point-MAE groups (FPS centers); not stored in the checkpoint.
    #[arg(long, default_value_t = 1024)]
    groups: u32,
    /// Points per Point-MAE group; not stored in the checkpoint.
    #[arg(long, default_value_t = 128)]
    group_size: u32,
    #[arg(long)]
    out: PathBuf,
}

pub fn preset(name: &str) -> miad::Result<ModelConfig> {
    match name {
        "m3dm" => Ok(ModelConfig::m3dm()),
        "small" => Ok(ModelConfig::small()),
        "demo" => Ok(ModelConfig::demo()),
        other => Err(miad::Error::Config(format!(
            "unknown preset '{other}' (m3dm, demo, small)"
        ))),
    }
}

pub fn run(c: ModelCommand) -> miad::Result<()> {
    match c {
        ModelCommand::Info { file, no_verify } => info(&file, !no_verify),
        ModelCommand::Random {
            preset: p,
            seed,
            out,
        } => {
            let cfg = preset(&p)?;
            let t = std::time::Instant::now();
            let tensors = random_model(&cfg, seed);
            let seed_text = seed.to_string();
            let id = write_model(
                &cfg,
                &tensors,
                &[("source", "random"), ("preset", &p), ("seed", &seed_text)],
                &out,
            )?;
            println!(
                "wrote {} (preset {p}, seed {seed}, id {}) in {:.1} s",
                out.display(),
                hex(&id),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        ModelCommand::Convert(ConvertArgs {
            vit,
            point_mae,
            fusion,
            vit_heads,
            point_heads,
            groups,
            group_size,
            out,
        }) => {
            let load = |p: &Option<PathBuf>| -> miad::Result<Option<OwnedTensors>> {
                p.as_ref()
                    .map(|p| OwnedTensors::from_safetensors_file(p).map_err(Into::into))
                    .transpose()
            };
            let (v, p, f) = (load(&vit)?, load(&point_mae)?, load(&fusion)?);
            let opts = ConvertOptions {
                vit_heads,
                point_heads,
                num_groups: groups,
                group_size,
                ..Default::default()
            };
            let conv = convert(v.as_ref(), p.as_ref(), f.as_ref(), &opts)?;
            for n in &conv.ignored {
                println!("ignored (not used at inspection): {n}");
            }
            for n in &conv.unknown {
                println!("warning: unknown tensor, not converted: {n}");
            }
            let sources: Vec<String> = [&vit, &point_mae, &fusion]
                .iter()
                .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
                .collect();
            let id = write_model(
                &conv.config,
                &conv.tensors,
                &[("source", &sources.join(", "))],
                &out,
            )?;
            println!(
                "wrote {} ({}), id {}",
                out.display(),
                conv.config.name,
                hex(&id)
            );
            Ok(())
        }
    }
}

fn info(path: &std::path::Path, verify: bool) -> miad::Result<()> {
    let c = Container::open(
        path,
        &OpenOptions {
            verify_checksums: verify,
            ..OpenOptions::default()
        },
    )?;
    let m = c.manifest();
    println!("file: {}", path.display());
    println!("kind: {}", m.config.kind_name());
    println!("id: {}", hex(&c.id()));
    println!(
        "checksums: {}",
        if verify { "verified" } else { "not verified" }
    );
    match &m.config {
        FileConfig::Model(cfg) => println!("configuration: {cfg:#?}"),
        FileConfig::Bank(cfg) => println!("configuration: {cfg:#?}"),
    }
    for (k, v) in &m.provenance {
        println!("provenance: {k} = {v}");
    }
    println!(
        "{:<48} {:>5} {:>20} {:>12} {:>16}",
        "tensor", "dtype", "shape", "bytes", "xxh3-64"
    );
    let mut total = 0u64;
    for t in &m.tensors {
        total += t.nbytes;
        println!(
            "{:<48} {:>5} {:>20} {:>12} {:016x}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.nbytes,
            t.checksum
        );
    }
    let file_len = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "{} tensors, {} bytes ({:.1} MB) of tensor data, file {} bytes",
        m.tensors.len(),
        total,
        total as f64 / 1e6,
        file_len
    );
    Ok(())
}
