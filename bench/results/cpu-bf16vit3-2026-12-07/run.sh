#!/bin/bash
# Old (main at fb2d637, its vit bench built before any change) against new (this branch),
# alternating, on the shared machine. Run from the worktree root.
# BASE, NEW: the two vit bench binaries (copied outside the target folder).
out=bench/results/cpu-bf16vit3-2026-12-07
run() { # part rounds
  for i in $(seq "$2"); do
    for b in base new; do
      bin=$BASE; [ $b = new ] && bin=$NEW
      echo "== $1 $b $i $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/log.txt
      MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=$1 $bin --bench > $out/$1-$b-$i.txt 2>&1
    done
  done
}
run vit 4
run block 2
echo "done $(date +%T)" >> $out/log.txt
