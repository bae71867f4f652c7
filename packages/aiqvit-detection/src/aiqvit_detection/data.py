"""mmdet datasets over a COCO-format root, calibration batches, and batch iteration."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from aiqvit.errors import CalibrationDataError

from .coco_layout import CocoLayout, DatasetError, check_coco_root


def build_dataset(cfg, coco_root: str | Path, split: str, layout: CocoLayout = CocoLayout(),
                  classes: tuple[str, ...] | None = None):
    """The config's *test* dataset and pipeline (no augmentation) over ``split`` of ``coco_root``.

    Calibration uses the train split through the test pipeline, as post-training quantization does.
    ``classes`` overrides the config's (or mmdet's COCO default) class names.
    """
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    root = Path(coco_root)
    check_coco_root(root, split, layout)
    loader = cfg.get("test_dataloader") or cfg.get("val_dataloader")
    if not loader or "dataset" not in loader:
        raise DatasetError("the config has no test_dataloader.dataset to take the test pipeline from")
    ds_cfg = copy.deepcopy(loader["dataset"])
    ds_cfg.update(
        data_root=str(root),
        ann_file=str(layout.annotation_file(root, split).relative_to(root)),
        data_prefix=dict(img=str(layout.image_dir(root, split).relative_to(root)) + "/"),
        test_mode=True,
    )
    if classes is not None:
        ds_cfg["metainfo"] = dict(classes=tuple(classes))
    try:
        dataset = DATASETS.build(ds_cfg)
    except Exception as exc:
        raise DatasetError(f"cannot build the {split} dataset of {root}: {type(exc).__name__}: {exc}") from exc
    if len(dataset) == 0:
        raise DatasetError(f"the {split} split of {root} holds no image with the config's classes "
                           f"{dataset.metainfo.get('classes')}")
    return dataset


def collate(dataset, indices: list[int]) -> dict:
    """An mmdet data batch (``inputs``: list of uint8 CHW tensors, ``data_samples``) of ``indices``."""
    from mmengine.dataset import pseudo_collate

    return pseudo_collate([dataset[i] for i in indices])


def sample_indices(n_total: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].tolist()


def calibration_batches(dataset, num_images: int, seed: int = 0, batch_size: int = 1) -> list[dict]:
    """``num_images`` images drawn (seeded) from ``dataset``, as batches of ``batch_size`` (paper: 256, 1)."""
    if num_images < 1:
        raise CalibrationDataError(f"num_images must be >= 1, got {num_images}")
    if num_images > len(dataset):
        raise CalibrationDataError(f"asked for {num_images} calibration images, the split holds {len(dataset)}")
    idx = sample_indices(len(dataset), num_images, seed)
    return [collate(dataset, idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]


def iterate_batches(dataset, batch_size: int = 1, max_images: int | None = None):
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in range(0, n, batch_size):
        yield collate(dataset, list(range(i, min(i + batch_size, n))))
