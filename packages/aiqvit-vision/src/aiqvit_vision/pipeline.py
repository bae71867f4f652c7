"""The steps shared by the CLI and the benchmark: build a float model and its data, quantize, evaluate,
save and reload."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import aiqvit
from aiqvit.errors import AIQViTError, CheckpointError
from aiqvit.io_utils import write_json_atomic

from . import tasks
from .data import calibration_batches, imagenet_style_splits, loader, seeded_subset
from .evaluate import evaluate
from .models import create_model
from .recipes import Recipe

RUN_FILE = "aiqvit_vision.json"  # written beside the core's model.safetensors / quantization.json
EVAL_SUBSET_SEED = 0  # the test subset is the same for every run, so FP and quantized numbers compare


@dataclass
class ModelSpec:
    """How to rebuild the float model and its data: a built-in task, or a timm model + ImageFolder data."""

    task: str | None = None
    model: str | None = None
    weights: str | None = None
    pretrained: bool = False
    num_classes: int | None = None
    img_size: int | None = None
    model_kwargs: dict | None = None  # extra timm constructor arguments, e.g. {"depth": 6}
    data: str | None = None
    fmnist_root: str | None = None
    download: bool = False  # allow torchvision to download Fashion-MNIST when no local copy is found

    def validate(self) -> ModelSpec:
        if (self.task is None) == (self.model is None):
            raise AIQViTError("give either a built-in task (--task) or a timm model name (--model), not both")
        if self.model is not None and self.data is None:
            raise AIQViTError(f"model {self.model!r} needs data: --data DIR with train/ and val/ ImageFolder trees")
        if self.task is not None:
            tasks.get_task(self.task)
        return self

    @property
    def label(self) -> str:
        return self.task or self.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(**{k: d.get(k, default) for k, default in fields.items()}).validate()


def build(spec: ModelSpec) -> tuple[nn.Module, torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """``(float model in eval mode, train split for calibration, test split for evaluation)``."""
    spec.validate()
    if spec.task is not None:
        task = tasks.get_task(spec.task)
        return (task.build(), task.dataset("train", spec.fmnist_root, spec.download),
                task.dataset("test", spec.fmnist_root, spec.download))
    model = create_model(spec.model, pretrained=spec.pretrained, weights=spec.weights,
                         num_classes=spec.num_classes, img_size=spec.img_size, **(spec.model_kwargs or {}))
    train, val = imagenet_style_splits(spec.data, model)
    head_out = getattr(model, "num_classes", None)
    if head_out and head_out < len(train.classes):
        raise AIQViTError(f"{spec.model} predicts {head_out} classes, the data has {len(train.classes)}")
    return model, train, val


def quantize_model(model: nn.Module, train, config: aiqvit.QuantConfig, recipe: Recipe, seed: int = 0,
                   calib_images: int | None = None, progress: bool = True, checkpoint_dir=None, adapter=None):
    """Quantize ``model`` in place on ``calib_images`` seeded TRAIN images; returns (report, seconds).
    ``adapter``: default ``aiqvit.find_adapter(model)``."""
    batches = calibration_batches(train, calib_images or recipe.calib_images, recipe.calib_batch, seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    report = aiqvit.quantize(model, batches, config, adapter, checkpoint_dir=checkpoint_dir, progress_bar=progress)
    return report, time.perf_counter() - start


def eval_split(dataset, eval_size: int | None):
    return seeded_subset(dataset, eval_size, EVAL_SUBSET_SEED)


def to_device(model: nn.Module, device) -> nn.Module:
    """``model.to(device)`` only when needed: aiqvit 0.1.0's quantized layers override ``nn.Module._apply``
    (their matmul helper), so ``.to()`` on a prepared model raises until the core renames it."""
    device = torch.device(device)
    if all(t.device == device for t in list(model.parameters()) + list(model.buffers())):
        return model
    return model.to(device)


def accuracy(model: nn.Module, dataset, eval_size: int | None = None, batch_size: int = 100, desc: str = "evaluate",
             progress: bool = True, device="cpu") -> dict:
    return evaluate(to_device(model, device), loader(eval_split(dataset, eval_size), batch_size), device=device,
                    desc=desc, progress=progress)


def save_run(model: nn.Module, out_dir: str | Path, spec: ModelSpec, run: dict) -> dict:
    """``aiqvit.save_quantized`` plus ``aiqvit_vision.json`` (how to rebuild the float model; the run's numbers)."""
    out_dir = Path(out_dir)
    qmap = aiqvit.save_quantized(model, out_dir)
    write_json_atomic(out_dir / RUN_FILE, {"spec": spec.to_dict(), **run})
    return qmap


def load_run(out_dir: str | Path, fmnist_root: str | None = None) -> tuple[nn.Module, ModelSpec, dict, tuple]:
    """Rebuild the float model from ``aiqvit_vision.json`` and load the quantized weights into it."""
    out_dir = Path(out_dir)
    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        raise CheckpointError(f"{out_dir} is not an aiqvit-vision output directory ({RUN_FILE} is missing)")
    try:
        run = json.loads(run_file.read_text())
        spec = ModelSpec.from_dict(run["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{run_file} is corrupt: {e}") from e
    if fmnist_root is not None:
        spec.fmnist_root = fmnist_root
    model, train, test = build(spec)
    aiqvit.load_quantized(model, out_dir)
    return model.eval(), spec, run, (train, test)


def dir_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def float_size_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())

