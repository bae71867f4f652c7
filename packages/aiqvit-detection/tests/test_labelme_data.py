"""Real photos: the 3 PASCAL VOC images of labelme's sdist (data only), loaded and evaluated."""

import pytest
from conftest import skip_without_labelme
from PIL import Image
from pycocotools.coco import COCO

from aiqvit_detection.coco_layout import CocoLayout, DatasetError, check_coco_root
from aiqvit_detection.coco_metrics import coco_ap, ground_truth_as_detections
from aiqvit_detection.labelme_data import extract_labelme_coco, labelme_sdist


@pytest.fixture(scope="module")
def labelme_root(tmp_path_factory):
    try:
        sdist = labelme_sdist()
    except DatasetError as exc:  # offline and not cached: nothing to test against
        skip_without_labelme(exc)
    return extract_labelme_coco(tmp_path_factory.mktemp("labelme") / "coco", sdist)


def test_labelme_photos_load_with_pycocotools_and_pil(labelme_root):
    data = check_coco_root(labelme_root, "val")
    assert len(data["images"]) == 3 and len(data["annotations"]) == 12
    coco = COCO(str(CocoLayout().annotation_file(labelme_root, "val")))
    for img in data["images"]:
        with Image.open(CocoLayout().image_dir(labelme_root, "val") / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
    names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert "person" in names and "_background_" not in names


def test_labelme_ground_truth_scores_ap_one(labelme_root):
    gt = CocoLayout().annotation_file(labelme_root, "val")
    res = coco_ap(gt, ground_truth_as_detections(gt))
    assert res["bbox_mAP"] == pytest.approx(1.0) and res["segm_mAP"] == pytest.approx(1.0)
