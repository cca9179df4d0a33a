"""Reference for tests/fit_eval/train_fusion.rs: M3DM's UFF training objective computed by
PyTorch autograd, independently of miad's hand-derived gradients.

A tiny fusion module of the same form as SPEC §5 + the two contrastive heads
(LayerNorm -> Linear -> GELU -> Linear -> head Linear -> L2 normalise, per modality), the
patch-wise InfoNCE of docs/RADAR-FUSION.md §5b (CrossEntropy(q k^T / T, arange(N)) * 2T,
RGB queries against xyz keys), its gradient with respect to every parameter, and the
parameters after one torch.optim.AdamW step (betas 0.9/0.95, weight decay 0.01).
N = 300 rows, more than miad's 256-row logit block, so the blocked path is compared.

Writes tests/fixtures/infonce_uff.safetensors. Run (needs torch, numpy, safetensors):
    python3 tests/reference/infonce_reference.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

torch.manual_seed(20261206)
XYZ, RGB, RATIO, HEAD, N, T, LR = 7, 5, 2, 4, 300, 1.0, 0.01


def branch(dim):
    return torch.nn.ModuleDict(
        {
            "norm": torch.nn.LayerNorm(dim, eps=1e-5),
            "fc1": torch.nn.Linear(dim, RATIO * dim),
            "fc2": torch.nn.Linear(RATIO * dim, dim),
            "head": torch.nn.Linear(dim, HEAD),
        }
    )


def run(b, x):
    y = b["fc2"](F.gelu(b["fc1"](b["norm"](x))))
    return F.normalize(b["head"](y), dim=1)


xyz_b, rgb_b = branch(XYZ), branch(RGB)
with torch.no_grad():  # non-trivial LayerNorm affines
    for b in (xyz_b, rgb_b):
        b["norm"].weight.add_(0.2 * torch.randn_like(b["norm"].weight))
        b["norm"].bias.add_(0.2 * torch.randn_like(b["norm"].bias))

# miad's names (model file) for each parameter.
names = {}
for pre, b in (("xyz", xyz_b), ("rgb", rgb_b)):
    names[f"fusion.{pre}_norm.weight"] = b["norm"].weight
    names[f"fusion.{pre}_norm.bias"] = b["norm"].bias
    for fc in ("fc1", "fc2"):
        names[f"fusion.{pre}_mlp.{fc}.weight"] = b[fc].weight
        names[f"fusion.{pre}_mlp.{fc}.bias"] = b[fc].bias
    names[f"fusion.{pre}_head.weight"] = b["head"].weight
    names[f"fusion.{pre}_head.bias"] = b["head"].bias

xyz = torch.randn(N, XYZ) + 0.5
rgb = torch.randn(N, RGB) + 0.5
start = {k: v.detach().numpy().copy() for k, v in names.items()}

q = run(rgb_b, rgb)
k = run(xyz_b, xyz)
logits = q @ k.T / T
loss = F.cross_entropy(logits, torch.arange(N)) * (2 * T)
loss.backward()

f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))
out = {"xyz": f32(xyz), "rgb": f32(rgb), "loss": f32([loss.item()])}
for key, p in names.items():
    out[key] = f32(start[key])
    out["grad." + key] = f32(p.grad)

params = list(names.values())
opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
opt.step()
for key, p in names.items():
    out["step." + key] = f32(p.detach())

here = os.path.dirname(os.path.abspath(__file__))
save_file(
    out,
    os.path.join(here, "..", "fixtures", "infonce_uff.safetensors"),
    metadata={"torch": torch.__version__, "T": str(T), "lr": str(LR)},
)
print("loss", loss.item(), "torch", torch.__version__)
