#!/bin/bash
# Usage: bench.sh DATA TAG BIN... : fits DATA with each binary in turn (--threads 2 --no-radar),
# prints the features phase wall time, the process CPU time (user+sys) when the features
# phase ended (the first coreset scratch file appears), and the whole fit's wall and CPU.
DATA=$1; TAG=$2; shift 2
TCK=$(getconf CLK_TCK)
for B in "$@"; do
  name=$(basename $B)
  out=/work/ff-data/$TAG-$name.bank
  S=/work/ff-data/s-$TAG; mkdir -p $S
  t0=$(date +%s.%N)
  $B fit --model /work/data-shared/m3dm.miad --data $DATA --out $out --threads 2 --no-radar --scratch $S > /work/ff-data/$TAG-$name.log 2>&1 &
  pid=$!
  fcpu=""
  while kill -0 $pid 2>/dev/null; do
    if [ -z "$fcpu" ] && ls $S/miad-fit-$pid.proj* >/dev/null 2>&1; then
      read -a st < /proc/$pid/stat; fcpu=$(( ${st[13]} + ${st[14]} )); fwall=$(echo "$(date +%s.%N) - $t0" | bc)
    fi
    read -a st < /proc/$pid/stat 2>/dev/null && last=$(( ${st[13]} + ${st[14]} ))
    sleep 0.2
  done
  wait $pid; rc=$?
  t1=$(date +%s.%N)
  echo "$name rc=$rc: features phase $(grep 'phase features' /work/ff-data/$TAG-$name.log | awk '{print $3}') s wall (polled $fwall s), CPU at its end $(echo "scale=1; $fcpu/$TCK" | bc) s; whole fit wall $(echo "$t1 - $t0" | bc) s, CPU >= $(echo "scale=1; $last/$TCK" | bc) s; $(grep '^fitted' /work/ff-data/$TAG-$name.log)"
done
