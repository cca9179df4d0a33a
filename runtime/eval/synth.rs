//! A synthetic dataset in the MVTec 3D-AD layout, for tests, the demo and RADAR runs.
//!
//! Each part is one object lying on a tilted background plane, seen from above by an
//! organized 3-D sensor and a colour camera sharing its pixel grid:
//! - `disc`: a domed cylinder with a rounded rim and a printed ring;
//! - `torus`: a ring with a round tube;
//! - `block`: a bevelled box with a wood-like stripe texture.
//!
//! Units are metres as in MVTec 3D-AD: the field of view is 0.12 m across the image, the
//! plane lies ~0.40 m from the sensor (z grows away from it), objects are 0.05–0.07 m wide
//! and 0.012–0.022 m high. Good parts vary: position (±4 mm), yaw, plane tilt (±3°) and
//! depth, colour, light direction. Sensor noise: Gaussian depth noise (σ = 0.2 mm), 0.3%
//! of pixels missing (xyz = 0,0,0), RGB noise σ = 2 levels.
//!
//! Defects (test parts only), each covering 1–4% of the part's pixels and never more than
//! [`MAX_DEFECT_FRACTION`] (checked), always inside the object's top surface:
//! - `dent` / `bump`: a smooth depression / bulge 2.5–4 mm deep, profile d·(1−(ρ/r)²)²;
//! - `hole`: a flat-bottomed 4 mm deep cylindrical hole, dark inside (occlusion);
//! - `crack`: a 3-segment polyline groove ~3 px wide, 2.5 mm deep, dark inside;
//! - `stain`: an irregular colour blob (RGB only; geometry unchanged).
//!
//! The RGB image is shaded from the same height field (Lambert + a little specular), so
//! geometric defects also show in RGB as they would on a real part. The GT mask is exact:
//! 255 on every pixel whose height (or, for a stain, colour) the defect changed, 0
//! elsewhere; only the shading of the one-pixel ring around a geometric defect also
//! changes, because normals are central differences of the height field.
//!
//! Everything is a deterministic function of the seed ([`Rng`]); the same options give
//! byte-identical files.

use std::path::{Path, PathBuf};

use crate::util::rng::Rng;
use crate::{Error, Result};

/// Upper bound on a defect's share of its part's object pixels.
pub const MAX_DEFECT_FRACTION: f64 = 0.05;
/// Field of view across the image, metres.
const FOV: f32 = 0.12;

/// The product categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Disc,
    Torus,
    Block,
}

impl Category {
    pub const ALL: [Category; 3] = [Category::Disc, Category::Torus, Category::Block];

    pub fn name(self) -> &'static str {
        match self {
            Category::Disc => "disc",
            Category::Torus => "torus",
            Category::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown synthetic category {s:?} (known: disc, torus, block)"
                ))
            })
    }

    fn id(self) -> u64 {
        self as u64 + 1
    }
}

/// The defect kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    Dent,
    Bump,
    Hole,
    Crack,
    Stain,
}

impl Defect {
    pub const ALL: [Defect; 5] = [
        Defect::Dent,
        Defect::Bump,
        Defect::Hole,
        Defect::Crack,
        Defect::Stain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Defect::Dent => "dent",
            Defect::Bump => "bump",
            Defect::Hole => "hole",
            Defect::Crack => "crack",
            Defect::Stain => "stain",
        }
    }

    /// Whether the defect changes the geometry (all but `stain`).
    pub fn is_geometric(self) -> bool {
        self != Defect::Stain
    }

    fn id(self) -> u64 {
        self as u64 + 1
    }
}

/// One synthetic part in memory: `size × size` pixels, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthPart {
    pub size: usize,
    /// RGB, 3 bytes a pixel.
    pub rgb: Vec<u8>,
    /// Organized cloud, 3 f32 a pixel (metres); missing pixels are (0, 0, 0).
    pub xyz: Vec<f32>,
    /// GT mask, 255 = defect.
    pub mask: Vec<u8>,
    pub defect: Option<Defect>,
    /// Pixels covered by the object.
    pub object_pixels: usize,
    /// Pixels covered by the defect (mask > 0).
    pub defect_pixels: usize,
}

fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(h << 6)
        .wrapping_add(h >> 2);
    let mut r = Rng::new(h);
    r.next_u64()
}

/// The seed of one part of a dataset: a function of the dataset seed and the part's place.
pub fn part_seed(
    seed: u64,
    category: Category,
    split: u64,
    defect: Option<Defect>,
    idx: u64,
) -> u64 {
    let mut h = mix(seed, category.id());
    h = mix(h, split);
    h = mix(h, defect.map_or(0, Defect::id));
    mix(h, idx)
}

struct Pose {
    tx: f32,
    ty: f32,
    cos: f32,
    sin: f32,
}

impl Pose {
    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.tx, y - self.ty);
        (
            self.cos * dx + self.sin * dy,
            -self.sin * dx + self.cos * dy,
        )
    }
}

struct Shape {
    category: Category,
    /// Main size (disc radius, torus major radius, block half length), metres.
    a: f32,
    /// Second size (torus tube radius, block half width).
    b: f32,
    /// Height (disc, block).
    h: f32,
    phase: f32,
}

impl Shape {
    /// Height above the plane and albedo factor at object-frame (x, y); None off object.
    fn eval(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        match self.category {
            Category::Disc => {
                let rho = (x * x + y * y).sqrt();
                if rho >= self.a {
                    return None;
                }
                let bev = 0.002f32;
                let dome = self.h + 0.002 * (1.0 - (rho / self.a).powi(2));
                let h = if rho > self.a - bev {
                    let e = rho - (self.a - bev);
                    dome - bev + (bev * bev - e * e).max(0.0).sqrt()
                } else {
                    dome
                };
                let ring = ((rho - 0.6 * self.a).abs() < 0.0015) as u8 as f32;
                Some((h, 1.0 - 0.35 * ring))
            }
            Category::Torus => {
                let rho = (x * x + y * y).sqrt();
                let d = rho - self.a;
                if d.abs() >= self.b {
                    return None;
                }
                Some((self.b + (self.b * self.b - d * d).sqrt(), 1.0))
            }
            Category::Block => {
                let e = (self.a - x.abs()).min(self.b - y.abs());
                if e <= 0.0 {
                    return None;
                }
                let bev = 0.0015f32;
                let h = if e < bev {
                    self.h - bev + (bev * bev - (bev - e) * (bev - e)).max(0.0).sqrt()
                } else {
                    self.h
                };
                let grain = (std::f32::consts::TAU * x / 0.005
                    + 2.0 * (y / 0.011 + self.phase).sin())
                .sin();
                Some((h, 0.82 + 0.14 * grain))
            }
        }
    }
}

/// Makes one part. `seed` fixes everything (use [`part_seed`] for dataset parts).
pub fn synth_part(
    category: Category,
    defect: Option<Defect>,
    size: usize,
    seed: u64,
) -> Result<SynthPart> {
    if !(32..=4096).contains(&size) {
        return Err(Error::Config(format!(
            "synthetic image size must be in 32..=4096 pixels, got {size}"
        )));
    }
    let mut rng = Rng::new(seed);
    let s = size;
    let px = FOV / s as f32;
    let n = s * s;
    let jit = |rng: &mut Rng, amp: f32| (rng.uniform() * 2.0 - 1.0) * amp;

    // Scene parameters.
    let z0 = 0.40 + jit(&mut rng, 0.005);
    let gx = jit(&mut rng, 0.05);
    let gy = jit(&mut rng, 0.05);
    let yaw = match category {
        Category::Block => jit(&mut rng, 0.15),
        _ => rng.uniform() * std::f32::consts::TAU,
    };
    let pose = Pose {
        tx: jit(&mut rng, 0.004),
        ty: jit(&mut rng, 0.004),
        cos: yaw.cos(),
        sin: yaw.sin(),
    };
    let scale = 1.0 + jit(&mut rng, 0.02);
    let shape = match category {
        Category::Disc => Shape {
            category,
            a: 0.034 * scale,
            b: 0.0,
            h: 0.012,
            phase: 0.0,
        },
        Category::Torus => Shape {
            category,
            a: 0.029 * scale,
            b: 0.011 * scale,
            h: 0.0,
            phase: 0.0,
        },
        Category::Block => Shape {
            category,
            a: 0.032 * scale,
            b: 0.022 * scale,
            h: 0.014,
            phase: rng.uniform() * 6.0,
        },
    };
    let base: [f32; 3] = match category {
        Category::Disc => [70.0, 120.0, 190.0],
        Category::Torus => [205.0, 130.0, 60.0],
        Category::Block => [200.0, 160.0, 110.0],
    };
    let bright = 1.0 + jit(&mut rng, 0.05);
    let albedo: [f32; 3] = std::array::from_fn(|c| base[c] * bright * (1.0 + jit(&mut rng, 0.04)));
    let bg: [f32; 3] = [
        120.0 + jit(&mut rng, 6.0),
        118.0 + jit(&mut rng, 6.0),
        112.0 + jit(&mut rng, 6.0),
    ];
    let light = {
        let (lx, ly) = (-0.35 + jit(&mut rng, 0.1), -0.45 + jit(&mut rng, 0.1));
        let norm = (lx * lx + ly * ly + 1.0).sqrt();
        [lx / norm, ly / norm, 1.0 / norm]
    };

    // Object height field and albedo factor.
    let mut height = vec![0.0f32; n];
    let mut tex = vec![1.0f32; n];
    let mut on = vec![false; n];
    for v in 0..s {
        for u in 0..s {
            let x = (u as f32 + 0.5 - s as f32 / 2.0) * px;
            let y = (v as f32 + 0.5 - s as f32 / 2.0) * px;
            let (lx, ly) = pose.local(x, y);
            if let Some((h, t)) = shape.eval(lx, ly) {
                let i = v * s + u;
                height[i] = h;
                tex[i] = t;
                on[i] = true;
            }
        }
    }
    let object_pixels = on.iter().filter(|&&o| o).count();
    let mut mask = vec![0u8; n];
    let mut dark = vec![1.0f32; n];
    let mut stain: Option<([f32; 3], Vec<f32>)> = None;
    if let Some(kind) = defect {
        apply_defect(
            kind,
            &mut rng,
            s,
            &on,
            &mut height,
            &mut mask,
            &mut dark,
            &mut stain,
        )?;
    }
    let defect_pixels = mask.iter().filter(|&&m| m > 0).count();
    if defect_pixels as f64 > MAX_DEFECT_FRACTION * object_pixels as f64 {
        return Err(Error::Config(format!(
            "synthetic defect covers {defect_pixels} of {object_pixels} pixels (> 5%)"
        )));
    }

    // Render. Sensor noise has its own stream, so a part with and without a defect (same
    // seed) differ only where the defect is.
    let mut noise = Rng::new(seed ^ 0x05E1_507E_D0D0_0001);
    let mut rgb = vec![0u8; n * 3];
    let mut xyz = vec![0.0f32; n * 3];
    for v in 0..s {
        for u in 0..s {
            let i = v * s + u;
            let x = (u as f32 + 0.5 - s as f32 / 2.0) * px;
            let y = (v as f32 + 0.5 - s as f32 / 2.0) * px;
            // Height gradient by central differences (one-sided at the border).
            let hl = height[v * s + u.saturating_sub(1)];
            let hr = height[v * s + (u + 1).min(s - 1)];
            let hu = height[v.saturating_sub(1) * s + u];
            let hd = height[(v + 1).min(s - 1) * s + u];
            let dx = (hr - hl) / (2.0 * px);
            let dy = (hd - hu) / (2.0 * px);
            let nn = (dx * dx + dy * dy + 1.0).sqrt();
            let normal = [-dx / nn, -dy / nn, 1.0 / nn];
            let lambert =
                (normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]).max(0.0);
            let (col, spec) = if on[i] {
                let mut c: [f32; 3] = std::array::from_fn(|k| albedo[k] * tex[i]);
                if let Some((sc, alpha)) = &stain {
                    let a = alpha[i];
                    if a > 0.0 {
                        c = std::array::from_fn(|k| c[k] * (1.0 - a) + sc[k] * a);
                    }
                }
                // Half vector between light and the viewer (0, 0, 1).
                let hv = [light[0], light[1], light[2] + 1.0];
                let hn = (hv[0] * hv[0] + hv[1] * hv[1] + hv[2] * hv[2]).sqrt();
                let ndh =
                    ((normal[0] * hv[0] + normal[1] * hv[1] + normal[2] * hv[2]) / hn).max(0.0);
                (c, 45.0 * ndh.powi(30))
            } else {
                (bg, 0.0)
            };
            let shade = (0.3 + 0.75 * lambert) * dark[i];
            for k in 0..3 {
                let val = col[k] * shade + spec + noise.normal() * 2.0;
                rgb[i * 3 + k] = val.round().clamp(0.0, 255.0) as u8;
            }
            let z = z0 + gx * x + gy * y - height[i] + noise.normal() * 0.0002;
            let missing = noise.uniform() < 0.003;
            if !missing {
                xyz[i * 3] = x;
                xyz[i * 3 + 1] = y;
                xyz[i * 3 + 2] = z;
            }
        }
    }
    Ok(SynthPart {
        size,
        rgb,
        xyz,
        mask,
        defect,
        object_pixels,
        defect_pixels,
    })
}

/// Picks a defect center whose disc of radius `r` pixels (plus a margin) lies on the
/// object. Returns pixel coordinates.
fn pick_center(rng: &mut Rng, s: usize, on: &[bool], r: f32) -> Option<(f32, f32)> {
    let reach = (r + 2.0).ceil() as isize;
    for _ in 0..400 {
        let cu = rng.below(s as u64) as isize;
        let cv = rng.below(s as u64) as isize;
        if !on[cv as usize * s + cu as usize] {
            continue;
        }
        let mut ok = true;
        'scan: for dv in -reach..=reach {
            for du in -reach..=reach {
                if ((du * du + dv * dv) as f32) > (r + 2.0) * (r + 2.0) {
                    continue;
                }
                let (u, v) = (cu + du, cv + dv);
                if u < 0
                    || v < 0
                    || u >= s as isize
                    || v >= s as isize
                    || !on[v as usize * s + u as usize]
                {
                    ok = false;
                    break 'scan;
                }
            }
        }
        if ok {
            return Some((cu as f32 + 0.5, cv as f32 + 0.5));
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn apply_defect(
    kind: Defect,
    rng: &mut Rng,
    s: usize,
    on: &[bool],
    height: &mut [f32],
    mask: &mut [u8],
    dark: &mut [f32],
    stain: &mut Option<([f32; 3], Vec<f32>)>,
) -> Result<()> {
    let area = on.iter().filter(|&&o| o).count() as f32;
    let frac = 0.012 + 0.028 * rng.uniform();
    let mut r = (frac * area / std::f32::consts::PI).sqrt();
    let center = loop {
        if let Some(c) = pick_center(rng, s, on, r) {
            break c;
        }
        r *= 0.8;
        if r < 2.0 {
            return Err(Error::Config(
                "synthetic part too small for a defect".into(),
            ));
        }
    };
    let (cu, cv) = center;
    let bbox = |reach: f32| {
        let lo_u = ((cu - reach).floor().max(0.0)) as usize;
        let hi_u = ((cu + reach).ceil() as usize).min(s - 1);
        let lo_v = ((cv - reach).floor().max(0.0)) as usize;
        let hi_v = ((cv + reach).ceil() as usize).min(s - 1);
        (lo_u, hi_u, lo_v, hi_v)
    };
    match kind {
        Defect::Dent | Defect::Bump | Defect::Hole => {
            let depth = match kind {
                Defect::Hole => 0.004,
                _ => 0.0025 + 0.0015 * rng.uniform(),
            };
            let sign = if kind == Defect::Bump { 1.0 } else { -1.0 };
            let (lu, hu, lv, hv) = bbox(r);
            for v in lv..=hv {
                for u in lu..=hu {
                    let d2 =
                        ((u as f32 + 0.5 - cu).powi(2) + (v as f32 + 0.5 - cv).powi(2)) / (r * r);
                    if d2 >= 1.0 {
                        continue;
                    }
                    let i = v * s + u;
                    let dh = if kind == Defect::Hole {
                        depth
                    } else {
                        depth * (1.0 - d2) * (1.0 - d2)
                    };
                    height[i] += sign * dh;
                    if kind == Defect::Hole {
                        dark[i] = 0.35;
                    }
                    mask[i] = 255;
                }
            }
        }
        Defect::Crack => {
            let depth = 0.0025f32;
            let half_w = 1.6f32;
            // Polyline of 3 segments inside the disc of radius r around the center.
            let mut pts = Vec::with_capacity(4);
            let mut ang = rng.uniform() * std::f32::consts::TAU;
            let seg = r * 0.62;
            let mut p = (cu - ang.cos() * seg * 1.3, cv - ang.sin() * seg * 1.3);
            pts.push(p);
            for _ in 0..3 {
                ang += (rng.uniform() - 0.5) * 1.2;
                p = (p.0 + ang.cos() * seg, p.1 + ang.sin() * seg);
                pts.push(p);
            }
            let (lu, hu, lv, hv) = bbox(r * 2.2 + half_w);
            for v in lv..=hv {
                for u in lu..=hu {
                    let i = v * s + u;
                    if !on[i] {
                        continue;
                    }
                    let q = (u as f32 + 0.5, v as f32 + 0.5);
                    let d = pts
                        .windows(2)
                        .map(|w| seg_dist(q, w[0], w[1]))
                        .fold(f32::INFINITY, f32::min);
                    if d < half_w {
                        let t = d / half_w;
                        height[i] -= depth * (1.0 - t * t);
                        dark[i] = 0.45 + 0.4 * t;
                        mask[i] = 255;
                    }
                }
            }
        }
        Defect::Stain => {
            let colours = [
                [60.0f32, 35.0, 20.0],
                [150.0, 20.0, 30.0],
                [20.0, 90.0, 40.0],
                [240.0, 235.0, 220.0],
            ];
            let colour = colours[rng.below(colours.len() as u64) as usize];
            let (p1, p2) = (rng.uniform() * 6.3, rng.uniform() * 6.3);
            let mut alpha = vec![0.0f32; s * s];
            let (lu, hu, lv, hv) = bbox(r * 1.4);
            for v in lv..=hv {
                for u in lu..=hu {
                    let i = v * s + u;
                    let (du, dv) = (u as f32 + 0.5 - cu, v as f32 + 0.5 - cv);
                    let th = dv.atan2(du);
                    let rr =
                        r * (0.85 + 0.12 * (3.0 * th + p1).sin() + 0.08 * (5.0 * th + p2).sin());
                    let d = (du * du + dv * dv).sqrt();
                    if d < rr && on[i] {
                        alpha[i] = 0.9 - 0.3 * (d / rr).powi(4);
                        mask[i] = 255;
                    }
                }
            }
            *stain = Some((colour, alpha));
        }
    }
    Ok(())
}

fn seg_dist(q: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let len2 = abx * abx + aby * aby;
    let t = if len2 > 0.0 {
        (((q.0 - a.0) * abx + (q.1 - a.1) * aby) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (q.0 - a.0 - t * abx, q.1 - a.1 - t * aby);
    (dx * dx + dy * dy).sqrt()
}

/// Options of [`write_dataset`] (`miad synth`).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub categories: Vec<Category>,
    pub train: usize,
    pub validation: usize,
    pub test_good: usize,
    /// Defective test parts per category, spread round-robin over [`Defect::ALL`].
    pub test_bad: usize,
    pub size: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            out: PathBuf::from("synth"),
            seed: 0,
            categories: Category::ALL.to_vec(),
            train: 20,
            validation: 5,
            test_good: 10,
            test_bad: 10,
            size: 224,
        }
    }
}

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    pub parts: usize,
    /// Largest defect share of its part's object pixels.
    pub max_defect_fraction: f64,
}

const SPLIT_TRAIN: u64 = 1;
const SPLIT_VAL: u64 = 2;
const SPLIT_TEST: u64 = 3;

/// Writes the dataset: `out/<category>/{train/good, validation/good, test/good,
/// test/<defect>}/{rgb/NNN.png, xyz/NNN.tiff}` and `gt/NNN.png` under `test/`.
pub fn write_dataset(opts: &SynthOptions) -> Result<SynthSummary> {
    let mut parts = 0;
    let mut max_frac = 0.0f64;
    for &cat in &opts.categories {
        let root = opts.out.join(cat.name());
        let mut jobs: Vec<(PathBuf, u64, Option<Defect>, u64, bool)> = Vec::new();
        for i in 0..opts.train {
            jobs.push((root.join("train/good"), SPLIT_TRAIN, None, i as u64, false));
        }
        for i in 0..opts.validation {
            jobs.push((
                root.join("validation/good"),
                SPLIT_VAL,
                None,
                i as u64,
                false,
            ));
        }
        for i in 0..opts.test_good {
            jobs.push((root.join("test/good"), SPLIT_TEST, None, i as u64, true));
        }
        for i in 0..opts.test_bad {
            let d = Defect::ALL[i % Defect::ALL.len()];
            let idx = (i / Defect::ALL.len()) as u64;
            jobs.push((
                root.join("test").join(d.name()),
                SPLIT_TEST,
                Some(d),
                idx,
                true,
            ));
        }
        for (dir, split, defect, idx, with_gt) in jobs {
            let part = synth_part(
                cat,
                defect,
                opts.size,
                part_seed(opts.seed, cat, split, defect, idx),
            )?;
            let name = format!("{idx:03}");
            write_rgb_png(
                &dir.join("rgb").join(format!("{name}.png")),
                &part.rgb,
                part.size,
                part.size,
            )?;
            write_xyz_tiff(
                &dir.join("xyz").join(format!("{name}.tiff")),
                &part.xyz,
                part.size,
                part.size,
            )?;
            if with_gt {
                write_mask_png(
                    &dir.join("gt").join(format!("{name}.png")),
                    &part.mask,
                    part.size,
                    part.size,
                )?;
            }
            max_frac = max_frac.max(part.defect_pixels as f64 / part.object_pixels.max(1) as f64);
            parts += 1;
        }
    }
    Ok(SynthSummary {
        parts,
        max_defect_fraction: max_frac,
    })
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    Ok(std::io::BufWriter::new(f))
}

fn png_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

fn write_png(path: &Path, data: &[u8], w: usize, h: usize, color: png::ColorType) -> Result<()> {
    let file = create(path)?;
    let mut enc = png::Encoder::new(file, w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(|e| png_err(path, e))?;
    wr.write_image_data(data).map_err(|e| png_err(path, e))?;
    wr.finish().map_err(|e| png_err(path, e))
}

fn write_rgb_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    write_png(path, rgb, w, h, png::ColorType::Rgb)
}

fn write_mask_png(path: &Path, mask: &[u8], w: usize, h: usize) -> Result<()> {
    write_png(path, mask, w, h, png::ColorType::Grayscale)
}

fn write_xyz_tiff(path: &Path, xyz: &[f32], w: usize, h: usize) -> Result<()> {
    use tiff::encoder::{colortype::RGB32Float, TiffEncoder};
    let file = create(path)?;
    let mut enc = TiffEncoder::new(file).map_err(|e| png_err(path, e))?;
    enc.write_image::<RGB32Float>(w as u32, h as u32, xyz)
        .map_err(|e| png_err(path, e))
}
