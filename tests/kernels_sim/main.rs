//! Every CUDA kernel of kernels/*.cu, executed on the CPU by the SIMT emulator of
//! kernels/sim and compared with the CPU stage it replaces.
//!
//! The emulated kernels are compiled with AddressSanitizer, whose runtime must be the first
//! library loaded: this binary (harness = false) re-runs itself with `LD_PRELOAD` set to
//! g++'s libasan, so every test buffer is an exact-size ASan allocation and any kernel
//! access outside the buffers the host passed is reported as a launch error.
//!
//! Usage as usual: `cargo test --test kernels_sim [-- FILTER...] [--list]`.

#[path = "../common/oracles.rs"]
mod oracles;

mod attention;
mod bank;
mod coreset;
mod embed;
mod fps;
mod fusion;
mod knn;
mod maps;
mod misc;
mod point;
mod preprocess;
mod selftest;
mod signatures;
mod sim;
mod train;
mod util;

use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::time::Instant;

/// A test: name and body (Err = failure message).
pub type Test = (&'static str, fn() -> Result<(), String>);

fn all_tests() -> Vec<Test> {
    let mut v: Vec<Test> = Vec::new();
    v.extend(selftest::TESTS);
    v.extend(signatures::TESTS);
    v.extend(knn::TESTS);
    v.extend(fps::TESTS);
    v.extend(fusion::TESTS);
    v.extend(coreset::TESTS);
    v.extend(misc::TESTS);
    v.extend(embed::TESTS);
    v.extend(bank::TESTS);
    v.extend(attention::TESTS);
    v.extend(maps::TESTS);
    v.extend(point::TESTS);
    v.extend(preprocess::TESTS);
    v.extend(train::TESTS);
    v
}

fn asan_runtime() -> Option<String> {
    let out = Command::new("g++")
        .arg("-print-file-name=libasan.so")
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::Path::new(&p).is_absolute().then_some(p)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("MIAD_SIM_CHILD").is_none() {
        let Some(asan) = asan_runtime() else {
            eprintln!("kernels_sim: g++ with libasan is required (apt-get install g++)");
            return ExitCode::FAILURE;
        };
        let exe = std::env::current_exe().expect("current exe");
        let status = Command::new(exe)
            .args(&args)
            .env("MIAD_SIM_CHILD", "1")
            .env("LD_PRELOAD", asan)
            .env(
                "ASAN_OPTIONS",
                "detect_leaks=0:halt_on_error=0:detect_stack_use_after_return=0:\
                 allocator_may_return_null=1:verify_asan_link_order=0",
            )
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
            .status()
            .expect("re-running the test binary under AddressSanitizer");
        return if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let list = args.iter().any(|a| a == "--list");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let tests: Vec<Test> = all_tests()
        .into_iter()
        .filter(|(n, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        *n == f.as_str()
                    } else {
                        n.contains(f.as_str())
                    }
                })
        })
        .collect();
    if list {
        for (n, _) in &tests {
            println!("{n}: test");
        }
        return ExitCode::SUCCESS;
    }
    let t0 = Instant::now();
    // Build first (once), so the tests' timings do not include g++.
    let _ = sim::sim();
    println!("\nrunning {} tests", tests.len());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(tests.len().max(1));
    let queue = Mutex::new(tests.into_iter().rev().collect::<Vec<_>>());
    let failures = Mutex::new(Vec::<(String, String)>::new());
    let passed = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((name, f)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let r = std::panic::catch_unwind(f).unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into()))
                });
                let dt = t.elapsed().as_secs_f64();
                match r {
                    Ok(()) => {
                        println!("test {name} ... ok ({dt:.2} s)");
                        *passed.lock().unwrap() += 1;
                    }
                    Err(e) => {
                        println!("test {name} ... FAILED ({dt:.2} s)");
                        failures.lock().unwrap().push((name.to_string(), e));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    for (n, e) in &failures {
        println!("\n---- {n} ----\n{e}");
    }
    let passed = *passed.lock().unwrap();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; finished in {:.1} s\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
