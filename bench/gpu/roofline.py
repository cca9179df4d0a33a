#!/usr/bin/env python3
"""Roofline of miad's per-part device path (issue 18): FLOP, compulsory bytes, the floor on an
H100 SXM and on a Jetson AGX Orin, a target and the measured H100 time where one exists.

The model sizes are read from runtime/config.rs (`VitConfig::base8`, `PointConfig::m3dm`,
`FusionConfig::m3dm`), so the table follows the code. The bank sizes are those of a category
fitted on `--parts` parts with a coreset ratio of 0.1 (rgb 784 and fused 3136 patches a part;
xyz: the non-background rows, 15 870 for 300 parts, scaled linearly).

    python3 bench/gpu/roofline.py                       # print the tables
    python3 bench/gpu/roofline.py --update bench/gpu/ROOFLINE.md   # rewrite the marked section
    python3 bench/gpu/roofline.py --check bench/gpu/ROOFLINE.md    # exit 1 when stale

Floors: max(FLOP / the unit's peak, bytes / memory bandwidth, a latency floor where the kernel
is a chain of dependent steps). Targets: the floor divided by an assumed achievable fraction
(EFFICIENCY below) unless a row says otherwise. Every peak is named with its source.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- roofline:begin -->", "<!-- roofline:end -->"

# Peaks (FLOP/s, bytes/s). H100 SXM 80GB: bf16 dense measured in bench/results/cuda-tx-2026-11-23.md
# (cuBLASLt 8192^3, 791 TFLOP/s; the datasheet says 989); HBM3 3.35 TB/s and FP32 67 TFLOP/s
# from the datasheet (measured device copy: 2 991 GB/s, bench/results/cuda-point-2026-11-23.md).
# Jetson AGX Orin 64GB (sm_87, Jetson AGX Orin technical brief and module datasheet): 16 SMs,
# 2048 CUDA cores at 1.3 GHz = 5.3 TFLOP/s FP32, 64 tensor cores = 170 sparse INT8 TOPS, i.e.
# 42.5 TFLOP/s dense bf16 (sparse/2, INT8/2), LPDDR5 204.8 GB/s.
DEVICES = {
    "H100": {"bf16": 791e12, "fp32": 67e12, "bw": 3.35e12, "sms": 132, "clock": 1.98e9},
    "Orin": {"bf16": 42.5e12, "fp32": 5.3e12, "bw": 204.8e9, "sms": 16, "clock": 1.3e9},
}
# Achievable fractions assumed for the targets (not measured): tensor-core GEMMs, fused
# attention, bandwidth-bound kernels.
EFFICIENCY = {"bf16": 0.7, "attn": 0.5, "fp32": 0.6, "mem": 0.6}
# Latency model of one dependent step (a block reduction plus one cluster barrier, or one
# grid-wide exchange): ~600 cycles on an H100 cluster; on Orin a single block whose points
# stream from L2 each step (see the FPS row).
STEP_CYCLES = 600


def parse_config(fn_name, struct):
    """The `field: value` literals of `fn <fn_name>() -> Self { <struct> { ... } }` in config.rs."""
    src = (ROOT / "runtime" / "config.rs").read_text()
    m = re.search(r"fn %s\(\)\s*->\s*Self\s*\{\s*%s\s*\{(.*?)\n\s*\}" % (fn_name, struct), src, re.S)
    if not m:
        sys.exit(f"roofline.py: {struct}::{fn_name} not found in runtime/config.rs")
    out = {}
    for key, val in re.findall(r"(\w+):\s*((?:vec!)?\[[^\]]*\]|[^,\n]+)", m.group(1)):
        val = val.strip()
        if val.startswith("[") or val.startswith("vec!["):
            out[key] = [int(v) for v in re.findall(r"\d+", val)]
        elif re.fullmatch(r"\d+", val):
            out[key] = int(val)
    return out


class Row:
    def __init__(self, stage, name, flop, bytes_, unit, launches=1, steps=0, measured="",
                 orin_step_cycles=None):
        self.stage, self.name, self.flop, self.bytes = stage, name, flop, bytes_
        self.unit, self.launches, self.steps = unit, launches, steps
        self.measured = measured
        self.orin_step_cycles = orin_step_cycles or STEP_CYCLES

    def step_time(self, dev):
        cycles = STEP_CYCLES if dev == "H100" else self.orin_step_cycles
        return self.steps * cycles / DEVICES[dev]["clock"]

    def floor(self, dev):
        d = DEVICES[dev]
        peak = d["fp32"] if self.unit == "fp32" else d["bf16"]
        return max(self.flop / peak, self.bytes / d["bw"], self.step_time(dev))

    def bound(self, dev):
        d = DEVICES[dev]
        peak = d["fp32"] if self.unit == "fp32" else d["bf16"]
        parts = {"compute": self.flop / peak, "memory": self.bytes / d["bw"]}
        if self.steps:
            parts["latency"] = self.step_time(dev)
        return max(parts, key=parts.get)

    def target(self, dev):
        bound = self.bound(dev)
        if bound == "latency":
            return self.floor(dev)
        if bound == "memory":
            return self.floor(dev) / EFFICIENCY["mem"]
        return self.floor(dev) / EFFICIENCY[self.unit]


def gemm(stage, name, m, n, k, out_bytes=2, count=1, measured=""):
    """bf16 GEMM m×k by k×n: operands bf16, output `out_bytes` a value (f32 accumulate = 4 + read)."""
    return Row(stage, name, 2.0 * m * n * k * count, (2 * m * k + 2 * k * n + out_bytes * m * n) * count,
               "bf16", launches=count, measured=measured)


def transformer(stage, t, d, heads, mlp, depth, qkv_bias, attn_measured):
    hd = d // heads
    rows = []
    # LayerNorm x2 per block: read x (f32), write the bf16 GEMM input.
    rows.append(Row(stage, f"LayerNorm ×{2 * depth} ({t}×{d})", 8.0 * t * d * 2 * depth,
                    (4 + 2) * t * d * 2 * depth, "fp32", launches=2 * depth))
    rows.append(gemm(stage, f"qkv GEMM ×{depth} ({t}×{d}→{3 * d})", t, 3 * d, d, count=depth))
    rows.append(Row(stage, f"attention ×{depth} ({t} tok, {heads}×{hd})", 4.0 * t * t * d * depth,
                    (2 * t * 3 * d + 2 * t * d) * depth, "attn", launches=depth, measured=attn_measured))
    # Residual GEMMs read and write the f32 stream x (4 + 4 bytes a value).
    rows.append(gemm(stage, f"proj GEMM ×{depth} (+= x)", t, d, d, out_bytes=8, count=depth))
    rows.append(gemm(stage, f"fc1 GEMM + GELU ×{depth} ({d}→{mlp})", t, mlp, d, count=depth))
    rows.append(gemm(stage, f"fc2 GEMM ×{depth} (+= x)", t, d, mlp, out_bytes=8, count=depth))
    return rows


def build(parts):
    vit = parse_config("base8", "VitConfig")
    pc = parse_config("m3dm", "PointConfig")
    fu = parse_config("m3dm", "FusionConfig")
    grid = vit["image_size"] // vit["patch_size"]
    patches = grid * grid
    tokens = patches + 1
    vd = vit["dim"]
    rows = []

    # --- RGB branch (ViT-B/8) ---
    rows.append(Row("ViT", f"RGB resize + normalise ({vit['image_size']}²)", 40.0 * vit["image_size"] ** 2 * 3,
                    (3 + 4 * 3) * vit["image_size"] ** 2 * 3, "fp32"))
    k = vit["in_chans"] * vit["patch_size"] ** 2
    rows.append(gemm("ViT", f"patch embed GEMM ({patches}×{k}→{vd}) + tokens", patches, vd, k, out_bytes=4))
    rows += transformer("ViT", tokens, vd, vit["heads"], vit["mlp_dim"], vit["depth"], True,
                        "22.8 µs each (bf16, cuda-tx)")
    rows.append(Row("ViT", "final LayerNorm", 8.0 * tokens * vd, 8 * tokens * vd, "fp32"))

    # --- Point branch ---
    n_pts = vit["image_size"] ** 2  # 50 176 at most (SPEC §1.5)
    m, s = pc["num_groups"], pc["group_size"]
    c1, c2, c3 = pc["encoder_widths"]
    d = pc["dim"]
    # FPS: m−1 dependent steps, each updates n running distances (sub, 3 fma, min, compare).
    # H100: the points stay on chip (registers / shared memory of one cluster), a step costs
    # STEP_CYCLES. Orin (no clusters): the single-block kernel re-reads the points (float4)
    # from L2 every step; at 64 bytes a clock into one SM that is n·16/64 cycles a step.
    rows.append(Row("point", f"FPS {m} of {n_pts}", 8.0 * n_pts * (m - 1), 12 * n_pts + 16 * m, "fp32",
                    steps=m - 1, measured="4.79 ms v1 (cuda-point); 3.12 ms v1 (cuda-fps)",
                    orin_step_cycles=max(STEP_CYCLES, n_pts * 16 // 64)))
    # kNN: every center against every point (bound-select: 8 centers a block, the cloud from L2).
    rows.append(Row("point", f"kNN {m}×{s} of {n_pts}", 9.0 * n_pts * m, 12 * n_pts + (4 + 12) * m * s,
                    "fp32", measured="19.0 ms v1 heap (cuda-point)"))
    per_point = 2 * (3 * c1 + c1 * c2 + c2 * c3 + c3 * d)
    rows.append(Row("point", f"group encoder ({m}×{s} pts, {c1}/{c2}/{2 * c2}→{c3}/{d})",
                    float(per_point) * m * s, 12 * m * s + 4 * m * d, "bf16",
                    measured="4.30 ms f32 CUDA cores (cuda-point)"))
    ph = pc["pos_hidden"]
    rows.append(Row("point", "position MLP", 2.0 * m * (3 * ph + ph * d), 4 * m * (3 + d), "fp32"))
    rows += transformer("point", m, d, pc["heads"], pc["mlp_dim"], pc["depth"], False,
                        "19.4 µs each (bf16, cuda-tx)")
    feat = d * len(pc["out_layers"])
    rows.append(Row("point", "final LayerNorm ×3", 8.0 * m * feat, 8 * m * feat, "fp32"))
    rows.append(Row("point", f"PFA 3-NN ({n_pts} pts × {m} centers)", 9.0 * n_pts * m, 12 * n_pts + 24 * n_pts,
                    "fp32", measured="0.061 ms (cuda-point)"))
    xyz_rows = (grid * 2) ** 2  # 56² patches
    # Projection: a sparse (cells × centers) matrix times the group features; a cell's field
    # is about (⌈222/56⌉ + 2)² pixels of 3 centers each.
    field = (-(-(vit["image_size"] - 2) // (grid * 2)) + 2) ** 2
    rows.append(Row("point", f"PFA projection ({xyz_rows}×{feat})", 2.0 * xyz_rows * field * 3 * feat,
                    4 * m * feat + 4 * xyz_rows * feat + 24 * n_pts, "fp32", measured="0.363 ms (cuda-point)"))

    # --- Fusion (UFF) ---
    xd, rd = fu["xyz_dim"], fu["rgb_dim"]
    r = fu["mlp_ratio"]
    rows.append(Row("fusion", "LN_xyz + LN_rgb", 8.0 * xyz_rows * (xd + rd), 6 * xyz_rows * (xd + rd), "fp32"))
    rows.append(gemm("fusion", f"MLP_xyz fc1+fc2 ({xyz_rows}×{xd}→{r * xd}→{xd})", xyz_rows, r * xd, xd, count=2))
    # MLP_rgb is row-wise and rgb56 repeats each 28-grid cell 2×2: 784 distinct rows.
    rows.append(gemm("fusion", f"MLP_rgb fc1+fc2 ({patches} distinct rows×{rd}→{r * rd}→{rd})", patches,
                     r * rd, rd, count=2))

    # --- Banks (f32-exact result; fast path on bf16/f16 tensor cores, bank streamed once) ---
    fused_d = xd + rd
    ratio = 0.1
    banks = [
        ("xyz", xyz_rows, round(15870 * parts / 300), xd),
        ("rgb", patches, round(parts * patches * ratio), rd),
        ("fused", xyz_rows, round(parts * xyz_rows * ratio), fused_d),
    ]
    for name, q, n, dim in banks:
        rows.append(Row("banks", f"{name} search {q} × {n:,} × {dim}".replace(",", " "), 2.0 * q * n * dim,
                        2 * n * dim + 2 * q * dim + 8 * q, "bf16",
                        measured="2.93 ms at 784×150 000×1920 f16 (154 TFLOP/s, cuda-tx)" if name == "fused" else ""))

    # --- Maps, blur, decision, regions ---
    side = 224
    rows.append(Row("maps", "upsample + blur + DLF + regions (3 maps)", 3 * side * side * (4 + 2 * 33 + 4) + 20 * side * side,
                    3 * 3 * 4 * side * side + 8 * side * side, "fp32"))
    return rows


def fmt_t(s):
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_n(x, unit):
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {suffix}{unit}"
    return f"{x:.3g} {unit}"


def render(parts):
    rows = build(parts)
    out = []
    out.append(f"Generated by `python3 bench/gpu/roofline.py --update bench/gpu/ROOFLINE.md` (bank sizes of a "
               f"{parts}-part category). Bound: what sets the H100 floor.\n")
    out.append("| stage | kernel | FLOP | bytes | H100 floor | bound | H100 target | Orin floor | Orin target | measured H100 |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out.append(f"| {r.stage} | {r.name} | {fmt_n(r.flop, 'FLOP')} | {fmt_n(r.bytes, 'B')} | {fmt_t(r.floor('H100'))} "
                   f"| {r.bound('H100')} | {fmt_t(r.target('H100'))} | {fmt_t(r.floor('Orin'))} | "
                   f"{fmt_t(r.target('Orin'))} | {r.measured or '—'} |")
    out.append("")
    out.append("Per stage (sums of the rows above; the ViT and the point branch run on two streams, so the")
    out.append("critical path is max(ViT, point) + fusion + banks + maps):\n")
    out.append("| stage | FLOP | H100 floor | H100 target | Orin floor | Orin target | issue 18 target (H100) |")
    out.append("|---|---|---|---|---|---|---|")
    goals = {"ViT": "≤ 0.6 ms", "point": "≤ 0.8 ms", "banks": "≤ 0.8 ms"}
    sums = {}
    for stage in ["ViT", "point", "fusion", "banks", "maps"]:
        sel = [r for r in rows if r.stage == stage]
        v = (sum(r.flop for r in sel), sum(r.floor("H100") for r in sel), sum(r.target("H100") for r in sel),
             sum(r.floor("Orin") for r in sel), sum(r.target("Orin") for r in sel))
        sums[stage] = v
        out.append(f"| {stage} | {fmt_n(v[0], 'FLOP')} | {fmt_t(v[1])} | {fmt_t(v[2])} | {fmt_t(v[3])} | "
                   f"{fmt_t(v[4])} | {goals.get(stage, '—')} |")
    total_flop = sum(v[0] for v in sums.values())
    crit = [max(sums["ViT"][i], sums["point"][i]) + sum(sums[s][i] for s in ["fusion", "banks", "maps"])
            for i in range(1, 5)]
    serial = [sum(v[i] for v in sums.values()) for i in range(1, 5)]
    out.append(f"| **per part, two streams** | {fmt_n(total_flop, 'FLOP')} | **{fmt_t(crit[0])}** | "
               f"**{fmt_t(crit[1])}** | **{fmt_t(crit[2])}** | **{fmt_t(crit[3])}** | p99 ≤ 3 ms |")
    out.append(f"| per part, one stream | | {fmt_t(serial[0])} | {fmt_t(serial[1])} | {fmt_t(serial[2])} | "
               f"{fmt_t(serial[3])} | |")
    out.append("")
    out.append("Assumptions: " + ", ".join(f"{k} {v:.0%} of peak" for k, v in EFFICIENCY.items()) +
               f" for the targets; a dependent step costs {STEP_CYCLES} cycles; peaks: " +
               "; ".join(f"{n}: bf16 {d['bf16'] / 1e12:.1f} TFLOP/s, FP32 {d['fp32'] / 1e12:.1f} TFLOP/s, "
                         f"{d['bw'] / 1e9:.0f} GB/s" for n, d in DEVICES.items()) + ".")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", type=int, default=300, help="parts of the fitted category (bank sizes)")
    ap.add_argument("--update", metavar="MD", help="rewrite the section between the roofline markers")
    ap.add_argument("--check", metavar="MD", help="exit 1 when the marked section differs")
    a = ap.parse_args()
    text = render(a.parts)
    target = a.update or a.check
    if not target:
        sys.stdout.write(text)
        return
    path = pathlib.Path(target)
    md = path.read_text()
    i, j = md.find(BEGIN), md.find(END)
    if i < 0 or j < i:
        sys.exit(f"{path}: markers {BEGIN} / {END} not found")
    new = md[: i + len(BEGIN)] + "\n" + text + md[j:]
    if a.check:
        if new != md:
            sys.exit(f"{path}: roofline table is stale; run python3 bench/gpu/roofline.py --update {path}")
        return
    path.write_text(new)


if __name__ == "__main__":
    main()
