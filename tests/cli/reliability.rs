//! The command line keeps the promises of its help and of `weights/CONVERTING.md`
//! (issue 16): part folders for `inspect`, a readable and a JSON `model info`, and a
//! case the bank cannot decide reported as such.

use crate::fixture;
use std::process::Command;

fn miad(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_miad"))
        .args(args)
        .output()
        .expect("run miad");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_takes_the_part_folders_its_help_promises() {
    let (ok, help, _) = miad(&["inspect", "--help"]);
    assert!(ok && help.contains("folders"), "{help}");
    let f = fixture::files("cli-folders");
    let data = f.dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let d = data.to_str().unwrap();
    let (ok, out, err) = miad(&[
        "synth",
        "--out",
        d,
        "--categories",
        "block",
        "--train",
        "1",
        "--validation",
        "0",
        "--test-good",
        "2",
        "--test-bad",
        "0",
        "--size",
        "96",
    ]);
    assert!(ok, "{out}{err}");
    let good = data.join("block/test/good");
    let (m, b) = (f.model.to_str().unwrap(), f.bank.to_str().unwrap());
    let (ok, out, err) = miad(&["inspect", "--model", m, "--bank", b, good.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("000.png: score") && out.contains("001.png: score"),
        "{out}"
    );
    // The fixture bank has no cloud-only statistics: it cannot decide that case.
    let (ok, out, err) = miad(&[
        "inspect",
        "--model",
        m,
        "--bank",
        b,
        "--no-rgb",
        good.join("xyz/000.tiff").to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("Uncertain") && out.contains("cannot decide"),
        "{out}"
    );
    let empty = f.dir.join("empty-folder");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = miad(&[
        "inspect",
        "--model",
        m,
        "--bank",
        b,
        empty.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("without rgb/*.png or xyz/*.tiff"),
        "{err}"
    );
}

#[test]
fn model_info_is_a_readable_summary_and_json() {
    let f = fixture::files("cli-info");
    let (ok, out, err) = miad(&["model", "info", f.bank.to_str().unwrap()]);
    assert!(ok, "{err}");
    let model = miad::format::ModelFile::open(&f.model, &Default::default()).unwrap();
    let id = miad::format::hex(&model.id());
    assert!(out.contains(&format!("model_id: {id}")), "{out}");
    assert!(out.contains("radar_cases: rgb_only"), "{out}");
    // The fixture's banks are written without neighbour tables: info says what happens.
    assert!(
        out.contains("neighbour_tables: none (written before the tables or resized: re-weighting scans xyz rgb fused per part)"),
        "{out}"
    );
    // The fixture's banks carry the partitions of the pruned search.
    assert!(
        out.contains("search_partitions: pruned exact search: xyz 12 clusters + projection bound, rgb 12 clusters + projection bound, fused 12 clusters + projection bound"),
        "{out}"
    );
    // No Rust debug dump (an id as 16 lines of bytes).
    assert!(
        !out.contains("model_id: [") && out.lines().count() < 60,
        "{out}"
    );
    for file in [&f.model, &f.bank] {
        let (ok, json, err) = miad(&["model", "info", "--json", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        let check = Command::new("python3")
            .args([
                "-c",
                "import json,sys; d=json.load(sys.stdin); print(d['kind'], d['id'], len(d['tensors']))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(json.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let parsed = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "not JSON: {json}");
        assert!(
            parsed.starts_with("model ") || parsed.starts_with("bank "),
            "{parsed}"
        );
    }
}

/// A tiny synthetic category; returns its first good test part (rgb, xyz).
fn synth_part(dir: &std::path::Path) -> (String, String) {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let (ok, out, err) = miad(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--categories",
        "block",
        "--train",
        "1",
        "--validation",
        "0",
        "--test-good",
        "1",
        "--test-bad",
        "0",
        "--size",
        "96",
    ]);
    assert!(ok, "{out}{err}");
    let good = data.join("block/test/good");
    (
        good.join("rgb/000.png").to_str().unwrap().into(),
        good.join("xyz/000.tiff").to_str().unwrap().into(),
    )
}

#[test]
fn convert_and_extract_take_a_model_without_all_three_networks() {
    use miad::config::ModelConfig;
    use miad::format::{random_model, write_safetensors, StTensor, Writer};
    let dir = fixture::tmpdir("cli-partial");
    let (rgb, xyz) = synth_part(&dir);
    let full = random_model(&ModelConfig::small(), 3);
    // A ViT checkpoint under its timm names, converted alone.
    let vit: Vec<(String, Vec<usize>, Vec<f32>)> = full
        .tensors
        .iter()
        .filter_map(|(n, (shape, data))| {
            n.strip_prefix("vit.")
                .map(|s| (s.to_string(), shape.clone(), data.clone()))
        })
        .collect();
    let st: Vec<StTensor<'_>> = vit
        .iter()
        .map(|(n, s, d)| StTensor::F32(n, s.clone(), d))
        .collect();
    let ckpt = dir.join("vit.safetensors");
    write_safetensors(&ckpt, &st).unwrap();
    let vit_model = dir.join("vit.miad");
    let (ok, out, err) = miad(&[
        "convert",
        "--vit",
        ckpt.to_str().unwrap(),
        "--vit-heads",
        "3",
        "--out",
        vit_model.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let x = dir.join("vit-x.safetensors");
    let (ok, out, err) = miad(&[
        "extract",
        "--model",
        vit_model.to_str().unwrap(),
        "--rgb",
        &rgb,
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("without Point-MAE, fusion"), "{out}");
    let bytes = std::fs::read(&x).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(t.tensor("rgb_features").unwrap().shape(), &[8, 8, 96]);
    // A Point-MAE-only model file.
    let mut cfg = ModelConfig::small();
    cfg.vit = None;
    cfg.fusion = None;
    let mut w = Writer::model(cfg);
    for (n, (shape, data)) in &full.tensors {
        if n.starts_with("point.") {
            w.add_f32(n.clone(), shape, data);
        }
    }
    let point_model = dir.join("point.miad");
    w.write(&point_model).unwrap();
    let x = dir.join("point-x.safetensors");
    let (ok, out, err) = miad(&[
        "extract",
        "--model",
        point_model.to_str().unwrap(),
        "--xyz",
        &xyz,
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let bytes = std::fs::read(&x).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = t.tensor("xyz_features").unwrap();
    assert_eq!(f.shape(), &[16, 16, 192]);
    assert!(t.tensor("group_features").is_ok() && t.tensor("rgb_features").is_err());
}
