"""Evaluate a (float or quantized) network on a point-cloud dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.common import PointCloudDataset, collate, model_batch
from .metrics import PartSegMeter, mean_class_accuracy, overall_accuracy, restrict_to_category

# the headline metric of each task (what the benchmark tables rank by)
PRIMARY_METRIC = {"cls": "OA", "partseg": "instance_mIoU"}


def part_sets(dataset: PointCloudDataset) -> list[list[int]]:
    """Each category's part ids, in class-index order."""
    if dataset.seg_classes is None:
        raise ValueError(f"{dataset.name} has no part labels: it cannot evaluate part segmentation")
    missing = [n for n in dataset.class_names if n not in dataset.seg_classes]
    if missing:
        raise ValueError(f"{dataset.name}: no part list for categories {missing}")
    return [dataset.seg_classes[n] for n in dataset.class_names]


def run_batch(model: nn.Module, task: str, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    batch = model_batch(task, points, labels)
    return model(*batch) if isinstance(batch, tuple) else model(batch)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: PointCloudDataset, task: str, batch_size: int = 32,
             device: str | torch.device = "cpu", progress: bool = True, limit: int | None = None) -> dict:
    """Metrics in percent: ``OA`` and ``mAcc`` (cls); ``instance_mIoU``, ``class_mIoU`` and
    ``per_class_mIoU`` (partseg). ``limit``: evaluate only the first ``limit`` shapes."""
    if task not in PRIMARY_METRIC:
        raise ValueError(f"task must be one of {list(PRIMARY_METRIC)}, got {task!r}")
    if dataset.train:
        dataset = dataset.subset(range(len(dataset)), train=False)
    if limit is not None:
        dataset = dataset.subset(range(min(limit, len(dataset))), train=False)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    preds, targets = [], []
    meter = PartSegMeter(dataset.class_names, part_sets(dataset)) if task == "partseg" else None
    try:
        for points, labels, parts in tqdm(loader, desc=f"evaluate {task}", disable=not progress, leave=False):
            points, labels = points.to(device), labels.to(device)
            logits = run_batch(model, task, points, labels).float()
            if task == "cls":
                preds.append(logits.argmax(-1).cpu())
                targets.append(labels.cpu())
            else:
                meter.update(restrict_to_category(logits, labels, meter.part_sets).cpu(), parts, labels.cpu())
    finally:
        model.train(was_training)
    if task == "cls":
        pred, target = torch.cat(preds), torch.cat(targets)
        return {"OA": 100 * overall_accuracy(pred, target),
                "mAcc": 100 * mean_class_accuracy(pred, target, dataset.num_classes), "shapes": len(target)}
    r = meter.result()
    return {"instance_mIoU": 100 * r["instance_miou"], "class_mIoU": 100 * r["class_miou"],
            "per_class_mIoU": {k: 100 * v for k, v in r["per_class_miou"].items()}, "shapes": r["shapes"]}
