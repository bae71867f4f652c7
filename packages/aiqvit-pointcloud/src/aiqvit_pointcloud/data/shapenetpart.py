"""ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``).

Layout: ``synsetoffset2category.txt`` (``<Category> <synset>`` per line), one text file per shape
``<synset>/<token>.txt`` with rows ``x y z nx ny nz part_label``, and the splits
``train_test_split/shuffled_{train,val,test}_file_list.json`` (JSON lists of
``shape_data/<synset>/<token>``). Part labels are global (0..49); :data:`SEG_CLASSES` gives each
category's parts (the PointNet++ table).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .common import DatasetFormatError, PointCloudDataset

SEG_CLASSES: dict[str, list[int]] = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}
SPLITS = ("train", "val", "test", "trainval")


def read_category_file(root: Path) -> list[tuple[str, str]]:
    path = root / "synsetoffset2category.txt"
    if not path.is_file():
        raise DatasetFormatError(f"{root}: missing synsetoffset2category.txt")
    pairs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DatasetFormatError(f"{path}:{i}: expected '<Category> <synset>', got {line!r}")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise DatasetFormatError(f"{path}: no categories")
    return pairs


def read_split(root: Path, split: str) -> list[tuple[str, str]]:
    """``(synset, token)`` pairs of a split file."""
    names = ["train", "val"] if split == "trainval" else [split]
    out = []
    for name in names:
        path = root / "train_test_split" / f"shuffled_{name}_file_list.json"
        if not path.is_file():
            raise DatasetFormatError(f"{root}: missing train_test_split/{path.name}")
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}: invalid JSON ({e})") from e
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise DatasetFormatError(f"{path}: expected a JSON list of 'shape_data/<synset>/<token>' strings")
        for e in entries:
            fields = e.strip("/").split("/")
            if len(fields) < 2:
                raise DatasetFormatError(f"{path}: entry {e!r} is not 'shape_data/<synset>/<token>'")
            out.append((fields[-2], fields[-1]))
    return out


def read_shape(path: Path, parts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(points (P, 6) float32, part labels (P,) int16)`` from one shape file."""
    if not path.is_file():
        raise DatasetFormatError(f"shape file not found: {path}")
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: not rows of numbers ({e})") from e
    if rows.shape[0] == 0:
        raise DatasetFormatError(f"{path}: no points")
    if rows.shape[1] != 7:
        raise DatasetFormatError(f"{path}: expected 7 columns 'x y z nx ny nz part_label', got {rows.shape[1]}")
    if not np.isfinite(rows).all():
        raise DatasetFormatError(f"{path}: non-finite values")
    labels = rows[:, 6]
    if not np.array_equal(labels, np.round(labels)):
        raise DatasetFormatError(f"{path}: part labels must be integers")
    labels = labels.astype(np.int64)
    bad = sorted(set(np.unique(labels).tolist()) - set(parts))
    if bad:
        raise DatasetFormatError(f"{path}: part labels {bad} are not parts of this category (its parts: {parts})")
    return rows[:, :6].astype(np.float32), labels.astype(np.int16)


def load_shapenetpart(root: str | Path, split: str = "train", num_points: int = 2048, *, use_normals: bool = False,
                      categories: list[str] | None = None, seg_classes: dict[str, list[int]] | None = None,
                      normalize: bool = True, train: bool | None = None, seed: int = 0) -> PointCloudDataset:
    """ShapeNetPart ``split`` (``train``, ``val``, ``test`` or ``trainval``). Class indices follow the order of
    ``synsetoffset2category.txt`` (restricted to ``categories`` if given); coordinates are normalized to the
    unit sphere per shape (``normalize``). Items draw ``num_points`` points (with replacement if fewer)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"ShapeNetPart folder not found: {root}")
    table = seg_classes or SEG_CLASSES
    pairs = read_category_file(root)
    if categories is not None:
        unknown = sorted(set(categories) - {c for c, _ in pairs})
        if unknown:
            raise DatasetFormatError(f"{root}: categories {unknown} are not in synsetoffset2category.txt")
        pairs = [p for p in pairs if p[0] in categories]
    missing = [c for c, _ in pairs if c not in table]
    if missing:
        raise DatasetFormatError(f"{root}: no part list for categories {missing}; pass seg_classes=...")
    names = [c for c, _ in pairs]
    by_synset = {s: i for i, (_, s) in enumerate(pairs)}
    clouds, labels, part_labels = [], [], []
    for synset, token in read_split(root, split):
        if synset not in by_synset:
            continue
        cat = by_synset[synset]
        pts, parts = read_shape(root / synset / f"{token}.txt", table[names[cat]])
        if normalize:
            centred = pts[:, :3] - pts[:, :3].mean(0)
            pts[:, :3] = centred / max(float(np.sqrt((centred**2).sum(1)).max()), 1e-12)
        clouds.append(pts if use_normals else np.ascontiguousarray(pts[:, :3]))
        labels.append(cat)
        part_labels.append(parts)
    if not clouds:
        raise DatasetFormatError(f"{root}: split {split!r} has no shapes of the selected categories")
    return PointCloudDataset(clouds, np.array(labels), class_names=names, num_points=num_points,
                             part_labels=part_labels, seg_classes={n: table[n] for n in names},
                             name=f"ShapeNetPart-{split}", train=(split == "train") if train is None else train,
                             seed=seed)
