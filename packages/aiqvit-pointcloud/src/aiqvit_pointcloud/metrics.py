"""Classification (OA, mAcc) and part-segmentation (class / instance mIoU) metrics.

Part segmentation follows the ShapeNetPart protocol (PointNet / PointNet++ evaluation code):
a shape's prediction is the arg-max over its own category's parts only; its IoU is the mean over
that category's parts, a part absent from both prediction and ground truth counting IoU 1;
instance mIoU averages over shapes, class mIoU over categories (each the mean of its shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def overall_accuracy(pred, target) -> float:
    """Fraction of correct predictions (0..1)."""
    pred, target = _np(pred).reshape(-1), _np(target).reshape(-1)
    if pred.shape != target.shape or pred.size == 0:
        raise ValueError(f"pred and target must be non-empty and of equal length, got {pred.shape} and {target.shape}")
    return float((pred == target).mean())


def mean_class_accuracy(pred, target, num_classes: int | None = None) -> float:
    """Mean over classes present in ``target`` of the per-class accuracy (0..1)."""
    pred, target = _np(pred).reshape(-1), _np(target).reshape(-1)
    if pred.shape != target.shape or pred.size == 0:
        raise ValueError(f"pred and target must be non-empty and of equal length, got {pred.shape} and {target.shape}")
    classes = np.unique(target) if num_classes is None else [c for c in range(num_classes) if (target == c).any()]
    return float(np.mean([(pred[target == c] == c).mean() for c in classes]))


def restrict_to_category(logits: torch.Tensor, category: torch.Tensor, part_sets: Sequence[Sequence[int]]
                         ) -> torch.Tensor:
    """Per-point arg-max over the parts of each shape's own category: ``logits (B, N, P)``, ``category (B,)``."""
    mask = torch.zeros(len(part_sets), logits.shape[-1], dtype=torch.bool, device=logits.device)
    for c, parts in enumerate(part_sets):
        mask[c, list(parts)] = True
    allowed = mask[category.long()].unsqueeze(1)  # (B, 1, P)
    return logits.masked_fill(~allowed, float("-inf")).argmax(-1)


def shape_iou(pred, target, parts: Sequence[int]) -> float:
    """Mean IoU of one shape over ``parts`` (its category's parts); empty union counts 1."""
    pred, target = _np(pred).reshape(-1), _np(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have equal length, got {pred.shape} and {target.shape}")
    ious = []
    for p in parts:
        inter = np.logical_and(pred == p, target == p).sum()
        union = np.logical_or(pred == p, target == p).sum()
        ious.append(1.0 if union == 0 else inter / union)
    return float(np.mean(ious))


class PartSegMeter:
    """Accumulates shape IoUs; ``result()`` gives instance and class mIoU (0..1) and per-category mIoU."""

    def __init__(self, class_names: Sequence[str], part_sets: Sequence[Sequence[int]]):
        if len(class_names) != len(part_sets):
            raise ValueError("class_names and part_sets must have equal length")
        self.class_names, self.part_sets = list(class_names), [list(p) for p in part_sets]
        self.shape_ious: list[list[float]] = [[] for _ in class_names]

    def update(self, pred, target, category) -> None:
        """``pred``/``target`` ``(B, N)`` part ids, ``category`` ``(B,)``."""
        pred, target, category = _np(pred), _np(target), _np(category).reshape(-1)
        for p, t, c in zip(pred, target, category):
            self.shape_ious[int(c)].append(shape_iou(p, t, self.part_sets[int(c)]))

    def result(self) -> dict:
        all_ious = [iou for ious in self.shape_ious for iou in ious]
        if not all_ious:
            raise ValueError("no shapes were evaluated")
        per_class = {n: float(np.mean(ious)) for n, ious in zip(self.class_names, self.shape_ious) if ious}
        return {"instance_miou": float(np.mean(all_ious)), "class_miou": float(np.mean(list(per_class.values()))),
                "per_class_miou": per_class, "shapes": len(all_ious)}


def partseg_miou(preds, targets, categories, class_names: Sequence[str], part_sets: Sequence[Sequence[int]]) -> dict:
    meter = PartSegMeter(class_names, part_sets)
    meter.update(preds, targets, categories)
    return meter.result()
