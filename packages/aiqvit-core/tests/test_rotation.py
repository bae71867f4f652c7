import pytest
import torch
from conftest import fast_config
from torch import nn

import aiqvit
from aiqvit.api import apply_input_rotation
from aiqvit.modules import QuantLinear
from aiqvit.quantizers import UniformQuantizer
from aiqvit.rotation import (
    InputRotation,
    hadamard_factors,
    paley_hadamard,
    rotate_layer_input,
    sylvester_hadamard,
)
from aiqvit.toy import make_outlier_toy


@pytest.mark.parametrize("order", [12, 20])
def test_paley_matrices_are_hadamard(order):
    h = paley_hadamard(order)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h @ h.t(), order * torch.eye(order, dtype=h.dtype))


def test_sylvester_and_paley_reject_bad_orders():
    with pytest.raises(aiqvit.AIQViTError, match="power-of-two"):
        sylvester_hadamard(24)
    with pytest.raises(aiqvit.AIQViTError, match="Paley"):
        paley_hadamard(16)


@pytest.mark.parametrize("d, factors", [(64, (1, 64)), (384, (12, 32)), (1536, (12, 128)), (160, (20, 8)), (100, None)])
def test_rotation_is_orthogonal_and_spreads_every_channel(d, factors):
    rot = InputRotation(d, seed=3)
    assert rot.factors == factors
    r = rot.rotate(torch.eye(d, dtype=torch.float64))
    assert torch.allclose(r @ r.t(), torch.eye(d, dtype=torch.float64), atol=1e-6)
    if factors is not None:  # a Hadamard rotation gives each input channel weight 1/sqrt(d) in every output
        assert torch.allclose(r.abs(), torch.full_like(r, d ** -0.5), atol=1e-6)
    assert hadamard_factors(d) == factors


def test_rotated_layer_equals_the_float_layer():
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    x = torch.randn(5, 7, 48) * 3 + 2
    layer = QuantLinear(linear, UniformQuantizer(4, per_channel=True, channel_dim=0), UniformQuantizer(4))
    layer.weight_quantizer.enabled = layer.input_quantizer.enabled = False
    rotate_layer_input(layer, x.reshape(-1, 48).mean(0), seed=1)
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x), atol=1e-5)


def test_rotation_evens_out_channel_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g)
    x[:, :3] *= 40  # a few outlier channels set the per-tensor range
    rot = InputRotation(64, seed=0)
    y = rot.rotate(x)

    def spread(v):  # largest over smallest channel range
        r = v.amax(0) - v.amin(0)
        return float(r.max() / r.min())

    assert spread(x) > 20 and spread(y) < 1.5
    assert float(y.abs().max()) < 0.5 * float(x.abs().max())
    assert torch.allclose(y.pow(2).sum(1), x.pow(2).sum(1), rtol=1e-4)  # orthogonal: energy per row kept


def test_input_rotation_in_the_pipeline(calib_batches, test_inputs, tmp_path):
    cfg = fast_config("aiqvit", input_rotation="all")
    ref = make_outlier_toy(seed=0)
    model = make_outlier_toy(seed=0)
    aiqvit.prepare(model, cfg)
    n = apply_input_rotation(model, calib_batches, show=False)
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert n == len(linears) and all(m.input_rotation is not None for m in linears)
    assert not aiqvit.get_info(model).layernorm_consumers  # every norm consumer is rotated
    with aiqvit.quantization_disabled(model), torch.no_grad():
        assert torch.allclose(model(test_inputs), ref(test_inputs), atol=1e-4)

    outs = []
    for _ in range(2):
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert report.rotated_inputs == len(linears)
    assert torch.equal(outs[0], outs[1])
    aiqvit.save_quantized(model, tmp_path / "q")
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), outs[1])


def test_rotation_outside_norms_keeps_the_norm_folds(calib_batches):
    model = make_outlier_toy(seed=0)
    aiqvit.prepare(model, fast_config("aiqvit", input_rotation="not_post_ln"))
    pairs_before = list(aiqvit.get_info(model).layernorm_consumers)
    n = apply_input_rotation(model, calib_batches, show=False)
    post_ln = {c for _, lins in pairs_before for c in lins}
    rotated = {name for name, m in model.named_modules() if isinstance(m, QuantLinear) and m.input_rotation is not None}
    assert n == len(rotated) > 0 and not rotated & post_ln
    assert aiqvit.get_info(model).layernorm_consumers == pairs_before


def test_unknown_rotation_scope():
    with pytest.raises(aiqvit.AIQViTError, match="input_rotation"):
        aiqvit.QuantConfig(input_rotation="qkv")
