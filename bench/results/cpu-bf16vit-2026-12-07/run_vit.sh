#!/bin/bash
# The ViT forward (f32 and bf16) and the GEMM shapes, old (main fb46033) and new (branch bf16vit), back to back.
B=/work/bf16vit-old
export MIAD_BENCH_THREADS=2
for pass in 1 2; do
  for v in old new; do
    echo "== vit $v pass $pass $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    MIAD_BENCH_PARTS=vit $B/vit-$v --bench 2>&1 | grep -E "vit_b8|bf16 vs"
  done
done
for v in old new; do
  echo "== gemm $v $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  MIAD_BENCH_PARTS=gemm $B/vit-$v --bench 2>&1 | grep -E "^gemm"
done
echo "== block new $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
MIAD_BENCH_PARTS=block $B/vit-new --bench 2>&1
