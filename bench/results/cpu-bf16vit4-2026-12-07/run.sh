#!/bin/bash
# Old (main at 3ea0eb2: vit-base; vit-exp3 with MIAD_BF16_VARIANTS=0 runs main's bf16 GEMM
# code for the dense part) against new (vit-new4, branch bf16gemm), alternating.
out=/work/bf16gemm-bins/final
log() { echo "== $1 $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/log.txt; }
for i in 1 2 3; do
  log "vit old $i"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=vit ./vit-base --bench > $out/vit-old-$i.txt 2>&1
  log "vit new $i"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=vit ./vit-new4 --bench > $out/vit-new-$i.txt 2>&1
  log "dense old $i"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=bf16dense MIAD_BF16_VARIANTS=0 MIAD_BF16_ROUNDS=1 ./vit-exp3 --bench > $out/dense-old-$i.txt 2>&1
  log "dense new $i"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=bf16dense MIAD_BENCH_ROUNDS=1 ./vit-new4 --bench > $out/dense-new-$i.txt 2>&1
done
log "block old"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=block ./vit-base --bench > $out/block-old.txt 2>&1
log "block new"; MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=block ./vit-new4 --bench > $out/block-new.txt 2>&1
echo "done $(date +%T)" >> $out/log.txt
