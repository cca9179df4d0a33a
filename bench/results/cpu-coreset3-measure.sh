#!/bin/bash
# old (main fb2d637) vs new (coreset3) in one script, alternating; CPU seconds.
P=/work/data-shared/proj60/fused-188160x299-m18816.f32
for r in 1 2; do
  for b in /work/cs3-base/coreset /work/cs3-data/coreset-new; do
    /usr/bin/time -f "$b round $r: cpu %U+%S s wall %e s" $b $P 2>&1
  done
done
for r in 1 2; do
  echo "old round $r"; MIAD_TABLE_BANK=/work/data-shared/d60.bank MIAD_TABLE_ROUNDS=1 /work/cs3-base/neighbours
  echo "new round $r"; MIAD_TABLE_BANK=/work/data-shared/d60.bank MIAD_TABLE_ROUNDS=1 /work/cs3-data/neighbours-new
done
