"""Which quantizers cost the most on the real ViT-S/14? Quantize with a method, then enable one
group of quantizers at a time and report the feature error (same protocol as feature_probe.py).

    python benchmarks/vision/sensitivity_probe.py METHOD N_CALIB BITS THREADS [key=value ...]
"""

from __future__ import annotations

import sys
import time

import torch

import aiqvit
from aiqvit.modules import AttentionQuantizers
from aiqvit.quantizers import Quantizer
from aiqvit_vision.recipes import build_config, get_recipe, parse_overrides

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from feature_probe import backbone, probe_data  # noqa: E402


def groups(model) -> dict[str, list[Quantizer]]:
    out: dict[str, list[Quantizer]] = {}
    for block in model.blocks:
        for role, layer in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                            ("fc2", block.mlp.fc2)):
            out.setdefault(f"w:{role}", []).append(layer.weight_quantizer)
            out.setdefault(f"in:{role}", []).append(layer.input_quantizer)
    for m in model.modules():
        if isinstance(m, AttentionQuantizers):
            for op in ("query", "key", "probs", "value"):
                out.setdefault(f"attn:{op}", []).append(getattr(m, f"{op}_quantizer"))
    out["patch_embed"] = [model.patch_embed.proj.weight_quantizer, model.patch_embed.proj.input_quantizer]
    return out


def main(argv):
    method, n_calib, bits, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    torch.set_num_threads(threads)
    calib, held, ref = probe_data(n_calib)
    overrides = {**parse_overrides(argv[4:]), "reconstruct": False, "lowrank": "off"}
    config = build_config(method, bits, bits, get_recipe("fast"), overrides=overrides)
    model = backbone()
    t = time.time()
    aiqvit.quantize(model, list(calib.split(16)), config, progress_bar=False)
    print(f"calibrated in {time.time() - t:.0f}s", flush=True)
    all_q = [m for m in model.modules() if isinstance(m, Quantizer)]

    def err():
        with torch.no_grad():
            f = model(held)
        return float((f - ref).pow(2).sum() / ref.pow(2).sum())

    print(f"{method} W{bits}A{bits} {argv[4:]} all on: rel={err():.4f}")
    g = groups(model)
    for only in (True, False):
        for name, qs in g.items():
            for q in all_q:
                q.enabled = not only
            for q in qs:
                q.enabled = only
            print(f"  {'only' if only else 'all but'} {name:12s} rel={err():.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
