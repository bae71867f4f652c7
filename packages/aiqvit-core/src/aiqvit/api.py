"""The quantization pipeline: ``quantize(model, calibration_data, config)``."""

from __future__ import annotations

import ctypes
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ModelAdapter, find_adapter
from .adaround import AdaRound
from .balancing import balance_attention
from .calibration import calibration_mode, quantization_disabled
from .centering import center_attention_keys
from .config import QuantConfig
from .errors import AdapterError, CalibrationDataError, CheckpointError
from .gptq import gptq_unit
from .io_utils import atomic_path, write_json_atomic
from .lowrank import LowRankBranch
from .modules import QuantLinear
from .prepare import STRENGTH_SEARCH_ROWS, get_info, prepare, quant_layers
from .progress import progress
from .quantizers import DynamicFocusingQuantizer
from .reconstruction import (
    UnitCallback,
    attach_fixed_rank,
    attention_quantizer_modules,
    build_unit_data,
    capture_unit_io,
    reconstruct_network,
    reconstruct_unit,
    search_unit_ranks,
)
from .reparam import choose_strength, reparameterize_input, reparameterize_pair
from .rotation import input_means, rotate_layer_input, rotation_targets
from .safetensors_io import load_file, save_file
from .sensitivity import fisher_maps, loss_weights


@dataclass
class QuantizationReport:
    method: str
    w_bits: int
    a_bits: int
    seconds: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)
    unit_losses: dict[str, tuple[float, float]] = field(default_factory=dict)
    dfq_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    reparam_strengths: dict[str, float] = field(default_factory=dict)
    centered_keys: int = 0  # attentions whose keys were centered (config.center_keys)
    balanced_attentions: int = 0  # attentions rescaled by config.attention_balance
    rotated_inputs: int = 0  # Linear layers whose inputs were rotated (config.input_rotation)
    network_loss: tuple[float, float] | None = None  # before/after reconstruction.network_iters
    resumed_units: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=dict)  # calibration_environment() of the run


def calibration_environment() -> dict:
    """What a seeded calibration's floats depend on besides its inputs: the same config and data give the
    same model for the same torch build and thread count (the thread count changes the order of float
    sums, which long low-bit reconstructions amplify; README, ViT-S/14 brecq at W3/A3)."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


def validate_calibration_data(data: Iterable[Any]) -> list:
    """A non-empty list of batches, every tensor in them finite."""
    if data is None:
        raise CalibrationDataError("calibration data is None")
    batches = list(data)
    if not batches:
        raise CalibrationDataError("calibration set is empty: pass at least one batch")
    for i, b in enumerate(batches):
        tensors = _tensors_in(b)
        if not tensors:
            raise CalibrationDataError(f"calibration batch {i} holds no tensor")
        for t in tensors:
            if t.is_floating_point() and t.numel() == 0:
                raise CalibrationDataError(f"calibration batch {i} holds an empty tensor")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CalibrationDataError(f"calibration batch {i} holds non-finite values (NaN or inf)")
    return batches


def data_fingerprint(batches: list) -> str:
    h = hashlib.sha256()
    for b in batches:
        for t in _tensors_in(b):
            c = t.detach().cpu().contiguous()
            h.update(str((tuple(c.shape), str(c.dtype))).encode())
            h.update(ctypes.string_at(c.data_ptr(), c.numel() * c.element_size()))
    return h.hexdigest()[:16]


def calibrate_activations(model: nn.Module, batches: list, show: bool = True) -> None:
    info = get_info(model)
    with torch.no_grad(), calibration_mode(model):
        for b in progress(batches, desc="calibrate", enabled=show):
            info.adapter.run(model, b)


def apply_input_rotation(model: nn.Module, batches: list, show: bool = True) -> int:
    """Centre and rotate the inputs of the Linear layers ``config.input_rotation`` names (aiqvit.rotation),
    before activation calibration. A rotated consumer of a norm leaves its norm pair: its channel-wise
    input, if any, is then reparameterized through its own input transform. Returns how many were rotated."""
    info = get_info(model)
    config = info.config
    post_ln = {n for _, lins in info.layernorm_consumers for n in lins}
    targets = rotation_targets(model, config.input_rotation, post_ln)
    with quantization_disabled(model):
        means = input_means(model, targets, lambda b: info.adapter.run(model, b), batches, show)
    rotated = set()
    for i, (name, layer) in enumerate(targets):
        if name not in means:
            continue  # not reached by the calibration data
        rotate_layer_input(layer, means[name], seed=config.seed * 7919 + 20_000 + i)
        if layer.input_quantizer.per_channel and config.reparam_strength == "search":
            layer.input_quantizer.keep_rows = STRENGTH_SEARCH_ROWS
        rotated.add(name)
    info.layernorm_consumers = [(norm, kept) for norm, lins in info.layernorm_consumers
                                if (kept := [n for n in lins if n not in rotated])]
    return len(rotated)


def apply_reparameterization(model: nn.Module) -> dict[str, float]:
    """Fold every channel-wise Linear input into layer-wise form (norm affine, or the layer's own
    input transform where the producer is not a norm). Returns the strength used per layer."""
    info = get_info(model)
    config = info.config

    def strength(consumers: list[QuantLinear]) -> float:
        if config.reparam_strength == "search":
            return choose_strength(consumers, config.reparam_strength_grid)
        return float(config.reparam_strength)

    folded, strengths = set(), {}
    for norm_name, consumer_names in info.layernorm_consumers:
        consumers = [model.get_submodule(n) for n in consumer_names]
        a = strength(consumers)
        reparameterize_pair(model.get_submodule(norm_name), consumers, strength=a)
        folded.update(consumer_names)
        strengths.update({n: a for n in consumer_names})
    for name, layer in quant_layers(model):
        if name not in folded and isinstance(layer, QuantLinear) and layer.input_quantizer.per_channel:
            strengths[name] = a = strength([layer])
            reparameterize_input(layer, strength=a)
    info.reparam_done = True
    return strengths


def finalize(model: nn.Module) -> None:
    """Fold low-rank branches into the weights and store the dequantized weight codes."""
    for _, layer in quant_layers(model):
        layer.freeze()
    get_info(model).finalized = True


def dfq_intervals(model: nn.Module) -> dict[str, tuple[float, float]]:
    out = {}
    for name, aq in attention_quantizer_modules(model):
        if isinstance(aq.probs_quantizer, DynamicFocusingQuantizer):
            b1, b2 = aq.probs_quantizer.interval()
            out[name] = (float(b1.detach()), float(b2.detach()))
    return out


def _unit_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index + 1)


def _attach_ranks(unit: nn.Module, unit_name: str, ranks: dict[str, int]) -> None:
    """Recreate the low-rank branches of a finished unit (their values come from the checkpoint)."""
    prefix = unit_name + "."
    for name, layer in unit.named_modules():
        full = prefix + name if name else unit_name
        if isinstance(layer, QuantLinear) and full in ranks:
            layer.attach_lowrank(LowRankBranch(layer.in_features, layer.out_features, ranks[full]), inside_quantizer=True)


_ROUNDING_PREFIX = "aiqvit.rounding_offset."


def _restore_rounding(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Move the checkpoint's learned rounding offsets (see ``_Checkpoint.save``) out of ``state`` into the model."""
    layers = dict(quant_layers(model))
    for key in [k for k in state if k.startswith(_ROUNDING_PREFIX)]:
        name = key[len(_ROUNDING_PREFIX):]
        offset = state.pop(key)
        layer = layers.get(name)
        if layer is None or offset.dtype != torch.bool or offset.shape != layer.weight.shape:
            raise CheckpointError(f"calibration checkpoint holds a rounding offset for {name!r} "
                                  "that does not match the model")
        layer.weight_quantizer.rounding_offset = offset


class _Checkpoint:
    """Per-unit checkpoints of a calibration run (``progress.json`` + ``state.safetensors``)."""

    def __init__(self, directory: str | Path, config: QuantConfig, data_fp: str):
        self.dir = Path(directory)
        self.key = {"config": config.fingerprint(), "data": data_fp}

    def load(self) -> dict | None:
        meta = self.dir / "progress.json"
        if not meta.exists():
            return None
        try:
            progress_ = json.loads(meta.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"corrupt calibration checkpoint {meta}: {e}") from e
        if progress_.get("key") != self.key:
            raise CheckpointError(
                f"calibration checkpoint in {self.dir} was made with another config or calibration set; "
                "use a new checkpoint_dir or delete it")
        return progress_

    def save(self, model: nn.Module, done: list[str], ranks: dict[str, int], losses: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = dict(model.state_dict())
        # learned rounding (weight_rounding="adaround") lives in non-persistent buffers until the end
        tensors.update({_ROUNDING_PREFIX + name: layer.weight_quantizer.rounding_offset
                        for name, layer in quant_layers(model)
                        if getattr(layer.weight_quantizer, "rounding_offset", None) is not None})
        with atomic_path(self.dir / "state.safetensors") as tmp:
            save_file(tensors, tmp)
        write_json_atomic(self.dir / "progress.json", {"key": self.key, "done": done, "ranks": ranks,
                                                       "unit_losses": losses})


def quantize(model: nn.Module, calibration_data: Iterable[Any], config: QuantConfig | None = None,
             adapter: ModelAdapter | None = None, *, checkpoint_dir: str | Path | None = None,
             progress_bar: bool = True, on_unit_done: UnitCallback | None = None) -> QuantizationReport:
    """Quantize ``model`` in place with ``config`` (default: AIQViT W4/A4) and return a report.

    ``calibration_data``: batches that ``adapter.run(model, batch)`` accepts (unlabeled).
    ``checkpoint_dir``: after every finished unit its state is saved there; a rerun with the
    same config and data continues from the last finished unit and ends with the same model.
    """
    start = time.perf_counter()
    config = config if config is not None else QuantConfig()
    config.validate()
    batches = validate_calibration_data(calibration_data)
    torch.manual_seed(config.seed)
    model.eval()
    if getattr(model, "aiqvit_info", None) is not None:
        raise AdapterError("model is already prepared for quantization")
    adapter = adapter if adapter is not None else find_adapter(model)
    report = QuantizationReport(config.method, config.w_bits, config.a_bits, environment=calibration_environment())
    if config.center_keys:
        report.centered_keys = center_attention_keys(model, adapter, batches, progress_bar)
    if config.attention_balance != "off":
        report.balanced_attentions = balance_attention(model, adapter, batches, config.attention_balance,
                                                       config.attention_balance_strength, progress_bar)
    prepare(model, config, adapter)
    info = get_info(model)

    if config.input_rotation != "off":
        report.rotated_inputs = apply_input_rotation(model, batches, progress_bar)
    calibrate_activations(model, batches, progress_bar)
    if config.reparam == "before":
        report.reparam_strengths = apply_reparameterization(model)

    if config.reconstruct:
        ckpt = _Checkpoint(checkpoint_dir, config, data_fingerprint(batches)) if checkpoint_dir else None
        saved = ckpt.load() if ckpt else None
        done: list[str] = []
        if saved is not None:
            for name in saved["done"]:
                _attach_ranks(model.get_submodule(name), name, saved["ranks"])
            state, _ = load_file(ckpt.dir / "state.safetensors")
            _restore_rounding(model, state)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"calibration checkpoint in {ckpt.dir} does not match the model: {e}") from e
            done = list(saved["done"])
            report.ranks.update(saved["ranks"])
            report.unit_losses.update({k: tuple(v) for k, v in saved.get("unit_losses", {}).items()})
            report.resumed_units = list(done)
        _reconstruct_units(model, batches, config, report, done, ckpt, progress_bar, on_unit_done)
        if config.reconstruction.network_iters > 0:
            report.network_loss = _reconstruct_network(model, batches, config, progress_bar)

    if config.reparam == "after":
        report.reparam_strengths = apply_reparameterization(model)
    finalize(model)
    info.ranks = dict(report.ranks)
    info.calibrated_with = dict(report.environment)
    report.dfq_intervals = dfq_intervals(model)
    report.seconds = time.perf_counter() - start
    return report


def _reconstruction_batches(batches: list, rc) -> list:
    """The calibration batches that reconstruction and the rank search use (``max_batches``, 0 = all)."""
    return batches[: rc.max_batches] if rc.max_batches else batches


def _reconstruct_network(model, batches, config, show):
    info = get_info(model)
    rc = config.reconstruction
    batches = _reconstruction_batches(batches, rc)
    units = [model.get_submodule(n) for n in info.unit_names]
    with quantization_disabled(model):
        records = capture_unit_io(model, info.adapter, units[-1], batches, with_output=True)
    targets = [r[2] for r in records]
    gen = _unit_generator(config.seed, len(units))
    return reconstruct_network(model, info.adapter, units, batches, targets, rc, gen, config.learn_weight_scale, show)


def _fisher_maps(model, batches, config, show) -> dict[str, torch.Tensor]:
    """Per unit, the float model's diagonal Fisher information at its output (aiqvit.sensitivity), from which
    ``reconstruction.loss_weighting="fisher"`` weights the unit's loss; empty for "none"."""
    rc = config.reconstruction
    if rc.loss_weighting == "none":
        return {}
    info = get_info(model)
    units = [(n, model.get_submodule(n)) for n in info.unit_names]
    gen = _unit_generator(config.seed, len(units) + 1)
    with quantization_disabled(model):
        return fisher_maps(model, info.adapter, units, progress(batches, desc="fisher", enabled=show),
                           rc.fisher_samples, gen)


def _reconstruct_units(model, batches, config, report, done, ckpt, show, on_unit_done):
    info = get_info(model)
    rc = config.reconstruction
    units = info.unit_names
    batches = _reconstruction_batches(batches, rc)
    sensitivities = _fisher_maps(model, batches, config, show)
    for index, name in enumerate(units):
        if name in done:
            continue
        unit = model.get_submodule(name)
        gen = _unit_generator(config.seed, index)
        tag = f"[{index + 1}/{len(units)}] {name}"
        with quantization_disabled(model):
            fp_io = capture_unit_io(model, info.adapter, unit, batches, with_output=True, desc=f"{tag} fp", show=False)
        inputs = fp_io
        if rc.input_source == "quant":
            inputs = capture_unit_io(model, info.adapter, unit, batches, with_output=False, desc=f"{tag} q", show=False)
        loss = rc.logits_loss if name in info.adapter.logit_units(model) else "l2"
        view = info.adapter.output_view(model, name)
        fisher = sensitivities.get(name)
        weight = None if fisher is None else loss_weights(view(fisher) if view else fisher, rc.fisher_mix)
        data = build_unit_data(inputs, fp_io, view, loss, weight)
        if config.weight_rounding == "gptq":
            gptq_unit(unit, data, config.gptq_damp)
        if config.lowrank == "search":
            chosen = search_unit_ranks(unit, data, config.search, gen, desc=f"{tag} search", show=show)
        elif config.lowrank == "fixed":
            chosen = attach_fixed_rank(unit, config.lowrank_rank, gen)
        else:
            chosen = {}
        report.ranks.update({f"{name}.{k}" if k else name: v for k, v in chosen.items()})
        rounding = (AdaRound(unit, config.adaround_reg, config.adaround_lr, config.adaround_learn_scale)
                    if config.weight_rounding == "adaround" else None)
        losses = reconstruct_unit(unit, data, rc, gen, config.learn_weight_scale, desc=f"{tag} reconstruct", show=show,
                                  rounding=rounding)
        if rounding is not None:
            rounding.finish()
        report.unit_losses[name] = losses
        done.append(name)
        if ckpt is not None:
            ckpt.save(model, done, report.ranks, report.unit_losses)
        if on_unit_done is not None:
            on_unit_done(name, index)
