"""reconstruction.lr_input_gain: a learned gain per input channel of each quantized Linear (``x * g`` into
the input quantizer, ``W / g`` into the weight quantizer), folded into the input transform at finalize."""

import pytest
import torch
from conftest import (
    check_folded_at_finalize_and_reloaded,
    fast_config,
    first_unit_parameter_and_float_error,
    quantize_until_first_unit,
)

import aiqvit
from aiqvit.prepare import quant_layers
from aiqvit.toy import make_outlier_toy


def gain_config(lr=0.02):
    cfg = fast_config("aiqvit")
    cfg.reconstruction.lr_input_gain = lr
    return cfg


def calibrated_layer(seed=0):
    layer = torch.nn.Linear(8, 4)
    q = aiqvit.QuantLinear(layer, aiqvit.UniformQuantizer(4, per_channel=True, channel_dim=0),
                           aiqvit.UniformQuantizer(4))
    q.init_weight_quantizer()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.1, 4.0, 8)
    with aiqvit.calibration_mode(q):
        q(x)
    return layer, q, x


def test_off_by_default_adds_nothing_to_the_state():
    model = aiqvit.prepare(make_outlier_toy(seed=0), fast_config("aiqvit"))
    assert all(layer.input_gain is None for _, layer in quant_layers(model))
    assert not [k for k in model.state_dict() if k.endswith("input_gain")]


def test_gain_moves_the_quantized_output_not_the_float_one():
    layer, q, x = calibrated_layer()
    with torch.no_grad():
        before = q(x)
        q.enable_input_gain()
        assert torch.equal(q(x), before)  # g = 1 at the start
        q.input_gain.data = torch.linspace(-1.0, 1.0, 8)
        assert not torch.allclose(q(x), before)
        with aiqvit.quantization_disabled(q):
            assert torch.allclose(q(x), layer(x), atol=1e-6)
        # with both quantizers off the gain cancels: (x g) (W / g)^T = x W^T
        q.input_quantizer.enabled = q.weight_quantizer.enabled = False
        q.input_quantizer.calibrating = False
        q.lowrank = None
        assert torch.allclose(torch.nn.functional.linear(x * q._gain(), q.weight / q._gain(), q.bias), layer(x),
                              atol=1e-5)


@pytest.mark.parametrize("with_transform", [False, True])
def test_fold_keeps_the_quantized_output(with_transform):
    _, q, x = calibrated_layer()
    if with_transform:  # a non-norm producer's reparameterization gave the layer an input transform already
        q.set_input_transform(torch.linspace(0.5, 2.0, 8), torch.linspace(-0.2, 0.3, 8))
    q.enable_input_gain()
    q.input_gain.data = torch.linspace(-0.7, 0.9, 8)
    with torch.no_grad():
        before = q(x)
        q.freeze()
        assert q.input_gain is None and q.input_scale is not None
        assert torch.allclose(q(x), before, atol=1e-5)


def test_gains_are_learned_without_moving_the_float_targets(calib_batches, test_inputs):
    max_log_gain, float_error = first_unit_parameter_and_float_error(gain_config(), calib_batches, test_inputs,
                                                                    "input_gain")
    assert max_log_gain > 0
    assert float_error < 1e-5


def test_finalize_folds_the_gains_and_the_saved_model_reloads(calib_batches, test_inputs, tmp_path):
    check_folded_at_finalize_and_reloaded(gain_config(), calib_batches, test_inputs, tmp_path, "input_gain")


def test_resume_keeps_the_gains(tmp_path, calib_batches, test_inputs):
    full = make_outlier_toy(seed=0)
    aiqvit.quantize(full, calib_batches, gain_config(), progress_bar=False)

    quantize_until_first_unit(gain_config(), calib_batches, tmp_path)
    resumed = make_outlier_toy(seed=0)
    aiqvit.quantize(resumed, calib_batches, gain_config(), checkpoint_dir=tmp_path, progress_bar=False)
    with torch.no_grad():
        assert torch.equal(resumed(test_inputs), full(test_inputs))


def test_negative_rate_is_refused():
    with pytest.raises(aiqvit.AIQViTError, match="lr_input_gain"):
        gain_config(-0.1).validate()


@pytest.mark.parametrize("field, value", [("reparam", "after"), ("weight_rounding", "adaround"),
                                          ("weight_rounding", "gptq")])
def test_combinations_that_fix_the_rounding_first_are_refused(field, value):
    cfg = gain_config()
    setattr(cfg, field, value)
    with pytest.raises(aiqvit.AIQViTError, match="lr_input_gain"):
        cfg.validate()
