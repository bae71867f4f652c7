import copy

import pytest
import torch

import aiqvit
from aiqvit import QuantConfig
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
