//! Small element-wise kernels: gelu.cu's bias_gelu_f32 against `miad::cpu::gemm::gelu`.

use miad::cpu::gemm::gelu;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[("bias_gelu_f32_matches_cpu", bias_gelu)];

/// Tolerance: the device's erff and glibc's differ by a few ulps.
fn bias_gelu() -> Result<(), String> {
    let mut g = Gen::new(4);
    let (rows, cols) = (37usize, 53usize);
    let mut y: Vec<f32> = (0..rows * cols).map(|_| 3.0 * g.normal()).collect();
    y[0] = f32::NAN;
    y[1] = -20.0;
    y[2] = 20.0;
    let bias: Vec<f32> = (0..cols).map(|_| g.normal()).collect();
    let want: Vec<f32> = y
        .iter()
        .enumerate()
        .map(|(i, v)| gelu(v + bias[i % cols]))
        .collect();
    for_seeds(|s| {
        let yb = Buf::from(&y);
        let bb = Buf::from(&bias);
        let n = (rows * cols) as i64;
        let mut a = Args::new().buf(&yb).buf(&bb).val(n).val(cols as i32);
        sim().launch(
            "bias_gelu_f32",
            &Cfg::new((n as u32).div_ceil(128), 128),
            &mut a,
            s,
        )?;
        close("bias_gelu_f32", yb.get(), &want, 1e-6, 1e-6)
    })
}
