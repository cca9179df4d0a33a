//! `miad bench --bank-rows` (banks synthesised at given sizes) and `--reference` (the
//! side-by-side table with the PyTorch reference's JSON), on a tiny fitted category.

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

/// A reference file as `bench/reference/m3dm_torch.py` writes it (only the read fields).
fn reference_json(threads: usize, rows: [usize; 3], point_ms: &str) -> String {
    format!(
        r#"{{"torch": "2.x", "timm": "1.x", "threads": {threads},
  "banks": {{"xyz": {{"rows": {}, "dim": 192}}, "rgb": {{"rows": {}, "dim": 96}}, "fused": {{"rows": {}, "dim": 288}}}},
  "stages_p50_ms": {{"rgb": 2.0, "rgb_bf16": 1.0, "point": {point_ms}, "fusion": 0.5, "score": 4.0, "total": 10.0}}}}"#,
        rows[0], rows[1], rows[2]
    )
}

#[test]
fn scaled_banks_and_reference_table() {
    let dir = crate::common::scratch_dir("cli-bench");
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    let (data, model, bank) = (p("data"), p("m.miad"), p("b.bank"));
    ok(&[
        "synth",
        "--out",
        &data,
        "--categories",
        "block",
        "--train",
        "3",
        "--validation",
        "0",
        "--test-good",
        "1",
        "--test-bad",
        "0",
        "--size",
        "64",
    ]);
    ok(&["model", "random", "--preset", "small", "--out", &model]);
    let cat = p("data/block");
    ok(&["fit", "--model", &model, "--data", &cat, "--out", &bank]);

    // Grow xyz and fused beyond the fitted rows, shrink rgb to a prefix.
    let rows = [700usize, 5, 900];
    std::fs::write(p("ref.json"), reference_json(1, rows, "3.0")).unwrap();
    let bank_rows = format!("xyz={},rgb={},fused={}", rows[0], rows[1], rows[2]);
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--model",
            &model,
            "--bank",
            &bank,
            "--data",
            &cat,
            "--parts",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        miad(&args)
    };
    let out_dir = p("bench");
    let (success, out, err) = bench(&[
        "--out",
        &out_dir,
        "--bank-rows",
        &bank_rows,
        "--reference",
        &p("ref.json"),
    ]);
    assert!(success, "{out}\n{err}");

    // Grown banks get a partition built for their rows (the pruned search runs); the rgb
    // prefix of 5 rows is below the smallest partition (12 clusters) and searched unpruned.
    for line in [
        "xyz bank: 700 rows synthesised",
        "fused bank: 900 rows synthesised",
    ] {
        let l = out.lines().find(|l| l.starts_with(line)).unwrap_or("");
        assert!(l.contains("pruned search, "), "{line}: {out}");
    }
    let banks_line = out.lines().find(|l| l.starts_with("banks: ")).unwrap_or("");
    assert!(
        banks_line.matches(" unpruned").count() == 1
            && banks_line.matches(" pruned (").count() == 2,
        "{banks_line}"
    );
    // The report searched banks of exactly the requested sizes, and says they are synthesised.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bench/latency.json")).unwrap()).unwrap();
    let banks = report["banks"].as_array().unwrap();
    for (b, (name, want)) in banks
        .iter()
        .zip(["xyz", "rgb", "fused"].into_iter().zip(rows))
    {
        assert_eq!(b["name"], name);
        assert_eq!(b["rows"].as_u64(), Some(want as u64), "{b}");
        let clusters = b["clusters"].as_u64().unwrap();
        assert_eq!(clusters > 0, name != "rgb", "{b}");
    }
    let origin = report["banks_origin"].as_str().unwrap();
    assert!(
        origin.contains("synthesised from") && origin.contains("xyz"),
        "{origin}"
    );
    assert!(
        !Path::new(&p("bench/scaled.bank")).exists(),
        "the synthesised bank file is removed after the run"
    );

    // The table: miad's p50 next to the reference's, and their ratio.
    let table = std::fs::read_to_string(p("bench/comparison.md")).unwrap();
    let p50 = |stage: &str| {
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap()["p50_ms"]
            .as_f64()
            .unwrap()
    };
    for (stage, label, theirs) in [
        ("point", "point", 3.0),
        ("score", "score", 4.0),
        ("total", "whole part (total)", 10.0),
        ("rgb", "rgb vs PyTorch bf16 autocast", 1.0),
    ] {
        let line = format!(
            "| {label} | {:.1} | {theirs:.1} | {:.2} |",
            p50(stage),
            p50(stage) / theirs
        );
        assert!(table.contains(&line), "no '{line}' in\n{table}");
    }
    assert!(
        table.contains("| preprocess |") && table.contains("| — | — |"),
        "{table}"
    );
    assert!(
        !out.contains("note:"),
        "same threads and rows: no mismatch note\n{out}"
    );

    // A reference that measured something else is flagged.
    std::fs::write(p("ref2.json"), reference_json(2, [1, 2, 3], "3.0")).unwrap();
    let (success, out, err) = bench(&["--out", &p("bench2"), "--reference", &p("ref2.json")]);
    assert!(success, "{out}\n{err}");
    assert!(
        out.contains("note: threads differ: miad 1, reference 2"),
        "{out}"
    );
    assert!(out.contains("note: xyz bank rows differ"), "{out}");

    // Malformed options are refused with a message naming the problem, before any run.
    for (bank_rows, message) in [
        ("xyz=abc", "not a whole number"),
        ("color=3", "unknown bank 'color'"),
        ("xyz=3,xyz=4", "given twice"),
        ("xyz", "is not BANK=ROWS"),
        ("rgb=0", "at least 1"),
    ] {
        let (success, _, err) = bench(&["--out", &p("bad"), "--bank-rows", bank_rows]);
        assert!(!success && err.contains(message), "{bank_rows}: {err}");
    }
    let (success, _, err) = bench(&["--out", &p("bad"), "--bank-rows", "xyz=1"]);
    assert!(!success && err.contains("too few"), "{err}");
    std::fs::write(p("broken.json"), "{\"stages_p50_ms\": {").unwrap();
    std::fs::write(p("nopoint.json"), reference_json(1, rows, "\"fast\"")).unwrap();
    for (file, message) in [
        ("broken.json", "not JSON"),
        (
            "nopoint.json",
            "stages_p50_ms.point is missing or not a non-negative number",
        ),
        ("absent.json", "absent.json"),
    ] {
        let (success, out, err) = bench(&["--out", &p("bad"), "--reference", &p(file)]);
        assert!(!success && err.contains(message), "{file}: {err}");
        assert!(!out.contains("stage (ms)"), "refused before the run: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
