"""Context managers over every quantizer of a model (brevitas style)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .modules import _QuantLayer
from .quantizers import Quantizer


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every quantizer in ``model`` except the quantized layers' weight quantizers."""
    weights = {id(m.weight_quantizer) for m in model.modules() if isinstance(m, _QuantLayer)}
    return [q for _, q in quantizers(model) if id(q) not in weights]


@contextlib.contextmanager
def quantization_disabled(model: nn.Module):
    """Every quantizer is the identity inside the block: the model computes in full precision."""
    saved = [(q, q.enabled) for _, q in quantizers(model)]
    for q, _ in saved:
        q.enabled = False
    try:
        yield model
    finally:
        for q, state in saved:
            q.enabled = state


@contextlib.contextmanager
def calibration_mode(model: nn.Module, only: list[Quantizer] | None = None):
    """Quantizers observe what flows through them (and pass it unchanged); on a clean exit each
    one that saw data initializes its parameters. Weight quantizers are initialized from their
    weights at preparation and are left alone here."""
    targets = only if only is not None else activation_quantizers(model)
    saved = [(q, q.enabled) for _, q in quantizers(model)]
    for q, _ in saved:
        q.enabled = False
    for q in targets:
        q.calibrating = True
        q.seen_data = False
    try:
        yield model
    except BaseException:
        for q in targets:
            q.calibrating = False
        raise
    else:
        for q in targets:
            q.calibrating = False
            if q.seen_data:  # a quantizer on a path the data never took stays uninitialized
                q.finish_calibration()
    finally:
        for q, state in saved:
            q.enabled = state


def set_quantization(model: nn.Module, enabled: bool) -> None:
    for _, q in quantizers(model):
        q.enabled = enabled
