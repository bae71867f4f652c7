import copy

import aiqvit
import pytest
import torch
from torch import nn

import aiqvit_pointcloud  # noqa: F401  (registers the adapter)
from aiqvit_pointcloud.adapter import PointTransformerAdapter, QuantizedPointTransformerLayer
from aiqvit_pointcloud.models import (
    ClassifierHead,
    PointTransformerBlock,
    PointTransformerConfig,
    PointTransformerLayer,
    SegmentationHead,
    Stem,
    TransitionDown,
    TransitionUp,
    build_model,
)

CFG = dict(num_points=64, widths=(16, 32), depths=(1, 2), k=8)


def make(task):
    torch.manual_seed(0)
    extra = dict(num_classes=5) if task == "cls" else dict(num_classes=7, num_categories=3)
    return build_model(PointTransformerConfig(task=task, **CFG, **extra)).eval()


def batch(task):
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(3, 64, 3, generator=g)
    return pts if task == "cls" else (pts, torch.tensor([0, 1, 2]))


def test_adapter_is_found_by_isinstance():
    assert isinstance(aiqvit.find_adapter(make("cls")), PointTransformerAdapter)
    assert isinstance(aiqvit.find_adapter(make("partseg")), PointTransformerAdapter)
    assert not PointTransformerAdapter.handles(nn.Linear(3, 3))


def test_units_in_forward_order():
    model = make("partseg")
    names = [n for n, _ in PointTransformerAdapter().units(model)]
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: calls.append(n))
             for n, m in PointTransformerAdapter().units(model)]
    with torch.no_grad():
        PointTransformerAdapter().run(model, batch("partseg"))
    for h in hooks:
        h.remove()
    assert calls == names
    types = [type(m) for _, m in PointTransformerAdapter().units(model)]
    assert types[0] is Stem and TransitionDown in types and TransitionUp in types
    assert types.count(PointTransformerBlock) == 3 + 2  # encoder 1 + 2, decoder 1 per level
    assert types[-1] is SegmentationHead
    assert type(PointTransformerAdapter().units(make("cls"))[-1][1]) is ClassifierHead


def test_unit_inputs_split_per_sample():
    """What the core relies on: every tensor a unit receives is batch-first, and a unit run on one
    sample's slice gives that sample's slice of the batched output."""
    model = make("partseg")
    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append((mod, args, out)))
             for _, m in PointTransformerAdapter().units(model)]
    with torch.no_grad():
        PointTransformerAdapter().run(model, batch("partseg"))
        for h in hooks:
            h.remove()
        for mod, args, out in captured:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            assert all(t.shape[0] == 3 for t in tensors), type(mod).__name__
            single = mod(*[a[1:2] if isinstance(a, torch.Tensor) else a for a in args])
            torch.testing.assert_close(single, out[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["cls", "partseg"])
@pytest.mark.parametrize("method", ["minmax", "aiqvit"])
def test_prepared_model_with_quantizers_off_is_the_float_model(task, method):
    model = make(task)
    ref = copy.deepcopy(model)
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method(method, 4, 4))
    info = aiqvit.get_info(model)
    n_linear = sum(isinstance(m, nn.Linear) for m in ref.modules())
    assert len(info.layer_names) == n_linear
    assert len(info.attention_names) == sum(isinstance(m, PointTransformerLayer) for m in ref.modules())
    assert info.layernorm_consumers == []
    # layer names are unchanged by the attention wrapper
    assert set(info.layer_names) == {n for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    with torch.no_grad(), aiqvit.quantization_disabled(model):
        out = PointTransformerAdapter().run(model, batch(task))
    with torch.no_grad():
        expect = PointTransformerAdapter().run(ref, batch(task))
    torch.testing.assert_close(out, expect, atol=0, rtol=0)


def test_attention_operands_reach_the_quantizers():
    model = make("cls")
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("aiqvit", 4, 4))
    layers = [m for m in model.modules() if isinstance(m, QuantizedPointTransformerLayer)]
    assert layers
    with torch.no_grad(), aiqvit.calibration_mode(model):
        PointTransformerAdapter().run(model, batch("cls"))
    q = layers[0].quantizers
    for quant in (q.query_quantizer, q.key_quantizer, q.probs_quantizer, q.value_quantizer):
        assert bool(quant.initialized)
    assert isinstance(q.probs_quantizer, aiqvit.DynamicFocusingQuantizer)
    b1, b2 = q.probs_quantizer.interval()
    assert 0 <= b1.item() < b2.item() <= 1
    with torch.no_grad():
        quantized = PointTransformerAdapter().run(model, batch("cls"))
        with aiqvit.quantization_disabled(model):
            floating = PointTransformerAdapter().run(model, batch("cls"))
    assert not torch.allclose(quantized, floating)
    # the post-Softmax quantizer alone changes the output
    with torch.no_grad(), aiqvit.quantization_disabled(model):
        q.probs_quantizer.enabled = True
        probs_only = PointTransformerAdapter().run(model, batch("cls"))
    assert not torch.allclose(probs_only, floating)


def test_double_wrap_refused():
    model = make("cls")
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("minmax", 4, 4))
    layer = next(m for m in model.modules() if isinstance(m, QuantizedPointTransformerLayer))
    with pytest.raises(aiqvit.AdapterError, match="already"):
        PointTransformerAdapter().attention_wrappers()[PointTransformerLayer](layer, layer.quantizers)
