import pytest
import torch
from conftest import fast_config, weight_grid

import aiqvit
from aiqvit import QuantConfig
from aiqvit.gptq import gptq_round
from aiqvit.toy import make_outlier_toy


def _correlated_inputs(n=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    return torch.randn(n, d, generator=g) @ mix


def test_uncorrelated_inputs_give_nearest_rounding():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    q = weight_grid(w)
    assert torch.allclose(gptq_round(w, torch.eye(16) * 3.0, q), q(w), atol=1e-6)


def test_levels_lie_on_the_grid_and_beat_nearest_on_the_layer_output():
    x = _correlated_inputs()
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(2))
    q = weight_grid(w, bits=3)
    levels = gptq_round(w, x.T @ x, q)
    assert torch.allclose(q(levels), levels, atol=1e-6)
    err_gptq = float((x @ (levels - w).T).pow(2).sum())
    err_nearest = float((x @ (q(w) - w).T).pow(2).sum())
    assert err_gptq < 0.8 * err_nearest


def test_dead_inputs_and_bad_shapes():
    x = _correlated_inputs(d=8)
    x[:, 3] = 0
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    levels = gptq_round(w, x.T @ x, weight_grid(w))
    assert torch.isfinite(levels).all()
    with pytest.raises(ValueError, match="gram"):
        gptq_round(w, torch.eye(5), weight_grid(w))


def test_pipeline_with_gptq_is_seeded(calib_batches, test_inputs):
    outs = []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, fast_config("aiqvit", weight_rounding="gptq"), progress_bar=False)
        assert all(after <= before for before, after in report.unit_losses.values())
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert torch.equal(outs[0], outs[1])


def test_gptq_needs_reconstruction_before_any_fold():
    with pytest.raises(aiqvit.AIQViTError, match="gptq"):
        QuantConfig.for_method("repq", weight_rounding="gptq")
    with pytest.raises(aiqvit.AIQViTError, match="gptq"):
        QuantConfig(weight_rounding="gptq", reparam="after")
    with pytest.raises(aiqvit.AIQViTError, match="weight_rounding"):
        QuantConfig(weight_rounding="stochastic")


def test_gptq_lowers_the_unit_error_before_reconstruction(calib_batches):
    def unit_errors(rounding):
        cfg = fast_config("brecq", weight_rounding=rounding, lowrank="off")
        cfg.a_bits = 8  # weights dominate the error, as GPTQ targets them
        cfg.w_bits = 3
        cfg.reconstruction.iters = 0
        report = aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, cfg, progress_bar=False)
        return [before for before, _ in report.unit_losses.values()]

    nearest, gptq = unit_errors("nearest"), unit_errors("gptq")
    assert len(nearest) == len(gptq) > 1
    assert sum(gptq) < 0.9 * sum(nearest)
