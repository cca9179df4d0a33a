//! cuBLASLt dense layers on the device (buffers, plans, the M3DM shapes), for the parity
//! tests (tests/cuda/gemm.rs) and the bench (bench/cuda/gemm.rs).

use miad::cuda::device::gemm::{
    CublasLt, Epilogue, GemmPlan, GemmShape, Workspace, GEMM_WORKSPACE_BYTES,
};
use miad::cuda::ops::gelu::Elementwise;
use miad::cuda::{Arena, ArenaPlan, DevPtr, Device, Slot};
use miad::util::rng::Rng;

/// Device, library handle and the exact-GELU kernels. Fields drop in order: the device
/// last.
pub struct Gpu {
    pub ew: Elementwise,
    pub lt: CublasLt,
    pub dev: Device,
}

pub fn setup() -> Option<Gpu> {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_gemm: SKIP, no usable GPU: {e}");
            return None;
        }
    };
    let lt = match CublasLt::new(&dev) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cuda_gemm: SKIP, {} has a driver but no cuBLASLt: {e}",
                dev.name
            );
            return None;
        }
    };
    eprintln!(
        "cuda_gemm: {} (sm_{}), cuBLASLt {}",
        dev.name,
        dev.sm(),
        lt.version()
    );
    let ew = Elementwise::new(&dev).expect("gelu kernel loads");
    Some(Gpu { ew, lt, dev })
}

/// (name, m, n, k, epilogue) of the dense layers of ViT-B/8 (785 tokens) and Point-MAE
/// (1024 groups).
pub const SHAPES: [(&str, usize, usize, usize, Epilogue); 8] = [
    ("vit qkv", 785, 2304, 768, Epilogue::Bias),
    ("vit proj", 785, 768, 768, Epilogue::Bias),
    ("vit fc1", 785, 3072, 768, Epilogue::BiasGelu),
    ("vit fc2", 785, 768, 3072, Epilogue::Bias),
    ("pmae qkv", 1024, 1152, 384, Epilogue::None),
    ("pmae proj", 1024, 384, 384, Epilogue::Bias),
    ("pmae fc1", 1024, 1536, 384, Epilogue::BiasGelu),
    ("pmae fc2", 1024, 384, 1536, Epilogue::Bias),
];

pub fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

/// Random inputs of a shape: x ~ N(0, 1), w ~ N(0, 1/k) (outputs ~ N(0, 1), so GELU sees
/// both signs), bias ~ N(0, 0.5).
pub fn inputs(s: &GemmShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut x = vec![0.0f32; s.x_len()];
    let mut w = vec![0.0f32; s.w_len()];
    let mut b = vec![0.0f32; s.n];
    rng.fill_normal(&mut x, 1.0);
    rng.fill_normal(&mut w, 1.0 / (s.k as f32).sqrt());
    rng.fill_normal(&mut b, 0.5);
    (x, w, b)
}

/// Device buffers of one layer in one arena, with the workspace.
pub struct Bufs<T> {
    arena: Arena,
    x: Slot<T>,
    w: Slot<T>,
    b: Slot<T>,
    y: Slot<T>,
    ws: Slot<u8>,
}

impl<T: bytemuck::Pod> Bufs<T> {
    pub fn new(dev: &Device, s: &GemmShape, x: &[T], w: &[T], b: &[T], poison: T) -> Self {
        let mut p = ArenaPlan::new();
        let (xs, ws_, bs, ys) = (
            p.add::<T>(x.len()),
            p.add::<T>(w.len()),
            p.add::<T>(b.len().max(1)),
            p.add::<T>(s.y_len()),
        );
        let wk = p.add::<u8>(GEMM_WORKSPACE_BYTES);
        let arena = Arena::new(dev, &p).unwrap();
        arena.upload(dev, xs, x).unwrap();
        arena.upload(dev, ws_, w).unwrap();
        arena.upload(dev, bs, b).unwrap();
        arena.upload(dev, ys, &vec![poison; s.y_len()]).unwrap();
        Bufs {
            arena,
            x: xs,
            w: ws_,
            b: bs,
            y: ys,
            ws: wk,
        }
    }
    pub fn workspace(&self) -> Workspace {
        Workspace {
            ptr: self.arena.ptr(self.ws),
            bytes: GEMM_WORKSPACE_BYTES,
        }
    }
    pub fn ptrs(&self) -> [DevPtr<T>; 4] {
        let a = &self.arena;
        [a.ptr(self.x), a.ptr(self.w), a.ptr(self.b), a.ptr(self.y)]
    }
    // Read by the parity tests; the bench only times.
    #[allow(dead_code)]
    pub fn y(&self, dev: &Device) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.y.len];
        dev.synchronize().unwrap();
        self.arena.download(dev, self.y, &mut v).unwrap();
        v
    }
}

/// Runs `plan` on `bufs` once.
pub fn run<T: miad::cuda::device::gemm::GemmElement + bytemuck::Pod>(
    g: &Gpu,
    plan: &GemmPlan,
    bufs: &Bufs<T>,
) {
    let [x, w, b, y] = bufs.ptrs();
    unsafe { plan.run(&g.dev, x, w, b, y) }.unwrap();
}
