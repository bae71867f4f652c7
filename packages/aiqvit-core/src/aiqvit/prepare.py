"""Turn a float model into a fake-quantized one, in place, through its adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .adapters import ModelAdapter, find_adapter, iter_attention_modules, wrapper_for
from .config import QuantConfig
from .errors import AdapterError
from .modules import AttentionQuantizers, QuantConv2d, QuantLinear, _QuantLayer
from .quantizers import UniformQuantizer, make_softmax_quantizer

# calibration rows an input quantizer keeps for the per-layer reparameterization strength search
STRENGTH_SEARCH_ROWS = 2048


@dataclass
class PreparedInfo:
    """What :func:`prepare` recorded on the model (``model.aiqvit_info``)."""

    adapter: ModelAdapter
    config: QuantConfig
    unit_names: list[str]
    layer_names: list[str]
    attention_names: list[str]
    layernorm_consumers: list[tuple[str, list[str]]]
    reparam_done: bool = False
    finalized: bool = False
    ranks: dict[str, int] = field(default_factory=dict)
    # torch version and thread count of the calibration run (aiqvit.api.calibration_environment)
    calibrated_with: dict = field(default_factory=dict)


def get_info(model: nn.Module) -> PreparedInfo:
    info = getattr(model, "aiqvit_info", None)
    if info is None:
        raise AdapterError("model was not prepared for quantization: call aiqvit.prepare or aiqvit.quantize first")
    return info


def _names_by_id(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def attention_quantizers(config: QuantConfig, seed: int, head_axis: int | None = None) -> AttentionQuantizers:
    """The four matmul-operand quantizers of one attention; with ``head_axis``, query/key/value get one
    scale per head along that axis."""
    def act(k):
        return UniformQuantizer(config.a_bits, per_channel=head_axis is not None,
                                channel_dim=head_axis if head_axis is not None else -1,
                                init=config.resolved_act_init(), percentile=config.act_percentile,
                                learnable=config.reconstruct, seed=seed + k,
                                element_budget=head_axis is not None)

    probs = make_softmax_quantizer(config.softmax_quantizer, config.a_bits, dfq_top=config.dfq_top,
                                   dfq_spacing=config.dfq_spacing, dfq_init=config.dfq_init, seed=seed + 3)
    return AttentionQuantizers(act(0), act(1), probs, act(2))


def prepare(model: nn.Module, config: QuantConfig, adapter: ModelAdapter | None = None) -> nn.Module:
    """Insert quantizers (weights initialized now, activations at calibration). Returns ``model``."""
    if getattr(model, "aiqvit_info", None) is not None:
        raise AdapterError("model is already prepared for quantization")
    adapter = adapter if adapter is not None else find_adapter(model)
    units = adapter.units(model)
    if not units:
        raise AdapterError(f"adapter {adapter.name!r} found no blocks to quantize in {type(model).__name__}")
    ids = _names_by_id(model)
    ln_pairs = [(ids[id(ln)], [ids[id(lin)] for lin in lins]) for ln, lins in adapter.layernorm_consumers(model)]

    attention_names = []
    if config.quantize_attention_matmuls:
        head_axis = None
        if config.attention_scales == "head":
            head_axis = adapter.attention_head_axis()
            if head_axis is None:
                raise AdapterError(f"attention_scales='head' needs the adapter's attention_head_axis; adapter "
                                   f"{adapter.name!r} has none (its attention operands have no head axis)")
        wrappers = adapter.attention_wrappers()
        for i, (name, module) in enumerate(list(iter_attention_modules(model, wrappers))):
            quantizers = attention_quantizers(config, config.seed * 7919 + 100 * i, head_axis)
            wrapped = wrapper_for(module, wrappers)(module, quantizers)
            model.set_submodule(name, wrapped)
            attention_names.append(name)

    layers = adapter.quantizable_layers(model)
    if config.reparam == "off":
        channelwise_inputs = set()
    elif config.channelwise_inputs == "all":
        channelwise_inputs = {n for n, m in layers if isinstance(m, nn.Linear)}
    else:
        channelwise_inputs = {n for _, lins in ln_pairs for n in lins}
    if not layers:
        raise AdapterError(f"adapter {adapter.name!r} found no Linear/Conv2d layers in {type(model).__name__}")
    # the strength search reads the rows of one consumer per norm (all of them see the same input)
    strength_search_rows = set()
    if config.reparam_strength == "search":
        later_consumers = {n for _, lins in ln_pairs for n in lins[1:]}
        strength_search_rows = channelwise_inputs - later_consumers
    layer_names = []
    for i, (name, layer) in enumerate(layers):
        seed = config.seed * 7919 + 10_000 + i
        wq = UniformQuantizer(config.w_bits, per_channel=True, channel_dim=0, init=config.weight_init,
                              learnable=config.learn_weight_scale, seed=seed)
        iq = UniformQuantizer(config.a_bits, per_channel=name in channelwise_inputs, channel_dim=-1,
                              init=config.resolved_act_init(), percentile=config.act_percentile,
                              learnable=config.reconstruct, seed=seed + 1)
        if name in strength_search_rows:
            iq.keep_rows = STRENGTH_SEARCH_ROWS
        if isinstance(layer, nn.Linear):
            q = QuantLinear(layer, wq, iq)
        elif isinstance(layer, nn.Conv2d):
            q = QuantConv2d(layer, wq, iq)
        else:
            raise AdapterError(f"cannot quantize {name} of type {type(layer).__name__}")
        q.init_weight_quantizer()
        if config.reconstruct and config.reconstruction.lr_bias > 0:
            q.enable_bias_correction()
        if config.reconstruct and config.reconstruction.lr_input_gain > 0 and isinstance(q, QuantLinear):
            q.enable_input_gain()
        model.set_submodule(name, q)
        layer_names.append(name)

    # units may have been replaced themselves (a unit that is an attention or a layer)
    ids = _names_by_id(model)
    unit_names = [n for n, _ in units]
    missing = [n for n in unit_names if n not in ids.values()]
    if missing:
        raise AdapterError(f"units not found after preparation: {missing}")
    model.aiqvit_info = PreparedInfo(adapter, config, unit_names, layer_names, attention_names, ln_pairs)
    return model


def quant_layers(module: nn.Module) -> list[tuple[str, _QuantLayer]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _QuantLayer)]
