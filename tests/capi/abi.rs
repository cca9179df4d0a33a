//! The C ABI, called from Rust as C would call it: every error path returns its documented
//! status and a message naming the problem; a real inspection succeeds, repeats bit for
//! bit and is driven by its options; handles are checked; the header compiles as C99, C11
//! and C++ and matches the exports; and a real C program links the library and runs.

use crate::fixture;

use fixture::{Files, H, MAP, W};
use miad::capi::*;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn files() -> &'static Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| fixture::files("shared"))
}

fn part_data() -> &'static (Vec<u8>, Vec<f32>) {
    static P: OnceLock<(Vec<u8>, Vec<f32>)> = OnceLock::new();
    P.get_or_init(fixture::part)
}

const OK: i32 = Status::Ok as i32;

fn code(s: Status) -> i32 {
    s as i32
}

fn name(status: i32) -> &'static str {
    unsafe { CStr::from_ptr(miad_status_name(status)) }
        .to_str()
        .unwrap()
}

/// A message buffer and the text in it.
struct Msg([c_char; 1024]);

impl Msg {
    fn new() -> Self {
        Msg([0x55; 1024])
    }
    fn ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr()
    }
    fn text(&self) -> String {
        unsafe { CStr::from_ptr(self.0.as_ptr()) }
            .to_str()
            .expect("messages are UTF-8")
            .to_owned()
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn engine_options() -> miad_engine_options {
    let mut o = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { miad_engine_options_default(&mut o) }, OK);
    o.threads = 2;
    o.max_width = 256;
    o.max_height = 256;
    o
}

/// `miad_engine_open` → (status, handle, message).
fn open_with(
    model: &CStr,
    bank: &CStr,
    opts: Option<&miad_engine_options>,
) -> (i32, *mut miad_engine, String) {
    let mut e = null_mut();
    let mut m = Msg::new();
    let st = unsafe {
        miad_engine_open(
            model.as_ptr(),
            bank.as_ptr(),
            opts.map_or(null(), |o| o as *const _),
            &mut e,
            m.ptr(),
            1024,
        )
    };
    (st, e, m.text())
}

fn open() -> *mut miad_engine {
    let f = files();
    let (st, e, msg) = open_with(&cstr(&f.model), &cstr(&f.bank), Some(&engine_options()));
    assert_eq!(st, OK, "{msg}");
    assert!(!e.is_null());
    e
}

fn packed_part(rgb: Option<&[u8]>, cloud: Option<&[f32]>, w: usize, h: usize) -> miad_part {
    miad_part {
        rgb: rgb.map_or(null(), |r| r.as_ptr()),
        rgb_width: w,
        rgb_height: h,
        rgb_stride: w.wrapping_mul(3),
        cloud: cloud.map_or(null(), |c| c.as_ptr()),
        cloud_width: w,
        cloud_height: h,
        cloud_stride: w.wrapping_mul(3),
    }
}

fn full_part() -> miad_part {
    let (rgb, cloud) = part_data();
    packed_part(Some(rgb), Some(cloud), W, H)
}

fn inspect_options() -> miad_inspect_options {
    let mut o = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { miad_inspect_options_default(&mut o) }, OK);
    o
}

/// `miad_inspect` → (status, result, message).
fn inspect(
    e: *mut miad_engine,
    part: &miad_part,
    opts: Option<&miad_inspect_options>,
) -> (i32, Box<miad_result>, String) {
    let mut r: Box<miad_result> = Box::new(unsafe { std::mem::zeroed() });
    let mut m = Msg::new();
    let st = unsafe {
        miad_inspect(
            e,
            part,
            opts.map_or(null(), |o| o as *const _),
            &mut *r,
            m.ptr(),
            1024,
        )
    };
    (st, r, m.text())
}

fn expect_fail(got: (i32, Box<miad_result>, String), want: Status, needles: &[&str]) {
    let (st, _, msg) = got;
    assert_eq!(name(st), name(code(want)), "message: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{:?} does not mention {n:?}", msg);
    }
}

fn close(e: *mut miad_engine) {
    assert_eq!(miad_engine_close(e), OK);
}

#[test]
fn static_functions() {
    let v = unsafe { CStr::from_ptr(miad_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    for s in Status::ALL {
        assert_eq!(name(s as i32).as_bytes(), s.name().to_bytes());
    }
    assert_eq!(name(0), "MIAD_OK");
    assert_eq!(name(14), "MIAD_PANIC");
    assert_eq!(name(-1), "MIAD_UNKNOWN_STATUS");
    assert_eq!(name(1000), "MIAD_UNKNOWN_STATUS");

    let mut buf = [0x55 as c_char; 256];
    assert_eq!(unsafe { miad_build_info(buf.as_mut_ptr(), 256) }, OK);
    let info = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
    assert!(info.starts_with(&format!("miad {v} ")), "{info}");
    assert!(info.contains("backends=cpu"), "{info}");
    assert_eq!(
        unsafe { miad_build_info(buf.as_mut_ptr(), 8) },
        code(Status::BufferTooSmall)
    );
    assert_eq!(
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(),
        b"miad 0."
    );
    assert_eq!(
        unsafe { miad_build_info(null_mut(), 8) },
        code(Status::NullArgument)
    );
    assert_eq!(
        unsafe { miad_build_info(buf.as_mut_ptr(), 0) },
        code(Status::BufferTooSmall)
    );

    assert_eq!(
        unsafe { miad_engine_options_default(null_mut()) },
        code(Status::NullArgument)
    );
    assert_eq!(
        unsafe { miad_inspect_options_default(null_mut()) },
        code(Status::NullArgument)
    );
    let mut o: miad_engine_options = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { miad_engine_options_default(&mut o) }, OK);
    assert_eq!(
        (
            o.threads,
            o.max_width,
            o.max_height,
            o.preprocessed,
            o.verify_checksums
        ),
        (0, 1024, 1024, 0, 1)
    );
    let i = inspect_options();
    assert!(i.part_threshold.is_nan() && i.pixel_threshold.is_nan());
    assert!(i.grey_band_low.is_nan() && i.grey_band_high.is_nan());
    assert_eq!((i.want_map, i.want_regions), (1, 1));
    assert!(i.map.is_null() && i.input_map.is_null());
}

#[test]
fn open_errors_name_the_problem() {
    let f = files();
    let (model, bank) = (cstr(&f.model), cstr(&f.bank));
    let opts = engine_options();
    let expect = |got: (i32, *mut miad_engine, String), want: Status, needles: &[&str]| {
        let (st, e, msg) = got;
        assert_eq!(name(st), name(code(want)), "message: {msg}");
        assert!(e.is_null(), "no handle on failure");
        for n in needles {
            assert!(msg.contains(n), "{msg:?} does not mention {n:?}");
        }
    };
    // NULL arguments.
    let mut m = Msg::new();
    let st = unsafe {
        miad_engine_open(
            model.as_ptr(),
            bank.as_ptr(),
            null(),
            null_mut(),
            m.ptr(),
            1024,
        )
    };
    assert_eq!(st, code(Status::NullArgument));
    assert!(m.text().contains("out"), "{}", m.text());
    let mut e = std::ptr::dangling_mut::<miad_engine>();
    let st = unsafe { miad_engine_open(null(), bank.as_ptr(), null(), &mut e, m.ptr(), 1024) };
    assert_eq!(st, code(Status::NullArgument));
    assert!(e.is_null(), "the handle is NULL after a failure");
    assert!(m.text().contains("model path"), "{}", m.text());
    let st = unsafe { miad_engine_open(model.as_ptr(), null(), null(), &mut e, m.ptr(), 1024) };
    assert_eq!(st, code(Status::NullArgument));
    assert!(m.text().contains("bank path"), "{}", m.text());

    // Bad paths.
    expect(
        open_with(c"", &bank, Some(&opts)),
        Status::InvalidArgument,
        &["model path", "empty"],
    );
    expect(
        open_with(c"/tmp/\xff\xfe.miad", &bank, Some(&opts)),
        Status::InvalidArgument,
        &["model path", "UTF-8"],
    );
    let missing = f.dir.join("no-such-file.miad");
    expect(
        open_with(&cstr(&missing), &bank, Some(&opts)),
        Status::Io,
        &["no-such-file.miad"],
    );
    expect(
        open_with(&model, &cstr(&missing), Some(&opts)),
        Status::Io,
        &["no-such-file.miad"],
    );

    // An unknown backend value.
    let mut bad = opts;
    bad.backend = 7;
    expect(
        open_with(&model, &bank, Some(&bad)),
        Status::InvalidArgument,
        &["backend = 7", "MIAD_BACKEND_CPU"],
    );
    let mut bad = opts;
    bad.precision = 2;
    expect(
        open_with(&model, &bank, Some(&bad)),
        Status::InvalidArgument,
        &["precision = 2", "MIAD_PRECISION_BF16"],
    );

    // Bad files.
    let bytes = std::fs::read(&f.model).unwrap();
    let cut = f.dir.join("cut.miad");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    expect(
        open_with(&cstr(&cut), &bank, Some(&opts)),
        Status::FileFormat,
        &["cut.miad"],
    );
    let junk = f.dir.join("junk.miad");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    expect(
        open_with(&cstr(&junk), &bank, Some(&opts)),
        Status::FileFormat,
        &["junk.miad", "magic"],
    );
    expect(
        open_with(&bank, &model, Some(&opts)),
        Status::FileFormat,
        &["bank"],
    );
    expect(
        open_with(&cstr(&f.other_model), &bank, Some(&opts)),
        Status::ModelMismatch,
        &["small.bank", "other.miad"],
    );

    // Bad options.
    for (field, bad) in [("max_width", 0u32), ("max_height", 0), ("max_width", 9000)] {
        let mut o = opts;
        match field {
            "max_width" => o.max_width = bad,
            _ => o.max_height = bad,
        }
        expect(
            open_with(&model, &bank, Some(&o)),
            Status::InvalidArgument,
            &[field],
        );
    }
    let mut o = opts;
    o.threads = 100_000;
    expect(
        open_with(&model, &bank, Some(&o)),
        Status::InvalidArgument,
        &["threads"],
    );

    // Message buffers: NULL, zero length, truncation at a character boundary.
    let mut e = null_mut();
    let st =
        unsafe { miad_engine_open(c"".as_ptr(), bank.as_ptr(), null(), &mut e, null_mut(), 99) };
    assert_eq!(st, code(Status::InvalidArgument));
    let mut m = Msg::new();
    let st = unsafe { miad_engine_open(c"".as_ptr(), bank.as_ptr(), null(), &mut e, m.ptr(), 0) };
    assert_eq!(st, code(Status::InvalidArgument));
    assert!(m.0.iter().all(|&b| b == 0x55), "err_len 0 writes nothing");
    let full = "model path is empty";
    for len in 1..=full.len() + 2 {
        let mut m = Msg::new();
        unsafe { miad_engine_open(c"".as_ptr(), bank.as_ptr(), null(), &mut e, m.ptr(), len) };
        let t = m.text();
        assert_eq!(t, &full[..(len - 1).min(full.len())]);
        assert!(m.0[len..].iter().all(|&b| b == 0x55), "wrote past err_len");
    }
    // "×" is two bytes: a cut inside it keeps the text before it.
    let (rgb, _) = part_data();
    let e = open();
    let bad = packed_part(Some(rgb), None, 0, H); // "RGB image: zero size 0×120"
    for len in [20usize, 21, 22, 23, 24] {
        let mut m = Msg::new();
        let mut r: miad_result = unsafe { std::mem::zeroed() };
        let st = unsafe { miad_inspect(e, &bad, null(), &mut r, m.ptr(), len) };
        assert_eq!(st, code(Status::InvalidInput));
        let t = m.text();
        assert!(
            t.len() < len && "RGB image: zero size 0×120".starts_with(&t),
            "{t:?}"
        );
        assert!(t.len() >= len - 2, "{t:?} cut too early for {len}");
    }
    close(e);
}

#[test]
fn inspection_succeeds_repeats_bit_for_bit_and_fills_buffers() {
    let e = open();
    let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
    let mut m = Msg::new();
    assert_eq!(
        unsafe { miad_engine_get_info(e, &mut info, m.ptr(), 1024) },
        OK,
        "{}",
        m.text()
    );
    assert_eq!(m.text(), "", "success clears the message");
    assert_eq!(info.map_size as usize, MAP);
    assert_eq!(
        (info.threads, info.max_width, info.max_height),
        (2, 256, 256)
    );
    assert_eq!((info.part_threshold, info.pixel_threshold), (1.0, 1.0));
    assert!(info.grey_band_low.is_nan() && info.grey_band_high.is_nan());
    assert_eq!(info.backend_used, MIAD_BACKEND_CPU);
    assert_eq!(
        c_text(&info.backend_note),
        "cpu; bank search: xyz pruned (12 clusters), rgb pruned (12 clusters), fused pruned (12 clusters)"
    );
    assert_eq!(
        info.cases_calibrated,
        (1 << MIAD_CASE_COMPLETE) | (1 << MIAD_CASE_RGB_ONLY)
    );
    let cat = unsafe { CStr::from_ptr(info.category.as_ptr()) };
    assert_eq!(cat.to_str().unwrap(), "capi_widget");
    assert_eq!(
        unsafe { miad_engine_get_info(e, null_mut(), m.ptr(), 1024) },
        code(Status::NullArgument)
    );

    let run = |e: *mut miad_engine| {
        let mut map = vec![f32::NAN; MAP * MAP];
        let mut input = vec![f32::NAN; W * H];
        let mut o = inspect_options();
        o.map = map.as_mut_ptr();
        o.map_len = map.len();
        o.input_map = input.as_mut_ptr();
        o.input_map_len = input.len();
        let (st, r, msg) = inspect(e, &full_part(), Some(&o));
        assert_eq!(st, OK, "{msg}");
        assert_eq!(msg, "");
        (r, map, input)
    };
    let (r, map, input) = run(e);
    assert!(r.score.is_finite() && r.score > 0.0, "{}", r.score);
    assert_eq!(r.modality_case, MIAD_CASE_COMPLETE);
    assert_eq!(r.modalities_used, MIAD_USED_RGB | MIAD_USED_CLOUD);
    assert_eq!((r.rgb_status, r.cloud_status), (0, 0));
    assert_eq!(r.case_calibrated, 1);
    assert_eq!((r.part_threshold, r.pixel_threshold), (1.0, 1.0));
    let want = if r.score > 1.0 {
        MIAD_VERDICT_FAIL
    } else {
        MIAD_VERDICT_PASS
    };
    assert_eq!(r.verdict, want);
    assert!(r.bank_scores.iter().all(|s| s.is_finite() && *s > 0.0));
    assert_eq!(r.map_size as usize, MAP);
    assert_eq!((r.input_width as usize, r.input_height as usize), (W, H));
    assert_eq!(r.outputs_written, MIAD_WROTE_MAP | MIAD_WROTE_INPUT_MAP);
    assert!(map.iter().all(|v| v.is_finite()));
    assert!(input.iter().all(|v| v.is_finite()));
    let (lo, hi) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(input.iter().all(|&v| v >= lo - 1e-4 && v <= hi + 1e-4));
    assert!(r.regions_count <= r.regions_found && r.regions_count <= MIAD_MAX_REGIONS);
    for g in &r.regions[..r.regions_count as usize] {
        assert!(g.x0 <= g.x1 && g.y0 <= g.y1 && (g.x1 as usize) < MAP);
        assert!(g.area >= 1 && g.max > 1.0 && g.mean <= g.max);
    }
    assert!(r.time_total_s > 0.0 && r.time_total_s >= r.time_score_s);
    assert!(r.time_preprocess_s >= 0.0 && r.time_rgb_s > 0.0 && r.time_point_s > 0.0);

    // Same bits again, and from a second engine; a strided copy of the part too.
    let strip_times = |r: &miad_result| {
        let mut r = *r;
        r.time_preprocess_s = 0.0;
        r.time_rgb_s = 0.0;
        r.time_point_s = 0.0;
        r.time_fusion_s = 0.0;
        r.time_score_s = 0.0;
        r.time_total_s = 0.0;
        r
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (r2, map2, input2) = run(e);
    assert_eq!(strip_times(&r), strip_times(&r2));
    assert_eq!(bits(&map), bits(&map2));
    assert_eq!(bits(&input), bits(&input2));
    let e2 = open();
    let (r3, map3, _) = run(e2);
    assert_eq!(strip_times(&r), strip_times(&r3));
    assert_eq!(bits(&map), bits(&map3));
    close(e2);

    let (rgb, cloud) = part_data();
    let (rs, cs) = (3 * W + 5, 3 * W + 7);
    let mut srgb = vec![0u8; rs * H];
    let mut scloud = vec![0f32; cs * H];
    for y in 0..H {
        srgb[y * rs..y * rs + 3 * W].copy_from_slice(&rgb[3 * W * y..3 * W * (y + 1)]);
        scloud[y * cs..y * cs + 3 * W].copy_from_slice(&cloud[3 * W * y..3 * W * (y + 1)]);
    }
    let strided = miad_part {
        rgb_stride: rs,
        cloud_stride: cs,
        ..packed_part(Some(&srgb), Some(&scloud), W, H)
    };
    let (st, r4, msg) = inspect(e, &strided, None);
    assert_eq!(st, OK, "{msg}");
    assert_eq!(r4.score.to_bits(), r.score.to_bits());
    assert_eq!(r4.outputs_written, 0, "no buffers, nothing written");
    close(e);
}

#[test]
fn options_drive_verdict_and_regions() {
    let e = open();
    let part = full_part();
    let with = |f: &dyn Fn(&mut miad_inspect_options)| {
        let mut o = inspect_options();
        f(&mut o);
        let (st, r, msg) = inspect(e, &part, Some(&o));
        assert_eq!(st, OK, "{msg}");
        r
    };
    let r = with(&|o| o.part_threshold = f32::INFINITY);
    assert_eq!(
        (r.verdict, r.part_threshold),
        (MIAD_VERDICT_PASS, f32::INFINITY)
    );
    let r = with(&|o| o.part_threshold = f32::NEG_INFINITY);
    assert_eq!(r.verdict, MIAD_VERDICT_FAIL);
    let r = with(&|o| {
        o.part_threshold = f32::NEG_INFINITY;
        o.grey_band_low = f32::NEG_INFINITY;
        o.grey_band_high = f32::INFINITY;
    });
    assert_eq!(r.verdict, MIAD_VERDICT_UNCERTAIN);
    let r = with(&|o| {
        o.part_threshold = f32::NEG_INFINITY;
        o.grey_band_low = 0.0;
        o.grey_band_high = 0.0;
    });
    assert_eq!(r.verdict, MIAD_VERDICT_FAIL, "an empty band disables it");

    // Every map pixel above −∞: one region covering the map.
    let r = with(&|o| o.pixel_threshold = f32::NEG_INFINITY);
    assert_eq!((r.regions_found, r.regions_count), (1, 1));
    let g = r.regions[0];
    assert_eq!(
        (g.x0, g.y0, g.x1, g.y1, g.area as usize),
        (0, 0, MAP as u32 - 1, MAP as u32 - 1, MAP * MAP)
    );
    let r = with(&|o| o.pixel_threshold = f32::INFINITY);
    assert_eq!((r.regions_found, r.regions_count), (0, 0));
    let r = with(&|o| {
        o.pixel_threshold = f32::NEG_INFINITY;
        o.want_regions = 0;
    });
    assert_eq!((r.regions_found, r.regions_count), (0, 0));
    let r = with(&|o| {
        o.want_map = 0;
        o.want_regions = 0;
    });
    assert_eq!(r.outputs_written, 0);

    // Invalid options.
    let bad = |f: &dyn Fn(&mut miad_inspect_options), needles: &[&str]| {
        let mut o = inspect_options();
        f(&mut o);
        expect_fail(
            inspect(e, &part, Some(&o)),
            Status::InvalidArgument,
            needles,
        );
    };
    bad(&|o| o.grey_band_low = 1.0, &["grey band", "both"]);
    bad(&|o| o.grey_band_high = 1.0, &["grey band", "both"]);
    bad(
        &|o| {
            o.grey_band_low = 2.0;
            o.grey_band_high = 1.0;
        },
        &["grey band", "low"],
    );
    let mut map = vec![0f32; MAP * MAP + 1];
    let p = map.as_mut_ptr();
    bad(
        &|o| {
            o.want_map = 0;
            o.map = p;
            o.map_len = MAP * MAP;
        },
        &["want_map"],
    );
    let misaligned = unsafe { (p as *mut u8).add(1) } as *mut f32;
    bad(
        &|o| {
            o.map = misaligned;
            o.map_len = MAP * MAP;
        },
        &["map", "aligned"],
    );
    close(e);
}

#[test]
fn inspect_errors_name_the_problem() {
    let e = open();
    let (rgb, cloud) = part_data();
    let part = full_part();
    let mut r: miad_result = unsafe { std::mem::zeroed() };
    let mut m = Msg::new();

    // NULL arguments.
    let st = unsafe { miad_inspect(null_mut(), &part, null(), &mut r, m.ptr(), 1024) };
    assert_eq!(st, code(Status::NullArgument));
    assert!(m.text().contains("engine"), "{}", m.text());
    let st = unsafe { miad_inspect(e, null(), null(), &mut r, m.ptr(), 1024) };
    assert_eq!(st, code(Status::NullArgument));
    assert!(m.text().contains("part"), "{}", m.text());
    let st = unsafe { miad_inspect(e, &part, null(), null_mut(), m.ptr(), 1024) };
    assert_eq!(st, code(Status::NullArgument));
    assert!(m.text().contains("result"), "{}", m.text());
    // A failing call leaves the result alone.
    r.score = 42.0;
    let st = unsafe { miad_inspect(e, null(), null(), &mut r, null_mut(), 0) };
    assert_eq!((st, r.score), (code(Status::NullArgument), 42.0));

    // No modality.
    expect_fail(
        inspect(e, &packed_part(None, None, W, H), None),
        Status::NoUsableModality,
        &["missing"],
    );
    let nan = vec![f32::NAN; W * H * 3];
    expect_fail(
        inspect(e, &packed_part(None, Some(&nan), W, H), None),
        Status::NoUsableModality,
        &["non-finite"],
    );
    let zero = vec![0f32; W * H * 3];
    expect_fail(
        inspect(e, &packed_part(None, Some(&zero), W, H), None),
        Status::NoUsableModality,
        &["no point"],
    );

    // Sizes and strides.
    let sized = |w: usize, h: usize, rs: usize, cs: usize| miad_part {
        rgb_stride: rs,
        cloud_stride: cs,
        ..packed_part(Some(rgb), Some(cloud), w, h)
    };
    expect_fail(
        inspect(e, &sized(0, H, 3 * W, 3 * W), None),
        Status::InvalidInput,
        &["RGB image", "zero size"],
    );
    expect_fail(
        inspect(e, &sized(W, 0, 3 * W, 3 * W), None),
        Status::InvalidInput,
        &["zero size"],
    );
    expect_fail(
        inspect(e, &sized(W, H, 3 * W - 1, 3 * W), None),
        Status::InvalidInput,
        &["RGB image", "stride 449"],
    );
    expect_fail(
        inspect(e, &sized(W, H, 3 * W, 3 * W - 3), None),
        Status::InvalidInput,
        &["point cloud", "stride 447"],
    );
    expect_fail(
        inspect(e, &sized(usize::MAX / 2, H, usize::MAX, 3 * W), None),
        Status::InvalidInput,
        &["RGB image", "overflows"],
    );
    expect_fail(
        inspect(e, &packed_part(None, Some(cloud), usize::MAX / 6, 3), None),
        Status::InvalidInput,
        &["point cloud", "overflows"],
    );
    let big = vec![0f32; 300 * 200 * 3];
    expect_fail(
        inspect(e, &packed_part(None, Some(&big), 300, 200), None),
        Status::InvalidInput,
        &["300×200", "256×256"],
    );
    let mismatched = miad_part {
        cloud_width: W - 10,
        cloud_stride: 3 * (W - 10),
        ..part
    };
    expect_fail(
        inspect(e, &mismatched, None),
        Status::InvalidInput,
        &["140×120", "150×120"],
    );
    let misaligned = miad_part {
        cloud: unsafe { (cloud.as_ptr() as *const u8).add(2) } as *const f32,
        cloud_height: H - 1,
        ..part
    };
    expect_fail(
        inspect(e, &misaligned, None),
        Status::InvalidInput,
        &["point cloud", "aligned"],
    );

    // Buffers too small: refused before any work.
    let mut map = vec![0f32; MAP * MAP];
    let mut o = inspect_options();
    o.map = map.as_mut_ptr();
    o.map_len = MAP * MAP - 1;
    expect_fail(
        inspect(e, &part, Some(&o)),
        Status::BufferTooSmall,
        &["4095", "64×64 = 4096"],
    );
    let mut o = inspect_options();
    o.input_map = map.as_mut_ptr();
    o.input_map_len = map.len();
    expect_fail(
        inspect(e, &part, Some(&o)),
        Status::BufferTooSmall,
        &["input_map", "150×120 = 18000"],
    );

    // One modality unusable or missing: decided with the other, and said so.
    // (A cloud without a single finite point: one NaN or infinite pixel is only a
    // missing point, SPEC §1.6.)
    let mut bad_cloud = cloud.clone();
    bad_cloud
        .iter_mut()
        .step_by(3)
        .for_each(|v| *v = f32::INFINITY);
    let (st, r, msg) = inspect(e, &packed_part(Some(rgb), Some(&bad_cloud), W, H), None);
    assert_eq!(st, OK, "{msg}");
    assert_eq!(
        (r.modality_case, r.modalities_used, r.cloud_status),
        (MIAD_CASE_RGB_ONLY, MIAD_USED_RGB, MIAD_MODALITY_NON_FINITE)
    );
    // The test bank has RGB-only statistics: their threshold decides.
    assert_eq!((r.case_calibrated, r.part_threshold), (1, 1.0));
    assert!(r.score.is_finite() && r.score >= 0.0, "{}", r.score);
    let (st, r, msg) = inspect(e, &packed_part(Some(rgb), None, W, H), None);
    assert_eq!(st, OK, "{msg}");
    assert_eq!(
        (r.modality_case, r.cloud_status, r.case_calibrated),
        (MIAD_CASE_RGB_ONLY, MIAD_MODALITY_MISSING, 1)
    );
    let (st, r, msg) = inspect(e, &packed_part(None, Some(cloud), W, H), None);
    assert_eq!(st, OK, "{msg}");
    assert_eq!(
        (r.modality_case, r.modalities_used, r.rgb_status),
        (MIAD_CASE_CLOUD_ONLY, MIAD_USED_CLOUD, MIAD_MODALITY_MISSING)
    );
    // ... but no cloud-only statistics: the complete-data layers decide, and say so.
    assert_eq!(r.case_calibrated, 0);
    let grey = vec![128u8; W * H * 3];
    let (st, r, msg) = inspect(e, &packed_part(Some(&grey), Some(cloud), W, H), None);
    assert_eq!(st, OK, "{msg}");
    assert_eq!(
        (r.modality_case, r.rgb_status),
        (MIAD_CASE_CLOUD_ONLY, MIAD_MODALITY_BLANK)
    );
    close(e);
}

#[test]
fn handles_are_checked() {
    assert_eq!(miad_engine_close(null_mut()), OK);
    let made_up = 0x1234_5678usize as *mut miad_engine;
    assert_eq!(miad_engine_close(made_up), code(Status::InvalidHandle));
    let e = open();
    close(e);
    assert_eq!(miad_engine_close(e), code(Status::InvalidHandle));
    expect_fail(
        inspect(e, &full_part(), None),
        Status::InvalidHandle,
        &["not open"],
    );
    let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { miad_engine_get_info(e, &mut info, null_mut(), 0) },
        code(Status::InvalidHandle)
    );
    // A new engine may take the same slot: the old handle stays invalid.
    let e2 = open();
    assert_ne!(e, e2);
    expect_fail(inspect(e, &full_part(), None), Status::InvalidHandle, &[]);
    let (st, _, msg) = inspect(e2, &full_part(), None);
    assert_eq!(st, OK, "{msg}");
    close(e2);
}

#[test]
fn overlapping_calls_on_one_engine_are_refused() {
    let e = open() as usize;
    let worker = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(inspect(e as *mut miad_engine, &full_part(), None).0);
        }
        seen
    });
    let mut mine = Vec::new();
    for _ in 0..6 {
        mine.push(inspect(e as *mut miad_engine, &full_part(), None).0);
    }
    let theirs = worker.join().unwrap();
    let all: Vec<i32> = mine.iter().chain(&theirs).copied().collect();
    assert!(
        all.iter().all(|&s| s == OK || s == code(Status::Busy)),
        "{all:?}"
    );
    assert!(all.contains(&OK));
    let busy = all.iter().filter(|&&s| s == code(Status::Busy)).count();
    eprintln!(
        "overlapping calls: {} done, {busy} refused as busy",
        all.len() - busy
    );
    // Close races a running call: refused while busy, then closed once.
    let worker = std::thread::spawn(move || {
        (0..4)
            .map(|_| inspect(e as *mut miad_engine, &full_part(), None).0)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut closes = Vec::new();
    loop {
        let st = miad_engine_close(e as *mut miad_engine);
        closes.push(st);
        if st != code(Status::Busy) {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(*closes.last().unwrap(), OK, "{closes:?}");
    eprintln!("close attempts while busy: {}", closes.len() - 1);
    let theirs = worker.join().unwrap();
    assert!(
        theirs
            .iter()
            .all(|&s| s == OK || s == code(Status::InvalidHandle)),
        "{theirs:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The header.

fn header_path() -> PathBuf {
    Path::new(ROOT).join("runtime/include/miad.h")
}

/// The text without comments.
fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        let (at, end) = match (block, line) {
            (Some(b), Some(l)) if l < b => (l, "\n"),
            (Some(b), _) => (b, "*/"),
            (None, Some(l)) => (l, "\n"),
            (None, None) => break,
        };
        out.push_str(&rest[..at]);
        rest = &rest[at + 2..];
        match rest.find(end) {
            Some(i) => rest = &rest[i + end.len()..],
            None => rest = "",
        }
        out.push(if end == "\n" { '\n' } else { ' ' });
    }
    out.push_str(rest);
    out
}

fn ident_at(s: &str, at: usize) -> &str {
    let end = s[at..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(s.len(), |i| at + i);
    &s[at..end]
}

#[test]
fn header_matches_the_exports() {
    let header = strip_comments(&std::fs::read_to_string(header_path()).unwrap());
    let rust = std::fs::read_to_string(Path::new(ROOT).join("runtime/capi/mod.rs")).unwrap();

    // Functions: `miad_x(` in the header (not after `sizeof`/`offsetof`) ...
    let mut declared = std::collections::BTreeSet::new();
    for (at, _) in header.match_indices("miad_") {
        let before = &header[..at];
        if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let id = ident_at(&header, at);
        if header[at + id.len()..].starts_with('(') {
            declared.insert(id.to_string());
        }
    }
    // ... and every `#[no_mangle]` function of the Rust module.
    let mut exported = std::collections::BTreeSet::new();
    for (at, _) in rust.match_indices("#[no_mangle]") {
        let after = &rust[at..];
        let f = after.find("fn ").expect("a function after #[no_mangle]");
        exported.insert(ident_at(after, f + 3).to_string());
    }
    assert!(exported.len() >= 9, "{exported:?}");
    assert_eq!(declared, exported, "header and exports differ");

    // Constants: enumerators `MIAD_X = n` of the header against the Rust values.
    let mut consts = std::collections::BTreeMap::new();
    for (at, _) in header.match_indices("MIAD_") {
        if header[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let id = ident_at(&header, at);
        let rest = header[at + id.len()..].trim_start();
        if let Some(v) = rest.strip_prefix('=') {
            let v = v.trim_start();
            let n: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
            consts.insert(id.to_string(), n.parse::<i64>().unwrap());
        }
    }
    let mut want: std::collections::BTreeMap<String, i64> = HEADER_CONSTANTS
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    for s in Status::ALL {
        want.insert(s.name().to_str().unwrap().to_string(), s as i64);
    }
    assert_eq!(consts, want, "header constants differ from the Rust ones");

    let version = format!("#define MIAD_VERSION \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(header.contains(&version), "header lacks {version}");
}

// ---------------------------------------------------------------------------------------
// Real C.

fn compiler(cxx: bool) -> String {
    let (var, default) = if cxx { ("CXX", "c++") } else { ("CC", "cc") };
    std::env::var(var).unwrap_or_else(|_| default.into())
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn header_compiles_alone_as_c_and_cxx() {
    let dir = fixture::tmpdir("header");
    let tu = dir.join("only_header.c");
    std::fs::write(
        &tu,
        "#include \"miad.h\"\nint main(void) { return (int)sizeof(miad_result) == 0; }\n",
    )
    .unwrap();
    let inc = header_path().parent().unwrap().to_path_buf();
    for std in ["-std=c99", "-std=c11"] {
        run_ok(
            Command::new(compiler(false))
                .args([
                    std,
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                    "-fsyntax-only",
                ])
                .arg("-I")
                .arg(&inc)
                .arg(&tu),
        );
    }
    for std in ["-std=c++98", "-std=c++11"] {
        run_ok(
            Command::new(compiler(true))
                .args([
                    std,
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                    "-fsyntax-only",
                ])
                .args(["-x", "c++"])
                .arg("-I")
                .arg(&inc)
                .arg(&tu),
        );
    }
}

/// The shared and static libraries cargo built with this test, frozen under `dir` (hard
/// links, so a concurrent build replacing them does not disturb the run); returns the
/// shared one.
fn libraries(dir: &Path) -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    freeze(dir, STATIC_LIB);
    let lib = freeze(dir, &format!("{DLL_PREFIX}miad{DLL_SUFFIX}"));
    // Programs record the SONAME (libmiad.so.0) and look for it at run time.
    let soname = dir.join(format!("{DLL_PREFIX}miad{DLL_SUFFIX}.0"));
    let _ = std::fs::remove_file(&soname);
    std::os::unix::fs::symlink(lib.file_name().unwrap(), &soname).unwrap();
    lib
}

/// The static library's name (the test drives a Unix C toolchain).
const STATIC_LIB: &str = "libmiad.a";

fn freeze(dir: &Path, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    // `cargo test` leaves the library it built in deps/ (target/<profile>/ may hold an
    // older one from `cargo build`).
    let lib = [deps.join(name), deps.parent().unwrap().join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found next to {}", exe.display()));
    let frozen = dir.join(name);
    let _ = std::fs::remove_file(&frozen);
    if std::fs::hard_link(&lib, &frozen).is_err() {
        std::fs::copy(&lib, &frozen).unwrap();
    }
    frozen
}

#[test]
fn c_program_links_the_library_and_runs() {
    let f = files();
    let dir = fixture::tmpdir("cprog");
    let lib = libraries(&dir);
    let exe = dir.join("example");
    run_ok(
        Command::new(compiler(false))
            .args([
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-g",
                "-O1",
            ])
            .arg("-I")
            .arg(header_path().parent().unwrap())
            .arg(Path::new(ROOT).join("tests/c/example.c"))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", dir.display()))
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .args(["-lmiad", "-lm", "-lpthread", "-ldl"]),
    );
    assert!(lib.exists());
    // The static library too (what a controller image usually links).
    let static_exe = dir.join("example_static");
    let archive = lib.with_file_name(STATIC_LIB);
    run_ok(
        Command::new(compiler(false))
            .args([
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-O1",
            ])
            .arg("-I")
            .arg(header_path().parent().unwrap())
            .arg(Path::new(ROOT).join("tests/c/example.c"))
            .arg("-o")
            .arg(&static_exe)
            .arg(&archive)
            .args(["-lm", "-lpthread", "-ldl"]),
    );
    // cargo's LD_LIBRARY_PATH would win over the rpath and may name a stale library.
    let out = run_ok(
        Command::new(&exe)
            .env_remove("LD_LIBRARY_PATH")
            .arg(&f.model)
            .arg(&f.bank)
            .arg(&f.other_model),
    );
    for needle in [
        "case=complete",
        "used=rgb+cloud",
        "null engine: MIAD_NULL_ARGUMENT",
        "null part: MIAD_NULL_ARGUMENT",
        "small map: MIAD_BUFFER_TOO_SMALL",
        "short stride: MIAD_INVALID_INPUT",
        "no modality: MIAD_NO_USABLE_MODALITY",
        "other model: MIAD_MODEL_MISMATCH",
        "missing file: MIAD_IO",
        "closed handle: MIAD_INVALID_HANDLE",
        "example: ok",
    ] {
        assert!(out.contains(needle), "output lacks {needle:?}:\n{out}");
    }
    let out_static = run_ok(
        Command::new(&static_exe)
            .arg(&f.model)
            .arg(&f.bank)
            .arg(&f.other_model),
    );
    assert!(out_static.contains("example: ok"), "{out_static}");
    // The C compiler's layout is the Rust one.
    for (name, size) in [
        (
            "miad_engine_options",
            std::mem::size_of::<miad_engine_options>(),
        ),
        ("miad_part", std::mem::size_of::<miad_part>()),
        (
            "miad_inspect_options",
            std::mem::size_of::<miad_inspect_options>(),
        ),
        ("miad_region", std::mem::size_of::<miad_region>()),
        ("miad_result", std::mem::size_of::<miad_result>()),
        ("miad_engine_info", std::mem::size_of::<miad_engine_info>()),
    ] {
        let line = format!("sizeof({name})={size}");
        assert!(out.contains(&line), "C disagrees on {line}:\n{out}");
    }

    if std::env::var("MIAD_VALGRIND").as_deref() == Ok("1") {
        let out = run_ok(
            Command::new("valgrind")
                .env_remove("LD_LIBRARY_PATH")
                .args([
                    "--error-exitcode=1",
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite,possible",
                    "--quiet",
                ])
                .arg(&exe)
                .arg(&f.model)
                .arg(&f.bank)
                .arg(&f.other_model),
        );
        assert!(out.contains("example: ok"), "{out}");
    }
}

// ---------------------------------------------------------------------------------------
// Fuzz: random sizes, strides and contents through `miad_inspect`.

/// One engine for all fuzz cases (never closed: the process ends with the test).
fn fuzz_engine() -> *mut miad_engine {
    static E: OnceLock<usize> = OnceLock::new();
    *E.get_or_init(|| open() as usize) as *mut miad_engine
}

/// Elements a view spans, when its sizes are valid (the library's rule, restated).
fn span(w: usize, h: usize, stride: usize) -> Option<usize> {
    (w > 0 && h > 0 && stride >= 3 * w).then(|| (h - 1) * stride + 3 * w)
}

/// 40 seeded random parts: sizes (zero included), strides (too short included), missing
/// inputs, constant, random and NaN-holding contents.
#[test]
fn random_parts_get_a_result_or_a_documented_status() {
    let mut g = miad::util::rng::Rng::new(40);
    for case in 0..40 {
        let w = g.below(280) as usize;
        let h = g.below(280) as usize;
        let rgb_pad = g.below(12) as i64 - 4;
        let cloud_pad = g.below(12) as i64 - 4;
        let has_rgb = g.below(2) == 1;
        let has_cloud = g.below(2) == 1;
        let cloud_wider = g.below(10) == 0;
        let content = g.below(4) as u8;
        let seed = g.next_u64();
        let what = format!(
            "case {case}: {w}x{h} pads {rgb_pad}/{cloud_pad} rgb {has_rgb} cloud {has_cloud} \
             wider {cloud_wider} content {content} seed {seed}"
        );
        let mut rng = miad::util::rng::Rng::new(seed);
        let cw = w + cloud_wider as usize;
        let rs = (3 * w as i64 + rgb_pad).max(0) as usize;
        let cs = (3 * cw as i64 + cloud_pad).max(0) as usize;
        // Invalid sizes get a small buffer: the library must refuse them unread.
        let mut rgb = vec![0u8; span(w, h, rs).unwrap_or(16)];
        let mut cloud = vec![0f32; span(cw, h, cs).unwrap_or(16)];
        for v in rgb.iter_mut() {
            *v = if content == 1 {
                7
            } else {
                rng.below(256) as u8
            };
        }
        for (i, v) in cloud.iter_mut().enumerate() {
            *v = match content {
                1 => 0.0,
                2 if i % 97 == 5 => f32::NAN,
                _ => match i % 3 {
                    2 => 0.4 + 0.02 * rng.normal(),
                    _ => 0.001 * (i / 3) as f32 + 0.0005 * rng.normal(),
                },
            };
        }
        let part = miad_part {
            rgb: if has_rgb { rgb.as_ptr() } else { null() },
            rgb_width: w,
            rgb_height: h,
            rgb_stride: rs,
            cloud: if has_cloud { cloud.as_ptr() } else { null() },
            cloud_width: cw,
            cloud_height: h,
            cloud_stride: cs,
        };
        let (st, r, msg) = inspect(fuzz_engine(), &part, None);
        let allowed = [
            OK,
            code(Status::InvalidInput),
            code(Status::NoUsableModality),
        ];
        assert!(allowed.contains(&st), "{what}: {}: {msg}", name(st));
        if st == OK {
            assert!(msg.is_empty(), "{what}: {msg}");
            assert!(r.score.is_finite(), "{what}: score {}", r.score);
            assert!(r.modalities_used != 0, "{what}");
        } else {
            assert!(!msg.is_empty(), "{what}");
        }
    }
}

fn c_text(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn cuda_without_a_usable_gpu_runs_on_the_cpu_and_says_why() {
    let f = files();
    let mut opts = engine_options();
    opts.backend = MIAD_BACKEND_CUDA;
    let (st, e, msg) = open_with(&cstr(&f.model), &cstr(&f.bank), Some(&opts));
    assert_eq!(st, OK, "{msg}");
    let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
    let mut m = Msg::new();
    assert_eq!(
        unsafe { miad_engine_get_info(e, &mut info, m.ptr(), 1024) },
        OK
    );
    let note = c_text(&info.backend_note);
    if info.backend_used == MIAD_BACKEND_CUDA {
        assert!(note.starts_with("cuda on "), "{note}");
    } else {
        assert_eq!(info.backend_used, MIAD_BACKEND_CPU);
        assert!(note.starts_with("cpu (cuda asked for: "), "{note}");
        if cfg!(not(feature = "cuda")) {
            assert!(note.contains("without the `cuda` feature"), "{note}");
        }
    }
    // It inspects either way.
    let (st, _, msg) = inspect(e, &full_part(), Some(&inspect_options()));
    assert_eq!(st, OK, "{msg}");
    close(e);
}
