"""Top-1 / top-5 classification accuracy."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: str | torch.device = "cpu", desc: str = "evaluate",
             progress: bool = True) -> dict:
    """Accuracy of ``model`` over ``(images, labels)`` batches: ``{"top1", "top5", "n"}`` (percent)."""
    model.eval()
    correct1 = correct5 = n = 0
    for x, y in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == y.unsqueeze(1)
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(1).sum().item()
        n += y.numel()
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n": n}
