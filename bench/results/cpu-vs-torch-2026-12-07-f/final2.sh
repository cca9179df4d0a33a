#!/bin/bash
# Idle comparison with PyTorch (issue 20): 3 rounds, full-scale banks; then the 300-part fit.
set -e
M=/work/main/target/release/miad; PY=/work/venv-torch/bin/python3
D=/work/final-data; R=$D/out
rm -rf $D; mkdir -p $R; cd $D
uptime
$M synth --out data --categories disc --train 10 --validation 0 --test-good 4 --test-bad 4 --size 224 > /dev/null
$M model random --preset m3dm --out m3dm.miad > /dev/null
$M fit --model m3dm.miad --data data/disc --out disc.bank --threads 2 --no-radar --scratch $D | tail -3
for i in 1 2 3; do
  uptime
  $PY /work/main/bench/reference/m3dm_torch.py --threads 2 --repeats 3 --warmup 1 --points 7100 \
      --bank-rows xyz=15870,rgb=23520,fused=94080 --out $R/ref-full-$i.json > /dev/null
  $M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 5 --warmup 1 \
      --out $R/bench-full-$i --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full-$i.json
  $M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 3 --warmup 1 --precision bf16 \
      --out $R/bench-full-bf16-$i --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full-$i.json
done
uptime
