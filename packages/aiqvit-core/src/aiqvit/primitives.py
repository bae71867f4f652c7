"""Pure-function quantization primitives (no state, no modules).

Every ``fake_*`` function returns a float tensor holding dequantized values and passes
gradients straight through the rounding (STE), so scales and interval bounds can be learned.
"""

from __future__ import annotations

import math

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with an identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def qrange(bits: int) -> tuple[int, int]:
    """Unsigned integer code range ``[0, 2^bits - 1]`` used by every asymmetric quantizer."""
    return 0, 2**bits - 1


def quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s) + z, 0, 2^k - 1)`` (as an integer tensor)."""
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int32)


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``(q - z) * s``."""
    return (codes.to(scale.dtype) - zero_point) * scale


def fake_quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize with STE rounding; gradients reach ``x`` (inside the range) and ``scale``."""
    qmin, qmax = qrange(bits)
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


ADAROUND_ZETA, ADAROUND_GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """AdaRound's ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ADAROUND_ZETA - ADAROUND_GAMMA) + ADAROUND_GAMMA, 0.0, 1.0)


def quantize_floor_offset(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                          offset: torch.Tensor) -> torch.Tensor:
    """Integer codes ``clamp(floor(x / s) + offset + z, 0, 2^k - 1)``: ``offset`` (0 or 1) picks the level
    below or above ``x`` (learned rounding; :func:`quantize_affine` rounds to the nearest)."""
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.floor(x / scale) + offset + zero_point, qmin, qmax).to(torch.int32)


def fake_quantize_floor_offset(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                               offset: torch.Tensor) -> torch.Tensor:
    """Codes ``clamp(floor(x / s) + offset + z, 0, 2^k - 1)``, dequantized: ``offset`` in [0, 1] chooses
    between the two neighbouring levels (learned rounding). Gradients reach ``offset``, and ``x``
    through a straight-through floor."""
    qmin, qmax = qrange(bits)
    xs = x / scale
    q = torch.clamp(xs + (torch.floor(xs) - xs).detach() + offset + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def affine_params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, eps: float = 1e-8):
    """Asymmetric scale and integer zero-point that map ``[lo, hi]`` (widened to hold 0) onto the codes."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    qmin, qmax = qrange(bits)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
    zero_point = torch.clamp(torch.round(-lo / scale) + qmin, qmin, qmax)
    return scale, zero_point


# --- Dynamic Focusing Quantizer (METHOD.md section 3) -----------------------------------------

DFQ_TOP_CODE_VALUES = ("b2", "one")
# how the levels inside [b1, b2] are spaced: "uniform" (the paper) or "log" (geometric: equal ratios
# between neighbouring levels, so small probabilities keep the same relative precision as large ones)
DFQ_SPACINGS = ("uniform", "log")
DFQ_MIN_B1_LOG = 1e-8  # log spacing needs b1 > 0


def _dfq_levels(bits: int, top: str) -> int:
    """How many levels lie inside ``[b1, b2]``: codes 1..n (code 0 means 'below b1')."""
    if top not in DFQ_TOP_CODE_VALUES:
        raise ValueError(f"top must be one of {DFQ_TOP_CODE_VALUES}, got {top!r}")
    top_code = 2**bits - 1
    # 'b2': the saturated code is the last in-range level (b2 itself);
    # 'one': the saturated code is its own level, dequantized to 1.0.
    return top_code if top == "b2" else top_code - 1


def _check_spacing(spacing: str) -> None:
    if spacing not in DFQ_SPACINGS:
        raise ValueError(f"spacing must be one of {DFQ_SPACINGS}, got {spacing!r}")


def _dfq_position(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, n: int, spacing: str) -> torch.Tensor:
    """Where ``x`` falls on the grid of ``n`` levels, in units of one level (0 = b1, n - 1 = b2), unrounded."""
    if spacing == "uniform":
        return (x - b1) / ((b2 - b1) / max(n - 1, 1))
    b1 = b1.clamp(min=DFQ_MIN_B1_LOG)
    log_ratio = (torch.log(b2) - torch.log(b1)) / max(n - 1, 1)
    return (torch.log(torch.maximum(x, b1)) - torch.log(b1)) / log_ratio  # x < b1 is masked by the caller


def _dfq_level(idx: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, n: int, spacing: str) -> torch.Tensor:
    """The value of grid level ``idx`` (0 = b1, n - 1 = b2)."""
    if spacing == "uniform":
        return b1 + idx * ((b2 - b1) / max(n - 1, 1))
    b1 = b1.clamp(min=DFQ_MIN_B1_LOG)
    return b1 * torch.exp(idx * (torch.log(b2) - torch.log(b1)) / max(n - 1, 1))


def dfq_quantize(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int, top: str = "b2",
                 spacing: str = "uniform") -> torch.Tensor:
    """DFQ integer codes: 0 below ``b1``; codes ``1..n`` on ``[b1, b2]`` (``spacing``); ``2^k-1`` above ``b2``."""
    _check_spacing(spacing)
    n = _dfq_levels(bits, top)
    inside = 1 + torch.clamp(torch.round(_dfq_position(x, b1, b2, n, spacing)), 0, n - 1)
    codes = torch.where(x < b1, torch.zeros_like(inside), inside)
    codes = torch.where(x > b2, torch.full_like(inside, 2**bits - 1), codes)
    return codes.to(torch.int32)


def dfq_dequantize(codes: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int, top: str = "b2",
                   spacing: str = "uniform") -> torch.Tensor:
    _check_spacing(spacing)
    n = _dfq_levels(bits, top)
    c = codes.to(b1.dtype)
    values = _dfq_level(torch.clamp(c - 1, 0, n - 1), b1, b2, n, spacing)
    values = torch.where(codes == 0, torch.zeros_like(values), values)
    if top == "one":
        values = torch.where(codes == 2**bits - 1, torch.ones_like(values), values)
    return values


def fake_dfq(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int, top: str = "b2",
             spacing: str = "uniform") -> torch.Tensor:
    """Differentiable DFQ: STE for ``x``; ``b1``/``b2`` receive LSQ-style gradients through the grid."""
    _check_spacing(spacing)
    n = _dfq_levels(bits, top)
    idx = torch.clamp(round_ste(_dfq_position(x, b1, b2, n, spacing)), 0, n - 1)
    inside = _dfq_level(idx, b1, b2, n, spacing)
    below = torch.zeros_like(x)
    above = b2.expand_as(x) if top == "b2" else torch.ones_like(x)
    return torch.where(x < b1, below, torch.where(x > b2, above, inside))


# --- logarithmic quantizers for post-Softmax values in [0, 1] -------------------------------

def log_quantize(x: torch.Tensor, bits: int, base: str = "2") -> torch.Tensor:
    """Codes ``round(-log_b(x))`` clipped to ``[0, 2^k-1]``; code ``2^k-1`` also stands for 0.

    ``base`` is ``"2"`` or ``"sqrt2"`` (RepQ-ViT's log-sqrt(2)).
    """
    mult = 1.0 if base == "2" else 2.0
    if base not in ("2", "sqrt2"):
        raise ValueError(f"base must be '2' or 'sqrt2', got {base!r}")
    q = torch.round(-mult * torch.log2(torch.clamp(x, min=1e-30)))
    return torch.clamp(q, 0, 2**bits - 1).to(torch.int32)


def log_dequantize(codes: torch.Tensor, bits: int, base: str = "2") -> torch.Tensor:
    mult = 1.0 if base == "2" else 2.0
    values = torch.pow(2.0, -codes.to(torch.float32) / mult)
    return torch.where(codes >= 2**bits - 1, torch.zeros_like(values), values)


def fake_log_quantize(x: torch.Tensor, bits: int, base: str = "2") -> torch.Tensor:
    deq = log_dequantize(log_quantize(x, bits, base), bits, base).to(x.dtype)
    return x + (deq - x).detach()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2^bits)`` into a flat uint8 tensor, ``bits`` bits each (LSB first)."""
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits}-bit packing")
    shifts = torch.arange(bits, dtype=torch.int32)
    bitstream = ((flat.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    pad = (-bitstream.numel()) % 8
    if pad:
        bitstream = torch.cat([bitstream, bitstream.new_zeros(pad)])
    weights = (2 ** torch.arange(8, dtype=torch.int32))
    return (bitstream.reshape(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes as int32."""
    expected = math.ceil(numel * bits / 8)
    if packed.numel() != expected:
        raise ValueError(f"packed buffer holds {packed.numel()} bytes, expected {expected} for {numel} {bits}-bit codes")
    bitstream = ((packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    bitstream = bitstream[: numel * bits].reshape(numel, bits)
    return (bitstream * (2 ** torch.arange(bits, dtype=torch.int32))).sum(1).to(torch.int32)
