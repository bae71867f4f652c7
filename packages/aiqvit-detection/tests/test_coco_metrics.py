import pytest

from aiqvit_detection.coco_layout import CocoLayout
from aiqvit_detection.coco_metrics import coco_ap, ground_truth_as_detections, mask_to_rle


def _one_image(boxes, size=200):
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0,
             "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]]}
            for i, b in enumerate(boxes)]
    return {"images": [{"id": 1, "width": size, "height": size, "file_name": "x.png"}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}


def test_ground_truth_as_predictions_scores_one(tiny_coco):
    gt = CocoLayout().annotation_file(tiny_coco, "val")
    res = coco_ap(gt, ground_truth_as_detections(gt))
    assert res["bbox_mAP"] == pytest.approx(1.0)
    assert res["segm_mAP"] == pytest.approx(1.0)


def test_one_hit_one_false_positive_gives_51_of_101():
    # 2 ground-truth boxes; one exact detection (score .9) and one far-away false positive (.8):
    # precision 1 up to recall 0.5, then nothing: 51 of COCO's 101 recall points at every IoU.
    gt = _one_image([[10, 10, 40, 40], [120, 120, 50, 50]])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [60, 150, 20, 20], "score": 0.8}]
    res = coco_ap(gt, dets, iou_types=("bbox",))
    assert res["bbox_mAP"] == pytest.approx(51 / 101)
    assert res["bbox_mAP_50"] == pytest.approx(51 / 101)


def test_box_with_iou_072_counts_at_five_of_ten_thresholds():
    gt = _one_image([[0, 0, 100, 100]])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 72], "score": 0.5}]
    res = coco_ap(gt, dets, iou_types=("bbox",))
    assert res["bbox_mAP_50"] == pytest.approx(1.0)
    assert res["bbox_mAP_75"] == pytest.approx(0.0)
    assert res["bbox_mAP"] == pytest.approx(0.5)  # IoU thresholds 0.50..0.70 of 0.50..0.95


def test_mask_iou_counts_for_segm_ap():
    import numpy as np

    gt = _one_image([[0, 0, 100, 100]])
    half = np.zeros((200, 200), np.uint8)
    half[0:100, 0:60] = 1  # mask IoU 0.6 with the square
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.5,
             "segmentation": mask_to_rle(half)}]
    res = coco_ap(gt, dets)
    assert res["bbox_mAP"] == pytest.approx(1.0)
    assert res["segm_mAP_50"] == pytest.approx(1.0) and res["segm_mAP_75"] == pytest.approx(0.0)
    assert res["segm_mAP"] == pytest.approx(0.3)  # thresholds 0.50, 0.55, 0.60 of ten


def test_no_detections_is_zero():
    res = coco_ap(_one_image([[0, 0, 10, 10]]), [])
    assert res["bbox_mAP"] == 0.0 and res["segm_mAP"] == 0.0
