//! The container format: round trip, every bad-file case, and a mutation fuzz.

use miad::config::{BankConfig, ModelConfig};
use miad::format::*;
use miad::util::rng::Rng;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    crate::scratch::scratch_dir("format-files").join(name)
}

fn small_model(path: &Path) -> [u8; 16] {
    let cfg = ModelConfig::small();
    write_model(&cfg, &random_model(&cfg, 1), &[], path).unwrap()
}

fn bank_cfg(model_id: [u8; 16]) -> BankConfig {
    BankConfig::empty(model_id, "small", "test")
}

#[test]
fn round_trip_every_dtype_and_odd_shapes_zero_copy() {
    let path = tmp("roundtrip.bank");
    let f32s: Vec<f32> = (0..7 * 3 * 5).map(|i| i as f32 * 0.5 - 3.0).collect();
    let f16s: Vec<half::f16> = (0..13)
        .map(|i| half::f16::from_f32(i as f32 / 3.0))
        .collect();
    let bf16s: Vec<half::bf16> = (0..1)
        .map(|i| half::bf16::from_f32(i as f32 + 0.25))
        .collect();
    let u32s: Vec<u32> = (0..4097).map(|i| i * 7).collect();
    let i64s: Vec<i64> = (0..9).map(|i| -(i as i64) << 40).collect();
    let u8s: Vec<u8> = (0..=255).collect();
    let mut w = Writer::bank(bank_cfg([7; 16]));
    w.add_typed("a", &[7, 3, 5], &f32s)
        .add_typed("b", &[13], &f16s)
        .add_typed("c", &[1, 1], &bf16s)
        .add_typed("d", &[4097], &u32s)
        .add_typed("e", &[3, 3], &i64s)
        .add_typed("f", &[16, 16], &u8s)
        .add_typed::<f32>("empty", &[0, 4], &[]);
    let id = w.write(&path).unwrap();
    let bank = BankFile::open(&path, &OpenOptions::default(), None).unwrap();
    assert_eq!(bank.id(), id);
    assert_eq!(bank.config(), &bank_cfg([7; 16]));
    let map = bank.container().mapped_bytes().as_ptr_range();
    let a = bank.typed::<f32>("a", Some(&[7, 3, 5])).unwrap();
    assert_eq!(a, &f32s[..]);
    assert!(
        map.contains(&(a.as_ptr() as *const u8)),
        "tensor is a view into the mapping"
    );
    assert_eq!(
        bank.typed::<half::f16>("b", Some(&[13])).unwrap(),
        &f16s[..]
    );
    assert_eq!(bank.typed::<half::bf16>("c", None).unwrap(), &bf16s[..]);
    assert_eq!(bank.typed::<u32>("d", None).unwrap(), &u32s[..]);
    assert_eq!(bank.typed::<i64>("e", None).unwrap(), &i64s[..]);
    assert_eq!(bank.typed::<u8>("f", None).unwrap(), &u8s[..]);
    assert!(bank
        .typed::<f32>("empty", Some(&[0, 4]))
        .unwrap()
        .is_empty());
    for t in &bank.container().manifest().tensors {
        assert_eq!(t.offset % 4096, 0, "{} aligned", t.name);
    }
    assert!(matches!(
        bank.typed::<u32>("a", None),
        Err(FormatError::DtypeMismatch { .. })
    ));
    assert!(matches!(
        bank.typed::<f32>("a", Some(&[3, 7, 5])),
        Err(FormatError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        bank.typed::<f32>("zz", None),
        Err(FormatError::MissingTensor { .. })
    ));
}

#[test]
fn model_round_trip_serves_every_tensor() {
    let path = tmp("model-rt.miad");
    let cfg = ModelConfig::small();
    let tensors = random_model(&cfg, 3);
    write_model(&cfg, &tensors, &[("k", "v")], &path).unwrap();
    let m = ModelFile::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(m.config(), &cfg);
    let map = m.container().mapped_bytes().as_ptr_range();
    for s in model_tensor_specs(&cfg) {
        let got = m.f32(&s.name, &s.shape).unwrap();
        let (start, end) = (
            got.as_ptr() as *const u8,
            got.as_ptr_range().end as *const u8,
        );
        assert!(
            map.contains(&start) && end <= map.end,
            "{} is a view into the mapping",
            s.name
        );
        assert_eq!(got, tensors.f32(&s.name, &s.shape).unwrap(), "{}", s.name);
    }
    assert!(m
        .container()
        .manifest()
        .provenance
        .contains(&("k".into(), "v".into())));
}

/// Rewrites the header checksum after a deliberate header edit.
fn reseal_header(bytes: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..72]);
    bytes[72..80].copy_from_slice(&sum.to_le_bytes());
}

fn open_bytes(name: &str, bytes: &[u8]) -> Result<ModelFile, FormatError> {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    ModelFile::open(&p, &OpenOptions::default())
}

/// Re-encodes a file with an edited manifest (to build structurally bad tables).
fn with_manifest(src: &[u8], edit: impl FnOnce(&mut Manifest)) -> Vec<u8> {
    let off = u64::from_le_bytes(src[24..32].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(src[32..40].try_into().unwrap()) as usize;
    let mut m: Manifest =
        rkyv::from_bytes::<Manifest, rkyv::rancor::Error>(&src[off..off + len]).unwrap();
    edit(&mut m);
    let new = rkyv::to_bytes::<rkyv::rancor::Error>(&m).unwrap();
    assert!(
        off + new.len() <= 4096 * ((off + len).div_ceil(4096)),
        "manifest still fits before the data"
    );
    let mut out = src.to_vec();
    out[off..off + new.len()].copy_from_slice(&new);
    out[32..40].copy_from_slice(&(new.len() as u64).to_le_bytes());
    out[40..48].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&new).to_le_bytes());
    reseal_header(&mut out);
    out
}

#[test]
fn each_bad_file_gets_its_own_error() {
    let path = tmp("good.miad");
    small_model(&path);
    let good = std::fs::read(&path).unwrap();

    let e = open_bytes("trunc-head.miad", &good[..50]).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
    let e = open_bytes("trunc.miad", &good[..good.len() - 10]).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains("trunc.miad"),
        "message names the file: {e}"
    );

    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        open_bytes("magic.miad", &b),
        Err(FormatError::BadMagic { .. })
    ));

    let mut b = good.clone();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    reseal_header(&mut b);
    assert!(matches!(
        open_bytes("version.miad", &b),
        Err(FormatError::NewerVersion { found: 99, .. })
    ));

    let mut b = good.clone();
    b[12..16].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    assert!(matches!(
        open_bytes("endian.miad", &b),
        Err(FormatError::WrongEndianness { .. })
    ));

    let mut b = good.clone();
    b[20] ^= 1;
    assert!(matches!(
        open_bytes("hdr.miad", &b),
        Err(FormatError::HeaderChecksum { .. })
    ));

    let mut b = good.clone();
    b[200] ^= 0x40;
    assert!(matches!(
        open_bytes("manifest.miad", &b),
        Err(FormatError::InvalidManifest { .. })
    ));

    let b = with_manifest(&good, |m| m.tensors[3].offset += 4096 * 100_000);
    let e = open_bytes("oob.miad", &b).unwrap_err();
    assert!(
        matches!(&e, FormatError::OutOfBounds { tensor, .. } if tensor == "vit.patch_embed.proj.bias"),
        "{e}"
    );

    let b = with_manifest(&good, |m| m.tensors[2].offset += 4);
    assert!(matches!(
        open_bytes("align.miad", &b),
        Err(FormatError::Misaligned { .. })
    ));

    let b = with_manifest(&good, |m| m.tensors[2].offset = m.tensors[1].offset);
    assert!(matches!(
        open_bytes("overlap.miad", &b),
        Err(FormatError::Overlap { .. })
    ));

    let b = with_manifest(&good, |m| m.tensors[2].shape[0] += 1);
    assert!(matches!(
        open_bytes("size.miad", &b),
        Err(FormatError::SizeMismatch { .. })
    ));

    // dtype/shape consistent with the bytes but contradicting the configuration
    let b = with_manifest(&good, |m| {
        let t = &mut m.tensors[0];
        t.shape = vec![t.shape.iter().product::<u64>()];
    });
    assert!(matches!(
        open_bytes("shape.miad", &b),
        Err(FormatError::ShapeMismatch { .. })
    ));
    let b = with_manifest(&good, |m| m.tensors[0].dtype = Dtype::U32);
    assert!(matches!(
        open_bytes("dtype.miad", &b),
        Err(FormatError::DtypeMismatch { .. })
    ));

    let b = with_manifest(&good, |m| m.tensors[5].name = "vit.something_else".into());
    let e = open_bytes("missing.miad", &b).unwrap_err();
    assert!(
        matches!(&e, FormatError::MissingTensor { tensor, .. } if tensor == "vit.blocks.0.norm1.bias"),
        "{e}"
    );

    let b = with_manifest(&good, |m| {
        let mut extra = m.tensors[0].clone();
        extra.name = "vit.extra".into();
        m.tensors.push(extra);
    });
    assert!(matches!(
        open_bytes("unknown.miad", &b),
        Err(FormatError::Overlap { .. }) | Err(FormatError::UnknownTensor { .. })
    ));

    let b = with_manifest(&good, |m| {
        let mut dup = m.tensors[0].clone();
        dup.offset = m.tensors.last().unwrap().offset;
        m.tensors.push(dup);
    });
    assert!(matches!(
        open_bytes("dup.miad", &b),
        Err(FormatError::DuplicateTensor { .. })
    ));

    let mut b = good.clone();
    let last = b.len() - 3;
    b[last] ^= 0xff;
    let e = open_bytes("checksum.miad", &b).unwrap_err();
    assert!(
        matches!(&e, FormatError::ChecksumMismatch { tensor, .. } if tensor == "fusion.xyz_head.bias"),
        "{e}"
    );
    // ... and skipping verification opens it (fast boot).
    let p = tmp("checksum.miad");
    assert!(ModelFile::open(
        &p,
        &OpenOptions {
            verify_checksums: false,
            ..OpenOptions::default()
        }
    )
    .is_ok());
}

#[test]
fn bank_of_another_model_and_wrong_kinds_are_refused() {
    let (ma, mb) = (tmp("ma.miad"), tmp("mb.miad"));
    let ida = small_model(&ma);
    let cfg = ModelConfig::small();
    write_model(&cfg, &random_model(&cfg, 2), &[], &mb).unwrap();
    let bank = tmp("a.bank");
    Writer::bank(bank_cfg(ida))
        .add_f32("x", &[2], &[1.0, 2.0])
        .write(&bank)
        .unwrap();
    let a = ModelFile::open(&ma, &OpenOptions::default()).unwrap();
    let b = ModelFile::open(&mb, &OpenOptions::default()).unwrap();
    assert!(BankFile::open(&bank, &OpenOptions::default(), Some(&a)).is_ok());
    let e = BankFile::open(&bank, &OpenOptions::default(), Some(&b)).unwrap_err();
    assert!(matches!(e, FormatError::ModelMismatch { .. }), "{e}");
    assert!(matches!(
        ModelFile::open(&bank, &OpenOptions::default()),
        Err(FormatError::WrongKind { .. })
    ));
    assert!(matches!(
        BankFile::open(&ma, &OpenOptions::default(), None),
        Err(FormatError::WrongKind { .. })
    ));
    assert!(matches!(
        ModelFile::open(&tmp("nope.miad"), &OpenOptions::default()),
        Err(FormatError::Io { .. })
    ));
}

#[test]
fn writing_never_leaves_a_partial_file_under_the_final_name() {
    let dir = tmp("no-such-dir").join("sub");
    let path = dir.join("x.miad");
    let cfg = ModelConfig::small();
    assert!(write_model(&cfg, &random_model(&cfg, 1), &[], &path).is_err());
    assert!(!path.exists());
}

/// 300 seeded random byte flips, truncations and extensions of a valid file: opening
/// returns Ok or Err, never panics.
#[test]
fn mutated_files_never_panic() {
    let mut g = Rng::new(300);
    for _ in 0..300 {
        let flips: Vec<(usize, u8)> = (0..g.below(8))
            .map(|_| (g.below(1 << 22) as usize, g.below(256) as u8))
            .collect();
        let cut = (g.below(2) == 1).then(|| g.below(1 << 22) as usize);
        let extend = g.below(64) as usize;
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let good = GOOD.get_or_init(|| {
            let p = tmp("fuzz-src.miad");
            small_model(&p);
            std::fs::read(&p).unwrap()
        });
        let mut b = good.clone();
        // bias flips towards the header and manifest, where structure lives
        for (pos, v) in flips {
            let pos = if pos % 2 == 0 {
                pos % 8192
            } else {
                pos % b.len()
            };
            b[pos] ^= v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        b.extend(std::iter::repeat_n(0xA5, extend));
        let p = tmp(&format!(
            "fuzz-{}.miad",
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::write(&p, &b).unwrap();
        let _ = ModelFile::open(&p, &OpenOptions::default());
        let _ = BankFile::open(
            &p,
            &OpenOptions {
                verify_checksums: false,
                ..OpenOptions::default()
            },
            None,
        );
    }
}

#[test]
fn hostile_configuration_is_refused_before_planning() {
    let path = tmp("hostile-src.miad");
    small_model(&path);
    let good = std::fs::read(&path).unwrap();
    // A manifest with valid checksums but absurd sizes: refused, no huge tensor list, no
    // overflow in shape products.
    let edits: [fn(&mut ModelConfig); 5] = [
        |c| c.vit.as_mut().unwrap().depth = 1_000_000_000,
        |c| c.vit.as_mut().unwrap().heads = 0,
        |c| c.vit.as_mut().unwrap().patch_size = 0,
        |c| c.point.as_mut().unwrap().out_layers = vec![7, 7],
        |c| c.fusion.as_mut().unwrap().rgb_dim += 1,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let b = with_manifest(&good, |m| {
            if let FileConfig::Model(c) = &mut m.config {
                edit(c)
            }
        });
        let e = open_bytes(&format!("hostile-{i}.miad"), &b).unwrap_err();
        assert!(
            matches!(e, FormatError::InvalidManifest { .. }),
            "edit {i}: {e}"
        );
    }
}

#[test]
fn writer_refuses_what_open_would_refuse() {
    let p = tmp("refused.bank");
    let mut w = Writer::bank(bank_cfg([0; 16]));
    w.add_f32("x", &[3], &[1.0, 2.0]);
    assert!(w.write(&p).is_err(), "size contradicting the shape");
    let mut w = Writer::bank(bank_cfg([0; 16]));
    w.add_f32("x", &[1], &[1.0]).add_f32("x", &[1], &[2.0]);
    assert!(w.write(&p).is_err(), "duplicate name");
    assert!(!p.exists());
}

/// 300 seeded random mutations of the manifest and header *with checksums recomputed*, so
/// that rkyv's validation and the table checks (not just the checksums) see hostile input.
#[test]
fn resealed_mutations_never_panic() {
    let mut g = Rng::new(301);
    for _ in 0..300 {
        let flips: Vec<(usize, u8)> = (0..1 + g.below(5))
            .map(|_| (g.next_u64() as usize, g.below(256) as u8))
            .collect();
        let header_flip =
            (g.below(2) == 1).then(|| (16 + g.below(56) as usize, g.below(256) as u8));
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let good = GOOD.get_or_init(|| {
            let p = tmp("fuzz-reseal-src.miad");
            small_model(&p);
            std::fs::read(&p).unwrap()
        });
        let mut b = good.clone();
        let off = u64::from_le_bytes(b[24..32].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        for (pos, v) in flips {
            b[off + pos % len] ^= v;
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&b[off..off + len]);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
        if let Some((pos, v)) = header_flip {
            b[pos] ^= v;
        }
        reseal_header(&mut b);
        let p = tmp(&format!(
            "fuzz-reseal-{}.miad",
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::write(&p, &b).unwrap();
        if let Ok(m) = ModelFile::open(
            &p,
            &OpenOptions {
                verify_checksums: false,
                ..OpenOptions::default()
            },
        ) {
            // Whatever opened must serve every tensor it promises without panicking.
            for s in model_tensor_specs(m.config()) {
                let _ = m.f32(&s.name, &s.shape);
            }
        }
        let _ = BankFile::open(&p, &OpenOptions::default(), None);
    }
}

/// Parameter counts of the m3dm preset, against counts derived by hand from the PyTorch
/// modules (timm ViT-B/8 without head: 85 807 872; Point-MAE encoder 12×384 with its
/// mini-PointNet: 21 823 744; M3DM fusion block with heads: 15 840 896).
#[test]
fn m3dm_preset_has_the_method_parameter_counts() {
    let cfg = ModelConfig::m3dm();
    let count = |prefix: &str| -> usize {
        model_tensor_specs(&cfg)
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    };
    assert_eq!(count("vit."), 85_807_872);
    assert_eq!(count("point."), 21_823_744);
    assert_eq!(count("fusion."), 15_840_896);
    assert_eq!(count(""), 123_472_512);
}

#[test]
fn random_models_are_seeded_and_scaled() {
    let cfg = ModelConfig::small();
    let a = random_model(&cfg, 9);
    let b = random_model(&cfg, 9);
    let c = random_model(&cfg, 10);
    let name = "vit.blocks.1.mlp.fc2.weight";
    let (shape, wa) = &a.tensors[name];
    assert_eq!(wa, &b.tensors[name].1, "same seed, same weights");
    assert_ne!(wa, &c.tensors[name].1, "another seed, other weights");
    // linear weights: mean 0, std 1/sqrt(fan_in)
    let n = wa.len() as f64;
    let mean = wa.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (wa.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let want = 1.0 / (shape[1] as f64).sqrt();
    assert!(mean.abs() < 0.1 * want, "mean {mean}");
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    // LayerNorm scales near 1
    let g = &a.tensors["point.norm.weight"].1;
    assert!(g.iter().all(|&v| (v - 1.0).abs() < 0.5));
}
