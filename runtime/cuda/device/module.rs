//! Kernel modules: the build-time table of `kernels/*.cu`, loading the right cubin for the
//! device (or compiling the embedded source with NVRTC at engine creation), and function
//! lookup.

use std::ffi::{c_char, c_int, CString};
use std::path::Path;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::nvrtc::sys as nvrtc;

use super::context::dev_err;
use super::context::{check, Device};
use super::sim::SimModule;
use crate::{Error, Result};

/// One `kernels/<name>.cu` as embedded by build.rs.
pub struct KernelModule {
    /// File stem: `fps` for `kernels/fps.cu`.
    pub name: &'static str,
    /// The source with `#include "..."` lines inlined (for NVRTC at engine creation).
    pub source: &'static str,
    /// (arch, cubin): arch 87 = sm_87, 90 = sm_90, 900 = sm_90a.
    pub cubins: &'static [(u32, &'static [u8])],
    /// The module built for the SIMT emulator (feature `cuda-sim`; empty without it).
    pub sim: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Finds a module of the table by name.
pub fn find_module(name: &str) -> Result<&'static KernelModule> {
    KERNEL_MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| dev_err(format!("no kernel module {name:?} was built in")))
}

/// A module of a device's module table: a handle that any number of kernel wrappers may
/// hold; the device unloads its modules when it is dropped.
#[derive(Clone)]
pub struct Module {
    module: sys::CUmodule,
    /// The emulated module on the simulated device.
    sim: Option<Arc<SimModule>>,
    pub name: &'static str,
    /// How it was obtained: "cubin sm_90a", "nvrtc sm_87", ...
    pub origin: String,
}

impl Module {
    /// Module `name` of `dev`'s module table ([`Device::module`]: loaded at most once per
    /// device).
    pub fn load(dev: &Device, name: &str) -> Result<Module> {
        dev.module(name)
    }

    /// Loads module `name` for `dev` (the module table's loader, counted on `dev`), from
    /// the first of:
    /// 1. the folder `$MIAD_CUBIN_DIR` when that environment variable is set (kernels
    ///    compiled apart from the crate): `<name>.cubin`, or the `<name>.sm_XX.cubin` that
    ///    `kernels/compile.py --out` writes (see [`read_cubin_override`]); a missing or
    ///    unreadable file is an error;
    /// 2. the cubin embedded for the device's architecture (sm_90a preferred on 9.0);
    /// 3. the embedded source compiled with NVRTC.
    pub(crate) fn load_new(dev: &Device, name: &str) -> Result<Module> {
        let km = find_module(name)?;
        if dev.is_simulated() {
            let sim = SimModule::load(km.name, km.sim)?;
            dev.count_module_load(km.name);
            return Ok(Module {
                module: std::ptr::null_mut(),
                sim: Some(Arc::new(sim)),
                name: km.name,
                origin: "SIMT emulator".into(),
            });
        }
        dev.bind()?;
        let sm = dev.sm();
        let (image, origin): (Vec<u8>, String) = match std::env::var_os(CUBIN_DIR_VAR) {
            Some(dir) => read_cubin_override(Path::new(&dir), km.name, sm)?,
            None => match embedded_cubin(km, sm) {
                Some(b) => (b.to_vec(), format!("cubin sm_{sm}")),
                None => (nvrtc_cubin(km, sm)?, format!("nvrtc sm_{sm}")),
            },
        };
        let mut module: sys::CUmodule = std::ptr::null_mut();
        unsafe {
            check(
                sys::cuModuleLoadData(&mut module, image.as_ptr() as *const _),
                &format!("cuModuleLoadData({name}, {origin})"),
            )?;
        }
        dev.count_module_load(km.name);
        Ok(Module {
            module,
            sim: None,
            name: km.name,
            origin,
        })
    }

    /// Looks a kernel up (creation time only).
    pub fn function(&self, kernel: &str) -> Result<sys::CUfunction> {
        if let Some(m) = &self.sim {
            // The emulated kernel's address stands for the function handle.
            return Ok(m.function(kernel)? as sys::CUfunction);
        }
        let c = CString::new(kernel).map_err(|_| dev_err("kernel name with NUL".into()))?;
        let mut f: sys::CUfunction = std::ptr::null_mut();
        unsafe {
            check(
                sys::cuModuleGetFunction(&mut f, self.module, c.as_ptr()),
                &format!("cuModuleGetFunction({}.{kernel})", self.name),
            )?;
        }
        Ok(f)
    }
}

impl Module {
    /// Unloads a driver module (the device's table, when the device is dropped; an
    /// emulated module goes with its last handle).
    pub(crate) fn unload(self) {
        if self.sim.is_none() && !self.module.is_null() {
            unsafe {
                sys::cuModuleUnload(self.module);
            }
        }
    }
}

/// Environment variable naming a folder of separately compiled `<module>.cubin` files that
/// [`Module::load`] uses instead of the embedded ones.
pub const CUBIN_DIR_VAR: &str = "MIAD_CUBIN_DIR";

/// The embedded cubin of `km` for compute capability `sm` (90 takes sm_90a, then sm_90).
pub fn embedded_cubin(km: &KernelModule, sm: u32) -> Option<&'static [u8]> {
    let pick = |code: u32| km.cubins.iter().find(|(a, _)| *a == code).map(|(_, b)| *b);
    if sm == 90 {
        pick(900).or_else(|| pick(90))
    } else {
        pick(sm)
    }
}

/// Reads the image of module `name` for compute capability `sm` from `dir` (host only):
/// `<name>.cubin`, else the file `kernels/compile.py --out` writes for the architecture
/// (`<name>.sm_90a.cubin` then `<name>.sm_90.cubin` on 9.0, `<name>.sm_<sm>.cubin`
/// otherwise). A text image (PTX) gets the terminating NUL that `cuModuleLoadData` needs;
/// an ELF cubin is used as it is.
pub fn read_cubin_override(dir: &Path, name: &str, sm: u32) -> Result<(Vec<u8>, String)> {
    let mut names = vec![format!("{name}.cubin")];
    if sm == 90 {
        names.push(format!("{name}.sm_90a.cubin"));
    }
    names.push(format!("{name}.sm_{sm}.cubin"));
    let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) else {
        return Err(dev_err(format!(
            "{CUBIN_DIR_VAR}={}: none of {} found",
            dir.display(),
            names.join(", ")
        )));
    };
    let mut image = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if image.is_empty() {
        return Err(dev_err(format!(
            "{}: empty kernel image ({CUBIN_DIR_VAR})",
            path.display()
        )));
    }
    if !image.starts_with(b"\x7fELF") && image.last() != Some(&0) {
        image.push(0);
    }
    Ok((image, format!("file {}", path.display())))
}

/// Compiles the module's source for `sm` with the NVRTC found at run time. Headers beyond
/// NVRTC's built-ins (cuda_fp16.h, ...) are looked for in `$MIAD_CUDA_INCLUDE`, then
/// `$CUDA_HOME/include`, then `/usr/local/cuda/include`.
fn nvrtc_cubin(km: &KernelModule, sm: u32) -> Result<Vec<u8>> {
    if !unsafe { nvrtc::is_culib_present() } {
        return Err(dev_err(format!(
            "module {}: no cubin for sm_{sm} was built in and no NVRTC library is present",
            km.name
        )));
    }
    let src = CString::new(km.source).map_err(|_| dev_err("kernel source with NUL".into()))?;
    let fname = CString::new(format!("{}.cu", km.name)).map_err(|_| dev_err("name".into()))?;
    let include = std::env::var("MIAD_CUDA_INCLUDE")
        .ok()
        .or_else(|| {
            std::env::var("CUDA_HOME")
                .ok()
                .map(|h| format!("{h}/include"))
        })
        .unwrap_or_else(|| "/usr/local/cuda/include".into());
    let opts: Vec<CString> = [
        format!("--gpu-architecture=sm_{sm}"),
        "-std=c++17".into(),
        "-default-device".into(),
        format!("--include-path={include}"),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    let optp: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    unsafe {
        let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
        let r = nvrtc::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            fname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            return Err(dev_err(format!("nvrtcCreateProgram({}): {r:?}", km.name)));
        }
        let r = nvrtc::nvrtcCompileProgram(prog, optp.len() as c_int, optp.as_ptr());
        let result = if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            let mut n = 0usize;
            nvrtc::nvrtcGetProgramLogSize(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
            Err(dev_err(format!(
                "NVRTC compile of {} for sm_{sm} failed: {}",
                km.name,
                String::from_utf8_lossy(&log).trim_end_matches('\0')
            )))
        } else {
            let mut n = 0usize;
            nvrtc::nvrtcGetCUBINSize(prog, &mut n);
            let mut bin = vec![0u8; n];
            let r = nvrtc::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char);
            if r == nvrtc::nvrtcResult::NVRTC_SUCCESS {
                Ok(bin)
            } else {
                Err(dev_err(format!("nvrtcGetCUBIN({}): {r:?}", km.name)))
            }
        };
        nvrtc::nvrtcDestroyProgram(&mut prog);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubin_override_reads_the_named_file() {
        let dir = std::env::temp_dir().join(format!("miad-cubin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Missing file: an error that names what was looked for.
        let e = read_cubin_override(&dir, "nothere", 87).unwrap_err();
        assert!(
            e.to_string().contains("nothere.cubin") && e.to_string().contains("nothere.sm_87"),
            "{e}"
        );
        // ELF image: unchanged.
        let elf = b"\x7fELF\x02\x01rest".to_vec();
        std::fs::write(dir.join("a.cubin"), &elf).unwrap();
        let (img, origin) = read_cubin_override(&dir, "a", 90).unwrap();
        assert_eq!(img, elf);
        assert!(origin.contains("a.cubin"));
        // Text (PTX): NUL-terminated.
        std::fs::write(dir.join("b.cubin"), b".version 8.0").unwrap();
        let (img, _) = read_cubin_override(&dir, "b", 87).unwrap();
        assert_eq!(img.last(), Some(&0));
        // Empty: an error.
        std::fs::write(dir.join("c.cubin"), b"").unwrap();
        assert!(read_cubin_override(&dir, "c", 87).is_err());
        // compile.py names: the device's architecture, sm_90a first on 9.0.
        std::fs::write(dir.join("d.sm_90.cubin"), b"\x7fELF90").unwrap();
        std::fs::write(dir.join("d.sm_90a.cubin"), b"\x7fELF90a").unwrap();
        std::fs::write(dir.join("d.sm_87.cubin"), b"\x7fELF87").unwrap();
        assert_eq!(read_cubin_override(&dir, "d", 90).unwrap().0, b"\x7fELF90a");
        assert_eq!(read_cubin_override(&dir, "d", 87).unwrap().0, b"\x7fELF87");
        assert!(read_cubin_override(&dir, "d", 80).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn embedded_cubin_prefers_sm90a() {
        const A: &[u8] = &[1];
        const B: &[u8] = &[2];
        const C: &[u8] = &[3];
        let km = KernelModule {
            name: "t",
            source: "",
            cubins: &[(87, A), (90, B), (900, C)],
            sim: "",
        };
        assert_eq!(embedded_cubin(&km, 90), Some(C));
        assert_eq!(embedded_cubin(&km, 87), Some(A));
        assert_eq!(embedded_cubin(&km, 80), None);
        let km = KernelModule {
            name: "t",
            source: "",
            cubins: &[(90, B)],
            sim: "",
        };
        assert_eq!(embedded_cubin(&km, 90), Some(B));
    }
}
