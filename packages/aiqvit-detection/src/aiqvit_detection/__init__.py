"""AIQViT for object detection and instance segmentation: mmdet Swin detectors (Mask R-CNN,
Cascade Mask R-CNN).

The data tools (:mod:`.synthetic`, :mod:`.labelme_data`, :mod:`.coco_metrics`, :mod:`.coco_layout`)
need only numpy, Pillow, shapely and pycocotools. The adapter and the detector workflow need
mmdet 3.x with a compiled mmcv 2.x; importing this package registers the adapter when they are
installed (``aiqvit_detection.adapter`` raises the import error otherwise).
"""

from __future__ import annotations

__version__ = "0.2.1"

try:  # register the Swin adapter with the core when mmdet is importable
    from .adapter import SwinDetectorAdapter, SwinDetectorFullAdapter  # noqa: F401
    HAVE_MMDET = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_MMDET = False
