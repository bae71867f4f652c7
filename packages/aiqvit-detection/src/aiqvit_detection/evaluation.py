"""Box and mask AP of a detector on a dataset, through mmdet's ``CocoMetric`` (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import logging
import math

import torch
from torch import nn

from .data import iterate_batches


def _quiet_mmengine():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(logging.WARNING)
    return logger, old


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset, batch_size: int = 1, max_images: int | None = None,
                      progress: bool = True) -> dict[str, float]:
    """COCO ``bbox_mAP``, ``segm_mAP`` (and the other COCO statistics) in [0, 1], from running
    ``model.test_step`` on the first ``max_images`` images (all by default)."""
    from mmdet.evaluation import CocoMetric

    metric = CocoMetric(ann_file=dataset.ann_file, metric=["bbox", "segm"], format_only=False)
    metric.dataset_meta = dataset.metainfo
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    batches = iterate_batches(dataset, batch_size, n)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, total=math.ceil(n / batch_size), desc="evaluate", unit="batch")
    model.eval()
    for batch in batches:
        outputs = model.test_step(batch)
        metric.process(data_batch=batch, data_samples=outputs)
    logger, level = _quiet_mmengine()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = metric.evaluate(n)
    finally:
        logger.setLevel(level)
    return {k.split("/", 1)[-1]: float(v) for k, v in results.items() if isinstance(v, (int, float))}
