//! Readers and writers for the MVTec 3D-AD layout (SPEC §0): `xyz/NNN.tiff` (3-channel
//! float32 organized clouds), `rgb/NNN.png` (8-bit colour) and `gt/NNN.png` (masks,
//! > 0 = defect). Offline code (fit, evaluation, the synthetic data set): these allocate.
//!
//! A file that is not what it claims to be gives [`Error::Decode`] naming the file.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

/// An organized point cloud read from disk: `height × width × 3` f32, packed.
#[derive(Clone, Debug, PartialEq)]
pub struct Cloud {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// An 8-bit RGB image, `height × width × 3`, packed.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A mask, `height × width`, 1 = defect, 0 = good.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Cloud {
    pub fn view(&self) -> crate::pipeline::input::CloudView<'_> {
        crate::pipeline::input::CloudView::packed(&self.data, self.width, self.height)
    }
}

impl Rgb {
    pub fn view(&self) -> crate::pipeline::input::RgbView<'_> {
        crate::pipeline::input::RgbView::packed(&self.data, self.width, self.height)
    }
}

fn decode_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        message: what.to_string(),
    }
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| Error::io(path, e))
}

/// Reads a 3-channel float TIFF (32- or 64-bit samples) as an organized cloud.
pub fn read_xyz_tiff(path: &Path) -> Result<Cloud> {
    let mut dec = tiff::decoder::Decoder::new(open(path)?)
        .map_err(|e| decode_err(path, format!("not a TIFF file: {e}")))?
        .with_limits(tiff::decoder::Limits::unlimited());
    let (w, h) = dec
        .dimensions()
        .map_err(|e| decode_err(path, format!("TIFF without dimensions: {e}")))?;
    let ct = dec.colortype().map_err(|e| decode_err(path, e))?;
    if !matches!(ct, tiff::ColorType::RGB(32) | tiff::ColorType::RGB(64)) {
        return Err(decode_err(
            path,
            format!("expected a 3-channel float32 TIFF (x, y, z), found {ct:?}"),
        ));
    }
    let img = dec.read_image().map_err(|e| decode_err(path, e))?;
    let data: Vec<f32> = match img {
        tiff::decoder::DecodingResult::F32(v) => v,
        tiff::decoder::DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => {
            return Err(decode_err(
                path,
                "expected float samples (x, y, z), found integers",
            ))
        }
    };
    let (w, h) = (w as usize, h as usize);
    if data.len() != w * h * 3 {
        return Err(decode_err(
            path,
            format!(
                "{w}×{h}×3 cloud holds {} values instead of {}",
                data.len(),
                w * h * 3
            ),
        ));
    }
    Ok(Cloud {
        width: w,
        height: h,
        data,
    })
}

/// Writes an organized cloud (`h × w × 3` f32) as a 3-channel float32 TIFF.
pub fn write_xyz_tiff(path: &Path, w: usize, h: usize, data: &[f32]) -> Result<()> {
    if data.len() != w * h * 3 {
        return Err(Error::Input(format!(
            "{}: {w}×{h}×3 cloud needs {} values, got {}",
            path.display(),
            w * h * 3,
            data.len()
        )));
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc =
        tiff::encoder::TiffEncoder::new(BufWriter::new(file)).map_err(|e| decode_err(path, e))?;
    enc.write_image::<tiff::encoder::colortype::RGB32Float>(w as u32, h as u32, data)
        .map_err(|e| decode_err(path, e))?;
    Ok(())
}

/// Decodes a PNG to 8-bit samples, with 16-bit reduced to 8 and palettes expanded.
fn read_png(path: &Path) -> Result<(usize, usize, png::ColorType, Vec<u8>)> {
    let mut dec = png::Decoder::new(open(path)?);
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| decode_err(path, format!("not a PNG file: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| decode_err(path, format!("broken PNG: {e}")))?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width as usize, info.height as usize);
    let ch = info.color_type.samples();
    if info.bit_depth != png::BitDepth::Eight || buf.len() < w * h * ch {
        return Err(decode_err(path, "unsupported PNG sample layout"));
    }
    // rows are packed at 8 bits per sample
    buf.truncate(w * h * ch);
    Ok((w, h, info.color_type, buf))
}

/// Reads an RGB PNG (grey and alpha are accepted: grey is replicated, alpha dropped).
pub fn read_rgb_png(path: &Path) -> Result<Rgb> {
    let (w, h, ct, buf) = read_png(path)?;
    let ch = ct.samples();
    let data = match ct {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
            buf.chunks_exact(ch).flat_map(|p| [p[0]; 3]).collect()
        }
        png::ColorType::Indexed => return Err(decode_err(path, "palette was not expanded")),
    };
    Ok(Rgb {
        width: w,
        height: h,
        data,
    })
}

/// Reads a ground-truth mask PNG: any sample > 0 in the first channel = defect (1).
pub fn read_mask_png(path: &Path) -> Result<Mask> {
    let (w, h, ct, buf) = read_png(path)?;
    let ch = ct.samples();
    let data = buf.chunks_exact(ch).map(|p| u8::from(p[0] > 0)).collect();
    Ok(Mask {
        width: w,
        height: h,
        data,
    })
}

fn write_png(path: &Path, w: usize, h: usize, ct: png::ColorType, data: &[u8]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(ct);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(|e| decode_err(path, e))?;
    wr.write_image_data(data).map_err(|e| decode_err(path, e))?;
    wr.finish().map_err(|e| decode_err(path, e))?;
    Ok(())
}

/// Writes a packed 8-bit RGB image as PNG.
pub fn write_rgb_png(path: &Path, w: usize, h: usize, data: &[u8]) -> Result<()> {
    if data.len() != w * h * 3 {
        return Err(Error::Input(format!(
            "{}: {w}×{h} RGB image needs {} bytes, got {}",
            path.display(),
            w * h * 3,
            data.len()
        )));
    }
    write_png(path, w, h, png::ColorType::Rgb, data)
}

/// Writes a mask as an 8-bit grey PNG: 255 where `mask > 0`, else 0 (MVTec's convention).
pub fn write_mask_png(path: &Path, w: usize, h: usize, mask: &[u8]) -> Result<()> {
    if mask.len() != w * h {
        return Err(Error::Input(format!(
            "{}: {w}×{h} mask needs {} bytes, got {}",
            path.display(),
            w * h,
            mask.len()
        )));
    }
    let px: Vec<u8> = mask.iter().map(|&v| if v > 0 { 255 } else { 0 }).collect();
    write_png(path, w, h, png::ColorType::Grayscale, &px)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of one test under the system's temp folder, removed when dropped (unit
    /// tests have no `CARGO_TARGET_TMPDIR`).
    struct TmpDir(std::path::PathBuf);

    impl TmpDir {
        fn new(test: &str) -> TmpDir {
            let dir = std::env::temp_dir().join(format!("miad-io-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TmpDir(dir)
        }
        fn file(&self, name: &str) -> std::path::PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cloud_rgb_and_mask_round_trip() {
        let tmp = TmpDir::new("round_trip");
        let (w, h) = (7, 5);
        let cloud: Vec<f32> = (0..w * h * 3).map(|i| i as f32 * 0.125 - 3.0).collect();
        let p = tmp.file("c.tiff");
        write_xyz_tiff(&p, w, h, &cloud).unwrap();
        let c = read_xyz_tiff(&p).unwrap();
        assert_eq!((c.width, c.height), (w, h));
        assert_eq!(c.data, cloud);

        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let p = tmp.file("r.png");
        write_rgb_png(&p, w, h, &rgb).unwrap();
        assert_eq!(read_rgb_png(&p).unwrap().data, rgb);

        let mask: Vec<u8> = (0..w * h).map(|i| u8::from(i % 3 == 0)).collect();
        let p = tmp.file("m.png");
        write_mask_png(&p, w, h, &mask).unwrap();
        assert_eq!(read_mask_png(&p).unwrap().data, mask);
        // a mask PNG is grey, not a 3-channel float cloud
        assert!(matches!(read_xyz_tiff(&p), Err(Error::Decode { .. })));
    }

    #[test]
    fn wrong_files_give_errors_naming_the_file() {
        let tmp = TmpDir::new("wrong_files");
        let p = tmp.file("junk.tiff");
        std::fs::write(&p, b"this is not an image").unwrap();
        for r in [
            read_xyz_tiff(&p).map(|_| ()),
            read_rgb_png(&p).map(|_| ()),
            read_mask_png(&p).map(|_| ()),
        ] {
            let e = r.unwrap_err();
            assert!(matches!(e, Error::Decode { .. }));
            assert!(e.to_string().contains("junk.tiff"), "{e}");
        }
        let missing = tmp.file("missing.png");
        assert!(matches!(read_rgb_png(&missing), Err(Error::Io { .. })));
        // an 8-bit RGB TIFF is not a cloud
        let p = tmp.file("u8.tiff");
        let f = File::create(&p).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
        enc.write_image::<tiff::encoder::colortype::RGB8>(2, 2, &[0u8; 12])
            .unwrap();
        let e = read_xyz_tiff(&p).unwrap_err();
        assert!(e.to_string().contains("u8.tiff") && e.to_string().contains("float32"));
    }
}
