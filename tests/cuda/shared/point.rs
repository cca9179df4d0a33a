//! The point kernels' device setup at M3DM sizes (kernels, buffers, weights) and test
//! clouds, for the parity tests (tests/cuda/point.rs) and the bench
//! (bench/cuda/point_kernels.rs).

use miad::config::PointConfig;
use miad::cuda::ops::point::{PointKernels, PointOptions, PointPlan};
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::util::rng::Rng;

pub const SIDE: usize = 224;

pub const GRID: usize = 56;

pub struct Weights {
    pub dims: [usize; 4],
    /// w1 b1 w2 b2 w3 b3 w4 b4, PyTorch layout.
    pub w: Vec<Vec<f32>>,
}

pub fn random_weights(rng: &mut Rng, pc: &PointConfig) -> Weights {
    let [c1, c2, c3] = pc.encoder_widths.map(|x| x as usize);
    let d = pc.dim as usize;
    let shapes = [(c1, 3), (c2, c1), (c3, 2 * c2), (d, c3)];
    let mut w = vec![];
    for (o, i) in shapes {
        let mut m = vec![0f32; o * i];
        rng.fill_normal(&mut m, (1.0 / i as f32).sqrt());
        let mut b = vec![0f32; o];
        rng.fill_normal(&mut b, 0.1);
        w.push(m);
        w.push(b);
    }
    Weights {
        dims: [c1, c2, c3, d],
        w,
    }
}

pub fn transpose(w: &[f32], o: usize, i: usize) -> Vec<f32> {
    let mut t = vec![0f32; o * i];
    for r in 0..o {
        for k in 0..i {
            t[k * o + r] = w[r * i + k];
        }
    }
    t
}

// The bench reads part of the buffers; the parity tests read them all.
#[allow(dead_code)]
pub struct Bufs {
    pub cloud: Slot<f32>,
    pub plane: Slot<f32>,
    pub keep: Slot<u8>,
    pub pts: Slot<f32>,
    pub pix: Slot<i32>,
    pub p2p: Slot<i32>,
    pub n: Slot<i32>,
    pub work: Slot<[f32; 4]>,
    pub c_idx: Slot<u32>,
    pub c_xyz: Slot<f32>,
    pub g_idx: Slot<u32>,
    pub g_rel: Slot<f32>,
    pub w: [Slot<f32>; 8],
    pub tokens: Slot<f32>,
    pub nn_idx: Slot<i32>,
    pub nn_w: Slot<f32>,
    pub feat: Slot<f32>,
    pub out: Slot<f32>,
}

pub const CLOUD_MAX: usize = 600 * 600;

pub const FEAT: usize = 1152;

pub fn plan_bufs(pc: &PointConfig) -> (ArenaPlan, Bufs) {
    let mut p = ArenaPlan::new();
    let np = SIDE * SIDE;
    let (m, s) = (pc.num_groups as usize, pc.group_size as usize);
    let [c1, c2, c3] = pc.encoder_widths.map(|x| x as usize);
    let d = pc.dim as usize;
    let b = Bufs {
        cloud: p.add(CLOUD_MAX * 3),
        plane: p.add(4),
        keep: p.add(CLOUD_MAX),
        pts: p.add(np * 3),
        pix: p.add(np),
        p2p: p.add(np),
        n: p.add(1),
        work: p.add(np),
        c_idx: p.add(m),
        c_xyz: p.add(m * 3),
        g_idx: p.add(m * s),
        g_rel: p.add(m * s * 3),
        w: [
            p.add(3 * c1),
            p.add(c1),
            p.add(c1 * c2),
            p.add(c2),
            p.add(2 * c2 * c3),
            p.add(c3),
            p.add(c3 * d),
            p.add(d),
        ],
        tokens: p.add(m * d),
        nn_idx: p.add(np * 3),
        nn_w: p.add(np * 3),
        feat: p.add(m * FEAT),
        out: p.add(GRID * GRID * FEAT),
    };
    (p, b)
}

/// Field order matters: the modules and the arena are released before the device (fields
/// drop in declaration order).
pub struct Gpu {
    pub k: PointKernels,
    /// register FPS with a cluster of 8 when `k` got 16 (both cluster sizes get tested).
    #[allow(dead_code)] // read by the parity tests only
    pub alt: Option<PointKernels>,
    pub arena: Arena,
    pub b: Bufs,
    pub pc: PointConfig,
    pub dev: Device,
}

/// Random points on a wavy surface patch (like a scanned part), n of them.
pub fn surface_points(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * n);
    for _ in 0..n {
        let (x, y) = (rng.uniform() * 0.1, rng.uniform() * 0.1);
        let z = 0.5 + 0.01 * (40.0 * x).sin() * (30.0 * y).cos() + 0.0005 * rng.uniform();
        v.extend_from_slice(&[x, y, z]);
    }
    v
}

/// Points of an organized scan in row-major pixel order (what preprocessing produces):
/// pixel (r, c) of a 224-wide grid, a wavy surface, n of them.
pub fn scan_points(n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|q| {
            let (r, c) = ((q / SIDE) as f32, (q % SIDE) as f32);
            let (x, y) = (c * 4.5e-4, r * 4.5e-4);
            [x, y, 0.5 + 0.01 * (40.0 * x).sin() * (30.0 * y).cos()]
        })
        .collect()
}

impl Gpu {
    /// The point kernels and buffers at M3DM sizes on `dev` (9 centers on the simulated
    /// device).
    pub fn new(dev: Device) -> Gpu {
        let mut pc = PointConfig::m3dm();
        if dev.is_simulated() {
            // The emulator runs every CUDA thread as a fiber: each FPS step is a cluster of
            // up to 8192 of them, and the group encoder's work grows with the centers. 9
            // centers keep every kernel, the cluster geometry (sized by the cloud), both
            // parities of the FPS exchange buffers and mbarrier phases, k = 128 and a
            // partial last block of select kNN (8 centers per block); the kernels' own
            // tests (kernels_sim) cover more centers and cluster sizes.
            pc.num_groups = 9;
        }
        let pplan = PointPlan::new(&pc, SIDE, GRID).unwrap();
        let k = PointKernels::new(&dev, pplan.clone()).unwrap();
        let alt = match k.fps_regs_geometry() {
            Some(g) if g.cluster != 8 => {
                let opts = PointOptions {
                    fps_regs_cluster: Some(8),
                    ..PointOptions::default()
                };
                Some(PointKernels::with_options(&dev, pplan, opts).unwrap())
            }
            _ => None,
        };
        let (plan, b) = plan_bufs(&pc);
        let arena = Arena::new(&dev, &plan).unwrap();
        eprintln!(
            "modules loaded; arena {} MiB; shared-memory fps cluster {}; register fps {:?}; defaults {:?} / {:?}",
            arena.bytes() >> 20,
            k.fps_cluster,
            k.fps_regs_geometry(),
            k.fps_kernel,
            k.knn_kernel
        );
        Gpu {
            k,
            alt,
            arena,
            b,
            pc,
            dev,
        }
    }
    pub fn p<T>(&self, s: Slot<T>) -> DevPtr<T> {
        self.arena.ptr(s)
    }
    pub fn get<T: bytemuck::Pod + Default + Clone>(&self, s: Slot<T>, n: usize) -> Vec<T> {
        let mut v = vec![T::default(); n];
        self.arena.download(&self.dev, s, &mut v).unwrap();
        v
    }
    pub fn put_points(&self, pts: &[f32]) {
        self.arena.upload(&self.dev, self.b.pts, pts).unwrap();
        self.arena
            .upload(&self.dev, self.b.n, &[(pts.len() / 3) as i32])
            .unwrap();
    }
    pub fn upload_weights(&self, w: &Weights) {
        let [c1, c2, c3, d] = w.dims;
        let t = [
            transpose(&w.w[0], c1, 3),
            w.w[1].clone(),
            transpose(&w.w[2], c2, c1),
            w.w[3].clone(),
            transpose(&w.w[4], c3, 2 * c2),
            w.w[5].clone(),
            transpose(&w.w[6], d, c3),
            w.w[7].clone(),
        ];
        for (s, v) in self.b.w.iter().zip(t.iter()) {
            self.arena.upload(&self.dev, *s, v).unwrap();
        }
    }
}
