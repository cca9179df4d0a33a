#!/bin/bash
# The RGB stage (ViT-B/8 at 224², f32 and bf16) of miad against PyTorch's, in pairs run
# back to back, so that each ratio compares two measurements taken a few seconds apart:
# on a shared machine the speed drifts by tens of percent within minutes (see
# bench/results/cpu-rgb-pairs-*.md), which a single pair of runs minutes apart cannot
# tell from a difference between the two.
#
# Usage: bench/reference/rgb_pairs.sh PYTHON [PAIRS] [THREADS]
#   PYTHON   a Python with torch and timm (not a dependency of miad)
#   PAIRS    pairs to run (default 8); THREADS: threads of both (default 2)
# Each pair: PyTorch's timm `vit_base_patch8_224.dino` forward_features, f32 and under
# bf16 autocast (m3dm_torch.py --only-rgb, p50 of 5 after 1 warm-up), then miad's
# `cargo bench --bench vit` part `vit` (p50 of 5 after 1 warm-up, f32 and --precision
# bf16's path). Prints each pair's four times and ratios, then the median ratios.
set -euo pipefail
PY=${1:?usage: rgb_pairs.sh PYTHON [PAIRS] [THREADS]}
PAIRS=${2:-8}
THREADS=${3:-2}
cd "$(dirname "$0")/../.."
cargo bench --bench vit --no-run 2>/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-4s %10s %10s %10s %10s %9s %9s\n' pair torch_f32 miad_f32 torch_bf16 miad_bf16 f32_ratio bf16_ratio
for i in $(seq 1 "$PAIRS"); do
    "$PY" bench/reference/m3dm_torch.py --only-rgb --threads "$THREADS" --repeats 5 --warmup 1 \
        --out "$out/torch.json" > /dev/null 2>&1
    MIAD_BENCH_PARTS=vit MIAD_BENCH_THREADS="$THREADS" cargo bench --bench vit 2>/dev/null \
        > "$out/miad.txt"
    python3 - "$out/torch.json" "$out/miad.txt" "$i" >> "$out/pairs.txt" <<'EOF'
import json, re, sys
torch = json.load(open(sys.argv[1]))["stages_p50_ms"]
text = open(sys.argv[2]).read()
ours = {p: 1e3 * float(re.search(rf"forward_{p}_\d+t: ([0-9.]+) s median", text).group(1))
        for p in ("F32", "Bf16")}
print(sys.argv[3], torch["rgb"], ours["F32"], torch["rgb_bf16"], ours["Bf16"],
      ours["F32"] / torch["rgb"], ours["Bf16"] / torch["rgb_bf16"])
EOF
    tail -1 "$out/pairs.txt" | awk '{printf "%-4s %10.1f %10.1f %10.1f %10.1f %9.3f %9.3f\n", $1, $2, $3, $4, $5, $6, $7}'
done
python3 - "$out/pairs.txt" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
f32 = sorted(float(r[5]) for r in rows)
bf16 = sorted(float(r[6]) for r in rows)
print(f"median ratio over {len(rows)} pairs: f32 {statistics.median(f32):.3f} "
      f"(range {f32[0]:.3f}-{f32[-1]:.3f}), bf16 {statistics.median(bf16):.3f} "
      f"(range {bf16[0]:.3f}-{bf16[-1]:.3f})")
EOF
