"""Quantizer modules. Their state (scales, zero-points, DFQ intervals) lives in Parameters and
buffers so that ``state_dict`` round-trips, including shapes first set by calibration."""

from __future__ import annotations

import torch
from torch import nn

from . import primitives as P
from .errors import check_bits

INIT_METHODS = ("minmax", "percentile", "mse")
# Samples kept for percentile/MSE init: values (per-tensor) or rows of all channels (per-channel),
# per observed batch and in total; beyond that, seeded random subsets.
_KEEP_PER_BATCH = {False: 1 << 16, True: 1 << 11}
_KEEP_TOTAL = {False: 1 << 20, True: 1 << 14}


class Quantizer(nn.Module):
    """Base: a quantizer is ``enabled`` (fake-quantizes), disabled (identity) or calibrating
    (observes its input, passes it through unchanged, initializes on :meth:`finish_calibration`)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = check_bits(bits)
        self.enabled = True
        self.calibrating = False
        self.seen_data = False
        # QDrop (Wei et al., ICLR 2022): while reconstruction trains, each element keeps its float
        # value with this probability (set and reset by aiqvit.reconstruction; 0 = always quantize)
        self.drop_prob = 0.0
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.seen_data = True
            self.observe(x.detach())
            return x
        if not self.enabled:
            return x
        if not bool(self.initialized):
            raise RuntimeError(f"{type(self).__name__} used before calibration; run calibration_mode first")
        out = self.fake_quantize(x)
        if self.drop_prob > 0:
            out = torch.where(torch.rand_like(x) < self.drop_prob, x, out)
        return out

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - overridden
        pass

    def finish_calibration(self) -> None:
        self.initialized.fill_(True)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def learnable_parameters(self) -> list[nn.Parameter]:
        return []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Calibration decides some shapes (per-channel activations): adopt the saved ones.
        for name, tensor in list(self._parameters.items()) + list(self._buffers.items()):
            key = prefix + name
            if tensor is not None and key in state_dict and state_dict[key].shape != tensor.shape:
                tensor.data = torch.empty_like(state_dict[key], dtype=tensor.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class UniformQuantizer(Quantizer):
    """Asymmetric uniform quantizer, per-tensor or per-channel along ``channel_dim``.

    ``init``: ``minmax``, ``percentile`` (``percentile`` / ``100 - percentile`` of the observed
    values) or ``mse`` (clipping range minimizing the squared error, grid search).
    ``scale`` is a Parameter; it is trained only when ``learnable`` (LSQ-style, via STE).
    ``element_budget``: a per-channel quantizer keeps as many observed elements for the percentile and MSE
    inits as a per-tensor one (for few channels, e.g. attention heads, whose percentiles would otherwise
    come from far fewer samples); by default it keeps a fixed number of rows.
    """

    def __init__(self, bits: int, per_channel: bool = False, channel_dim: int = -1, init: str = "minmax",
                 percentile: float = 99.99, learnable: bool = False, seed: int = 0, element_budget: bool = False):
        super().__init__(bits)
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
        self.per_channel = per_channel
        self.channel_dim = channel_dim
        self.init = init
        self.percentile = percentile
        self.learnable = learnable
        self.element_budget = element_budget
        self.scale = nn.Parameter(torch.ones(()), requires_grad=learnable)
        self.register_buffer("zero_point", torch.zeros(()))
        self._lo = self._hi = None
        self._samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)
        # learned rounding (aiqvit.adaround): per-element variables while a unit trains (``rounding``),
        # then the chosen 0/1 offsets above ``floor(w / s)`` until the weights are frozen (``rounding_offset``)
        self.register_parameter("rounding", None)
        self.rounding_hard = False
        self.register_buffer("rounding_offset", None, persistent=False)
        # rows of observed inputs kept past calibration (for the reparameterization strength search)
        self.keep_rows = 0
        self.kept_rows: torch.Tensor | None = None
        self._rows_seen = 0

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, init={self.init}, learnable={self.learnable}"

    # -- observation ------------------------------------------------------------------------
    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, channels) view for per-channel stats; (n, 1) for per-tensor."""
        if not self.per_channel:
            return x.reshape(-1, 1)
        return x.movedim(self.channel_dim, -1).reshape(-1, x.shape[self.channel_dim])

    def observe(self, x: torch.Tensor) -> None:
        self._ref_ndim = x.ndim
        rows = self._as_rows(x.float())
        lo, hi = rows.amin(0), rows.amax(0)
        self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)
        if self.init != "minmax":
            idx = torch.randperm(rows.shape[0], generator=self._generator)[: self._sample_cap(_KEEP_PER_BATCH, rows)]
            self._samples.append(rows[idx])
        if self.keep_rows:
            self._keep(rows)

    def _keep(self, rows: torch.Tensor) -> None:
        """A uniform sample of at most ``keep_rows`` rows of everything observed (stratified by batch)."""
        seen = self._rows_seen
        total = seen + rows.shape[0]
        take_old = min(seen, round(self.keep_rows * seen / total)) if self.kept_rows is not None else 0
        take_new = min(rows.shape[0], self.keep_rows - take_old)
        parts = [rows[torch.randperm(rows.shape[0], generator=self._generator)[:take_new]]]
        if take_old:
            old = self.kept_rows
            parts.insert(0, old[torch.randperm(old.shape[0], generator=self._generator)[:take_old]])
        self.kept_rows = torch.cat(parts)
        self._rows_seen = total

    def _sample_cap(self, caps: dict[bool, int], rows: torch.Tensor) -> int:
        if self.element_budget and self.per_channel:
            return max(caps[True], caps[False] // rows.shape[1])
        return caps[self.per_channel]

    def _kept_samples(self) -> torch.Tensor:
        rows = torch.cat(self._samples)
        cap = self._sample_cap(_KEEP_TOTAL, rows)
        if rows.shape[0] > cap:
            rows = rows[torch.randperm(rows.shape[0], generator=self._generator)[:cap]]
        return rows

    def _broadcast_shape(self, ref_ndim: int, channels: int) -> tuple[int, ...]:
        if not self.per_channel:
            return ()
        shape = [1] * ref_ndim
        shape[self.channel_dim] = channels
        return tuple(shape)

    def calibrate_from(self, x: torch.Tensor) -> None:
        """One-shot calibration on a tensor (weights)."""
        self._lo = self._hi = None
        self._samples = []
        self.observe(x.detach())
        self.finish_calibration()

    def finish_calibration(self) -> None:
        if self._lo is None:
            raise RuntimeError("quantizer saw no data during calibration")
        lo, hi = self._lo, self._hi
        if self.init == "percentile":
            q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
            rows = self._kept_samples()
            step = max(1, (1 << 22) // rows.shape[0])  # torch.quantile refuses inputs over 16M elements
            qs = torch.cat([torch.quantile(rows[:, i:i + step], q, dim=0) for i in range(0, rows.shape[1], step)], 1)
            lo, hi = qs[0], qs[1]
        elif self.init == "mse":
            lo, hi = self._mse_range(self._kept_samples(), lo, hi)
        scale, zp = P.affine_params_from_range(lo, hi, self.bits)
        shape = self._broadcast_shape(self._ref_ndim, scale.numel())
        self.scale.data = scale.reshape(shape).clone()
        self.zero_point = zp.reshape(shape).clone()
        self._lo = self._hi = None
        self._samples = []
        self.initialized.fill_(True)

    def _mse_range(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: int = 40):
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for i in range(grid):
            ratio = 1.0 - i / (grid + 10)
            cand_lo, cand_hi = lo * ratio, hi * ratio
            s, z = P.affine_params_from_range(cand_lo, cand_hi, self.bits)
            err = ((P.fake_quantize_affine(rows, s, z, self.bits) - rows) ** 2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, cand_lo, best_lo)
            best_hi = torch.where(better, cand_hi, best_hi)
        return best_lo, best_hi

    # -- quantization -----------------------------------------------------------------------
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.abs().clamp(min=1e-8)
        offset = self._rounding_offset(x.dtype)
        if offset is not None:
            return P.fake_quantize_floor_offset(x, scale.to(x.dtype), self.zero_point.to(x.dtype), self.bits, offset)
        return P.fake_quantize_affine(x, scale.to(x.dtype), self.zero_point.to(x.dtype), self.bits)

    def _rounding_offset(self, dtype: torch.dtype) -> torch.Tensor | None:
        if self.rounding is not None:
            v = self.rounding
            return (v >= 0).to(dtype) if self.rounding_hard else P.rectified_sigmoid(v).to(dtype)
        return None if self.rounding_offset is None else self.rounding_offset.to(dtype)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` under the current parameters (and learned rounding, if any)."""
        scale = self.scale.detach().abs().clamp(min=1e-8)
        offset = self._rounding_offset(x.dtype)
        if offset is not None:
            return P.quantize_floor_offset(x, scale, self.zero_point, self.bits, offset)
        return P.quantize_affine(x, scale, self.zero_point, self.bits)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return P.dequantize_affine(codes, self.scale.detach().abs().clamp(min=1e-8), self.zero_point)

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [self.scale]


class DynamicFocusingQuantizer(Quantizer):
    """DFQ for post-Softmax probabilities: all levels spent on a learned interval ``[b1, b2]``.

    ``top`` chooses what the saturated top code dequantizes to (``"b2"`` or ``"one"``).
    ``spacing`` places the levels inside the interval: ``"uniform"`` (the paper) or ``"log"``
    (geometric, equal ratios between neighbouring levels; ``b1 > 0``).
    Init: grid search over b1 (``B1_GRID[spacing]``) x b2 from high quantiles of the observed
    probabilities, minimizing ``init``'s objective on the observed rows (see :meth:`_init_error`).
    """

    B1_GRID = {"uniform": (0.0, 1e-3, 3e-3, 1e-2, 2e-2, 3e-2),
               "log": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
    B2_QUANTILES = (0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)
    INIT_OBJECTIVES = ("row", "mse")

    def __init__(self, bits: int, top: str = "b2", seed: int = 0, spacing: str = "uniform", init: str = "row"):
        super().__init__(bits)
        if top not in P.DFQ_TOP_CODE_VALUES:
            raise ValueError(f"top must be one of {P.DFQ_TOP_CODE_VALUES}, got {top!r}")
        if spacing not in P.DFQ_SPACINGS:
            raise ValueError(f"spacing must be one of {P.DFQ_SPACINGS}, got {spacing!r}")
        if init not in self.INIT_OBJECTIVES:
            raise ValueError(f"init must be one of {self.INIT_OBJECTIVES}, got {init!r}")
        self.top = top
        self.spacing = spacing
        self.init = init
        self.b1 = nn.Parameter(torch.tensor(0.01 if spacing == "uniform" else 1e-3))
        self.b2 = nn.Parameter(torch.tensor(0.2))
        self._rows: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, top={self.top}, spacing={self.spacing}"

    def observe(self, x: torch.Tensor) -> None:
        # whole rows of the probability map (the Softmax axis is last): the init objective needs row sums
        rows = x.reshape(-1, x.shape[-1]).float() if x.ndim else x.reshape(1, 1).float()
        keep = max(1, _KEEP_PER_BATCH[False] // rows.shape[1])
        self._rows.append(rows[torch.randperm(rows.shape[0], generator=self._generator)[:keep]])

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        b1 = self.b1.clamp(P.DFQ_MIN_B1_LOG if self.spacing == "log" else 0.0, 1.0)
        b2 = torch.maximum(self.b2.clamp(max=1.0), b1 + 1e-4)
        return b1, b2

    def _init_error(self, groups: list[torch.Tensor], b1: float, b2: float) -> float:
        """``init="mse"``: mean squared error per value. ``init="row"``: per row, the squared error
        plus the squared error of the row sum (the attention mass lost or gained). The output of
        ``probs @ V`` errs by ``sum_j e_j v_j``: the first term is its part from the spread of V,
        the second its part from the mean of V, which zeroing many small probabilities biases."""
        t1, t2 = torch.tensor(b1), torch.tensor(b2)
        total, count = 0.0, 0
        for rows in groups:
            e = P.fake_dfq(rows, t1, t2, self.bits, self.top, self.spacing) - rows
            if self.init == "mse":
                total, count = total + float(e.pow(2).sum()), count + e.numel()
            else:
                total, count = total + float((e.pow(2).sum(1) + e.sum(1).pow(2)).sum()), count + e.shape[0]
        return total / max(count, 1)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if not self._rows:
            raise RuntimeError("quantizer saw no data during calibration")
        by_width: dict[int, list[torch.Tensor]] = {}
        for rows in self._rows:
            by_width.setdefault(rows.shape[1], []).append(rows)
        groups = []
        for width, parts in by_width.items():
            rows = torch.cat(parts)
            cap = max(1, _KEEP_TOTAL[False] // width)
            if rows.shape[0] > cap:
                rows = rows[torch.randperm(rows.shape[0], generator=self._generator)[:cap]]
            groups.append(rows)
        values = torch.cat([g.reshape(-1) for g in groups])
        sub = values[torch.randperm(values.numel(), generator=self._generator)[: 1 << 22]]  # torch.quantile's limit
        best = (float("inf"), float(self.b1), float(self.b2))
        for q in self.B2_QUANTILES:
            b2 = float(torch.quantile(sub, q)) if q < 1.0 else float(values.max())
            for b1 in self.B1_GRID[self.spacing]:
                if b1 >= b2:
                    continue
                err = self._init_error(groups, b1, b2)
                if err < best[0]:
                    best = (err, b1, b2)
        self.b1.data.fill_(best[1])
        self.b2.data.fill_(best[2])
        self._rows = []
        self.initialized.fill_(True)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.interval()
        return P.fake_dfq(x, b1.to(x.dtype), b2.to(x.dtype), self.bits, self.top, self.spacing)

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [self.b1, self.b2]


class LogQuantizer(Quantizer):
    """log2 (``base="2"``) or log-sqrt(2) (``base="sqrt2"``, RepQ-ViT) quantizer for values in [0, 1]."""

    def __init__(self, bits: int, base: str = "2"):
        super().__init__(bits)
        if base not in ("2", "sqrt2"):
            raise ValueError(f"base must be '2' or 'sqrt2', got {base!r}")
        self.base = base

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base={self.base}"

    def observe(self, x: torch.Tensor) -> None:
        pass

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return P.fake_log_quantize(x, self.bits, self.base)


SOFTMAX_QUANTIZERS = ("uniform", "log2", "logsqrt2", "dfq")


def make_softmax_quantizer(kind: str, bits: int, *, dfq_top: str = "b2", dfq_spacing: str = "uniform",
                           dfq_init: str = "row", seed: int = 0) -> Quantizer:
    """The post-Softmax quantizer named ``kind`` (one of :data:`SOFTMAX_QUANTIZERS`)."""
    if kind == "uniform":
        return UniformQuantizer(bits, init="minmax", learnable=True, seed=seed)
    if kind == "log2":
        return LogQuantizer(bits, "2")
    if kind == "logsqrt2":
        return LogQuantizer(bits, "sqrt2")
    if kind == "dfq":
        return DynamicFocusingQuantizer(bits, top=dfq_top, seed=seed, spacing=dfq_spacing, init=dfq_init)
    raise ValueError(f"unknown softmax quantizer {kind!r}; choose from {SOFTMAX_QUANTIZERS}")
