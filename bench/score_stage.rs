//! The score stage (bank searches, re-weighting, maps) with each form of the exact CPU
//! search, side by side in one process on real features (`cargo bench --bench
//! score_stage`; ratios only, the machine is shared):
//! - f32: `cpu::bank_search::nearest`;
//! - bf16: `nearest_bf16` (`--precision bf16` with AVX512-BF16);
//! - pruned: `cpu::bank_prune::nearest_pruned` with the bank file's stored partitions
//!   (or, for a file without them, partitions built here as the fit builds them), with
//!   the per-row projection bound where the partition has one;
//! - pruned, cluster bound only: the same partitions without the projection bound (the
//!   pruned search before it).
//!
//! Environment: `MIAD_SCORE_MODEL`, `MIAD_SCORE_BANK` (files), `MIAD_SCORE_DATA` (a
//! category folder: its test parts, else its train parts, are extracted once by an f32
//! engine), `MIAD_SCORE_PARTS` (default 4), `MIAD_SCORE_ROUNDS` (default 3; the best
//! round per part and form), `MIAD_SCORE_THREADS` (default 2), `MIAD_SCORE_DUMP` (a
//! folder: the banks and normalised queries written there as raw files, for the offline
//! analysis `bench/results/cpu-bankprune-2026-12-07-bounds.py`), and `MIAD_SCORE_ROWS`
//! (e.g. `xyz=15870,rgb=23520,fused=94080`: the banks synthesised at these sizes as
//! `miad bench --bank-rows` does, written next to the bank file and removed after).
//! Every form's scores and maps are checked equal to f32's, bit for bit.

use miad::cpu::bank_proj::PROJ_DIMS;
use miad::cpu::bank_prune::BankPartition;
use miad::cpu::bank_search::{nearest_bf16, nearest_bf16_scratch_len};
use miad::cpu::pool::Pool;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::{list_good, list_test};
use miad::eval::scaled_bank::write_scaled_bank;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::score::{BankSet, Scorer};
use miad::types::BANK_NAMES;
use std::path::PathBuf;
use std::time::Instant;

mod timing;
use timing::env_usize as env;

/// `miad bench`'s seed for synthesised banks.
const SCALED_BANK_SEED: u64 = 0x6d69_6164;

fn path_env(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(p) => PathBuf::from(p),
        None => {
            eprintln!("score_stage: set {name} (see the program's doc)");
            std::process::exit(2);
        }
    }
}

fn parse_rows(text: &str) -> [Option<usize>; 3] {
    let mut rows = [None; 3];
    for item in text.split(',') {
        let (name, n) = item.split_once('=').expect("BANK=ROWS");
        let b = BANK_NAMES
            .iter()
            .position(|b| *b == name)
            .expect("xyz, rgb or fused");
        rows[b] = Some(n.parse().expect("rows"));
    }
    rows
}

/// Writes, per bank, raw little-endian files for offline analysis of the bounds
/// (`MIAD_SCORE_DUMP`): `B_bank.f32` (rows), `B_norms.f32`, `B_queries.f32` (the parts'
/// features normalised as the scorer does) and, where stored, `B_order.u32`,
/// `B_starts.u32`, `B_radii.f32`.
fn dump(dir: &std::path::Path, set: &BankSet<'_>, feats: &[[Vec<f32>; 3]]) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: String, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    for (b, v) in set.banks.iter().enumerate() {
        let Some(v) = v else { continue };
        let name = BANK_NAMES[b];
        write(format!("{name}_bank.f32"), bytemuck::cast_slice(v.data));
        write(
            format!("{name}_norms.f32"),
            bytemuck::cast_slice(v.sq_norms),
        );
        if let Some(p) = v.partition {
            write(format!("{name}_order.u32"), bytemuck::cast_slice(p.order));
            write(format!("{name}_starts.u32"), bytemuck::cast_slice(p.starts));
            write(format!("{name}_radii.f32"), bytemuck::cast_slice(p.radii));
        }
        let norm = set.norms[b];
        let q: Vec<f32> = feats
            .iter()
            .flat_map(|x| x[b].iter().map(|v| (v - norm.mean) * (1.0 / norm.std)))
            .collect();
        write(format!("{name}_queries.f32"), bytemuck::cast_slice(&q));
        println!(
            "dumped bank {name}: {} rows x {}, {} queries",
            v.n,
            v.dim,
            q.len() / v.dim
        );
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = path_env("MIAD_SCORE_MODEL");
    let mut bank = path_env("MIAD_SCORE_BANK");
    let data = path_env("MIAD_SCORE_DATA");
    let parts_n = env("MIAD_SCORE_PARTS", 4);
    let rounds = env("MIAD_SCORE_ROUNDS", 3).max(1);
    let threads = env("MIAD_SCORE_THREADS", 2);
    let _scaled = std::env::var("MIAD_SCORE_ROWS").ok().map(|rows| {
        let path = bank.with_extension("scaled.bank");
        let src = BankFile::open(&bank, &OpenOptions::default(), None).unwrap();
        let t = Instant::now();
        for i in write_scaled_bank(
            &Pool::new(threads),
            &src,
            parse_rows(&rows),
            SCALED_BANK_SEED,
            &path,
        )
        .unwrap()
        {
            println!(
                "{} bank: {} rows synthesised from {} fitted",
                i.name, i.rows, i.fitted_rows
            );
        }
        println!("scaled bank written in {:.1} s", t.elapsed().as_secs_f64());
        bank = path.clone();
        RemoveOnDrop(path)
    });

    // Real features: an f32 engine extracts each part once.
    let mut files = list_test(&data).unwrap_or_default();
    if files.is_empty() {
        files = list_good(&data, "train").unwrap();
    }
    let mut engine = Engine::open(
        &model,
        &bank,
        &EngineOptions {
            threads,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let mut feats: Vec<[Vec<f32>; 3]> = Vec::new();
    for f in files.iter().take(parts_n) {
        let p = f.load().unwrap();
        let (r, c) = p.views();
        engine.inspect(r, c, &InspectOptions::default()).unwrap();
        let x = engine.features().unwrap();
        feats.push(std::array::from_fn(|b| x[b].to_vec()));
    }
    drop(engine);

    let file = BankFile::open(&bank, &OpenOptions::default(), None).unwrap();
    let stored = BankSet::from_file(&file).unwrap();
    let set = stored.without_partitions();
    let pool = Pool::new(threads);
    if let Some(dir) = std::env::var_os("MIAD_SCORE_DUMP") {
        dump(&PathBuf::from(dir), &stored, &feats);
    }
    let f32_scorer = Scorer::new(file.config(), &set, threads);
    let mut bf16_scorer = f32_scorer.clone();
    let bf16 = bf16_scorer.use_bf16_search();
    // The partitions: the file's, else built here as the fit builds them (for a
    // synthesised bank or a file written before they were stored). Each view counts
    // the pairs of its searches.
    let t = Instant::now();
    let partitions: Vec<Option<BankPartition>> = set
        .banks
        .iter()
        .zip(&stored.banks)
        .map(|(v, s)| {
            let v = (*v)?;
            Some(match s.and_then(|s| s.partition) {
                Some(p) => BankPartition::copied(p),
                None => BankPartition::build(&pool, v, BankPartition::clusters_for(v.n))?,
            })
        })
        .collect();
    println!("partitions ready in {:.1} s", t.elapsed().as_secs_f64());
    // The same partitions with the cluster bound alone (no per-row projection bound).
    let cluster_only: Vec<Option<BankPartition>> = set
        .banks
        .iter()
        .zip(&partitions)
        .map(|(v, p)| {
            let (v, p) = (v.as_ref()?, p.as_ref()?);
            Some(BankPartition::copied(p.view(v).unwrap()).without_projection())
        })
        .collect();
    fn with_partitions<'a>(set: &BankSet<'a>, parts: &'a [Option<BankPartition>]) -> BankSet<'a> {
        BankSet {
            banks: std::array::from_fn(|b| {
                set.banks[b].map(|v| match &parts[b] {
                    Some(p) => v.with_partition(p.view(&v).unwrap()),
                    None => v,
                })
            }),
            ..*set
        }
    }
    let pruned_set = with_partitions(&set, &partitions);
    let cluster_set = with_partitions(&set, &cluster_only);
    let pruned_scorer = Scorer::new(file.config(), &pruned_set, threads);
    let cluster_scorer = Scorer::new(file.config(), &cluster_set, threads);
    for (b, v) in set.banks.iter().enumerate() {
        if let Some(v) = v {
            let k = partitions[b].as_ref().map_or(0, |p| p.clusters());
            let from = match stored.banks[b].and_then(|s| s.partition) {
                Some(_) => "stored in the file",
                None => "built here",
            };
            let proj = match partitions[b].as_ref().and_then(|p| p.projection.as_ref()) {
                Some(_) => "with the projection bound",
                None => "no projection bound",
            };
            println!(
                "bank {}: {} rows x {}, {k} clusters ({from}; {proj})",
                BANK_NAMES[b], v.n, v.dim
            );
        }
    }

    let s = f32_scorer.map_size() * f32_scorer.map_size();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let forms: [(&str, &Scorer, &BankSet); 4] = [
        ("f32", &f32_scorer, &set),
        ("bf16", &bf16_scorer, &set),
        ("pruned", &pruned_scorer, &pruned_set),
        ("pruned, cluster bound only", &cluster_scorer, &cluster_set),
    ];
    let most = forms.iter().map(|f| f.1.scratch_len()).max().unwrap_or(0);
    let mut scratch = vec![0f32; most];
    let mut maps = vec![0f32; 3 * s];
    let mut map = vec![0f32; s];
    // Best time per part and form over the rounds, the forms interleaved.
    let mut best = vec![[f64::INFINITY; 4]; feats.len()];
    // The same in CPU seconds of this process (steadier than wall time on a shared
    // machine: time waiting for a core is not counted).
    let mut best_cpu = vec![[f64::INFINITY; 4]; feats.len()];
    for round in 0..rounds {
        for (p, x) in feats.iter().enumerate() {
            let x = [&x[0][..], &x[1][..], &x[2][..]];
            let mut want = None;
            for (f, (name, scorer, set)) in forms.iter().enumerate() {
                let (t, cpu) = (Instant::now(), timing::cpu_seconds());
                let sc = scorer
                    .score(
                        &pool,
                        set,
                        x,
                        [None; 3],
                        &mut maps,
                        Some(&mut map),
                        &mut scratch,
                    )
                    .unwrap();
                best[p][f] = best[p][f].min(t.elapsed().as_secs_f64());
                best_cpu[p][f] = best_cpu[p][f].min(timing::cpu_seconds() - cpu);
                let got = (bits(&sc.bank), sc.score.to_bits(), bits(&maps), bits(&map));
                match &want {
                    None => want = Some(got),
                    Some(w) => assert!(*w == got, "part {p}: {name} differs from f32"),
                }
            }
        }
        println!(
            "round {} done; load average {}",
            round + 1,
            timing::load_average()
        );
    }
    let total: [f64; 4] = std::array::from_fn(|f| best.iter().map(|b| b[f]).sum());
    let total_cpu: [f64; 4] = std::array::from_fn(|f| best_cpu.iter().map(|b| b[f]).sum());
    println!(
        "score stage, {} parts, {threads} threads, best of {rounds} rounds per part (scores and maps identical in every form):",
        feats.len()
    );
    for (f, (name, ..)) in forms.iter().enumerate() {
        println!(
            "  {name:>26}: {:8.1} ms per part, ratio to f32 {:.3}; CPU {:8.1} ms per part, ratio to f32 {:.3}",
            total[f] / feats.len() as f64 * 1e3,
            total[f] / total[0],
            total_cpu[f] / feats.len() as f64 * 1e3,
            total_cpu[f] / total_cpu[0]
        );
    }
    if !bf16 {
        println!("  (no AVX512-BF16 here: the bf16 row ran the f32 search)");
    }
    // How much work each fast form skipped.
    for (b, v) in set.banks.iter().enumerate() {
        let Some(v) = *v else { continue };
        let mut scans = 0;
        let mut queries = 0;
        for x in &feats {
            let norm = set.norms[b];
            let q: Vec<f32> = x[b]
                .iter()
                .map(|v| (v - norm.mean) * (1.0 / norm.std))
                .collect();
            let nq = q.len() / v.dim;
            let (mut d, mut i) = (vec![0f32; nq], vec![0u32; nq]);
            let mut s16 = vec![0f32; nearest_bf16_scratch_len(threads, v.dim)];
            scans += nearest_bf16(&pool, &q, v, &mut d, &mut i, &mut s16);
            queries += nq;
        }
        let share = |p: &Option<BankPartition>| match p {
            Some(p) => {
                let (asked, done) = p.pair_counts();
                let bound = p.projected_pairs();
                // A projected pair costs PROJ_DIMS of a pair's dim multiply-adds.
                let cost = (done as f64 + bound as f64 * PROJ_DIMS as f64 / v.dim as f64)
                    / asked.max(1) as f64;
                format!(
                    "{done} of {asked} ({:.3}; bound evaluated for {bound}, computed + bound cost {cost:.3})",
                    done as f64 / asked.max(1) as f64
                )
            }
            None => "(no partition)".into(),
        };
        println!(
            "  bank {}: bf16 exact scans {scans} of {queries} queries",
            BANK_NAMES[b]
        );
        println!("    pruned: pairs computed {}", share(&partitions[b]));
        println!(
            "    cluster bound only: pairs computed {}",
            share(&cluster_only[b])
        );
    }
}
