//! The shared vocabulary of inspection: modality cases, verdicts, regions, bank ids,
//! feature shapes, per-call options and the limits every layer plans for. The engine,
//! the pipeline, both backends, the C ABI and the offline tools all use these, so each
//! exists once.

/// Most worker threads an engine may ask for (`MIAD_MAX_THREADS` in `miad.h`).
pub const MAX_THREADS: usize = 256;

/// Most defect regions one result reports, the largest peak first (`MIAD_MAX_REGIONS`).
pub const MAX_REGIONS: usize = 64;

/// Largest input width or height an engine plans for (`MIAD_MAX_SIDE`).
pub const MAX_INPUT_SIDE: usize = 8192;

/// Bank ids, in score-vector order.
pub const XYZ: usize = 0;
pub const RGB: usize = 1;
pub const FUSED: usize = 2;
/// Names of the banks' tensors, in score-vector order.
pub const BANK_NAMES: [&str; 3] = ["xyz", "rgb", "fused"];

/// The decision on a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Pass = 0,
    Fail = 1,
    /// Inside the grey band.
    Uncertain = 2,
}

/// Which modalities a part was decided with (RADAR's cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Case {
    Complete = 0,
    RgbOnly = 1,
    CloudOnly = 2,
}

impl Case {
    pub const ALL: [Case; 3] = [Case::Complete, Case::RgbOnly, Case::CloudOnly];

    /// The case of a part whose RGB image and point cloud are (un)usable as given; a
    /// part with neither is not inspected, so that pair maps to cloud-only.
    pub fn of(rgb_usable: bool, cloud_usable: bool) -> Case {
        match (rgb_usable, cloud_usable) {
            (true, true) => Case::Complete,
            (true, false) => Case::RgbOnly,
            _ => Case::CloudOnly,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Case::Complete => "complete",
            Case::RgbOnly => "rgb_only",
            Case::CloudOnly => "cloud_only",
        }
    }

    /// The bank that holds no information about a part of this case (its modality was
    /// replaced by the pseudo input); the complete case drops none and reports RGB's,
    /// which no decision of a complete part reads.
    pub fn dropped_bank(self) -> usize {
        match self {
            Case::RgbOnly => XYZ,
            _ => RGB,
        }
    }
}

/// One defect region: an 8-connected component of map pixels above the pixel threshold,
/// in map coordinates (`map_size × map_size`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Region {
    /// Inclusive bounding box.
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    pub area: u32,
    pub max: f32,
    pub mean: f32,
}

/// Shapes of one part's patch features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureLayout {
    pub rgb_grid: usize,
    pub rgb_dim: usize,
    pub xyz_grid: usize,
    pub xyz_dim: usize,
    pub fused_dim: usize,
}

impl FeatureLayout {
    /// (rows, dim) per bank in score-vector order (xyz, rgb, fused).
    pub fn bank_shapes(&self) -> [(usize, usize); 3] {
        let x = self.xyz_grid * self.xyz_grid;
        [
            (x, self.xyz_dim),
            (self.rgb_grid * self.rgb_grid, self.rgb_dim),
            (x, self.fused_dim),
        ]
    }

    /// Floats of one part's three feature blocks together.
    pub fn part_len(&self) -> usize {
        self.bank_shapes().iter().map(|(r, d)| r * d).sum()
    }

    /// Offset of each bank's block in a part's concatenated features.
    pub fn offsets(&self) -> [usize; 3] {
        let s = self.bank_shapes();
        [0, s[0].0 * s[0].1, s[0].0 * s[0].1 + s[1].0 * s[1].1]
    }

    /// A part's concatenated features (`part_len` floats) split into its xyz, rgb and
    /// fused blocks.
    pub fn split_part_mut<'a>(&self, part: &'a mut [f32]) -> [&'a mut [f32]; 3] {
        let o = self.offsets();
        let (xyz, rest) = part.split_at_mut(o[1]);
        let (rgb, fused) = rest.split_at_mut(o[2] - o[1]);
        [xyz, rgb, fused]
    }
}

/// Per-call options of an inspection.
#[derive(Clone, Copy, Debug)]
pub struct InspectOptions {
    /// Overrides the bank file's part threshold.
    pub part_threshold: Option<f32>,
    /// Overrides the bank file's pixel threshold (regions).
    pub pixel_threshold: Option<f32>,
    /// Scores in `[lo, hi)` are "uncertain"; otherwise a score strictly above the part
    /// threshold fails (overrides the bank file's grey band).
    pub grey_band: Option<[f32; 2]>,
    /// Produce the anomaly map (otherwise only the per-bank maps' maxima are used).
    pub map: bool,
    /// Extract defect regions (needs the map).
    pub regions: bool,
    /// Decide incomplete parts with their case's statistics (RADAR) when the bank file
    /// has them; false decides them with the complete-data layers (for comparisons).
    pub case_statistics: bool,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            part_threshold: None,
            pixel_threshold: None,
            grey_band: None,
            map: true,
            regions: true,
            case_statistics: true,
        }
    }
}
