"""Fisher-weighted reconstruction loss (reconstruction.loss_weighting="fisher", aiqvit.sensitivity)."""

import copy

import pytest
import torch
from conftest import fast_config

import aiqvit
from aiqvit import AIQViTError, QuantConfig
from aiqvit.reconstruction import build_unit_data, sample_losses
from aiqvit.sensitivity import fisher_maps, loss_weights
from aiqvit.toy import ToyAdapter, ToyViT


def _brute_force_fisher(model, unit, batches, labels_per_sample):
    """Mean over samples and the given labels of ``(d log p(y|x) / dz)^2``, one sample at a time."""
    total, count = None, 0
    captured = {}

    def hook(module, args, output):
        leaf = output.detach().requires_grad_(True)
        captured["z"] = leaf
        return leaf

    for batch in batches:
        for i in range(batch.shape[0]):
            h = unit.register_forward_hook(hook)
            try:
                log_p = torch.log_softmax(model(batch[i:i + 1]), -1)
            finally:
                h.remove()
            g2 = torch.zeros_like(captured["z"])
            for y in labels_per_sample:
                (g,) = torch.autograd.grad(log_p[0, y], captured["z"], retain_graph=True)
                g2 += g ** 2 * float(log_p[0, y].detach().exp())  # the expectation over y ~ p, exactly
            total = g2 if total is None else total + g2
            count += 1
    return total / count


def test_fisher_maps_match_the_exact_expectation_over_labels():
    torch.manual_seed(0)
    model = ToyViT(num_classes=3).eval()
    batches = list(torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)).split(3))
    units = [("blocks.0", model.blocks[0]), ("blocks.1", model.blocks[1])]
    # many label draws: the Monte Carlo mean approaches E_{y~p}
    maps = fisher_maps(model, ToyAdapter(), units, batches, samples=3000, generator=torch.Generator().manual_seed(0))
    for name, unit in units:
        exact = _brute_force_fisher(model, unit, batches, range(3))
        assert maps[name].shape == exact.shape == (1, 16, 32)
        rel = (maps[name] - exact).norm() / exact.norm()
        assert rel < 0.1, (name, float(rel))


def test_loss_weights_have_mean_one_and_mix_with_uniform():
    f = torch.rand(1, 5, 7) ** 4
    w = loss_weights(f, 1.0)
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(w, f / f.mean())
    assert torch.allclose(loss_weights(f, 0.0), torch.ones_like(f))
    half = loss_weights(f, 0.5)
    assert torch.allclose(half, 0.5 + 0.5 * f / f.mean())
    assert torch.equal(loss_weights(torch.zeros(1, 3), 1.0), torch.ones(1, 3))


def test_weighted_sample_loss_is_the_weighted_frobenius_norm():
    torch.manual_seed(0)
    unit = torch.nn.Linear(4, 3)
    x = torch.randn(5, 2, 4)
    target = torch.randn(5, 2, 3)
    weight = torch.rand(1, 2, 3)
    data = build_unit_data([[(x,), {}, None]], [[(x,), {}, target]], weight=weight)
    got = sample_losses(unit, data, list(range(5)))
    with torch.no_grad():
        expected = ((unit(x) - target) ** 2 * weight).reshape(5, -1).sum(1).sqrt()
    assert torch.allclose(got, expected)
    plain = build_unit_data([[(x,), {}, None]], [[(x,), {}, target]])
    ones = build_unit_data([[(x,), {}, None]], [[(x,), {}, target]], weight=torch.ones(1, 2, 3))
    assert torch.allclose(sample_losses(unit, plain, [0, 1]), sample_losses(unit, ones, [0, 1]))


def test_weights_are_normalized_on_what_the_view_keeps(calib_batches):
    """A ViT's last block is reconstructed on its class token: its weights have mean 1 on that token."""
    from aiqvit.api import _fisher_maps

    class ClassTokenView(ToyAdapter):
        def output_view(self, model, unit_name):
            return (lambda y: y[:, :1]) if unit_name == "blocks.1" else None

    model = ToyViT().eval()
    cfg = fast_config("aiqvit", 4, **{"reconstruction.loss_weighting": "fisher"})
    aiqvit.prepare(model, cfg, ClassTokenView())
    maps = _fisher_maps(model, calib_batches, cfg, show=False)
    weight = loss_weights(ClassTokenView().output_view(model, "blocks.1")(maps["blocks.1"]), 1.0)
    assert weight.shape == (1, 1, 32)
    assert torch.allclose(weight.mean(), torch.tensor(1.0))
    x = torch.randn(4, 16, 32)
    data = build_unit_data([[(x,), {}, None]], [[(x,), {}, x]], view=lambda y: y[:, :1], weight=weight)
    assert data.weight is weight and data.targets[0].shape[1:] == weight.shape[1:]


def test_fisher_weighted_pipeline_is_seeded_and_changes_the_model(calib_batches, test_inputs):
    torch.manual_seed(0)
    ref = ToyViT().eval()
    outs = []
    for weighting in ("fisher", "fisher", "none"):
        model = copy.deepcopy(ref)
        cfg = fast_config("aiqvit", 4, **{"reconstruction.loss_weighting": weighting})
        report = aiqvit.quantize(model, calib_batches, cfg, progress_bar=False)
        assert set(report.unit_losses) == {"blocks.0", "blocks.1"}
        with torch.no_grad():
            outs.append(model(test_inputs))
    assert torch.equal(outs[0], outs[1])  # same inputs, same model
    assert not torch.equal(outs[0], outs[2])  # the weights change what reconstruction learns


def test_fisher_weighting_config_errors():
    with pytest.raises(AIQViTError, match="loss_weighting"):
        QuantConfig.for_method("aiqvit", **{"reconstruction.loss_weighting": "hessian"})
    with pytest.raises(AIQViTError, match="fisher_mix"):
        QuantConfig.for_method("aiqvit", **{"reconstruction.fisher_mix": 1.5})
    with pytest.raises(AIQViTError, match="fisher_samples"):
        QuantConfig.for_method("aiqvit", **{"reconstruction.fisher_samples": 0})


def test_fisher_weighting_needs_class_logits(calib_batches):
    class NoLogits(ToyAdapter):
        def sensitivity_logits(self, model, output):
            return None

    model = ToyViT().eval()
    cfg = fast_config("aiqvit", 4, **{"reconstruction.loss_weighting": "fisher"})
    with pytest.raises(aiqvit.AdapterError, match="sensitivity_logits"):
        aiqvit.quantize(model, calib_batches, cfg, adapter=NoLogits(), progress_bar=False)


def test_fisher_maps_refuse_units_whose_output_shape_varies():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
    batches = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]  # 3 tokens, then 5

    class SequentialAdapter(aiqvit.ModelAdapter):
        pass

    with pytest.raises(aiqvit.AdapterError, match="one output shape per unit"):
        fisher_maps(model, SequentialAdapter(), [("0", model[0])], batches, 1, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 4)
    with pytest.raises(aiqvit.AdapterError, match="do not match"):
        build_unit_data([[(x,), {}, None]], [[(x,), {}, torch.randn(2, 3, 6)]], weight=torch.ones(1, 5, 6))


def test_fisher_maps_of_a_frozen_model_equal_those_of_a_trainable_one():
    """With every parameter frozen nothing requires grad: the first unit's output becomes the leaf."""
    torch.manual_seed(0)
    model = ToyViT(num_classes=3).eval()
    batches = list(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)).split(2))
    units = [("blocks.0", model.blocks[0]), ("blocks.1", model.blocks[1])]
    trainable = fisher_maps(model, ToyAdapter(), units, batches, 2, torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    frozen = fisher_maps(model, ToyAdapter(), units, batches, 2, torch.Generator().manual_seed(0))
    for name, _ in units:
        assert torch.allclose(trainable[name], frozen[name], rtol=1e-5, atol=1e-12)
