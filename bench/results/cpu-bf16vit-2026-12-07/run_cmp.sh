#!/bin/bash
# PyTorch's RGB stage (f32 and bf16 autocast) and miad's bf16 RGB stage, old and new, back to back.
set -e
cd /tmp/bf16vit
uptime
/work/venv-torch/bin/python /work/wt-bf16vit/bench/reference/m3dm_torch.py --threads 2 --repeats 5 --warmup 1 --points 7100 \
    --bank-rows xyz=528,rgb=784,fused=3136 --out res2/ref-small.json > res2/torch.log 2>&1
uptime
for v in old new; do
  /work/bf16vit-old/miad-$v bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 8 --warmup 2 \
      --out res2/bench-$v-bf16 --reference res2/ref-small.json --precision bf16 > res2/miad-$v-bf16.log 2>&1
  uptime
done
for v in old new; do
  /work/bf16vit-old/miad-$v bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 8 --warmup 2 \
      --out res2/bench-$v-bf16-2 --reference res2/ref-small.json --precision bf16 > res2/miad-$v-bf16-2.log 2>&1
  uptime
done
