#!/bin/bash
# W: the work folder (logs, banks, scratch); default /work/ge-data/ab.
W=${W:-/work/ge-data/ab}; mkdir -p $W
# Usage: groupenc-2026-12-07-fit.sh DATA TAG BIN... : fits DATA with each binary in turn (--threads 2 --no-radar),
# prints the features phase wall time, the process CPU time (user+sys) when the features
# phase ended (the first coreset scratch file appears), and the whole fit's wall and CPU.
DATA=$1; TAG=$2; shift 2
TCK=$(getconf CLK_TCK)
for B in "$@"; do
  name=$(basename $B)
  out=$W/$TAG-$name.bank
  S=$W/s-$TAG; mkdir -p $S
  t0=$(date +%s.%N)
  $B fit --model /work/data-shared/m3dm.miad --data $DATA --out $out --threads 2 --no-radar --scratch $S > $W/$TAG-$name.log 2>&1 &
  pid=$!
  fcpu=""
  while kill -0 $pid 2>/dev/null; do
    if [ -z "$fcpu" ] && ls $S/miad-fit-$pid.proj* >/dev/null 2>&1; then
      read -a st < /proc/$pid/stat; fcpu=$(( ${st[13]} + ${st[14]} )); fsys=${st[14]}; fwall=$(echo "$(date +%s.%N) - $t0" | bc)
    fi
    read -a st < /proc/$pid/stat 2>/dev/null && last=$(( ${st[13]} + ${st[14]} ))
    sleep 0.2
  done
  wait $pid; rc=$?
  t1=$(date +%s.%N)
  echo "$name rc=$rc: features phase $(grep 'phase features' $W/$TAG-$name.log | awk '{print $3}') s wall (polled $fwall s), CPU at its end $(echo "scale=1; $fcpu/$TCK" | bc) s (sys $(echo "scale=2; $fsys/$TCK" | bc) s); whole fit wall $(echo "$t1 - $t0" | bc) s, CPU >= $(echo "scale=1; $last/$TCK" | bc) s; $(grep '^fitted' $W/$TAG-$name.log)"
done
