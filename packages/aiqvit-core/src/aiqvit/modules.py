"""Quantized modules: Linear, Conv2d, and the quantizers of attention matmuls.

Sub-module names follow a fixed convention: ``weight_quantizer`` and ``input_quantizer`` on
layers; ``query_quantizer``, ``key_quantizer``, ``probs_quantizer`` (post-Softmax) and
``value_quantizer`` on :class:`AttentionQuantizers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lowrank import LowRankBranch, RankSearchBranch
from .quantizers import Quantizer


class _QuantLayer(nn.Module):
    """Shared machinery: frozen float weight, its quantizer, the input quantizer."""

    def __init__(self, layer: nn.Module, weight_quantizer: Quantizer, input_quantizer: Quantizer):
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        # True once the weight holds its dequantized codes (after freeze() or load).
        self.register_buffer("weight_is_quantized", torch.tensor(False))
        self.lowrank: nn.Module | None = None
        self.branch_inside_quantizer = True
        # per-channel affine on the input, set by reparameterization of a non-norm producer
        self.register_buffer("input_scale", None)
        self.register_buffer("input_shift", None)
        # orthogonal rotation (and centring) of the input, aiqvit.rotation; applied before input_scale
        self.input_rotation: nn.Module | None = None
        # learned output shift of the quantized path only (reconstruction.lr_bias); the float path,
        # whose outputs are the reconstruction targets, keeps ``bias``. freeze() folds it into ``bias``.
        self.register_parameter("bias_correction", None)
        # learned per-input-channel gain of the quantized path, as its logarithm (reconstruction.lr_input_gain):
        # the input quantizer sees ``x * g``, the weight quantizer ``W / g``, so that with both off the
        # output is unchanged. freeze() folds ``g`` into the input transform and the stored weight.
        self.register_parameter("input_gain", None)

    def set_input_transform(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.input_scale = scale.clone()
        self.input_shift = shift.clone()

    def add_to_bias(self, shift: torch.Tensor) -> None:
        """``bias += shift`` (a zero bias is created first where the layer has none)."""
        if self.bias is None:
            self.bias = nn.Parameter(shift.detach().clone(), requires_grad=False)
        else:
            self.bias.data = self.bias.data + shift

    def enable_bias_correction(self) -> None:
        """Give the quantized path a trainable output shift, starting at zero."""
        if self.bias_correction is None:
            self.bias_correction = nn.Parameter(torch.zeros(self.weight.shape[0], device=self.weight.device,
                                                            dtype=self.weight.dtype), requires_grad=False)

    def enable_input_gain(self) -> None:
        """Give the quantized path a trainable per-input-channel gain, starting at 1."""
        if self.input_gain is None:
            self.input_gain = nn.Parameter(torch.zeros(self._gain_channels(), device=self.weight.device,
                                                       dtype=self.weight.dtype), requires_grad=False)

    def _gain_channels(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} has no learned input gain")

    def _gain(self) -> torch.Tensor | None:
        return None if self.input_gain is None else self.input_gain.exp()

    def quantized_bias(self) -> torch.Tensor | None:
        if self.bias_correction is None:
            return self.bias
        return self.bias_correction if self.bias is None else self.bias + self.bias_correction

    def init_weight_quantizer(self) -> None:
        self.weight_quantizer.calibrate_from(self.merged_weight().detach())

    def merged_weight(self) -> torch.Tensor:
        """``W0`` (+ ``B @ A`` when a branch sits inside the weight quantizer)."""
        w = self.weight
        if self.lowrank is not None and self.branch_inside_quantizer:
            w = w + self.lowrank.delta()
        return w

    def quantized_weight(self) -> torch.Tensor:
        w = self.merged_weight()
        if bool(self.weight_is_quantized):
            return w
        gain = self._gain()
        return self.weight_quantizer(w if gain is None else w / gain)

    @property
    def quant_active(self) -> bool:
        wq, iq = self.weight_quantizer, self.input_quantizer
        return wq.enabled or iq.enabled or iq.calibrating

    def _branch_output(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.lowrank is None or self.branch_inside_quantizer:
            return None
        gain = self._gain()
        delta = self.lowrank.delta()
        return self._op(x, delta if gain is None else delta / gain, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rotation is not None:
            x = self.input_rotation(x)
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        if not self.quant_active and not bool(self.weight_is_quantized):
            # Quantization off: the original float layer, low-rank branch ignored.
            return self._op(x, self.weight, self.bias)
        gain = self._gain()
        x = self.input_quantizer(x if gain is None else x * gain)
        y = self._op(x, self.quantized_weight(), self.quantized_bias())
        extra = self._branch_output(x)
        return y if extra is None else y + extra

    def _op(self, x, weight, bias):  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def fold_lowrank(self) -> None:
        """Merge ``B @ A`` into ``W0`` and drop the branch: no inference overhead remains."""
        if self.lowrank is None:
            return
        delta = self.lowrank.delta()
        self.weight.data = self.weight.data + delta
        self.lowrank = None

    @torch.no_grad()
    def freeze(self) -> None:
        """Fold the branch (and the bias correction and input gain) and store the dequantized weight codes in
        ``weight``."""
        self.fold_lowrank()
        if self.bias_correction is not None:
            self.add_to_bias(self.bias_correction.detach())
            self.bias_correction = None
        if self.input_gain is not None:
            self._fold_input_gain()
        if not bool(self.weight_is_quantized):
            self.weight.data = self.weight_quantizer.dequantize(self.weight_quantizer.quantize(self.weight.data))
            self.weight_is_quantized.fill_(True)
            if getattr(self.weight_quantizer, "rounding_offset", None) is not None:
                self.weight_quantizer.rounding_offset = None  # now in the stored codes

    @torch.no_grad()
    def _fold_input_gain(self) -> None:
        """``x -> x * g`` joins the input transform (a norm's consumer gets one here) and ``W -> W / g`` the
        float weight; the weight quantizer already holds the step sizes learned for ``W / g``."""
        if bool(self.weight_is_quantized):
            raise RuntimeError("cannot fold an input gain into weights that are already quantized")
        gain = self.input_gain.detach().exp()
        scale = gain if self.input_scale is None else self.input_scale * gain
        shift = torch.zeros_like(gain) if self.input_shift is None else self.input_shift * gain
        self.set_input_transform(scale, shift)
        self.weight.data = self.weight.data / gain
        self.input_gain = None

    def attach_lowrank(self, branch: LowRankBranch | RankSearchBranch, inside_quantizer: bool = True) -> None:
        self.lowrank = branch
        self.branch_inside_quantizer = inside_quantizer


class QuantLinear(_QuantLayer):
    """``y = Q_a(x) @ Q_w(W0 + B A)^T + bias``."""

    def __init__(self, linear: nn.Linear, weight_quantizer: Quantizer, input_quantizer: Quantizer):
        super().__init__(linear, weight_quantizer, input_quantizer)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def _gain_channels(self) -> int:
        return self.in_features

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)


class QuantConv2d(_QuantLayer):
    """Conv2d with per-output-channel weight quantization and per-tensor input quantization."""

    def __init__(self, conv: nn.Conv2d, weight_quantizer: Quantizer, input_quantizer: Quantizer):
        if conv.padding_mode != "zeros":
            raise NotImplementedError("QuantConv2d supports padding_mode='zeros' only")
        super().__init__(conv, weight_quantizer, input_quantizer)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class AttentionQuantizers(nn.Module):
    """The quantizers of the two attention matmuls: ``Q @ K^T`` and ``softmax(.) @ V``.

    An adapter's attention wrapper calls :meth:`query`, :meth:`key`, :meth:`probs`, :meth:`value`
    on the matmul operands; with quantizers disabled each is the identity.
    """

    def __init__(self, query_quantizer: Quantizer, key_quantizer: Quantizer, probs_quantizer: Quantizer,
                 value_quantizer: Quantizer):
        super().__init__()
        self.query_quantizer = query_quantizer
        self.key_quantizer = key_quantizer
        self.probs_quantizer = probs_quantizer
        self.value_quantizer = value_quantizer

    def query(self, q: torch.Tensor) -> torch.Tensor:
        return self.query_quantizer(q)

    def key(self, k: torch.Tensor) -> torch.Tensor:
        return self.key_quantizer(k)

    def probs(self, p: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The post-Softmax quantizer; ``dim`` is the Softmax axis (its quantizer sees it last)."""
        if dim in (-1, p.ndim - 1):
            return self.probs_quantizer(p)
        return self.probs_quantizer(p.movedim(dim, -1)).movedim(-1, dim)

    def value(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_quantizer(v)
