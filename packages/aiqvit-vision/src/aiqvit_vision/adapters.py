"""AIQViT adapters for timm's VisionTransformer (ViT, DeiT, DINOv2 with LayerScale) and SwinTransformer.

Importing :mod:`aiqvit_vision` registers both with the core (``aiqvit.find_adapter`` picks them by
``isinstance``).

Reconstruction units:

* ViT/DeiT/DINOv2: every transformer block (``blocks.i``), then the head (``head``, and DeiT's
  ``head_dist``) against the float logits. When the head reads the class token alone (token pooling),
  the last block is reconstructed on its class-token rows only (``output_view``): the other rows never
  reach the output. ``ViTAdapter(head_unit=False, class_token_view=False)`` is the blocks-only setting.
* Swin: every ``SwinTransformerBlock``, by default every ``PatchMerging`` layer (their ``reduction``
  Linear then gets the same reconstruction as the blocks; ``SwinAdapter(merging_units=False)`` leaves them
  to the quantizer initialization alone), and the head (``head_unit``).
* The patch embedding is calibrated by initialization only, unless ``embed_unit=True`` makes it the first
  unit (measured on the ViT-S/14 at W3/A3: no gain, see docs/METHOD-NOTES.md).

Post-LayerNorm consumers (scale reparameterization folds a per-channel scale into the norm and these
linears, so a norm may be listed only if nothing else reads its output):

* pre-norm ``Block``: ``norm1 -> [attn.qkv (+ attn.gate)]``, ``norm2 -> [mlp.fc1]`` (or SwiGLU's two fc1);
* Swin block: ``norm2 -> [mlp.fc1]`` always; ``norm1 -> [attn.qkv]`` only when the block's resolution is a
  multiple of its window (and the patch embedding enforces the image size), because otherwise timm pads
  the *normalized* map with zeros before ``qkv`` and those zeros would not follow the folded affine;
* ``PatchMerging``: ``norm -> [reduction]`` (its padding happens before the norm).

Key projections (key centering, ``aiqvit.centering``): the key third of every ``qkv`` whose keys go
straight into ``q @ k^T`` and the Softmax (timm ``Attention`` without ``k_norm``; Swin
``WindowAttention``, whose relative position bias and shift mask are added to the logits and so do
not break the invariance).
"""

from __future__ import annotations

from timm.layers import GluMlp, Mlp, SwiGLU
from timm.layers.attention import Attention
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from aiqvit import AttentionProjections, ModelAdapter, register_adapter

from .attention import QuantAttention, QuantWindowAttention


def _foldable(norm: nn.Module) -> bool:
    return isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None


def _mlp_inputs(mlp: nn.Module) -> list[nn.Module]:
    if isinstance(mlp, SwiGLU):
        return [mlp.fc1_g, mlp.fc1_x]
    if isinstance(mlp, (Mlp, GluMlp)) and isinstance(mlp.fc1, nn.Linear):
        return [mlp.fc1]
    return []


def _key_third(qkv: nn.Module) -> tuple[nn.Linear, slice] | None:
    """The key channels of a fused ``qkv`` Linear laid out as ``(3, heads, head_dim)``."""
    if not isinstance(qkv, nn.Linear) or qkv.out_features % 3:
        return None
    third = qkv.out_features // 3
    return qkv, slice(third, 2 * third)


def _fused_projections(qkv: nn.Module, proj: nn.Module, values_reach_proj: bool) -> AttentionProjections | None:
    """Query, key and value thirds of a fused ``(3, heads, head_dim)`` ``qkv``; ``proj`` reads the
    attention output in the value channels' order when ``values_reach_proj`` (no norm or gate between)."""
    key = _key_third(qkv)
    if key is None:
        return None
    third = key[1].stop - key[1].start
    output = proj if values_reach_proj and isinstance(proj, nn.Linear) and proj.in_features == third else None
    return AttentionProjections(query=(qkv, slice(0, third)), key=key,
                                value=(qkv, slice(2 * third, 3 * third)), output=output)


def _pre_norm_pairs(norm1, attn_inputs, norm2, mlp) -> list[tuple[nn.Module, list[nn.Module]]]:
    pairs = []
    if _foldable(norm1) and attn_inputs:
        pairs.append((norm1, attn_inputs))
    fc1 = _mlp_inputs(mlp)
    if _foldable(norm2) and fc1:
        pairs.append((norm2, fc1))
    return pairs


@register_adapter
class ViTAdapter(ModelAdapter):
    """timm ``VisionTransformer`` whose blocks use ``timm.layers.attention.Attention``."""

    name = "timm-vit"

    def __init__(self, embed_unit: bool = False, head_unit: bool = True, class_token_view: bool = True):
        self.embed_unit = embed_unit
        self.head_unit = head_unit
        self.class_token_view = class_token_view

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return (isinstance(model, VisionTransformer) and len(model.blocks) > 0
                and all(isinstance(getattr(b, "attn", None), Attention) for b in model.blocks))

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out = [("patch_embed", model.patch_embed)] if self.embed_unit else []
        out += [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
        if self.head_unit:  # DeiT-distilled models have a second head; each reads its own token
            out += [(n, getattr(model, n)) for n in ("head", "head_dist") if isinstance(getattr(model, n, None), nn.Linear)]
        return out

    def attention_wrappers(self):
        return {Attention: QuantAttention.wrap}

    def attention_head_axis(self) -> int | None:
        return 1  # the wrappers hand over (batch, heads, tokens, head_dim)

    def logit_units(self, model: nn.Module) -> set[str]:
        # by name, not through units(): once prepared, the heads are quantized modules, no longer nn.Linear
        if not self.head_unit:
            return set()
        return {n for n in ("head", "head_dist") if not isinstance(getattr(model, n, nn.Identity()), nn.Identity)}

    def output_view(self, model: nn.Module, unit_name: str):
        if not self.class_token_view:
            return None
        if unit_name != f"blocks.{len(model.blocks) - 1}" or not _reads_class_tokens_only(model):
            return None
        tokens = 2 if isinstance(getattr(model, "head_dist", None), nn.Module) else 1
        return lambda y: y[:, :tokens]

    def layernorm_consumers(self, model: nn.Module):
        pairs = []
        for block in model.blocks:
            if type(block) is not Block:  # post-norm / parallel variants read the norms differently
                continue
            attn_inputs = [block.attn.qkv] + ([block.attn.gate] if block.attn.gate is not None else [])
            pairs += _pre_norm_pairs(block.norm1, attn_inputs, block.norm2, block.mlp)
        return pairs

    def key_projections(self, model: nn.Module):
        out = []
        for block in model.blocks:
            attn = block.attn
            # a norm on k (qk_norm) would undo the shift; the QuantAttention forward reads keys only in q @ k^T
            if isinstance(attn, Attention) and isinstance(attn.k_norm, nn.Identity):
                key = _key_third(attn.qkv)
                if key is not None and key[1].stop - key[1].start == attn.attn_dim:
                    out.append(key)
        return out

    def attention_projections(self, model: nn.Module):
        out = []
        for block in model.blocks:
            attn = block.attn
            if not (isinstance(attn, Attention) and isinstance(attn.q_norm, nn.Identity)
                    and isinstance(attn.k_norm, nn.Identity)):
                continue  # a norm on q or k does not commute with a per-channel scale
            values_reach_proj = isinstance(attn.norm, nn.Identity) and getattr(attn, "gate", None) is None
            p = _fused_projections(attn.qkv, attn.proj, values_reach_proj)
            if p is not None and p.key[1].stop - p.key[1].start == attn.attn_dim:
                out.append(p)
        return out


def _reads_class_tokens_only(model: VisionTransformer) -> bool:
    """The head reads the last block's class token(s) alone: token pooling, no attention pool, and a
    per-token final norm (LayerNorm/RMSNorm act on each token separately)."""
    return (getattr(model, "global_pool", None) == "token" and getattr(model, "cls_token", None) is not None
            and getattr(model, "attn_pool", None) is None)


def _swin_norm1_foldable(model: SwinTransformer, block: SwinTransformerBlock) -> bool:
    strict = getattr(model.patch_embed, "strict_img_size", False)
    h, w = block.input_resolution
    wh, ww = block.window_size
    return strict and h % wh == 0 and w % ww == 0


@register_adapter
class SwinAdapter(ModelAdapter):
    """timm ``SwinTransformer`` (v1): ``WindowAttention`` with relative position bias and shift masks."""

    name = "timm-swin"

    def __init__(self, merging_units: bool = True, embed_unit: bool = False, head_unit: bool = True):
        self.merging_units = merging_units
        self.embed_unit = embed_unit
        self.head_unit = head_unit

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out = [("patch_embed", model.patch_embed)] if self.embed_unit else []
        for name, module in model.named_modules():  # forward order: each stage merges first, then its blocks
            if isinstance(module, SwinTransformerBlock) or (self.merging_units and isinstance(module, PatchMerging)):
                out.append((name, module))
        if self.head_unit:
            out.append(("head", model.head))
        return out

    def attention_wrappers(self):
        return {WindowAttention: QuantWindowAttention.wrap}

    def attention_head_axis(self) -> int | None:
        return 1  # the wrappers hand over (batch, heads, tokens, head_dim)

    def logit_units(self, model: nn.Module) -> set[str]:
        return {"head"} if self.head_unit else set()

    def layernorm_consumers(self, model: nn.Module):
        pairs = []
        for module in model.modules():
            if isinstance(module, SwinTransformerBlock):
                norm1 = module.norm1 if _swin_norm1_foldable(model, module) else None
                pairs += _pre_norm_pairs(norm1, [module.attn.qkv], module.norm2, module.mlp)
            elif isinstance(module, PatchMerging) and _foldable(module.norm):
                pairs.append((module.norm, [module.reduction]))
        return pairs

    def key_projections(self, model: nn.Module):
        return [p.key for p in self.attention_projections(model)]

    def attention_projections(self, model: nn.Module):
        found = [_fused_projections(m.qkv, m.proj, True) for m in model.modules() if isinstance(m, WindowAttention)]
        return [p for p in found if p is not None]
