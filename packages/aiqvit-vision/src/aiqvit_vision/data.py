"""Image data: Fashion-MNIST (Debian package or torchvision download), ImageNet-style ImageFolder trees,
and the seeded calibration sampler. Calibration images always come from a train split."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from aiqvit.errors import AIQViTError, CalibrationDataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataLayoutError(AIQViTError):
    """A data directory or file does not have the expected layout."""


# ---------------------------------------------------------------------------------------------- IDX / MNIST
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes: images ``[N, H, W]`` or labels ``[N]``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataLayoutError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 8:
        raise DataLayoutError(f"{path} is too short to be an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataLayoutError(f"{path}: not an unsigned-byte IDX file of 1 or 3 dimensions (header {raw[:4]!r})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataLayoutError(f"{path}: header announces {dims} = {int(np.prod(dims))} bytes, file has {body.size}")
    return body.reshape(dims)


def fashion_mnist_root(root: str | Path | None = None, download: bool = False) -> Path:
    """Directory with the four Fashion-MNIST IDX files.

    Looked up in order: ``root``; ``$AIQVIT_FASHION_MNIST``; Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``); a torchvision download into the cache when ``download=True``.
    """
    needed = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    if root is not None:
        missing = [f for f in needed if not (Path(root) / f).is_file()]
        if missing:
            raise DataLayoutError(f"{root} lacks the Fashion-MNIST files {missing}")
        return Path(root)
    candidates = [Path(os.environ["AIQVIT_FASHION_MNIST"])] if os.environ.get("AIQVIT_FASHION_MNIST") else []
    candidates.append(DEBIAN_FASHION_MNIST)
    for c in candidates:
        if all((c / f).is_file() for f in needed):
            return c
    if download:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        from .cache import cache_dir

        target = cache_dir() / "data"
        TVFashionMNIST(str(target), train=True, download=True)
        TVFashionMNIST(str(target), train=False, download=True)
        return target / "FashionMNIST" / "raw"
    raise DataLayoutError(
        "Fashion-MNIST not found: install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "set AIQVIT_FASHION_MNIST to a directory with the four IDX .gz files, or allow the torchvision download "
        "(aiqvit-vision --download-data)"
    )


class FashionMNIST(Dataset):
    """Fashion-MNIST as normalized RGB tensors ``[3, resolution, resolution]`` (bilinear resize, gray
    replicated to three channels), with integer labels."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "train", resolution: int = 28, root: str | Path | None = None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, download: bool = False):
        if split not in FASHION_MNIST_FILES:
            raise DataLayoutError(f"split must be 'train' or 'test', got {split!r}")
        if resolution < 8:
            raise AIQViTError(f"resolution must be >= 8 pixels, got {resolution}")
        folder = fashion_mnist_root(root, download=download)
        images_file, labels_file = FASHION_MNIST_FILES[split]
        self.images = torch.from_numpy(read_idx(folder / images_file).copy())
        self.labels = torch.from_numpy(read_idx(folder / labels_file).astype(np.int64))
        if self.images.ndim != 3 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise DataLayoutError(f"{folder}: {split} images {tuple(self.images.shape)} and labels "
                                  f"{tuple(self.labels.shape)} do not pair up")
        self.split = split
        self.resolution = resolution
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 28, 28]`` -> normalized float ``[N, 3, R, R]``."""
        x = images.float().div_(255.0).unsqueeze(1)
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def __getitem__(self, i: int):
        return self.transform(self.images[i:i + 1])[0], int(self.labels[i])


# ---------------------------------------------------------------------------------------------- ImageFolder
def check_image_folder(root: str | Path) -> list[str]:
    """Validate an ImageFolder tree ``root/<class>/<image>``; returns the sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        hint = f" (found loose images such as {loose}: put them in one sub-folder per class)" if loose else ""
        raise DataLayoutError(f"{root} has no class sub-folders; expected {root}/<class>/<image>{hint}")
    empty = [c for c in classes if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in (root / c).rglob("*"))]
    if empty:
        raise DataLayoutError(f"{root}: class folders without images: {empty[:5]}")
    return classes


def image_folder(root: str | Path, transform, classes: list[str] | None = None):
    """torchvision ``ImageFolder`` after :func:`check_image_folder`; ``classes`` (e.g. those of the
    train split) must equal the folder's classes when given."""
    from torchvision.datasets import ImageFolder

    found = check_image_folder(root)
    if classes is not None and list(classes) != found:
        raise DataLayoutError(f"{root}: classes {found[:5]}... differ from the train split's {list(classes)[:5]}...")
    return ImageFolder(str(root), transform=transform)


def imagenet_style_splits(data_dir: str | Path, model, train_name: str = "train", val_name: str = "val"):
    """``(train, val)`` ImageFolder datasets with timm's eval transform of ``model`` (resize, center crop,
    mean/std from its pretrained config; the input size is the model's own when it was built with another
    ``img_size``). The train split is only sampled for calibration."""
    import timm.data

    data_dir = Path(data_dir)
    for name in (train_name, val_name):
        if not (data_dir / name).is_dir():
            raise DataLayoutError(f"{data_dir} must contain '{train_name}/' and '{val_name}/' ImageFolder trees; "
                                  f"'{name}/' is missing")
    config = timm.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None and tuple(size) != tuple(config["input_size"][1:]):
        # built with img_size=...: the pretrained config's input size no longer applies
        config["input_size"] = (config["input_size"][0], *size)
    transform = timm.data.create_transform(**config, is_training=False)
    train = image_folder(data_dir / train_name, transform)
    val = image_folder(data_dir / val_name, transform, classes=train.classes)
    return train, val


# ---------------------------------------------------------------------------------------------- sampling
def calibration_batches(dataset: Dataset, num_images: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``num_images`` images drawn without replacement (seeded) from ``dataset``, as image batches."""
    if num_images < 1:
        raise CalibrationDataError(f"calibration size must be >= 1, got {num_images}")
    if batch_size < 1:
        raise CalibrationDataError(f"calibration batch size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise CalibrationDataError("the calibration dataset is empty")
    if num_images > len(dataset):
        raise CalibrationDataError(f"asked for {num_images} calibration images, the train split has {len(dataset)}")
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images].tolist()
    images = torch.stack([dataset[i][0] for i in index])
    if not torch.isfinite(images).all():
        raise CalibrationDataError("calibration images contain non-finite values")
    return list(images.split(batch_size))


def seeded_subset(dataset: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``size`` items (the whole dataset when ``size`` is None or too large)."""
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise AIQViTError(f"subset size must be >= 1, got {size}")
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return Subset(dataset, sorted(index))


def loader(dataset: Dataset, batch_size: int = 64, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
