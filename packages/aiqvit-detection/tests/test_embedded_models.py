"""The detectors shipped in the package: they load, are small enough, and detect on synthetic val images."""

import json

import pytest

from aiqvit_detection.models import EMBEDDED_MODELS

pytestmark = pytest.mark.mmdet


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_shipped_weights_are_fp16_safetensors_under_25_mb_with_a_record(name):
    from safetensors import safe_open

    em = EMBEDDED_MODELS[name]
    assert em.weights_path.is_file(), f"train it: python benchmarks/detection/train.py --model {name}"
    assert em.weights_path.stat().st_size <= 25 * 1024 * 1024
    with safe_open(str(em.weights_path), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    record = json.loads(em.weights_path.with_suffix(".json").read_text())
    assert record["model"] == name and record["bbox_mAP"] > 0.1 and record["segm_mAP"] > 0.1


@pytest.fixture(scope="module")
def first_val_images(tmp_path_factory):
    """The first 24 val images of the default data set (image i depends only on seed, split and i)."""
    from aiqvit_detection.synthetic import SyntheticSpec, generate_dataset

    spec = SyntheticSpec(train_images=1, val_images=24)
    return generate_dataset(tmp_path_factory.mktemp("val24") / "coco", spec, progress=False)


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_embedded_model_detects_shapes(name, first_val_images, capsys):
    from aiqvit_detection.cli import main

    rc = main(["evaluate", "--model", name, "--coco-root", str(first_val_images), "--batch-size", "8"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["bbox_mAP_50"] > 0.2 and metrics["segm_mAP_50"] > 0.2  # far above an untrained model's 0
