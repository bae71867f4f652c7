"""Orthogonal rotation of Linear inputs (ours, QuaRot-style; docs/METHOD-NOTES.md).

``y = W x + b = (W R)(R^T (x - c)) + (b + W c)`` for any orthogonal ``R`` and vector ``c``. The
layer stores ``W R`` and ``b + W c``, and its input quantizer sees ``R^T (x - c)`` instead of ``x``.
With ``R`` a randomized Hadamard matrix every rotated channel is an equal-weight mix of all input
channels, so a few outlier channels or heavy tails no longer set the range of a per-tensor
quantizer, and the weight rows ``W R`` lose their outlier columns too. ``c`` is the calibration
mean of each input channel (the rotation would otherwise turn per-channel offsets into spread).

``R = diag(signs) (H_m kron H_n) / sqrt(d)``: ``H_n`` Sylvester (``n`` a power of two), ``H_m`` a
Paley matrix of order 12 or 20 or 1 (``d = 384 = 12 x 32``, ``1536 = 12 x 128``). Applying it costs
``d (m + n)`` multiply-adds per row rather than ``d^2``. Where ``d`` has no such factorization ``R`` is a
seeded dense random orthogonal matrix, which is then stored. Signs, centre and dense matrix are
buffers, so a saved model reloads with its rotations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import AIQViTError
from .modules import QuantLinear
from .observe import run_with_hooks

PALEY_ORDERS = (12, 20)  # q + 1 for the primes q = 11, 19 (q = 3 mod 4: Paley construction I)


def sylvester_hadamard(n: int) -> torch.Tensor:
    if n < 1 or n & (n - 1):
        raise AIQViTError(f"Sylvester Hadamard matrices have power-of-two order, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def paley_hadamard(order: int) -> torch.Tensor:
    """Hadamard matrix of ``order = q + 1`` for a prime ``q = 3 (mod 4)`` (Paley construction I)."""
    q = order - 1
    if q < 3 or q % 4 != 3 or any(q % p == 0 for p in range(2, int(math.isqrt(q)) + 1)):
        raise AIQViTError(f"Paley construction I needs order q + 1 with q prime and q = 3 mod 4, got {order}")
    residues = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    jacobsthal = torch.stack([chi[(torch.arange(q) - i) % q] for i in range(q)])  # Q[i, j] = chi(j - i)
    s = torch.zeros(order, order, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jacobsthal
    return s + torch.eye(order, dtype=torch.float64)


def hadamard_factors(d: int) -> tuple[int, int] | None:
    """``(m, n)`` with ``d = m n``, ``n`` a power of two and ``m`` in (1, 12, 20), or None."""
    for m in (1, *PALEY_ORDERS):
        if d % m == 0:
            n = d // m
            if n & (n - 1) == 0:
                return m, n
    return None


class InputRotation(nn.Module):
    """``x -> ((x - center) * signs) (H_m kron H_n) / sqrt(d)`` (or ``(x - center) @ dense``)."""

    def __init__(self, features: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.features = features
        self.factors = hadamard_factors(features)
        self.register_buffer("center", torch.zeros(features))
        self.register_buffer("signs", torch.randint(0, 2, (features,), generator=gen).float() * 2 - 1)
        if self.factors is None:
            q, r = torch.linalg.qr(torch.randn(features, features, generator=gen, dtype=torch.float64))
            self.register_buffer("dense", (q * torch.sign(torch.diagonal(r))).float())
        else:
            self.dense = None
            m, n = self.factors
            self.register_buffer("h_m", paley_hadamard(m).float() if m > 1 else torch.ones(1, 1), persistent=False)
            self.register_buffer("h_n", sylvester_hadamard(n).float(), persistent=False)

    def extra_repr(self) -> str:
        kind = "dense" if self.factors is None else f"hadamard {self.factors[0]}x{self.factors[1]}"
        return f"features={self.features}, {kind}"

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x R`` on the last dimension (no centering)."""
        if self.dense is not None:
            return x @ self.dense.to(x.dtype)
        m, n = self.factors
        y = (x * self.signs.to(x.dtype)).reshape(*x.shape[:-1], m, n) @ self.h_n.to(x.dtype)
        if m > 1:
            y = self.h_m.t().to(x.dtype) @ y  # (H_m kron H_n) acts on the row-major (m, n) view
        return y.reshape(x.shape) / math.sqrt(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotate(x - self.center.to(x.dtype))


ROTATION_SCOPES = ("off", "all", "not_post_ln")


def rotation_targets(model: nn.Module, scope: str, post_ln: set[str]) -> list[tuple[str, QuantLinear]]:
    """The QuantLinear layers whose inputs ``scope`` rotates (``post_ln``: names of norm consumers)."""
    if scope not in ROTATION_SCOPES:
        raise AIQViTError(f"input_rotation={scope!r} is not one of {ROTATION_SCOPES}")
    if scope == "off":
        return []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    return [(n, m) for n, m in layers if scope == "all" or n not in post_ln]


@torch.no_grad()
def input_means(model: nn.Module, layers: list[tuple[str, QuantLinear]], run, batches: list,
                show: bool = False) -> dict[str, torch.Tensor]:
    """Per-channel mean of each layer's input over ``batches`` (``run(batch)`` runs the model)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, layer in layers:
        def hook(module, args, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append((layer, hook))
    run_with_hooks(run, batches, hooks, "input means", show, pre=True)
    return {n: (sums[n] / counts[n]).float() for n in sums}


@torch.no_grad()
def rotate_layer_input(layer: QuantLinear, center: torch.Tensor | None, seed: int) -> InputRotation:
    """Give ``layer`` an :class:`InputRotation` (function-preserving in float) and re-initialize its
    weight quantizer on the rotated weight."""
    if layer.input_rotation is not None or layer.input_scale is not None or layer.lowrank is not None:
        raise AIQViTError("rotate a layer's input before reparameterization and low-rank compensation")
    rotation = InputRotation(layer.in_features, seed).to(layer.weight.device)
    if center is not None:
        rotation.center.copy_(center.to(rotation.center))
        layer.add_to_bias(layer.weight.data @ rotation.center)
    layer.weight.data = rotation.rotate(layer.weight.data)
    layer.input_rotation = rotation
    layer.init_weight_quantizer()
    return rotation
