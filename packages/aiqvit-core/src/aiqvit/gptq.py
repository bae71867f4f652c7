"""Hessian-aware weight rounding (GPTQ, Frantar et al., ICLR 2023) on the layers' own quantization grids.

Rounding every weight to its nearest level ignores that the errors of the weights of one output
channel add up on the layer output through the correlated input channels. GPTQ rounds one input
column at a time and spreads each column's rounding error over the columns not yet rounded, in
proportion to the inverse of ``H = X^T X`` (X: the layer's inputs). Here it only chooses *which level*
each weight takes, on the grid that the weight quantizer already has (per output channel scale and
zero-point): the weight is replaced by those levels, so ``Q_w(W0)`` returns them unchanged and
reconstruction (learned step sizes, the low-rank branch) starts from the GPTQ solution.
"""

from __future__ import annotations

import torch

from .modules import QuantLinear
from .quantizers import UniformQuantizer
from .reconstruction import _eval_all_losses


class InputGram:
    """Accumulates ``X^T X`` of what enters a layer's matmul (the input quantizer's output)."""

    def __init__(self, layer: QuantLinear):
        self.gram = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
        self.rows = 0
        self._handle = layer.input_quantizer.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        x = output.detach().reshape(-1, output.shape[-1]).double()
        self.gram += x.T @ x
        self.rows += x.shape[0]

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def gptq_round(weight: torch.Tensor, gram: torch.Tensor, quantizer: UniformQuantizer, damp: float = 0.01,
               act_order: bool = True) -> torch.Tensor:
    """Levels of ``quantizer``'s per-output-channel grid for ``weight`` (out, in), chosen by GPTQ with the
    input Gram matrix ``gram`` (in, in). ``damp`` x mean(diag) is added to the diagonal; ``act_order``
    rounds the columns with the largest input energy first."""
    if weight.ndim != 2 or gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gptq_round needs weight (out, in) and gram (in, in), got {tuple(weight.shape)}, "
                         f"{tuple(gram.shape)}")
    w = weight.detach().double().clone()
    h = gram.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(w.shape[1])
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads over columns > i
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale = quantizer.scale.detach().abs().clamp(min=1e-8).double().reshape(-1, 1)
    zero = quantizer.zero_point.detach().double().reshape(-1, 1)
    qmax = 2 ** quantizer.bits - 1
    out = torch.empty_like(w)
    for i in range(w.shape[1]):
        col = w[:, i:i + 1]
        q = (torch.clamp(torch.round(col / scale) + zero, 0, qmax) - zero) * scale
        out[:, i:i + 1] = q
        err = (col - q) / hinv[i, i]
        w[:, i + 1:] -= err @ hinv[i:i + 1, i + 1:]
    result = torch.empty_like(out)
    result[:, perm] = out
    return result.to(weight.dtype)


def gptq_layers(layers: list[QuantLinear], grams: list[InputGram], damp: float = 0.01) -> None:
    """Replace each layer's float weight by its GPTQ levels (layers with a per-channel uniform weight grid)."""
    for layer, g in zip(layers, grams):
        wq = layer.weight_quantizer
        if g.rows == 0 or not isinstance(wq, UniformQuantizer) or not wq.per_channel:
            continue
        layer.weight.data = gptq_round(layer.weight.data, g.gram, wq, damp)


def gptq_unit(unit: torch.nn.Module, data, damp: float = 0.01) -> int:
    """GPTQ every ``QuantLinear`` of ``unit`` (without a low-rank branch yet) from one forward pass of the
    unit, as it is now, over ``data`` (an :class:`aiqvit.reconstruction.UnitData`). Returns the layer count."""
    layers = [m for m in unit.modules() if isinstance(m, QuantLinear) and m.lowrank is None
              and not bool(m.weight_is_quantized)]
    grams = [InputGram(layer) for layer in layers]
    try:
        _eval_all_losses(unit, data)  # one no-grad pass over every sample feeds the Gram hooks
    finally:
        for g in grams:
            g.remove()
    gptq_layers(layers, grams, damp)
    return len(layers)
