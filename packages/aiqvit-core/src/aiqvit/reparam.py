"""Scale reparameterization of channel-wise Linear inputs (RepQ-ViT, METHOD.md section 1).

A channel-wise activation quantizer ``(s_c, z_c)`` on a Linear's input is replaced by one
layer-wise quantizer. With ``strength = 1`` (RepQ-ViT) the layer-wise pair is
``(s~ = mean s_c, z~ = round(mean z_c))``; the per-channel ratio ``r_c = s_c / s~`` and the
integer shift ``(z_c - z~)`` go into the producer (a norm's affine ``gamma / r``,
``(beta - m) / r``, or the layer's own input transform where the producer is not a norm) and into
the consumers (``W[:, c] * r_c``, ``b + W m``). With float weights the quantized output is
unchanged: the codes are identical channel by channel.

``strength = a < 1`` migrates only part of the range (``r_c = (s_c / s~)^a``, SmoothQuant-style)
and shifts every channel to start at 0 (``m_c`` = its calibrated minimum); the layer-wise quantizer then
covers the transformed channels. Full migration can make the weights the bottleneck: a channel
whose inputs reach 100x the others gets a weight column 100x larger, which per-output-channel
weight quantization cannot hold. ``choose_strength`` picks ``a`` per layer on calibration rows by
the error of the quantized layer output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from . import primitives as P
from .errors import AdapterError
from .modules import QuantLinear

DEFAULT_STRENGTH_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class _Migration:
    """``x' = (x - m) / r`` per input channel, and the layer-wise quantizer ``(scale, zero_point)`` of ``x'``."""

    r: torch.Tensor
    m: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def _channel_params(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    iq = layer.input_quantizer
    if not iq.per_channel or not bool(iq.initialized):
        raise AdapterError("input quantizer must be channel-wise and calibrated before reparameterization")
    return iq.scale.detach().abs().clamp(min=1e-8).reshape(-1), iq.zero_point.reshape(-1)


def migration(layer: QuantLinear, strength: float = 1.0) -> _Migration:
    """The transform that folds ``layer``'s channel-wise input quantizer at ``strength``."""
    if not 0.0 <= strength <= 1.0:
        raise AdapterError(f"reparameterization strength must lie in [0, 1], got {strength}")
    s, z = _channel_params(layer)
    bits = layer.input_quantizer.bits
    s_layer = s.mean()
    if strength == 1.0:  # RepQ-ViT: exact, integer zero-point shift
        z_layer = torch.round(z.mean())
        return _Migration(s / s_layer, -s * (z - z_layer), s_layer, z_layer)
    qmin, qmax = P.qrange(bits)
    lo, hi = (qmin - z) * s, (qmax - z) * s
    r = (s / s_layer) ** strength
    # every channel is shifted to start at 0, so one grid with zero-point 0 holds them all unclipped
    width = ((hi - lo) / r).max()
    scale, zero_point = P.affine_params_from_range(torch.zeros_like(width), width, bits)
    return _Migration(r, lo, scale, zero_point)


@torch.no_grad()
def _fold_into_consumer(layer: QuantLinear, mig: _Migration, reinit_weights: bool) -> None:
    layer.fold_lowrank()
    layer.add_to_bias(layer.weight.data @ mig.m)
    layer.weight.data = layer.weight.data * mig.r
    q = layer.input_quantizer
    q.per_channel = False
    q.scale.data = mig.scale.clone()
    q.zero_point = mig.zero_point.clone()
    q.kept_rows = None
    if reinit_weights:
        layer.init_weight_quantizer()


@torch.no_grad()
def layer_output_error(consumers: list[QuantLinear], rows: torch.Tensor, mig: _Migration,
                       references: list[torch.Tensor] | None = None) -> float:
    """Squared error of the consumers' outputs on ``rows`` with quantized inputs and weights
    after the migration ``mig``, against the float layers (``references``: their float outputs
    on ``rows`` without bias, computed here when not given)."""
    iq = consumers[0].input_quantizer
    x_q = P.fake_quantize_affine((rows - mig.m) / mig.r, mig.scale, mig.zero_point, iq.bits)
    if references is None:
        references = _float_outputs(consumers, rows)
    err = 0.0
    for layer, ref in zip(consumers, references):
        w = layer.merged_weight().detach()
        wq = copy.deepcopy(layer.weight_quantizer)
        w_migrated = w * mig.r
        wq.calibrate_from(w_migrated)
        out = x_q @ wq.fake_quantize(w_migrated).t() + w @ mig.m  # + the fold's bias shift; neither side has the bias
        err += float((out - ref).pow(2).sum())
    return err


def _float_outputs(consumers: list[QuantLinear], rows: torch.Tensor) -> list[torch.Tensor]:
    return [rows @ layer.merged_weight().detach().t() for layer in consumers]


@torch.no_grad()
def choose_strength(consumers: list[QuantLinear], grid: tuple[float, ...] = DEFAULT_STRENGTH_GRID) -> float:
    """The strength in ``grid`` whose folded, quantized layers best reproduce the float outputs on
    the calibration rows the first consumer's input quantizer kept."""
    rows = consumers[0].input_quantizer.kept_rows
    if rows is None or rows.numel() == 0:
        raise AdapterError("strength search needs calibration rows: set input_quantizer.keep_rows before calibration")
    references = _float_outputs(consumers, rows)
    errors = {a: layer_output_error(consumers, rows, migration(consumers[0], a), references) for a in grid}
    return min(grid, key=lambda a: (errors[a], -a))


@torch.no_grad()
def reparameterize_input(layer: QuantLinear, reinit_weights: bool = True, strength: float = 1.0) -> None:
    """Channel-wise input quantization of a Linear whose producer is not a norm (e.g. after GELU or
    the attention matmul): the per-channel affine ``(x - m) / r`` becomes the layer's
    ``input_transform`` (in integer deployment, the producer's per-channel requantization
    multipliers) and the weights absorb ``r``; the input quantizer becomes layer-wise."""
    mig = migration(layer, strength)
    layer.set_input_transform(1.0 / mig.r, -mig.m / mig.r)
    _fold_into_consumer(layer, mig, reinit_weights)


@torch.no_grad()
def reparameterize_pair(norm: nn.Module, consumers: list[QuantLinear], reinit_weights: bool = True,
                        strength: float = 1.0) -> None:
    if getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None:
        raise AdapterError(f"scale reparameterization needs an affine norm with weight and bias, got {type(norm).__name__}")
    if not consumers or not all(isinstance(c, QuantLinear) for c in consumers):
        raise AdapterError("scale reparameterization needs the norm's consumers to be quantized Linear layers")
    mig = migration(consumers[0], strength)
    norm.weight.data = norm.weight.data / mig.r
    norm.bias.data = (norm.bias.data - mig.m) / mig.r
    for layer in consumers:
        _fold_into_consumer(layer, mig, reinit_weights)
