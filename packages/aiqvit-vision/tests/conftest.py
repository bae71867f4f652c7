import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def write_idx(path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def fmnist_dir(tmp_path):
    """A tiny Fashion-MNIST lookalike: 40 train / 20 test images of 28x28, 10 classes, class-dependent brightness."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for split, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28)) + (labels * 20)[:, None, None]
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def image_folder(tmp_path):
    """``root/{train,val}/{cat,dog}/*.png`` with 4 train and 2 val images per class (32x32 RGB)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, size=(32, 32, 3)) + 150 * c
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    return root
