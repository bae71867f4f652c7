"""Point-cloud datasets: SyntheticParts (the embedded default), ModelNet40 HDF5, ShapeNetPart, and
point-cloud file I/O through the optional open3d."""

from .common import DatasetFormatError, PointCloudDataset, cache_dir, calibration_batches, collate, model_batch
from .modelnet40 import load_modelnet40
from .shapenetpart import load_shapenetpart
from .synthetic import load_synthetic

__all__ = ["DatasetFormatError", "PointCloudDataset", "cache_dir", "calibration_batches", "collate", "load_modelnet40",
           "load_shapenetpart", "load_synthetic", "model_batch"]
