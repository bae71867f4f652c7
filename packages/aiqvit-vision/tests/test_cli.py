import json

import pytest
import torch
from safetensors.torch import save_file

from aiqvit_vision import pipeline
from aiqvit_vision.cli import main
from aiqvit_vision.models import create_model

FAST = ["--set", "search.iters=2", "--set", "reconstruction.iters=3", "--calib-size", "4", "--eval-size", "0",
        "--no-progress"]


SMALL = {"vit_tiny_patch16_224": {"depth": 2},  # registered timm names, shrunk to keep the tests fast
         "swin_tiny_patch4_window7_224": {"embed_dim": 24, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}}


def _weights(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, img_size=32, **SMALL[name])
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _quantize(tmp_path, image_folder, model, method, extra=()):
    out = tmp_path / f"out-{model}-{method}"
    args = ["quantize", "--model", model, "--weights", str(_weights(tmp_path, model)), "--num-classes", "2",
            "--img-size", "32", "--model-kwargs", json.dumps(SMALL[model]), "--data", str(image_folder),
            "--method", method, "--w-bits", "4", "--a-bits", "4",
            "--output", str(out), *FAST, *extra]
    assert main(args) == 0
    return out


@pytest.mark.parametrize("model,method", [("vit_tiny_patch16_224", "aiqvit"),
                                          ("swin_tiny_patch4_window7_224", "repq")])
def test_quantize_save_load_evaluate(tmp_path, image_folder, capsys, model, method):
    out = _quantize(tmp_path, image_folder, model, method)
    printed = capsys.readouterr().out
    assert f"{method} W4/A4" in printed and "quantized" in printed and "size:" in printed
    run = json.loads((out / pipeline.RUN_FILE).read_text())
    assert (out / "model.safetensors").is_file() and (out / "quantization.json").is_file()
    assert run["calib_images"] == 4 and run["eval_size"] == 4

    assert main(["evaluate", "--quantized", str(out), "--eval-size", "0", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == pytest.approx(run["quant_top1"])

    # the reloaded model reproduces the saved model's logits, not just its accuracy
    loaded, spec, _, (_, val) = pipeline.load_run(out)
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        first = loaded(x)
    again, *_ = pipeline.load_run(out)
    with torch.no_grad():
        torch.testing.assert_close(again(x), first)


def test_evaluate_float_model(tmp_path, image_folder, capsys):
    weights = _weights(tmp_path, "vit_tiny_patch16_224")
    assert main(["evaluate", "--model", "vit_tiny_patch16_224", "--weights", str(weights), "--num-classes", "2",
                 "--img-size", "32", "--model-kwargs", '{"depth": 2}', "--data", str(image_folder), "--eval-size", "0",
                 "--no-progress"]) == 0
    assert "FP: top-1" in capsys.readouterr().out


def test_quantize_on_fashion_mnist_task(tmp_path, fmnist_dir, capsys):
    """A built-in task with its shipped weights, on the tiny Fashion-MNIST fixture."""
    from aiqvit_vision import tasks

    if not tasks.weights_path(tasks.DEIT_TINY_FILE).is_file():
        pytest.skip("deit_tiny_fmnist weights not trained yet (benchmarks/vision/train_from_scratch.py)")
    out = tmp_path / "deit"
    assert main(["quantize", "--task", "deit_tiny_fmnist", "--fmnist-root", str(fmnist_dir), "--method", "minmax",
                 "--w-bits", "8", "--a-bits", "8", "--output", str(out), *FAST]) == 0
    run = json.loads((out / pipeline.RUN_FILE).read_text())
    assert run["spec"]["task"] == "deit_tiny_fmnist" and run["eval_size"] == 20
    assert abs(run["fp_top1"] - run["quant_top1"]) <= 10  # W8/A8 min-max: at most 2 of the 20 images flip


@pytest.mark.parametrize("args,message", [
    (["quantize", "--model", "no_such_model_xyz", "--data", "."], "unknown timm model"),
    (["quantize", "--w-bits", "9"], "w_bits=9 is out of range"),
    (["quantize", "--task", "deit_tiny_fmnist", "--model", "vit_tiny_patch16_224"], "not both"),
    (["quantize", "--model", "vit_tiny_patch16_224"], "needs data"),
    (["quantize", "--set", "lowrank"], "key=value"),
    (["evaluate", "--quantized", "/nonexistent/dir"], "not an aiqvit-vision output directory"),
])
def test_cli_errors_are_clear(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
