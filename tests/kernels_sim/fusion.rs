//! fusion.cu, the element-wise steps of RADAR's fusion on the device, against plain Rust:
//! - copy_selected_u32: the source the device int picks (clamped to 0..=max_sel), bitwise,
//!   for every selector value including out-of-range ones;
//! - column_means_f32: `cpu::radar_fusion`'s token means (row order, one division), bitwise;
//! - scale_gelu_f32: `gelu(z · s[col])` within 1e-6 (the device's erff vs libm's);
//!   scale_gelu_bf16: the same rounded to bf16, bitwise up to one bf16 step where the f32
//!   values differ;
//! - scale_cols_f32: `src · s[col]` into strided rows, bitwise, padding untouched;
//! - to_bf16: round to nearest even, bitwise.

use half::bf16;
use miad::cpu::gemm::gelu;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{close, for_seeds, same, same_bits, Gen};
use crate::Test;

pub const TESTS: &[Test] = &[
    (
        "fusion_copy_selected_u32_picks_the_device_case",
        copy_selected,
    ),
    ("fusion_column_means_f32_match_the_cpu_order", column_means),
    ("fusion_scale_gelu_f32_bf16_match_cpu", scale_gelu),
    ("fusion_scale_cols_f32_scales_strided_rows", scale_cols),
    ("fusion_to_bf16_rounds_to_nearest_even", to_bf16),
];

fn flat(n: usize) -> Cfg {
    Cfg::new((n as u32).div_ceil(256), 256)
}

fn copy_selected() -> Result<(), String> {
    let (n, stride, max_sel) = (1000usize, 1013usize, 2usize);
    let src: Vec<u32> = (0..(max_sel * stride + n) as u32)
        .map(|i| i.wrapping_mul(2654435761))
        .collect();
    for sel in [-3i32, 0, 1, 2, 7] {
        let k = sel.clamp(0, max_sel as i32) as usize;
        let want = &src[k * stride..k * stride + n];
        for_seeds(|s| {
            let (sb, selb, db) = (Buf::from(&src), Buf::from(&[sel]), Buf::filled(n, 0u32));
            let mut a = Args::new()
                .buf(&sb)
                .val(stride as i64)
                .buf(&selb)
                .val(max_sel as i32)
                .buf(&db)
                .val(n as i64);
            sim().launch("copy_selected_u32", &flat(n), &mut a, s)?;
            same(&format!("copy_selected_u32 sel {sel}"), db.get(), want)
        })?;
    }
    Ok(())
}

fn column_means() -> Result<(), String> {
    let mut g = Gen::new(11);
    let (groups, rows, cols) = (2usize, 49usize, 37usize);
    let x: Vec<f32> = (0..groups * rows * cols)
        .map(|_| 3.0 * g.normal())
        .collect();
    let mut want = vec![0f32; groups * cols];
    for (gi, e) in want.chunks_exact_mut(cols).enumerate() {
        for row in x[gi * rows * cols..(gi + 1) * rows * cols].chunks_exact(cols) {
            e.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        e.iter_mut().for_each(|v| *v /= rows as f32);
    }
    for_seeds(|s| {
        let (xb, ob) = (Buf::from(&x), Buf::filled(groups * cols, f32::NAN));
        let mut a = Args::new()
            .buf(&xb)
            .val(rows as i32)
            .val(cols as i32)
            .val(groups as i32)
            .buf(&ob);
        sim().launch("column_means_f32", &flat(groups * cols), &mut a, s)?;
        same_bits("column_means_f32", ob.get(), &want)
    })
}

fn scale_gelu() -> Result<(), String> {
    let mut g = Gen::new(12);
    let (rows, cols) = (23usize, 41usize);
    let n = rows * cols;
    let z: Vec<f32> = (0..n).map(|_| 3.0 * g.normal()).collect();
    let sc: Vec<f32> = (0..cols).map(|_| 1.0 + 0.3 * g.normal()).collect();
    let want: Vec<f32> = (0..n).map(|i| gelu(z[i] * sc[i % cols])).collect();
    for_seeds(|s| {
        let (zb, sb) = (Buf::from(&z), Buf::from(&sc));
        let ob = Buf::filled(n, f32::NAN);
        let mut a = Args::new()
            .buf(&zb)
            .buf(&sb)
            .val(n as i64)
            .val(cols as i32)
            .buf(&ob);
        sim().launch("scale_gelu_f32", &flat(n), &mut a, s)?;
        close("scale_gelu_f32", ob.get(), &want, 1e-6, 1e-6)?;
        let got_f32 = ob.get().to_vec();
        let hb = Buf::filled(n, 0u16);
        let mut a = Args::new()
            .buf(&zb)
            .buf(&sb)
            .val(n as i64)
            .val(cols as i32)
            .buf(&hb);
        sim().launch("scale_gelu_bf16", &flat(n), &mut a, s)?;
        // Exactly the f32 kernel's values rounded.
        let want_bits: Vec<u16> = got_f32
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect();
        same("scale_gelu_bf16", hb.get(), &want_bits)
    })
}

fn scale_cols() -> Result<(), String> {
    let mut g = Gen::new(13);
    let (rows, cols, ld_src, ld_dst) = (19usize, 30usize, 33usize, 47usize);
    let src: Vec<f32> = (0..rows * ld_src).map(|_| g.normal()).collect();
    let sc: Vec<f32> = (0..cols).map(|_| g.normal()).collect();
    let mut want = vec![-7f32; rows * ld_dst];
    for r in 0..rows {
        for c in 0..cols {
            want[r * ld_dst + c] = src[r * ld_src + c] * sc[c];
        }
    }
    for_seeds(|s| {
        let (xb, sb, db) = (
            Buf::from(&src),
            Buf::from(&sc),
            Buf::filled(rows * ld_dst, -7f32),
        );
        let mut a = Args::new()
            .buf(&xb)
            .val(ld_src as i32)
            .buf(&sb)
            .val(rows as i32)
            .val(cols as i32)
            .buf(&db)
            .val(ld_dst as i32);
        sim().launch("scale_cols_f32", &flat(rows * cols), &mut a, s)?;
        same_bits("scale_cols_f32", db.get(), &want)
    })
}

fn to_bf16() -> Result<(), String> {
    let mut g = Gen::new(14);
    let mut x: Vec<f32> = (0..999).map(|_| 100.0 * g.normal()).collect();
    // Ties: 1 + 2⁻⁸ rounds down to 1, 1 + 3·2⁻⁸ up to 1 + 2⁻⁶; infinities and zeros kept.
    x[..6].copy_from_slice(&[
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
    ]);
    let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    for_seeds(|s| {
        let (xb, hb) = (Buf::from(&x), Buf::filled(x.len(), 0u16));
        let mut a = Args::new().buf(&xb).buf(&hb).val(x.len() as i64);
        sim().launch("to_bf16", &flat(x.len()), &mut a, s)?;
        same("to_bf16", hb.get(), &want)
    })
}
