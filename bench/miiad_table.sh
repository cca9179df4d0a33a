#!/usr/bin/env bash
# The MIIAD table of the README ("Training RADAR's fusion"): one synthetic category, the
# `small` preset with random weights, missing rates 0/30/50/70 % of both modalities (half
# the incomplete parts lack the cloud, half the image; RADAR's protocol, in training and
# in testing), for three fusions: the model's own (random, as converted), M3DM's UFF
# trained by miad, RADAR's adaptive instruction fusion trained by miad.
#
#   bench/miiad_table.sh [OUT]        (MIAD=path/to/miad to use another binary)
#
# Minutes on 2 cores. Writes OUT/{data,*.miad,banks-*} and OUT/table-*.txt.
set -euo pipefail
MIAD=${MIAD:-target/release/miad}
OUT=${1:-miiad-out}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
"$MIAD" synth --out "$OUT/data" --categories disc --train 24 --validation 0 \
    --test-good 20 --test-bad 20 --size 96 --seed 1
"$MIAD" model random --preset small --seed 9 --out "$OUT/random.miad"
"$MIAD" train-fusion --model "$OUT/random.miad" --data "$OUT/data/disc" --method uff \
    --out "$OUT/uff.miad" --epochs 20 --batch 4 --patches 64 --seed 1 --threads "$THREADS" \
    | tee "$OUT/train-uff.txt"
"$MIAD" train-fusion --model "$OUT/random.miad" --data "$OUT/data/disc" --method radar \
    --out "$OUT/radar.miad" --epochs 20 --batch 4 --patches 64 --seed 1 --threads "$THREADS" \
    --radar-dim 64 --radar-depth 4 --radar-heads 4 --instruction-len 16 \
    | tee "$OUT/train-radar.txt"
for m in random uff radar; do
    "$MIAD" radar --model "$OUT/$m.miad" --data "$OUT/data/disc" --rates 0.3,0.5,0.7 \
        --drop both --seed 2 --threads "$THREADS" --out "$OUT/banks-$m" \
        | tee "$OUT/table-$m.txt"
done
