"""A toy vision transformer and its reference adapter (for the core's own tests and as the
example every model-family adapter follows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import ModelAdapter, register_adapter
from .balancing import AttentionProjections
from .modules import AttentionQuantizers


class ToyAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        b, h, n, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.merge_heads(attn @ v)


class QuantToyAttention(nn.Module):
    """:class:`ToyAttention` with its matmul operands routed through :class:`AttentionQuantizers`."""

    def __init__(self, attn: ToyAttention, quantizers: AttentionQuantizers):
        super().__init__()
        self.num_heads, self.scale = attn.num_heads, attn.scale
        self.qkv, self.proj = attn.qkv, attn.proj
        self.matmul_quantizers = quantizers
        self._attn = [attn]  # the float original, for its head split/merge helpers (not a submodule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mq = self.matmul_quantizers
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax(mq.query(q * self.scale) @ mq.key(k).transpose(-2, -1), dim=-1)
        out = mq.probs(attn) @ mq.value(v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ToyBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ToyAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ToyViT(nn.Module):
    """Patch-embedding conv, pre-norm transformer blocks, mean pooling, linear head."""

    def __init__(self, img_size: int = 16, patch: int = 4, dim: int = 32, depth: int = 2, num_heads: int = 2,
                 num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (img_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(ToyBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


@register_adapter
class ToyAdapter(ModelAdapter):
    """The reference adapter: blocks as units, ToyAttention wrapped, norm1->qkv and norm2->fc1."""

    name = "toy-vit"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyViT)

    def units(self, model: ToyViT):
        return [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]

    def attention_wrappers(self):
        return {ToyAttention: QuantToyAttention}

    def attention_head_axis(self) -> int | None:
        return 1  # the wrappers hand over (batch, heads, tokens, head_dim)

    def layernorm_consumers(self, model: ToyViT):
        return [pair for b in model.blocks for pair in ((b.norm1, [b.attn.qkv]), (b.norm2, [b.fc1]))]

    def key_projections(self, model: ToyViT):
        return [p.key for p in self.attention_projections(model)]

    def attention_projections(self, model: ToyViT) -> list[AttentionProjections]:
        dim = model.blocks[0].attn.proj.in_features
        return [AttentionProjections(query=(b.attn.qkv, slice(0, dim)), key=(b.attn.qkv, slice(dim, 2 * dim)),
                                     value=(b.attn.qkv, slice(2 * dim, 3 * dim)), output=b.attn.proj)
                for b in model.blocks]


def make_outlier_toy(seed: int = 0, **kwargs) -> ToyViT:
    """A ToyViT with ViT-like activation statistics: LayerNorm gains with a few large channels
    (inter-channel variation after LN) and large MLP weights on some channels (outliers into fc2)."""
    g = torch.Generator().manual_seed(seed)
    model = ToyViT(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.05))
        for b in model.blocks:
            for norm in (b.norm1, b.norm2):
                norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=g))
                idx = torch.randperm(norm.weight.numel(), generator=g)[:3]
                norm.weight[idx] *= 8
                norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=g))
            idx = torch.randperm(b.fc1.out_features, generator=g)[:4]
            b.fc1.weight[idx] *= 6
    return model.eval()


class SingleLayerUnit(nn.Module):
    """One quantized layer as a reconstruction unit."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def make_weight_rounding_toy(w_bits: int = 3, seed: int = 0, samples: int = 256, batch: int = 32):
    """A weights-only rounding problem (for learned-rounding tests and probes): a 32 -> 24 Linear with
    ``w_bits`` per-channel min-max weights and float inputs, on correlated inputs. Returns
    ``(unit, unit_data, inputs, float_linear)``; ``unit_data`` pairs the inputs with the float outputs."""
    from .modules import QuantLinear
    from .quantizers import UniformQuantizer
    from .reconstruction import build_unit_data

    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(32, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 32, generator=g))
    weight_quantizer = UniformQuantizer(w_bits, per_channel=True, channel_dim=0, init="minmax")
    weight_quantizer.calibrate_from(linear.weight.detach())
    input_quantizer = UniformQuantizer(8)
    input_quantizer.enabled = False
    unit = SingleLayerUnit(QuantLinear(linear, weight_quantizer, input_quantizer))
    mix = torch.randn(32, 32, generator=g) / 32 ** 0.5 + torch.eye(32)
    x = torch.randn(samples, 32, generator=g) @ mix
    with torch.no_grad():
        records = [[(xb,), {}, None] for xb in x.split(batch)]
        targets = [[None, None, linear(xb)] for xb in x.split(batch)]
    return unit, build_unit_data(records, targets), x, linear
