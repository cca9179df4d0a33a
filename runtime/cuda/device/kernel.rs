//! Kernels as the launches see them: the parameter list of every `__global__` function of
//! `kernels/*.cu` (parsed by build.rs into [`KERNEL_PROTOTYPES`]), a looked-up kernel that
//! carries its prototype ([`Kernel`]), and typed argument lists ([`KernelArgs`]) that
//! [`super::Device::launch`] checks against the prototype before every launch, on a GPU
//! and on the simulated device: an argument in the wrong place or of the wrong type is a
//! [`crate::DeviceError::ArgumentKind`], a wrong count a
//! [`crate::DeviceError::ArgumentCount`], never a kernel reading garbage.
//!
//! Launch pattern (nothing is allocated):
//! ```ignore
//! let (n, h) = (n_tokens as i32, heads as i32);
//! let mut args = kernel_args![qkv, out, n, h, scale];
//! unsafe { dev.launch(self.attention_f32, grid, block, 0, &mut args)? };
//! ```

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;

use cudarc::driver::sys;

use super::arena::DevPtr;
use super::context::dev_err;
use super::module::Module;
use crate::{DeviceError, Result};

/// A C type as a kernel prototype spells it (`u32` and `u64` are the kernels' typedefs
/// for `unsigned int` and `unsigned long long`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CType {
    /// `int`
    Int,
    /// `unsigned int`, `u32`
    UInt,
    /// `long` (64 bits on the device ABI)
    Long,
    /// `unsigned long long`, `u64`
    ULong,
    /// `float`
    Float,
    /// `unsigned char`
    UChar,
    /// `__half`
    Half,
    /// `__nv_bfloat16`
    Bf16,
    /// `float4`
    Float4,
    /// A struct of the kernel sources, by name (`MapBanks`).
    Struct(&'static str),
}

impl CType {
    fn c_name(self) -> &'static str {
        match self {
            CType::Int => "int",
            CType::UInt => "u32",
            CType::Long => "long",
            CType::ULong => "u64",
            CType::Float => "float",
            CType::UChar => "unsigned char",
            CType::Half => "__half",
            CType::Bf16 => "__nv_bfloat16",
            CType::Float4 => "float4",
            CType::Struct(name) => name,
        }
    }
}

/// What one kernel parameter is: a value, or a device pointer to elements of a type.
/// `const` is not part of the kind: a [`DevPtr`] does not say whether the kernel writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Value(CType),
    Ptr(CType),
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgKind::Value(t) => f.write_str(t.c_name()),
            ArgKind::Ptr(t) => write!(f, "{}*", t.c_name()),
        }
    }
}

/// A `__global__` function of `kernels/<module>.cu` and its parameter kinds.
#[derive(Debug)]
pub struct KernelPrototype {
    pub module: &'static str,
    pub name: &'static str,
    pub params: &'static [ArgKind],
}

include!(concat!(env!("OUT_DIR"), "/kernel_prototypes.rs"));

/// The prototype of kernel `name` of module `module`.
pub fn prototype(module: &str, name: &str) -> Option<&'static KernelPrototype> {
    KERNEL_PROTOTYPES
        .iter()
        .find(|p| p.module == module && p.name == name)
}

/// A Rust value that can be passed to a kernel parameter of kind [`KernelArg::KIND`].
///
/// # Safety
/// The value's bytes must be what the device reads for a parameter of that kind: same
/// size, alignment and field layout (`#[repr(C)]` for structs).
pub unsafe trait KernelArg {
    const KIND: ArgKind;
}

/// An element type a [`DevPtr`] may point to, with the C type the kernels read.
///
/// # Safety
/// `Self` must have the size and layout of [`DeviceElem::C_TYPE`].
pub unsafe trait DeviceElem {
    const C_TYPE: CType;
}

macro_rules! scalar_args {
    ($($t:ty => $c:ident),* $(,)?) => {$(
        unsafe impl KernelArg for $t {
            const KIND: ArgKind = ArgKind::Value(CType::$c);
        }
        unsafe impl DeviceElem for $t {
            const C_TYPE: CType = CType::$c;
        }
    )*};
}

scalar_args!(i32 => Int, u32 => UInt, i64 => Long, u64 => ULong, f32 => Float);

macro_rules! elements {
    ($($t:ty => $c:ident),* $(,)?) => {$(
        unsafe impl DeviceElem for $t {
            const C_TYPE: CType = CType::$c;
        }
    )*};
}

elements!(u8 => UChar, half::f16 => Half, half::bf16 => Bf16, [f32; 4] => Float4);

// SAFETY: `DevPtr` is `repr(transparent)` over a 64-bit device address.
unsafe impl<T: DeviceElem> KernelArg for DevPtr<T> {
    const KIND: ArgKind = ArgKind::Ptr(T::C_TYPE);
}

/// Most parameters a kernel may have (the largest today has 16).
pub const MAX_KERNEL_ARGS: usize = 24;

/// A typed kernel argument list: the address of every value (what `cuLaunchKernel`
/// reads), its kind and its size, in a fixed-size array on the stack. The values are
/// borrowed for `'a`, so they outlive the launch.
pub struct KernelArgs<'a> {
    ptrs: [*mut c_void; MAX_KERNEL_ARGS],
    kinds: [ArgKind; MAX_KERNEL_ARGS],
    sizes: [usize; MAX_KERNEL_ARGS],
    len: usize,
    /// Arguments pushed beyond the capacity (refused at launch, never written).
    overflow: usize,
    _values: PhantomData<&'a ()>,
}

impl Default for KernelArgs<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> KernelArgs<'a> {
    pub fn new() -> Self {
        KernelArgs {
            ptrs: [std::ptr::null_mut(); MAX_KERNEL_ARGS],
            kinds: [ArgKind::Value(CType::Int); MAX_KERNEL_ARGS],
            sizes: [0; MAX_KERNEL_ARGS],
            len: 0,
            overflow: 0,
            _values: PhantomData,
        }
    }

    /// Appends `v` (builder style; see [`kernel_args!`]).
    pub fn arg<T: KernelArg>(mut self, v: &'a T) -> Self {
        self.push(v);
        self
    }

    /// Appends `v`.
    pub fn push<T: KernelArg>(&mut self, v: &'a T) {
        if self.len == MAX_KERNEL_ARGS {
            self.overflow += 1;
            return;
        }
        self.ptrs[self.len] = v as *const T as *mut c_void;
        self.kinds[self.len] = T::KIND;
        self.sizes[self.len] = std::mem::size_of::<T>();
        self.len += 1;
    }

    /// Number of arguments pushed.
    pub fn len(&self) -> usize {
        self.len + self.overflow
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kinds(&self) -> &[ArgKind] {
        &self.kinds[..self.len]
    }

    /// `sizeof` of every argument as Rust lays it out.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes[..self.len]
    }

    /// The argument array `cuLaunchKernel` takes.
    pub fn pointers(&mut self) -> &mut [*mut c_void] {
        &mut self.ptrs[..self.len]
    }
}

/// A typed argument list of the given values, in parameter order:
/// `kernel_args![pts, n, out]` borrows each value (so temporaries must be named first).
#[macro_export]
macro_rules! kernel_args {
    ($($v:expr),* $(,)?) => {
        $crate::cuda::device::kernel::KernelArgs::new()$(.arg(&$v))*
    };
}

/// A kernel looked up in a loaded module, with its prototype; valid while the module
/// lives (keep the module in the same struct, declared after its kernels).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    f: sys::CUfunction,
    proto: &'static KernelPrototype,
}

impl Kernel {
    /// Looks kernel `name` of `module` up (creation time). A kernel without a parsed
    /// prototype is an error: every launch is checked against one.
    pub fn find(module: &Module, name: &str) -> Result<Kernel> {
        let proto = prototype(module.name, name).ok_or_else(|| {
            dev_err(format!(
                "kernel {name}: no __global__ prototype in kernels/{}.cu",
                module.name
            ))
        })?;
        Ok(Kernel {
            f: module.function(name)?,
            proto,
        })
    }

    /// The driver's function handle (the emulated kernel's on the simulated device).
    pub fn function(&self) -> sys::CUfunction {
        self.f
    }

    pub fn name(&self) -> &'static str {
        self.proto.name
    }

    pub fn prototype(&self) -> &'static KernelPrototype {
        self.proto
    }

    /// Checks the count and kind of every argument against the prototype (no allocation
    /// unless it fails).
    pub fn check_args(&self, args: &KernelArgs<'_>) -> Result<()> {
        let params = self.proto.params;
        if args.len() != params.len() {
            return Err(DeviceError::ArgumentCount {
                kernel: self.proto.name,
                expected: params.len(),
                passed: args.len(),
            }
            .into());
        }
        for (index, (&expected, &passed)) in params.iter().zip(args.kinds()).enumerate() {
            if expected != passed {
                return Err(DeviceError::ArgumentKind {
                    kernel: self.proto.name,
                    index,
                    expected: expected.to_string(),
                    passed: passed.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn every_kernel_file_has_prototypes() {
        for m in super::super::module::KERNEL_MODULES {
            assert!(
                KERNEL_PROTOTYPES.iter().any(|p| p.module == m.name),
                "no prototype parsed from kernels/{}.cu",
                m.name
            );
        }
        // Template instantiations and macro-generated names are listed by their names.
        let fps = prototype("fps", "fps_regs_p8_f32").expect("fps_regs_p8_f32");
        assert_eq!(
            fps.params,
            &[
                ArgKind::Ptr(CType::Float),
                ArgKind::Ptr(CType::Int),
                ArgKind::Value(CType::Int),
                ArgKind::Value(CType::Int),
                ArgKind::Ptr(CType::UInt),
                ArgKind::Ptr(CType::Float),
            ]
        );
        let pixels = prototype("maps", "maps_pixels").expect("maps_pixels");
        assert_eq!(
            pixels.params[0],
            ArgKind::Value(CType::Struct("PixelParams"))
        );
        let gelu = prototype("gelu", "bias_gelu_f32").expect("bias_gelu_f32");
        assert_eq!(gelu.params[2], ArgKind::Value(CType::Long));
    }

    #[test]
    fn kinds_are_spelled_as_in_c() {
        assert_eq!(ArgKind::Ptr(CType::Float).to_string(), "float*");
        assert_eq!(ArgKind::Value(CType::UInt).to_string(), "u32");
        assert_eq!(ArgKind::Ptr(CType::Bf16).to_string(), "__nv_bfloat16*");
        assert_eq!(
            ArgKind::Value(CType::Struct("MapBanks")).to_string(),
            "MapBanks"
        );
    }

    #[test]
    fn argument_lists_record_kinds_and_sizes() {
        let (p, n, x, w) = (DevPtr::<f32>::null(), 3i32, 0.5f32, 7i64);
        let a = kernel_args![p, n, x, w];
        assert_eq!(
            a.kinds(),
            &[
                ArgKind::Ptr(CType::Float),
                ArgKind::Value(CType::Int),
                ArgKind::Value(CType::Float),
                ArgKind::Value(CType::Long),
            ]
        );
        assert_eq!(a.sizes(), &[8, 4, 4, 8]);
        let mut over = KernelArgs::new();
        for _ in 0..MAX_KERNEL_ARGS + 2 {
            over.push(&n);
        }
        assert_eq!(over.len(), MAX_KERNEL_ARGS + 2);
        assert_eq!(over.kinds().len(), MAX_KERNEL_ARGS);
    }

    /// The check against a prototype without a device: a list built from the prototype
    /// passes; changing any one argument's kind is refused naming that argument.
    #[test]
    fn argument_kinds_are_checked_against_the_prototype() {
        let proto = prototype("attention", "attention_f32").expect("attention_f32");
        let k = Kernel {
            f: std::ptr::null_mut(),
            proto,
        };
        let (qkv, out, n, h, scale) = (DevPtr::<f32>::null(), DevPtr::<f32>::null(), 1, 2, 0.5f32);
        k.check_args(&kernel_args![qkv, out, n, h, scale]).unwrap();
        // Two arguments swapped: the first mismatch is named.
        let e = k
            .check_args(&kernel_args![qkv, out, n, scale, h])
            .unwrap_err();
        match e {
            Error::Device(DeviceError::ArgumentKind {
                kernel,
                index,
                expected,
                passed,
            }) => {
                assert_eq!((kernel, index), ("attention_f32", 3));
                assert_eq!((expected.as_str(), passed.as_str()), ("int", "float"));
            }
            other => panic!("{other}"),
        }
        // A pointer to the wrong element type.
        let half_ptr = DevPtr::<half::bf16>::null();
        let e = k
            .check_args(&kernel_args![half_ptr, out, n, h, scale])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Device(DeviceError::ArgumentKind { index: 0, .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("__nv_bfloat16*"), "{e}");
        // One argument missing.
        let e = k.check_args(&kernel_args![qkv, out, n, h]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Device(DeviceError::ArgumentCount {
                    expected: 5,
                    passed: 4,
                    ..
                })
            ),
            "{e}"
        );
    }
}
