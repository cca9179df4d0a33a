//! Anomaly maps against f64 references of the documented definitions (PyTorch bilinear,
//! align_corners=False; scipy gaussian_filter, mode 'reflect', truncate 4).

use miad::cpu::maps::{anomaly_map, gaussian_blur, map_scratch_len, upsample_bilinear};
use miad::util::rng::Rng;

fn bilinear_f64(g: &[f32], gi: usize, s: usize) -> Vec<f64> {
    let mut out = vec![0f64; s * s];
    let c = |d: usize| {
        let src = ((d as f64 + 0.5) * gi as f64 / s as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(gi - 1);
        (i0, (i0 + 1).min(gi - 1), src - i0 as f64)
    };
    for y in 0..s {
        for x in 0..s {
            let ((y0, y1, ly), (x0, x1, lx)) = (c(y), c(x));
            let v = |yy: usize, xx: usize| g[yy * gi + xx] as f64;
            out[y * s + x] = (1.0 - ly) * ((1.0 - lx) * v(y0, x0) + lx * v(y0, x1))
                + ly * ((1.0 - lx) * v(y1, x0) + lx * v(y1, x1));
        }
    }
    out
}

fn blur_f64(m: &[f64], s: usize, sigma: f64) -> Vec<f64> {
    let r = (4.0 * sigma + 0.5).floor() as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|t| (-(t * t) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f64 = k.iter().sum();
    let refl = |i: isize| -> usize {
        let n = s as isize;
        let mut i = i;
        loop {
            if i < 0 {
                i = -i - 1;
            } else if i >= n {
                i = 2 * n - i - 1;
            } else {
                return i as usize;
            }
        }
    };
    let mut tmp = vec![0f64; s * s];
    let mut out = vec![0f64; s * s];
    for y in 0..s {
        for x in 0..s {
            tmp[y * s + x] = (-r..=r)
                .map(|t| k[(t + r) as usize] / ks * m[y * s + refl(x as isize + t)])
                .sum();
        }
    }
    for y in 0..s {
        for x in 0..s {
            out[y * s + x] = (-r..=r)
                .map(|t| k[(t + r) as usize] / ks * tmp[refl(y as isize + t) * s + x])
                .sum();
        }
    }
    out
}

#[test]
fn bilinear_matches_reference_and_known_values() {
    // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=4,
    // mode='bilinear', align_corners=False) first row: [0, 0.25, 0.75, 1].
    let mut out = [0f32; 16];
    upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 4, &mut out);
    assert_eq!(&out[..4], &[0.0, 0.25, 0.75, 1.0]);
    assert_eq!(&out[12..], &[2.0, 2.25, 2.75, 3.0]);
    let mut rng = Rng::new(2);
    let mut g = vec![0f32; 7 * 7];
    rng.fill_normal(&mut g, 1.0);
    let mut out = vec![0f32; 32 * 32];
    upsample_bilinear(&g, 7, 32, &mut out);
    for (a, b) in out.iter().zip(bilinear_f64(&g, 7, 32)) {
        assert!((*a as f64 - b).abs() < 1e-5);
    }
}

#[test]
fn blur_matches_reflect_reference_and_keeps_mass() {
    let s = 40;
    let mut rng = Rng::new(4);
    let mut m = vec![0f32; s * s];
    rng.fill_normal(&mut m, 1.0);
    let want = blur_f64(&m.iter().map(|&v| v as f64).collect::<Vec<_>>(), s, 4.0);
    let mut scratch = vec![0f32; map_scratch_len(s)];
    let mut got = m.clone();
    gaussian_blur(&mut got, s, 4.0, &mut scratch);
    for (a, b) in got.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
    // A constant map stays constant (reflect boundary, normalised kernel).
    let mut c = vec![2.5f32; s * s];
    gaussian_blur(&mut c, s, 4.0, &mut scratch);
    assert!(c.iter().all(|v| (v - 2.5).abs() < 1e-5));
}

#[test]
fn anomaly_map_is_upsample_then_blur_at_method_size() {
    let mut rng = Rng::new(8);
    let mut g = vec![0f32; 56 * 56];
    rng.fill_normal(&mut g, 1.0);
    let mut out = vec![0f32; 224 * 224];
    let mut scratch = vec![0f32; map_scratch_len(224)];
    anomaly_map(&g, 56, 224, 4.0, &mut out, &mut scratch);
    let want = blur_f64(&bilinear_f64(&g, 56, 224), 224, 4.0);
    let worst = out
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "{worst}");
}
