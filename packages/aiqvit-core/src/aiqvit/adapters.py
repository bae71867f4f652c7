"""Model adapters: how a model family tells the core what to quantize.

An adapter is chosen by ``isinstance`` (:meth:`ModelAdapter.handles`), never by module-name
substrings. It answers five questions:

* :meth:`~ModelAdapter.units`: the reconstruction units (transformer blocks, optionally the
  patch embedding or head), in forward order. Each unit is optimized alone against its
  full-precision twin.
* :meth:`~ModelAdapter.attention_wrappers`: for each attention class of the family, a function
  ``(module, AttentionQuantizers) -> nn.Module`` that returns a drop-in replacement computing the
  same thing with its matmul operands passed through the given quantizers. The replacement must
  keep the original's child modules under the same attribute names (``qkv``, ``proj``, ...), so
  that layer names do not change.
* :meth:`~ModelAdapter.quantizable_layers`: the ``nn.Linear``/``nn.Conv2d`` modules to quantize
  (default: all of them).
* :meth:`~ModelAdapter.layernorm_consumers`: each post-LayerNorm activation as a pair
  ``(norm, [linear, ...])`` where the norm's output feeds only those linears (scale
  reparameterization folds into both).
* :meth:`~ModelAdapter.run`: how to call the model on one calibration batch.

Optional: :meth:`~ModelAdapter.key_projections` enables key centering (``aiqvit.centering``),
:meth:`~ModelAdapter.attention_projections` attention balancing (``aiqvit.balancing``),
:meth:`~ModelAdapter.attention_head_axis` one scale per head for the matmul operands
(``attention_scales="head"``);
:meth:`~ModelAdapter.output_view` narrows a unit's reconstruction loss to the part of its output that
the rest of the model reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import AdapterError

AttentionWrapper = Callable[[nn.Module, nn.Module], nn.Module]


class ModelAdapter:
    """Base class; subclass it per model family and :func:`register_adapter` it."""

    name: ClassVar[str] = "base"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return False

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def attention_wrappers(self) -> dict[type, AttentionWrapper]:
        return {}

    def quantizable_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]

    def layernorm_consumers(self, model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
        return []

    def run(self, model: nn.Module, batch: Any) -> Any:
        return model(batch)

    def key_projections(self, model: nn.Module) -> list[tuple[nn.Linear, slice]]:
        """``(linear, channels)`` per attention whose keys are ``linear``'s output ``channels`` and are
        read only by ``q @ k^T`` followed by a Softmax over the keys (no norm or other use of ``k``):
        a per-channel shift of those keys leaves the attention unchanged (key centering). Default: none."""
        return []

    def attention_projections(self, model: nn.Module) -> list:
        """One :class:`aiqvit.balancing.AttentionProjections` per attention whose query/key (and value/output)
        channels may be rescaled without changing the model (attention balancing). Default: none."""
        return []

    def attention_head_axis(self) -> int | None:
        """The axis of the heads in the query, key and value tensors that this family's attention wrappers
        hand to :class:`aiqvit.AttentionQuantizers` (``(batch, heads, tokens, head_dim)``: 1), or ``None``
        when the operands have no head axis. A scale per head keeps both matmuls integer: every head's
        ``q_h @ k_h^T`` and ``p_h @ v_h`` is a matmul of its own. Default: ``None``."""
        return None

    def output_view(self, model: nn.Module, unit_name: str) -> Callable[[Any], Any] | None:
        """A function of the unit's output that keeps only what the rest of the model reads from it (a ViT's
        last block: the class token rows, when the head pools that token), or ``None`` (default: all of it).
        Reconstruction compares the quantized and float outputs through it; it must keep the batch dimension."""
        return None

    def logit_units(self, model: nn.Module) -> set[str]:
        """Names of the units (from :meth:`units`) whose output is the model's class logits, last dim the
        classes; ``reconstruction.logits_loss="kl"`` reconstructs them against the float model's predicted
        distribution instead of its logits. Default: none."""
        return set()

    def sensitivity_logits(self, model: nn.Module, output: Any) -> torch.Tensor | None:
        """Class logits (classes along the last dim, any leading dims) in what :meth:`run` returned, from
        which ``reconstruction.loss_weighting="fisher"`` draws labels and differentiates ``log p(y|x)``, or
        ``None`` where the output holds none. Default: ``output`` itself when it is a floating-point tensor
        of at least two dims."""
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim >= 2:
            return output
        return None


_REGISTRY: list[type[ModelAdapter]] = []


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make ``cls`` available to :func:`find_adapter` (latest registered wins)."""
    if cls not in _REGISTRY:
        _REGISTRY.insert(0, cls)
    return cls


def registered_adapters() -> list[type[ModelAdapter]]:
    return list(_REGISTRY)


def find_adapter(model: nn.Module) -> ModelAdapter:
    for cls in _REGISTRY:
        if cls.handles(model):
            return cls()
    names = ", ".join(c.name for c in _REGISTRY) or "none"
    raise AdapterError(
        f"no adapter handles a model of type {type(model).__name__}; registered adapters: {names}. "
        "Import the task package for your model family (aiqvit_vision, aiqvit_detection, aiqvit_pointcloud) "
        "or pass adapter=... explicitly."
    )


def iter_attention_modules(model: nn.Module, wrappers: dict[type, AttentionWrapper]) -> Iterable[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if any(isinstance(module, t) for t in wrappers):
            yield name, module


def wrapper_for(module: nn.Module, wrappers: dict[type, AttentionWrapper]) -> AttentionWrapper:
    for t in type(module).__mro__:
        if t in wrappers:
            return wrappers[t]
    raise AdapterError(f"no attention wrapper for {type(module).__name__}")
