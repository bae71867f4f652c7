import pytest
import torch

from aiqvit import QuantConfig
from aiqvit.toy import make_outlier_toy

torch.set_num_threads(1)


@pytest.fixture
def calib_batches():
    g = torch.Generator().manual_seed(123)
    return list(torch.randn(48, 3, 16, 16, generator=g).split(12))


@pytest.fixture
def test_inputs():
    return torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(7))


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
