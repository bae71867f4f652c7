"""Typed configuration. ``QuantConfig.for_method(name, w_bits, a_bits, **overrides)`` gives the
preset of a method; every field can be overridden for ablations."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .balancing import BALANCE_SCOPES
from .errors import AIQViTError, check_bits
from .lowrank import DEFAULT_CANDIDATE_RANKS
from .primitives import DFQ_SPACINGS
from .quantizers import INIT_METHODS, SOFTMAX_QUANTIZERS, DynamicFocusingQuantizer
from .reparam import DEFAULT_STRENGTH_GRID
from .rotation import ROTATION_SCOPES

METHODS = ("minmax", "percentile", "repq", "brecq", "aiqvit")
LOWRANK_MODES = ("off", "fixed", "search")
REPARAM_MODES = ("off", "before", "after")
WEIGHT_ROUNDINGS = ("nearest", "gptq", "adaround")
CHANNELWISE_INPUTS = ("post_ln", "all")
INPUT_SOURCES = ("fp", "quant")
LOGITS_LOSSES = ("l2", "kl")
LOSS_WEIGHTINGS = ("none", "fisher")
ATTENTION_SCALES = ("tensor", "head")
# act_init="auto": percentile clipping at or below this many activation bits, min-max above
# (measured on the real ViT-S/14, docs/METHOD-NOTES.md: clipping the rare largest values pays at
# 3-4 bits and costs at 6)
AUTO_ACT_INIT_PERCENTILE_BITS = 4


@dataclass
class ReconstructionConfig:
    """Block-wise reconstruction (METHOD.md section 4). ``iters`` per unit."""

    iters: int = 200
    batch_size: int = 8
    # relative learning rates (Adam): a scale moves by about lr x its size per step; low-rank
    # factors by about lr x std(W0)
    lr_lowrank: float = 0.05
    lr_weight_scale: float = 1e-2
    lr_act_scale: float = 1e-2
    lr_dfq: float = 1e-2
    # also learn an output shift per channel of every quantized layer, on the quantized path only
    # (lr x std(W0)); folded into the bias at finalize. 0 = off, the paper (ours, docs/METHOD-NOTES.md,
    # "Bias correction")
    lr_bias: float = 0.0
    # also learn a gain per input channel of every quantized Linear (its logarithm moves by about lr per
    # step): the input quantizer sees ``x * g`` and the weight quantizer ``W / g``, so each channel's share
    # of the activation and weight grids is learned, not only set by the reparameterization's calibrated
    # ranges (OmniQuant's learnable equivalent transformation, scales only); folded into the input
    # transform at finalize. 0 = off, the paper (ours, docs/METHOD-NOTES.md, "Learned input gains")
    lr_input_gain: float = 0.0
    curriculum: bool = True
    lambda0: float = 0.5
    hardness_refresh: int = 50  # recompute per-sample loss every N iterations (OPEN in the paper)
    input_source: str = "fp"  # reconstruct from full-precision ("fp") or quantized-model ("quant") inputs
    # reconstruct (and search ranks) on the first ``max_batches`` calibration batches only; 0 = all.
    # Activation ranges always see every batch. Each unit re-runs the model on these batches twice
    # (float targets, quantized inputs), which dominates the cost of small models with many units.
    max_batches: int = 0
    # QDrop: while training, every activation element skips its quantizer with this probability
    # (0 = off, the paper; 0.5 = QDrop's default)
    qdrop_prob: float = 0.0
    # after the units: this many iterations that train every unit's parameters together against the
    # float output of the last unit (network-level distillation; ours, 0 = off, docs/METHOD-NOTES.md),
    # at ``network_lr_scale`` x the unit learning rates, ``network_batch_size`` samples per step
    network_iters: int = 0
    network_lr_scale: float = 0.2
    network_batch_size: int = 8
    # units whose output is the class logits (``ModelAdapter.logit_units``): "l2" distance to the float
    # logits (the paper's loss for every unit) or "kl", KL(float softmax || quantized softmax) per sample
    # (ours, docs/METHOD-NOTES.md)
    logits_loss: str = "l2"
    # how a unit's squared output errors are weighted: "none" (alike, the paper) or "fisher" (by the float
    # model's diagonal Fisher information at the unit's output, averaged over the calibration samples;
    # aiqvit.sensitivity; ours, docs/METHOD-NOTES.md); needs the adapter's sensitivity_logits. The
    # weights are (1 - fisher_mix) + fisher_mix x F / mean(F); fisher_samples label draws per sample
    loss_weighting: str = "none"
    fisher_mix: float = 1.0
    fisher_samples: int = 4


@dataclass
class SearchConfig:
    """Differentiable rank search (METHOD.md section 2). ``iters`` per unit, each one Theta and one alpha step."""

    iters: int = 100
    candidate_ranks: tuple[int, ...] = DEFAULT_CANDIDATE_RANKS
    lr_theta: float = 1e-3
    lr_alpha: float = 3e-2
    single_path: bool = True  # Theta steps train one sampled branch alone (drop-path keeping one); see RankSearchBranch
    drop_prob: float = 0.1  # used when single_path is False
    val_fraction: float = 0.5
    rank_cost: float = 0.0  # alpha loss x (1 + rank_cost * E[rank] / max rank): prefers the smaller of equally good ranks
    branch_inside_quantizer: bool = False  # OPEN: METHOD.md writes the branches outside Q_w during search
    keep_searched_weights: bool = True

    def __post_init__(self):
        self.candidate_ranks = tuple(self.candidate_ranks)


@dataclass
class QuantConfig:
    method: str = "aiqvit"
    w_bits: int = 4
    a_bits: int = 4
    weight_init: str = "mse"
    act_init: str = "minmax"  # or "percentile", "mse", "auto" (see resolved_act_init)
    act_percentile: float = 99.99
    softmax_quantizer: str = "dfq"
    dfq_top: str = "b2"
    # levels inside the DFQ interval: "uniform" (the paper) or "log" (geometric; ours, docs/METHOD-NOTES.md)
    dfq_spacing: str = "uniform"
    # DFQ init objective (OPEN in the paper): "row" = squared error + squared row-sum error, "mse"
    dfq_init: str = "row"
    reparam: str = "before"  # fold post-LN channel-wise scales before reconstruction (RepQ order) or after it
    # which Linear inputs are calibrated channel-wise and reparameterized to layer-wise: the post-LN
    # ones (the paper) or every Linear input (ours: post-GELU and attention-output inputs too, folded
    # into the producer's requantization and the weights)
    channelwise_inputs: str = "post_ln"
    # how much of each channel's range the reparameterization moves into the weights: 1.0 = RepQ-ViT
    # (all of it), a in [0, 1) = SmoothQuant-style partial migration, "search" = per layer, the
    # value of reparam_strength_grid whose quantized layer output is closest to the float one
    reparam_strength: float | str = 1.0
    reparam_strength_grid: tuple[float, ...] = DEFAULT_STRENGTH_GRID
    # shift the (free) key bias of every attention so that its keys are centered per channel before
    # quantization (aiqvit.centering; ours, docs/METHOD-NOTES.md); needs the adapter's key_projections
    center_keys: bool = False
    # rescale query/key channels ("qk"), and also value channels into the output projection ("qkv"),
    # so that the per-tensor matmul quantizers see flatter channel ranges (aiqvit.balancing; ours,
    # docs/METHOD-NOTES.md); exact on the float model; needs the adapter's attention_projections
    attention_balance: str = "off"
    attention_balance_strength: float = 0.5
    # the query, key and value quantizers of the attention matmuls: one scale per tensor (the paper) or one
    # per head (ours, docs/METHOD-NOTES.md); "head" needs the adapter's attention_head_axis
    attention_scales: str = "tensor"
    # rotate Linear inputs by a randomized Hadamard matrix after centring them (aiqvit.rotation; ours,
    # QuaRot-style, docs/METHOD-NOTES.md): "off", "all" Linear inputs, or those "not_post_ln" (not
    # fed by a norm); before activation calibration, so ranges and reparameterization see rotated inputs
    input_rotation: str = "off"
    # how weights pick their levels: "nearest" (rounding to the nearest level, the paper) or "gptq"
    # (Hessian-aware rounding on the same grid from each unit's calibration inputs, aiqvit.gptq; ours,
    # docs/METHOD-NOTES.md), before the rank search and reconstruction of each unit, or "adaround"
    # (rounding learned by each unit's reconstruction loss, aiqvit.adaround, as BRECQ does; ours); with
    # "adaround" the weight step sizes stay at their init (as in BRECQ) unless adaround_learn_scale
    weight_rounding: str = "nearest"
    gptq_damp: float = 0.01
    # AdaRound: the regularizer's weight relative to the unit's starting loss, and the rounding
    # variables' Adam learning rate
    adaround_reg: float = 10.0
    adaround_lr: float = 0.05
    adaround_learn_scale: bool = False  # also train the weight step sizes (when learn_weight_scale)
    lowrank: str = "search"
    lowrank_rank: int = 20
    reconstruct: bool = True
    learn_weight_scale: bool = True
    quantize_attention_matmuls: bool = True
    seed: int = 0
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self):
        if isinstance(self.reconstruction, dict):
            self.reconstruction = ReconstructionConfig(**self.reconstruction)
        if isinstance(self.search, dict):
            self.search = SearchConfig(**self.search)
        self.validate()

    def validate(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        _choice("method", self.method, METHODS)
        _choice("weight_init", self.weight_init, INIT_METHODS)
        _choice("act_init", self.act_init, INIT_METHODS + ("auto",))
        _choice("softmax_quantizer", self.softmax_quantizer, SOFTMAX_QUANTIZERS)
        _choice("dfq_top", self.dfq_top, ("b2", "one"))
        _choice("dfq_spacing", self.dfq_spacing, DFQ_SPACINGS)
        _choice("dfq_init", self.dfq_init, DynamicFocusingQuantizer.INIT_OBJECTIVES)
        _choice("reparam", self.reparam, REPARAM_MODES)
        _choice("channelwise_inputs", self.channelwise_inputs, CHANNELWISE_INPUTS)
        _choice("input_rotation", self.input_rotation, ROTATION_SCOPES)
        _choice("attention_balance", self.attention_balance, BALANCE_SCOPES)
        _choice("attention_scales", self.attention_scales, ATTENTION_SCALES)
        if not 0.0 < self.attention_balance_strength <= 1.0:
            raise AIQViTError(f"attention_balance_strength must lie in (0, 1], got {self.attention_balance_strength}")
        _choice("lowrank", self.lowrank, LOWRANK_MODES)
        _choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        if self.weight_rounding == "gptq" and (not self.reconstruct or self.reparam == "after"):
            raise AIQViTError("weight_rounding='gptq' runs per unit before reconstruction: it needs reconstruct=True "
                              "and reparam 'before' or 'off' (a later fold would re-round the weights)")
        if self.weight_rounding == "adaround" and (not self.reconstruct or self.reparam == "after"
                                                    or self.reconstruction.network_iters > 0):
            raise AIQViTError("weight_rounding='adaround' learns the rounding per unit during reconstruction: it needs "
                              "reconstruct=True, reparam 'before' or 'off' and reconstruction.network_iters=0 (a later "
                              "fold or step-size change would re-round the weights); set weight_rounding='nearest' "
                              "otherwise (the brecq preset uses 'adaround')")
        if not self.adaround_reg >= 0 or not self.adaround_lr > 0:
            raise AIQViTError(f"adaround_reg must be >= 0 and adaround_lr > 0, got {self.adaround_reg}, {self.adaround_lr}")
        if not self.gptq_damp > 0:
            raise AIQViTError(f"gptq_damp must be > 0, got {self.gptq_damp}")
        self.reparam_strength_grid = tuple(float(a) for a in self.reparam_strength_grid)
        for a in (*self.reparam_strength_grid, *([] if self.reparam_strength == "search" else [self.reparam_strength])):
            if isinstance(a, str) or not 0.0 <= float(a) <= 1.0:
                raise AIQViTError(f"reparam_strength must be 'search' or a number in [0, 1], got {a!r}")
        if not self.reparam_strength_grid:
            raise AIQViTError("reparam_strength_grid is empty")
        _choice("reconstruction.input_source", self.reconstruction.input_source, INPUT_SOURCES)
        _choice("reconstruction.logits_loss", self.reconstruction.logits_loss, LOGITS_LOSSES)
        _choice("reconstruction.loss_weighting", self.reconstruction.loss_weighting, LOSS_WEIGHTINGS)
        if not 0.0 <= self.reconstruction.fisher_mix <= 1.0 or self.reconstruction.fisher_samples < 1:
            raise AIQViTError("reconstruction.fisher_mix must lie in [0, 1] and fisher_samples be >= 1, got "
                              f"{self.reconstruction.fisher_mix}, {self.reconstruction.fisher_samples}")
        if self.lowrank != "off" and not self.reconstruct:
            raise AIQViTError("low-rank compensation is trained by reconstruction: set reconstruct=True or lowrank='off'")
        if self.reconstruction.max_batches < 0:
            raise AIQViTError(f"reconstruction.max_batches must be >= 0 (0 = all batches), got {self.reconstruction.max_batches}")
        if self.reconstruction.lr_bias < 0:
            raise AIQViTError(f"reconstruction.lr_bias must be >= 0 (0 = off), got {self.reconstruction.lr_bias}")
        if self.reconstruction.lr_input_gain < 0:
            raise AIQViTError("reconstruction.lr_input_gain must be >= 0 (0 = off), got "
                              f"{self.reconstruction.lr_input_gain}")
        if self.reconstruction.lr_input_gain > 0 and (self.reparam == "after" or self.weight_rounding != "nearest"):
            raise AIQViTError("reconstruction.lr_input_gain moves the weights that the quantizer rounds: it needs "
                              "reparam 'before' or 'off' and weight_rounding='nearest' (GPTQ and AdaRound fix the "
                              "rounding of the weights without the gain)")
        if not 0.0 <= self.reconstruction.qdrop_prob < 1.0:
            raise AIQViTError(f"reconstruction.qdrop_prob must lie in [0, 1), got {self.reconstruction.qdrop_prob}")
        if self.reconstruction.network_iters < 0:
            raise AIQViTError(f"reconstruction.network_iters must be >= 0, got {self.reconstruction.network_iters}")
        if self.reconstruction.network_lr_scale <= 0 or self.reconstruction.network_batch_size < 1:
            raise AIQViTError("reconstruction.network_lr_scale must be > 0 and network_batch_size >= 1")
        if not 0 < self.reconstruction.lambda0 <= 1:
            raise AIQViTError(f"reconstruction.lambda0 must lie in (0, 1], got {self.reconstruction.lambda0}")
        if self.lowrank_rank < 1:
            raise AIQViTError(f"lowrank_rank must be >= 1, got {self.lowrank_rank}")

    @classmethod
    def for_method(cls, method: str, w_bits: int = 4, a_bits: int = 4, **overrides) -> QuantConfig:
        """The preset of ``method`` with ``overrides``. A dict for ``reconstruction`` or ``search``
        changes only the fields it names (``reconstruction={"iters": 500}`` keeps brecq's
        ``curriculum=False``); a ``ReconstructionConfig``/``SearchConfig`` replaces the whole group. Dotted
        keys name one field of a group (``**{"reconstruction.iters": 500}``, as ``parse_overrides`` returns
        them). An unknown key is an :class:`AIQViTError`."""
        _choice("method", method, METHODS)
        preset = copy.deepcopy(METHOD_PRESETS[method])  # presets hold mutable sub-configs
        overrides = dict(overrides)
        for key in [k for k in overrides if "." in k]:
            group, _, name = key.partition(".")
            if group not in ("reconstruction", "search") or not name:
                raise AIQViTError(f"config override {key!r}: dotted keys are reconstruction.<field> or search.<field>")
            fields = overrides.setdefault(group, {})
            if not isinstance(fields, dict):
                raise AIQViTError(f"config override {key!r} cannot be combined with a whole {group} config")
            fields[name] = overrides.pop(key)
        unknown = sorted(set(overrides) - ({f.name for f in dataclasses.fields(cls)} - {"method", "w_bits", "a_bits"}))
        if unknown:
            raise AIQViTError(f"unknown config keys: {unknown}")
        for group, default in (("reconstruction", ReconstructionConfig), ("search", SearchConfig)):
            fields = overrides.get(group)
            if isinstance(fields, dict):
                unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(default)})
                if unknown:
                    raise AIQViTError(f"unknown {group} config keys: {unknown}")
                base = preset.get(group, default())
                overrides = dict(overrides, **{group: dataclasses.replace(base, **fields)})
        preset.update(overrides)
        return cls(method=method, w_bits=w_bits, a_bits=a_bits, **preset)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["search"]["candidate_ranks"] = list(self.search.candidate_ranks)
        d["reparam_strength_grid"] = list(self.reparam_strength_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise AIQViTError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)

    def resolved_act_init(self) -> str:
        """The activation init actually used: ``act_init``, with ``"auto"`` resolved by ``a_bits``."""
        if self.act_init != "auto":
            return self.act_init
        return "percentile" if self.a_bits <= AUTO_ACT_INIT_PERCENTILE_BITS else "minmax"

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _choice(name, value, allowed):
    if value not in allowed:
        raise AIQViTError(f"{name}={value!r} is not one of {allowed}")


# Baselines share the machinery; each preset switches ingredients on or off.
METHOD_PRESETS: dict[str, dict] = {
    "minmax": dict(weight_init="minmax", act_init="minmax", softmax_quantizer="uniform", reparam="off",
                   lowrank="off", reconstruct=False, learn_weight_scale=False),
    "percentile": dict(weight_init="minmax", act_init="percentile", softmax_quantizer="uniform", reparam="off",
                       lowrank="off", reconstruct=False, learn_weight_scale=False),
    # RepQ-ViT: post-LN scale reparameterization + log-sqrt(2) post-Softmax, no reconstruction.
    "repq": dict(weight_init="mse", act_init="percentile", softmax_quantizer="logsqrt2", reparam="before",
                 lowrank="off", reconstruct=False, learn_weight_scale=False),
    # BRECQ: block reconstruction of AdaRound weight rounding (weight step sizes fixed at their MSE init)
    # and LSQ activation step sizes, each block from the outputs of the already-quantized blocks before it.
    # Until core 0.3 the preset learned the weight step sizes with nearest rounding instead
    # (``weight_rounding="nearest"`` restores that): far weaker on the real ViT-S/14 (docs/METHOD-NOTES.md).
    "brecq": dict(weight_init="mse", act_init="minmax", softmax_quantizer="uniform", reparam="off",
                  lowrank="off", reconstruct=True, learn_weight_scale=True, weight_rounding="adaround",
                  reconstruction=ReconstructionConfig(curriculum=False, input_source="quant")),
    # AIQViT as specified, plus six settings of ours measured on the real ViT-S/14 (docs/METHOD-NOTES.md):
    # every Linear input reparameterized, the migration strength searched per layer, reconstruction
    # from quantized-model inputs, log-spaced DFQ levels, bit-dependent activation range init and
    # attention balancing. ``AIQVIT_PAPER_SETTINGS`` undoes them.
    "aiqvit": dict(weight_init="mse", act_init="auto", softmax_quantizer="dfq", dfq_spacing="log", reparam="before",
                   channelwise_inputs="all", reparam_strength="search", attention_balance="qkv", lowrank="search",
                   reconstruct=True, learn_weight_scale=True,
                   reconstruction=ReconstructionConfig(input_source="quant")),
}

# overrides that return the aiqvit preset to the paper's wording (post-LN reparameterization only,
# full migration, reconstruction from full-precision inputs, uniform DFQ levels, min-max ranges,
# no attention balancing)
AIQVIT_PAPER_SETTINGS: dict = dict(channelwise_inputs="post_ln", reparam_strength=1.0,
                                   reconstruction=dict(input_source="fp"), dfq_spacing="uniform", act_init="minmax",
                                   attention_balance="off")


def parse_overrides(items: list[str] | None) -> dict:
    """``["KEY=VALUE", ...]`` (VALUE parsed as JSON when it is JSON, else kept as text): the ``--set``
    options of the task packages' command lines and benchmark scripts, one flat dict."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AIQViTError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
