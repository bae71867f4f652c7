import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import aiqvit
from aiqvit_vision.cli import main
from aiqvit_vision.plots import DETAILS_FILE, softmax_histograms


def _rec(method, bits, value):
    return {"task": "t", "model": "m", "method": method, "w_bits": bits, "a_bits": bits, "recipe": "fast",
            "metric": "top1", "value": value, "calib_seconds": 1.0, "peak_rss_mb": 1.0, "seed": 0, "git_commit": "x",
            "notes": ""}


def test_plots_from_results(tmp_path, capsys):
    records = [_rec("fp", None, 90.0)] + [_rec(m, b, 50 + b + (m == "aiqvit")) for m in ("minmax", "aiqvit")
                                          for b in (3, 4, 6)]
    (tmp_path / "vision.json").write_text(json.dumps(records))
    details = {"t": {"softmax_hist": {"blocks.0.attn.quantizers": [5.0] * 100},
                     "settings": {"W4A4-fast": {"ranks": {"blocks.0.attn.qkv": 20},
                                                "dfq_intervals": {"blocks.0.attn.quantizers": [0.01, 0.2]}},
                                  "W3A3-fast": {"ranks": {"blocks.0.attn.qkv": 10}, "bits": 3, "dfq_spacing": "log",
                                                "dfq_intervals": {"blocks.0.attn.quantizers": [1e-3, 0.5]}}}}}
    (tmp_path / DETAILS_FILE).write_text(json.dumps(details))
    assert main(["plots", "--results", str(tmp_path / "vision.json"), "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["vision_t_accuracy_vs_bits.png", "vision_t_ranks_W3A3-fast.png", "vision_t_ranks_W4A4-fast.png",
                     "vision_t_softmax_dfq_W3A3-fast.png", "vision_t_softmax_dfq_W4A4-fast.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_plots_missing_results(tmp_path, capsys):
    assert main(["plots", "--results", str(tmp_path / "none.json")]) == 2
    assert "run benchmarks/vision/run.py first" in capsys.readouterr().err


def test_softmax_histograms_count_every_probability():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=12, depth=2, num_heads=2, num_classes=3).eval()
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("aiqvit", 4, 4))
    x = torch.randn(2, 3, 16, 16)
    hists = softmax_histograms(model, [x], lambda m, b: m(b), bins=10)
    assert list(hists) == ["blocks.0.attn.quantizers", "blocks.1.attn.quantizers"]
    tokens = 1 + 4
    assert sum(hists["blocks.0.attn.quantizers"]) == pytest.approx(2 * 2 * tokens * tokens)


def test_dfq_levels_follow_the_spacing():
    from aiqvit_vision.plots import dfq_levels

    uniform, log = dfq_levels(0.01, 0.5, 3, "uniform"), dfq_levels(0.01, 0.5, 3, "log")
    assert len(uniform) == len(log) == 7
    assert uniform[0] == pytest.approx(0.01) and log[0] == pytest.approx(0.01) and log[-1] == pytest.approx(0.5)
    assert uniform[1] - uniform[0] == pytest.approx(uniform[-1] - uniform[-2])
    assert log[1] / log[0] == pytest.approx(log[-1] / log[-2])
