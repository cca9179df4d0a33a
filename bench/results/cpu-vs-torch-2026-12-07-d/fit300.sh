#!/bin/bash
# The full-scale fit: 300 synthetic parts, M3DM preset with random weights, 2 threads.
set -e
M=/work/main/target/release/miad
cd /work/fit300
[ -d data ] || $M synth --out data --categories disc --train 300 --validation 0 --test-good 1 --test-bad 1 --size 224
[ -f m3dm.miad ] || $M model random --preset m3dm --out m3dm.miad
uptime
/usr/bin/time -v $M fit --model m3dm.miad --data data/disc --out disc300.bank --threads 2 --no-radar --scratch /work/fit300 2>&1 | grep -v "^\s*\(Average\|Exit\|Swaps\|File\|Socket\|Signals\|Page size\|Minor\|Major\|Voluntary\|Involuntary\)"
uptime
