import h5py
import numpy as np
import pytest
import torch

from aiqvit_pointcloud.data import DatasetFormatError, load_modelnet40


def write_release(root, n_train=(5, 3), n_test=(4,), points=32, classes=40, shape_names=True):
    """A miniature modelnet40_ply_hdf5_2048 folder, written exactly as the PointNet release lays it out."""
    folder = root / "data" / "modelnet40_ply_hdf5_2048"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    for split, sizes in (("train", n_train), ("test", n_test)):
        lines, data_all, labels_all = [], [], []
        for i, n in enumerate(sizes):
            name = f"ply_data_{split}{i}.h5"
            data = rng.standard_normal((n, points, 3)).astype(np.float32)
            label = rng.integers(0, classes, (n, 1)).astype(np.uint8)
            with h5py.File(folder / name, "w") as f:
                f["data"], f["label"] = data, label
                f["normal"] = rng.standard_normal((n, points, 3)).astype(np.float32)
            lines.append(f"data/modelnet40_ply_hdf5_2048/{name}")
            data_all.append(data)
            labels_all.append(label[:, 0])
        (folder / f"{split}_files.txt").write_text("\n".join(lines) + "\n")
        truth[split] = np.concatenate(data_all), np.concatenate(labels_all)
    if shape_names:
        (folder / "shape_names.txt").write_text("\n".join(f"shape{i}" for i in range(classes)) + "\n")
    return folder, truth


def test_reads_the_release_layout(tmp_path):
    folder, truth = write_release(tmp_path)
    ds = load_modelnet40(folder, "train", num_points=32, train=False)
    assert len(ds) == 8 and ds.num_classes == 40 and ds.class_names[3] == "shape3"
    np.testing.assert_array_equal(ds.labels, truth["train"][1])
    pts, label, parts = ds[6]
    assert pts.shape == (32, 3) and label == truth["train"][1][6] and (parts == -1).all()
    # evaluation-mode sampling is a fixed permutation of the shape's points
    np.testing.assert_allclose(np.sort(pts.numpy(), axis=0), np.sort(truth["train"][0][6], axis=0))
    assert torch.equal(ds[6][0], pts)
    test = load_modelnet40(folder, "test", num_points=16)
    assert len(test) == 4 and test[0][0].shape == (16, 3) and not test.train
    with_normals = load_modelnet40(folder, "test", num_points=16, use_normals=True)
    assert with_normals[0][0].shape == (16, 6)


def test_list_resolved_by_file_name_when_moved(tmp_path):
    folder, _ = write_release(tmp_path)
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert len(load_modelnet40(moved, "test", num_points=8)) == 4


def test_class_names_default_without_shape_names(tmp_path):
    folder, _ = write_release(tmp_path, shape_names=False)
    assert load_modelnet40(folder, "test").class_names[0] == "class_00"


def test_malformed_files_give_clear_errors(tmp_path):
    folder, _ = write_release(tmp_path)
    with pytest.raises(DatasetFormatError, match="not found"):
        load_modelnet40(tmp_path / "nope")
    (folder / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/missing.h5\n")
    with pytest.raises(DatasetFormatError, match="missing.h5"):
        load_modelnet40(folder, "test")
    (folder / "test_files.txt").unlink()
    with pytest.raises(DatasetFormatError, match="test_files.txt"):
        load_modelnet40(folder, "test")
    # a dataset key missing
    with h5py.File(folder / "ply_data_train1.h5", "a") as f:
        del f["label"]
    with pytest.raises(DatasetFormatError, match="'label'"):
        load_modelnet40(folder, "train")
    # wrong layout
    with h5py.File(folder / "ply_data_train1.h5", "a") as f:
        f["label"] = np.zeros((3, 1), np.uint8)
        del f["data"]
        f["data"] = np.zeros((3, 32, 4), np.float32)
    with pytest.raises(DatasetFormatError, match=r"\(shapes, points, 3\)"):
        load_modelnet40(folder, "train")
    # not HDF5 at all
    (folder / "ply_data_train1.h5").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="HDF5"):
        load_modelnet40(folder, "train")


def test_label_out_of_range(tmp_path):
    folder, _ = write_release(tmp_path, classes=40)
    (folder / "shape_names.txt").write_text("a\nb\n")
    with pytest.raises(DatasetFormatError, match="class names"):
        load_modelnet40(folder, "train")
