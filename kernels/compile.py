#!/usr/bin/env python3
"""Compile every kernels/*.cu with NVRTC into cubins, and refuse register spills.

Uses only the Python standard library and ctypes. NVRTC comes from the PyPI wheel
`nvidia-cuda-nvrtc-cu12`, the CUDA headers (cuda_fp16.h, ...) from
`nvidia-cuda-runtime-cu12`, both installed in a virtual environment:

    python3 -m venv .venv-ci
    .venv-ci/bin/pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12

Usage:
    python3 kernels/compile.py --check [--venv DIR]      # CI: compile, report, fail on spills
    python3 kernels/compile.py --out DIR [--venv DIR]    # also write <name>.sm_XX.cubin

The venv is taken from --venv, else $MIAD_NVRTC_VENV, else ./.venv-ci. Exit status: 0 on
success, 1 on a compile error or a spill, 2 when no NVRTC can be found (build.rs then
embeds the sources for run-time compilation instead).
"""

import argparse
import ctypes
import glob
import os
import re
import sys

ARCHS = ["sm_87", "sm_90", "sm_90a"]
HERE = os.path.dirname(os.path.abspath(__file__))


def find_nvidia_dir(venv):
    pattern = os.path.join(venv, "lib", "python3*", "site-packages", "nvidia")
    hits = sorted(glob.glob(pattern))
    return hits[0] if hits else None


def load_nvrtc(nvidia):
    libdir = os.path.join(nvidia, "cuda_nvrtc", "lib")
    cands = sorted(glob.glob(os.path.join(libdir, "libnvrtc.so*")))
    cands = [c for c in cands if "builtins" not in c and ".alt." not in c]
    if not cands:
        return None
    # The builtins library sits next to libnvrtc; preload it so the loader finds it.
    for b in sorted(glob.glob(os.path.join(libdir, "libnvrtc-builtins.so*"))):
        if ".alt." not in b:
            try:
                ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
    lib = ctypes.CDLL(cands[0])
    vp = ctypes.c_void_p
    sz = ctypes.POINTER(ctypes.c_size_t)
    lib.nvrtcCreateProgram.argtypes = [
        ctypes.POINTER(vp), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcCompileProgram.argtypes = [vp, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcGetProgramLogSize.argtypes = [vp, sz]
    lib.nvrtcGetProgramLog.argtypes = [vp, ctypes.c_char_p]
    lib.nvrtcGetCUBINSize.argtypes = [vp, sz]
    lib.nvrtcGetCUBIN.argtypes = [vp, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(vp)]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return lib


def read_source(path):
    """The .cu text with `#include "common.cuh"` (and other local headers) inlined, so
    NVRTC needs no file-system access to kernels/ and build.rs can embed the same text."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r'\s*#include\s+"([^"]+)"', line)
            if m:
                inc = os.path.join(os.path.dirname(path), m.group(1))
                out.append(f"// ---- begin {m.group(1)}\n")
                out.append(read_source(inc))
                out.append(f"// ---- end {m.group(1)}\n")
            else:
                out.append(line)
    return "".join(out)


def compile_one(lib, name, src, arch, include):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), (name + ".cu").encode(),
                                0, None, None)
    if rc != 0:
        return None, f"nvrtcCreateProgram: {lib.nvrtcGetErrorString(rc).decode()}"
    opts = [f"--gpu-architecture={arch}", "-std=c++17", f"--include-path={include}",
            "--ptxas-options=-v", "-default-device",
            "-lineinfo"]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    cubin = None
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        cb = ctypes.create_string_buffer(n.value)
        if lib.nvrtcGetCUBIN(prog, cb) == 0:
            cubin = cb.raw[: n.value]
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if rc != 0:
        return None, f"compile error ({lib.nvrtcGetErrorString(rc).decode()}):\n{log}"
    return cubin, log


def parse_report(log):
    """[(kernel, registers, stack bytes, spill stores, spill loads, smem)] from ptxas -v."""
    rows = []
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = {"kernel": m.group(1), "regs": 0, "stack": 0, "spill_st": 0,
                   "spill_ld": 0, "smem": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            if m2:
                cur["smem"] = int(m2.group(1))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compile and report only")
    ap.add_argument("--out", help="write <name>.<arch>.cubin here")
    ap.add_argument("--venv", help="venv holding the nvidia NVRTC and runtime wheels")
    ap.add_argument("--kernels", default=HERE, help="folder of the .cu files")
    args = ap.parse_args()
    if not args.check and not args.out:
        ap.error("give --check or --out DIR")

    venv = args.venv or os.environ.get("MIAD_NVRTC_VENV") or os.path.join(os.getcwd(), ".venv-ci")
    nvidia = find_nvidia_dir(venv)
    lib = load_nvrtc(nvidia) if nvidia else None
    include = os.path.join(nvidia, "cuda_runtime", "include") if nvidia else ""
    if lib is None or not os.path.isdir(include):
        print(f"compile.py: no NVRTC and CUDA headers under {venv} "
              "(pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12)", file=sys.stderr)
        return 2
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} from {nvidia}")

    sources = sorted(glob.glob(os.path.join(args.kernels, "*.cu")))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    failures = []
    for path in sources:
        name = os.path.splitext(os.path.basename(path))[0]
        src = read_source(path)
        for arch in ARCHS:
            cubin, log = compile_one(lib, name, src, arch, include)
            if cubin is None:
                failures.append(f"{name} {arch}: {log}")
                print(f"FAIL {name} {arch}\n{log}")
                continue
            for line in log.splitlines():
                if "warning" in line.lower():
                    print(f"  {name} {arch}: {line.strip()}")
            for r in parse_report(log):
                bad = r["spill_st"] or r["spill_ld"] or r["stack"]
                flag = "SPILL" if bad else "ok"
                print(f"{flag:5} {arch:7} {r['kernel'][:48]:48} regs {r['regs']:3} "
                      f"smem {r['smem']:6} stack {r['stack']:4} spill st/ld "
                      f"{r['spill_st']}/{r['spill_ld']}")
                if bad:
                    failures.append(f"{name} {arch} {r['kernel']}: stack {r['stack']} "
                                    f"spill {r['spill_st']}/{r['spill_ld']}")
            if args.out:
                with open(os.path.join(args.out, f"{name}.{arch}.cubin"), "wb") as f:
                    f.write(cubin)
    if failures:
        print(f"\n{len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print("  " + f.splitlines()[0], file=sys.stderr)
        return 1
    print(f"{len(sources)} kernel file(s) x {len(ARCHS)} archs: no errors, no spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
