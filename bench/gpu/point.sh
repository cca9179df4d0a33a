#!/bin/bash
# Runs the CUDA point-kernel tests, the timing report and compute-sanitizer on a GPU machine.
# Usage (from the folder holding the test executable `cuda_point`): bash point.sh OUTDIR
# Build here first: cargo test --features cuda --test cuda_point --no-run (with .venv-ci
# present so the cubins are embedded), then copy the executable next to this script.
set -o pipefail
out=${1:-.}
T=./cuda_point
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee "$out/gpu.txt"
echo "== tests"
timeout 200 $T --nocapture --test-threads=1 2>&1 | tee "$out/test.log"
echo "== bench"
timeout 90 $T --ignored bench_point_branch --nocapture --test-threads=1 2>&1 | tee "$out/bench.log"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$CS" ]; then
  for tool in memcheck racecheck; do
    echo "== $tool"
    MIAD_SANITIZE=1 timeout 120 "$CS" --tool $tool --error-exitcode 9 $T --test-threads=1 \
      fps_and_knn preprocess_and_alignment group_encoder 2>&1 | tail -40 | tee "$out/$tool.log"
    echo "$tool exit: $?"
  done
else
  echo "no compute-sanitizer"
fi
