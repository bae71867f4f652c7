"""Train the DeiT-Tiny- and Swin-Tiny-architecture Fashion-MNIST models from scratch (seeded, reproducible).

No pretrained DeiT/Swin weights are reachable here, so these two small models give the DeiT and Swin adapters
real trained weights to quantize. Architectures (reduced from the ImageNet ones, see aiqvit_vision.tasks):

* ``deit_tiny_fmnist``: timm ``VisionTransformer``, 28 px, patch 7 (4x4 tokens + cls), embed 192, 3 heads, depth 4;
* ``swin_tiny_fmnist``: timm ``SwinTransformer``, 32 px, patch 4, window 4, embed 96, depths 2/2/2, heads 3/6/12
  (8x8 -> 4x4 -> 2x2 tokens; shifted windows with masks in the first stage).

Measured on the shared 2-core machine (1 thread, busy): ~1.6 s per step of 128 images for the DeiT, ~2.6 s for
the Swin, hence the default step counts (~15 minutes each).

Recipe: AdamW (lr 1e-3, weight decay 0.05), linear warm-up then cosine decay, label smoothing 0.1, random
crop (pad 2) + horizontal flip, batch 128, a fixed number of steps (``--steps``; fixed steps, not a time budget,
so the run is reproducible). The final weights are rounded to fp16, evaluated on the 10k TEST images, and
written to ``packages/aiqvit-vision/src/aiqvit_vision/weights/<task>.safetensors``.

Rerun: ``OMP_NUM_THREADS=1 python benchmarks/vision/train_from_scratch.py --task deit_tiny_fmnist``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from aiqvit.io_utils import atomic_path
from aiqvit_vision import tasks
from aiqvit_vision.data import loader
from aiqvit_vision.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "packages/aiqvit-vision/src/aiqvit_vision/weights"
ARCHITECTURES = {"deit_tiny_fmnist": tasks.deit_tiny_architecture, "swin_tiny_fmnist": tasks.swin_tiny_architecture}
DEFAULT_STEPS = {"deit_tiny_fmnist": 600, "swin_tiny_fmnist": 400}


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after edge padding and random horizontal flip, per image, seeded."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(ARCHITECTURES), required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    steps = args.steps or DEFAULT_STEPS[args.task]
    out = args.out or WEIGHTS / tasks.get_task(args.task).weights_file
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    task = tasks.get_task(args.task)
    train = task.dataset("train")
    images = train.transform(train.images)  # the whole split, normalized, [60000, 3, R, R]
    labels = train.labels
    model = ARCHITECTURES[args.task]()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    warmup = max(1, steps // 20)
    t0 = time.time()
    model.train()
    perm, pos = torch.randperm(len(labels), generator=gen), 0
    bar = tqdm(range(steps), desc=f"train {args.task}", unit="step")
    for step in bar:
        if pos + args.batch_size > len(perm):
            perm, pos = torch.randperm(len(labels), generator=gen), 0
        idx = perm[pos:pos + args.batch_size]
        pos += args.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args.lr, warmup)
        x = augment(images[idx], gen)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.time() - t0

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    test = task.dataset("test")
    result = evaluate(model.eval(), loader(test, 256), desc="FP test")
    meta = {"task": args.task, "steps": steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "weight_decay": args.weight_decay, "epochs": round(steps * args.batch_size / len(labels), 2),
            "train_seconds": round(train_seconds), "test_top1_fp16": round(result["top1"], 2),
            "script": "benchmarks/vision/train_from_scratch.py"}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"aiqvit": json.dumps(meta)})
    print(json.dumps(meta, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
