"""Post-LayerNorm scale reparameterization (RepQ-ViT, METHOD.md section 1).

A channel-wise activation quantizer ``(s_c, z_c)`` on a LayerNorm output is replaced by one
layer-wise pair ``(s~ = mean s_c, z~ = round(mean z_c))``; the per-channel ratio ``r1 = s / s~``
and integer shift ``r2 = z - z~`` go into the LayerNorm affine (``gamma / r1``,
``(beta + s r2) / r1``) and into the consumers (``W[:, c] * r1_c``, ``b - W (s r2)``). With float
weights the quantized output is unchanged: the codes are identical channel by channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import AdapterError
from .modules import QuantLinear


def _layerwise_params(layer: QuantLinear):
    iq = layer.input_quantizer
    if not iq.per_channel or not bool(iq.initialized):
        raise AdapterError("input quantizer must be channel-wise and calibrated before reparameterization")
    s = iq.scale.detach().abs().clamp(min=1e-8).reshape(-1)
    z = iq.zero_point.reshape(-1)
    s_layer, z_layer = s.mean(), torch.round(z.mean())
    return s, s / s_layer, z - z_layer, s_layer, z_layer


@torch.no_grad()
def _fold_into_consumer(layer: QuantLinear, s, r1, r2, s_layer, z_layer, reinit_weights: bool) -> None:
    layer.fold_lowrank()
    shift = layer.weight.data @ (s * r2)
    if layer.bias is None:
        layer.bias = nn.Parameter(-shift, requires_grad=False)
    else:
        layer.bias.data = layer.bias.data - shift
    layer.weight.data = layer.weight.data * r1
    q = layer.input_quantizer
    q.per_channel = False
    q.scale.data = s_layer.clone()
    q.zero_point = z_layer.clone()
    if reinit_weights:
        layer.init_weight_quantizer()


@torch.no_grad()
def reparameterize_input(layer: QuantLinear, reinit_weights: bool = True) -> None:
    """Channel-wise input quantization of a Linear whose producer is not a norm (e.g. after GELU or
    the attention matmul): the per-channel affine ``x / r1 + s r2 / r1`` becomes the layer's
    ``input_transform`` (in integer deployment, the producer's per-channel requantization
    multipliers) and the weights absorb ``r1``; the input quantizer becomes layer-wise."""
    s, r1, r2, s_layer, z_layer = _layerwise_params(layer)
    layer.set_input_transform(1.0 / r1, s * r2 / r1)
    _fold_into_consumer(layer, s, r1, r2, s_layer, z_layer, reinit_weights)


@torch.no_grad()
def reparameterize_pair(norm: nn.Module, consumers: list[QuantLinear], reinit_weights: bool = True) -> None:
    if getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None:
        raise AdapterError(f"scale reparameterization needs an affine norm with weight and bias, got {type(norm).__name__}")
    if not consumers or not all(isinstance(c, QuantLinear) for c in consumers):
        raise AdapterError("scale reparameterization needs the norm's consumers to be quantized Linear layers")
    s, r1, r2, s_layer, z_layer = _layerwise_params(consumers[0])
    norm.weight.data = norm.weight.data / r1
    norm.bias.data = (norm.bias.data + s * r2) / r1
    for layer in consumers:
        _fold_into_consumer(layer, s, r1, r2, s_layer, z_layer, reinit_weights)
