#!/usr/bin/env python3
"""Turn a published PyTorch checkpoint (.pth) into a safetensors file for `miad model convert`.

    python3 weights/pth2safetensors.py IN.pth OUT.safetensors

Nested state dictionaries are flattened: a checkpoint saved as
{"base_model": {...}, "epoch": 3} (Point-MAE), {"model": {...}} (M3DM fusion),
{"state_dict": ...}, {"teacher": ...} (DINO) becomes the tensors of that dictionary with
the wrapper's name as a prefix ("base_model.MAE_encoder.norm.weight"); miad's converter
strips those prefixes (and DDP's "module."). Non-tensor entries (epochs, optimiser
settings, argument namespaces) are listed and skipped. Tensors are written contiguous,
as f32 (integer buffers such as `num_batches_tracked` as i64); optimiser state is dropped;
nothing is renamed or folded here (the converter does that).
"""

import sys

import torch
from safetensors.torch import save_file

DROPPED = ("optimizer", "optimizer_state_dict", "scaler", "lr_scheduler")
WRAPPERS = ("base_model", "model", "state_dict", "teacher", "student", "module", "net")


def flatten(obj, prefix, out, skipped):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        # miad reads f32/f16/bf16/f64 and i64: floats become f32, integers i64.
        t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
        out[prefix] = t.contiguous()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flatten(value, name, out, skipped)
    else:
        skipped.append(f"{prefix} ({type(obj).__name__})")


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    tensors, skipped = {}, []
    if isinstance(ckpt, dict):
        for key in DROPPED:
            if key in ckpt:
                skipped.append(f"{key} (optimiser state)")
        ckpt = {k: v for k, v in ckpt.items() if k not in DROPPED}
    if isinstance(ckpt, dict) and not any(isinstance(v, torch.Tensor) for v in ckpt.values()):
        # A wrapper dictionary: keep only the known state-dict wrappers if present.
        wrapped = {k: v for k, v in ckpt.items() if k in WRAPPERS and isinstance(v, dict)}
        for key, value in ckpt.items():
            if wrapped and key not in wrapped:
                skipped.append(f"{key} ({type(value).__name__})")
        flatten(wrapped or ckpt, "", tensors, skipped)
    else:
        flatten(ckpt, "", tensors, skipped)
    if not tensors:
        print(f"{src}: no tensors found", file=sys.stderr)
        return 1
    # safetensors refuses tensors that share memory: clone the duplicates.
    seen = set()
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            tensors[name] = t.clone()
        seen.add(key)
    save_file(tensors, dst, metadata={"source": src})
    total = sum(t.numel() for t in tensors.values())
    print(f"{dst}: {len(tensors)} tensors, {total} elements")
    for s in skipped:
        print(f"skipped (not a tensor): {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
