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
        /// Print one JSON object (for scripts) instead of the readable summary.
        #[arg(long)]
        json: bool,
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
        ModelCommand::Info {
            file,
            no_verify,
            json,
        } => info(&file, !no_verify, json),
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

fn info(path: &std::path::Path, verify: bool, json: bool) -> miad::Result<()> {
    let c = Container::open(
        path,
        &OpenOptions {
            verify_checksums: verify,
            ..OpenOptions::default()
        },
    )?;
    let m = c.manifest();
    let summary = match &m.config {
        FileConfig::Model(cfg) => model_summary(cfg),
        FileConfig::Bank(cfg) => bank_summary(cfg, &c),
    };
    let file_len = std::fs::metadata(path).map_or(0, |m| m.len());
    let total: u64 = m.tensors.iter().map(|t| t.nbytes).sum();
    if json {
        let mut o = String::from("{");
        let field = |o: &mut String, k: &str, v: String| {
            if o.len() > 1 {
                o.push_str(", ");
            }
            o.push_str(&format!("{}: {v}", json_str(k)));
        };
        field(&mut o, "file", json_str(&path.display().to_string()));
        field(&mut o, "kind", json_str(m.config.kind_name()));
        field(&mut o, "id", json_str(&hex(&c.id())));
        field(&mut o, "checksums_verified", verify.to_string());
        let cfg: Vec<String> = summary
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), v.json()))
            .collect();
        field(&mut o, "config", format!("{{{}}}", cfg.join(", ")));
        let prov: Vec<String> = m
            .provenance
            .iter()
            .map(|(k, v)| format!("[{}, {}]", json_str(k), json_str(v)))
            .collect();
        field(&mut o, "provenance", format!("[{}]", prov.join(", ")));
        let tensors: Vec<String> = m
            .tensors
            .iter()
            .map(|t| {
                format!(
                    "{{\"name\": {}, \"dtype\": \"{}\", \"shape\": {:?}, \"bytes\": {}, \"xxh3_64\": \"{:016x}\"}}",
                    json_str(&t.name),
                    t.dtype.name(),
                    t.shape,
                    t.nbytes,
                    t.checksum
                )
            })
            .collect();
        field(&mut o, "tensors", format!("[{}]", tensors.join(", ")));
        field(&mut o, "tensor_bytes", total.to_string());
        field(&mut o, "file_bytes", file_len.to_string());
        o.push('}');
        println!("{o}");
        return Ok(());
    }
    println!("file: {}", path.display());
    println!("kind: {}", m.config.kind_name());
    println!("id: {}", hex(&c.id()));
    println!(
        "checksums: {}",
        if verify { "verified" } else { "not verified" }
    );
    for (k, v) in &summary {
        println!("{k}: {}", v.text());
    }
    for (k, v) in &m.provenance {
        println!("provenance: {k} = {v}");
    }
    println!(
        "{:<48} {:>5} {:>20} {:>12} {:>16}",
        "tensor", "dtype", "shape", "bytes", "xxh3-64"
    );
    for t in &m.tensors {
        println!(
            "{:<48} {:>5} {:>20} {:>12} {:016x}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.nbytes,
            t.checksum
        );
    }
    println!(
        "{} tensors, {} bytes ({:.1} MB) of tensor data, file {} bytes",
        m.tensors.len(),
        total,
        total as f64 / 1e6,
        file_len
    );
    Ok(())
}

/// A value of the readable summary (also written as JSON).
enum Val {
    Text(String),
    Num(f64),
    Nums(Vec<f64>),
    Absent,
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Text(s) => s.clone(),
            Val::Num(v) => format!("{v}"),
            Val::Nums(v) => v
                .iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join(" "),
            Val::Absent => "none".into(),
        }
    }
    fn json(&self) -> String {
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v}")
            } else {
                "null".into()
            }
        };
        match self {
            Val::Text(s) => json_str(s),
            Val::Num(v) => num(*v),
            Val::Nums(v) => format!(
                "[{}]",
                v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", ")
            ),
            Val::Absent => "null".into(),
        }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn t(s: impl Into<String>) -> Val {
    Val::Text(s.into())
}
fn n(v: impl Into<f64>) -> Val {
    Val::Num(v.into())
}

fn model_summary(c: &ModelConfig) -> Vec<(&'static str, Val)> {
    let p = &c.preprocess;
    vec![
        ("name", t(c.name.clone())),
        (
            "vit",
            c.vit.as_ref().map_or(Val::Absent, |v| {
                t(format!(
                    "image {} patch {} width {} depth {} heads {} mlp {}",
                    v.image_size, v.patch_size, v.dim, v.depth, v.heads, v.mlp_dim
                ))
            }),
        ),
        (
            "point",
            c.point.as_ref().map_or(Val::Absent, |v| {
                t(format!(
                    "{} groups of {} points, width {} depth {} heads {}, output layers {:?} ({}-d features)",
                    v.num_groups,
                    v.group_size,
                    v.dim,
                    v.depth,
                    v.heads,
                    v.out_layers,
                    v.feature_dim()
                ))
            }),
        ),
        (
            "fusion",
            c.fusion.as_ref().map_or(Val::Absent, |f| {
                t(format!(
                    "rgb {} + xyz {} features, MLP ratio {}",
                    f.rgb_dim, f.xyz_dim, f.mlp_ratio
                ))
            }),
        ),
        ("image_size", n(p.image_size)),
        ("xyz_grid", n(p.xyz_grid)),
        ("plane_distance", n(p.plane_distance)),
        ("ransac", t(format!("{} iterations of {} points, inlier distance {}", p.ransac_iterations, p.ransac_points, p.ransac_threshold))),
        ("pad_multiple", n(p.pad_multiple)),
        ("cluster", t(format!("eps {} min {} points", p.cluster_eps, p.cluster_min_points))),
    ]
}

/// The present banks (by row count), split into those that have what `has` looks for and
/// those that do not.
fn banks_with(c: &miad::config::BankConfig, has: impl Fn(usize) -> bool) -> [Vec<usize>; 2] {
    let rows = [c.xyz_rows, c.rgb_rows, c.fused_rows];
    let (with, without) = (0..3).filter(|&b| rows[b] > 0).partition(|&b| has(b));
    [with, without]
}

fn bank_names(v: &[usize]) -> String {
    v.iter()
        .map(|&b| miad::pipeline::score::BANK_NAMES[b])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which banks carry the re-weighting's neighbour table, and what the others do instead.
fn neighbour_tables(c: &miad::config::BankConfig, file: &Container) -> Val {
    use miad::pipeline::score::neighbour_table_name;
    let [with, without] = banks_with(c, |b| file.entry(&neighbour_table_name(b)).is_some());
    match (with.is_empty(), without.is_empty()) {
        (true, true) => Val::Absent,
        (false, true) => t(format!(
            "{} (re-weighting looks its rows up)",
            bank_names(&with)
        )),
        (true, false) => t(format!(
            "none (written before the tables or resized: re-weighting scans {} per part)",
            bank_names(&without)
        )),
        (false, false) => t(format!(
            "{}; none for {} (re-weighting scans it per part)",
            bank_names(&with),
            bank_names(&without)
        )),
    }
}

/// Which banks carry the partition of the pruned search, with its clusters and whether
/// the per-row projection bound comes with it.
fn search_partitions(c: &miad::config::BankConfig, file: &Container) -> Val {
    use miad::pipeline::score::{partition_names, BANK_NAMES};
    let clusters = |b: usize| {
        let [_, _, radii, _, _] = partition_names(b);
        file.entry(&radii)
            .map(|e| e.shape_usize().iter().product::<usize>())
    };
    let [with, without] = banks_with(c, |b| clusters(b).is_some());
    let listed: Vec<String> = with
        .iter()
        .map(|&b| {
            let [_, _, _, basis, _] = partition_names(b);
            let bound = match file.entry(&basis) {
                Some(_) => " + projection bound",
                None => "",
            };
            let k = clusters(b).unwrap_or(0);
            format!("{} {k} clusters{bound}", BANK_NAMES[b])
        })
        .collect();
    match (with.is_empty(), without.is_empty()) {
        (true, true) => Val::Absent,
        (false, true) => t(format!("pruned exact search: {}", listed.join(", "))),
        (true, false) => t(format!(
            "none (written before the partitions: {} searched unpruned)",
            bank_names(&without)
        )),
        (false, false) => t(format!(
            "pruned exact search: {}; none for {} (searched unpruned)",
            listed.join(", "),
            bank_names(&without)
        )),
    }
}

fn bank_summary(c: &miad::config::BankConfig, file: &Container) -> Vec<(&'static str, Val)> {
    let bank = |rows: u32, dim: u32, grid: u32| {
        if rows == 0 {
            Val::Absent
        } else {
            t(format!("{rows} rows × {dim}, grid {grid}²"))
        }
    };
    let cases: Vec<&str> = ["complete", "rgb_only", "cloud_only"]
        .into_iter()
        .filter(|k| file.entry(&format!("radar.{k}.mean")).is_some())
        .collect();
    let th = &c.thresholds;
    vec![
        ("model_id", t(hex(&c.model_id))),
        ("model_name", t(c.model_name.clone())),
        ("category", t(c.category.clone())),
        ("variant", t(c.variant.name())),
        ("xyz_bank", bank(c.xyz_rows, c.xyz_dim, c.xyz_grid)),
        ("rgb_bank", bank(c.rgb_rows, c.rgb_dim, c.rgb_grid)),
        ("fused_bank", bank(c.fused_rows, c.fused_dim, c.xyz_grid)),
        ("map_size", n(c.map_size)),
        ("blur_sigma", n(c.blur_sigma)),
        (
            "score_weights",
            Val::Nums(c.score_weights.map(f64::from).to_vec()),
        ),
        (
            "part_svm_w",
            Val::Nums(c.part_svm.w.map(f64::from).to_vec()),
        ),
        (
            "pixel_svm_w",
            Val::Nums(c.pixel_svm.w.map(f64::from).to_vec()),
        ),
        ("part_threshold", n(th.part)),
        ("pixel_threshold", n(th.pixel)),
        (
            "grey_band",
            th.grey_band
                .map_or(Val::Absent, |b| Val::Nums(b.map(f64::from).to_vec())),
        ),
        ("false_reject_rate", n(th.false_reject_rate)),
        (
            "fit",
            t(format!(
                "{} parts, coreset ratio {}, scoring {}",
                c.fit.parts, c.fit.coreset_ratio, c.fit.scoring
            )),
        ),
        ("neighbour_tables", neighbour_tables(c, file)),
        ("search_partitions", search_partitions(c, file)),
        (
            "radar_cases",
            if cases.is_empty() {
                t("none (fitted without RADAR: incomplete parts are uncertain)")
            } else {
                t(cases.join(" "))
            },
        ),
    ]
}
