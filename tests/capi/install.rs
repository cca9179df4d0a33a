//! The install step for C and C++ users (`pkg/install.sh`): the library, header,
//! pkg-config file and CMake package land under a prefix, and the C example builds
//! from the installed package with `pkg-config` and with CMake's `find_package`, then
//! runs against the installed `libmiad.so.0`.

use crate::fixture;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (CI installs cmake and pkg-config)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The libraries cargo built with this test, copied into `dir`.
fn built_libraries(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for name in ["libmiad.so", "libmiad.a"] {
        let lib = [deps.join(name), deps.parent().unwrap().join(name)]
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} not found next to {}", exe.display()));
        std::fs::copy(&lib, dir.join(name)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn the_c_example_builds_from_the_installed_package_with_pkg_config_and_cmake() {
    let f = fixture::files("install");
    let dir = fixture::tmpdir("install-tree");
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = dir.join("prefix");
    let from = built_libraries(&dir.join("built"));
    run(Command::new(Path::new(ROOT).join("pkg/install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(&from));
    let lib = prefix.join("lib");
    for p in [
        "include/miad.h",
        "lib/libmiad.so.0",
        "lib/libmiad.so",
        "lib/libmiad.a",
        "lib/pkgconfig/miad.pc",
        "lib/cmake/miad/miadConfig.cmake",
        "lib/cmake/miad/miadConfigVersion.cmake",
    ] {
        assert!(prefix.join(p).exists(), "{p} not installed");
    }
    let example = Path::new(ROOT).join("tests/c/example.c");
    let args = [&f.model, &f.bank, &f.other_model];

    // pkg-config
    let pc = |what: &[&str]| {
        run(Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
            .args(what)
            .arg("miad"))
        .trim()
        .to_string()
    };
    assert_eq!(pc(&["--modversion"]), env!("CARGO_PKG_VERSION"));
    let flags = pc(&["--cflags", "--libs"]);
    let exe = dir.join("example_pc");
    run(Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-O1"])
        .arg(&example)
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lm"));
    let out = run(Command::new(&exe).env_remove("LD_LIBRARY_PATH").args(args));
    assert!(out.contains("example: ok"), "{out}");
    let needed = run(Command::new("readelf").arg("-d").arg(&exe));
    assert!(needed.contains("[libmiad.so.0]"), "{needed}");

    // CMake
    let build = dir.join("cmake-build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(Path::new(ROOT).join("tests/c/cmake"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&build));
    for name in ["example", "example_static"] {
        let out = run(Command::new(build.join(name))
            .env_remove("LD_LIBRARY_PATH")
            .args(args));
        assert!(out.contains("example: ok"), "{name}: {out}");
    }
}
