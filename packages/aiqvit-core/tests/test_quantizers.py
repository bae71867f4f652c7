import pytest
import torch

from aiqvit import BitWidthError, DynamicFocusingQuantizer, UniformQuantizer, calibration_mode
from aiqvit.quantizers import LogQuantizer, make_softmax_quantizer


@pytest.mark.parametrize("bits", [1, 9, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(BitWidthError, match="out of range"):
        UniformQuantizer(bits)


@pytest.mark.parametrize("init", ["minmax", "percentile", "mse"])
def test_init_methods_give_finite_params(init):
    q = UniformQuantizer(4, init=init)
    q.calibrating = True
    q(torch.randn(1000))
    q.calibrating = False
    q.finish_calibration()
    assert torch.isfinite(q.scale).all() and q.scale > 0


def test_mse_init_beats_minmax_on_heavy_tails():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    x[:5] = 40
    errs = {}
    for init in ("minmax", "mse"):
        q = UniformQuantizer(4, init=init)
        q.calibrate_from(x)
        errs[init] = float((q(x) - x).pow(2).mean())
    assert errs["mse"] < errs["minmax"]


def test_per_channel_weight_scales():
    w = torch.linspace(-1, 1, 16).repeat(8, 1) * torch.arange(1, 9).unsqueeze(1)
    q = UniformQuantizer(4, per_channel=True, channel_dim=0)
    q.calibrate_from(w)
    assert q.scale.shape == (8, 1)
    assert (q.scale[1:, 0] > q.scale[:-1, 0]).all()


def test_state_dict_roundtrip_with_calibrated_shapes():
    q = UniformQuantizer(4, per_channel=True, channel_dim=-1)
    q.calibrating = True
    q(torch.randn(10, 5, 6))
    q.calibrating = False
    q.finish_calibration()
    fresh = UniformQuantizer(4, per_channel=True, channel_dim=-1)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 5, 6)
    assert torch.equal(fresh(x), q(x))


def test_use_before_calibration_is_an_error():
    with pytest.raises(RuntimeError, match="before calibration"):
        UniformQuantizer(4)(torch.randn(3))


def test_dfq_init_and_learnable_interval():
    probs = torch.softmax(torch.randn(64, 50) * 3, -1)
    q = DynamicFocusingQuantizer(4)
    with calibration_mode(torch.nn.Sequential(q)):
        q(probs)
    b1, b2 = q.interval()
    assert 0 <= float(b1) < float(b2) <= 1
    (q(probs) - probs).pow(2).sum().backward()
    assert q.b1.grad is not None and q.b2.grad is not None


def test_dfq_beats_uniform_on_softmax_at_4_bits():
    probs = torch.softmax(torch.randn(256, 197, generator=torch.Generator().manual_seed(0)) * 2, -1)
    errs = {}
    for kind in ("uniform", "dfq", "log2"):
        q = make_softmax_quantizer(kind, 4)
        with calibration_mode(torch.nn.Sequential(q)):
            q(probs)
        errs[kind] = float((q(probs) - probs).pow(2).mean())
    assert errs["dfq"] < errs["uniform"]


def test_log_quantizer_module():
    q = LogQuantizer(3, "sqrt2")
    q.initialized.fill_(True)
    out = q(torch.tensor([1.0, 0.5, 1e-6]))
    assert out[0] == 1.0 and abs(float(out[1]) - 0.5) < 1e-6 and out[2] == 0.0


def test_unknown_softmax_quantizer():
    with pytest.raises(ValueError, match="unknown softmax quantizer"):
        make_softmax_quantizer("cubic", 4)
