import copy

import pytest
import torch

import aiqvit
from aiqvit import QuantConfig
from aiqvit.prepare import quant_layers
from aiqvit.quantizers import UniformQuantizer
from aiqvit.toy import make_outlier_toy

torch.set_num_threads(1)


@pytest.fixture
def calib_batches():
    g = torch.Generator().manual_seed(123)
    return list(torch.randn(48, 3, 16, 16, generator=g).split(12))


@pytest.fixture
def test_inputs():
    return torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(7))


def weight_grid(weight, bits=4):
    """A per-output-channel min-max weight quantizer calibrated on ``weight``."""
    q = UniformQuantizer(bits, per_channel=True, channel_dim=0, init="minmax")
    q.calibrate_from(weight)
    return q


def fast_config(method="aiqvit", bits=4, **overrides):
    cfg = QuantConfig.for_method(method, bits, bits, **overrides)
    cfg.reconstruction.iters = 40
    cfg.reconstruction.hardness_refresh = 10
    cfg.search.iters = 20
    cfg.search.candidate_ranks = (4, 8, 16)
    return cfg


@pytest.fixture
def toy():
    return make_outlier_toy(seed=0)


def group_quantization_error(ref, calib_batches, test_inputs, suffixes, change=None, **config_overrides):
    """Output MSE against ``ref`` of a W4/A4 minmax copy of ``ref`` (after the float ``change``, if any;
    with ``config_overrides`` on the minmax preset) with only the quantizers whose names end with
    ``suffixes`` enabled."""
    from aiqvit.api import calibrate_activations

    model = copy.deepcopy(ref)
    if change is not None:
        change(model)
    aiqvit.prepare(model, QuantConfig.for_method("minmax", 4, 4, **config_overrides))
    calibrate_activations(model, calib_batches, show=False)
    for name, q in aiqvit.quantizers(model):
        q.enabled = name.endswith(suffixes)
    with torch.no_grad():
        return float((model(test_inputs) - ref(test_inputs)).pow(2).mean())


class Interrupted(Exception):
    """Raised from ``on_unit_done`` to stand for a calibration run killed after a unit."""


def quantize_until_first_unit(config, calib_batches, checkpoint_dir):
    """Calibrate a fresh ``make_outlier_toy(seed=0)`` with ``checkpoint_dir`` and stop after its first unit."""
    def stop(name, index):
        raise Interrupted

    with pytest.raises(Interrupted):
        aiqvit.quantize(make_outlier_toy(seed=0), calib_batches, config, checkpoint_dir=checkpoint_dir,
                        progress_bar=False, on_unit_done=stop)


def first_unit_parameter_and_float_error(config, calib_batches, test_inputs, attr):
    """Calibrate ``make_outlier_toy(seed=0)`` with ``config`` until its first unit is done; return the largest
    ``|layer.<attr>|`` over that unit's quantized layers and how far the model with quantization off then is
    from the float model (a learned quantized-path parameter must not move the later units' float targets)."""
    expected_model = make_outlier_toy(seed=0)
    with torch.no_grad():
        expected = expected_model(test_inputs)
    model = make_outlier_toy(seed=0)
    seen = {}

    def check_first_unit(name, index):
        unit = model.get_submodule(name)
        seen["max_param"] = max(float(getattr(layer, attr).abs().max()) for _, layer in quant_layers(unit))
        with aiqvit.quantization_disabled(model), torch.no_grad():
            seen["float_error"] = float((model(test_inputs) - expected).abs().max())
        raise Interrupted

    with pytest.raises(Interrupted):
        aiqvit.quantize(model, calib_batches, config, progress_bar=False, on_unit_done=check_first_unit)
    return seen["max_param"], seen["float_error"]


def check_folded_at_finalize_and_reloaded(config, calib_batches, test_inputs, tmp_path, attr):
    """A full calibration with ``config`` leaves no ``layer.<attr>`` behind, differs from the plain preset,
    and its saved model reloads into a fresh one with the same outputs."""
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, config, progress_bar=False)
    assert all(getattr(layer, attr) is None for _, layer in quant_layers(model))
    plain = make_outlier_toy(seed=0)
    aiqvit.quantize(plain, calib_batches, fast_config("aiqvit"), progress_bar=False)
    with torch.no_grad():
        assert not torch.equal(model(test_inputs), plain(test_inputs))
    aiqvit.save_quantized(model, tmp_path / "q")
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), model(test_inputs))
