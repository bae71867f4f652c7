"""Three real PASCAL VOC photos with COCO instance annotations, from labelme's source distribution.

labelme is GPL-licensed: nothing of it is shipped or imported here. Only its example *data*
(``examples/instance_segmentation/data_dataset_coco/annotations.json`` and the three JPEGs it
lists; 12 polygon instances) is read, with :mod:`tarfile`, from the sdist file that pip downloads
(``pip download --no-deps --no-binary :all: labelme==6.3.1``). It serves as a real-image smoke test of
loading and evaluation, written in the same COCO layout as every other root (the three images form
both the ``train`` and the ``val`` split).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

from .coco_layout import CocoLayout, DatasetError
from .paths import cache_dir

LABELME_VERSION = "6.3.1"
SDIST_NAME = f"labelme-{LABELME_VERSION}.tar.gz"
_MEMBER_DIR = f"labelme-{LABELME_VERSION}/examples/instance_segmentation/data_dataset_coco"


def labelme_sdist(download: bool = True) -> Path:
    """The sdist file: ``$AIQVIT_LABELME_SDIST``, else the AIQViT cache, else (``download``) fetched
    into the cache with pip, the ordinary PyPI client."""
    env = os.environ.get("AIQVIT_LABELME_SDIST")
    if env:
        if not Path(env).is_file():
            raise DatasetError(f"AIQVIT_LABELME_SDIST={env} is not a file")
        return Path(env)
    target_dir = cache_dir() / "downloads"
    target = target_dir / SDIST_NAME
    if target.is_file():
        return target
    if not download:
        raise DatasetError(f"{SDIST_NAME} is not in {target_dir}; set AIQVIT_LABELME_SDIST or allow the download")
    target_dir.mkdir(parents=True, exist_ok=True)
    # pip prepares the sdist's metadata, which needs labelme's build backend (hatchling): in an
    # isolated build environment unless this one already has it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") is not None else []
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", *isolation,
           f"labelme=={LABELME_VERSION}", "-d", str(target_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        # a failure after the file was saved still leaves a usable sdist
        if target.is_file():
            return target
        raise DatasetError(f"could not download {SDIST_NAME} with pip: {proc.stderr.strip()[-500:]}")
    return target


def extract_labelme_coco(root: str | Path, sdist: str | Path | None = None, layout: CocoLayout = CocoLayout()) -> Path:
    """Write the three photos and their annotations under ``root`` in COCO layout; returns ``root``.

    Image and annotation ids are shifted to start at 1 (labelme's start at 0, which pycocotools
    misreads), the unused ``_background_`` category is dropped and ``file_name`` loses its
    ``JPEGImages/`` folder.
    """
    from aiqvit.io_utils import atomic_path

    sdist = Path(sdist) if sdist is not None else labelme_sdist()
    root = Path(root)
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            coco = json.load(tar.extractfile(f"{_MEMBER_DIR}/annotations.json"))
        except KeyError as exc:
            raise DatasetError(f"{sdist} has no {_MEMBER_DIR}/annotations.json") from exc
        coco["categories"] = [c for c in coco["categories"] if c["name"] != "_background_"]
        # pycocotools reads a matched ground-truth id of 0 as "unmatched": make every id 1-based
        for im in coco["images"]:
            im["id"] += 1
        for ann in coco["annotations"]:
            ann["id"] += 1
            ann["image_id"] += 1
        images = {}
        for im in coco["images"]:
            member = f"{_MEMBER_DIR}/{im['file_name']}"
            images[PurePosixPath(im["file_name"]).name] = tar.extractfile(member).read()
            im["file_name"] = PurePosixPath(im["file_name"]).name
    coco["info"] = {"description": f"PASCAL VOC photos with COCO annotations from the labelme {LABELME_VERSION} "
                                   "sdist examples (data only)"}
    with atomic_path(root) as tmp:
        for split in ("train", "val"):
            img_dir = layout.image_dir(tmp, split)
            img_dir.mkdir(parents=True)
            for name, data in images.items():
                (img_dir / name).write_bytes(data)
            ann = layout.annotation_file(tmp, split)
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(json.dumps(coco))
    return root


def cached_labelme_root() -> Path:
    root = cache_dir() / "detection" / f"labelme-{LABELME_VERSION}-coco"
    if not CocoLayout().annotation_file(root, "val").is_file():
        extract_labelme_coco(root)
    return root


LABELME_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
                   "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor")
