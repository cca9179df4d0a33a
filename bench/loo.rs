//! The fit's leave-one-out scoring phase alone (`miad fit` step 5), repeated on real
//! features, for profiling it and timing it against another build (`cargo bench --bench
//! loo`; ratios only, the machine is shared).
//!
//! A fitted bank file and the category's training parts: each part's features are
//! extracted once by an f32 engine (cached in `MIAD_LOO_CACHE` when set, so later runs
//! and other builds skip the networks), every bank row's origin part is recovered by
//! matching its bits against the parts' normalised features (the bank stores them
//! unchanged; rows of parts not loaded keep no origin, the xyz bank's appended zero-feature
//! row none, as in the fit), and the parts are scored as the fit scores them: the
//! file's partitions, neighbour tables, own rows excluded, maps kept.
//!
//! Environment: `MIAD_LOO_MODEL`, `MIAD_LOO_BANK` (files), `MIAD_LOO_DATA` (a category
//! folder: its train parts), `MIAD_LOO_PARTS` (default 8), `MIAD_LOO_ROUNDS` (default 3),
//! `MIAD_LOO_THREADS` (default 2), `MIAD_LOO_CACHE` (a file). Prints per round the wall
//! and CPU seconds of the scoring and a digest of every score and map bit (equal digests:
//! equal results).

use miad::cpu::bank_prune::BankPartition;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_good;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::score::{BankSet, Scorer};
use miad::types::{BANK_NAMES, XYZ};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod timing;
use timing::env_usize as env;

/// Origin of a row no loaded part holds (never excluded).
const NO_PART: u32 = u32::MAX - 1;

fn path_env(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(p) => PathBuf::from(p),
        None => {
            eprintln!("loo: set {name} (see the program's doc)");
            std::process::exit(2);
        }
    }
}

/// Each part's raw features per bank, from the cache when it holds `parts` parts.
fn features(model: &Path, bank: &Path, data: &Path, parts: usize) -> Vec<[Vec<f32>; 3]> {
    let cache = std::env::var_os("MIAD_LOO_CACHE").map(PathBuf::from);
    if let Some(c) = cache.as_ref().filter(|c| c.exists()) {
        let bytes = std::fs::read(c).unwrap();
        let all: &[f32] = bytemuck::cast_slice(&bytes);
        let (lens, mut rest) = all.split_at(3);
        let lens: [usize; 3] = std::array::from_fn(|b| lens[b] as usize);
        let per = lens.iter().sum::<usize>();
        if rest.len() / per >= parts {
            return (0..parts)
                .map(|_| {
                    std::array::from_fn(|b| {
                        let (x, r) = rest.split_at(lens[b]);
                        rest = r;
                        x.to_vec()
                    })
                })
                .collect();
        }
    }
    let files = list_good(data, "train").unwrap();
    let mut engine = Engine::open(model, bank, &EngineOptions::default()).unwrap();
    let mut feats: Vec<[Vec<f32>; 3]> = Vec::new();
    for f in files.iter().take(parts) {
        let p = f.load().unwrap();
        let (r, c) = p.views();
        engine.inspect(r, c, &InspectOptions::default()).unwrap();
        let x = engine.features().unwrap();
        feats.push(std::array::from_fn(|b| x[b].to_vec()));
    }
    if let Some(c) = cache {
        let mut out: Vec<f32> = (0..3).map(|b| feats[0][b].len() as f32).collect();
        for f in &feats {
            for x in f {
                out.extend_from_slice(x);
            }
        }
        std::fs::write(c, bytemuck::cast_slice(&out)).unwrap();
    }
    feats
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let model = path_env("MIAD_LOO_MODEL");
    let bank = path_env("MIAD_LOO_BANK");
    let data = path_env("MIAD_LOO_DATA");
    let parts = env("MIAD_LOO_PARTS", 8);
    let rounds = env("MIAD_LOO_ROUNDS", 3).max(1);
    let threads = env("MIAD_LOO_THREADS", 2);
    let feats = features(&model, &bank, &data, parts);
    let parts = feats.len();

    let file = BankFile::open(&bank, &OpenOptions::default(), None).unwrap();
    let stored = BankSet::from_file(&file).unwrap();
    // The file's partitions, copied so that the searches count their pairs.
    let partitions: Vec<Option<BankPartition>> = stored
        .banks
        .iter()
        .map(|v| Some(BankPartition::copied(v.as_ref()?.partition?)))
        .collect();
    let set = BankSet {
        banks: std::array::from_fn(|b| {
            stored.banks[b].map(|v| match &partitions[b] {
                Some(p) => v.with_partition(p.view(&v).unwrap()),
                None => v,
            })
        }),
        ..stored
    };
    // Origins: the bank rows are the parts' normalised features, bit for bit.
    let origins: Vec<Vec<u32>> = (0..3)
        .map(|b| {
            let Some(v) = set.banks[b] else {
                return Vec::new();
            };
            let norm = set.norms[b];
            let inv = 1.0 / norm.std;
            let mut rows: HashMap<Vec<u32>, u32> = HashMap::new();
            for (p, f) in feats.iter().enumerate().rev() {
                for r in f[b].chunks_exact(v.dim) {
                    let key = r
                        .iter()
                        .map(|x| ((x - norm.mean) * inv).to_bits())
                        .collect();
                    rows.insert(key, p as u32);
                }
            }
            let mut o: Vec<u32> = (0..v.n)
                .map(|i| {
                    let key: Vec<u32> = v.row(i).iter().map(|x| x.to_bits()).collect();
                    *rows.get(&key).unwrap_or(&NO_PART)
                })
                .collect();
            if b == XYZ {
                // The appended zero-feature row has no origin in the fit.
                o[v.n - 1] = u32::MAX;
            }
            let found = o.iter().filter(|&&p| (p as usize) < parts).count();
            println!(
                "bank {}: {} rows x {}, {found} from the {parts} loaded parts",
                BANK_NAMES[b], v.n, v.dim
            );
            o
        })
        .collect();

    let pool = miad::cpu::pool::Pool::new(threads);
    let mut scorer = Scorer::new(file.config(), &set, threads);
    scorer.set_svms([1.0; 3], [1.0; 3]);
    let s2 = scorer.map_size() * scorer.map_size();
    let mut scratch = vec![0f32; scorer.scratch_len()];
    let mut maps = vec![0f32; 3 * s2];
    for round in 0..rounds {
        let (t, cpu) = (Instant::now(), timing::cpu_seconds());
        // FNV-1a over every score and map bit, in part order.
        let mut digest = 0xcbf2_9ce4_8422_2325u64;
        for (p, f) in feats.iter().enumerate() {
            let x = [&f[0][..], &f[1][..], &f[2][..]];
            let excl: [Option<(&[u32], u32)>; 3] =
                std::array::from_fn(|b| set.banks[b].map(|_| (origins[b].as_slice(), p as u32)));
            let sc = scorer
                .score(&pool, &set, x, excl, &mut maps, None, &mut scratch)
                .unwrap();
            for v in sc.vector.iter().chain(&maps) {
                digest = (digest ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        println!(
            "round {}: {parts} parts in {:.3} s wall, {:.3} s CPU; digest {digest:016x}; load {}",
            round + 1,
            t.elapsed().as_secs_f64(),
            timing::cpu_seconds() - cpu,
            timing::load_average()
        );
    }
    for (b, p) in partitions.iter().enumerate() {
        if let Some(p) = p {
            let (asked, computed) = p.pair_counts();
            println!(
                "bank {}: {computed} of {asked} pairs computed ({:.4}), bound evaluated for {}",
                BANK_NAMES[b],
                computed as f64 / asked.max(1) as f64,
                p.projected_pairs()
            );
        }
    }
}
