"""Full-precision checkpoints: fp16 safetensors with the architecture in the metadata.

The packaged checkpoints (``aiqvit_pointcloud/weights/``) were trained on SyntheticParts by
``benchmarks/pointcloud/train.py``; a checkpoint trained on first use goes to the cache
(``$AIQVIT_CACHE/pointcloud/weights``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from aiqvit.errors import CheckpointError
from aiqvit.io_utils import atomic_path
from torch import nn

from .data.common import cache_dir
from .models import PointTransformerConfig, build_model

FORMAT = "aiqvit-pointcloud-fp/1"
PACKAGED_DIR = Path(__file__).parent / "weights"
TASKS = ("cls", "partseg")


def checkpoint_filename(task: str, dataset: str = "synthetic") -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return f"point_transformer_{task}_{dataset}.safetensors"


def cached_checkpoint_path(task: str, dataset: str = "synthetic") -> Path:
    return cache_dir() / "weights" / checkpoint_filename(task, dataset)


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Floating tensors stored as fp16; ``model.config`` and ``metadata`` go into the header."""
    from safetensors.torch import save_file

    if not hasattr(model, "config"):
        raise CheckpointError("save_checkpoint expects a Point Transformer network (with a .config)")
    tensors = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict()),
            "metadata": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an aiqvit-pointcloud checkpoint (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    return {"config": json.loads(meta["config"]), "metadata": json.loads(meta.get("metadata", "{}"))}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The float32 network in eval mode, and the checkpoint's metadata."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    header = read_metadata(path)
    try:
        config = PointTransformerConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config in the header ({e})") from e
    model = build_model(config)
    state = load_file(str(path))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: state does not match the architecture (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for {bad[:5]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.to(device).eval(), header["metadata"]


def find_checkpoint(task: str, dataset: str = "synthetic") -> Path | None:
    """The packaged checkpoint, else the cached one, else None."""
    for path in (PACKAGED_DIR / checkpoint_filename(task, dataset), cached_checkpoint_path(task, dataset)):
        if path.is_file():
            return path
    return None


def pretrained(task: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The float network trained on SyntheticParts for ``task`` (packaged or cached)."""
    path = find_checkpoint(task)
    if path is None:
        raise CheckpointError(f"no {task} checkpoint in {PACKAGED_DIR} or {cached_checkpoint_path(task).parent}; "
                              f"train it with: python benchmarks/pointcloud/train.py --task {task}")
    return load_checkpoint(path, device)
