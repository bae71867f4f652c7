"""Moving models between devices."""

from __future__ import annotations

import torch
from torch import nn


def to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model.to(device)`` (float and quantized models alike; aiqvit >= 0.1.0 supports ``.to``)."""
    return model.to(torch.device(device))
