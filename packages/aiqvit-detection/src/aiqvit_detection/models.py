"""mmdet configs and checkpoints: resolve, build, load (with clear errors on bad input)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aiqvit.errors import AIQViTError, CheckpointError

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"


class ConfigError(AIQViTError):
    """An mmdet config file is missing, unreadable or describes no detector."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A detector trained here on the synthetic data set (benchmarks/detection/train.py)."""

    name: str
    config: str  # path relative to CONFIG_DIR
    weights: str  # file name in WEIGHTS_DIR

    @property
    def config_path(self) -> Path:
        return CONFIG_DIR / self.config

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights


EMBEDDED_MODELS = {
    m.name: m for m in (
        EmbeddedModel("mask-rcnn-swin-t-mini", "synthetic/mask-rcnn_swin-t-mini_synthetic.py",
                      "mask-rcnn_swin-t-mini_synthetic.safetensors"),
        EmbeddedModel("cascade-mask-rcnn-swin-t-mini", "synthetic/cascade-mask-rcnn_swin-t-mini_synthetic.py",
                      "cascade-mask-rcnn_swin-t-mini_synthetic.safetensors"),
    )
}


def packaged_configs() -> dict[str, Path]:
    """Configs shipped with the package, by file stem."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*/*.py"))}


def resolve_config(config: str | Path) -> Path:
    """A config path, or the stem of a packaged config (``mask-rcnn_swin-t-p4-w7_fpn_1x_coco``)."""
    path = Path(config)
    if path.is_file():
        return path
    packaged = packaged_configs()
    if str(config) in packaged:
        return packaged[str(config)]
    raise ConfigError(f"config file {config} does not exist (packaged configs: {', '.join(packaged)})")


def load_config(config: str | Path):
    """Parse an mmdet config (``mmengine.Config``); raises :class:`ConfigError` if it is not a detector."""
    from mmengine.config import Config

    path = resolve_config(config)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine raises many types for a broken file
        raise ConfigError(f"cannot parse config {path}: {type(exc).__name__}: {exc}") from exc
    model = cfg.get("model")
    if not isinstance(model, dict) or "type" not in model:
        raise ConfigError(f"config {path} has no 'model' dict with a 'type': not an mmdet detector config")
    return cfg


def build_detector(cfg, device: str | torch.device = "cpu", init_weights: bool = False) -> nn.Module:
    """Build the config's detector (float, eval mode). ``init_weights`` runs mmdet's initializers
    (for training from scratch; a checkpoint overwrites every weight anyway)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    try:
        model = MODELS.build(cfg.model)
    except Exception as exc:
        raise ConfigError(f"cannot build the detector of the config: {type(exc).__name__}: {exc}") from exc
    if init_weights:
        model.init_weights()
    return model.to(device).eval()


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of a checkpoint (``.safetensors``, or a torch file read with ``weights_only=True``)
    in float32, and its metadata (``meta`` of mmdet checkpoints, safetensors metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (corrupt zip), EOFError, ...
            raise CheckpointError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): {type(exc).__name__}: {exc}. "
                "Only tensors, dicts and plain Python values are loaded (never arbitrary pickles); if the file "
                "holds other objects, re-save just its 'state_dict' or convert it to safetensors.") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            meta = obj.get("meta") or {}
            state = obj["state_dict"]
        elif isinstance(obj, dict):
            state = obj
        else:
            raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, meta


def load_detector_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint strictly into ``model``; :class:`CheckpointError` says how they differ."""
    state, meta = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
        raise CheckpointError(f"checkpoint {path} does not match the config's detector "
                              f"({type(model).__name__}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return meta


def load_detector(config: str | Path, checkpoint: str | Path, device: str | torch.device = "cpu"):
    """``(cfg, model)``: the config's detector with the checkpoint's weights, float, eval mode."""
    cfg = load_config(config)
    model = build_detector(cfg, device="cpu")
    load_detector_weights(model, checkpoint)
    return cfg, model.to(device).eval()


def embedded_model(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise AIQViTError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def save_fp16_safetensors(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Float weights as fp16 (integer buffers unchanged), written atomically."""
    from safetensors.torch import save_file

    from aiqvit.io_utils import atomic_path

    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata or {})
        os.chmod(tmp, 0o644)  # a shipped file: readable by everyone
