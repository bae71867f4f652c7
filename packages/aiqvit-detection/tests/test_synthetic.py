import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from aiqvit_detection.coco_layout import CocoLayout, DatasetError, check_coco_root
from aiqvit_detection.synthetic import CATEGORIES, SyntheticSpec, cached_dev_dataset, generate_dataset, generate_image


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_image_other_index_other_image():
    spec = SyntheticSpec(seed=5)
    a_img, a_obj = generate_image(spec, "train", 7)
    b_img, b_obj = generate_image(spec, "train", 7)
    assert np.array_equal(a_img, b_img) and a_obj == b_obj
    c_img, _ = generate_image(spec, "train", 8)
    d_img, _ = generate_image(spec, "val", 7)
    e_img, _ = generate_image(SyntheticSpec(seed=6), "train", 7)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img) and not np.array_equal(a_img, e_img)


def test_dataset_files_are_byte_identical_across_runs(tmp_path):
    spec = SyntheticSpec(train_images=5, val_images=3, seed=1)
    a = generate_dataset(tmp_path / "a", spec, progress=False)
    b = generate_dataset(tmp_path / "b", spec, progress=False)
    assert _digest(a) == _digest(b)


def test_annotations_are_valid_coco_and_masks_match_boxes(tiny_coco):
    layout = CocoLayout()
    for split in ("train", "val"):
        data = check_coco_root(tiny_coco, split, layout)
        coco = COCO(str(layout.annotation_file(tiny_coco, split)))
        assert len(coco.getImgIds()) == len(data["images"])
        assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == {c["id"] for c in CATEGORIES}
        assert len(data["annotations"]) > 0
        for ann in data["annotations"]:
            assert ann["id"] >= 1 and ann["image_id"] >= 1  # pycocotools misreads id 0
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0
            x, y, w, h = ann["bbox"]
            # the polygon's bounds and its rasterization agree (sharp tips may lose up to 2 px)
            assert abs(xs.min() - x) <= 2.0 and abs(ys.min() - y) <= 2.0
            assert abs(xs.max() + 1 - (x + w)) <= 2.0 and abs(ys.max() + 1 - (y + h)) <= 2.0
            assert abs(mask.sum() - ann["area"]) <= 0.15 * ann["area"] + 10
            img = data["images"][ann["image_id"] - 1]
            assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6


def test_default_set_has_every_category_overlaps_and_occlusion():
    spec = SyntheticSpec()
    cats, occluded, counts = set(), 0, []
    for i in range(40):
        _, objects = generate_image(spec, "train", i)
        counts.append(len(objects))
        cats |= {o["category_id"] for o in objects}
        occluded += sum(len(o["segmentation"]) > 1 for o in objects)  # split into several visible parts
    assert cats == {c["id"] for c in CATEGORIES}
    assert max(counts) >= 4 and min(counts) >= 1
    assert occluded >= 1


def test_visible_area_is_below_full_shape_area_for_occluded_objects():
    spec = SyntheticSpec()
    found = False
    for i in range(30):
        _, objects = generate_image(spec, "train", i)
        boxes_overlap = [(a, b) for j, a in enumerate(objects) for b in objects[j + 1:]
                         if _iou_boxes(a["bbox"], b["bbox"]) > 0]
        found |= bool(boxes_overlap)
    assert found, "no overlapping objects in 30 images"


def _iou_boxes(a, b):
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    return iw * ih


def test_missing_root_annotation_or_image_is_a_clear_error(tiny_coco, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_coco_root(tmp_path / "nowhere", "val")
    with pytest.raises(DatasetError, match="instances_val2017.json .*missing"):
        check_coco_root(tmp_path, "val")
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "val2017").mkdir()
    data = json.loads(CocoLayout().annotation_file(tiny_coco, "val").read_text())
    (broken / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"6 of 6 images .* missing .*000000.png"):
        check_coco_root(broken, "val")
    (broken / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        check_coco_root(broken, "val")


def test_an_image_does_not_depend_on_the_split_sizes():
    small, big = SyntheticSpec(train_images=1, val_images=24), SyntheticSpec()
    a, oa = generate_image(small, "val", 5)
    b, ob = generate_image(big, "val", 5)
    assert np.array_equal(a, b) and oa == ob


def test_dev_images_are_held_out_and_read_as_a_val_split(tmp_path, monkeypatch):
    monkeypatch.setenv("AIQVIT_CACHE", str(tmp_path))
    spec = SyntheticSpec(seed=0)
    dev, _ = generate_image(spec, "dev", 3)
    for split in ("train", "val"):
        assert not np.array_equal(dev, generate_image(spec, split, 3)[0])
    root = cached_dev_dataset(4, spec, progress=False)
    data = check_coco_root(root, "val")
    assert len(data["images"]) == 4 and data["annotations"]
    assert json.loads((root / "SPEC.json").read_text())["split"] == "dev"
    assert cached_dev_dataset(4, spec, progress=False) == root  # cached: not written twice
    with pytest.raises(ValueError, match="count"):
        cached_dev_dataset(0, spec)
