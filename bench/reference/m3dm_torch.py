#!/usr/bin/env python3
"""PyTorch reference timings of M3DM's inspection stages, for `miad bench --reference`.

Times, on this machine and with the given thread count, what the public M3DM code runs
per part (random weights, nothing downloaded; sizes of /work/shared/SPEC.md = the miad
`m3dm` preset):

  rgb        timm `vit_base_patch8_224` (DINO config) forward_features, f32
  rgb_bf16   the same under torch.autocast("cpu", bfloat16)
  point      Point-MAE encoder and M3DM's feature interpolation, as sub-stages:
             fps          farthest point sampling on the CPU (1024 centers, the usual
                          torch loop: M3DM calls the pointnet2 CUDA op)
             group        kNN grouping (128 nearest points per center, cdist + topk)
             group_encoder mini-PointNet (Conv1d 3-128-256, max, concat, 512-512-384, max;
                          BatchNorm in eval mode)
             transformer  position embedding and 12 pre-norm blocks (384 wide, 6 heads,
                          no qkv bias), outputs of blocks 3, 7, 11 through the final norm
             interpolate  M3DM's 3-NN inverse-distance interpolation to every point,
                          scatter into the 224x224 map, AvgPool2d(3, 1) and adaptive
                          average pooling to the 56x56 grid (as the reference does it:
                          the full 224x224x1152 map is materialised)
  fusion     UFF as SPEC section 5: the 28x28 RGB grid pooled to 56x56, LayerNorm + MLP
             (d -> 4d -> d, exact GELU) per modality, concatenated -> 3136 x 1920
  score      per bank (xyz, rgb, fused): torch.cdist + min over the bank (PatchCore as
             M3DM calls it), the re-weighting of the worst patch (3 nearest bank rows),
             the bilinear upsampling to 224x224 and the Gaussian blur (sigma 4)
  total      rgb + point + fusion + score of the same iteration (f32 pipeline);
             total_bf16 uses rgb_bf16 instead of rgb

Each iteration runs the whole pipeline once; the JSON gives every stage's p50 over the
timed iterations (`stages_p50_ms`) and the samples (`stages_ms`). miad's preprocessing has
no counterpart here (M3DM preprocesses its data set offline with numpy/open3d).

Usage (torch is not a dependency of miad; any CPU build of PyTorch 2 with timm works):
  python3 bench/reference/m3dm_torch.py --threads 2 \
      --bank-rows xyz=15870,rgb=23520,fused=94080 --out reference.json
then `miad bench ... --threads 2 --reference reference.json`.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BANKS = ("xyz", "rgb", "fused")


def parse_per_bank(text, what):
    """'xyz=15870,rgb=23520,fused=94080' -> {'xyz': 15870, ...}; every bank required."""
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in BANKS or name in out:
            sys.exit(f"--{what}: expected xyz=N,rgb=N,fused=N, got '{text}'")
        try:
            out[name] = int(value)
        except ValueError:
            sys.exit(f"--{what}: '{value}' is not a whole number")
        if out[name] < 1:
            sys.exit(f"--{what}: {name} must be at least 1")
    missing = [b for b in BANKS if b not in out]
    if missing:
        sys.exit(f"--{what}: missing {', '.join(missing)}")
    return out


# --- Point-MAE encoder (SPEC section 3), random weights ---------------------------------


class GroupEncoder(nn.Module):
    """Point-MAE's mini-PointNet over each group's relative coordinates."""

    def __init__(self, widths=(128, 256, 512), dim=384):
        super().__init__()
        w1, w2, w3 = widths
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, w1, 1), nn.BatchNorm1d(w1), nn.ReLU(inplace=True), nn.Conv1d(w1, w2, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * w2, w3, 1), nn.BatchNorm1d(w3), nn.ReLU(inplace=True), nn.Conv1d(w3, dim, 1)
        )

    def forward(self, groups):  # (G, S, 3) -> (G, dim)
        g, s, _ = groups.shape
        f = self.first_conv(groups.transpose(2, 1))  # G, w2, S
        glob = torch.max(f, dim=2, keepdim=True)[0]
        f = torch.cat([glob.expand(-1, -1, s), f], dim=1)
        f = self.second_conv(f)
        return torch.max(f, dim=2)[0]


class PointTransformer(nn.Module):
    """Position embedding, 12 pre-norm blocks (x = block(x + pos)), normed outputs of the
    listed blocks concatenated."""

    def __init__(self, dim=384, depth=12, heads=6, pos_hidden=128, out_layers=(3, 7, 11)):
        super().__init__()
        from functools import partial

        from timm.models.vision_transformer import Block

        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, dim))
        norm = partial(nn.LayerNorm, eps=1e-5)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio=4.0, qkv_bias=False, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(dim)
        self.out_layers = set(out_layers)

    def forward(self, tokens, centers):  # (1, G, dim), (1, G, 3) -> (1, G, dim * len(out))
        pos = self.pos_embed(centers)
        x = tokens
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in self.out_layers:
                outs.append(self.norm(x))
        return torch.cat(outs, dim=-1)


def fps_cpu(points, m):
    """Farthest point sampling, first center = point 0, squared distances."""
    n = points.shape[0]
    nearest = torch.full((n,), float("inf"))
    idx = torch.empty(m, dtype=torch.long)
    farthest = 0
    for i in range(m):
        idx[i] = farthest
        d = ((points - points[farthest]) ** 2).sum(dim=1)
        nearest = torch.minimum(nearest, d)
        farthest = int(torch.argmax(nearest))
    return idx


def knn_groups(points, centers, k):
    """The k nearest points of each center, sorted, relative to the center: (G, k, 3)."""
    d = torch.cdist(centers, points)
    idx = torch.topk(d, k, dim=1, largest=False, sorted=True)[1]
    return points[idx] - centers[:, None, :]


def interpolate_to_grid(points, pixels, centers, group_feats, image_size, grid):
    """M3DM: 3-NN inverse distance weights, scatter into the image, 3x3 average pooling,
    adaptive average pooling to grid x grid. Returns (grid*grid, C)."""
    d = torch.cdist(points, centers) ** 2
    dist, idx = torch.topk(d, 3, dim=1, largest=False)
    recip = 1.0 / (dist + 1e-8)
    weight = recip / recip.sum(dim=1, keepdim=True)
    feats = (group_feats[idx] * weight[:, :, None]).sum(dim=1)  # N, C
    c = feats.shape[1]
    full = torch.zeros((1, c, image_size * image_size))
    full[0, :, pixels] = feats.t()
    full = full.view(1, c, image_size, image_size)
    pooled = F.adaptive_avg_pool2d(F.avg_pool2d(full, 3, stride=1), (grid, grid))
    return pooled.view(c, grid * grid).t().contiguous()


# --- UFF (SPEC section 5) ------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self, d, ratio=4):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, ratio * d)
        self.fc2 = nn.Linear(ratio * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Fusion(nn.Module):
    def __init__(self, rgb_dim=768, xyz_dim=1152):
        super().__init__()
        self.xyz = Mlp(xyz_dim)
        self.rgb = Mlp(rgb_dim)

    def forward(self, rgb, rgb_grid, xyz, xyz_grid):
        c = rgb.shape[1]
        rgb2d = rgb.t().reshape(1, c, rgb_grid, rgb_grid)
        rgb56 = F.adaptive_avg_pool2d(rgb2d, (xyz_grid, xyz_grid)).view(c, -1).t()
        return torch.cat([self.xyz(xyz), self.rgb(rgb56)], dim=1)


# --- Scoring (SPEC section 7) ------------------------------------------------------------


def gaussian_blur(img, sigma=4.0):
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma * sigma))
    k = k / k.sum()
    img = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1))
    return F.conv2d(img, k.view(1, 1, -1, 1))


def score_bank(x, bank, grid, map_size):
    """PatchCore as M3DM runs it: cdist + min, re-weighting, map upsampling and blur."""
    dist = torch.cdist(x, bank)
    min_val, min_idx = torch.min(dist, dim=1)
    j = int(torch.argmax(min_val))
    s_star = min_val[j]
    m_star = bank[min_idx[j]][None]
    nn_idx = torch.topk(torch.cdist(m_star, bank), 3, largest=False)[1][0]
    nn_dist = torch.linalg.norm(x[j][None] - bank[nn_idx[1:]], dim=1)
    d = math.sqrt(x.shape[1])
    w = 1 - torch.exp(s_star / d) / torch.exp(nn_dist / d).sum()
    score = w * s_star
    m = min_val.view(1, 1, grid, grid)
    m = F.interpolate(m, size=(map_size, map_size), mode="bilinear", align_corners=False)
    return float(score), gaussian_blur(m)


# --- The timed pipeline --------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    ap.add_argument(
        "--bank-rows",
        default="xyz=15870,rgb=23520,fused=94080",
        help="rows per bank, as miad's bank (default: a 300-part category)",
    )
    ap.add_argument("--bank-dims", default="xyz=1152,rgb=768,fused=1920", help="feature width per bank")
    ap.add_argument(
        "--points",
        type=int,
        default=20000,
        help="points of the part's cloud after preprocessing (miad's synthetic parts: see bench/results)",
    )
    ap.add_argument(
        "--only-rgb",
        action="store_true",
        help="time the ViT alone (rgb and rgb_bf16): for bench/reference/rgb_pairs.sh",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here as well as to stdout")
    a = ap.parse_args()
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0 or a.points < 1024:
        sys.exit("need --threads >= 1, --repeats >= 1, --warmup >= 0, --points >= 1024")
    rows = parse_per_bank(a.bank_rows, "bank-rows")
    dims = parse_per_bank(a.bank_dims, "bank-dims")

    import timm

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    image_size, rgb_grid, xyz_grid, groups, group_size = 224, 28, 56, 1024, 128
    queries = {"xyz": xyz_grid * xyz_grid, "rgb": rgb_grid * rgb_grid, "fused": xyz_grid * xyz_grid}
    grids = {"xyz": xyz_grid, "rgb": rgb_grid, "fused": xyz_grid}

    vit = timm.create_model("vit_base_patch8_224.dino", pretrained=False).eval()
    encoder = GroupEncoder().eval()
    transformer = PointTransformer().eval()
    fusion = Fusion(rgb_dim=dims["rgb"], xyz_dim=dims["xyz"]).eval()
    if dims["fused"] != dims["rgb"] + dims["xyz"]:
        sys.exit("--bank-dims: fused must be xyz + rgb (UFF concatenates them)")
    # Banks hold normalised features: standard normal rows.
    banks = {b: torch.randn(rows[b], dims[b]) for b in BANKS}

    image = torch.randn(1, 3, image_size, image_size)
    # A part's cloud: a bumpy surface over `points` distinct pixels of the 224x224 image.
    pixels = torch.randperm(image_size * image_size)[: a.points].sort()[0]
    uv = torch.stack([pixels // image_size, pixels % image_size], dim=1).float() / image_size
    height = 0.05 * torch.sin(6 * uv[:, :1]) * torch.cos(4 * uv[:, 1:])
    cloud = torch.cat([uv * 0.1, height + 0.3], dim=1).contiguous()

    names = [
        "rgb",
        "rgb_bf16",
        "fps",
        "group",
        "group_encoder",
        "transformer",
        "interpolate",
        "point",
        "fusion",
        "score_xyz",
        "score_rgb",
        "score_fused",
        "score",
        "total",
        "total_bf16",
    ]
    samples = {n: [] for n in names}
    for it in range(a.warmup + a.repeats):
        t = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            rgb = vit.forward_features(image)[0, 1:]  # drop the class token: 784 x 768
            t["rgb"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                vit.forward_features(image)
            t["rgb_bf16"] = time.perf_counter() - t0
            if a.only_rgb:
                if it >= a.warmup:
                    for n in ("rgb", "rgb_bf16"):
                        samples[n].append(t[n] * 1e3)
                continue

            t0 = time.perf_counter()
            centers_idx = fps_cpu(cloud, groups)
            centers = cloud[centers_idx]
            t["fps"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            neighbourhoods = knn_groups(cloud, centers, group_size)
            t["group"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            tokens = encoder(neighbourhoods)
            t["group_encoder"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            group_feats = transformer(tokens[None], centers[None])[0]
            t["transformer"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            xyz = interpolate_to_grid(cloud, pixels, centers, group_feats, image_size, xyz_grid)
            t["interpolate"] = time.perf_counter() - t0
            t["point"] = sum(t[k] for k in ("fps", "group", "group_encoder", "transformer", "interpolate"))

            t0 = time.perf_counter()
            fused = fusion(rgb, rgb_grid, xyz, xyz_grid)
            t["fusion"] = time.perf_counter() - t0

            feats = {"xyz": xyz, "rgb": rgb, "fused": fused}
            for b in BANKS:
                t0 = time.perf_counter()
                x = (feats[b] - feats[b].mean()) / feats[b].std()
                score_bank(x, banks[b], grids[b], image_size)
                t["score_" + b] = time.perf_counter() - t0
            t["score"] = sum(t["score_" + b] for b in BANKS)
            t["total"] = t["rgb"] + t["point"] + t["fusion"] + t["score"]
            t["total_bf16"] = t["total"] - t["rgb"] + t["rgb_bf16"]
        if it >= a.warmup:
            for n in names:
                samples[n].append(t[n] * 1e3)
        print(f"iteration {it + 1}/{a.warmup + a.repeats}: total {t['total'] * 1e3:.0f} ms", file=sys.stderr)

    report = {
        "tool": "bench/reference/m3dm_torch.py",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": a.threads,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "points": a.points,
        "banks": {b: {"rows": rows[b], "dim": dims[b], "queries": queries[b]} for b in BANKS},
        "stages_p50_ms": {n: round(statistics.median(samples[n]), 3) for n in names if samples[n]},
        "stages_ms": {n: [round(v, 3) for v in samples[n]] for n in names if samples[n]},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
