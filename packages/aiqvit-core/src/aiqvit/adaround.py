"""Learned weight rounding (AdaRound, Nagel et al., ICML 2020), trained by the block reconstruction loss
as BRECQ does. ``QuantConfig.weight_rounding="adaround"``; ours beyond the paper, docs/METHOD-NOTES.md.

Each weight element gets a rounding variable ``V``: its code is ``floor(w / s) + h(V) + z`` with the
rectified sigmoid ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` while the unit trains
("soft"), and ``floor(w / s) + [V >= 0] + z`` afterwards ("hard"). ``V`` starts where ``h(V)`` equals the
fractional part of ``w / s``, so the hard codes start as nearest rounding. A regularizer
``mean(1 - |2 h(V) - 1|^beta)``, with ``beta`` annealed from 20 to 2 after a warm-up, pulls every
``h(V)`` to 0 or 1 so that the hard codes match what the loss was trained on.

After a unit, :meth:`AdaRound.finish` keeps only the chosen 0/1 offsets in the weight quantizer (a
non-persistent buffer); ``freeze`` turns them into the stored weight codes. The float weights are never
changed: later units' targets come from them.
"""

from __future__ import annotations

import torch
from torch import nn

from .modules import _QuantLayer
from .primitives import ADAROUND_GAMMA as GAMMA
from .primitives import ADAROUND_ZETA as ZETA
from .primitives import rectified_sigmoid
from .quantizers import UniformQuantizer

BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2  # fraction of the iterations before the regularizer starts (AdaRound's setting)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``rectified_sigmoid(V) == h`` for ``h`` in [0, 1]."""
    p = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def rounding_penalty(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean(1 - |2 h(V) - 1|^beta)``: 0 when every offset is 0 or 1."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).mean()


def annealed_beta(t: int, total: int) -> float | None:
    """The regularizer's exponent at iteration ``t`` of ``total``; ``None`` during the warm-up."""
    start = WARMUP * total
    if t < start:
        return None
    progress = (t - start) / max(total - start, 1)
    return BETA_END + (BETA_START - BETA_END) * (1 - progress)


class AdaRound:
    """The rounding variables of every quantized layer in one unit (per-channel uniform weight quantizers)."""

    def __init__(self, unit: nn.Module, reg: float, lr: float, learn_scale: bool = False):
        self.reg = reg
        self.lr = lr
        self.learn_scale = learn_scale
        self.layers = [m for m in unit.modules()
                       if isinstance(m, _QuantLayer) and isinstance(m.weight_quantizer, UniformQuantizer)
                       and m.weight_quantizer.enabled and not bool(m.weight_is_quantized)]

    @torch.no_grad()
    def attach(self) -> None:
        """Start soft rounding at the fractional part of ``w / s`` (nearest rounding once hardened)."""
        for layer in self.layers:
            wq = layer.weight_quantizer
            ws = layer.merged_weight().detach() / wq.scale.detach().abs().clamp(min=1e-8)
            wq.rounding = nn.Parameter(inverse_rectified_sigmoid(ws - torch.floor(ws)), requires_grad=False)
            wq.rounding_hard = False

    def parameters(self) -> list[nn.Parameter]:
        return [layer.weight_quantizer.rounding for layer in self.layers]

    def param_groups(self) -> list[dict]:
        params = self.parameters()
        return [dict(params=params, lr=self.lr)] if params else []

    def penalty(self, t: int, total: int) -> torch.Tensor | None:
        """The regularizer at iteration ``t`` (relative: multiply by the unit's loss scale), or ``None``."""
        beta = annealed_beta(t, total)
        params = self.parameters()
        if beta is None or not params:
            return None
        return self.reg * torch.stack([rounding_penalty(v, beta) for v in params]).mean()

    def harden(self) -> None:
        for layer in self.layers:
            layer.weight_quantizer.rounding_hard = True

    @torch.no_grad()
    def finish(self) -> None:
        """Keep the hard 0/1 offsets (until :meth:`~aiqvit.modules._QuantLayer.freeze` stores the weight codes)
        and drop the rounding variables. The float weights stay untouched: they are the targets' weights."""
        for layer in self.layers:
            wq = layer.weight_quantizer
            if wq.rounding is None:
                continue
            wq.rounding_offset = wq.rounding.detach() >= 0
            wq.rounding = None
            wq.rounding_hard = False
