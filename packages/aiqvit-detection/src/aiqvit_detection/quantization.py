"""Quantize an mmdet Swin detector with the AIQViT core, save it, load it back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

import aiqvit
from aiqvit.errors import CheckpointError
from aiqvit.io_utils import atomic_path

from .adapter import ADAPTERS_BY_NAME, adapter_for_scope
from .models import build_detector, load_config

DETECTOR_CONFIG = "detector_config.py"
DETECTOR_META = "detector.json"
QUANTIZED_SUBDIR = "quantized"


def quant_config(method: str, w_bits: int, a_bits: int, seed: int = 0, recon_iters: int | None = None,
                 search_iters: int | None = None, **overrides) -> aiqvit.QuantConfig:
    """The core's preset for ``method``; ``recon_iters``/``search_iters`` set the per-unit budgets."""
    config = aiqvit.QuantConfig.for_method(method, w_bits, a_bits, seed=seed, **overrides)
    # replace, never mutate: a preset's sub-config object may be shared between calls
    if recon_iters is not None:
        config.reconstruction = dataclasses.replace(config.reconstruction, iters=recon_iters)
    if search_iters is not None:
        config.search = dataclasses.replace(config.search, iters=search_iters)
    config.validate()
    return config


def quantize_detector(model: nn.Module, calib_batches: list, config: aiqvit.QuantConfig, scope: str = "backbone",
                      checkpoint_dir: str | Path | None = None, progress: bool = True) -> aiqvit.QuantizationReport:
    """Quantize ``model`` in place (calibration batches of size 1, as the paper)."""
    return aiqvit.quantize(model, calib_batches, config, adapter=adapter_for_scope(scope),
                           checkpoint_dir=checkpoint_dir, progress_bar=progress)


def save_quantized_detector(model: nn.Module, cfg, out_dir: str | Path, extra: dict | None = None) -> Path:
    """``out_dir/``: the core's packed model (``quantized/``), the mmdet config it was built from,
    and ``detector.json`` (the adapter's name and anything in ``extra``). Written atomically."""
    out_dir = Path(out_dir)
    info = aiqvit.get_info(model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        aiqvit.save_quantized(model, tmp / QUANTIZED_SUBDIR)
        cfg.dump(str(tmp / DETECTOR_CONFIG))
        meta = {"adapter": info.adapter.name, **(extra or {})}
        (tmp / DETECTOR_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_quantized_detector(out_dir: str | Path, device: str = "cpu"):
    """``(cfg, model, meta)`` from a directory written by :func:`save_quantized_detector`."""
    out_dir = Path(out_dir)
    for name in (DETECTOR_CONFIG, DETECTOR_META, QUANTIZED_SUBDIR):
        if not (out_dir / name).exists():
            raise CheckpointError(f"{out_dir} is not a quantized detector directory: {name} is missing")
    try:
        meta = json.loads((out_dir / DETECTOR_META).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{out_dir / DETECTOR_META} is corrupt: {exc}") from exc
    adapter_cls = ADAPTERS_BY_NAME.get(meta.get("adapter"))
    if adapter_cls is None:
        raise CheckpointError(f"{out_dir} names an unknown adapter {meta.get('adapter')!r}")
    cfg = load_config(out_dir / DETECTOR_CONFIG)
    # move before preparing: aiqvit 0.1.0's quantized layers override nn.Module._apply, so a
    # prepared model cannot be moved with .to()
    model = build_detector(cfg, device=device)
    aiqvit.load_quantized(model, out_dir / QUANTIZED_SUBDIR, adapter=adapter_cls())
    return cfg, model.eval(), meta
