//! Test inputs and comparisons.

/// Scheduling seeds every kernel test runs with. They differ in fiber order, block order
/// and shared-memory poison (seed % 3 == 0: all-ones bytes; otherwise random bytes).
pub const SEEDS: [u64; 3] = [1, 2, 3];

/// A small deterministic generator for inputs.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed
            .wrapping_mul(0x9e3779b97f4a7c15)
            .wrapping_add(0x632be59bd9b4e019))
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    /// Standard-normal-ish (sum of uniforms), for activations and weights.
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.f32()).sum::<f32>() - 2.0
    }
}

/// Point clouds that stress FPS and kNN: random, lattice (massive distance ties),
/// duplicates, all points identical.
pub fn clouds(n: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut g = Gen::new(seed);
    let random = g.vec(3 * n, -1.0, 1.0);
    let side = (n as f64).cbrt().ceil() as usize;
    let lattice: Vec<f32> = (0..n)
        .flat_map(|i| {
            let (x, y, z) = (i % side, (i / side) % side, i / (side * side));
            [x as f32 * 0.25, y as f32 * 0.25, z as f32 * 0.25]
        })
        .collect();
    let mut dup = random.clone();
    for i in 0..n {
        if i % 3 == 1 {
            let j = g.below(i.max(1));
            let (a, b) = (3 * j, 3 * i);
            dup.copy_within(a..a + 3, b);
        }
    }
    let same = [0.5f32, -0.25, 0.125].repeat(n);
    vec![
        ("random", random),
        ("lattice", lattice),
        ("duplicates", dup),
        ("identical", same),
    ]
}

/// Exact equality of two slices, with the first differences in the message.
pub fn same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &[T],
    want: &[T],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let show: Vec<String> = bad
        .iter()
        .take(6)
        .map(|&i| format!("[{i}] {:?} vs {:?}", got[i], want[i]))
        .collect();
    Err(format!(
        "{what}: {} of {} differ: {}",
        bad.len(),
        got.len(),
        show.join(", ")
    ))
}

/// Bitwise equality of f32 slices (NaN == NaN when the bits agree).
pub fn same_bits(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    let g: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    let w: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
    same(what, &g, &w).map_err(|e| {
        let i = (0..g.len()).find(|&i| g[i] != w[i]).unwrap_or(0);
        format!("{e} (first as floats: {} vs {})", got[i], want[i])
    })
}

/// |got - want| <= abs + rel * |want| everywhere; NaN must match NaN.
pub fn close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    let mut worst = (0usize, 0f32);
    let mut bad = 0usize;
    for i in 0..got.len() {
        let (a, b) = (got[i], want[i]);
        if a.is_nan() || b.is_nan() {
            if a.is_nan() != b.is_nan() {
                bad += 1;
                worst = (i, f32::INFINITY);
            }
            continue;
        }
        if a == b {
            continue; // also equal infinities
        }
        let e = (a - b).abs();
        if e > abs + rel * b.abs() {
            bad += 1;
            if e > worst.1 {
                worst = (i, e);
            }
        }
    }
    if bad == 0 {
        return Ok(());
    }
    let i = worst.0;
    Err(format!(
        "{what}: {bad} of {} outside {abs} + {rel}·|want|; worst [{i}] {} vs {}",
        got.len(),
        got[i],
        want[i]
    ))
}

/// Runs `f` for every seed, naming the seed in a failure.
pub fn for_seeds(mut f: impl FnMut(u64) -> Result<(), String>) -> Result<(), String> {
    for s in SEEDS {
        f(s).map_err(|e| format!("seed {s}: {e}"))?;
    }
    Ok(())
}
