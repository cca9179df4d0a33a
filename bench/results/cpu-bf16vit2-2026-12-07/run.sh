#!/bin/bash
# bf16 ViT before/after (issue 20): base = main at 4819a4d, new = branch bf16vit2; binaries
# copied aside before the runs. Alternating, so that both see the same share of the machine.
set -e
D=/work/data-shared; O=/tmp/bv2-final; PY=/work/venv-torch/bin/python3
miad_rgb() {  # $1 = base|new, $2 = output tag, rest: extra options
  local b=$1 tag=$2; shift 2
  /tmp/bv2-$b/miad bench --model $D/m3dm.miad --bank $D/disc.bank --data $D/data/disc --threads 2 \
     --parts 3 --warmup 1 --precision bf16 --out $O/bench-$tag "$@" > $O/bench-$tag.txt 2>&1
  echo "$tag $(date +%T) load $(cut -d' ' -f1 /proc/loadavg): $(grep -E '^rgb ' $O/bench-$tag.txt)"
}
for i in 1 2 3; do miad_rgb base base-$i; miad_rgb new new-$i; done
for i in 1 2; do for b in base new; do
  echo "vit $b-$i $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  MIAD_BENCH_THREADS=2 MIAD_BENCH_PARTS=vit /tmp/bv2-$b/vit --bench > $O/vit-$b-$i.txt 2>&1
  grep -E "Bf16_2t|bf16 vs f32" $O/vit-$b-$i.txt
done; done
echo "torch $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
$PY /work/wt-bf16vit2/bench/reference/m3dm_torch.py --threads 2 --repeats 3 --warmup 1 --points 7100 \
    --bank-rows xyz=528,rgb=784,fused=3136 --out $O/ref-small.json > $O/ref-small.txt 2>&1
miad_rgb new new-ref --reference $O/ref-small.json
miad_rgb base base-ref --reference $O/ref-small.json
echo "done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
