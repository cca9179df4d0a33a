//! Small raster pictures without a plotting dependency: an RGB canvas with rectangles,
//! lines and a built-in 5×7 bitmap font, a perceptual colormap, PNG output, and the
//! pictures miad writes: heatmap panels (RGB | anomaly-map overlay | mask), histograms
//! and line plots (latency percentiles).

use std::path::Path;

use crate::{Error, Result};

/// An RGB raster, 3 bytes a pixel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

pub type Rgb = [u8; 3];
pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [150, 150, 150];
pub const LIGHT_GREY: Rgb = [225, 225, 225];
pub const RED: Rgb = [220, 40, 40];

/// Width and height of one glyph cell at scale 1 (5×7 glyph plus 1 pixel spacing).
pub const GLYPH_W: usize = 6;
pub const GLYPH_H: usize = 8;

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let mut data = vec![0u8; width * height * 3];
        for px in data.chunks_exact_mut(3) {
            px.copy_from_slice(&background);
        }
        Canvas {
            width,
            height,
            data,
        }
    }

    /// Sets one pixel; coordinates outside the canvas are ignored.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Fills `w × h` pixels from (x, y), clipped to the canvas.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        let (x0, y0) = (x.max(0), y.max(0));
        let x1 = (x + w).min(self.width as i64);
        let y1 = (y + h).min(self.height as i64);
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.set(xx, yy, c);
            }
        }
    }

    /// One-pixel outline of a rectangle.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        self.line(x, y, x + w - 1, y, c);
        self.line(x, y + h - 1, x + w - 1, y + h - 1, c);
        self.line(x, y, x, y + h - 1, c);
        self.line(x + w - 1, y, x + w - 1, y + h - 1, c);
    }

    /// A one-pixel line (Bresenham), clipped.
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale × scale`.
    /// Lower-case letters are drawn as capitals; unknown characters as a small box.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, c: Rgb) {
        let s = scale.max(1) as i64;
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + k as i64 * GLYPH_W as i64 * s;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(gx + col as i64 * s, y + r as i64 * s, s, s, c);
                    }
                }
            }
        }
    }

    /// Pixel width of `text` at `scale`.
    pub fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * GLYPH_W * scale.max(1)
    }

    /// Copies an RGB image (`w × h × 3`) with its top-left corner at (x, y).
    pub fn blit_rgb(&mut self, x: i64, y: i64, rgb: &[u8], w: usize, h: usize) {
        for yy in 0..h {
            for xx in 0..w {
                let i = (yy * w + xx) * 3;
                self.set(
                    x + xx as i64,
                    y + yy as i64,
                    [rgb[i], rgb[i + 1], rgb[i + 2]],
                );
            }
        }
    }

    /// PNG bytes (8-bit RGB).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .map_err(|e| Error::Input(format!("PNG encoding: {e}")))?;
            w.write_image_data(&self.data)
                .map_err(|e| Error::Input(format!("PNG encoding: {e}")))?;
        }
        Ok(out)
    }

    /// Writes the canvas as a PNG file.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_png()?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }
}

/// The 5×7 glyph of a character: 7 rows, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_uppercase();
    match c {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ';' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '*' => [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '|' => [0x04; 7],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '?' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
        '\'' => [0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '"' => [0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00],
        'µ' => [0x00, 0x11, 0x11, 0x11, 0x13, 0x1D, 0x10],
        '×' => [0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Key colours of miad's colormap (dark violet → blue → teal → green → yellow); the
/// luminance of each key is higher than the previous one, and linear interpolation in RGB
/// keeps luminance monotone in between.
const COLORMAP_KEYS: [[f32; 3]; 5] = [
    [48.0, 18.0, 72.0],
    [60.0, 80.0, 150.0],
    [30.0, 150.0, 145.0],
    [110.0, 200.0, 90.0],
    [250.0, 230.0, 60.0],
];

/// The colormap at `t` in [0, 1] (clamped; NaN maps to 0).
pub fn colormap(t: f32) -> Rgb {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (COLORMAP_KEYS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(COLORMAP_KEYS.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (COLORMAP_KEYS[i], COLORMAP_KEYS[i + 1]);
    std::array::from_fn(|k| (a[k] + (b[k] - a[k]) * f).round() as u8)
}

/// Rec. 709 relative luminance (on the encoded values), 0–255.
pub fn luminance(c: Rgb) -> f32 {
    0.2126 * c[0] as f32 + 0.7152 * c[1] as f32 + 0.0722 * c[2] as f32
}

/// A compact label for a number: up to 4 significant digits, no trailing zeros.
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = if a >= 1000.0 {
        0
    } else if a >= 100.0 {
        1
    } else if a >= 10.0 {
        2
    } else if a >= 1.0 {
        3
    } else {
        4
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn finite_range(values: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in values.iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

/// A heatmap panel "RGB | anomaly-map overlay | mask" (mask panel only when a mask is
/// given) with a colour bar and the title. `rgb` is `S×S×3`, `map` and `mask` `S×S`.
/// The map is scaled from its minimum to its maximum.
pub fn heatmap_panel(rgb: &[u8], map: &[f32], mask: Option<&[u8]>, title: &str) -> Result<Canvas> {
    let range = finite_range(map);
    heatmap_panel_range(rgb, map, mask, title, range)
}

/// Panels narrower than this are drawn with whole-number pixel repetition.
const MIN_PANEL: usize = 224;

/// [`heatmap_panel`] with the map scaled over a fixed `(min, max)` range, so that panels
/// of different parts compare (for example 0 to the image threshold × 2).
pub fn heatmap_panel_range(
    rgb: &[u8],
    map: &[f32],
    mask: Option<&[u8]>,
    title: &str,
    range: (f32, f32),
) -> Result<Canvas> {
    let s = (map.len() as f64).sqrt() as usize;
    if s == 0 || s * s != map.len() || rgb.len() != map.len() * 3 {
        return Err(Error::Input(format!(
            "heatmap: map of {} values and image of {} bytes are not S×S and S×S×3",
            map.len(),
            rgb.len()
        )));
    }
    if let Some(m) = mask {
        if m.len() != map.len() {
            return Err(Error::Input(format!(
                "heatmap: mask has {} pixels, map {}",
                m.len(),
                map.len()
            )));
        }
    }
    // Small maps (models below 224×224) are drawn with each pixel repeated, so that a
    // panel is at least 224 pixels wide and its defects can be seen.
    let k = (MIN_PANEL / s).max(1);
    if k > 1 {
        let up = |src_px: usize| -> usize {
            let (y, x) = (src_px / (s * k), src_px % (s * k));
            (y / k) * s + x / k
        };
        let n = s * s * k * k;
        let rgb_up: Vec<u8> = (0..n)
            .flat_map(|i| {
                let j = up(i);
                [rgb[3 * j], rgb[3 * j + 1], rgb[3 * j + 2]]
            })
            .collect();
        let map_up: Vec<f32> = (0..n).map(|i| map[up(i)]).collect();
        let mask_up: Option<Vec<u8>> = mask.map(|m| (0..n).map(|i| m[up(i)]).collect());
        return heatmap_panel_range(&rgb_up, &map_up, mask_up.as_deref(), title, range);
    }
    let (lo, hi) = range;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let margin = 12usize;
    let title_h = 2 * GLYPH_H + 8;
    let label_h = GLYPH_H + 6;
    let bar_w = 16usize;
    let bar_labels = 9 * GLYPH_W;
    let panels = if mask.is_some() { 3 } else { 2 };
    let width = margin + panels * (s + margin) + bar_w + 6 + bar_labels + margin;
    let width = width.max(margin * 2 + Canvas::text_width(title, 2));
    let height = margin + title_h + label_h + s + margin;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(margin as i64, margin as i64, title, 2, BLACK);
    let top = (margin + title_h + label_h) as i64;
    let label_y = (margin + title_h) as i64;

    // RGB
    let x0 = margin as i64;
    c.text(x0, label_y, "RGB", 1, BLACK);
    c.blit_rgb(x0, top, rgb, s, s);
    // Overlay: 50% colormap over a darkened grey version of the image, mask contour white.
    let x1 = x0 + (s + margin) as i64;
    c.text(x1, label_y, "ANOMALY MAP", 1, BLACK);
    for y in 0..s {
        for x in 0..s {
            let i = y * s + x;
            let g = luminance([rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2]]) * 0.6;
            let cm = colormap((map[i] - lo) / span);
            let px: Rgb = std::array::from_fn(|k| (0.45 * g + 0.55 * cm[k] as f32).round() as u8);
            c.set(x1 + x as i64, top + y as i64, px);
        }
    }
    if let Some(m) = mask {
        for y in 0..s {
            for x in 0..s {
                let i = y * s + x;
                if m[i] == 0 {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == s
                    || y + 1 == s
                    || m[i - 1] == 0
                    || m[i + 1] == 0
                    || m[i - s] == 0
                    || m[i + s] == 0;
                if edge {
                    c.set(x1 + x as i64, top + y as i64, WHITE);
                }
            }
        }
        let x2 = x1 + (s + margin) as i64;
        c.text(x2, label_y, "GT MASK", 1, BLACK);
        for y in 0..s {
            for x in 0..s {
                let v = if m[y * s + x] > 0 { WHITE } else { BLACK };
                c.set(x2 + x as i64, top + y as i64, v);
            }
        }
    }
    // Colour bar with min / max labels.
    let xb = margin as i64 + (panels * (s + margin)) as i64;
    for y in 0..s {
        let t = 1.0 - y as f32 / (s - 1).max(1) as f32;
        c.fill_rect(xb, top + y as i64, bar_w as i64, 1, colormap(t));
    }
    c.rect(xb - 1, top - 1, bar_w as i64 + 2, s as i64 + 2, BLACK);
    let lx = xb + bar_w as i64 + 6;
    c.text(lx, top, &format_number(hi as f64), 1, BLACK);
    c.text(
        lx,
        top + s as i64 - GLYPH_H as i64,
        &format_number(lo as f64),
        1,
        BLACK,
    );
    Ok(c)
}

struct Frame {
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    xr: (f64, f64),
    yr: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> i64 {
        let t = (x - self.xr.0) / (self.xr.1 - self.xr.0);
        self.x0 + (t * (self.w - 1) as f64).round() as i64
    }
    fn py(&self, y: f64) -> i64 {
        let t = (y - self.yr.0) / (self.yr.1 - self.yr.0);
        self.y0 + self.h - 1 - (t * (self.h - 1) as f64).round() as i64
    }
}

fn nice_range(lo: f64, hi: f64) -> (f64, f64) {
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    (lo, hi)
}

/// Draws axes, 5 ticks with labels on each, the title and the axis labels; returns the
/// plotting frame.
fn axes(
    c: &mut Canvas,
    title: &str,
    x_label: &str,
    y_label: &str,
    xr: (f64, f64),
    yr: (f64, f64),
) -> Frame {
    let left = 12 + 10 * GLYPH_W as i64;
    let top = 16 + 2 * GLYPH_H as i64;
    let f = Frame {
        x0: left,
        y0: top,
        w: c.width as i64 - left - 24,
        h: c.height as i64 - top - 16 - 3 * GLYPH_H as i64,
        xr,
        yr,
    };
    c.text(left, 8, title, 2, BLACK);
    for k in 0..=4 {
        let fx = xr.0 + (xr.1 - xr.0) * k as f64 / 4.0;
        let fy = yr.0 + (yr.1 - yr.0) * k as f64 / 4.0;
        let (px, py) = (f.px(fx), f.py(fy));
        c.line(px, f.y0, px, f.y0 + f.h - 1, LIGHT_GREY);
        c.line(f.x0, py, f.x0 + f.w - 1, py, LIGHT_GREY);
        let lx = format_number(fx);
        let tw = Canvas::text_width(&lx, 1) as i64;
        c.text(px - tw / 2, f.y0 + f.h + 4, &lx, 1, BLACK);
        let ly = format_number(fy);
        let tw = Canvas::text_width(&ly, 1) as i64;
        c.text(f.x0 - tw - 4, py - 3, &ly, 1, BLACK);
    }
    c.rect(f.x0 - 1, f.y0 - 1, f.w + 2, f.h + 2, BLACK);
    let tw = Canvas::text_width(x_label, 1) as i64;
    c.text(
        f.x0 + (f.w - tw) / 2,
        f.y0 + f.h + 6 + GLYPH_H as i64,
        x_label,
        1,
        BLACK,
    );
    c.text(4, f.y0 - GLYPH_H as i64 - 4, y_label, 1, BLACK);
    f
}

/// A histogram of `values` (non-finite values skipped) in `bins` equal bins between the
/// smallest and the largest value, 720×420 pixels.
pub fn histogram_plot(values: &[f64], bins: usize, title: &str, x_label: &str) -> Canvas {
    let bins = bins.max(1);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else {
        nice_range(lo, hi)
    };
    let mut counts = vec![0usize; bins];
    for &v in &finite {
        let k = (((v - lo) / (hi - lo)) * bins as f64).floor() as usize;
        counts[k.min(bins - 1)] += 1;
    }
    let max_count = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut c = Canvas::new(720, 420, WHITE);
    let f = axes(
        &mut c,
        title,
        x_label,
        "COUNT",
        (lo, hi),
        (0.0, max_count as f64),
    );
    for (k, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let xa = f.px(lo + (hi - lo) * k as f64 / bins as f64);
        let xb = f.px(lo + (hi - lo) * (k + 1) as f64 / bins as f64);
        let yt = f.py(n as f64);
        let bottom = f.y0 + f.h;
        c.fill_rect(xa, yt, (xb - xa).max(1), bottom - yt, colormap(0.3));
        c.rect(xa, yt, (xb - xa + 1).max(1), bottom - yt, BLACK);
    }
    c
}

/// One named series of a line plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Line plot of several series (each drawn in its own colour, with markers and a legend),
/// 720×420 pixels; for latency percentiles pass (percentile, milliseconds) points.
pub fn line_plot(series: &[Series], title: &str, x_label: &str, y_label: &str) -> Canvas {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let y0 = y0.min(0.0);
    let mut c = Canvas::new(720, 420, WHITE);
    let f = axes(
        &mut c,
        title,
        x_label,
        y_label,
        nice_range(x0, x1),
        nice_range(y0, y1 * 1.05),
    );
    let n = series.len().max(1);
    for (k, s) in series.iter().enumerate() {
        let col = colormap(if n == 1 {
            0.2
        } else {
            0.85 * k as f32 / (n - 1) as f32
        });
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let p = (f.px(x), f.py(y));
            if let Some(q) = prev {
                c.line(q.0, q.1, p.0, p.1, col);
                c.line(q.0, q.1 + 1, p.0, p.1 + 1, col);
            }
            c.fill_rect(p.0 - 2, p.1 - 2, 5, 5, col);
            prev = Some(p);
        }
        let ly = f.y0 + 6 + k as i64 * (GLYPH_H as i64 + 4);
        let lx = f.x0 + 8;
        c.fill_rect(lx, ly, 12, GLYPH_H as i64 - 1, col);
        c.text(lx + 16, ly, &s.name, 1, BLACK);
    }
    c
}
