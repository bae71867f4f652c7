"""Box and mask AP of a detector on a dataset, through mmdet's ``CocoMetric`` (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from .data import iterate_batches


def _quiet_mmengine():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(logging.WARNING)
    return logger, old


def evaluate_detector(model: nn.Module, dataset, batch_size: int = 1, max_images: int | None = None,
                      progress: bool = True) -> dict[str, float]:
    """COCO ``bbox_mAP``, ``segm_mAP`` (and the other COCO statistics) in [0, 1], from running
    ``model.test_step`` on the first ``max_images`` images (all by default)."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n < len(dataset):
        # CocoMetric scores every image of its annotation file: give it one with the evaluated images only
        with tempfile.TemporaryDirectory() as tmp:
            ann_file = Path(tmp) / "subset.json"
            ann_file.write_text(json.dumps(subset_annotations(dataset, n)))
            return _evaluate(model, dataset, str(ann_file), n, batch_size, progress)
    return _evaluate(model, dataset, dataset.ann_file, n, batch_size, progress)


def subset_annotations(dataset, n: int) -> dict:
    """The dataset's COCO annotation dict restricted to its first ``n`` images."""
    keep = {dataset.get_data_info(i)["img_id"] for i in range(n)}
    coco = json.loads(Path(dataset.ann_file).read_text())
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    return coco


def _evaluate(model, dataset, ann_file: str, n: int, batch_size: int, progress: bool) -> dict[str, float]:
    from mmdet.evaluation import CocoMetric

    metric = CocoMetric(ann_file=ann_file, metric=["bbox", "segm"], format_only=False)
    metric.dataset_meta = dataset.metainfo
    batches = iterate_batches(dataset, batch_size, n)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, total=math.ceil(n / batch_size), desc="evaluate", unit="batch")
    model.eval()
    for batch in batches:
        with torch.no_grad():
            outputs = model.test_step(batch)
        metric.process(data_batch=batch, data_samples=[o.to_dict() for o in outputs])
    logger, level = _quiet_mmengine()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = metric.evaluate(n)
    finally:
        logger.setLevel(level)
    return {k.split("/", 1)[-1]: float(v) for k, v in results.items() if isinstance(v, (int, float))}
