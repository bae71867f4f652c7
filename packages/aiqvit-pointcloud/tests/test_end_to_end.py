"""quantize -> save -> load -> evaluate on a tiny model, through the library and the CLI."""

import json

import aiqvit
import pytest
import torch

from aiqvit_pointcloud import PointTransformerAdapter, calibration_batches, evaluate, load_synthetic
from aiqvit_pointcloud.cli import load_quantized_run, main
from aiqvit_pointcloud.data import synthetic as S
from aiqvit_pointcloud.models import PointTransformerConfig, build_model
from aiqvit_pointcloud.recipes import quant_config
from aiqvit_pointcloud.weights import save_checkpoint

N = 64


def tiny(task):
    torch.manual_seed(0)
    n_cat, n_parts = len(S.CATEGORIES), sum(map(len, S.CATEGORY_PARTS.values()))
    extra = dict(num_classes=n_cat) if task == "cls" else dict(num_classes=n_parts, num_categories=n_cat)
    return build_model(PointTransformerConfig(task=task, num_points=N, widths=(16, 32), depths=(1, 1), k=8,
                                              **extra)).eval()


@pytest.mark.parametrize("task", ["cls", "partseg"])
def test_library_round_trip(task, tmp_path):
    data = load_synthetic("test", N, size=48)
    model = tiny(task)
    batches = calibration_batches(data, task, size=32, batch_size=16)
    report = aiqvit.quantize(model, batches, quant_config("aiqvit", 4, 4, "fast"), progress_bar=False)
    assert report.ranks and report.dfq_intervals
    assert set(report.unit_losses) == {n for n, _ in PointTransformerAdapter().units(model)}
    aiqvit.save_quantized(model, tmp_path / "q")
    restored = tiny(task)
    aiqvit.load_quantized(restored, tmp_path / "q")
    run = PointTransformerAdapter().run
    with torch.no_grad():
        torch.testing.assert_close(run(restored.eval(), batches[0]), run(model, batches[0]), atol=0, rtol=0)
    m1 = evaluate(model, data, task, progress=False)
    m2 = evaluate(restored, data, task, progress=False)
    assert m1 == m2


def test_cli_quantize_then_evaluate(tmp_path, capsys):
    ckpt = tmp_path / "fp.safetensors"
    save_checkpoint(tiny("cls"), ckpt)
    out = tmp_path / "run"
    rc = main(["quantize", "--task", "cls", "--checkpoint", str(ckpt), "--method", "brecq", "--w-bits", "6",
               "--a-bits", "6", "--calib-size", "16", "--recipe", "fast", "--output", str(out), "--evaluate",
               "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "brecq" and 0 <= summary["metrics"]["OA"] <= 100
    assert (out / "quantization.json").is_file() and (out / "pointcloud.json").is_file()
    rc = main(["evaluate", "--task", "cls", "--quantized", str(out), "--no-progress",
               "--json", str(tmp_path / "m.json")])
    assert rc == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["OA"] == summary["metrics"]["OA"] and evaluated["mAcc"] == summary["metrics"]["mAcc"]
    assert json.loads((tmp_path / "m.json").read_text())["OA"] == evaluated["OA"]
    model, record = load_quantized_run(out)
    assert record["w_bits"] == 6 and aiqvit.get_info(model).finalized
    # the float model through the same CLI
    assert main(["evaluate", "--task", "cls", "--checkpoint", str(ckpt), "--no-progress", "--limit", "24"]) == 0
    assert json.loads(capsys.readouterr().out)["shapes"] == 24


def test_cli_errors(tmp_path, capsys):
    assert main(["evaluate", "--task", "cls", "--quantized", str(tmp_path)]) == 2
    assert "pointcloud.json" in capsys.readouterr().err
    assert main(["evaluate", "--task", "partseg", "--data", "modelnet40", "--checkpoint", str(tmp_path / "x")]) == 2
    ckpt = tmp_path / "fp.safetensors"
    save_checkpoint(tiny("cls"), ckpt)
    assert main(["quantize", "--task", "cls", "--checkpoint", str(ckpt), "--w-bits", "9", "--output",
                 str(tmp_path / "o"), "--calib-size", "4"]) == 2
    assert "w_bits=9" in capsys.readouterr().err
    assert main(["quantize", "--task", "partseg", "--checkpoint", str(ckpt), "--output", str(tmp_path / "o")]) == 2
    assert "not partseg" in capsys.readouterr().err
