#!/bin/bash
# alt.sh OUTDIR ROUNDS BIN_A BIN_B: the vit part, A and B alternating.
out=$1; rounds=$2; a=$3; b=$4
for i in $(seq $rounds); do
  for bin in $a $b; do
    name=$(basename $bin)
    echo "== $name $i $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/log.txt
    MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=vit $bin --bench > $out/vit-$name-$i.txt 2>&1
  done
done
echo "done $(date +%T)" >> $out/log.txt
