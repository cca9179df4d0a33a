//! The synthetic dataset: layout, determinism, defect sizes, masks consistent with the
//! geometry, sensor noise.

use miad::eval::synth::{part_seed, synth_part, write_dataset, Category, Defect, SynthOptions};

fn tmpdir(name: &str) -> std::path::PathBuf {
    crate::common::scratch_dir(&format!("synth-{name}"))
}

fn files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn layout_and_byte_identical_for_a_seed() {
    let opts = |out| SynthOptions {
        out,
        seed: 5,
        categories: vec![Category::Disc, Category::Block],
        train: 2,
        validation: 1,
        test_good: 1,
        test_bad: 5,
        size: 64,
    };
    let (a, b) = (tmpdir("a"), tmpdir("b"));
    let sa = write_dataset(&opts(a.clone())).unwrap();
    write_dataset(&opts(b.clone())).unwrap();
    assert_eq!(sa.parts, 2 * (2 + 1 + 1 + 5));
    let fa = files(&a);
    let fb = files(&b);
    assert_eq!(fa.len(), fb.len());
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(x.strip_prefix(&a).unwrap(), y.strip_prefix(&b).unwrap());
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }
    for rel in [
        "disc/train/good/rgb/000.png",
        "disc/train/good/xyz/001.tiff",
        "disc/validation/good/rgb/000.png",
        "disc/test/good/gt/000.png",
        "block/test/dent/xyz/000.tiff",
        "block/test/stain/gt/000.png",
        "block/test/crack/rgb/000.png",
    ] {
        assert!(a.join(rel).is_file(), "{rel} missing");
    }
    assert!(!a.join("disc/train/good/gt").exists());
    // A different seed changes the data.
    let c = tmpdir("c");
    write_dataset(&SynthOptions {
        seed: 6,
        ..opts(c.clone())
    })
    .unwrap();
    assert_ne!(
        std::fs::read(a.join("disc/train/good/xyz/000.tiff")).unwrap(),
        std::fs::read(c.join("disc/train/good/xyz/000.tiff")).unwrap()
    );
    // Files decode: PNG sizes and the TIFF as 3-channel f32.
    let dec =
        png::Decoder::new(std::fs::File::open(a.join("block/test/stain/gt/000.png")).unwrap());
    let reader = dec.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (64, 64));
    let mut t = tiff::decoder::Decoder::new(
        std::fs::File::open(a.join("disc/train/good/xyz/000.tiff")).unwrap(),
    )
    .unwrap();
    assert_eq!(t.dimensions().unwrap(), (64, 64));
    match t.read_image().unwrap() {
        tiff::decoder::DecodingResult::F32(v) => {
            let part = synth_part(
                Category::Disc,
                None,
                64,
                part_seed(5, Category::Disc, 1, None, 0),
            )
            .unwrap();
            assert_eq!(v, part.xyz);
        }
        _ => panic!("not f32"),
    }
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn defects_are_small_exact_and_inside_the_object() {
    for cat in Category::ALL {
        for d in Defect::ALL {
            for k in 0..4 {
                let seed = part_seed(1, cat, 3, Some(d), k);
                let bad = synth_part(cat, Some(d), 224, seed).unwrap();
                let frac = bad.defect_pixels as f64 / bad.object_pixels as f64;
                assert!(frac > 0.002 && frac <= 0.05, "{cat:?} {d:?}: {frac}");
                // The same seed without the defect draws the same scene; geometry changes
                // only under the mask, and for geometric defects by millimetres there.
                let good = synth_part(cat, None, 224, seed).unwrap();
                let s = bad.size;
                let mut max_dz_in = 0.0f32;
                let mut rgb_diff_in = 0.0f64;
                for i in 0..s * s {
                    let (za, zb) = (good.xyz[i * 3 + 2], bad.xyz[i * 3 + 2]);
                    if za == 0.0 || zb == 0.0 {
                        continue;
                    }
                    if bad.mask[i] == 0 {
                        assert_eq!(za, zb, "{cat:?} {d:?} change outside mask");
                    } else {
                        max_dz_in = max_dz_in.max((za - zb).abs());
                        for c in 0..3 {
                            rgb_diff_in +=
                                (good.rgb[i * 3 + c] as f64 - bad.rgb[i * 3 + c] as f64).abs();
                        }
                    }
                }
                if d.is_geometric() {
                    assert!(max_dz_in > 0.002, "{cat:?} {d:?}: depth {max_dz_in}");
                } else {
                    assert_eq!(max_dz_in, 0.0);
                }
                let mean_rgb = rgb_diff_in / (3.0 * bad.defect_pixels as f64);
                assert!(mean_rgb > 8.0, "{cat:?} {d:?}: rgb change {mean_rgb}");
            }
        }
    }
}

#[test]
fn good_parts_vary_and_have_sensor_noise() {
    let a = synth_part(Category::Torus, None, 224, 1).unwrap();
    let b = synth_part(Category::Torus, None, 224, 2).unwrap();
    assert_ne!(a.rgb, b.rgb);
    assert!(a.mask.iter().all(|&m| m == 0));
    let missing = a
        .xyz
        .chunks_exact(3)
        .filter(|p| p == &[0.0, 0.0, 0.0])
        .count();
    let frac = missing as f64 / (224.0 * 224.0);
    assert!(frac > 0.001 && frac < 0.01, "missing {frac}");
    // Depth noise on the background plane: z minus the plane fit of a small flat patch.
    let z: Vec<f32> = (0..10)
        .flat_map(|v| (0..10).map(move |u| (v, u)))
        .map(|(v, u)| a.xyz[(v * 224 + u) * 3 + 2])
        .filter(|&z| z != 0.0)
        .collect();
    let mean = z.iter().sum::<f32>() / z.len() as f32;
    let sd = (z.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / z.len() as f32).sqrt();
    assert!(sd > 0.0001 && sd < 0.0006, "noise sd {sd}");
    // Objects stand well clear of the 10-pixel border frame used for plane fitting.
    assert!(a.object_pixels > 5000);
    assert!(synth_part(Category::Disc, None, 8, 1).is_err());
    assert!(Category::parse("cube").is_err());
}
