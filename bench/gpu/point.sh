#!/bin/bash
# Runs the CUDA point-kernel tests, the timing report and compute-sanitizer on a GPU machine.
# Usage (from the folder holding the test executable `cuda_point`): bash point.sh OUTDIR
# Build here first: cargo test --features cuda --test cuda_point --no-run (with .venv-ci
# present so the cubins are embedded), then copy the executable next to this script.
#
# The parity tests run every FPS kind (v1, v2 with cluster barrier, v2 with mbarrier; v2 with
# clusters of 16 and of 8 when the device takes 16) and both kNN kinds against the CPU
# references and against each other; the bench times v1 and v2 side by side in one process
# (random and scan-ordered clouds), with kNN bandwidth as a fraction of a dtod copy.
set -o pipefail
out=${1:-.}
T=./cuda_point
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee "$out/gpu.txt"
echo "== tests"
timeout 300 $T --nocapture --test-threads=1 2>&1 | tee "$out/test.log"
echo "tests exit: $?"
echo "== bench"
timeout 150 $T --ignored bench_point_branch --nocapture --test-threads=1 2>&1 | tee "$out/bench.log"
echo "bench exit: $?"
# Time the same binary twice: differences below the run-to-run spread are noise.
timeout 150 $T --ignored bench_point_branch --nocapture --test-threads=1 2>&1 | grep -E "^(fps|knn|point)" | tee "$out/bench2.log"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$CS" ]; then
  for tool in memcheck synccheck racecheck; do
    echo "== $tool"
    MIAD_SANITIZE=1 timeout 150 "$CS" --tool $tool --error-exitcode 9 $T --test-threads=1 \
      fps_and_knn preprocess_and_alignment group_encoder 2>&1 | tail -40 | tee "$out/$tool.log"
    echo "$tool exit: $?"
  done
else
  echo "no compute-sanitizer"
fi
