#!/usr/bin/env bash
# Builds the CUDA test executable (tests/cuda/) and the CUDA bench program (bench/cuda/) here
# (no GPU needed) into .gpu/bin/ (`cuda` and `cuda-bench`), to be carried to the device
# machine and run there by bench/gpu/all.sh:
#
#   bash bench/gpu/build.sh
#   device run, carry [".gpu"], command: bash bench/gpu/all.sh
#
# The kernels are embedded as cubins for sm_87/sm_90/sm_90a (NVRTC from .venv-ci, which
# .ci/run installs), so the device machine needs only its driver.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-ci/bin/python ]; then
  python3 -m venv .venv-ci
  .venv-ci/bin/pip install -q nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12
fi
rm -rf .gpu/bin && mkdir -p .gpu/bin
# Copies the executables of cargo's JSON messages: a test as .gpu/bin/NAME, a bench as
# .gpu/bin/NAME-bench (both targets are called `cuda`).
ship='
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    kind = m.get("target", {}).get("kind")
    if m.get("reason") == "compiler-artifact" and m.get("executable") and kind in (["test"], ["bench"]):
        dst = ".gpu/bin/" + m["target"]["name"] + ("-bench" if kind == ["bench"] else "")
        shutil.copy(m["executable"], dst)
        print("built", dst)
'
cargo test --release --features cuda --no-run --message-format=json --test cuda | python3 -c "$ship"
cargo bench --features cuda --bench cuda --no-run --message-format=json | python3 -c "$ship"
strip .gpu/bin/* 2>/dev/null || true
# Compressed, so that the executables and the working tree stay under the 64 MiB a call
# carries; all.sh unpacks them.
tar -C .gpu -czf .gpu/bin.tar.gz bin && rm -rf .gpu/bin
du -sh .gpu/bin.tar.gz
