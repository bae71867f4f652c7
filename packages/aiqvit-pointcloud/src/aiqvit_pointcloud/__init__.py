"""AIQViT for point clouds: Point Transformer networks, data loaders, metrics and the core adapter.

Importing the package registers :class:`PointTransformerAdapter` with the core, so
``aiqvit.quantize(model, ...)`` finds it for Point Transformer networks.
"""

from .adapter import PointTransformerAdapter, QuantizedPointTransformerLayer
from .data import (
    DatasetFormatError,
    PointCloudDataset,
    calibration_batches,
    load_modelnet40,
    load_shapenetpart,
    load_synthetic,
)
from .evaluation import PRIMARY_METRIC, evaluate
from .metrics import mean_class_accuracy, overall_accuracy, partseg_miou, shape_iou
from .models import (
    PointTransformerBlock,
    PointTransformerCls,
    PointTransformerConfig,
    PointTransformerLayer,
    PointTransformerSeg,
    build_model,
)
from .weights import load_checkpoint, pretrained, save_checkpoint

__version__ = "0.3.0"

__all__ = [
    "PRIMARY_METRIC", "DatasetFormatError", "PointCloudDataset", "PointTransformerAdapter", "PointTransformerBlock",
    "PointTransformerCls", "PointTransformerConfig", "PointTransformerLayer", "PointTransformerSeg",
    "QuantizedPointTransformerLayer", "build_model", "calibration_batches", "evaluate", "load_checkpoint",
    "load_modelnet40", "load_shapenetpart", "load_synthetic", "mean_class_accuracy", "overall_accuracy",
    "partseg_miou", "pretrained", "save_checkpoint", "shape_iou",
]
