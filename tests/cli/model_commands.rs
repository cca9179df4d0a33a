//! `miad model random | info` and `miad convert` as a user runs them.

use miad::config::BankConfig;
use miad::format::{hex, ModelFile, OpenOptions, Writer};
use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    crate::common::scratch_dir("cli-model-commands").join(name)
}

fn miad(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_miad"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn random_then_info_on_model_and_bank_files() {
    let model = tmp("small.miad");
    let m = model.to_str().unwrap();
    let (ok, out, err) = miad(&[
        "model", "random", "--preset", "small", "--seed", "4", "--out", m,
    ]);
    assert!(ok, "{out}{err}");
    let opened = ModelFile::open(&model, &OpenOptions::default()).unwrap();
    let id = hex(&opened.id());
    assert!(out.contains(&id), "random prints the id: {out}");

    // Same seed, same file identity; another seed, another identity.
    let again = tmp("small-again.miad");
    assert!(
        miad(&[
            "model",
            "random",
            "--preset",
            "small",
            "--seed",
            "4",
            "--out",
            again.to_str().unwrap()
        ])
        .0
    );
    assert_eq!(
        ModelFile::open(&again, &OpenOptions::default())
            .unwrap()
            .id(),
        opened.id()
    );

    let (ok, out, err) = miad(&["model", "info", m]);
    assert!(ok, "{err}");
    for needle in [
        "kind: model",
        &format!("id: {id}"),
        "vit.blocks.1.mlp.fc2.weight",
        "provenance: seed = 4",
        "82 tensors",
    ] {
        assert!(out.contains(needle), "info shows {needle:?}:\n{out}");
    }

    let bank = tmp("x.bank");
    Writer::bank(BankConfig::empty(opened.id(), "small", "cable_gland"))
        .add_typed::<u32>("labels", &[3], &[1, 2, 3])
        .write(&bank)
        .unwrap();
    let (ok, out, err) = miad(&["model", "info", bank.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("kind: bank") && out.contains("cable_gland") && out.contains("labels"));

    // A truncated file: failure, and the message names the file and the fault.
    let bytes = std::fs::read(&model).unwrap();
    let cut = tmp("cut.miad");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = miad(&["model", "info", cut.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("cut.miad") && err.contains("truncated"),
        "{err}"
    );

    let (ok, _, err) = miad(&["model", "random", "--preset", "huge", "--out", m]);
    assert!(!ok && err.contains("huge"), "{err}");
}

#[test]
fn convert_alias_reports_missing_inputs() {
    let (ok, _, err) = miad(&["convert", "--out", tmp("none.miad").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nothing to convert"), "{err}");
    let (ok, _, err) = miad(&[
        "model",
        "convert",
        "--vit",
        "/nonexistent/vit.safetensors",
        "--out",
        tmp("none.miad").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("/nonexistent/vit.safetensors"), "{err}");
}
