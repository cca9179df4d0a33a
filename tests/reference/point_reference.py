"""PyTorch reference of the point branch (SPEC §1.4–5, §3, §4), written from SPEC.md with
plain torch ops: brute-force FPS and kNN, the mini-PointNet group encoder with BatchNorm
in eval mode (folded into conv1/conv3 for the saved weights, the fold checked here),
position embedding, pre-norm blocks, final norm, and the point feature alignment as the
dense map (scatter, 3×3 average pooling, adaptive average pooling).

Sizes: PointConfig::small() (64 groups of 16, width 96, 3 heads, 2 blocks, encoder 32/64/128,
pos hidden 32, out_layers [0, 1]) and ModelConfig::small()'s preprocess (image 64, grid 16).

Writes tests/fixtures/point_small.safetensors (weights under `point.*`, inputs and
expected outputs under `ref.*`) and the PIL bicubic fixtures point_bicubic_*.png.

Run: /work/pyref/bin/python tests/reference/point_reference.py
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

torch.manual_seed(0)
np.random.seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")

S_IMG, GRID = 64, 16
M, K = 64, 16
C1, C2, C3 = 32, 64, 128
POS_H, DIM, DEPTH, HEADS, MLP = 32, 96, 2, 3, 384
OUT_LAYERS = [0, 1]
LN_EPS = 1e-5


def sq(a, b):
    """Squared distances (dx² + dy²) + dz² in f32, the order every backend uses."""
    d = a - b
    return (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2]


def fps(points, m):
    n = points.shape[0]
    dist = torch.full((n,), float("inf"))
    out = [0]
    for _ in range(m - 1):
        dist = torch.minimum(dist, sq(points, points[out[-1]]))
        out.append(int(torch.argmax(dist)))  # first maximum = lowest index
    return torch.tensor(out, dtype=torch.int64)


def knn(points, centers_idx, k):
    rows = []
    for c in centers_idx.tolist():
        d = sq(points, points[c])
        order = torch.sort(d, stable=True).indices  # ties → lower index
        rows.append(order[:k])
    return torch.stack(rows)


def organized_cloud():
    """A 64×64 organized cloud: a wavy surface inside an ellipse, zeros outside."""
    yy, xx = torch.meshgrid(torch.arange(S_IMG), torch.arange(S_IMG), indexing="ij")
    u = (xx.float() - 31.5) / 32
    v = (yy.float() - 31.5) / 32
    inside = (u / 0.85) ** 2 + (v / 0.75) ** 2 < 1.0
    z = 0.1 * torch.sin(3 * u) * torch.cos(2 * v) + 0.02 * torch.randn(S_IMG, S_IMG) * 0.1
    cloud = torch.stack([u * 0.5, v * 0.5, z + 0.6], dim=-1)
    cloud[~inside] = 0
    return cloud


def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)


def block(x, p, pre):
    t, d = x.shape
    hd = d // HEADS
    h = layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
    qkv = h @ p[pre + "attn.qkv.weight"].T
    q, k, v = qkv.reshape(t, 3, HEADS, hd).permute(1, 2, 0, 3)
    att = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
    o = (att @ v).transpose(0, 1).reshape(t, d)
    x = x + o @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
    h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
    h = F.gelu(h @ p[pre + "mlp.fc1.weight"].T + p[pre + "mlp.fc1.bias"])
    return x + h @ p[pre + "mlp.fc2.weight"].T + p[pre + "mlp.fc2.bias"]


def main():
    cloud = organized_cloud()
    flat = cloud.reshape(-1, 3)
    # SPEC §1.5–1.6: a point has three non-zero, finite coordinates (M3DM's
    # np.all(pc != 0, axis=1)). This cloud has no partly-zero pixel (u, v are never 0), so
    # the fixture is the same under the older "not all zero" rule.
    valid = (flat != 0).all(dim=1) & torch.isfinite(flat).all(dim=1)
    pixels = torch.nonzero(valid).flatten()
    points = flat[pixels].contiguous()
    n = points.shape[0]
    print("points", n)

    centers_idx = fps(points, M)
    group_idx = knn(points, centers_idx, K)
    centers = points[centers_idx]

    def rnd(*shape, std):
        return torch.randn(*shape) * std

    # unfolded encoder: conv1 + BN + ReLU + conv2; conv3 + BN + ReLU + conv4
    conv1_w, conv1_b = rnd(C1, 3, std=1.0), rnd(C1, std=0.1)
    bn1 = (torch.rand(C1) + 0.5, rnd(C1, std=0.1), rnd(C1, std=0.1), torch.rand(C1) + 0.5)
    conv2_w, conv2_b = rnd(C2, C1, std=1 / math.sqrt(C1)), rnd(C2, std=0.1)
    conv3_w, conv3_b = rnd(C3, 2 * C2, std=1 / math.sqrt(2 * C2)), rnd(C3, std=0.1)
    bn3 = (torch.rand(C3) + 0.5, rnd(C3, std=0.1), rnd(C3, std=0.1), torch.rand(C3) + 0.5)
    conv4_w, conv4_b = rnd(DIM, C3, std=1 / math.sqrt(C3)), rnd(DIM, std=0.1)

    def bn(x, p):  # eval mode, channels last
        gamma, beta, mean, var = p
        return (x - mean) / torch.sqrt(var + 1e-5) * gamma + beta

    def fold(w, b, p):
        gamma, beta, mean, var = p
        s = gamma / torch.sqrt(var + 1e-5)
        return w * s[:, None], (b - mean) * s + beta

    f1w, f1b = fold(conv1_w, conv1_b, bn1)
    f3w, f3b = fold(conv3_w, conv3_b, bn3)

    rel = points[group_idx] - centers[:, None, :]  # M × K × 3
    h = F.relu(bn(rel @ conv1_w.T + conv1_b, bn1))
    h_folded = F.relu(rel @ f1w.T + f1b)
    assert torch.allclose(h, h_folded, atol=1e-5), "BatchNorm fold"
    h = h @ conv2_w.T + conv2_b
    g = h.max(dim=1, keepdim=True).values
    h = torch.cat([g.expand(-1, K, -1), h], dim=-1)
    h = F.relu(bn(h @ conv3_w.T + conv3_b, bn3))
    h = h @ conv4_w.T + conv4_b
    tokens = h.max(dim=1).values  # M × DIM

    p = {
        "point.encoder.conv1.weight": f1w,
        "point.encoder.conv1.bias": f1b,
        "point.encoder.conv2.weight": conv2_w,
        "point.encoder.conv2.bias": conv2_b,
        "point.encoder.conv3.weight": f3w,
        "point.encoder.conv3.bias": f3b,
        "point.encoder.conv4.weight": conv4_w,
        "point.encoder.conv4.bias": conv4_b,
        "point.pos_embed.fc1.weight": rnd(POS_H, 3, std=1.0),
        "point.pos_embed.fc1.bias": rnd(POS_H, std=0.1),
        "point.pos_embed.fc2.weight": rnd(DIM, POS_H, std=1 / math.sqrt(POS_H)),
        "point.pos_embed.fc2.bias": rnd(DIM, std=0.1),
        "point.norm.weight": 1 + rnd(DIM, std=0.1),
        "point.norm.bias": rnd(DIM, std=0.1),
    }
    for i in range(DEPTH):
        pre = f"point.blocks.{i}."
        p[pre + "norm1.weight"] = 1 + rnd(DIM, std=0.1)
        p[pre + "norm1.bias"] = rnd(DIM, std=0.1)
        p[pre + "attn.qkv.weight"] = rnd(3 * DIM, DIM, std=1 / math.sqrt(DIM))
        p[pre + "attn.proj.weight"] = rnd(DIM, DIM, std=1 / math.sqrt(DIM))
        p[pre + "attn.proj.bias"] = rnd(DIM, std=0.1)
        p[pre + "norm2.weight"] = 1 + rnd(DIM, std=0.1)
        p[pre + "norm2.bias"] = rnd(DIM, std=0.1)
        p[pre + "mlp.fc1.weight"] = rnd(MLP, DIM, std=1 / math.sqrt(DIM))
        p[pre + "mlp.fc1.bias"] = rnd(MLP, std=0.1)
        p[pre + "mlp.fc2.weight"] = rnd(DIM, MLP, std=1 / math.sqrt(MLP))
        p[pre + "mlp.fc2.bias"] = rnd(DIM, std=0.1)

    pos = F.gelu(centers @ p["point.pos_embed.fc1.weight"].T + p["point.pos_embed.fc1.bias"])
    pos = pos @ p["point.pos_embed.fc2.weight"].T + p["point.pos_embed.fc2.bias"]
    x = tokens
    feats = []
    for i in range(DEPTH):
        x = block(x + pos, p, f"point.blocks.{i}.")
        if i in OUT_LAYERS:
            feats.append(layer_norm(x, p["point.norm.weight"], p["point.norm.bias"]))
    group_features = torch.cat(feats, dim=-1)  # M × 192

    # PFA: 3-NN inverse squared-distance weights, scatter, 3×3 avg pool, adaptive pool
    d = sq(points[:, None, :], centers[None, :, :])  # N × M
    order = torch.sort(d, dim=1, stable=True).indices[:, :3]
    dk = torch.gather(d, 1, order)
    w = 1.0 / (dk + 1e-8)
    w = w / w.sum(dim=1, keepdim=True)
    fp = (w[:, :, None] * group_features[order]).sum(dim=1)  # N × F
    fmap = torch.zeros(S_IMG * S_IMG, fp.shape[1])
    fmap[pixels] = fp
    fmap = fmap.T.reshape(1, -1, S_IMG, S_IMG)
    fmap = F.avg_pool2d(fmap, 3, stride=1)
    fmap = F.adaptive_avg_pool2d(fmap, GRID)
    xyz = fmap[0].reshape(fp.shape[1], -1).T.contiguous()  # GRID² × F

    out = {k: v.float().contiguous() for k, v in p.items()}
    out.update(
        {
            "ref.cloud": cloud.contiguous(),
            "ref.points": points,
            "ref.point_pixels": pixels.to(torch.int64),
            "ref.center_indices": centers_idx,
            "ref.group_indices": group_idx.to(torch.int64),
            "ref.tokens": tokens.contiguous(),
            "ref.pos": pos.contiguous(),
            "ref.group_features": group_features.contiguous(),
            "ref.xyz_features": xyz,
        }
    )
    save_file(out, os.path.join(FIX, "point_small.safetensors"))

    # PIL bicubic references (8-bit), one downscale and one upscale
    rng = np.random.default_rng(3)
    for name, (w0, h0) in [("down", (150, 130)), ("up", (40, 50))]:
        base = rng.integers(0, 256, size=(h0 // 5 + 2, w0 // 5 + 2, 3)).astype(np.uint8)
        src = Image.fromarray(base).resize((w0, h0), Image.BILINEAR)
        arr = np.array(src).astype(np.int16) + rng.integers(-20, 21, size=(h0, w0, 3))
        src = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        src.save(os.path.join(FIX, f"point_bicubic_{name}_src.png"))
        src.resize((S_IMG, S_IMG), Image.BICUBIC).save(
            os.path.join(FIX, f"point_bicubic_{name}_pil.png")
        )
    print("written")


if __name__ == "__main__":
    main()
