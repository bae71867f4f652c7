"""CLI on a tiny model and a tiny COCO fixture; mmdet's COCO metric on known answers; bad input."""

import json

import pytest
import torch
from conftest import skip_without_labelme

pytestmark = pytest.mark.mmdet


@pytest.fixture(scope="module")
def mini_checkpoint(tmp_path_factory):
    from mmdet_helpers import random_detector

    from aiqvit_detection.models import EMBEDDED_MODELS, save_fp16_safetensors

    path = tmp_path_factory.mktemp("ckpt") / "mini.safetensors"
    save_fp16_safetensors(random_detector(seed=2)[1], path)
    return EMBEDDED_MODELS["mask-rcnn-swin-t-mini"].config_path, path


def _gt_as_predictions(batch):
    """Data samples whose predictions are their own ground truth (boxes, labels, masks)."""
    out = []
    for s in batch["data_samples"]:
        s = s.clone()
        gt = s.gt_instances
        from mmengine.structures import InstanceData

        pred = InstanceData()
        pred.bboxes = gt.bboxes.tensor.clone()
        pred.labels = gt.labels.clone()
        pred.scores = torch.ones(len(gt.labels))
        pred.masks = torch.from_numpy(gt.masks.to_ndarray()).bool()
        s.pred_instances = pred
        out.append(s)
    return out


def test_mmdet_coco_metric_scores_ground_truth_one_and_hand_case(tiny_coco):
    from mmdet.evaluation import CocoMetric
    from mmdet_helpers import mini_config

    from aiqvit_detection.data import build_dataset, iterate_batches

    val = build_dataset(mini_config(), tiny_coco, "val")
    metric = CocoMetric(ann_file=val.ann_file, metric=["bbox", "segm"])
    metric.dataset_meta = val.metainfo
    for batch in iterate_batches(val):
        metric.process(batch, [p.to_dict() for p in _gt_as_predictions(batch)])
    res = metric.evaluate(len(val))
    assert res["coco/bbox_mAP"] == pytest.approx(1.0) and res["coco/segm_mAP"] == pytest.approx(1.0)

    # hand-built: drop every second object's prediction -> recall 1/2 per class at every IoU
    metric = CocoMetric(ann_file=val.ann_file, metric=["bbox"])
    metric.dataset_meta = val.metainfo
    for batch in iterate_batches(val):
        preds = _gt_as_predictions(batch)
        for p in preds:
            p.pred_instances = p.pred_instances[torch.arange(len(p.pred_instances)) % 2 == 0]
        metric.process(batch, [p.to_dict() for p in preds])
    assert 0.2 < metric.evaluate(len(val))["coco/bbox_mAP"] < 0.8


def test_cli_quantize_then_evaluate_on_tiny_fixture(tiny_coco, mini_checkpoint, tmp_path, capsys):
    from aiqvit_detection.cli import main

    config, ckpt = mini_checkpoint
    out = tmp_path / "q"
    rc = main(["quantize", "--config", str(config), "--checkpoint", str(ckpt), "--coco-root", str(tiny_coco),
               "--method", "minmax", "--w-bits", "6", "--a-bits", "6", "--calib-images", "4", "--evaluate",
               "--max-images", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "detector.json").read_text())["summary"]
    assert summary["calib_images"] == 4 and 0 <= summary["metrics"]["bbox_mAP"] <= 1
    capsys.readouterr()
    rc = main(["evaluate", "--quantized", str(out), "--coco-root", str(tiny_coco), "--max-images", "3",
               "--json", str(tmp_path / "m.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["bbox_mAP"] == pytest.approx(summary["metrics"]["bbox_mAP"])
    assert json.loads((tmp_path / "m.json").read_text())["segm_mAP"] == pytest.approx(summary["metrics"]["segm_mAP"])


def test_cli_bad_config_path(tiny_coco, mini_checkpoint, tmp_path, capsys):
    from aiqvit_detection.cli import main

    _, ckpt = mini_checkpoint
    rc = main(["evaluate", "--config", str(tmp_path / "nope.py"), "--checkpoint", str(ckpt),
               "--coco-root", str(tiny_coco)])
    assert rc == 2 and "nope.py does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(type='MaskRCNN'\n")
    rc = main(["evaluate", "--config", str(broken), "--checkpoint", str(ckpt), "--coco-root", str(tiny_coco)])
    assert rc == 2 and "cannot parse config" in capsys.readouterr().err


def test_cli_checkpoint_not_matching_config(tiny_coco, mini_checkpoint, tmp_path, capsys):
    from aiqvit_detection.cli import main
    from aiqvit_detection.models import EMBEDDED_MODELS

    _, ckpt = mini_checkpoint  # a Mask R-CNN checkpoint
    cascade = EMBEDDED_MODELS["cascade-mask-rcnn-swin-t-mini"].config_path
    rc = main(["evaluate", "--config", str(cascade), "--checkpoint", str(ckpt), "--coco-root", str(tiny_coco)])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match the config's detector" in err and "missing keys" in err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    rc = main(["evaluate", "--config", str(cascade), "--checkpoint", str(corrupt), "--coco-root", str(tiny_coco)])
    assert rc == 2 and "cannot read checkpoint" in capsys.readouterr().err


def test_cli_coco_root_with_missing_files(tiny_coco, mini_checkpoint, tmp_path, capsys):
    import shutil

    from aiqvit_detection.cli import main

    config, ckpt = mini_checkpoint
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    (root / "val2017" / "000002.png").unlink()
    rc = main(["evaluate", "--config", str(config), "--checkpoint", str(ckpt), "--coco-root", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 6 images" in err and "000002.png" in err
    shutil.rmtree(root / "annotations")
    rc = main(["quantize", "--config", str(config), "--checkpoint", str(ckpt), "--coco-root", str(root),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "instances_train2017.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_real_photos_load_and_evaluate(mini_checkpoint):
    """The 3 labelme PASCAL VOC photos through the config's test pipeline and mmdet's metric."""
    from aiqvit_detection.coco_layout import DatasetError
    from aiqvit_detection.data import build_dataset
    from aiqvit_detection.evaluation import evaluate_detector
    from aiqvit_detection.labelme_data import LABELME_CLASSES, cached_labelme_root
    from aiqvit_detection.models import load_detector

    try:
        root = cached_labelme_root()
    except DatasetError as exc:
        skip_without_labelme(exc)
    config, ckpt = mini_checkpoint
    cfg, model = load_detector(config, ckpt)
    val = build_dataset(cfg, root, "val", classes=LABELME_CLASSES)
    assert len(val) == 3
    sample = val[0]
    assert sample["inputs"].shape[0] == 3 and min(sample["data_samples"].ori_shape) > 300  # real photo sizes
    res = evaluate_detector(model, val, progress=False)
    assert 0.0 <= res["bbox_mAP"] <= 1.0 and 0.0 <= res["segm_mAP"] <= 1.0


class _GroundTruthModel(torch.nn.Module):
    """A 'detector' whose predictions are the ground truth of its batch."""

    def test_step(self, batch):
        return _gt_as_predictions(batch)


def test_evaluate_detector_on_all_and_on_the_first_images(tiny_coco):
    from mmdet_helpers import mini_config

    from aiqvit_detection.data import build_dataset
    from aiqvit_detection.evaluation import evaluate_detector

    val = build_dataset(mini_config(), tiny_coco, "val")
    full = evaluate_detector(_GroundTruthModel(), val, batch_size=4, progress=False)
    first = evaluate_detector(_GroundTruthModel(), val, max_images=2, progress=False)  # images 3-6 not scored
    for res in (full, first):
        assert res["bbox_mAP"] == pytest.approx(1.0) and res["segm_mAP"] == pytest.approx(1.0)
