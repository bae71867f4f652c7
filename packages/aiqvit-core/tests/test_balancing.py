import copy

import pytest
import torch
from conftest import fast_config, group_quantization_error

import aiqvit
from aiqvit.balancing import balance_attention, output_absmax
from aiqvit.toy import ToyAdapter, make_outlier_toy


def _with_query_key_outliers(model):
    """A few query channels and other key channels far larger than the rest (their products stay the same)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for b in model.blocks:
            dim = b.attn.proj.in_features
            s = torch.ones(dim)
            s[torch.randperm(dim, generator=g)[:4]] = 20.0
            b.attn.qkv.weight[:dim] *= s.unsqueeze(1)
            b.attn.qkv.bias[:dim] *= s
            b.attn.qkv.weight[dim:2 * dim] /= s.unsqueeze(1)
            b.attn.qkv.bias[dim:2 * dim] /= s
    return model


def _ranges(model, calib_batches):
    adapter = ToyAdapter()
    projections = adapter.attention_projections(model)
    absmax = output_absmax(model, adapter, [p.query[0] for p in projections], calib_batches)
    return [(absmax[id(p.query[0])][p.query[1]], absmax[id(p.key[0])][p.key[1]],
             absmax[id(p.value[0])][p.value[1]]) for p in projections]


@pytest.mark.parametrize("scope", ["qk", "qkv"])
def test_balancing_keeps_outputs(scope, calib_batches, test_inputs):
    model = _with_query_key_outliers(make_outlier_toy(seed=0))
    ref = copy.deepcopy(model)
    assert balance_attention(model, ToyAdapter(), calib_batches, scope) == len(model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(test_inputs), ref(test_inputs), atol=1e-5, rtol=1e-5)


def test_balanced_queries_and_keys_share_one_channel_profile(calib_batches):
    """At strength 0.5 every channel's query range over its key range is the same number."""
    model = _with_query_key_outliers(make_outlier_toy(seed=0))
    before = _ranges(model, calib_batches)
    balance_attention(model, ToyAdapter(), calib_batches, "qk")
    after = _ranges(model, calib_batches)
    for (q0, k0, v0), (q1, k1, v1) in zip(before, after):
        assert float((q0 / k0).log().std()) > 1.0
        assert float((q1 / k1).log().std()) < 1e-3
        torch.testing.assert_close(v1, v0)  # "qk" leaves the values alone


def test_value_balancing_moves_range_into_the_output_projection(calib_batches):
    model = make_outlier_toy(seed=0)
    with torch.no_grad():  # outlier value channels, compensated in the output projection
        for b in model.blocks:
            dim = b.attn.proj.in_features
            b.attn.qkv.weight[2 * dim:2 * dim + 3] *= 30
            b.attn.qkv.bias[2 * dim:2 * dim + 3] *= 30
            b.attn.proj.weight[:, :3] /= 30
    before = _ranges(model, calib_batches)
    balance_attention(model, ToyAdapter(), calib_batches, "qkv")
    after = _ranges(model, calib_batches)
    for (_, _, v0), (_, _, v1) in zip(before, after):
        assert float(v1.max() / v1.median()) < 0.5 * float(v0.max() / v0.median())


def test_balanced_keys_quantize_better(calib_batches, test_inputs):
    """With only the query and key quantizers on, balanced operands lose much less of the output."""
    ref = _with_query_key_outliers(make_outlier_toy(seed=0))
    groups = ("key_quantizer", "query_quantizer")
    errs = {False: group_quantization_error(ref, calib_batches, test_inputs, groups),
            True: group_quantization_error(ref, calib_batches, test_inputs, groups,
                                           lambda m: balance_attention(m, ToyAdapter(), calib_batches, "qk"))}
    assert errs[True] < 0.5 * errs[False], errs


def test_quantize_reports_balanced_attentions_and_checks_the_option(calib_batches):
    for scope in ("off", "qkv"):
        model = make_outlier_toy(seed=0)
        report = aiqvit.quantize(model, calib_batches, fast_config("repq", attention_balance=scope), progress_bar=False)
        assert report.balanced_attentions == (0 if scope == "off" else len(model.blocks))
    with pytest.raises(aiqvit.AIQViTError, match="attention_balance"):
        fast_config("aiqvit", attention_balance="kv").validate()
    with pytest.raises(aiqvit.AIQViTError, match="attention_balance_strength"):
        fast_config("aiqvit", attention_balance="qk", attention_balance_strength=0.0).validate()


def test_adapter_without_attention_projections_balances_nothing(calib_batches):
    class NoProjections(ToyAdapter):
        def attention_projections(self, model):
            return []

    model = make_outlier_toy(seed=0)
    before = copy.deepcopy(model.state_dict())
    assert balance_attention(model, NoProjections(), calib_batches, "qkv") == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_balanced_model_saves_and_loads(tmp_path, calib_batches, test_inputs):
    model = _with_query_key_outliers(make_outlier_toy(seed=0))
    aiqvit.quantize(model, calib_batches, fast_config("repq", attention_balance="qkv"), progress_bar=False)
    aiqvit.save_quantized(model, tmp_path / "q")
    fresh = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(fresh(test_inputs), model(test_inputs))
