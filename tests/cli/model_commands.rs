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

/// `miad train-fusion --method radar` as a user runs it: a model with the asked RADAR
/// sizes (the hybrid module left out with --no-hybrid) and its provenance; wrong
/// combinations are refused.
#[test]
fn train_fusion_radar_writes_a_radar_model() {
    let dir = tmp("radar-cli");
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let (ok, out, err) = miad(&[
        "synth",
        "--out",
        d,
        "--categories",
        "disc",
        "--train",
        "4",
        "--validation",
        "0",
        "--test-good",
        "0",
        "--test-bad",
        "0",
        "--size",
        "96",
    ]);
    assert!(ok, "{out}{err}");
    let model = dir.join("small.miad");
    let m = model.to_str().unwrap();
    let (ok, out, err) = miad(&["model", "random", "--preset", "small", "--out", m]);
    assert!(ok, "{out}{err}");
    let radar = dir.join("radar.miad");
    let cat = data.join("disc");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train-fusion",
            "--model",
            m,
            "--data",
            cat.to_str().unwrap(),
            "--out",
            radar.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch",
            "2",
            "--patches",
            "8",
            "--threads",
            "2",
        ];
        args.extend_from_slice(extra);
        miad(&args)
    };
    let (ok, out, err) = train(&[
        "--method",
        "radar",
        "--radar-dim",
        "16",
        "--radar-depth",
        "1",
        "--radar-heads",
        "2",
        "--instruction-len",
        "2",
        "--no-hybrid",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("trained radar on 4 parts"), "{out}");
    let opened = ModelFile::open(&radar, &OpenOptions::default()).unwrap();
    let r = opened.config().radar.clone().expect("a RADAR model");
    assert_eq!(
        (r.dim, r.depth, r.heads, r.instruction_len, r.hybrid),
        (16, 1, 2, 2, false)
    );
    let (ok, _, err) = train(&["--method", "bogus"]);
    assert!(!ok && err.contains("uff or radar"), "{err}");
    let ck = dir.join("ck.safetensors");
    let (ok, _, err) = train(&[
        "--method",
        "radar",
        "--export-checkpoint",
        ck.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--method uff only"), "{err}");
    let (ok, _, err) = train(&["--method", "radar", "--backend", "cuda-sim"]);
    assert!(!ok && err.contains("trains on the CPU only"), "{err}");
    let (ok, _, err) = train(&["--backend", "tpu"]);
    assert!(!ok && err.contains("unknown backend"), "{err}");
    // UFF (the default method) on the simulated device, or the error of a build without
    // it; the provenance names the backend.
    let (ok, out, err) = train(&["--backend", "cuda-sim"]);
    if cfg!(feature = "cuda-sim") {
        assert!(ok, "{out}{err}");
        assert!(out.contains("on cuda-sim"), "{out}");
        let c = miad::format::Container::open(&radar, &OpenOptions::default()).unwrap();
        let backend = c
            .manifest()
            .provenance
            .iter()
            .find(|(k, _)| k == "train.backend")
            .map(|(_, v)| v.clone());
        assert_eq!(backend.as_deref(), Some("cuda-sim"));
    } else {
        assert!(!ok && err.contains("cuda-sim"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
