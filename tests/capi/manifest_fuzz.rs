//! Fuzz target over the manifest fields of model and bank files, with every checksum
//! recomputed (the files are written by `Writer`, as a buggy writer would), so that the
//! mutations reach the range checks instead of stopping at a checksum. Each case opens
//! an engine through the C ABI and inspects a part complete, RGB-only and cloud-only.
//! Nothing may abort, panic (`MIAD_PANIC`), hang, or report a non-finite number as
//! `MIAD_OK`.
//!
//! Seeded and bounded: `MIAD_FUZZ_CASES` (default 120; 0 = no case limit), `MIAD_FUZZ_SECS`
//! (default 20) and `MIAD_FUZZ_SEED`.

use crate::fixture;
use miad::capi::*;
use miad::config::{BankConfig, BankVariant, ModelConfig};
use miad::format::{BankFile, Dtype, ModelFile, OpenOptions, Writer};
use miad::util::rng::Rng;
use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn tensors(c: &miad::format::Container) -> Tensors {
    c.manifest()
        .tensors
        .iter()
        .map(|t| {
            let (e, b) = c.raw(&t.name).unwrap();
            (
                t.name.clone(),
                e.dtype,
                e.shape.iter().map(|&d| d as usize).collect(),
                b.to_vec(),
            )
        })
        .collect()
}

fn write(mut w: Writer, t: &Tensors, path: &Path) -> [u8; 16] {
    for (name, dtype, shape, bytes) in t {
        w.add(name.clone(), *dtype, shape, bytes);
    }
    w.write(path).unwrap()
}

fn hostile_u32(rng: &mut Rng) -> u32 {
    const V: [u32; 17] = [
        0,
        1,
        2,
        3,
        7,
        16,
        64,
        224,
        2048,
        2049,
        65535,
        65600,
        1 << 20,
        1 << 31,
        4294967104,
        u32::MAX,
        100_000,
    ];
    if rng.below(4) == 0 {
        rng.below(1 << 32) as u32
    } else {
        V[rng.below(V.len() as u64) as usize]
    }
}

fn hostile_f32(rng: &mut Rng) -> f32 {
    const V: [f32; 19] = [
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        1e-30,
        1e-6,
        1.0,
        -1.0,
        4.0,
        0.5,
        1e6,
        1e7,
        1e30,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -1e30,
    ];
    if rng.below(4) == 0 {
        10.0 * rng.normal()
    } else {
        V[rng.below(V.len() as u64) as usize]
    }
}

/// One random change to a bank configuration.
fn mutate_bank(c: &mut BankConfig, rng: &mut Rng) {
    let u = hostile_u32(rng);
    let f = hostile_f32(rng);
    match rng.below(36) {
        0 => c.rgb_rows = u,
        1 => c.xyz_rows = u,
        2 => c.fused_rows = u,
        3 => c.rgb_dim = u,
        4 => c.xyz_dim = u,
        5 => c.fused_dim = u,
        6 => c.rgb_grid = u,
        7 => c.xyz_grid = u,
        8 | 9 => c.map_size = u,
        10 => c.rgb_norm.mean = f,
        11 => c.rgb_norm.std = f,
        12 => c.xyz_norm.mean = f,
        13 => c.xyz_norm.std = f,
        14 => c.fused_norm.mean = f,
        15 => c.fused_norm.std = f,
        16 => c.blur_sigma = f,
        17..=19 => c.score_weights[rng.below(3) as usize] = f,
        20 => c.part_svm.w[rng.below(3) as usize] = f,
        21 => c.part_svm.offset = f,
        22 => c.pixel_svm.w[rng.below(3) as usize] = f,
        23 => c.pixel_svm.offset = f,
        24 => c.thresholds.part = f,
        25 => c.thresholds.pixel = f,
        26 => c.thresholds.grey_band = Some([f, hostile_f32(rng)]),
        27 => c.thresholds.grey_band = None,
        28 => c.thresholds.false_reject_rate = f,
        29 => c.thresholds.train_score_mean = f,
        30 => c.thresholds.train_score_std = f,
        31 => c.thresholds.train_parts = u,
        32 => c.fit.coreset_ratio = f,
        33 => {
            c.variant = [
                BankVariant::Rgb,
                BankVariant::Xyz,
                BankVariant::Fused,
                BankVariant::RgbXyz,
                BankVariant::Full,
            ][rng.below(5) as usize]
        }
        34 => c.model_id[rng.below(16) as usize] ^= 1,
        _ => c.category = "x".repeat(rng.below(10_000) as usize),
    }
}

/// One random change to a model configuration (fields the tensor shapes do not pin).
fn mutate_model(c: &mut ModelConfig, rng: &mut Rng) {
    let u = hostile_u32(rng);
    let f = hostile_f32(rng);
    let p = &mut c.preprocess;
    match rng.below(16) {
        0 => p.image_size = u,
        1 => p.xyz_grid = u,
        2 => p.border = u,
        3 => p.ransac_threshold = f,
        4 => p.ransac_points = u,
        5 => p.ransac_iterations = u.min(20_000),
        6 => p.plane_distance = f,
        7 => p.pad_multiple = u,
        8 => p.cluster_eps = f,
        9 => p.cluster_min_points = u,
        10 => p.rgb_mean[rng.below(3) as usize] = f,
        11 => p.rgb_std[rng.below(3) as usize] = f,
        12 => {
            if let Some(v) = &mut c.vit {
                v.ln_eps = f
            }
        }
        13 => {
            if let Some(v) = &mut c.point {
                v.ln_eps = f
            }
        }
        14 => {
            if let Some(v) = &mut c.fusion {
                v.ln_eps = f
            }
        }
        _ => p.ransac_seed = rng.below(u64::MAX),
    }
}

fn text(buf: &[c_char]) -> String {
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn name(st: i32) -> String {
    unsafe { CStr::from_ptr(miad_status_name(st)) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn mutated_manifests_never_crash_panic_or_report_non_finite_ok() {
    let secs: u64 = std::env::var("MIAD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // A case budget too, so CI runs the same cases on every machine (about 10 s on the
    // 2-core one); MIAD_FUZZ_CASES=0 with MIAD_FUZZ_SECS=N fuzzes for N seconds.
    let max_cases: u64 = std::env::var("MIAD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("MIAD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let f = fixture::files("fuzz-src");
    let dir = fixture::tmpdir("fuzz");
    let model = ModelFile::open(&f.model, &OpenOptions::default()).unwrap();
    let bank = BankFile::open(&f.bank, &OpenOptions::default(), None).unwrap();
    let (model_cfg, model_t) = (model.config().clone(), tensors(model.container()));
    let (bank_cfg, bank_t) = (bank.config().clone(), tensors(bank.container()));
    let (rgb, cloud) = fixture::part();
    let (w, h) = (fixture::W, fixture::H);
    let mut opts: miad_engine_options = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { miad_engine_options_default(&mut opts) }, 0);
    opts.threads = 2;
    opts.max_width = 256;
    opts.max_height = 256;
    let mut map = vec![0f32; 2048 * 2048];
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let (mut cases, mut opened, mut ok) = (0, 0, 0);
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    while t0.elapsed() < Duration::from_secs(secs) && (max_cases == 0 || cases < max_cases) {
        cases += 1;
        let mut mc = model_cfg.clone();
        let mut bc = bank_cfg.clone();
        let model_edits = if rng.below(4) == 0 {
            1 + rng.below(2)
        } else {
            0
        };
        for _ in 0..model_edits {
            mutate_model(&mut mc, &mut rng);
        }
        for _ in 0..1 + rng.below(3) {
            mutate_bank(&mut bc, &mut rng);
        }
        let mp = dir.join("m.miad");
        let bp = dir.join("b.bank");
        let id = write(Writer::model(mc.clone()), &model_t, &mp);
        if bc.model_id == bank_cfg.model_id {
            bc.model_id = id;
        }
        write(Writer::bank(bc.clone()), &bank_t, &bp);
        let (m, b) = (
            CString::new(mp.to_str().unwrap()).unwrap(),
            CString::new(bp.to_str().unwrap()).unwrap(),
        );
        let mut e = null_mut();
        let mut buf = [0 as c_char; 1024];
        let st = unsafe {
            miad_engine_open(
                m.as_ptr(),
                b.as_ptr(),
                &opts,
                &mut e,
                buf.as_mut_ptr(),
                1024,
            )
        };
        let ctx = || format!("case {cases}: model {:?}\nbank {:?}", mc.preprocess, bc);
        assert_ne!(name(st), "MIAD_PANIC", "open: {}\n{}", text(&buf), ctx());
        if st != 0 {
            assert!(
                !text(&buf).is_empty(),
                "a refusal without a message\n{}",
                ctx()
            );
            *refusals.entry(name(st)).or_default() += 1;
            continue;
        }
        opened += 1;
        let mut info: miad_engine_info = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { miad_engine_get_info(e, &mut info, null_mut(), 0) },
            0
        );
        let s2 = (info.map_size * info.map_size) as usize;
        assert!(s2 <= map.len(), "map_size {} opened", info.map_size);
        for (r, c) in [
            (Some(&rgb[..]), Some(&cloud[..])),
            (Some(&rgb[..]), None),
            (None, Some(&cloud[..])),
        ] {
            let part = miad_part {
                rgb: r.map_or(std::ptr::null(), |r| r.as_ptr()),
                rgb_width: w,
                rgb_height: h,
                rgb_stride: 3 * w,
                cloud: c.map_or(std::ptr::null(), |c| c.as_ptr()),
                cloud_width: w,
                cloud_height: h,
                cloud_stride: 3 * w,
            };
            let mut io: miad_inspect_options = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { miad_inspect_options_default(&mut io) }, 0);
            io.map = map.as_mut_ptr();
            io.map_len = map.len();
            let mut res: Box<miad_result> = Box::new(unsafe { std::mem::zeroed() });
            let st = unsafe { miad_inspect(e, &part, &io, &mut *res, buf.as_mut_ptr(), 1024) };
            assert_ne!(name(st), "MIAD_PANIC", "inspect: {}\n{}", text(&buf), ctx());
            if st != 0 {
                *refusals.entry(format!("inspect {}", name(st))).or_default() += 1;
                continue;
            }
            ok += 1;
            let finite = res.score.is_finite()
                && res.bank_scores.iter().all(|v| v.is_finite())
                && map[..s2].iter().all(|v| v.is_finite())
                && res.regions[..res.regions_count as usize]
                    .iter()
                    .all(|r| r.max.is_finite() && r.mean.is_finite());
            assert!(finite, "non-finite result reported as OK\n{}", ctx());
        }
        assert_eq!(miad_engine_close(e), 0);
    }
    eprintln!(
        "manifest fuzz: {cases} cases in {:.1} s, {opened} opened, {ok} inspections OK, refused: {refusals:?}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        cases >= 20 && opened > 0,
        "too few cases reached the engine"
    );
}
