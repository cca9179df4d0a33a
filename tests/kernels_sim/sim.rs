//! Builds kernels/*.cu with g++ against the SIMT emulator (kernels/sim) into shared objects,
//! cached under target/kernels-sim/<hash of the sources>, and launches their kernels with
//! `cuLaunchKernel`-style argument arrays.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `kernels/*.cu` file, sorted.
pub fn kernel_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    v.sort();
    v
}

#[path = "../../kernels/sim/build_sim.rs"]
mod build_sim;
use build_sim::{build_all, BuildConfig, BASE_FLAGS, SANITIZE_FLAGS};
pub use build_sim::{prototypes, Proto};

pub struct Sim {
    libs: HashMap<String, libloading::Library>,
    /// kernel name -> module (file stem)
    pub kernels: HashMap<String, String>,
    pub protos: Vec<(String, Proto)>,
    launch: unsafe extern "C" fn(
        f: unsafe extern "C" fn(*mut *mut c_void),
        tls: unsafe extern "C" fn(*mut *mut c_void, *mut usize, *mut *mut c_void),
        grid: *const u32,
        block: *const u32,
        cluster: *const u32,
        dyn_smem: u32,
        args: *mut *mut c_void,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32,
    _rt: libloading::Library,
}

/// The .cu files the emulator builds: kernels/*.cu and its own self-test kernels.
fn module_sources() -> Vec<PathBuf> {
    let mut v = kernel_files();
    v.push(root().join("kernels/sim/selftest.cu"));
    v
}

impl Sim {
    fn new() -> Result<Sim, String> {
        let root = root();
        // Kernels instrumented (ASan, UBSan); the runtime optimised, not instrumented,
        // using the preloaded ASan runtime's interfaces.
        let mut flags = BASE_FLAGS.to_vec();
        flags.extend_from_slice(SANITIZE_FLAGS);
        let mut rt_flags = BASE_FLAGS.to_vec();
        rt_flags.push("-DMIAD_SIM_ASAN=1");
        let cfg = BuildConfig {
            root: &root,
            // CARGO_TARGET_TMPDIR lies under the target dir of this build.
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernels-sim"),
            flags,
            rt_flags,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        let t0 = std::time::Instant::now();
        let built = build_all(&cfg, &module_sources())?;
        if built.fresh {
            eprintln!(
                "kernels_sim: built the emulated kernels in {:.1} s ({})",
                t0.elapsed().as_secs_f64(),
                cfg.dir.display()
            );
        }
        let rt = built.runtime;
        let sources: Vec<(String, PathBuf, String)> = built
            .modules
            .into_iter()
            .map(|m| (m.stem, m.so, m.src))
            .collect();
        let rt = unsafe { libloading::Library::new(&rt) }.map_err(|e| e.to_string())?;
        let launch = unsafe { *rt.get(b"miad_sim_launch\0").map_err(|e| e.to_string())? };
        let mut libs = HashMap::new();
        let mut kernels = HashMap::new();
        let mut protos = Vec::new();
        for (stem, so, src) in &sources {
            let lib = unsafe { libloading::Library::new(so) }.map_err(|e| e.to_string())?;
            libs.insert(stem.clone(), lib);
            for pr in prototypes(src) {
                kernels.insert(pr.name.clone(), stem.clone());
                protos.push((stem.clone(), pr));
            }
        }
        Ok(Sim {
            libs,
            kernels,
            protos,
            launch,
            _rt: rt,
        })
    }

    /// Argument sizes of a kernel as the C++ compiler sees them.
    pub fn arg_sizes(&self, kernel: &str) -> Result<Vec<usize>, String> {
        let lib = self.lib(kernel)?;
        let f: libloading::Symbol<unsafe extern "C" fn(*mut usize, i32) -> i32> = unsafe {
            lib.get(format!("miad_sim_a_{kernel}\0").as_bytes())
                .map_err(|e| e.to_string())?
        };
        let mut v = vec![0usize; 64];
        let n = unsafe { f(v.as_mut_ptr(), 64) } as usize;
        v.truncate(n);
        Ok(v)
    }

    fn lib(&self, kernel: &str) -> Result<&libloading::Library, String> {
        let m = self
            .kernels
            .get(kernel)
            .ok_or_else(|| format!("no kernel {kernel}"))?;
        Ok(&self.libs[m])
    }

    /// Launches `kernel` like `cuLaunchKernelEx`: `args` holds one pointer per parameter,
    /// each pointing at the parameter's value (see [`Args`]).
    pub fn launch(
        &self,
        kernel: &str,
        cfg: &Cfg,
        args: &mut Args,
        seed: u64,
    ) -> Result<(), String> {
        let sizes = self.arg_sizes(kernel)?;
        let given: Vec<usize> = args.sizes.clone();
        if sizes != given {
            return Err(format!(
                "{kernel}: argument sizes {given:?} do not match the kernel's {sizes:?}"
            ));
        }
        let lib = self.lib(kernel)?;
        let bounds: libloading::Symbol<unsafe extern "C" fn() -> i32> = unsafe {
            lib.get(format!("miad_sim_b_{kernel}\0").as_bytes())
                .map_err(|e| e.to_string())?
        };
        let b = unsafe { bounds() };
        let threads = cfg.block[0] * cfg.block[1] * cfg.block[2];
        if b > 0 && threads > b as u32 {
            return Err(format!(
                "{kernel}: block of {threads} threads above __launch_bounds__({b})"
            ));
        }
        let f: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void)> = unsafe {
            lib.get(format!("miad_sim_k_{kernel}\0").as_bytes())
                .map_err(|e| e.to_string())?
        };
        let tls: libloading::Symbol<
            unsafe extern "C" fn(*mut *mut c_void, *mut usize, *mut *mut c_void),
        > = unsafe {
            lib.get(b"miad_sim_module_tls\0")
                .map_err(|e| e.to_string())?
        };
        let mut err = vec![0 as c_char; 16384];
        let mut ptrs = args.ptrs();
        let rc = unsafe {
            (self.launch)(
                *f,
                *tls,
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.cluster.as_ptr(),
                cfg.smem,
                ptrs.as_mut_ptr(),
                seed,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(format!("{kernel} (seed {seed}): {msg}"));
        }
        Ok(())
    }
}

/// The process-wide emulator (built once per test run).
pub fn sim() -> &'static Sim {
    static S: OnceLock<Result<Sim, String>> = OnceLock::new();
    match S.get_or_init(Sim::new) {
        Ok(s) => s,
        Err(e) => panic!("building the emulated kernels failed:\n{e}"),
    }
}

/// Launch geometry.
#[derive(Clone, Copy, Debug)]
pub struct Cfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub cluster: [u32; 3],
    pub smem: u32,
}

impl Cfg {
    pub fn new(grid: u32, block: u32) -> Cfg {
        Cfg {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            cluster: [1, 1, 1],
            smem: 0,
        }
    }
    pub fn smem(mut self, bytes: u32) -> Cfg {
        self.smem = bytes;
        self
    }
    pub fn cluster(mut self, x: u32) -> Cfg {
        self.cluster[0] = x;
        self
    }
}

/// A kernel argument array: each argument's bytes, kept alive until the launch.
#[derive(Default)]
pub struct Args {
    store: Vec<Vec<u64>>,
    sizes: Vec<usize>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }
    /// A by-value argument (scalar or `#[repr(C)]` struct).
    pub fn val<T: Copy>(mut self, v: T) -> Args {
        let n = std::mem::size_of::<T>();
        let mut buf = vec![0u64; n.div_ceil(8).max(1)];
        unsafe {
            std::ptr::copy_nonoverlapping(
                &v as *const T as *const u8,
                buf.as_mut_ptr() as *mut u8,
                n,
            )
        };
        self.store.push(buf);
        self.sizes.push(n);
        self
    }
    /// A device pointer: the buffer's address.
    pub fn buf<T: Copy>(self, b: &Buf<T>) -> Args {
        self.val(b.ptr())
    }
    fn ptrs(&mut self) -> Vec<*mut c_void> {
        self.store
            .iter_mut()
            .map(|b| b.as_mut_ptr() as *mut c_void)
            .collect()
    }
}

/// "Device memory": an exact-size heap allocation (under AddressSanitizer, any access
/// outside it is reported).
pub struct Buf<T> {
    data: Box<[T]>,
}

impl<T: Copy> Buf<T> {
    pub fn from(v: &[T]) -> Buf<T> {
        Buf {
            data: v.to_vec().into_boxed_slice(),
        }
    }
    pub fn filled(n: usize, v: T) -> Buf<T> {
        Buf {
            data: vec![v; n].into_boxed_slice(),
        }
    }
    pub fn ptr(&self) -> *mut c_void {
        self.data.as_ptr() as *mut c_void
    }
    pub fn get(&self) -> &[T] {
        &self.data
    }
}
