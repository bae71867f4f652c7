import copy

import pytest
import torch
from conftest import fast_config, group_quantization_error

import aiqvit
from aiqvit.centering import center_attention_keys, key_ranges
from aiqvit.toy import ToyAdapter, make_outlier_toy


def _with_key_offsets(model):
    """Large shared offsets on the keys (as real ViTs have): they are invisible to the attention."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for b in model.blocks:
            dim = b.attn.proj.in_features
            b.attn.qkv.bias[dim:2 * dim] += 10 * torch.randn(dim, generator=g)
    return model


def test_centering_keeps_outputs_and_centers_key_ranges(calib_batches, test_inputs):
    model = _with_key_offsets(make_outlier_toy(seed=0))
    ref = copy.deepcopy(model)
    assert center_attention_keys(model, ToyAdapter(), calib_batches) == len(model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(test_inputs), ref(test_inputs), atol=1e-5, rtol=1e-5)
    _, ranges = key_ranges(model, ToyAdapter(), calib_batches)
    for lo, hi in ranges:
        torch.testing.assert_close(lo + hi, torch.zeros_like(lo), atol=1e-4, rtol=0)


def test_centering_creates_a_missing_bias(calib_batches, test_inputs):
    model = make_outlier_toy(seed=0)
    for b in model.blocks:
        b.attn.qkv.bias = None
    ref = copy.deepcopy(model)
    center_attention_keys(model, ToyAdapter(), calib_batches)
    assert all(b.attn.qkv.bias is not None for b in model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(test_inputs), ref(test_inputs), atol=1e-5, rtol=1e-5)


def test_adapter_without_key_projections_centers_nothing(calib_batches):
    class NoKeys(ToyAdapter):
        def key_projections(self, model):
            return []

    model = make_outlier_toy(seed=0)
    before = copy.deepcopy(model.state_dict())
    assert center_attention_keys(model, NoKeys(), calib_batches) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_centered_keys_quantize_better(calib_batches, test_inputs):
    """With only the key quantizers on, centered keys lose much less of the output."""
    ref = _with_key_offsets(make_outlier_toy(seed=0))
    errs = {False: group_quantization_error(ref, calib_batches, test_inputs, "key_quantizer"),
            True: group_quantization_error(ref, calib_batches, test_inputs, "key_quantizer",
                                           lambda m: center_attention_keys(m, ToyAdapter(), calib_batches))}
    assert errs[True] < 0.5 * errs[False], errs


def test_quantize_reports_centered_keys(calib_batches):
    for center in (False, True):
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, fast_config("repq", center_keys=center), progress_bar=False)
        assert report.centered_keys == (len(model.blocks) if center else 0)


def test_centered_model_saves_and_loads(tmp_path, calib_batches, test_inputs):
    model = _with_key_offsets(make_outlier_toy(seed=0))
    aiqvit.quantize(model, calib_batches, fast_config("repq", center_keys=True), progress_bar=False)
    aiqvit.save_quantized(model, tmp_path / "q")
    fresh = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(fresh(test_inputs), model(test_inputs))


def test_quantize_refuses_a_prepared_model_before_touching_it(calib_batches):
    model = make_outlier_toy(seed=0)
    aiqvit.prepare(model, aiqvit.QuantConfig())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(aiqvit.AdapterError, match="already prepared"):
        aiqvit.quantize(model, calib_batches, fast_config("aiqvit", center_keys=True), progress_bar=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
