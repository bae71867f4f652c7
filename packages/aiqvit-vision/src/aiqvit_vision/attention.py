"""Quantization-aware drop-ins for timm's attention modules.

Each replacement is an instance of a subclass of the original class that takes over the original's
parameters, buffers and child modules (same attribute names: ``qkv``, ``proj``, ``q_norm``, ...), so layer
names and every other method (e.g. Swin's ``set_window_size``) are unchanged. Only ``forward`` differs: it
always computes the explicit attention path (never fused SDPA) and passes the matmul operands through the
:class:`aiqvit.AttentionQuantizers`:

    q' = quantizers.query(q * scale), k' = quantizers.key(k)
    p  = quantizers.probs(softmax(q' @ k'^T + bias/mask)), v' = quantizers.value(v)
    out = proj(attn_drop(p) @ v')

With the quantizers disabled this equals timm's float module (up to the fused-vs-explicit rounding, ~1e-7).
"""

from __future__ import annotations

import copy

import torch
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from torch import nn

from aiqvit import AttentionQuantizers


def _adopt(module: nn.Module, cls: type, quantizers: AttentionQuantizers) -> nn.Module:
    """A ``cls`` instance (a subclass of ``type(module)``) sharing ``module``'s state, plus ``quantizers``."""
    new = cls.__new__(cls)
    # shallow copies of the registries (_modules, _parameters, hooks, ...): adding ``quantizers`` to the
    # replacement must not add it to the original
    state = {k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    new.__dict__.update(state)
    new.fused_attn = False
    new.quantizers = quantizers
    return new


class QuantAttention(Attention):
    """timm ``Attention`` (ViT, DeiT, DINOv2) with quantized matmul operands."""

    quantizers: AttentionQuantizers

    @classmethod
    def wrap(cls, module: Attention, quantizers: AttentionQuantizers) -> QuantAttention:
        return _adopt(module, cls, quantizers)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = self.quantizers.query(q * self.scale)
        k = self.quantizers.key(k)
        attn = q @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.quantizers.probs(attn.softmax(dim=-1))
        attn = self.attn_drop(attn)
        x = attn @ self.quantizers.value(v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(WindowAttention):
    """timm Swin ``WindowAttention`` (relative position bias, shifted-window mask) with quantized operands."""

    quantizers: AttentionQuantizers

    @classmethod
    def wrap(cls, module: WindowAttention, quantizers: AttentionQuantizers) -> QuantWindowAttention:
        return _adopt(module, cls, quantizers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = self.quantizers.query(q * self.scale)
        k = self.quantizers.key(k)
        attn = q @ k.transpose(-2, -1) + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.quantizers.probs(self.softmax(attn))
        attn = self.attn_drop(attn)
        x = attn @ self.quantizers.value(v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))
