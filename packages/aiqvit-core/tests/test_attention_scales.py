"""attention_scales="head": one scale per head for the query, key and value quantizers."""

import pytest
import torch
from conftest import fast_config, group_quantization_error

import aiqvit
from aiqvit import AdapterError, AIQViTError, UniformQuantizer
from aiqvit.toy import ToyAdapter, make_outlier_toy


def _with_unequal_heads(model, factor=25.0):
    """Head 0's keys and values ``factor`` times larger than the other heads' (its queries and the output
    projection's columns shrunk to match, so the float function is unchanged)."""
    with torch.no_grad():
        for b in model.blocks:
            dim, hd = b.attn.proj.in_features, b.attn.proj.in_features // b.attn.num_heads
            for rows, f in ((slice(0, hd), 1 / factor), (slice(dim, dim + hd), factor),
                            (slice(2 * dim, 2 * dim + hd), factor)):
                b.attn.qkv.weight[rows] *= f
                b.attn.qkv.bias[rows] *= f
            b.attn.proj.weight[:, :hd] /= factor
    return model


def _key_quantizers(model):
    return [q for n, q in aiqvit.quantizers(model) if n.endswith("key_quantizer")]


def test_unequal_heads_keep_the_float_function(test_inputs):
    ref, model = make_outlier_toy(seed=0), _with_unequal_heads(make_outlier_toy(seed=0))
    with torch.no_grad():
        torch.testing.assert_close(model(test_inputs), ref(test_inputs), atol=1e-5, rtol=1e-4)


def test_one_scale_per_head(calib_batches, test_inputs):
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("repq", attention_scales="head"), progress_bar=False)
    heads = model.blocks[0].attn.num_heads
    for name, q in aiqvit.quantizers(model):
        if name.endswith(("query_quantizer", "key_quantizer", "value_quantizer")):
            assert q.scale.shape == (1, heads, 1, 1), name
    with torch.no_grad():
        assert torch.isfinite(model(test_inputs)).all()


def test_per_head_scales_quantize_unequal_heads_better(calib_batches, test_inputs):
    ref = _with_unequal_heads(make_outlier_toy(seed=0))
    groups = ("query_quantizer", "key_quantizer", "value_quantizer")
    errs = {scales: group_quantization_error(ref, calib_batches, test_inputs, groups, attention_scales=scales)
            for scales in ("tensor", "head")}
    assert errs["head"] < 0.5 * errs["tensor"], errs


def test_per_head_model_roundtrips(calib_batches, test_inputs, tmp_path):
    model = make_outlier_toy(seed=0)
    aiqvit.quantize(model, calib_batches, fast_config("aiqvit", attention_scales="head"), progress_bar=False)
    aiqvit.save_quantized(model, tmp_path / "q")
    loaded = aiqvit.load_quantized(make_outlier_toy(seed=1), tmp_path / "q")
    assert [q.scale.shape for q in _key_quantizers(loaded)] == [q.scale.shape for q in _key_quantizers(model)]
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), model(test_inputs))


def test_head_scales_need_a_head_axis(calib_batches):
    class NoHeads(ToyAdapter):
        def attention_head_axis(self):
            return None

    with pytest.raises(AdapterError, match="attention_head_axis"):
        aiqvit.prepare(make_outlier_toy(seed=0), fast_config("aiqvit", attention_scales="head"), adapter=NoHeads())
    with pytest.raises(AIQViTError, match="attention_scales"):
        fast_config("aiqvit", attention_scales="channel")


def test_element_budget_gives_few_channels_every_sample():
    """Six heads of 6,400 elements each: with the element budget each head's percentile range is the one a
    per-tensor quantizer finds on that head alone; a fixed row budget (2,048 rows) subsamples."""
    x = torch.randn(4, 6, 100, 16, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7).view(1, 6, 1, 1)
    per_head = UniformQuantizer(4, per_channel=True, channel_dim=1, init="percentile", element_budget=True)
    per_head.calibrate_from(x)
    for h in range(6):
        alone = UniformQuantizer(4, init="percentile")
        alone.calibrate_from(x[:, h])
        torch.testing.assert_close(per_head.scale.flatten()[h], alone.scale)
        torch.testing.assert_close(per_head.zero_point.flatten()[h], alone.zero_point)
