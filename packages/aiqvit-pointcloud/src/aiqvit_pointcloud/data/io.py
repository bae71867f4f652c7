"""Point-cloud and mesh files (.ply, .pcd, .xyz, .obj, .stl, ...) through open3d (optional).

open3d is imported only here, only when a function is called: the package, its models and the
benchmark work without it. Install it with ``pip install 'aiqvit-pointcloud[io]'``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiqvit.io_utils import atomic_path

from .common import DatasetFormatError, normalize_unit_sphere


def require_open3d():
    try:
        import open3d
    except ImportError as e:
        raise ImportError("point-cloud and mesh file I/O needs open3d, an optional dependency: "
                          "pip install 'aiqvit-pointcloud[io]' (or pip install open3d)") from e
    return open3d


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def read_point_cloud(path: str | Path, with_normals: bool = False) -> np.ndarray:
    """Points ``(N, 3)`` float32 (``(N, 6)`` with normals) from a point-cloud file."""
    o3d = require_open3d()
    path = _existing(path)
    cloud = o3d.io.read_point_cloud(str(path))
    points = np.asarray(cloud.points, dtype=np.float32)
    if points.shape[0] == 0:
        raise DatasetFormatError(f"{path}: open3d read no points (unsupported or corrupt file)")
    if with_normals:
        if not cloud.has_normals():
            raise DatasetFormatError(f"{path}: the file has no normals")
        points = np.concatenate([points, np.asarray(cloud.normals, dtype=np.float32)], axis=1)
    return points


def write_point_cloud(path: str | Path, points: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Write ``points (N, 3)`` (and ``normals``) atomically; the format follows the suffix (.ply, .pcd, ...)."""
    o3d = require_open3d()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f"points must have shape (N, 3) with N > 0, got {points.shape}")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float64)
        if normals.shape != points.shape:
            raise ValueError(f"normals shape {normals.shape} differs from points {points.shape}")
        cloud.normals = o3d.utility.Vector3dVector(normals)
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), cloud):
            raise OSError(f"open3d could not write {path} (unsupported suffix?)")


def sample_mesh(path: str | Path, num_points: int, method: str = "uniform", seed: int = 0) -> np.ndarray:
    """``num_points`` points ``(N, 3)`` float32 sampled on a triangle mesh's surface
    (``uniform``: area-weighted random; ``poisson``: Poisson-disk, more even)."""
    o3d = require_open3d()
    path = _existing(path)
    if num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise DatasetFormatError(f"{path}: no triangles (not a mesh, or a format open3d cannot read)")
    o3d.utility.random.seed(seed)
    if method == "uniform":
        cloud = mesh.sample_points_uniformly(number_of_points=num_points)
    elif method == "poisson":
        cloud = mesh.sample_points_poisson_disk(number_of_points=num_points)
    else:
        raise ValueError(f"method must be 'uniform' or 'poisson', got {method!r}")
    return np.asarray(cloud.points, dtype=np.float32)


def load_for_model(path: str | Path, num_points: int, seed: int = 0) -> np.ndarray:
    """A file as network input: a point cloud (or a mesh, sampled) normalized to the unit sphere, with
    exactly ``num_points`` points (a seeded subset, or drawn with replacement when the file has fewer)."""
    path = _existing(path)
    o3d = require_open3d()
    cloud_only = path.suffix.lower() in (".pcd", ".xyz", ".xyzn", ".pts")
    mesh = None if cloud_only else o3d.io.read_triangle_mesh(str(path))
    if mesh is not None and len(mesh.triangles) > 0:
        points = sample_mesh(path, num_points, seed=seed)
    else:
        points = read_point_cloud(path)
    rng = np.random.default_rng(seed)
    n = len(points)
    idx = rng.permutation(n)[:num_points] if n >= num_points else rng.choice(n, num_points)
    return normalize_unit_sphere(points[idx]).astype(np.float32)
