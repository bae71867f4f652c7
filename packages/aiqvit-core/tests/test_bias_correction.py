"""reconstruction.lr_bias: a learned output shift on the quantized path only, folded into the bias at finalize."""

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


def bias_config(lr_bias=0.05):
    cfg = fast_config("aiqvit")
    cfg.reconstruction.lr_bias = lr_bias
    return cfg


def test_off_by_default_adds_nothing_to_the_state():
    model = aiqvit.prepare(make_outlier_toy(seed=0), fast_config("aiqvit"))
    assert all(layer.bias_correction is None for _, layer in quant_layers(model))
    assert not [k for k in model.state_dict() if k.endswith("bias_correction")]


def test_correction_is_learned_without_moving_the_float_targets(calib_batches, test_inputs):
    """After the first unit, its corrections are non-zero, yet the model with quantization off is still
    the float model: later units reconstruct against the true float outputs."""
    max_correction, float_error = first_unit_parameter_and_float_error(bias_config(), calib_batches, test_inputs,
                                                                      "bias_correction")
    assert max_correction > 0
    assert float_error < 1e-5


def test_finalize_folds_the_correction_into_the_bias(calib_batches, test_inputs, tmp_path):
    check_folded_at_finalize_and_reloaded(bias_config(), calib_batches, test_inputs, tmp_path, "bias_correction")


def test_fold_keeps_the_quantized_output():
    layer = torch.nn.Linear(8, 4)
    q = aiqvit.QuantLinear(layer, aiqvit.UniformQuantizer(4, per_channel=True, channel_dim=0),
                           aiqvit.UniformQuantizer(4))
    q.init_weight_quantizer()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with aiqvit.calibration_mode(q):
        q(x)
    q.enable_bias_correction()
    q.bias_correction.data = torch.tensor([0.5, -1.0, 0.0, 2.0])
    with torch.no_grad():
        before = q(x)
        with aiqvit.quantization_disabled(q):
            assert torch.allclose(q(x), layer(x))
        q.freeze()
        assert q.bias_correction is None
        assert torch.allclose(q(x), before, atol=1e-6)


def test_resume_keeps_the_corrections(tmp_path, calib_batches, test_inputs):
    full = make_outlier_toy(seed=0)
    aiqvit.quantize(full, calib_batches, bias_config(), progress_bar=False)

    quantize_until_first_unit(bias_config(), calib_batches, tmp_path)
    resumed = make_outlier_toy(seed=0)
    aiqvit.quantize(resumed, calib_batches, bias_config(), checkpoint_dir=tmp_path, progress_bar=False)
    with torch.no_grad():
        assert torch.equal(resumed(test_inputs), full(test_inputs))


def test_negative_rate_is_refused():
    with pytest.raises(aiqvit.AIQViTError, match="lr_bias"):
        bias_config(-0.1).validate()
