import gzip

import numpy as np
import pytest
import timm
import torch
from conftest import write_idx

from aiqvit.errors import CalibrationDataError
from aiqvit_vision.data import (
    DEBIAN_FASHION_MNIST,
    DataLayoutError,
    FashionMNIST,
    calibration_batches,
    check_image_folder,
    imagenet_style_splits,
    read_idx,
    seeded_subset,
)


def test_read_idx_roundtrip_and_bad_files(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "ok.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), arr)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float dtype code
    with pytest.raises(DataLayoutError, match="unsigned-byte"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x01" * 4)  # announces 9 labels, holds 4
    with pytest.raises(DataLayoutError, match="announces"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_rgb_at_resolution(fmnist_dir):
    ds = FashionMNIST("train", resolution=56, root=fmnist_dir, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(ds) == 40
    x, y = ds[3]
    assert x.shape == (3, 56, 56) and y == 3
    torch.testing.assert_close(x[0], x[1])  # gray replicated to RGB
    raw = ds.images[3].float() / 255
    torch.testing.assert_close(x[0].mean(), ((raw - 0.5) / 0.5).mean(), atol=2e-3, rtol=0)
    assert len(FashionMNIST("test", 28, root=fmnist_dir)) == 20


def test_fashion_mnist_errors(fmnist_dir, tmp_path):
    with pytest.raises(DataLayoutError, match="split"):
        FashionMNIST("val", root=fmnist_dir)
    with pytest.raises(DataLayoutError, match="lacks the Fashion-MNIST files"):
        FashionMNIST("train", root=tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    test = FashionMNIST("test", resolution=28)
    assert len(test) == 10_000 and len(FashionMNIST("train")) == 60_000
    assert sorted(test.labels.unique().tolist()) == list(range(10))


def test_calibration_sampler_is_seeded_and_checked(fmnist_dir):
    ds = FashionMNIST("train", 28, root=fmnist_dir)
    a = calibration_batches(ds, 10, 4, seed=0)
    b = calibration_batches(ds, 10, 4, seed=0)
    c = calibration_batches(ds, 10, 4, seed=1)
    assert [t.shape[0] for t in a] == [4, 4, 2]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    with pytest.raises(CalibrationDataError, match=">= 1"):
        calibration_batches(ds, 0, 4)
    with pytest.raises(CalibrationDataError, match="has 40"):
        calibration_batches(ds, 41, 4)


def test_seeded_subset(fmnist_dir):
    ds = FashionMNIST("test", 28, root=fmnist_dir)
    assert seeded_subset(ds, None) is ds
    sub = seeded_subset(ds, 5, seed=0)
    assert len(sub) == 5 and list(sub.indices) == list(seeded_subset(ds, 5, seed=0).indices)


def test_image_folder_with_timm_config(image_folder):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64)
    train, val = imagenet_style_splits(image_folder, model)
    assert train.classes == ["cat", "dog"] and len(train) == 8 and len(val) == 4
    x, y = val[0]
    assert x.shape == (3, 64, 64)


def test_image_folder_bad_layouts(tmp_path, image_folder):
    with pytest.raises(DataLayoutError, match="does not exist"):
        check_image_folder(tmp_path / "nope")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(b"")
    with pytest.raises(DataLayoutError, match="one sub-folder per class"):
        check_image_folder(loose)
    (loose / "empty_class").mkdir()
    with pytest.raises(DataLayoutError, match="without images"):
        check_image_folder(loose)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64)
    with pytest.raises(DataLayoutError, match="'train/' is missing"):
        imagenet_style_splits(image_folder / "train", model)
    (image_folder / "val").rename(image_folder / "valid")
    with pytest.raises(DataLayoutError, match="'val/' is missing"):
        imagenet_style_splits(image_folder, model)
    (image_folder / "valid").rename(image_folder / "val")
    (image_folder / "val" / "dog").rename(image_folder / "val" / "wolf")
    with pytest.raises(DataLayoutError, match="differ from the train split"):
        imagenet_style_splits(image_folder, model)
