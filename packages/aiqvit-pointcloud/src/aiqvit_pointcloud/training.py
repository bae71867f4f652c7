"""Seeded full-precision training of the Point Transformer networks (used by the benchmark scripts)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.common import PointCloudDataset, collate
from .evaluation import PRIMARY_METRIC, evaluate, run_batch
from .models import PointTransformerConfig, build_model


@dataclass
class TrainRecipe:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def small_config_for(task: str, dataset: PointCloudDataset, **overrides) -> PointTransformerConfig:
    """The reduced CPU configuration sized for ``dataset`` (classes, parts, input channels)."""
    extra = dict(num_points=dataset.num_points, in_channels=dataset.in_channels)
    if task == "cls":
        extra.update(num_classes=dataset.num_classes)
    else:
        extra.update(num_classes=dataset.num_parts, num_categories=dataset.num_classes)
    return PointTransformerConfig.small(task, **{**extra, **overrides})


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_model(task: str, config: PointTransformerConfig, train_set: PointCloudDataset,
                test_set: PointCloudDataset | None = None, recipe: TrainRecipe | None = None,
                device: str | torch.device = "cpu", progress: bool = True, log=print) -> tuple[nn.Module, dict]:
    """Train from scratch (AdamW, linear warm-up then cosine decay). Returns the model (eval mode)
    and a history with per-epoch loss, wall time and the final test metrics."""
    recipe = recipe or TrainRecipe()
    torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    train_set = train_set.subset(range(len(train_set)), train=True)
    train_set.reseed(recipe.seed)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(recipe.seed)
    loader = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                        generator=gen)
    total = recipe.epochs * len(loader)

    def lr_at(step):
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        t = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t)) * 0.99 + 0.01

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history = {"epochs": [], "recipe": recipe.to_dict()}
    start = time.time()
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        losses = []
        for points, labels, parts in tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                                          leave=False):
            points, labels, parts = points.to(device), labels.to(device), parts.to(device)
            logits = run_batch(model, task, points, labels)
            if task == "cls":
                loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
            else:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), parts.reshape(-1),
                                       label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "seconds": time.time() - start}
        history["epochs"].append(entry)
        log(f"[train {task}] epoch {epoch + 1}/{recipe.epochs} loss {entry['loss']:.4f} ({entry['seconds']:.0f} s)")
    history["train_seconds"] = time.time() - start
    model.eval()
    if test_set is not None:
        metrics = evaluate(model, test_set, task, device=device, progress=progress)
        history["test"] = metrics
        log(f"[train {task}] test {PRIMARY_METRIC[task]} {metrics[PRIMARY_METRIC[task]]:.2f}")
    return model, history
