import torch
from torch import nn

from aiqvit.calibration import calibration_mode
from aiqvit.modules import QuantLinear
from aiqvit.quantizers import UniformQuantizer
from aiqvit.reparam import reparameterize_pair


def _affine_norm(seed: int) -> nn.LayerNorm:
    torch.manual_seed(seed)
    norm = nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) * 5 + 0.1)
        norm.bias.copy_(torch.randn(16))
    return norm


def test_reparameterization_is_equivalent():
    norm = _affine_norm(0)
    consumers = [QuantLinear(nn.Linear(16, 12), UniformQuantizer(4, per_channel=True, channel_dim=0),
                             UniformQuantizer(4, per_channel=True, channel_dim=-1)) for _ in range(2)]
    for c in consumers:
        c.init_weight_quantizer()
        c.weight_quantizer.enabled = False  # equivalence holds exactly for float weights
    x = torch.randn(64, 5, 16)
    model = nn.ModuleList([norm, *consumers])
    with calibration_mode(model):
        for c in consumers:
            c(norm(x))
    for c in consumers[1:]:  # one post-LN activation: consumers share its quantizer parameters
        c.input_quantizer.load_state_dict(consumers[0].input_quantizer.state_dict())
    before = [c(norm(x)) for c in consumers]
    reparameterize_pair(norm, consumers, reinit_weights=False)
    after = [c(norm(x)) for c in consumers]
    for c in consumers:
        assert c.input_quantizer.scale.ndim == 0 and not c.input_quantizer.per_channel
    for b, a in zip(before, after):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_input_reparameterization_of_a_non_norm_producer_is_equivalent():
    from aiqvit.reparam import reparameterize_input

    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = QuantLinear(linear, UniformQuantizer(4, per_channel=True, channel_dim=0),
                        UniformQuantizer(4, per_channel=True, channel_dim=-1))
    layer.init_weight_quantizer()
    layer.weight_quantizer.enabled = False
    x = torch.nn.functional.gelu(torch.randn(64, 16) * torch.linspace(0.1, 20, 16))  # post-GELU, per-channel ranges
    with calibration_mode(layer):
        layer(x)
    before = layer(x)
    reparameterize_input(layer, reinit_weights=False)
    assert layer.input_scale is not None and layer.input_quantizer.scale.ndim == 0
    assert torch.allclose(layer(x), before, atol=1e-4)
    layer.input_quantizer.enabled = False  # float weights, float input: the original layer
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x), atol=1e-4)


def _post_gelu_layer(seed=0, channels=16, out=8):
    torch.manual_seed(seed)
    linear = nn.Linear(channels, out)
    layer = QuantLinear(linear, UniformQuantizer(4, per_channel=True, channel_dim=0),
                        UniformQuantizer(4, per_channel=True, channel_dim=-1))
    layer.init_weight_quantizer()
    spread = torch.rand(channels) * 2 + 0.5
    spread[3], spread[5] = 300.0, 30.0  # channels with very large values (the post-GELU outliers of DINOv2)
    x = torch.nn.functional.gelu(torch.randn(256, channels) * spread)
    return linear, layer, x


def test_partial_migration_keeps_the_float_function():
    from aiqvit.reparam import reparameterize_input

    for strength in (0.0, 0.5, 0.8):
        linear, layer, x = _post_gelu_layer()
        with calibration_mode(layer):
            layer(x)
        channel_scale = layer.input_quantizer.scale.detach().reshape(-1).clone()
        reparameterize_input(layer, strength=strength)
        layer.input_quantizer.enabled = False
        layer.weight_quantizer.enabled = False
        with torch.no_grad():
            assert torch.allclose(layer(x), linear(x), atol=1e-3), strength
        # the layer-wise grid covers every transformed channel: it clips no more than the
        # channel-wise quantizer did (up to half of that channel's step, from zero-point rounding)
        x_t = x * layer.input_scale + layer.input_shift
        q = layer.input_quantizer
        lo, hi = -q.zero_point * q.scale, (15 - q.zero_point) * q.scale
        slack = (channel_scale * layer.input_scale).max() / 2 + 1e-4
        assert float(x_t.min()) >= float(lo - slack) and float(x_t.max()) <= float(hi + slack)


def test_partial_migration_of_a_norm_keeps_the_float_function():
    norm = _affine_norm(1)
    linear = nn.Linear(16, 12)
    layer = QuantLinear(linear, UniformQuantizer(4, per_channel=True, channel_dim=0),
                        UniformQuantizer(4, per_channel=True, channel_dim=-1))
    layer.init_weight_quantizer()
    x = torch.randn(64, 5, 16)
    with torch.no_grad():
        ref = linear(norm(x))
    with calibration_mode(layer):
        layer(norm(x))
    reparameterize_pair(norm, [layer], strength=0.5)
    layer.input_quantizer.enabled = layer.weight_quantizer.enabled = False
    with torch.no_grad():
        assert torch.allclose(layer(norm(x)), ref, atol=1e-3)


def test_strength_search_beats_full_migration_on_an_outlier_channel():
    from aiqvit.reparam import choose_strength, layer_output_error, migration

    _, layer, x = _post_gelu_layer(channels=128, out=32)
    layer.input_quantizer.keep_rows = 128
    with calibration_mode(layer):
        for chunk in x.split(64):
            layer(chunk)
    rows = layer.input_quantizer.kept_rows
    assert rows.shape == (128, 128)  # a bounded sample of the 256 observed rows
    chosen = choose_strength([layer])
    errors = {a: layer_output_error([layer], rows, migration(layer, a)) for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert errors[chosen] == min(errors.values())
    assert chosen < 1.0 and errors[chosen] < errors[1.0]


def test_strength_search_needs_kept_rows():
    import pytest

    from aiqvit.errors import AdapterError
    from aiqvit.reparam import choose_strength

    _, layer, x = _post_gelu_layer()
    with calibration_mode(layer):
        layer(x)
    with pytest.raises(AdapterError, match="calibration rows"):
        choose_strength([layer])
