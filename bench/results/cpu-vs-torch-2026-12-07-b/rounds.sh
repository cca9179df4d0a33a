#!/bin/bash
# Two more rounds of the full-scale comparison (reference, then miad f32 and bf16), to see the spread.
set -e
M=/work/main/target/release/miad; PY=/work/venv-torch/bin/python3
cd /work/final-data; R=out
for i in 2 3; do
  uptime
  $PY /work/main/bench/reference/m3dm_torch.py --threads 2 --repeats 3 --warmup 1 --points 7100 \
      --bank-rows xyz=15870,rgb=23520,fused=94080 --out $R/ref-full-$i.json > /dev/null
  $M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 5 --warmup 1 \
      --out $R/bench-full-$i --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full-$i.json | grep -E "^\| (rgb|whole|score)"
  $M bench --model m3dm.miad --bank disc.bank --data data/disc --threads 2 --parts 3 --warmup 1 --precision bf16 \
      --out $R/bench-full-bf16-$i --bank-rows xyz=15870,rgb=23520,fused=94080 --reference $R/ref-full-$i.json | grep -E "^\| (rgb|whole|score)"
done
uptime
