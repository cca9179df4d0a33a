//! Builds kernels/*.cu with g++ against the SIMT emulator (kernels/sim) into shared objects,
//! cached under target/kernels-sim/<hash of the sources>, and launches their kernels with
//! `cuLaunchKernel`-style argument arrays.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

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

/// A `__global__` function as written in a .cu file.
#[derive(Clone, Debug)]
pub struct Proto {
    pub name: String,
    /// The `__launch_bounds__` maximum-threads expression, if any.
    pub bounds: Option<String>,
    /// Parameter types with `__restrict__`, `const` placement and names normalised away:
    /// e.g. "const float*", "int", "MapBanks".
    pub params: Vec<String>,
}

/// Source with comments removed (line structure kept).
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn normalise_type(param: &str) -> String {
    // "const float *__restrict__ pts" -> "const float*"; "const MapBanks banks" -> "MapBanks"
    let p = param.replace("__restrict__", " ").replace('*', " * ");
    let toks: Vec<&str> = p.split_whitespace().collect();
    let (name_dropped, _) = toks.split_at(toks.len().saturating_sub(1));
    let stars = name_dropped.iter().filter(|t| **t == "*").count();
    let is_const = name_dropped.contains(&"const");
    let base: Vec<&str> = name_dropped
        .iter()
        .copied()
        .filter(|t| *t != "*" && *t != "const")
        .collect();
    let mut s = String::new();
    if is_const && stars > 0 {
        s.push_str("const ");
    }
    s.push_str(&base.join(" "));
    for _ in 0..stars {
        s.push('*');
    }
    s
}

/// The `__global__` prototypes of one .cu file.
pub fn prototypes(src: &str) -> Vec<Proto> {
    let s = strip_comments(src);
    let mut out = Vec::new();
    let mut rest = s.as_str();
    while let Some(pos) = rest
        .find("MIAD_EXTERN")
        .into_iter()
        .chain(rest.find("__global__"))
        .min()
    {
        let after = &rest[pos..];
        // Skip the macro's own definition in common.cuh (not in .cu files anyway).
        let Some(paren_body) = after.find('{') else {
            break;
        };
        let head = &after[..paren_body];
        if head.contains("#define") {
            rest = &after[10..];
            continue;
        }
        let mut bounds = None;
        let mut h = head.to_string();
        if let Some(lb) = h.find("__launch_bounds__(") {
            let open = lb + "__launch_bounds__(".len();
            let mut depth = 1;
            let mut end = open;
            for (i, c) in h[open..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &h[open..end];
            // Only the first argument (max threads) matters; split at a top-level comma.
            let mut d = 0;
            let mut first = inner.len();
            for (i, c) in inner.char_indices() {
                match c {
                    '(' => d += 1,
                    ')' => d -= 1,
                    ',' if d == 0 => {
                        first = i;
                        break;
                    }
                    _ => {}
                }
            }
            bounds = Some(inner[..first].trim().to_string());
            h.replace_range(lb..=end, " ");
        }
        let open = h.find('(').expect("kernel parameter list");
        let close = h.rfind(')').expect("kernel parameter list");
        let name = h[..open]
            .split_whitespace()
            .last()
            .expect("kernel name")
            .to_string();
        let params = h[open + 1..close]
            .split(',')
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(normalise_type)
            .collect();
        out.push(Proto {
            name,
            bounds,
            params,
        });
        rest = &after[paren_body..];
    }
    out
}

/// Names of the `extern __shared__` arrays of a source (dynamic shared memory).
fn dyn_shared_names(src: &str) -> Vec<String> {
    let s = strip_comments(src);
    let mut v = Vec::new();
    for line in s.lines() {
        let l = line.trim();
        if l.starts_with("extern __shared__") {
            if let Some(br) = l.find("[]") {
                let name = l[..br].split_whitespace().last().unwrap_or("").to_string();
                v.push(name);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

const FLAGS: &[&str] = &[
    "-std=gnu++17",
    "-O2",
    "-g0",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-fsanitize=address",
    "-fsanitize-recover=address",
    "-fsanitize=undefined",
    "-fno-sanitize=vptr",
    "-w",
];

/// The runtime: optimised, not instrumented, using the preloaded ASan runtime's interfaces.
const RT_FLAGS: &[&str] = &[
    "-std=gnu++17",
    "-O2",
    "-g0",
    "-fPIC",
    "-shared",
    "-DMIAD_SIM_ASAN=1",
    "-w",
];

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

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for p in parts {
        fnv(&mut h, p);
        fnv(&mut h, &[0xff]);
    }
    h
}

fn read(rel: &str) -> Result<Vec<u8>, String> {
    std::fs::read(root().join(rel)).map_err(|e| format!("{rel}: {e}"))
}

/// One module to build: its source, the generated registration file's text and the
/// dynamic-shared-memory aliases.
struct Job {
    stem: String,
    so: PathBuf,
    gen: String,
    aliases: String,
}

fn build_module(dir: &Path, rt: &Path, job: &Job) -> Result<(), String> {
    let sim = root().join("kernels/sim");
    let tmp = dir.join(format!("{}.tmp", job.stem));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let gen = tmp.join(format!("gen_{}.cpp", job.stem));
    std::fs::write(&gen, &job.gen).map_err(|e| e.to_string())?;
    let (obj, tls, so) = (tmp.join("k.o"), tmp.join("tls.o"), tmp.join("k.so"));
    run(Command::new("g++")
        .args(FLAGS)
        .arg("-c")
        .arg("-include")
        .arg(sim.join("simt.h"))
        .arg("-I")
        .arg(sim.join("include"))
        .arg("-I")
        .arg(root().join("kernels"))
        .arg("-o")
        .arg(&obj)
        .arg(&gen))?;
    run(Command::new("g++")
        .args(FLAGS)
        .arg("-c")
        .arg(format!("-DMIAD_SIM_DYN_ALIASES={}", job.aliases))
        .arg("-o")
        .arg(&tls)
        .arg(sim.join("module_tls.cpp")))?;
    let rtdir = rt.parent().unwrap();
    run(Command::new("g++")
        .args(FLAGS)
        .arg("-o")
        .arg(&so)
        .arg(&obj)
        .arg(&tls)
        .arg(format!("-L{}", rtdir.display()))
        .arg("-lmiadsim")
        .arg(format!("-Wl,-rpath,{}", rtdir.display()))
        .arg("-ldl"))?;
    std::fs::rename(&so, &job.so).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Builds what is missing: the runtime, then every module, `jobs` at a time. Modules are
/// cached by a hash of their own source and of everything they include, so editing one
/// .cu file rebuilds one module.
fn build(dir: &Path, rt: &Path, jobs: Vec<Job>) -> Result<(), String> {
    std::fs::create_dir_all(rt.parent().unwrap()).map_err(|e| e.to_string())?;
    let rt_job = (!rt.exists()).then(|| {
        let rt = rt.to_path_buf();
        std::thread::spawn(move || {
            let tmp = rt.with_extension("tmp");
            run(Command::new("g++")
                .args(RT_FLAGS)
                .arg("-o")
                .arg(&tmp)
                .arg(root().join("kernels/sim/simt.cpp"))
                .arg("-lpthread"))
            .and_then(|_| std::fs::rename(&tmp, &rt).map_err(|e| e.to_string()))
        })
    });
    let todo: Vec<Job> = jobs.into_iter().filter(|j| !j.so.exists()).collect();
    if let Some(t) = rt_job {
        // Modules link against the runtime: it comes first (it builds while g++ warms up).
        t.join()
            .map_err(|_| "runtime build panicked".to_string())??;
    }
    let threads: usize = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let queue = Mutex::new(todo);
    let errors = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some(job) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Err(e) = build_module(dir, rt, &job) {
                    errors.lock().unwrap().push(format!("{}: {e}", job.stem));
                }
            });
        }
    });
    let errs = errors.into_inner().unwrap();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

/// The .cu files the emulator builds: kernels/*.cu and its own self-test kernels.
fn module_sources() -> Vec<PathBuf> {
    let mut v = kernel_files();
    v.push(root().join("kernels/sim/selftest.cu"));
    v
}

impl Sim {
    fn new() -> Result<Sim, String> {
        let flags = |f: &[&str]| f.join(" ").into_bytes();
        let simt_h = read("kernels/sim/simt.h")?;
        let rt_hash = hash_of(&[&flags(RT_FLAGS), &simt_h, &read("kernels/sim/simt.cpp")?]);
        // CARGO_TARGET_TMPDIR lies under the target dir of this build.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernels-sim");
        let rt = dir.join(format!("rt-{rt_hash:016x}")).join("libmiadsim.so");
        let common = [
            flags(FLAGS),
            rt_hash.to_le_bytes().to_vec(),
            read("kernels/common.cuh")?,
            simt_h,
            read("kernels/sim/simt_register.h")?,
            read("kernels/sim/module_tls.cpp")?,
        ];
        let mut sources = Vec::new();
        let mut jobs = Vec::new();
        for p in module_sources() {
            let src = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let mut parts: Vec<&[u8]> = common.iter().map(|c| c.as_slice()).collect();
            parts.push(src.as_bytes());
            let h = hash_of(&parts);
            let mut gen = format!(
                "#include \"{}\"\n#include \"{}\"\n",
                p.display(),
                root().join("kernels/sim/simt_register.h").display()
            );
            for pr in prototypes(&src) {
                let b = pr.bounds.clone().unwrap_or_else(|| "0".into());
                gen.push_str(&format!("MIAD_SIM_KERNEL({}, ({}))\n", pr.name, b));
            }
            let aliases = dyn_shared_names(&src)
                .iter()
                .map(|n| format!("MIAD_SIM_DYN({n})"))
                .collect::<Vec<_>>()
                .join(" ");
            let so = dir.join(format!("{stem}-{h:016x}.so"));
            jobs.push(Job {
                stem: stem.clone(),
                so: so.clone(),
                gen,
                aliases,
            });
            sources.push((stem, so, src));
        }
        let t0 = std::time::Instant::now();
        let fresh = !rt.exists() || jobs.iter().any(|j| !j.so.exists());
        build(&dir, &rt, jobs)?;
        if fresh {
            eprintln!(
                "kernels_sim: built the emulated kernels in {:.1} s ({})",
                t0.elapsed().as_secs_f64(),
                dir.display()
            );
        }
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
