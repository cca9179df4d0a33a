//! The user's workflow through the `miad` command on a tiny synthetic category:
//! synth → model random → fit → inspect (with heatmaps and a missing cloud) → eval (with
//! saved predictions and the RADAR protocol) → extract → bench, and errors that name
//! the problem.

use std::path::Path;
use std::process::Command;

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

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = miad(args);
    assert!(ok, "miad {args:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn synth_fit_inspect_eval_extract_bench() {
    let dir = crate::common::scratch_dir("cli-flow");
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    let (data, model, bank) = (p("data"), p("m.miad"), p("b.bank"));
    ok(&[
        "synth",
        "--out",
        &data,
        "--categories",
        "block",
        "--train",
        "4",
        "--validation",
        "0",
        "--test-good",
        "1",
        "--test-bad",
        "1",
        "--size",
        "96",
    ]);
    ok(&["model", "random", "--preset", "small", "--out", &model]);
    let cat = p("data/block");
    let out = ok(&[
        "fit",
        "--model",
        &model,
        "--data",
        &cat,
        "--out",
        &bank,
        "--threads",
        "2",
    ]);
    assert!(out.contains("fitted block from 4 parts"), "{out}");

    let good_png = p("data/block/test/good/rgb/000.png");
    let out = ok(&[
        "inspect",
        "--model",
        &model,
        "--bank",
        &bank,
        &good_png,
        "--heatmaps",
        &p("heat"),
    ]);
    assert!(out.contains("score") && out.contains("[complete]"), "{out}");
    assert!(Path::new(&p("heat/000.png")).is_file());
    let out = ok(&[
        "inspect",
        "--model",
        &model,
        "--bank",
        &bank,
        &good_png,
        "--no-cloud",
    ]);
    assert!(out.contains("[rgb_only]"), "{out}");

    let out = ok(&[
        "eval",
        "--model",
        &model,
        "--bank",
        &bank,
        "--data",
        &cat,
        "--save-predictions",
        &p("pred"),
        "--missing-rate",
        "0.5",
    ]);
    assert!(
        out.contains("I-AUROC") && out.contains("block (complete)"),
        "{out}"
    );
    // Two settings of one category: no mean row across them.
    assert!(!out.contains("\nmean "), "{out}");
    assert!(Path::new(&p("pred/predictions.csv")).is_file());

    let xyz = p("data/block/test/good/xyz/000.tiff");
    ok(&[
        "extract",
        "--model",
        &model,
        "--rgb",
        &good_png,
        "--xyz",
        &xyz,
        "--out",
        &p("x.safetensors"),
    ]);
    let bytes = std::fs::read(p("x.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "rgb_input",
        "rgb_features",
        "points",
        "point_pixels",
        "center_indices",
        "group_indices",
        "group_features",
        "xyz_features",
        "fused_features",
    ] {
        assert!(st.tensor(name).is_ok(), "extract wrote no {name}");
    }

    let out = ok(&[
        "bench",
        "--model",
        &model,
        "--bank",
        &bank,
        "--data",
        &cat,
        "--parts",
        "10",
        "--warmup",
        "2",
        "--out",
        &p("bench"),
    ]);
    assert!(out.contains("max/p50"), "{out}");
    assert!(Path::new(&p("bench/latency.json")).is_file());
    assert!(Path::new(&p("bench/latency.png")).is_file());

    // Training with half of the clouds missing (RADAR's protocol, in training).
    let out = ok(&[
        "fit",
        "--model",
        &model,
        "--data",
        &cat,
        "--out",
        &p("half.bank"),
        "--missing-rate",
        "0.5",
        "--drop",
        "cloud",
    ]);
    assert!(out.contains("fitted block from 4 parts"), "{out}");

    // Errors name the problem.
    let (ok_, _, err) = miad(&[
        "fit",
        "--model",
        &model,
        "--data",
        &p("nowhere"),
        "--out",
        &bank,
    ]);
    assert!(!ok_ && err.contains("nowhere"), "{err}");
    let (ok_, _, err) = miad(&["inspect", "--model", &model, "--bank", &bank, &p("m.miad")]);
    assert!(
        !ok_ && err.contains("not a .png image or a .tiff point cloud"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
