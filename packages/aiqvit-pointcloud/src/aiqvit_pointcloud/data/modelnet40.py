"""ModelNet40 in the PointNet HDF5 release (``modelnet40_ply_hdf5_2048``).

Layout: ``train_files.txt`` / ``test_files.txt`` list the HDF5 files (one per line; the release
writes them as ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``, resolved here against the
folder itself, its ancestors, or by file name); each file holds ``data`` ``(n, P, 3)`` float and
``label`` ``(n, 1)`` integer datasets (``normal`` ``(n, P, 3)`` optional); ``shape_names.txt``
names the classes (one per line, label order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import DatasetFormatError, PointCloudDataset

SPLITS = ("train", "test")


def _resolve(root: Path, entry: str) -> Path:
    candidates = [Path(entry)] if Path(entry).is_absolute() else []
    candidates += [root / entry, *(parent / entry for parent in root.parents), root / Path(entry).name]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetFormatError(f"{root}: listed file {entry!r} not found (looked in {root} and its parents)")


def _read_h5(path: Path, use_normals: bool) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetFormatError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        for key in ("data", "label") + (("normal",) if use_normals else ()):
            if key not in f:
                raise DatasetFormatError(f"{path}: missing dataset {key!r} (has {sorted(f.keys())})")
        data, label = np.asarray(f["data"], dtype=np.float32), np.asarray(f["label"])
        if data.ndim != 3 or data.shape[-1] != 3:
            raise DatasetFormatError(f"{path}: 'data' must have shape (shapes, points, 3), got {data.shape}")
        if label.ndim == 2 and label.shape[1] == 1:
            label = label[:, 0]
        if label.ndim != 1 or label.shape[0] != data.shape[0]:
            raise DatasetFormatError(f"{path}: 'label' must have shape ({data.shape[0]},) or ({data.shape[0]}, 1), "
                                     f"got {label.shape}")
        if not np.issubdtype(label.dtype, np.integer):
            raise DatasetFormatError(f"{path}: 'label' must hold integers, got {label.dtype}")
        if not np.isfinite(data).all():
            raise DatasetFormatError(f"{path}: 'data' holds non-finite coordinates")
        if use_normals:
            normal = np.asarray(f["normal"], dtype=np.float32)
            if normal.shape != data.shape:
                raise DatasetFormatError(f"{path}: 'normal' shape {normal.shape} differs from 'data' {data.shape}")
            data = np.concatenate([data, normal], axis=-1)
    return data, label.astype(np.int64)


def load_modelnet40(root: str | Path, split: str = "train", num_points: int = 1024, *, use_normals: bool = False,
                    train: bool | None = None, seed: int = 0) -> PointCloudDataset:
    """ModelNet40 ``split`` from the HDF5 folder ``root``. Items draw ``num_points`` of each shape's points."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"ModelNet40 folder not found: {root}")
    listing = root / f"{split}_files.txt"
    if not listing.is_file():
        raise DatasetFormatError(f"{root}: missing {listing.name} (the list of {split} HDF5 files)")
    entries = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    if not entries:
        raise DatasetFormatError(f"{listing}: lists no files")
    parts = [_read_h5(_resolve(root, e), use_normals) for e in entries]
    widths = {p[0].shape[1] for p in parts}
    if len(widths) != 1:
        raise DatasetFormatError(f"{root}: files hold different point counts {sorted(widths)}")
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    names_file = root / "shape_names.txt"
    if names_file.is_file():
        names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
    else:
        names = [f"class_{i:02d}" for i in range(40)]
    if labels.min() < 0 or labels.max() >= len(names):
        raise DatasetFormatError(f"{root}: labels {labels.min()}..{labels.max()} do not fit the {len(names)} "
                                 f"class names")
    return PointCloudDataset(data, labels, class_names=names, num_points=num_points, name=f"ModelNet40-{split}",
                             train=(split == "train") if train is None else train, seed=seed)
