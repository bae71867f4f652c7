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


@pytest.mark.parametrize("spacing", ["uniform", "log"])
def test_dfq_init_keeps_attention_mass(spacing):
    """The row objective (squared error + squared row-sum error) loses less of ``probs @ V`` than
    plain MSE when V has a mean component, as real attention values do."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 65, 65, generator=g) * 2, -1)
    v = torch.randn(6, 65, 32, generator=g) * 0.5 + torch.randn(1, 1, 32, generator=g)
    errs = {}
    for init in ("row", "mse"):
        q = DynamicFocusingQuantizer(4, spacing=spacing, init=init)
        with calibration_mode(torch.nn.Sequential(q)):
            q(probs)
        with torch.no_grad():
            errs[init] = float((q(probs) @ v - probs @ v).pow(2).sum())
    assert errs["row"] < errs["mse"]


def test_dfq_log_spacing_beats_uniform_on_attention_output():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(6, 65, 65, generator=g) * 1.5, -1)
    v = torch.randn(6, 65, 32, generator=g) + 0.5
    errs = {}
    for spacing in ("uniform", "log"):
        q = DynamicFocusingQuantizer(4, spacing=spacing)
        with calibration_mode(torch.nn.Sequential(q)):
            q(probs)
        with torch.no_grad():
            errs[spacing] = float((q(probs) @ v - probs @ v).pow(2).sum())
    assert errs["log"] < errs["uniform"] / 2


def test_dfq_rejects_bad_options():
    with pytest.raises(ValueError, match="spacing"):
        DynamicFocusingQuantizer(4, spacing="cubic")
    with pytest.raises(ValueError, match="init"):
        DynamicFocusingQuantizer(4, init="max")


def test_dfq_beats_uniform_on_softmax_at_4_bits():
    probs = torch.softmax(torch.randn(256, 197, generator=torch.Generator().manual_seed(0)) * 2, -1)
    errs = {}
    for kind in ("uniform", "dfq", "log2"):
        q = make_softmax_quantizer(kind, 4, dfq_init="mse")
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


def test_probs_quantizer_sees_the_softmax_axis_last():
    from aiqvit import AttentionQuantizers

    class Recorder(torch.nn.Module):
        def forward(self, x):
            self.shape = tuple(x.shape)
            return x * 2

    rec = Recorder()
    aq = AttentionQuantizers(torch.nn.Identity(), torch.nn.Identity(), rec, torch.nn.Identity())
    p = torch.softmax(torch.randn(2, 5, 16, 3), dim=2)
    out = aq.probs(p, dim=2)
    assert rec.shape == (2, 5, 3, 16)
    assert out.shape == p.shape and torch.equal(out, p * 2)
    aq.probs(p)
    assert rec.shape == p.shape


def test_config_rejects_unknown_dfq_options():
    from aiqvit import AIQViTError, QuantConfig

    with pytest.raises(AIQViTError, match="dfq_spacing"):
        QuantConfig(dfq_spacing="cubic")
    with pytest.raises(AIQViTError, match="dfq_init"):
        QuantConfig(dfq_init="max")


def test_calibration_mode_tells_weight_quantizers_by_role_not_name():
    """A layer's weight quantizer keeps its weight-based init; any other quantizer calibrates,
    whatever its attribute is called."""
    from aiqvit import QuantLinear

    torch.manual_seed(0)
    layer = QuantLinear(torch.nn.Linear(8, 4), UniformQuantizer(4, per_channel=True, channel_dim=0), UniformQuantizer(8))
    layer.init_weight_quantizer()
    weight_scale = layer.weight_quantizer.scale.detach().clone()
    model = torch.nn.Sequential(layer)
    model.extra_weight_quantizer = UniformQuantizer(8)  # a name ending like a weight quantizer's, not one
    with calibration_mode(model):
        y = layer(torch.randn(16, 8) * 3)
        model.extra_weight_quantizer(y)
    assert bool(layer.input_quantizer.initialized) and bool(model.extra_weight_quantizer.initialized)
    assert torch.equal(layer.weight_quantizer.scale, weight_scale)
