#!/usr/bin/env bash
# Every CUDA check of miad in one device call (see build.sh): parity tests, the bench
# program (bench/cuda/) and compute-sanitizer memcheck/racecheck/synccheck on the small
# cases (MIAD_SANITIZE=1). Logs go to $OUT (or ./gpu-out); a summary table is printed last.
# Each step has its own time limit; a phase may be named to split the work over calls:
#   bash bench/gpu/all.sh [tests] [bench] [sanitize]     (default: all three)
# The same kernels run on the CPU in CI (cargo test --test kernels_sim, kernels/sim): that
# emulator cannot see memory-ordering races, which racecheck/synccheck here can.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
bin=.gpu/bin
[ -d "$bin" ] || tar -C .gpu -xzf .gpu/bin.tar.gz
summary=()
step() { # name, limit_s, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$? t1=$(date +%s)
  local res=$(grep -E '^test result|^bench result|ERROR SUMMARY|RACECHECK SUMMARY' "$out/$name.log" | tail -1)
  summary+=("$(printf '%-34s rc=%-3s %5ss  %s' "$name" "$rc" "$((t1 - t0))" "$res")")
}
# cudarc (built for CUDA 12) looks cuBLASLt up as libcublasLt.so / .so.12; the device image
# has CUDA 13's (in the PyTorch venv or the toolkit): offer it under the unversioned name.
lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.1[0-9]* 2>/dev/null | head -1)
[ -z "$lt" ] && lt=$(python3 -c 'import glob,site; print((sorted(glob.glob(site.getsitepackages()[0]+"/nvidia/cu*/lib/libcublasLt.so.*"))+sorted(glob.glob(site.getsitepackages()[0]+"/nvidia/cublas/lib/libcublasLt.so.*"))+[""])[0])' 2>/dev/null)
if [ -n "$lt" ]; then
  mkdir -p /tmp/miad-lib && ln -sf "$lt" /tmp/miad-lib/libcublasLt.so
  export LD_LIBRARY_PATH=/tmp/miad-lib:$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "cuBLASLt: $lt"
else
  echo "cuBLASLt: not found (the GEMM and forward tests will SKIP)"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv \
  > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
phases=${*:-tests bench sanitize}
# One executable (tests/cuda/), run one module at a time so each has its own limit and log.
modules="bank coreset embed engine forward gemm maps point point_branch transformer"
has() { [[ " $phases " == *" $1 "* ]]; }
if has tests; then
  for n in $modules; do
    step "cuda_$n.test" 150 "$bin/cuda" --test-threads=1 --nocapture "$n::"
  done
fi
if has bench; then
  # Every benchmark of bench/cuda/ in one step (`$bin/cuda-bench NAME...` runs a few).
  step "cuda.bench" 600 "$bin/cuda-bench"
fi
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if ! has sanitize; then
  :
elif [ -n "$CS" ]; then
  for n in $modules; do
    for tool in memcheck racecheck synccheck; do
      step "cuda_$n.$tool" 90 env MIAD_SANITIZE=1 "$CS" --tool $tool --error-exitcode 9 "$bin/cuda" \
        --test-threads=1 "$n::"
    done
  done
else
  summary+=("compute-sanitizer: not found")
fi
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
