"""AIQViT adapter for mmdet detectors with a Swin Transformer backbone (Mask R-CNN, Cascade Mask R-CNN).

What the adapter tells the core:

* units: every :class:`~mmdet.models.backbones.swin.SwinBlock` of the backbone, in forward order
  (``backbone.stages.{s}.blocks.{b}``); each is reconstructed alone against its float twin.
* attention: :class:`~mmdet.models.backbones.swin.WindowMSA` is replaced by :class:`QuantWindowMSA`,
  which computes the same window attention (relative position bias, shifted-window mask,
  ``nn.Softmax`` module) with the query (after scaling), key, post-Softmax map and value routed
  through the core's attention quantizers.
* layers: by ``scope``. ``"backbone"`` (default, :class:`SwinDetectorAdapter`): every ``nn.Linear``
  and ``nn.Conv2d`` of the backbone (patch embedding, qkv, proj, both FFN linears, patch-merging
  reductions); neck and heads stay float. ``"full"`` (:class:`SwinDetectorFullAdapter`): every
  ``nn.Linear``/``nn.Conv2d`` of the detector (FPN, RPN, box and mask heads as well; the mask
  head's ``ConvTranspose2d`` upsampling and the RoIAlign ops stay float). Only backbone blocks are
  reconstructed in both scopes; layers outside them are calibrated (min-max/percentile/MSE init).
* post-LayerNorm pairs: ``norm1 -> qkv`` and ``norm2 -> FFN fc1`` of each block and
  ``norm -> reduction`` of each patch merging.
* key projections (key centering): the key third of every window attention's ``qkv``.
* run: one mmdet data batch (``dict(inputs=..., data_samples=...)`` from the dataloader, or the
  data preprocessor's output). ``"backbone"`` calls ``model.extract_feat``; ``"full"`` calls
  ``model.predict`` so that the neck and heads see data too.

Padding and scale reparameterization: ``ShiftWindowMSA`` pads the *normalized* tokens with zeros
when the token grid is not a multiple of the window (e.g. 7x7 windows on COCO images). Folding
the ``norm1`` channel scales into the LayerNorm and qkv (reparameterization) moves "zero" in the
normalized space, so plain zero padding would change what padded tokens contribute. The adapter
therefore turns every ``ShiftWindowMSA`` into :class:`ReparamSafeShiftWindowMSA` (same
parameters, same float outputs), which pads with the image of zero under the current ``norm1``
affine: exactly zero before reparameterization, exactly equivalent after it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mmdet.models.backbones.swin import ShiftWindowMSA, SwinBlock, SwinTransformer, WindowMSA
from mmdet.models.detectors.base import BaseDetector
from mmdet.models.layers import PatchMerging
from torch import nn

import aiqvit
from aiqvit import AttentionQuantizers, ModelAdapter

SCOPES = ("backbone", "full")


class QuantWindowMSA(nn.Module):
    """:class:`WindowMSA` with its two matmuls' operands quantized. Keeps ``qkv``, ``proj``,
    ``softmax``, ``attn_drop``, ``proj_drop``, ``relative_position_bias_table`` and
    ``relative_position_index`` under their original names."""

    def __init__(self, msa: WindowMSA, quantizers: AttentionQuantizers):
        super().__init__()
        self.embed_dims = msa.embed_dims
        self.window_size = msa.window_size
        self.num_heads = msa.num_heads
        self.scale = msa.scale
        self.relative_position_bias_table = msa.relative_position_bias_table
        self.register_buffer("relative_position_index", msa.relative_position_index)
        self.qkv = msa.qkv
        self.attn_drop = msa.attn_drop
        self.proj = msa.proj
        self.proj_drop = msa.proj_drop
        self.softmax = msa.softmax
        self.matmul_quantizers = quantizers

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()  # heads, n, n

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mq = self.matmul_quantizers
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = mq.query(q * self.scale) @ mq.key(k).transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(mq.probs(self.softmax(attn)))
        x = (attn @ mq.value(v)).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class ReparamSafeShiftWindowMSA(ShiftWindowMSA):
    """:class:`ShiftWindowMSA` whose window padding stays exact under LayerNorm reparameterization
    (see the module docstring). Installed by changing the class of existing modules in place."""

    _block_ref: list  # [the SwinBlock that owns this module], not a registered submodule

    @classmethod
    def convert(cls, attn: ShiftWindowMSA, block: SwinBlock) -> None:
        if isinstance(attn, cls):
            return
        attn.__class__ = cls
        attn._block_ref = [block]
        attn.register_buffer("norm_weight_at_conversion", block.norm1.weight.detach().clone(), persistent=False)
        attn.register_buffer("norm_bias_at_conversion", block.norm1.bias.detach().clone(), persistent=False)

    def pad_value(self) -> torch.Tensor:
        """What a float zero after the original ``norm1`` is after the current one: the current
        affine is ``(g / r, (b + t) / r)`` for the original ``(g, b)``, so zero maps to
        ``b' - b g' / g``."""
        norm = self._block_ref[0].norm1
        g0, b0 = self.norm_weight_at_conversion, self.norm_bias_at_conversion
        ratio = torch.where(g0 != 0, norm.weight / torch.where(g0 != 0, g0, torch.ones_like(g0)),
                            torch.ones_like(g0))
        return norm.bias - b0 * ratio

    def forward(self, query, hw_shape):
        B, L, C = query.shape
        H, W = hw_shape
        assert L == H * W, "input feature has wrong size"
        query = query.view(B, H, W, C)
        pad_r = (self.window_size - W % self.window_size) % self.window_size
        pad_b = (self.window_size - H % self.window_size) % self.window_size
        if pad_r or pad_b:
            query = F.pad(query, (0, 0, 0, pad_r, 0, pad_b))
            value = self.pad_value().to(query.dtype)
            query[:, H:] = value
            query[:, :, W:] = value
        H_pad, W_pad = query.shape[1], query.shape[2]
        if self.shift_size > 0:
            shifted_query = torch.roll(query, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            attn_mask = self._shift_mask(H_pad, W_pad, query.device)
        else:
            shifted_query = query
            attn_mask = None
        query_windows = self.window_partition(shifted_query).view(-1, self.window_size**2, C)
        attn_windows = self.w_msa(query_windows, mask=attn_mask)
        attn_windows = attn_windows.view(-1, self.window_size, self.window_size, C)
        shifted_x = self.window_reverse(attn_windows, H_pad, W_pad)
        if self.shift_size > 0:
            x = torch.roll(shifted_x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        else:
            x = shifted_x
        if pad_r > 0 or pad_b:
            x = x[:, :H, :W, :].contiguous()
        return self.drop(x.view(B, H * W, C))

    def _shift_mask(self, H_pad: int, W_pad: int, device) -> torch.Tensor:
        # identical to mmdet's ShiftWindowMSA.forward
        img_mask = torch.zeros((1, H_pad, W_pad, 1), device=device)
        slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                  slice(-self.shift_size, None))
        cnt = 0
        for h in slices:
            for w in slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = self.window_partition(img_mask).view(-1, self.window_size * self.window_size)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return attn_mask.masked_fill(attn_mask != 0, (-100.0)).masked_fill(attn_mask == 0, 0.0)


def swin_backbone(model: nn.Module) -> SwinTransformer:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, SwinTransformer):
        raise aiqvit.AdapterError(f"{type(model).__name__} has no mmdet SwinTransformer backbone "
                                  f"(found {type(backbone).__name__})")
    return backbone


def swin_blocks(model: nn.Module) -> list[tuple[str, SwinBlock]]:
    backbone = swin_backbone(model)
    prefix = next(n for n, m in model.named_modules() if m is backbone)
    return [(f"{prefix}.{n}", m) for n, m in backbone.named_modules() if isinstance(m, SwinBlock)]


def _first_linear(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Linear, aiqvit.QuantLinear)):
            return m
    raise aiqvit.AdapterError(f"no Linear layer in {type(module).__name__}")


def _is_preprocessed(batch: dict) -> bool:
    inputs = batch.get("inputs")
    return isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.ndim == 4


class SwinDetectorAdapter(ModelAdapter):
    """mmdet detector with a Swin backbone; quantizes the backbone only (see the module docstring)."""

    name = "mmdet-swin"
    scope = "backbone"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return isinstance(model, BaseDetector) and isinstance(getattr(model, "backbone", None), SwinTransformer)

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        blocks = swin_blocks(model)
        for _, block in blocks:  # idempotent; float behaviour unchanged
            ReparamSafeShiftWindowMSA.convert(block.attn, block)
        return blocks

    def attention_wrappers(self):
        return {WindowMSA: QuantWindowMSA}

    def attention_head_axis(self) -> int | None:
        return 1  # the wrappers hand over (batch, heads, tokens, head_dim)

    def quantizable_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        root = swin_backbone(model) if self.scope == "backbone" else model
        prefix = next(n for n, m in model.named_modules() if m is root)
        return [(f"{prefix}.{n}" if prefix else n, m) for n, m in root.named_modules()
                if isinstance(m, (nn.Linear, nn.Conv2d))]

    def layernorm_consumers(self, model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
        pairs = []
        for m in swin_backbone(model).modules():
            if isinstance(m, SwinBlock):
                pairs.append((m.norm1, [m.attn.w_msa.qkv]))
                pairs.append((m.norm2, [_first_linear(m.ffn)]))
            elif isinstance(m, PatchMerging) and m.norm is not None:
                pairs.append((m.norm, [m.reduction]))
        return pairs

    def key_projections(self, model: nn.Module) -> list[tuple[nn.Linear, slice]]:
        """The key third of every window attention's ``qkv`` (laid out ``(3, heads, head_dim)``); its
        relative position bias and shift mask are added to the logits, so key centering stays exact."""
        return [p.key for p in self.attention_projections(model)]

    def attention_projections(self, model: nn.Module) -> list[aiqvit.AttentionProjections]:
        """Query, key and value thirds of every window attention's ``qkv``; ``proj`` reads the attention
        output in the value channels' order (attention balancing)."""
        out = []
        for m in swin_backbone(model).modules():
            if isinstance(m, (WindowMSA, QuantWindowMSA)) and isinstance(m.qkv, nn.Linear):
                dim = m.qkv.out_features // 3
                out.append(aiqvit.AttentionProjections(query=(m.qkv, slice(0, dim)), key=(m.qkv, slice(dim, 2 * dim)),
                                                       value=(m.qkv, slice(2 * dim, 3 * dim)), output=m.proj))
        return out

    def run(self, model: nn.Module, batch: Any) -> Any:
        if not isinstance(batch, dict) or "inputs" not in batch:
            raise aiqvit.CalibrationDataError("an mmdet batch is a dict with 'inputs' (and 'data_samples'), "
                                              f"got {type(batch).__name__}")
        data = batch if _is_preprocessed(batch) else model.data_preprocessor(batch, False)
        if self.scope == "backbone":
            return model.extract_feat(data["inputs"])
        return model.predict(data["inputs"], data["data_samples"], rescale=True)


class SwinDetectorFullAdapter(SwinDetectorAdapter):
    """Like :class:`SwinDetectorAdapter`, but also quantizes the neck and the heads."""

    name = "mmdet-swin-full"
    scope = "full"


ADAPTERS = {a.scope: a for a in (SwinDetectorAdapter, SwinDetectorFullAdapter)}
ADAPTERS_BY_NAME = {a.name: a for a in (SwinDetectorAdapter, SwinDetectorFullAdapter)}


def adapter_for_scope(scope: str) -> SwinDetectorAdapter:
    if scope not in ADAPTERS:
        raise aiqvit.AIQViTError(f"scope must be one of {SCOPES}, got {scope!r}")
    return ADAPTERS[scope]()


aiqvit.register_adapter(SwinDetectorAdapter)
