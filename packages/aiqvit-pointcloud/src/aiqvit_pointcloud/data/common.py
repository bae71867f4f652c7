"""The dataset type shared by every source, the cache location and the batch helpers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from aiqvit.errors import AIQViTError
from torch.utils.data import Dataset


class DatasetFormatError(AIQViTError):
    """A dataset file is missing, malformed or inconsistent with its format."""


def cache_dir() -> Path:
    """``$AIQVIT_CACHE/pointcloud`` (default ``~/.cache/aiqvit/pointcloud``)."""
    root = Path(os.environ.get("AIQVIT_CACHE", Path.home() / ".cache" / "aiqvit"))
    return root / "pointcloud"


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale the farthest point to radius 1 (ModelNet/ShapeNet convention)."""
    centred = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((centred**2).sum(axis=1)).max()
    return centred / max(radius, 1e-12)


class PointCloudDataset(Dataset):
    """Point clouds with an object label and (optionally) per-point part labels.

    ``clouds``: a ``(S, P, C)`` array or a list of ``(P_i, C)`` arrays (xyz first). Each item draws
    ``num_points`` points: in evaluation mode a fixed, seeded choice per shape (the same every
    time); in training mode a fresh random choice plus augmentation (random anisotropic scale and
    shift, Gaussian jitter). Items are ``(points (N, C) float32, label, part_labels (N,) or -1)``.
    """

    def __init__(self, clouds: np.ndarray | Sequence[np.ndarray], labels: np.ndarray, *, class_names: list[str],
                 num_points: int, part_labels: np.ndarray | Sequence[np.ndarray] | None = None,
                 seg_classes: dict[str, list[int]] | None = None, name: str = "dataset", train: bool = False,
                 seed: int = 0):
        if len(clouds) != len(labels):
            raise DatasetFormatError(f"{name}: {len(clouds)} clouds but {len(labels)} labels")
        if len(clouds) == 0:
            raise DatasetFormatError(f"{name}: no shapes")
        if part_labels is not None and len(part_labels) != len(clouds):
            raise DatasetFormatError(f"{name}: {len(part_labels)} part label arrays for {len(clouds)} clouds")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.clouds, self.labels = clouds, np.asarray(labels, dtype=np.int64)
        self.part_labels, self.seg_classes = part_labels, seg_classes
        self.class_names, self.num_points, self.name = list(class_names), num_points, name
        self.train, self.seed = train, seed
        self._rng = np.random.default_rng(seed)
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise DatasetFormatError(f"{name}: labels must lie in [0, {len(self.class_names)}), "
                                     f"found {self.labels.min()}..{self.labels.max()}")

    def reseed(self, seed: int) -> None:
        """Restart the training-mode sampling/augmentation stream from ``seed``."""
        self._rng = np.random.default_rng(seed)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_parts(self) -> int:
        if self.seg_classes is None:
            raise ValueError(f"{self.name} has no part labels")
        return 1 + max(p for parts in self.seg_classes.values() for p in parts)

    @property
    def in_channels(self) -> int:
        return int(self.clouds[0].shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def _choice(self, i: int, n: int) -> np.ndarray:
        rng = self._rng if self.train else np.random.default_rng([self.seed, i])
        return rng.permutation(n)[: self.num_points] if n >= self.num_points else rng.choice(n, self.num_points)

    def __getitem__(self, i: int):
        cloud = self.clouds[i]
        idx = self._choice(i, cloud.shape[0])
        pts = np.array(cloud[idx], dtype=np.float32)
        if self.train:
            scale = self._rng.uniform(0.8, 1.25, size=3).astype(np.float32)
            shift = self._rng.uniform(-0.1, 0.1, size=3).astype(np.float32)
            pts[:, :3] = pts[:, :3] * scale + shift
            pts[:, :3] += np.clip(0.01 * self._rng.standard_normal((len(idx), 3)), -0.05, 0.05).astype(np.float32)
        parts = (np.asarray(self.part_labels[i])[idx].astype(np.int64) if self.part_labels is not None
                 else np.full(len(idx), -1, dtype=np.int64))
        return torch.from_numpy(pts), int(self.labels[i]), torch.from_numpy(parts)

    def subset(self, indices: Sequence[int], train: bool | None = None) -> PointCloudDataset:
        pick = list(indices)
        return PointCloudDataset([self.clouds[i] for i in pick], self.labels[pick], class_names=self.class_names,
                                 num_points=self.num_points,
                                 part_labels=None if self.part_labels is None else [self.part_labels[i] for i in pick],
                                 seg_classes=self.seg_classes, name=self.name,
                                 train=self.train if train is None else train, seed=self.seed)


def collate(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pts, labels, parts = zip(*items)
    return torch.stack(pts), torch.tensor(labels, dtype=torch.long), torch.stack(parts)


def model_batch(task: str, points: torch.Tensor, labels: torch.Tensor):
    """What a network takes: ``points`` for classification, ``(points, category)`` for part segmentation."""
    return points if task == "cls" else (points, labels)


def calibration_batches(dataset: PointCloudDataset, task: str, size: int, batch_size: int = 32, seed: int = 0
                        ) -> list:
    """``size`` shapes drawn (seeded, without replacement) from ``dataset`` in evaluation mode, batched."""
    if size < 1:
        raise AIQViTError(f"calibration size must be positive, got {size}")
    if size > len(dataset):
        raise AIQViTError(f"calibration size {size} exceeds the {len(dataset)} shapes of {dataset.name}")
    pick = np.random.default_rng(seed).permutation(len(dataset))[:size]
    calib = dataset.subset(sorted(pick.tolist()), train=False)
    batches = []
    for start in range(0, size, batch_size):
        pts, labels, _ = collate([calib[i] for i in range(start, min(size, start + batch_size))])
        batches.append(model_batch(task, pts, labels))
    return batches
