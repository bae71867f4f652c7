import json

import numpy as np
import pytest

from aiqvit_pointcloud.data import DatasetFormatError, load_shapenetpart
from aiqvit_pointcloud.data.shapenetpart import SEG_CLASSES

CATS = [("Airplane", "02691156"), ("Mug", "03797390"), ("Table", "04379243")]


def write_release(root, shapes_per_cat=3, points=40):
    """A miniature shapenetcore_partanno_segmentation_benchmark_v0_normal folder in the release format."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, s in CATS))
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    truth = {}
    for cat, synset in CATS:
        (root / synset).mkdir()
        for i in range(shapes_per_cat):
            token = f"{synset[-3:]}shape{i:03d}"
            n = points + i
            xyz = rng.standard_normal((n, 3)) * 3 + 5
            normals = rng.standard_normal((n, 3))
            labels = rng.choice(SEG_CLASSES[cat], n)
            rows = np.concatenate([xyz, normals, labels[:, None]], axis=1)
            np.savetxt(root / synset / f"{token}.txt", rows, fmt="%.6f")
            split = ["train", "val", "test"][i % 3]
            splits[split].append(f"shape_data/{synset}/{token}")
            truth[token] = rows
    (root / "train_test_split").mkdir()
    for split, entries in splits.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return truth


def test_reads_the_release_layout(tmp_path):
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    truth = write_release(root)
    ds = load_shapenetpart(root, "train", num_points=64, train=False)
    assert ds.class_names == ["Airplane", "Mug", "Table"]
    assert len(ds) == 3 and sorted(ds.labels.tolist()) == [0, 1, 2]
    assert ds.seg_classes["Mug"] == [36, 37] and ds.num_parts == 50
    pts, cat, parts = ds[1]
    assert pts.shape == (64, 3) and parts.shape == (64,)  # 40 points drawn with replacement up to 64
    assert set(parts.tolist()) <= set(ds.seg_classes[ds.class_names[cat]])
    # coordinates normalized to the unit sphere
    assert abs(float(ds.clouds[1][:, :3].__pow__(2).sum(1).max()) - 1) < 1e-5
    trainval = load_shapenetpart(root, "trainval", num_points=16, use_normals=True)
    assert len(trainval) == 6 and trainval[0][0].shape == (16, 6)
    only = load_shapenetpart(root, "test", categories=["Mug"])
    assert only.class_names == ["Mug"] and len(only) == 1
    assert len(truth) == 9


def test_labels_follow_points(tmp_path):
    root = tmp_path / "snp"
    truth = write_release(root)
    ds = load_shapenetpart(root, "train", num_points=40, normalize=False, train=False)
    idx = [i for i in range(len(ds)) if ds.class_names[ds.labels[i]] == "Airplane"][0]
    pts, _, parts = ds[idx]
    rows = truth["156shape000"]
    nearest = ((pts.numpy()[:, None].astype(np.float64) - rows[None, :, :3]) ** 2).sum(-1)
    assert nearest.min(1).max() < 1e-8  # every sampled point is a point of the file...
    np.testing.assert_array_equal(rows[nearest.argmin(1), 6].astype(int), parts.numpy())  # ...with its label


def test_malformed_files_give_clear_errors(tmp_path):
    root = tmp_path / "snp"
    write_release(root)
    with pytest.raises(DatasetFormatError, match="categories"):
        load_shapenetpart(root, categories=["Spaceship"])
    bad_shape = root / "03797390" / "390shape000.txt"
    good = bad_shape.read_text()
    bad_shape.write_text("1 2 3 4 5 6\n")
    with pytest.raises(DatasetFormatError, match="7 columns"):
        load_shapenetpart(root, "train")
    bad_shape.write_text("1 2 3 4 5 6 12\n")
    with pytest.raises(DatasetFormatError, match=r"\[12\] are not parts"):
        load_shapenetpart(root, "train")
    bad_shape.write_text("1 2 3 4 5 six 36\n")
    with pytest.raises(DatasetFormatError, match="numbers"):
        load_shapenetpart(root, "train")
    bad_shape.write_text(good)
    (root / "train_test_split" / "shuffled_test_file_list.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="invalid JSON"):
        load_shapenetpart(root, "test")
    (root / "train_test_split" / "shuffled_test_file_list.json").write_text('["shape_data/03797390/nope"]')
    with pytest.raises(DatasetFormatError, match="not found"):
        load_shapenetpart(root, "test")
    (root / "synsetoffset2category.txt").write_text("Airplane\n")
    with pytest.raises(DatasetFormatError, match="<Category> <synset>"):
        load_shapenetpart(root, "train")
    (root / "synsetoffset2category.txt").write_text("Spaceship 0001\n")
    with pytest.raises(DatasetFormatError, match="no part list"):
        load_shapenetpart(root, "train")
