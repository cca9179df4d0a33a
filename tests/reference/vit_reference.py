"""PyTorch/timm reference of the RGB branch (SPEC §2): the DINO ViT, timm's
`vit_base_patch8_224.dino` architecture with seeded random weights.

Two sizes:
- default: the small variant of `VitConfig::small()` (64×64 input, patch 8, width 96,
  depth 2, 3 heads, MLP 384, LayerNorm eps 1e-6), built by timm from the same
  `vit_base_patch8_224.dino` entry with the sizes overridden. Writes
  tests/fixtures/vit_small.safetensors (committed, ≈0.5 MB: weights are rounded to f16
  before the reference runs and stored as f16, so the file holds exactly the weights the
  reference used).
- `--full [PATH]`: ViT-B/8 at 224×224 (`VitConfig::base8()`), weights stored as f32, into
  PATH (default /tmp/miad_vit_full.safetensors, ≈350 MB, never committed). Point
  `MIAD_VIT_FULL_FIXTURE` at it and run `cargo test --test cpu vit_parity -- --nocapture` to
  see miad's error at full size.

File contents: the weights under miad's names (`vit.cls_token` [1,1,d], `vit.pos_embed`
[1,tokens,d], `vit.patch_embed.proj.{weight,bias}` ([d,3,p,p]), `vit.blocks.N.*`,
`vit.norm.*`: timm's names with a `vit.` prefix, shapes as `model_tensor_specs`), `input`
(3×H×W, standard normal, f32) and `output` (the final-norm patch tokens without the class
token, [patches, d], f32).

The reference output is computed in float64 (the model and input converted to double
after the weights were fixed), so the Rust test measures miad's own error against the
exact result; the f32 timm forward's error against it is printed for comparison. A
second, independent float64 forward pass written here from SPEC §2 (plain tensor ops)
must agree with timm's to 1e-9, which checks that the timm architecture is the SPEC's.

Weight init (our own, chosen so every part of the network does something non-trivial):
linear and patch-embedding weights normal with std 1/sqrt(fan_in) (attention logits of
order 1, so the softmax is far from uniform), biases normal std 0.05, LayerNorm weights
1 + 0.1·normal and biases 0.05·normal, class token and position embedding normal std 0.1.

Setup (outside the repository; never part of CI):
    python3 -m venv /work/pyref
    /work/pyref/bin/pip install torch timm safetensors numpy
Run:
    /work/pyref/bin/python tests/reference/vit_reference.py
    /work/pyref/bin/python tests/reference/vit_reference.py --full
"""

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
import timm
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

SMALL = dict(image_size=64, patch=8, dim=96, depth=2, heads=3, mlp=384)
BASE8 = dict(image_size=224, patch=8, dim=768, depth=12, heads=12, mlp=3072)
LN_EPS = 1e-6


def build(size):
    """timm's vit_base_patch8_224.dino, sizes overridden for the small variant."""
    overrides = {}
    if size is SMALL:
        overrides = dict(
            img_size=size["image_size"],
            embed_dim=size["dim"],
            depth=size["depth"],
            num_heads=size["heads"],
        )
    model = timm.create_model("vit_base_patch8_224.dino", pretrained=False, **overrides)
    model.eval()
    assert model.num_classes == 0, "the .dino model has no classifier head"
    assert model.patch_embed.proj.kernel_size == (size["patch"], size["patch"])
    assert model.blocks[0].mlp.fc1.out_features == size["mlp"]
    assert model.norm.eps == LN_EPS and model.blocks[0].norm1.eps == LN_EPS
    return model


def expected_names(size):
    """The `vit.*` list of runtime/format/model.rs model_tensor_specs, with shapes."""
    d, p, m = size["dim"], size["patch"], size["mlp"]
    tokens = (size["image_size"] // p) ** 2 + 1
    out = {
        "cls_token": [1, 1, d],
        "pos_embed": [1, tokens, d],
        "patch_embed.proj.weight": [d, 3, p, p],
        "patch_embed.proj.bias": [d],
    }
    for i in range(size["depth"]):
        b = f"blocks.{i}."
        out[b + "norm1.weight"] = [d]
        out[b + "norm1.bias"] = [d]
        out[b + "attn.qkv.weight"] = [3 * d, d]
        out[b + "attn.qkv.bias"] = [3 * d]
        out[b + "attn.proj.weight"] = [d, d]
        out[b + "attn.proj.bias"] = [d]
        out[b + "norm2.weight"] = [d]
        out[b + "norm2.bias"] = [d]
        out[b + "mlp.fc1.weight"] = [m, d]
        out[b + "mlp.fc1.bias"] = [m]
        out[b + "mlp.fc2.weight"] = [d, m]
        out[b + "mlp.fc2.bias"] = [d]
    out["norm.weight"] = [d]
    out["norm.bias"] = [d]
    return out


def init_weights(model, gen):
    """Seeded, non-trivial weights (see the module docstring), in a fixed name order."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name in ("cls_token", "pos_embed"):
                p.copy_(0.1 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))


def spec_forward(params, x, size):
    """SPEC §2 written out with plain ops (float64), independent of timm's modules."""
    d, p, heads = size["dim"], size["patch"], size["heads"]
    hd = d // heads
    w = params["patch_embed.proj.weight"].reshape(d, -1)
    c, hgt, wid = x.shape
    g = hgt // p
    # unfold into patches × (c·p·p), channel-major inside a patch like the conv weight
    patches = x.reshape(c, g, p, g, p).permute(1, 3, 0, 2, 4).reshape(g * g, c * p * p)
    tok = patches @ w.T + params["patch_embed.proj.bias"]
    t = torch.cat([params["cls_token"].reshape(1, d), tok], 0) + params["pos_embed"][0]

    def ln(v, pre):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + LN_EPS) * params[pre + "weight"] + params[pre + "bias"]

    def lin(v, pre):
        return v @ params[pre + "weight"].T + params[pre + "bias"]

    n = t.shape[0]
    for i in range(size["depth"]):
        b = f"blocks.{i}."
        qkv = lin(ln(t, b + "norm1."), b + "attn.qkv.").reshape(n, 3, heads, hd)
        q, k, v = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1), qkv[:, 2].transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1) @ v
        t = t + lin(a.transpose(0, 1).reshape(n, d), b + "attn.proj.")
        hmid = lin(ln(t, b + "norm2."), b + "mlp.fc1.")
        hmid = 0.5 * hmid * (1.0 + torch.erf(hmid / math.sqrt(2.0)))
        t = t + lin(hmid, b + "mlp.fc2.")
    return ln(t, "norm.")[1:]


def make(size, path, seed, half_weights):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build(size)
    init_weights(model, gen)
    if half_weights:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    s = size["image_size"]
    x = torch.randn((3, s, s), generator=gen, dtype=torch.float32)

    names = expected_names(size)
    params = dict(model.named_parameters())
    assert set(params) == set(names), sorted(set(params) ^ set(names))
    for k, shape in names.items():
        assert list(params[k].shape) == shape, (k, params[k].shape, shape)

    with torch.no_grad():
        out32 = model.forward_features(x[None])[0, 1:].clone()
        model64 = model.double()
        out64 = model64.forward_features(x[None].double())[0, 1:]
        p64 = {k: v.detach() for k, v in model64.named_parameters()}
        mine = spec_forward(p64, x.double(), size)
    patches = (s // size["patch"]) ** 2
    assert out64.shape == (patches, size["dim"]), out64.shape
    spec_err = (mine - out64).abs().max().item()
    assert spec_err <= 1e-9 * out64.abs().max().item(), f"SPEC forward differs: {spec_err}"
    ref_max = out64.abs().max().item()
    f32_err = (out32.double() - out64).abs().max().item()

    weight_dtype = torch.float16 if half_weights else torch.float32
    tensors = {
        "vit." + k: v.detach().to(weight_dtype).contiguous() for k, v in p64.items()
    }
    tensors["input"] = x.contiguous()
    tensors["output"] = out64.float().contiguous()
    meta = {
        "source": "tests/reference/vit_reference.py",
        "architecture": "timm vit_base_patch8_224.dino" + ("" if size is BASE8 else " (resized)"),
        "timm": timm.__version__,
        "torch": torch.__version__,
        "seed": str(seed),
        **{k: str(v) for k, v in size.items()},
    }
    # one metadata key: safetensors writes several in a random order, and the fixture
    # should come out byte-identical on every run
    save_file(tensors, path, metadata={"reference": json.dumps(meta, sort_keys=True)})
    print(
        f"{path}: {os.path.getsize(path)} bytes, output {tuple(out64.shape)}, "
        f"max|ref| {ref_max:.4g}; timm f32 vs f64: max abs {f32_err:.3g} "
        f"({f32_err / ref_max:.3g} of max|ref|); SPEC forward vs timm: {spec_err:.3g}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--full",
        nargs="?",
        const="/tmp/miad_vit_full.safetensors",
        default=None,
        metavar="PATH",
        help="write the full ViT-B/8 fixture to PATH instead of the small one",
    )
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.full:
        make(BASE8, args.full, seed=8, half_weights=False)
    else:
        os.makedirs(FIX, exist_ok=True)
        make(SMALL, os.path.join(FIX, "vit_small.safetensors"), seed=3, half_weights=True)


if __name__ == "__main__":
    main()
