//! Building `kernels/*.cu` against the SIMT emulator: parsing the `__global__` prototypes,
//! generating each module's registration file, and compiling the runtime (`libmiadsim.so`)
//! and one shared object per module with g++, cached by a hash of everything they are
//! built from. Shared by build.rs (the `cuda-sim` feature: plain builds into OUT_DIR) and
//! the `kernels_sim` test binary (ASan/UBSan builds under target/tmp), included by
//! `#[path]` in both so the two cannot drift apart.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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

/// The g++ flags shared by every build: no contraction, so the CPU oracle's bits are
/// reproduced.
pub const BASE_FLAGS: &[&str] = &[
    "-std=gnu++17",
    "-O2",
    "-g0",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-w",
    // A kernel's shared memory is thread_local in a dlopen'ed module. With the default
    // dialect every access calls __tls_get_addr (which ASan also intercepts: a third of an
    // instrumented kernel's time); TLS descriptors resolve to the block's offset without
    // the call once the thread's block exists.
    #[cfg(target_arch = "x86_64")]
    TLS_DESCRIPTORS,
];

/// The TLS-descriptor dialect of [`BASE_FLAGS`]. Not for module_tls.cpp: its first access
/// to the window must go through __tls_get_addr, which sets up the thread's entry for the
/// module that `dlinfo(RTLD_DI_TLS_DATA)` reads (a descriptor access may not, and the
/// block then could not be located: seen as an intermittent launch error).
const TLS_DESCRIPTORS: &str = "-mtls-dialect=gnu2";

/// Flags of the instrumented builds (the kernels_sim tests, run under ASan).
pub const SANITIZE_FLAGS: &[&str] = &[
    "-fsanitize=address",
    "-fsanitize-recover=address",
    "-fsanitize=undefined",
    "-fno-sanitize=vptr",
];

/// One built module: its file stem, shared object and source text.
pub struct BuiltModule {
    pub stem: String,
    pub so: PathBuf,
    pub src: String,
}

/// What `build_all` produced.
pub struct Built {
    pub runtime: PathBuf,
    pub modules: Vec<BuiltModule>,
    /// Whether anything was compiled (false: all cached).
    pub fresh: bool,
}

/// How to build: the repository root, the cache folder, the module and runtime flags.
pub struct BuildConfig<'a> {
    pub root: &'a Path,
    pub dir: PathBuf,
    pub flags: Vec<&'a str>,
    pub rt_flags: Vec<&'a str>,
    /// Parallel g++ jobs.
    pub jobs: usize,
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

fn read_rel(root: &Path, rel: &str) -> Result<Vec<u8>, String> {
    std::fs::read(root.join(rel)).map_err(|e| format!("{rel}: {e}"))
}

/// One module to build: its source, the generated registration file's text and the
/// dynamic-shared-memory aliases.
struct Job {
    stem: String,
    so: PathBuf,
    gen: String,
    aliases: String,
    /// `MIAD_SIM_TLS_INIT(_ZTH<mangled name>)` for every alias.
    inits: String,
}

fn build_module(cfg: &BuildConfig<'_>, rt: &Path, job: &Job) -> Result<(), String> {
    let sim = cfg.root.join("kernels/sim");
    let tmp = cfg.dir.join(format!("{}.tmp", job.stem));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let gen = tmp.join(format!("gen_{}.cpp", job.stem));
    std::fs::write(&gen, &job.gen).map_err(|e| e.to_string())?;
    let (obj, tls, so) = (tmp.join("k.o"), tmp.join("tls.o"), tmp.join("k.so"));
    run(Command::new("g++")
        .args(&cfg.flags)
        .arg("-c")
        .arg("-include")
        .arg(sim.join("simt.h"))
        .arg("-I")
        .arg(sim.join("include"))
        .arg("-I")
        .arg(cfg.root.join("kernels"))
        .arg("-o")
        .arg(&obj)
        .arg(&gen))?;
    run(Command::new("g++")
        .args(cfg.flags.iter().filter(|f| **f != TLS_DESCRIPTORS))
        .arg("-c")
        .arg(format!("-DMIAD_SIM_DYN_ALIASES={}", job.aliases))
        .arg(format!("-DMIAD_SIM_DYN_INITS={}", job.inits))
        .arg("-o")
        .arg(&tls)
        .arg(sim.join("module_tls.cpp")))?;
    let rtdir = rt.parent().ok_or("runtime path without a folder")?;
    let rt_name = rtdir.file_name().ok_or("runtime folder without a name")?;
    run(Command::new("g++")
        .args(&cfg.flags)
        .arg("-o")
        .arg(&so)
        .arg(&obj)
        .arg(&tls)
        .arg(format!("-L{}", rtdir.display()))
        .arg("-lmiadsim")
        // Relative to the module, so a copied target folder still finds its own runtime
        // (an absolute path would load another tree's runtime beside this one: two
        // emulators, and kernels that see no current thread).
        .arg(format!("-Wl,-rpath,$ORIGIN/{}", rt_name.to_string_lossy()))
        .arg("-ldl"))?;
    std::fs::rename(&so, &job.so).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Builds what is missing: the runtime, then every module, `cfg.jobs` at a time. Modules
/// are cached by a hash of their own source and of everything they include, so editing
/// one .cu file rebuilds one module.
fn build(cfg: &BuildConfig<'_>, rt: &Path, jobs: Vec<Job>) -> Result<(), String> {
    let rtdir = rt.parent().ok_or("runtime path without a folder")?;
    std::fs::create_dir_all(rtdir).map_err(|e| e.to_string())?;
    if !rt.exists() {
        // Modules link against the runtime: it comes first.
        let tmp = rt.with_extension("tmp");
        run(Command::new("g++")
            .args(&cfg.rt_flags)
            .arg("-o")
            .arg(&tmp)
            .arg(cfg.root.join("kernels/sim/simt.cpp"))
            .arg("-lpthread"))?;
        std::fs::rename(&tmp, rt).map_err(|e| e.to_string())?;
    }
    let todo: Vec<Job> = jobs.into_iter().filter(|j| !j.so.exists()).collect();
    let queue = Mutex::new(todo);
    let errors = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.max(1) {
            s.spawn(|| {
                // The queue's lock is released inside `next`, before the job runs.
                let next = || queue.lock().ok().and_then(|mut q| q.pop());
                while let Some(job) = next() {
                    if let Err(e) = build_module(cfg, rt, &job) {
                        if let Ok(mut errs) = errors.lock() {
                            errs.push(format!("{}: {e}", job.stem));
                        }
                    }
                }
            });
        }
    });
    let errs = errors.into_inner().unwrap_or_default();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

/// How a module finds its runtime (part of the modules' cache key, so that modules linked
/// with an absolute path are rebuilt).
const MODULE_RPATH: &str = "$ORIGIN/rt-<hash>";

/// Builds (or finds cached) the runtime and one shared object per source in `sources`,
/// under `cfg.dir`: `rt-<hash>/libmiadsim.so` and `<stem>-<hash>.so`.
pub fn build_all(cfg: &BuildConfig<'_>, sources: &[PathBuf]) -> Result<Built, String> {
    let flags = |f: &[&str]| f.join(" ").into_bytes();
    let simt_h = read_rel(cfg.root, "kernels/sim/simt.h")?;
    let rt_hash = hash_of(&[
        &flags(&cfg.rt_flags),
        &simt_h,
        &read_rel(cfg.root, "kernels/sim/simt.cpp")?,
    ]);
    let rt = cfg
        .dir
        .join(format!("rt-{rt_hash:016x}"))
        .join("libmiadsim.so");
    let common = [
        flags(&cfg.flags),
        // How a module finds the runtime (changing it must rebuild cached modules).
        b"rpath $ORIGIN/rt-<hash>".to_vec(),
        rt_hash.to_le_bytes().to_vec(),
        read_rel(cfg.root, "kernels/common.cuh")?,
        simt_h,
        read_rel(cfg.root, "kernels/sim/simt_register.h")?,
        read_rel(cfg.root, "kernels/sim/module_tls.cpp")?,
        MODULE_RPATH.as_bytes().to_vec(),
        // module_tls.cpp is built without it (a cached module built with it is stale).
        format!("module_tls without {TLS_DESCRIPTORS}").into_bytes(),
    ];
    let mut modules = Vec::new();
    let mut jobs = Vec::new();
    for p in sources {
        let src = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .ok_or_else(|| format!("{}: no file name", p.display()))?;
        let mut parts: Vec<&[u8]> = common.iter().map(|c| c.as_slice()).collect();
        parts.push(src.as_bytes());
        let h = hash_of(&parts);
        let mut gen = format!(
            "#include \"{}\"\n#include \"{}\"\n",
            p.display(),
            cfg.root.join("kernels/sim/simt_register.h").display()
        );
        for pr in prototypes(&src) {
            let b = pr.bounds.clone().unwrap_or_else(|| "0".into());
            gen.push_str(&format!("MIAD_SIM_KERNEL({}, ({}))\n", pr.name, b));
        }
        let names = dyn_shared_names(&src);
        let aliases = names
            .iter()
            .map(|n| format!("MIAD_SIM_DYN({n})"))
            .collect::<Vec<_>>()
            .join(" ");
        // Itanium mangling of a global name: its length, then the name.
        let inits = names
            .iter()
            .map(|n| format!("MIAD_SIM_TLS_INIT(_ZTH{}{n})", n.len()))
            .collect::<Vec<_>>()
            .join(" ");
        let so = cfg.dir.join(format!("{stem}-{h:016x}.so"));
        jobs.push(Job {
            stem: stem.clone(),
            so: so.clone(),
            gen,
            aliases,
            inits,
        });
        modules.push(BuiltModule { stem, so, src });
    }
    let fresh = !rt.exists() || jobs.iter().any(|j| !j.so.exists());
    build(cfg, &rt, jobs)?;
    Ok(Built {
        runtime: rt,
        modules,
        fresh,
    })
}
