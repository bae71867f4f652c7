"""Where a COCO-format root keeps its annotation files and images, and checks that it holds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aiqvit.errors import AIQViTError


class DatasetError(AIQViTError):
    """A data root is missing, incomplete or not in COCO format."""


@dataclass(frozen=True)
class CocoLayout:
    """File names inside a COCO root; the defaults are COCO 2017's
    (``annotations/instances_train2017.json``, ``train2017/``, and the same for ``val``)."""

    train_ann: str = "annotations/instances_train2017.json"
    val_ann: str = "annotations/instances_val2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"

    def annotation_file(self, root: Path, split: str) -> Path:
        return Path(root) / self._pick(split, self.train_ann, self.val_ann)

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / self._pick(split, self.train_images, self.val_images)

    @staticmethod
    def _pick(split, train, val):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return train if split == "train" else val


def check_coco_root(root: str | Path, split: str, layout: CocoLayout = CocoLayout(), max_listed: int = 5) -> dict:
    """Load and sanity-check one split; returns the parsed annotation JSON.

    Raises :class:`DatasetError` naming what is missing: the root, the annotation file, the image
    folder, or image files the annotations refer to.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"COCO root {root} does not exist or is not a directory")
    ann = layout.annotation_file(root, split)
    if not ann.is_file():
        raise DatasetError(f"COCO root {root}: annotation file {ann} for split {split!r} is missing "
                           f"(expected layout: {layout})")
    try:
        data = json.loads(ann.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"annotation file {ann} is not valid JSON: {exc}") from exc
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing_keys:
        raise DatasetError(f"annotation file {ann} is not COCO instances format: no {missing_keys}")
    if not data["images"]:
        raise DatasetError(f"annotation file {ann} lists no images")
    img_dir = layout.image_dir(root, split)
    if not img_dir.is_dir():
        raise DatasetError(f"COCO root {root}: image folder {img_dir} for split {split!r} is missing")
    missing = [im["file_name"] for im in data["images"] if not (img_dir / im["file_name"]).is_file()]
    if missing:
        shown = ", ".join(missing[:max_listed]) + (" ..." if len(missing) > max_listed else "")
        raise DatasetError(f"COCO root {root}: {len(missing)} of {len(data['images'])} images listed in {ann.name} "
                           f"are missing from {img_dir}: {shown}")
    return data
