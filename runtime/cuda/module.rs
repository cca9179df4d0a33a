//! Kernel modules: the build-time table of `kernels/*.cu`, loading the right cubin for the
//! device (or compiling the embedded source with NVRTC at engine creation), and function
//! lookup.

use std::ffi::{c_char, c_int, CString};

use cudarc::driver::sys;
use cudarc::nvrtc::sys as nvrtc;

use super::device::{check, Device};
use crate::{Error, Result};

/// One `kernels/<name>.cu` as embedded by build.rs.
pub struct KernelModule {
    /// File stem: `fps` for `kernels/fps.cu`.
    pub name: &'static str,
    /// The source with `#include "..."` lines inlined (for NVRTC at engine creation).
    pub source: &'static str,
    /// (arch, cubin): arch 87 = sm_87, 90 = sm_90, 900 = sm_90a.
    pub cubins: &'static [(u32, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Finds a module of the table by name.
pub fn find_module(name: &str) -> Result<&'static KernelModule> {
    KERNEL_MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::Cuda(format!("no kernel module {name:?} was built in")))
}

/// A loaded module; unloaded on drop.
pub struct Module {
    module: sys::CUmodule,
    pub name: &'static str,
    /// How it was obtained: "cubin sm_90a", "nvrtc sm_87", ...
    pub origin: String,
}

impl Module {
    /// Loads module `name` for `dev`: the embedded cubin for the device's architecture when
    /// there is one (sm_90a preferred on 9.0), otherwise the source compiled with NVRTC.
    pub fn load(dev: &Device, name: &str) -> Result<Module> {
        let km = find_module(name)?;
        dev.bind()?;
        let sm = dev.sm();
        let pick = |code: u32| km.cubins.iter().find(|(a, _)| *a == code).map(|(_, b)| *b);
        let cubin = if sm == 90 {
            pick(900).or_else(|| pick(90))
        } else {
            pick(sm)
        };
        let (image, origin): (Vec<u8>, String) = match cubin {
            Some(b) => (b.to_vec(), format!("cubin sm_{sm}")),
            None => (nvrtc_cubin(km, sm)?, format!("nvrtc sm_{sm}")),
        };
        let mut module: sys::CUmodule = std::ptr::null_mut();
        unsafe {
            check(
                sys::cuModuleLoadData(&mut module, image.as_ptr() as *const _),
                &format!("cuModuleLoadData({name}, {origin})"),
            )?;
        }
        Ok(Module {
            module,
            name: km.name,
            origin,
        })
    }

    /// Looks a kernel up (creation time only).
    pub fn function(&self, kernel: &str) -> Result<sys::CUfunction> {
        let c = CString::new(kernel).map_err(|_| Error::Cuda("kernel name with NUL".into()))?;
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

impl Drop for Module {
    fn drop(&mut self) {
        unsafe {
            sys::cuModuleUnload(self.module);
        }
    }
}

/// Compiles the module's source for `sm` with the NVRTC found at run time. Headers beyond
/// NVRTC's built-ins (cuda_fp16.h, ...) are looked for in `$MIAD_CUDA_INCLUDE`, then
/// `$CUDA_HOME/include`, then `/usr/local/cuda/include`.
fn nvrtc_cubin(km: &KernelModule, sm: u32) -> Result<Vec<u8>> {
    if !unsafe { nvrtc::is_culib_present() } {
        return Err(Error::Cuda(format!(
            "module {}: no cubin for sm_{sm} was built in and no NVRTC library is present",
            km.name
        )));
    }
    let src = CString::new(km.source).map_err(|_| Error::Cuda("kernel source with NUL".into()))?;
    let fname = CString::new(format!("{}.cu", km.name)).map_err(|_| Error::Cuda("name".into()))?;
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
            return Err(Error::Cuda(format!(
                "nvrtcCreateProgram({}): {r:?}",
                km.name
            )));
        }
        let r = nvrtc::nvrtcCompileProgram(prog, optp.len() as c_int, optp.as_ptr());
        let result = if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            let mut n = 0usize;
            nvrtc::nvrtcGetProgramLogSize(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
            Err(Error::Cuda(format!(
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
                Err(Error::Cuda(format!("nvrtcGetCUBIN({}): {r:?}", km.name)))
            }
        };
        nvrtc::nvrtcDestroyProgram(&mut prog);
        result
    }
}
