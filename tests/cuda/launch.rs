//! The launch checks: every kernel the runtime looks up has a parsed prototype, every
//! prototype has a launch wrapper, and (on the simulated device) a wrong argument list is
//! refused before anything runs, naming the kernel, the argument and both kinds.

use std::path::{Path, PathBuf};

use miad::cuda::device::kernel::{prototype, KERNEL_PROTOTYPES};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("a readable source folder") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The kernel names of every `Kernel::find(module, "name")` in the device code (runtime/cuda,
/// and the device training steps in runtime/fit/device), with the file they are in. A lookup whose name is not a literal is an error: this check could
/// not see it.
fn looked_up_kernels() -> Vec<(String, PathBuf)> {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
    let mut files = Vec::new();
    for dir in ["cuda", "fit/device"] {
        rust_files(&runtime.join(dir), &mut files);
    }
    let mut names = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).expect("a readable source file");
        let mut rest = src.as_str();
        while let Some(at) = rest.find("Kernel::find(") {
            let call = &rest[at + "Kernel::find(".len()..];
            let end = call.find(')').expect("a closed call");
            let args = &call[..end];
            // The definition `pub fn find(module: &Module, name: &str)` is not a lookup.
            if !args.contains("name: &str") {
                let lit = args.split('"').nth(1).unwrap_or_else(|| {
                    panic!(
                        "{}: Kernel::find({args}) without a literal kernel name",
                        f.display()
                    )
                });
                names.push((lit.to_string(), f.clone()));
            }
            rest = &call[end..];
        }
    }
    names
}

#[test]
fn every_kernel_looked_up_has_a_prototype_and_every_prototype_a_lookup() {
    let names = looked_up_kernels();
    // 46 kernels today: fewer found means the scan is broken, not the runtime.
    assert!(names.len() >= 40, "only {} lookups found", names.len());
    for (name, file) in &names {
        assert!(
            KERNEL_PROTOTYPES.iter().any(|p| p.name == name),
            "{}: kernel {name} has no prototype in kernels/*.cu",
            file.display()
        );
    }
    for p in KERNEL_PROTOTYPES {
        assert!(
            names.iter().any(|(n, _)| n == p.name),
            "kernels/{}.cu: {} has no launch wrapper in runtime/cuda or runtime/fit/device",
            p.module,
            p.name
        );
        // Names are unique across modules, so a name finds its one prototype.
        assert_eq!(
            KERNEL_PROTOTYPES
                .iter()
                .filter(|q| q.name == p.name)
                .count(),
            1,
            "{} is defined twice",
            p.name
        );
        assert!(prototype(p.module, p.name).is_some());
    }
}

#[cfg(feature = "cuda-sim")]
mod sim {
    use std::collections::HashMap;

    use miad::cuda::device::kernel::{ArgKind, CType, KernelArg, KERNEL_PROTOTYPES};
    use miad::cuda::device::module::Module;
    use miad::cuda::device::{Kernel, KernelArgs};
    use miad::cuda::ops::maps::BlurWeights;
    use miad::cuda::{DevPtr, Device};
    use miad::{DeviceError, Error, Misuse};

    /// For every kernel of `kernels/*.cu`, on the simulated device: a list whose first
    /// argument has the wrong kind, and a list one argument too long, are refused with
    /// the typed error before the kernel runs (its pointers are null: a launch that ran
    /// would crash, not return the error).
    #[test]
    fn wrong_argument_lists_are_refused_for_every_kernel() {
        let dev = Device::simulated().expect("the simulated device opens (feature cuda-sim)");
        let mut modules: HashMap<&str, Module> = HashMap::new();
        let (pf, pi, x) = (DevPtr::<f32>::null(), DevPtr::<i32>::null(), 0i32);
        for p in KERNEL_PROTOTYPES {
            if !modules.contains_key(p.module) {
                modules.insert(p.module, Module::load(&dev, p.module).unwrap());
            }
            let k = Kernel::find(&modules[p.module], p.name).unwrap();
            assert_eq!(k.prototype().params, p.params);
            let mut wrong = KernelArgs::new();
            let passed = if p.params[0] == ArgKind::Ptr(CType::Float) {
                wrong.push(&pi);
                ArgKind::Ptr(CType::Int)
            } else {
                wrong.push(&pf);
                ArgKind::Ptr(CType::Float)
            };
            for _ in 1..p.params.len() {
                wrong.push(&x);
            }
            let r = unsafe { dev.launch(k, (1, 1, 1), (32, 1, 1), 0, &mut wrong) };
            match r {
                Err(Error::Device(DeviceError::ArgumentKind {
                    kernel,
                    index,
                    expected,
                    passed: got,
                })) => {
                    assert_eq!((kernel, index), (p.name, 0));
                    assert_eq!(expected, p.params[0].to_string());
                    assert_eq!(got, passed.to_string());
                }
                other => panic!("{}: {other:?}", p.name),
            }
            let mut long = KernelArgs::new();
            for _ in 0..=p.params.len() {
                long.push(&x);
            }
            let r = unsafe { dev.launch_cluster(k, (1, 1, 1), (32, 1, 1), 0, 1, &mut long) };
            assert!(
                matches!(
                    &r,
                    Err(Error::Device(DeviceError::ArgumentCount { kernel, expected, passed }))
                        if *kernel == p.name && *expected == p.params.len() && *passed == expected + 1
                ),
                "{}: {r:?}",
                p.name
            );
        }
    }

    /// A struct passed under the right name but with another layout: the kinds agree, the
    /// simulated device compares every argument's size with the compiled kernel's.
    #[test]
    fn a_struct_of_the_wrong_size_is_refused_on_the_simulated_device() {
        #[repr(C)]
        struct TruncatedBlur([f32; 4]);
        // SAFETY (of the test): never launched, refused by the size check.
        unsafe impl KernelArg for TruncatedBlur {
            const KIND: ArgKind = ArgKind::Value(CType::Struct("BlurWeights"));
        }
        let dev = Device::simulated().expect("the simulated device opens (feature cuda-sim)");
        let m = Module::load(&dev, "maps").unwrap();
        let k = Kernel::find(&m, "maps_blur_h").unwrap();
        let (present, s, p) = (1i32, 8i32, DevPtr::<f32>::null());
        let bad = TruncatedBlur([0.0; 4]);
        let r = unsafe {
            dev.launch(
                k,
                (1, 1, 1),
                (32, 1, 1),
                0,
                &mut miad::kernel_args![present, s, bad, p, p],
            )
        };
        match r {
            Err(Error::Device(DeviceError::Misuse { kind, detail })) => {
                assert_eq!(kind, Misuse::LaunchArguments);
                assert!(
                    detail.contains("maps_blur_h") && detail.contains("16"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The real struct passes the prototype check with its own size.
        let w = BlurWeights::new(4.0);
        let ok = miad::kernel_args![present, s, w, p, p];
        assert_eq!(ok.sizes()[2], std::mem::size_of::<BlurWeights>());
        assert!(k.check_args(&ok).is_ok());
    }
}
