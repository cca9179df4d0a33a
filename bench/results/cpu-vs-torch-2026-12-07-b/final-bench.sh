#!/bin/bash
# The idle comparison with PyTorch (issue 20), the commands of cpu-vs-torch-2026-12-07.md.
set -e
M=/work/main/target/release/miad
D=/work/final-data; R=$D/out
rm -rf $D; mkdir -p $R; cd $D
uptime
$M synth --out data --categories disc --train 10 --validation 0 --test-good 4 --test-bad 4 --size 224
$M model random --preset m3dm --out m3dm.miad
/usr/bin/time -f "fit wall %e s" $M fit --model m3dm.miad --data data/disc --out disc.bank --threads 2 --no-radar --scratch $D
$M model info disc.bank | grep -E "bank|partition"
PY=/work/venv-torch/bin/python3
uptime
$PY /work/main/bench/reference/m3dm_torch.py --threads 2 --repeats 3 --warmup 1 --points 7100 \
    --bank-rows xyz=15870,rgb=23520,fused=94080 --out $R/ref-full.json
uptime
$M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 5 --warmup 1 \
    --out $R/bench-full --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full.json
uptime
$M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 3 --warmup 1 --precision bf16 \
    --out $R/bench-full-bf16 --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full.json
uptime
$M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 3 --warmup 1 --unpruned-search \
    --out $R/bench-full-unpruned --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full.json
uptime
$PY /work/main/bench/reference/m3dm_torch.py --threads 2 --repeats 5 --warmup 1 --points 7100 \
    --bank-rows xyz=528,rgb=784,fused=3136 --out $R/ref-small.json
uptime
$M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 8 --warmup 2 \
    --out $R/bench-small --reference $R/ref-small.json
$M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 8 --warmup 2 --precision bf16 \
    --out $R/bench-small-bf16 --reference $R/ref-small.json
uptime
