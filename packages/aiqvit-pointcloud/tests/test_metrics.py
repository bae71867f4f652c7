import numpy as np
import pytest
import torch

from aiqvit_pointcloud.metrics import (
    mean_class_accuracy,
    overall_accuracy,
    partseg_miou,
    restrict_to_category,
    shape_iou,
)


def test_overall_and_mean_class_accuracy_by_hand():
    target = [0, 0, 0, 0, 1, 1, 2]
    pred = [0, 0, 0, 1, 1, 0, 0]
    assert overall_accuracy(pred, target) == pytest.approx(4 / 7)
    # class 0: 3/4, class 1: 1/2, class 2: 0/1
    assert mean_class_accuracy(pred, target) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # a class absent from the targets does not count
    assert mean_class_accuracy(pred, target, num_classes=5) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    with pytest.raises(ValueError):
        overall_accuracy([0, 1], [0])


def test_shape_iou_by_hand():
    # category with parts 4, 5, 6
    target = np.array([4, 4, 4, 5, 5, 5])
    pred = np.array([4, 4, 5, 5, 5, 4])
    # part 4: I=2, U=4 -> 0.5; part 5: I=2, U=4 -> 0.5; part 6 absent from both -> 1
    assert shape_iou(pred, target, [4, 5, 6]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # a part predicted but absent from the ground truth counts IoU 0
    assert shape_iou(np.array([4, 6]), np.array([4, 4]), [4, 5, 6]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_instance_and_class_miou_by_hand():
    parts = [[0, 1], [2, 3]]
    preds = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 2, 2]])
    targets = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]])
    cats = np.array([0, 0, 1])
    # shape 0: 1.0; shape 1: part0 1/2, part1 2/3 -> 7/12; shape 2: part2 2/4, part3 0/2 -> 1/4
    r = partseg_miou(preds, targets, cats, ["a", "b"], parts)
    assert r["instance_miou"] == pytest.approx((1 + 7 / 12 + 0.25) / 3)
    assert r["class_miou"] == pytest.approx(((1 + 7 / 12) / 2 + 0.25) / 2)
    assert r["per_class_miou"] == pytest.approx({"a": (1 + 7 / 12) / 2, "b": 0.25})


def test_restrict_to_category_picks_own_parts_only():
    logits = torch.tensor([[[5.0, 1.0, 9.0, 0.0]], [[5.0, 1.0, 9.0, 0.0]]])  # (B=2, N=1, P=4)
    pred = restrict_to_category(logits, torch.tensor([0, 1]), [[0, 1], [2, 3]])
    assert pred.tolist() == [[0], [2]]
