"""Open a dataset by name: ``synthetic`` (SyntheticParts, the default), ``modelnet40``, ``shapenetpart``."""

from __future__ import annotations

from pathlib import Path

from .common import PointCloudDataset
from .modelnet40 import load_modelnet40
from .shapenetpart import load_shapenetpart
from .synthetic import load_synthetic

SOURCES = ("synthetic", "modelnet40", "shapenetpart")
TASKS_OF = {"synthetic": ("cls", "partseg"), "modelnet40": ("cls",), "shapenetpart": ("cls", "partseg")}


def open_dataset(source: str, split: str, num_points: int, task: str, root: str | Path | None = None,
                 train: bool = False) -> PointCloudDataset:
    if source not in SOURCES:
        raise ValueError(f"unknown dataset {source!r}; choose from {SOURCES}")
    if task not in TASKS_OF[source]:
        raise ValueError(f"dataset {source} has no labels for task {task!r} (it supports {TASKS_OF[source]})")
    if source != "synthetic" and root is None:
        raise ValueError(f"dataset {source} needs --data-root (the folder of its release)")
    if source == "synthetic":
        return load_synthetic(split, num_points, train=train)
    if source == "modelnet40":
        return load_modelnet40(root, split, num_points, train=train)
    return load_shapenetpart(root, split, num_points, train=train)
