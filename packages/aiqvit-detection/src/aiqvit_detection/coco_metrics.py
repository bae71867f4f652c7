"""COCO box and mask AP with pycocotools, from plain Python detections (no mmdet needed).

A detection is ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}`` plus, for masks,
``"segmentation"`` (an RLE dict, or polygons). :func:`coco_ap` returns the 12 COCO statistics of
each requested IoU type, named as mmdet names them (``bbox_mAP``, ``bbox_mAP_50``, ...).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
              "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")


def load_coco(gt: str | Path | dict) -> COCO:
    """A quiet ``COCO`` object from a path or an already parsed annotation dict."""
    coco = COCO()
    coco.dataset = json.loads(Path(gt).read_text()) if not isinstance(gt, dict) else copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ap(gt: str | Path | dict | COCO, detections: list[dict], iou_types=("bbox", "segm"),
            image_ids: list[int] | None = None) -> dict[str, float]:
    """COCO statistics per IoU type; AP values in [0, 1]. With no detections every AP is 0."""
    coco_gt = gt if isinstance(gt, COCO) else load_coco(gt)
    out: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        dets = [d for d in detections if iou_type == "bbox" or "segmentation" in d]
        if not dets:
            out.update({f"{iou_type}_{n}": 0.0 for n in STAT_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # pycocotools reports -1 where a size bucket holds no ground truth
        out.update({f"{iou_type}_{n}": float(v) for n, v in zip(STAT_NAMES, ev.stats)})
    return out


def ground_truth_as_detections(gt: str | Path | dict, score: float = 1.0) -> list[dict]:
    """Every non-crowd ground-truth object as a detection (masks as RLE): scores AP 1.0."""
    coco = gt if isinstance(gt, COCO) else load_coco(gt)
    dets = []
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        rle = coco.annToRLE(ann)
        rle = {"size": list(rle["size"]), "counts": rle["counts"].decode() if isinstance(rle["counts"], bytes)
               else rle["counts"]}
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]),
                     "score": score, "segmentation": rle})
    return dets


def mask_to_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
