//! `miad_inspect` allocates nothing and frees nothing once the engine is open: repeated
//! inspections through the C ABI, after the first, with map buffers, regions and both
//! modalities, counted by a global allocator. Run alone in a child process (`common::alone_in_process`), so
//! the counts see only this code (the engine's worker threads included).
//!
//! 1 000 parts by default, the acceptance count (about 25 s on 2 cores);
//! `MIAD_ALLOC_PARTS=N` changes it.

use crate::fixture;

use crate::common;
use miad::capi::*;
use miad::util::alloc_counter::total_counts;
use std::ffi::{c_char, CStr, CString};
use std::ptr::null_mut;

fn msg(err: &[c_char]) -> String {
    unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn inspect_through_the_c_abi_allocates_nothing() {
    if !common::alone_in_process!(inspect_through_the_c_abi_allocates_nothing) {
        return;
    }
    let f = fixture::files("alloc");
    let (rgb, cloud) = fixture::part();
    let model = CString::new(f.model.to_str().unwrap()).unwrap();
    let bank = CString::new(f.bank.to_str().unwrap()).unwrap();
    let mut err = [0 as c_char; 1024];
    let mut opts: miad_engine_options = unsafe { std::mem::zeroed() };
    unsafe { miad_engine_options_default(&mut opts) };
    opts.threads = 2;
    opts.max_width = 256;
    opts.max_height = 256;
    let mut e = null_mut();
    let st = unsafe {
        miad_engine_open(
            model.as_ptr(),
            bank.as_ptr(),
            &opts,
            &mut e,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(st, 0, "{}", msg(&err));

    let (w, h) = (fixture::W, fixture::H);
    let part = miad_part {
        rgb: rgb.as_ptr(),
        rgb_width: w,
        rgb_height: h,
        rgb_stride: 3 * w,
        cloud: cloud.as_ptr(),
        cloud_width: w,
        cloud_height: h,
        cloud_stride: 3 * w,
    };
    let mut map = vec![0f32; fixture::MAP * fixture::MAP];
    let mut input_map = vec![0f32; w * h];
    let mut io: miad_inspect_options = unsafe { std::mem::zeroed() };
    unsafe { miad_inspect_options_default(&mut io) };
    io.map = map.as_mut_ptr();
    io.map_len = map.len();
    io.input_map = input_map.as_mut_ptr();
    io.input_map_len = input_map.len();
    // A low pixel threshold so regions are really extracted.
    io.pixel_threshold = 0.0;
    let mut r: Box<miad_result> = Box::new(unsafe { std::mem::zeroed() });

    let st = unsafe { miad_inspect(e, &part, &io, &mut *r, err.as_mut_ptr(), err.len()) };
    assert_eq!(st, 0, "{}", msg(&err));
    assert!(r.regions_found > 0);
    eprintln!(
        "first part (ms): preprocess {:.2} rgb {:.2} point {:.2} fusion {:.2} score {:.2} total {:.2}",
        1e3 * r.time_preprocess_s,
        1e3 * r.time_rgb_s,
        1e3 * r.time_point_s,
        1e3 * r.time_fusion_s,
        1e3 * r.time_score_s,
        1e3 * r.time_total_s
    );
    let first = (r.score.to_bits(), r.regions_found, map.clone());

    let parts: usize = std::env::var("MIAD_ALLOC_PARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = std::time::Instant::now();
    let before = total_counts();
    let mut same = true;
    for _ in 0..parts {
        let st = unsafe { miad_inspect(e, &part, &io, &mut *r, err.as_mut_ptr(), err.len()) };
        same &= st == 0 && r.score.to_bits() == first.0 && r.regions_found == first.1;
    }
    let after = total_counts();
    let secs = t.elapsed().as_secs_f64();
    assert!(same, "every inspection succeeds with the same result");
    assert_eq!(
        before, after,
        "(allocations, frees) over {parts} inspections through the C ABI"
    );
    assert_eq!(map, first.2);
    eprintln!(
        "{parts} inspections, {:.2} ms each, 0 allocations",
        1e3 * secs / parts as f64
    );
    assert_eq!(miad_engine_close(e), 0);
}
