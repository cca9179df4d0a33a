//! preprocess.cu's preprocess_cloud_f32 against `pipeline::preprocess` (issue 16, SPEC
//! §1.5–1.6): a point needs three non-zero, finite coordinates, on the device as on the
//! CPU. A square cloud with exact zeros in one coordinate, NaN and infinite pixels,
//! resized to the network side with no plane and no cluster mask: the kernel's points,
//! pixel indices and count equal the CPU's already-clean preprocessing.

use miad::config::PreprocessConfig;
use miad::pipeline::input::CloudView;
use miad::pipeline::preprocess::{
    preprocess, preprocess_scratch_len, PreprocessMode, PreprocessOutput,
};

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::for_seeds;
use crate::Test;

pub const TESTS: &[Test] = &[("preprocess_cloud_f32_keeps_points_as_the_cpu", keep_rule)];

fn keep_rule() -> Result<(), String> {
    let side = 80usize;
    let cfg = PreprocessConfig {
        image_size: 32,
        xyz_grid: 8,
        ..PreprocessConfig::default()
    };
    let s = cfg.image_size as usize;
    let mut cloud = vec![0f32; 3 * side * side];
    for (i, p) in cloud.chunks_exact_mut(3).enumerate() {
        let (r, c) = ((i / side) as f32, (i % side) as f32);
        p.copy_from_slice(&[0.01 + 0.001 * c, 0.02 + 0.001 * r, 0.5 + 0.0001 * (r + c)]);
    }
    for i in (0..side * side).step_by(5) {
        cloud[3 * i + i % 3] = 0.0; // one exact zero coordinate
    }
    for i in (1..side * side).step_by(7) {
        cloud[3 * i + 1] = f32::NAN;
    }
    for i in (2..side * side).step_by(11) {
        cloud[3 * i + 2] = f32::NEG_INFINITY;
    }
    for i in (3..side * side).step_by(13) {
        cloud[3 * i..3 * i + 3].fill(0.0);
    }
    let mut out = PreprocessOutput::new(&cfg);
    let mut scratch = vec![0f32; preprocess_scratch_len(&cfg, side, side)];
    preprocess(
        &cfg,
        None,
        Some(CloudView::packed(&cloud, side, side)),
        PreprocessMode::AlreadyClean,
        &mut out,
        &mut scratch,
    )
    .map_err(|e| e.to_string())?;
    let n = out.n_points;
    if n == 0 || n == s * s {
        return Err(format!(
            "{n} points: the test cloud does not exercise the rule"
        ));
    }
    for_seeds(|seed| {
        let cb = Buf::from(&cloud);
        let pts = Buf::filled(3 * s * s, 0f32);
        let pix = Buf::filled(s * s, -7i32);
        let p2p = Buf::filled(s * s, -7i32);
        let count = Buf::filled(1, -7i32);
        let mut a = Args::new()
            .buf(&cb)
            .val(side as i32)
            .val(side as i32)
            .val(3 * side as i32)
            .val(0usize) // no plane
            .val(0f32)
            .val(0usize) // no keep mask
            .val(side as i32)
            .val(0i32)
            .val(0i32)
            .val(s as i32)
            .buf(&pts)
            .buf(&pix)
            .buf(&p2p)
            .buf(&count);
        sim().launch("preprocess_cloud_f32", &Cfg::new(1, 1024), &mut a, seed)?;
        let got = count.get()[0] as usize;
        if got != n {
            return Err(format!("device kept {got} points, the CPU {n}"));
        }
        if pts.get()[..3 * n] != out.points[..3 * n] {
            return Err("device points differ from the CPU's".into());
        }
        let want: Vec<i32> = out.point_pixels[..n].iter().map(|&p| p as i32).collect();
        if pix.get()[..n] != want[..] {
            return Err("device pixel indices differ from the CPU's".into());
        }
        Ok(())
    })
}
