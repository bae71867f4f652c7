"""Where does the accuracy of a finished quantized ViT go? Quantize as ``dev_probe.py`` does (held-out
TRAIN images, never the test split), then switch one group of activation quantizers off at a time and
report the dev top-1 that this recovers. (Weights are frozen to their codes after calibration, so they
are not switched off here; ``dev_probe.py --a-bits 8`` measures them.)

    python benchmarks/vision/residual_probe.py --bits 4 --dev-size 500 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from dev_probe import predictions
from torch.utils.data import Subset

from aiqvit.modules import AttentionQuantizers
from aiqvit.quantizers import Quantizer
from aiqvit_vision import pipeline, tasks
from aiqvit_vision.recipes import build_config, get_recipe, parse_overrides


def activation_groups(model) -> dict[str, list[Quantizer]]:
    out: dict[str, list[Quantizer]] = {}
    for i, block in enumerate(model.blocks):
        third = f"blocks {4 * (i // 4)}-{4 * (i // 4) + 3}"
        for role, layer in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                            ("fc2", block.mlp.fc2)):
            out.setdefault(f"in:{role}", []).append(layer.input_quantizer)
            out.setdefault(third, []).append(layer.input_quantizer)
        for m in block.modules():
            if isinstance(m, AttentionQuantizers):
                for op in ("query", "key", "probs", "value"):
                    q = getattr(m, f"{op}_quantizer")
                    out.setdefault(f"attn:{op}", []).append(q)
                    out.setdefault(third, []).append(q)
    out["in:patch_embed"] = [model.patch_embed.proj.input_quantizer]
    out["in:head"] = [model.head.input_quantizer]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="vit_s14_fmnist")
    p.add_argument("--method", default="aiqvit")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--dev-size", type=int, default=500)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = tasks.get_task(args.task)
    train = task.dataset("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    dev = Subset(train, sorted(perm[-args.dev_size:].tolist()))
    model = task.build()
    fp_pred, labels = predictions(model, dev)
    recipe = get_recipe(args.recipe)
    config = build_config(args.method, args.bits, args.bits, recipe, 0, parse_overrides(args.set))
    start = time.time()
    pipeline.quantize_model(model, train, config, recipe, progress=False)
    print(f"calibrated in {time.time() - start:.0f}s; FP {float((fp_pred == labels).float().mean() * 100):.2f}",
          flush=True)

    def top1() -> float:
        pred, _ = predictions(model, dev)
        return float((pred == labels).float().mean() * 100)

    base = top1()
    print(f"all quantized: {base:.2f}", flush=True)
    for name, qs in activation_groups(model).items():
        for q in qs:
            q.enabled = False
        acc = top1()
        for q in qs:
            q.enabled = True
        print(f"  float {name:14s} {acc:6.2f} ({acc - base:+.2f})", flush=True)


if __name__ == "__main__":
    main()
