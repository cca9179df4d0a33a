//! The pruned bank search at inspection (`EngineOptions::pruned_search`): the fit stores
//! each bank's partition in the bank file; an engine searching through it gives the
//! unpruned engine's results bit for bit (scores, bank scores, maps); a bank file without
//! the partitions (written before them) still opens and searches unpruned, one without
//! the projection bound searches with the cluster bound alone; a corrupt partition or
//! projection is refused with its name. Banks synthesised at other sizes (`miad bench
//! --bank-rows`) carry partitions and projections built for their rows, searched the same
//! way.

use miad::cpu::bank_prune::BankPartition;
use miad::cpu::pool::Pool;
use miad::engine::{Engine, EngineOptions, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::scaled_bank::write_scaled_bank;
use miad::eval::synth::Category;
use miad::format::{BankFile, OpenOptions, Writer};
use miad::pipeline::score::{partition_names, BankSet};
use std::path::Path;

use crate::common;

fn open(f: &common::Fixture, bank: &Path, pruned_search: bool) -> miad::Result<Engine> {
    Engine::open(
        &f.model,
        bank,
        &EngineOptions {
            threads: 2,
            max_width: 96,
            max_height: 96,
            pruned_search,
            ..EngineOptions::default()
        },
    )
}

/// A copy of `src` with its tensors changed by `edit(name, bytes)` (`None`: dropped).
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) {
    let file = BankFile::open(src, &OpenOptions::default(), None).unwrap();
    let mut w = Writer::bank(file.config().clone());
    for entry in &file.container().manifest().tensors {
        let (e, bytes) = file.container().raw(&entry.name).unwrap();
        if let Some(b) = edit(&e.name, bytes) {
            w.add(e.name.clone(), e.dtype, &e.shape_usize(), &b);
        }
    }
    w.write(dst).unwrap();
}

#[test]
fn pruned_engine_equals_the_unpruned_engine_and_old_files_still_open() {
    let f = common::fitted("pruned-search", Category::Disc, 5, 6, 2);
    // The fit stored a partition of every bank.
    let file = BankFile::open(&f.bank, &OpenOptions::default(), None).unwrap();
    let set = BankSet::from_file(&file).unwrap();
    let mut stored = 0;
    for (b, v) in set.banks.iter().enumerate() {
        if let Some(v) = v {
            let p = v
                .partition
                .unwrap_or_else(|| panic!("bank {b}: no partition stored"));
            assert_eq!(p.order.len(), v.n);
            // Banks of 64 values or more carry the projection bound.
            assert_eq!(p.projection.is_some(), v.dim >= 64, "bank {b}: projection");
            stored += 1;
        }
    }
    assert!(stored > 0);
    assert!(set
        .without_partitions()
        .banks
        .iter()
        .flatten()
        .all(|v| v.partition.is_none()));
    drop(file);

    let old = f.dir.join("old.bank");
    let names: Vec<String> = (0..3).flat_map(partition_names).collect();
    rewrite(&f.bank, &old, |name, b| {
        (!names.iter().any(|n| n == name)).then(|| b.to_vec())
    });
    let parts: Vec<_> = list_test(&f.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    // Written before the projection bound: partitions with the cluster bound only.
    let cluster_only = f.dir.join("cluster-only.bank");
    let projections: Vec<String> = (0..3)
        .flat_map(|b| partition_names(b).into_iter().skip(3))
        .collect();
    rewrite(&f.bank, &cluster_only, |name, b| {
        (!projections.iter().any(|n| n == name)).then(|| b.to_vec())
    });
    // Banks synthesised at other sizes: xyz and fused grown (partitions built for the
    // new rows), rgb shrunk below the smallest partition (searched unpruned).
    let scaled = f.dir.join("scaled.bank");
    let src = BankFile::open(&f.bank, &OpenOptions::default(), None).unwrap();
    let c = src.config();
    let grown = [c.xyz_rows as usize * 3, 5, c.fused_rows as usize * 2];
    let infos = write_scaled_bank(&Pool::new(2), &src, grown.map(Some), 7, &scaled).unwrap();
    drop(src);
    let scaled_file = BankFile::open(&scaled, &OpenOptions::default(), None).unwrap();
    let scaled_set = BankSet::from_file(&scaled_file).unwrap();
    for (info, b) in infos.iter().zip(0..3) {
        let v = scaled_set.banks[b].unwrap();
        assert_eq!(v.n, grown[b]);
        match v.partition {
            // The stored partition is the one the fit would build from these rows.
            Some(p) => {
                let built =
                    BankPartition::build(&Pool::new(1), v, BankPartition::clusters_for(v.n))
                        .unwrap();
                assert_eq!(
                    (p.order, p.starts, p.radii),
                    (&built.order[..], &built.starts[..], &built.radii[..]),
                    "{}: stored partition",
                    info.name
                );
                let stored = p.projection.map(|v| (v.basis, v.rows));
                let want = built
                    .projection
                    .as_ref()
                    .map(|v| (&v.basis[..], &v.rows[..]));
                assert!(stored.is_some(), "{}: no projection stored", info.name);
                assert_eq!(stored, want, "{}: stored projection", info.name);
                assert_eq!(info.clusters, p.clusters());
            }
            None => assert_eq!((b, info.clusters), (1, 0), "{}: no partition", info.name),
        }
    }
    drop(scaled_file);

    let mut plain = open(&f, &f.bank, false).unwrap();
    let mut pruned = open(&f, &f.bank, true).unwrap();
    let mut old_pruned = open(&f, &old, true).unwrap();
    let mut cluster_pruned = open(&f, &cluster_only, true).unwrap();
    let mut scaled_plain = open(&f, &scaled, false).unwrap();
    let mut scaled_pruned = open(&f, &scaled, true).unwrap();
    // What each engine says it searches with.
    assert!(pruned.search_clusters().iter().all(|&k| k > 0));
    for e in [&plain, &old_pruned, &scaled_plain] {
        assert_eq!(e.search_clusters(), [0; 3]);
    }
    let k = scaled_pruned.search_clusters();
    assert!(k[0] > 0 && k[1] == 0 && k[2] > 0, "{k:?}");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let opts = InspectOptions::default();
    for p in &parts {
        let (r, c) = p.views();
        let want = scaled_plain.inspect(r, c, &opts).unwrap();
        let got = scaled_pruned.inspect(r, c, &opts).unwrap();
        assert!(
            (
                got.score.to_bits(),
                bits(&got.bank_scores),
                bits(got.map.unwrap())
            ) == (
                want.score.to_bits(),
                bits(&want.bank_scores),
                bits(want.map.unwrap())
            ),
            "scaled banks: results differ from the unpruned engine"
        );
        let want = plain.inspect(r, c, &opts).unwrap();
        let want = (
            want.score.to_bits(),
            bits(&want.bank_scores),
            bits(want.map.unwrap()),
        );
        for (what, e) in [
            ("pruned", &mut pruned),
            ("old file", &mut old_pruned),
            ("cluster bound only", &mut cluster_pruned),
        ] {
            let got = e.inspect(r, c, &opts).unwrap();
            let got = (
                got.score.to_bits(),
                bits(&got.bank_scores),
                bits(got.map.unwrap()),
            );
            assert!(
                got == want,
                "{what}: results differ from the unpruned engine"
            );
        }
    }

    // A partition listing a row twice: refused when the file is opened, naming it.
    let bad = f.dir.join("bad.bank");
    let order = partition_names(2)[0].clone();
    rewrite(&f.bank, &bad, |name, b| {
        let mut b = b.to_vec();
        if name == order {
            let first: [u8; 4] = b[..4].try_into().unwrap();
            b[4..8].copy_from_slice(&first);
        }
        Some(b)
    });
    let e = open(&f, &bad, true).unwrap_err().to_string();
    assert!(e.contains("fused partition") && e.contains("twice"), "{e}");

    // A projection basis that is not orthonormal (one value doubled): refused by name.
    let basis = partition_names(2)[3].clone();
    rewrite(&f.bank, &bad, |name, b| {
        let mut b = b.to_vec();
        if name == basis {
            // The first direction's first value (after the mean's).
            let at = 4;
            let v = f32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            b[at..at + 4].copy_from_slice(&(2.0 * v + 0.5).to_le_bytes());
        }
        Some(b)
    });
    let e = open(&f, &bad, true).unwrap_err().to_string();
    assert!(
        e.contains("fused partition") && e.contains("orthonormal"),
        "{e}"
    );
}
