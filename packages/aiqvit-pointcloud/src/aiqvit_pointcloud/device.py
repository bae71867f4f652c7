"""Moving models between devices.

``nn.Module.to`` cannot be used on a prepared model with aiqvit 0.1.0: its ``QuantLinear`` defines
``_apply(x, weight, bias)``, shadowing ``nn.Module._apply`` which ``.to()`` relies on. This moves
every parameter and buffer directly instead (for float and quantized models alike).
"""

from __future__ import annotations

import torch
from torch import nn


def to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    device = torch.device(device)
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and param.device != device:
                param.data = param.data.to(device)
        for name, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
    return model
