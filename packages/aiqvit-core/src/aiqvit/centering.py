"""Key centering: a function-preserving change of the float model that narrows the range of the
attention keys before quantization.

In softmax attention the logits of one query are ``q . k_j`` over the keys ``j``. Shifting every key
by the same vector ``c`` adds ``q . c`` to all logits of that query, which the Softmax over keys
ignores. So the key bias is free, and we choose it to put each key channel's calibrated range
around zero: ``bias_k -= (max_c + min_c) / 2``. Real ViTs carry large shared offsets in their keys
(DINOv2 ViT-S/14: a per-tensor 4-bit key quantizer moves the attention rows by 0.2-0.9 in L1;
centered, by 0.08-0.27), and a per-tensor quantizer spends its levels on that offset.

The adapter names the key projections (:meth:`aiqvit.ModelAdapter.key_projections`); only keys
read by ``q @ k^T`` followed by a Softmax over keys qualify (no norm on ``k``, no other reader).
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters import ModelAdapter
from .errors import AdapterError
from .observe import run_with_hooks


@torch.no_grad()
def key_ranges(model: nn.Module, adapter: ModelAdapter, batches: list, show: bool = False):
    """Per-channel ``(min, max)`` of every key projection's key channels over ``batches``."""
    projections = adapter.key_projections(model)
    ranges: list[list[torch.Tensor | None]] = [[None, None] for _ in projections]
    hooks = []
    for i, (linear, channels) in enumerate(projections):
        if not isinstance(linear, nn.Linear):
            raise AdapterError(f"key projection {i} is a {type(linear).__name__}, not an nn.Linear")

        def hook(module, args, output, i=i, channels=channels):
            keys = output[..., channels].reshape(-1, output[..., channels].shape[-1]).float()
            lo, hi = keys.amin(0), keys.amax(0)
            old = ranges[i]
            ranges[i] = [lo if old[0] is None else torch.minimum(old[0], lo),
                         hi if old[1] is None else torch.maximum(old[1], hi)]

        hooks.append((linear, hook))
    run_with_hooks(lambda batch: adapter.run(model, batch), batches, hooks, "key ranges", show)
    return projections, ranges


@torch.no_grad()
def center_attention_keys(model: nn.Module, adapter: ModelAdapter, batches: list, show: bool = False) -> int:
    """Shift the bias of every key projection so that each key channel's calibrated range is centered
    on zero (the model's outputs do not change). Returns how many projections were centered."""
    projections, ranges = key_ranges(model, adapter, batches, show)
    centered = 0
    for (linear, channels), (lo, hi) in zip(projections, ranges):
        if lo is None:
            continue  # this attention did not run on the calibration data
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                   device=linear.weight.device), requires_grad=False)
        linear.bias.data[channels] -= ((lo + hi) / 2).to(linear.bias.dtype)
        centered += 1
    return centered
