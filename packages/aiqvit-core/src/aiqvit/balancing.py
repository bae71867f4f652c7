"""Attention balancing: function-preserving per-channel rescalings of the float model that flatten the
channel ranges of the attention's quantized matmul operands before quantization (ours,
docs/METHOD-NOTES.md).

* Queries and keys: the logit ``q . k = sum_c q_c k_c`` does not change when channel ``c`` of the
  queries is multiplied by ``s_c`` and the same channel of the keys divided by it. With
  ``s_c = (r^k_c / r^q_c)^a`` (``r``: calibrated abs-max per channel, ``a = 0.5``) both per-tensor
  quantizers see the geometric mean ``sqrt(r^q_c r^k_c)`` in every channel instead of two profiles whose
  outlier channels differ. Folded into the query and key rows of the projection (weights and bias).
* Values and the output projection: ``P (v / t) (t W_o^T) = P v W_o^T`` for a per-channel ``t``.
  SmoothQuant's ``t_c = r^v_c^a / max|W_o[:, c]|^(1-a)`` moves part of the value channels' range
  into the output projection's input columns. The value rows of the projection are divided by
  ``t``, the output projection's columns multiplied by it.

Weights are quantized per output channel, so scaling a projection's output rows leaves its weight
quantization unchanged. The adapter names what may be rescaled
(:meth:`aiqvit.ModelAdapter.attention_projections`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import ModelAdapter
from .errors import AdapterError
from .observe import run_with_hooks

BALANCE_SCOPES = ("off", "qk", "qkv")
_EPS = 1e-8


@dataclass(frozen=True)
class AttentionProjections:
    """Where one attention's operands come from. ``query``/``key``/``value``: ``(linear, channels)``,
    the output channels of a Linear that hold them, in the same channel order (heads then head
    channels); queries and keys must be read only by ``q @ k^T``. ``output``: the Linear that reads
    ``softmax(q k^T) @ v`` with its input channels in the value channels' order and nothing in between
    (no norm, no gate); ``None`` if there is none, then values are not balanced."""

    query: tuple[nn.Linear, slice]
    key: tuple[nn.Linear, slice]
    value: tuple[nn.Linear, slice] | None = None
    output: nn.Linear | None = None


def _width(channels: slice, linear: nn.Linear) -> int:
    return len(range(linear.out_features)[channels])


def _check(p: AttentionProjections) -> None:
    for role in ("query", "key", "value"):
        pair = getattr(p, role)
        if pair is not None and not isinstance(pair[0], nn.Linear):
            raise AdapterError(f"attention {role} projection is a {type(pair[0]).__name__}, not an nn.Linear")
    if _width(p.query[1], p.query[0]) != _width(p.key[1], p.key[0]):
        raise AdapterError("attention query and key channel counts differ")
    if p.value is not None and p.output is not None and p.output.in_features != _width(p.value[1], p.value[0]):
        raise AdapterError("the attention output projection does not read as many channels as the values hold")


@torch.no_grad()
def output_absmax(model: nn.Module, adapter: ModelAdapter, linears: list[nn.Linear], batches: list,
                  show: bool = False) -> dict[int, torch.Tensor]:
    """Per-output-channel abs-max of each Linear in ``linears`` over ``batches`` (keyed by ``id``)."""
    absmax: dict[int, torch.Tensor] = {}
    hooks = []
    for linear in {id(m): m for m in linears}.values():
        def hook(module, args, output, key=id(linear)):
            m = output.detach().abs().reshape(-1, output.shape[-1]).amax(0).float()
            absmax[key] = m if key not in absmax else torch.maximum(absmax[key], m)

        hooks.append((linear, hook))
    run_with_hooks(lambda batch: adapter.run(model, batch), batches, hooks, "attention ranges", show)
    return absmax


def _scale_rows(linear: nn.Linear, channels: slice, factor: torch.Tensor) -> None:
    linear.weight.data[channels] *= factor.to(linear.weight.dtype).unsqueeze(1)
    if linear.bias is not None:
        linear.bias.data[channels] *= factor.to(linear.bias.dtype)


def _geometric_normalized(s: torch.Tensor) -> torch.Tensor:
    return s / s.log().mean().exp()


@torch.no_grad()
def balance_attention(model: nn.Module, adapter: ModelAdapter, batches: list, scope: str = "qk",
                      strength: float = 0.5, show: bool = False) -> int:
    """Rescale the attention projections named by the adapter (``scope``: ``"qk"`` queries/keys,
    ``"qkv"`` also values into the output projection); the model's float outputs do not change.
    Returns how many attentions were balanced."""
    if scope not in BALANCE_SCOPES or scope == "off":
        raise ValueError(f"scope must be one of {BALANCE_SCOPES[1:]}, got {scope!r}")
    projections = adapter.attention_projections(model)
    for p in projections:
        _check(p)
    linears = [p.query[0] for p in projections] + [p.key[0] for p in projections]
    linears += [p.value[0] for p in projections if p.value is not None]
    absmax = output_absmax(model, adapter, linears, batches, show)
    balanced = 0
    for p in projections:
        (q_lin, q_ch), (k_lin, k_ch) = p.query, p.key
        if id(q_lin) not in absmax or id(k_lin) not in absmax:
            continue  # this attention did not run on the calibration data
        rq = absmax[id(q_lin)][q_ch].clamp_min(_EPS)
        rk = absmax[id(k_lin)][k_ch].clamp_min(_EPS)
        s = _geometric_normalized((rk / rq) ** strength)
        _scale_rows(q_lin, q_ch, s)
        _scale_rows(k_lin, k_ch, 1.0 / s)
        if scope == "qkv" and p.value is not None and p.output is not None and id(p.value[0]) in absmax:
            v_lin, v_ch = p.value
            rv = absmax[id(v_lin)][v_ch].clamp_min(_EPS)
            rw = p.output.weight.detach().abs().amax(0).float().clamp_min(_EPS)
            t = _geometric_normalized(rv ** strength / rw ** (1.0 - strength))
            _scale_rows(v_lin, v_ch, 1.0 / t)
            p.output.weight.data *= t.to(p.output.weight.dtype).unsqueeze(0)
        balanced += 1
    return balanced
