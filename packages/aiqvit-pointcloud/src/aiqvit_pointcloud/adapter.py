"""The core adapter for Point Transformer networks.

* Units (reconstructed one by one, in forward order): the stem, every transition down, every
  point transformer block, the decoder's global-context and transition-up modules, and the head.
  Each takes batch-first tensors (coordinates, features, per-sample neighbour indices) and
  returns one ``(B, ...)`` tensor, so cached unit inputs split per sample along dim 0.
* Every ``nn.Linear`` is quantized (weights per output channel, inputs per tensor), including the
  position-encoding MLP and the heads; the core adds low-rank compensation to them.
* Vector attention (:class:`~aiqvit_pointcloud.models.PointTransformerLayer`) has no matmuls; its
  quantized twin treats the relation ``gamma(phi(x_j) - psi(x_i) + delta)`` like ``Q K^T``:
  ``quantizers.query`` on ``psi(x_i)`` (the query projection) and ``quantizers.key`` on
  ``phi(x)`` (the key projection, before gathering the neighbours), i.e. the two operands of the
  subtraction; ``quantizers.probs`` (the post-Softmax quantizer, DFQ for AIQViT) on the Softmax
  over the neighbours, and ``quantizers.value`` on the aggregated values ``alpha(x_j) + delta``.
* ``layernorm_consumers`` is empty: the network normalizes with BatchNorm after each Linear, and
  every norm feeds a ReLU (not Linears alone), so RepQ-style scale reparameterization has nothing
  to fold into; BatchNorm stays in floating point.
"""

from __future__ import annotations

from typing import Any

from aiqvit import AdapterError, AttentionQuantizers, ModelAdapter, register_adapter
from torch import nn

from .models import (
    ClassifierHead,
    GlobalContext,
    PointTransformerBlock,
    PointTransformerCls,
    PointTransformerLayer,
    PointTransformerSeg,
    SegmentationHead,
    Stem,
    TransitionDown,
    TransitionUp,
    _PointTransformerBase,
)

UNIT_TYPES = (Stem, TransitionDown, PointTransformerBlock, GlobalContext, TransitionUp, ClassifierHead,
              SegmentationHead)


class QuantizedPointTransformerLayer(PointTransformerLayer):
    """A :class:`PointTransformerLayer` whose attention operands pass through ``quantizers``. It keeps
    the original's child modules (``linear_q``, ``linear_k``, ``linear_v``, ``linear_p``, ``linear_w``)."""

    def __init__(self, layer: PointTransformerLayer, quantizers: AttentionQuantizers):
        nn.Module.__init__(self)
        self.channels, self.share_planes = layer.channels, layer.share_planes
        for name, child in layer.named_children():
            setattr(self, name, child)
        self.quantizers = quantizers
        self.train(layer.training)

    def quant_query(self, q):
        return self.quantizers.query(q)

    def quant_key(self, k):
        return self.quantizers.key(k)

    def quant_probs(self, p):
        return self.quantizers.probs(p, dim=2)  # Softmax over the k neighbours: (B, N, k, C/s)

    def quant_value(self, v):
        return self.quantizers.value(v)


def wrap_vector_attention(module: nn.Module, quantizers: AttentionQuantizers) -> nn.Module:
    if isinstance(module, QuantizedPointTransformerLayer):
        raise AdapterError("this Point Transformer layer is already quantized")
    return QuantizedPointTransformerLayer(module, quantizers)


@register_adapter
class PointTransformerAdapter(ModelAdapter):
    name = "point_transformer"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return isinstance(model, _PointTransformerBase)

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if not isinstance(model, (PointTransformerCls, PointTransformerSeg)):
            raise AdapterError(f"{type(model).__name__} is not a Point Transformer network")
        # named_modules() visits the encoder, then the decoder, then the head: forward order
        return [(n, m) for n, m in model.named_modules() if isinstance(m, UNIT_TYPES)]

    def attention_wrappers(self):
        return {PointTransformerLayer: wrap_vector_attention}

    def quantizable_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def layernorm_consumers(self, model: nn.Module):
        return []

    def run(self, model: nn.Module, batch: Any) -> Any:
        """A batch is ``points`` (classification) or ``(points, category)`` (part segmentation)."""
        return model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
