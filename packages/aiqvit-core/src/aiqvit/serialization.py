"""Save a quantized model as safetensors (weights as packed integer codes) plus a JSON
quantization map, and load it back into a fresh float model (optimum-quanto style).

Layout of a saved directory::

    model.safetensors    packed weight codes (uint8), scales, zero-points, DFQ intervals,
                         every other float tensor of the model
    quantization.json    format version, config, adapter, per-layer bit-widths and shapes,
                         searched ranks, DFQ intervals, file sizes, the calibration run's torch
                         version and thread count
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ._version import __version__ as _version
from .adapters import ModelAdapter
from .config import QuantConfig
from .errors import AIQViTError, CheckpointError
from .io_utils import atomic_path
from .prepare import get_info, prepare, quant_layers
from .primitives import pack_codes, unpack_codes
from .quantizers import UniformQuantizer
from .rotation import InputRotation
from .safetensors_io import load_file, save_file

FORMAT = "aiqvit-quantized"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantization.json"
PACKED_SUFFIX = ".weight.packed"


def save_quantized(model: nn.Module, path: str | Path) -> dict:
    """Write ``path/`` atomically; returns the quantization map (with ``sizes`` in bytes)."""
    info = get_info(model)
    if not info.finalized:
        raise AIQViTError("model is not finalized: run aiqvit.quantize (or aiqvit.api.finalize) before saving")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for name, layer in quant_layers(model):
        bits = layer.weight_quantizer.bits
        codes = layer.weight_quantizer.quantize(layer.weight.data)
        if not torch.equal(layer.weight_quantizer.dequantize(codes), layer.weight.data):
            raise AIQViTError(f"weight of {name} does not hold its dequantized codes; was the model finalized?")
        tensors[name + PACKED_SUFFIX] = pack_codes(codes, bits)
        layers[name] = {"type": type(layer).__name__, "bits": bits, "shape": list(layer.weight.shape)}
        del state[name + ".weight"]
    fp32_bytes = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    tensors.update(state)
    qmap = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "aiqvit_version": _version,
        "adapter": info.adapter.name,
        "model_class": type(model).__name__,
        "config": info.config.to_dict(),
        "reparam_done": info.reparam_done,
        "layers": layers,
        "ranks": info.ranks,
        "dfq_intervals": _dfq_map(model),
        "calibrated_with": info.calibrated_with,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        packed_bytes = sum(t.numel() for k, t in tensors.items() if k.endswith(PACKED_SUFFIX))
        qmap["sizes"] = {"file_bytes": (tmp / WEIGHTS_FILE).stat().st_size, "fp32_state_bytes": fp32_bytes,
                         "packed_weight_bytes": packed_bytes}
        (tmp / MAP_FILE).write_text(json.dumps(qmap, indent=2, sort_keys=True) + "\n")
    return qmap


def _dfq_map(model):
    from .api import dfq_intervals

    return {k: list(v) for k, v in dfq_intervals(model).items()}


def read_quantization_map(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a saved quantized model directory")
    map_file = path / MAP_FILE
    if not map_file.exists() or not (path / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{path} lacks {MAP_FILE} or {WEIGHTS_FILE}")
    try:
        qmap = json.loads(map_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{map_file} is corrupt: {e}") from e
    if not isinstance(qmap, dict) or qmap.get("format") != FORMAT:
        raise CheckpointError(f"{map_file} is not an AIQViT quantization map")
    if qmap.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{map_file} has format version {qmap.get('format_version')}, this aiqvit reads {FORMAT_VERSION}")
    return qmap


def load_quantized(model: nn.Module, path: str | Path, adapter: ModelAdapter | None = None) -> nn.Module:
    """Rebuild the quantized model saved at ``path`` from a fresh float ``model`` (same
    architecture), in place. Outputs equal those of the model that was saved."""
    qmap = read_quantization_map(path)
    tensors, _ = load_file(Path(path) / WEIGHTS_FILE)
    try:
        config = QuantConfig.from_dict(qmap["config"])
    except (TypeError, KeyError, AIQViTError) as e:
        raise CheckpointError(f"quantization map in {path} has an invalid config: {e}") from e
    prepare(model, config, adapter)
    info = get_info(model)
    if info.adapter.name != qmap.get("adapter"):
        raise CheckpointError(f"{path} was saved through adapter {qmap.get('adapter')!r}, this model uses {info.adapter.name!r}")
    layers = dict(quant_layers(model))
    if set(layers) != set(qmap["layers"]):
        missing = sorted(set(qmap["layers"]) - set(layers))[:5]
        extra = sorted(set(layers) - set(qmap["layers"]))[:5]
        raise CheckpointError(f"{path} does not match the model: saved layers missing here {missing}, "
                              f"layers here not saved {extra}")
    state = {k: v for k, v in tensors.items() if not k.endswith(PACKED_SUFFIX)}
    for name, meta in qmap["layers"].items():
        packed = tensors.get(name + PACKED_SUFFIX)
        shape = tuple(meta["shape"])
        if packed is None:
            raise CheckpointError(f"{path} lacks the packed weight of {name}")
        if tuple(layers[name].weight.shape) != shape:
            raise CheckpointError(f"{path} does not match the model: {name} was saved with weight shape "
                                  f"{list(shape)}, the model's is {list(layers[name].weight.shape)}")
        try:
            codes = unpack_codes(packed, meta["bits"], math.prod(shape)).reshape(shape)
        except ValueError as e:
            raise CheckpointError(f"{path}: packed weight of {name} is corrupt ({e})") from e
        wq = UniformQuantizer(meta["bits"], per_channel=True, channel_dim=0)
        wq.scale.data = state[name + ".weight_quantizer.scale"].clone()
        wq.zero_point = state[name + ".weight_quantizer.zero_point"].clone()
        state[name + ".weight"] = wq.dequantize(codes)
    _restore_layer_structure(model, state)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model: {e}") from e
    info.reparam_done = bool(qmap.get("reparam_done"))
    info.ranks = dict(qmap.get("ranks", {}))
    info.calibrated_with = dict(qmap.get("calibrated_with", {}))
    info.finalized = True
    for _, q in _uniform_quantizers(model):
        q.per_channel = q.scale.ndim > 0
    return model


def _restore_layer_structure(model: nn.Module, state: dict) -> None:
    """Reparameterization and input rotation can give a layer a bias, an input transform or a rotation
    it had not: recreate them. A saved (finalized) model has its bias corrections folded into the biases
    and its input gains into the input transforms."""
    for name, layer in quant_layers(model):
        if layer.bias_correction is not None and name + ".bias_correction" not in state:
            layer.bias_correction = None
        if layer.input_gain is not None and name + ".input_gain" not in state:
            layer.input_gain = None
        if layer.bias is None and name + ".bias" in state:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]), requires_grad=False)
        if layer.input_scale is None and name + ".input_scale" in state:
            layer.set_input_transform(state[name + ".input_scale"], state[name + ".input_shift"])
        if layer.input_rotation is None and name + ".input_rotation.signs" in state:
            layer.input_rotation = InputRotation(layer.in_features).to(layer.weight.device)


def _uniform_quantizers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, UniformQuantizer)]


def saved_sizes(path: str | Path) -> dict:
    return read_quantization_map(path)["sizes"]
