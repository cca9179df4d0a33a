//! Regression tests of issue 16 ("nothing a file, a sensor or a careless caller sends can
//! crash, hang or mislead the runtime"): one test per defect the hostile-caller harness
//! found. Cases that crashed or hung the process run in a child process (this test
//! binary re-run on one case) with a time limit, so a regression fails the test instead
//! of killing or wedging the whole run.

use crate::fixture;

use miad::capi::*;
use miad::config::BankConfig;
use miad::engine::{Case, Engine, EngineOptions, InspectOptions};
use miad::format::{BankFile, ModelFile, OpenOptions, Writer};
use miad::pipeline::input::{CloudView, RgbView};
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

/// Fresh copies of the fixture files in their own folder (tests change them).
fn copies(tag: &str) -> fixture::Files {
    let f = fixture::files(&format!("rel-src-{tag}"));
    let dir = fixture::tmpdir(&format!("rel-{tag}"));
    let copy = |p: &Path| {
        let d = dir.join(p.file_name().unwrap());
        std::fs::copy(p, &d).unwrap();
        d
    };
    fixture::Files {
        model: copy(&f.model),
        bank: copy(&f.bank),
        other_model: copy(&f.other_model),
        dir,
    }
}

fn options() -> EngineOptions {
    EngineOptions {
        threads: 2,
        max_width: 256,
        max_height: 256,
        ..EngineOptions::default()
    }
}

/// Writes `dst` as `src` with its configuration changed by `edit` and every tensor
/// copied (through `tensor`, which may change its bytes): the writer recomputes every
/// checksum, as a buggy writer would.
pub fn rewrite_bank(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut BankConfig),
    tensor: impl Fn(&str, &mut Vec<u8>),
) {
    let b = BankFile::open(src, &OpenOptions::default(), None).unwrap();
    let mut cfg = b.config().clone();
    edit(&mut cfg);
    let mut w = Writer::bank(cfg);
    for t in &b.container().manifest().tensors {
        let (e, bytes) = b.container().raw(&t.name).unwrap();
        let mut bytes = bytes.to_vec();
        tensor(&t.name, &mut bytes);
        let shape: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        w.add(t.name.clone(), e.dtype, &shape, &bytes);
    }
    w.write(dst).unwrap();
}

fn open_err(model: &Path, bank: &Path) -> String {
    match Engine::open(model, bank, &options()) {
        Ok(_) => "opened".into(),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Child processes.

#[derive(Debug)]
enum Outcome {
    /// Exit code and everything it printed (stdout then stderr).
    Exited(i32, String, String),
    /// Killed by a signal (abort, SIGBUS, ...).
    Signaled(String),
    TimedOut,
}

/// Runs `case` in a child process (this binary, the `child` test) with a time limit.
fn in_child(case: &str, limit: Duration) -> Outcome {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reliability::child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MIAD_RELIABILITY_CASE", case)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            use std::os::unix::process::ExitStatusExt;
            return match status.code() {
                Some(c) => Outcome::Exited(c, text(&out.stdout), text(&out.stderr)),
                None => Outcome::Signaled(format!(
                    "signal {:?}; stderr: {}",
                    status.signal(),
                    text(&out.stderr)
                )),
            };
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's report: the text after "RESULT: " on its stdout; fails on a crash or hang.
fn child_result(case: &str, limit: Duration) -> (String, String) {
    match in_child(case, limit) {
        Outcome::Exited(0, out, err) => {
            let line = out
                .lines()
                .find_map(|l| l.split_once("RESULT: ").map(|(_, r)| r))
                .unwrap_or_else(|| panic!("{case}: no result in\n{out}\n{err}"))
                .to_string();
            (line, err)
        }
        Outcome::Signaled(how) => panic!("{case}: the child crashed: {how}"),
        other => panic!("{case}: the child did not finish normally: {other:?}"),
    }
}

/// The child side: runs the case named by the environment (nothing otherwise).
#[test]
fn child() {
    let Ok(case) = std::env::var("MIAD_RELIABILITY_CASE") else {
        return;
    };
    let result = match case.as_str() {
        "map_size_65600" | "map_size_huge" => {
            let f = copies(&case);
            let bad = f.dir.join("bad.bank");
            let size = if case == "map_size_65600" {
                65600
            } else {
                4294967104
            };
            rewrite_bank(&f.bank, &bad, |c| c.map_size = size, |_, _| {});
            open_err(&f.model, &bad)
        }
        "fifo" => {
            let f = copies("fifo");
            let fifo = f.dir.join("model.fifo");
            let _ = std::fs::remove_file(&fifo);
            let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(st.success());
            let model = open_err(&fifo, &f.bank);
            let bank = open_err(&f.model, &fifo);
            format!("{model} | {bank}")
        }
        "truncate_bank" | "truncate_model" | "overwrite_model" | "overwrite_bank" => {
            let f = copies(&case);
            let mut e = Engine::open(&f.model, &f.bank, &options()).unwrap();
            let (rgb, cloud) = fixture::part();
            let views = || {
                (
                    Some(RgbView::packed(&rgb, fixture::W, fixture::H)),
                    Some(CloudView::packed(&cloud, fixture::W, fixture::H)),
                )
            };
            let (r, c) = views();
            let before = e.inspect(r, c, &InspectOptions::default()).unwrap().score;
            match case.as_str() {
                "truncate_bank" | "truncate_model" => {
                    let p = if case == "truncate_bank" {
                        &f.bank
                    } else {
                        &f.model
                    };
                    let file = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    file.set_len(4096).unwrap();
                }
                "overwrite_model" => {
                    // `cp other.miad small.miad`: same size, other weights, same inode.
                    std::fs::copy(&f.other_model, &f.model).unwrap();
                }
                _ => {
                    let other = f.dir.join("other.bank");
                    rewrite_bank(&f.bank, &other, |c| c.thresholds.part = 7.0, |_, _| {});
                    std::fs::copy(&other, &f.bank).unwrap();
                }
            }
            let (r, c) = views();
            match e.inspect(r, c, &InspectOptions::default()) {
                Ok(r) => format!("ok score {} (before {before})", r.score),
                Err(err) => format!("error: {err}"),
            }
        }
        "fork" => fork_case(),
        "cuda_fallback_quiet" => {
            let f = copies("quiet");
            let mut o = engine_options();
            o.backend = MIAD_BACKEND_CUDA;
            let (st, e, msg) = c_open(&f.model, &f.bank, &o);
            assert_eq!(st, 0, "{msg}");
            miad_engine_close(e);
            "opened".into()
        }
        other => panic!("unknown case {other}"),
    };
    println!("RESULT: {result}");
}

fn engine_options() -> miad_engine_options {
    let mut o = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { miad_engine_options_default(&mut o) }, 0);
    o.threads = 2;
    o.max_width = 256;
    o.max_height = 256;
    o
}

fn c_open(model: &Path, bank: &Path, o: &miad_engine_options) -> (i32, *mut miad_engine, String) {
    let (m, b) = (
        CString::new(model.to_str().unwrap()).unwrap(),
        CString::new(bank.to_str().unwrap()).unwrap(),
    );
    let mut e = null_mut();
    let mut buf = [0 as c_char; 1024];
    let st = unsafe { miad_engine_open(m.as_ptr(), b.as_ptr(), o, &mut e, buf.as_mut_ptr(), 1024) };
    (st, e, text(&buf))
}

fn text(buf: &[c_char]) -> String {
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn status_name(st: i32) -> String {
    unsafe { CStr::from_ptr(miad_status_name(st)) }
        .to_string_lossy()
        .into_owned()
}

fn c_inspect(e: *mut miad_engine, part: &miad_part) -> (i32, Box<miad_result>, String) {
    let mut r: Box<miad_result> = Box::new(unsafe { std::mem::zeroed() });
    let mut buf = [0 as c_char; 1024];
    let st = unsafe { miad_inspect(e, part, null(), &mut *r, buf.as_mut_ptr(), 1024) };
    (st, r, text(&buf))
}

fn c_part(rgb: Option<&[u8]>, cloud: Option<&[f32]>) -> miad_part {
    let (w, h) = (fixture::W, fixture::H);
    miad_part {
        rgb: rgb.map_or(null(), |r| r.as_ptr()),
        rgb_width: w,
        rgb_height: h,
        rgb_stride: 3 * w,
        cloud: cloud.map_or(null(), |c| c.as_ptr()),
        cloud_width: w,
        cloud_height: h,
        cloud_stride: 3 * w,
    }
}

/// Opens an engine with 2 threads, forks; the child inspects and closes, and reports
/// through its exit code; the parent waits at most 20 s.
fn fork_case() -> String {
    let f = copies("fork");
    let (st, e, msg) = c_open(&f.model, &f.bank, &engine_options());
    assert_eq!(st, 0, "{msg}");
    let (rgb, cloud) = fixture::part();
    let part = c_part(Some(&rgb), Some(&cloud));
    // Warm the worker threads once in the parent.
    assert_eq!(c_inspect(e, &part).0, 0);
    // SAFETY: the child only calls the library and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let (st, _, _) = c_inspect(e, &part);
        let closed = miad_engine_close(e);
        let code = if status_name(st) == "MIAD_FORKED" && closed == 0 {
            0
        } else {
            10 + st.clamp(0, 100)
        };
        unsafe { libc::_exit(code) };
    }
    let t0 = Instant::now();
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            miad_engine_close(e);
            return "child hung".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The parent's engine still works.
    let parent = c_inspect(e, &part).0;
    miad_engine_close(e);
    format!(
        "child exit {} parent {}",
        libc::WEXITSTATUS(status),
        status_name(parent)
    )
}

// ---------------------------------------------------------------------------------------
// 1. A valid-looking bank aborted the process.

#[test]
fn a_bank_with_map_size_65600_is_refused_naming_the_field() {
    for case in ["map_size_65600", "map_size_huge"] {
        let (r, _) = child_result(case, Duration::from_secs(60));
        assert!(r.contains("map_size"), "{case}: {r}");
    }
}

// 2. Opening a FIFO blocked forever.

#[test]
fn a_fifo_is_refused_without_blocking() {
    let (r, _) = child_result("fifo", Duration::from_secs(30));
    assert_eq!(r.matches("FIFO").count(), 2, "{r}");
}

#[test]
fn a_directory_is_refused_as_a_directory() {
    let f = copies("dir");
    let r = open_err(&f.dir, &f.bank);
    assert!(r.contains("a directory"), "{r}");
    let r = open_err(&f.model, Path::new("/dev/null"));
    assert!(r.contains("character device"), "{r}");
}

// 3. A file replaced in place under an open engine: SIGBUS, or another model's score.

#[test]
fn a_file_changed_in_place_under_an_engine_is_an_error_not_a_crash() {
    for case in [
        "truncate_bank",
        "truncate_model",
        "overwrite_model",
        "overwrite_bank",
    ] {
        let (r, _) = child_result(case, Duration::from_secs(60));
        assert!(
            r.starts_with("error:") && r.contains("changed under the open engine"),
            "{case}: {r}"
        );
    }
}

// 4. fork() after open: the child's inspect never returned.

#[test]
fn an_engine_used_in_a_forked_child_returns_an_error() {
    let (r, _) = child_result("fork", Duration::from_secs(60));
    assert_eq!(r, "child exit 0 parent MIAD_OK");
}

// 5. Non-finite results reported as OK.

#[test]
fn non_finite_or_denormal_bank_values_are_refused_naming_the_field() {
    let f = copies("nan");
    let bad = f.dir.join("bad.bank");
    type Edit = Box<dyn Fn(&mut BankConfig)>;
    let cases: [(&str, Edit); 5] = [
        ("pixel_svm.w[1]", Box::new(|c| c.pixel_svm.w[1] = f32::NAN)),
        ("xyz_norm.std", Box::new(|c| c.xyz_norm.std = 1e-30)),
        ("fused_norm.mean", Box::new(|c| c.fused_norm.mean = 1e-40)),
        (
            "thresholds.part",
            Box::new(|c| c.thresholds.part = f32::NAN),
        ),
        ("blur_sigma", Box::new(|c| c.blur_sigma = f32::INFINITY)),
    ];
    for (field, edit) in cases {
        rewrite_bank(&f.bank, &bad, edit, |_, _| {});
        let r = open_err(&f.model, &bad);
        assert!(r.contains(field), "{field}: {r}");
    }
    // A NaN in a case's RADAR statistics (a tensor, not the configuration).
    rewrite_bank(
        &f.bank,
        &bad,
        |_| {},
        |name, bytes| {
            if name == "radar.rgb_only.pixel_w" {
                bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        },
    );
    let r = open_err(&f.model, &bad);
    assert!(r.contains("radar.rgb_only.pixel_w"), "{r}");
}

#[test]
fn a_non_finite_score_or_map_is_a_dedicated_status_never_ok() {
    let f = copies("nanbank");
    let bad = f.dir.join("bad.bank");
    // NaN bank rows (data the configuration checks cannot see): every distance is NaN.
    rewrite_bank(
        &f.bank,
        &bad,
        |_| {},
        |name, bytes| {
            if name == "bank.xyz" {
                for v in bytes.chunks_exact_mut(4) {
                    v.copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
        },
    );
    let (st, e, msg) = c_open(&f.model, &bad, &engine_options());
    assert_eq!(st, 0, "{msg}");
    let (rgb, cloud) = fixture::part();
    let (st, r, msg) = c_inspect(e, &c_part(Some(&rgb), Some(&cloud)));
    miad_engine_close(e);
    assert_eq!(
        status_name(st),
        "MIAD_NON_FINITE",
        "score {} message {msg}",
        r.score
    );
    assert!(msg.contains("not") || msg.contains("NaN"), "{msg}");
}

// 6. One NaN coordinate made the whole cloud unusable.

#[test]
fn nan_points_are_missing_points_and_the_part_stays_complete() {
    let f = copies("nanpoints");
    let mut e = Engine::open(&f.model, &f.bank, &options()).unwrap();
    let (rgb, mut cloud) = fixture::part();
    // A sensor's "no return": a NaN pixel and an infinite one.
    cloud[3 * 5..3 * 5 + 3].copy_from_slice(&[f32::NAN; 3]);
    cloud[3 * 700 + 2] = f32::INFINITY;
    let r = e
        .inspect(
            Some(RgbView::packed(&rgb, fixture::W, fixture::H)),
            Some(CloudView::packed(&cloud, fixture::W, fixture::H)),
            &InspectOptions::default(),
        )
        .unwrap();
    assert_eq!(r.case, Case::Complete, "{:?}", r.status);
    assert!(r.score.is_finite());
    // A cloud of nothing but NaN is a missing modality, not an error.
    let nan = vec![f32::NAN; cloud.len()];
    let r = e
        .inspect(
            Some(RgbView::packed(&rgb, fixture::W, fixture::H)),
            Some(CloudView::packed(&nan, fixture::W, fixture::H)),
            &InspectOptions::default(),
        )
        .unwrap();
    assert_eq!(r.case, Case::RgbOnly);
}

// 7. M3DM's point rule: a point is kept only if all three coordinates are non-zero.

#[test]
fn a_point_with_one_zero_coordinate_is_not_a_point() {
    use miad::pipeline::preprocess::{
        preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
    };
    let cfg = miad::config::PreprocessConfig::default();
    let s = cfg.image_size as usize;
    // Already at the network size: nearest resizing is the identity.
    let mut cloud = vec![0f32; 3 * s * s];
    for (i, p) in cloud.chunks_exact_mut(3).enumerate() {
        p.copy_from_slice(&[0.1 + i as f32 * 1e-5, 0.2, 0.3]);
    }
    // Exact zeros in x, in y, in z, and a NaN: none of them is a point.
    cloud[0] = 0.0;
    cloud[3 * 10 + 1] = 0.0;
    cloud[3 * 20 + 2] = 0.0;
    cloud[3 * 30] = f32::NAN;
    let mut out = PreprocessOutput::new(&cfg);
    let mut scratch = vec![0f32; preprocess_scratch_len(&cfg, s, s)];
    let status = preprocess(
        &cfg,
        None,
        Some(CloudView::packed(&cloud, s, s)),
        PreprocessMode::AlreadyClean,
        &mut out,
        &mut scratch,
    )
    .unwrap();
    assert!(status.cloud_usable(), "{status:?}");
    assert_eq!(out.n_points, s * s - 4);
    let pixels = &out.point_pixels[..out.n_points];
    for dropped in [0, 10, 20, 30] {
        assert!(!pixels.contains(&dropped), "pixel {dropped} kept");
    }
    assert_eq!(pixels[0], 1);
}

// 8. Smaller defects.

#[test]
fn trailing_bytes_after_a_model_file_are_refused() {
    let f = copies("trailing");
    let mut bytes = std::fs::read(&f.model).unwrap();
    bytes.extend_from_slice(b"junk");
    let p = f.dir.join("trailing.miad");
    std::fs::write(&p, &bytes).unwrap();
    let r = ModelFile::open(&p, &OpenOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(r.contains("trailing bytes"), "{r:?}");
}

#[test]
fn handles_are_not_small_integers() {
    let f = copies("handles");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (st, e, msg) = c_open(&f.model, &f.bank, &engine_options());
        assert_eq!(st, 0, "{msg}");
        assert!(e as usize > 1 << 24, "handle {e:p} is a small integer");
        seen.push(e);
    }
    // Values next to a live handle are not handles.
    for &e in &seen {
        for d in [1usize, 2, 1 << 16] {
            let forged = (e as usize ^ d) as *mut miad_engine;
            let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
            let st = unsafe { miad_engine_get_info(forged, &mut info, null_mut(), 0) };
            assert_eq!(status_name(st), "MIAD_INVALID_HANDLE");
        }
    }
    for e in seen {
        assert_eq!(miad_engine_close(e), 0);
    }
}

#[test]
fn the_library_does_not_print_the_cuda_fallback_note() {
    match in_child("cuda_fallback_quiet", Duration::from_secs(60)) {
        Outcome::Exited(0, out, err) => {
            assert!(out.contains("RESULT: opened"), "{out}");
            assert!(!err.contains("miad"), "the library wrote to stderr: {err}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_shared_library_has_the_soname_libmiad_so_0() {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let lib: PathBuf = [
        deps.join("libmiad.so"),
        deps.parent().unwrap().join("libmiad.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libmiad.so next to the test");
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(
        dynamic.contains("Library soname: [libmiad.so.0]"),
        "{}:\n{dynamic}",
        lib.display()
    );
}

#[test]
fn a_case_the_bank_has_no_statistics_for_is_uncertain_without_regions() {
    // The fixture bank has RGB-only statistics but none for the cloud-only case.
    let f = copies("uncalibrated");
    let (st, e, msg) = c_open(&f.model, &f.bank, &engine_options());
    assert_eq!(st, 0, "{msg}");
    let (_, cloud) = fixture::part();
    let (st, r, msg) = c_inspect(e, &c_part(None, Some(&cloud)));
    miad_engine_close(e);
    assert_eq!(st, 0, "{msg}");
    assert_eq!(r.modality_case, MIAD_CASE_CLOUD_ONLY);
    assert_eq!(
        (r.verdict, r.case_calibrated, r.regions_found),
        (MIAD_VERDICT_UNCERTAIN, 0, 0)
    );
}

#[test]
fn an_engine_with_its_files_in_memory_is_immune_to_changes_in_place() {
    let f = copies("in_memory");
    let mut o = engine_options();
    o.in_memory = 1;
    let (st, e, msg) = c_open(&f.model, &f.bank, &o);
    assert_eq!(st, 0, "{msg}");
    let (rgb, cloud) = fixture::part();
    let part = c_part(Some(&rgb), Some(&cloud));
    let (st, before, msg) = c_inspect(e, &part);
    assert_eq!(st, 0, "{msg}");
    for p in [&f.model, &f.bank] {
        let file = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        file.set_len(0).unwrap();
    }
    let (st, after, msg) = c_inspect(e, &part);
    miad_engine_close(e);
    assert_eq!(st, 0, "{msg}");
    assert_eq!(after.score.to_bits(), before.score.to_bits());
}

#[test]
fn option_structs_carry_their_size() {
    let f = copies("sized");
    // A zeroed struct never filled by the default function.
    let mut o: miad_engine_options = unsafe { std::mem::zeroed() };
    o.max_width = 256;
    o.max_height = 256;
    let (st, e, msg) = c_open(&f.model, &f.bank, &o);
    assert!(e.is_null());
    assert_eq!(status_name(st), "MIAD_INVALID_ARGUMENT");
    assert!(msg.contains("struct_size is 0"), "{msg}");
    // A newer, larger struct: fine while the fields this library does not know are 0.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Newer {
        base: miad_engine_options,
        extra: [u32; 4],
    }
    let mut n = Newer {
        base: engine_options(),
        extra: [0; 4],
    };
    n.base.struct_size = std::mem::size_of::<Newer>() as u32;
    let (st, e, msg) = c_open(&f.model, &f.bank, &n.base);
    assert_eq!(st, 0, "{msg}");
    miad_engine_close(e);
    n.extra[2] = 1;
    let (st, _, msg) = c_open(&f.model, &f.bank, &n.base);
    assert_eq!(status_name(st), "MIAD_INVALID_ARGUMENT");
    assert!(msg.contains("does not know"), "{msg}");
    // An older, smaller one that is no earlier header's layout.
    for size in [16, 42] {
        let mut small = engine_options();
        small.struct_size = size;
        let (st, _, msg) = c_open(&f.model, &f.bank, &small);
        assert_eq!(status_name(st), "MIAD_INVALID_ARGUMENT", "{msg}");
        assert!(msg.contains("no earlier layout"), "{msg}");
    }
    // The first header's layout (40 bytes, before pruned_search): accepted; the field it
    // lacks takes its default (pruned) whatever lies past its 40 bytes. pruned_search = 0
    // in the whole struct searches every row, with the same results.
    let mut first = engine_options();
    first.struct_size = 40;
    first.pruned_search = 0;
    let mut unpruned = engine_options();
    unpruned.pruned_search = 0;
    let (rgb, cloud) = fixture::part();
    let part = c_part(Some(&rgb), Some(&cloud));
    let mut results = Vec::new();
    for (o, want) in [
        (&first, "bank search: xyz pruned (12 clusters)"),
        (
            &unpruned,
            "bank search: xyz unpruned, rgb unpruned, fused unpruned",
        ),
    ] {
        let (st, e, msg) = c_open(&f.model, &f.bank, o);
        assert_eq!(st, 0, "{msg}");
        let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
        let mut buf = [0 as c_char; 1024];
        let st = unsafe { miad_engine_get_info(e, &mut info, buf.as_mut_ptr(), 1024) };
        assert_eq!(st, 0, "{}", text(&buf));
        let note = text(&info.backend_note);
        assert!(note.contains(want), "{note}");
        let (st, r, msg) = c_inspect(e, &part);
        miad_engine_close(e);
        assert_eq!(st, 0, "{msg}");
        results.push((r.score.to_bits(), r.bank_scores.map(f32::to_bits)));
    }
    assert_eq!(results[0], results[1], "pruned and unpruned results differ");
    // Inspect options too.
    let (st, e, msg) = c_open(&f.model, &f.bank, &engine_options());
    assert_eq!(st, 0, "{msg}");
    let io: miad_inspect_options = unsafe { std::mem::zeroed() };
    let mut r: Box<miad_result> = Box::new(unsafe { std::mem::zeroed() });
    let mut buf = [0 as c_char; 1024];
    let st = unsafe { miad_inspect(e, &part, &io, &mut *r, buf.as_mut_ptr(), 1024) };
    miad_engine_close(e);
    assert_eq!(status_name(st), "MIAD_INVALID_ARGUMENT");
    assert!(text(&buf).contains("miad_inspect_options.struct_size"));
}
