//! The fit's neighbour tables (the re-weighting's b_1, b_2; SPEC §7), both ways in one
//! process on a bank file's banks (`cargo bench --bench neighbours`; ratios only, the
//! machine is shared): `cpu::bank_search::neighbour_table` (every pair, once) and
//! `cpu::bank_neighbours::neighbour_table_pruned` through the bank's partition (the
//! file's, or built here as the fit builds it). The tables are checked equal.
//!
//! Environment: `MIAD_TABLE_BANK` (a bank file), `MIAD_TABLE_ROUNDS` (default 2; rounds
//! alternate the two ways, the best of each is printed, wall and CPU time), `MIAD_TABLE_THREADS` (default 2),
//! `MIAD_TABLE_FULL` (default 1; 0: the pruned table alone, checked against the file's
//! table, which the fit wrote).

use miad::cpu::bank_neighbours::neighbour_table_pruned;
use miad::cpu::bank_prune::BankPartition;
use miad::cpu::bank_search::neighbour_table;
use miad::cpu::pool::Pool;
use miad::format::{BankFile, OpenOptions};
use miad::pipeline::score::BankSet;
use miad::types::BANK_NAMES;
use std::time::Instant;

mod timing;
use timing::{cpu_seconds, env_usize as env};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(path) = std::env::var_os("MIAD_TABLE_BANK") else {
        eprintln!("neighbours: set MIAD_TABLE_BANK (see the program's doc)");
        std::process::exit(2);
    };
    let rounds = env("MIAD_TABLE_ROUNDS", 2).max(1);
    let with_full = env("MIAD_TABLE_FULL", 1) != 0;
    let pool = Pool::new(env("MIAD_TABLE_THREADS", 2));
    let file = BankFile::open(path.as_ref(), &OpenOptions::default(), None).unwrap();
    let stored = BankSet::from_file(&file).unwrap();
    for (b, v) in stored.banks.iter().enumerate() {
        let Some(v) = *v else { continue };
        let built;
        let part = match v.partition {
            Some(p) => p,
            None => {
                built = BankPartition::build(&pool, v, BankPartition::clusters_for(v.n)).unwrap();
                built.view(&v).unwrap()
            }
        };
        let (mut full_s, mut pruned_s) = (f64::INFINITY, f64::INFINITY);
        let (mut full_cpu, mut pruned_cpu) = (f64::INFINITY, f64::INFINITY);
        let (mut full_d, mut pruned_d) = (0, 0);
        for _ in 0..rounds {
            let full = if with_full {
                let (t, c) = (Instant::now(), cpu_seconds());
                let full = neighbour_table(&pool, v, &mut |_, _| {}).unwrap();
                full_s = full_s.min(t.elapsed().as_secs_f64());
                full_cpu = full_cpu.min(cpu_seconds() - c);
                full_d = full.distances;
                full.rows
            } else {
                v.neighbours.expect("a bank file with its tables").to_vec()
            };
            let (t, c) = (Instant::now(), cpu_seconds());
            let pruned = neighbour_table_pruned(&pool, v, part, &mut |_, _| {}).unwrap();
            pruned_s = pruned_s.min(t.elapsed().as_secs_f64());
            pruned_cpu = pruned_cpu.min(cpu_seconds() - c);
            assert_eq!(pruned.rows, full, "{}: tables differ", BANK_NAMES[b]);
            pruned_d = pruned.distances;
        }
        if !with_full {
            println!(
                "{} {} × {} ({} clusters): pruned {pruned_s:.3} s, CPU {pruned_cpu:.3} s \
                 ({pruned_d} distances; equal to the file's table)",
                BANK_NAMES[b],
                v.n,
                v.dim,
                part.clusters(),
            );
            continue;
        }
        println!(
            "{} {} × {} ({} clusters): full {:.3} s ({full_d} distances), pruned {:.3} s \
             ({pruned_d} distances, {:.3} of full), time ratio {:.3} (CPU seconds: {:.3})",
            BANK_NAMES[b],
            v.n,
            v.dim,
            part.clusters(),
            full_s,
            pruned_s,
            pruned_d as f64 / full_d as f64,
            pruned_s / full_s,
            pruned_cpu / full_cpu
        );
    }
}
