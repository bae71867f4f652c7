import torch
from torch import nn

from aiqvit.calibration import calibration_mode
from aiqvit.modules import QuantLinear
from aiqvit.quantizers import UniformQuantizer
from aiqvit.reparam import reparameterize_pair


def test_reparameterization_is_equivalent():
    torch.manual_seed(0)
    norm = nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) * 5 + 0.1)
        norm.bias.copy_(torch.randn(16))
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
