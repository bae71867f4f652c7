import copy

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

import aiqvit
from aiqvit.api import apply_reparameterization, calibrate_activations
from aiqvit_vision import QuantAttention, QuantWindowAttention, SwinAdapter, ViTAdapter


def _randomize_norms(model):
    """Non-trivial LayerNorm affines and LayerScale gammas, so that folding errors would show."""
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        if p.ndim == 1:
            p.data = p.data + 0.3 * torch.randn(p.shape, generator=g)
    return model


def tiny_vit_layerscale():
    torch.manual_seed(0)
    return _randomize_norms(VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                              num_classes=5, init_values=0.1, qkv_bias=True)).eval()


def tiny_deit_distilled():
    torch.manual_seed(1)
    return _randomize_norms(VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                       num_classes=5)).eval()


def tiny_swin(img_size=32, window=4):
    torch.manual_seed(2)
    return _randomize_norms(SwinTransformer(img_size=img_size, patch_size=2, window_size=window, embed_dim=24,
                                            depths=(2, 2), num_heads=(2, 4), num_classes=5)).eval()


def _prepared_copy(model, method="aiqvit", bits=4):
    q = copy.deepcopy(model)
    aiqvit.prepare(q, aiqvit.QuantConfig.for_method(method, bits, bits))
    return q


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_deit_distilled, tiny_swin])
def test_quantizers_off_equals_timm(build):
    model = build()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)  # timm's own forward (fused SDPA for ViT/DeiT)
    q = _prepared_copy(model)
    with aiqvit.quantization_disabled(q), torch.no_grad():
        out = q(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_attention_replaced_by_isinstance():
    vit, swin = _prepared_copy(tiny_vit_layerscale()), _prepared_copy(tiny_swin())
    assert all(isinstance(b.attn, QuantAttention) for b in vit.blocks)
    swin_blocks = [b for stage in swin.layers for b in stage.blocks]
    assert all(isinstance(b.attn, QuantWindowAttention) for b in swin_blocks)
    assert any(b.attn_mask is not None for b in swin_blocks), "the fixture must exercise shifted windows"
    # same child names as timm's modules: layer names do not change
    names = {n for n, _ in vit.named_modules()}
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.attn.quantizers"} <= names
    assert aiqvit.get_info(swin).attention_names == [f"layers.{s}.blocks.{b}.attn" for s in (0, 1) for b in (0, 1)]


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_swin])
def test_attention_operands_go_through_quantizers(build):
    model = build()
    q = _prepared_copy(model, "minmax", 8)
    seen = {}

    def record(name):
        def hook(_m, args, _out):
            seen.setdefault(name, []).append(args[0].detach())
        return hook

    first_attn = next(m for m in q.modules() if isinstance(m, aiqvit.AttentionQuantizers))
    for kind in ("query", "key", "probs", "value"):
        getattr(first_attn, f"{kind}_quantizer").register_forward_hook(record(kind))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calibrate_activations(q, [x], show=False)
    assert set(seen) == {"query", "key", "probs", "value"}
    probs = seen["probs"][0]
    assert probs.min() >= 0 and probs.max() <= 1
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))  # post-Softmax rows
    uninitialized = [n for n, qz in aiqvit.quantizers(q) if "quantizers." in n and not bool(qz.initialized)]
    assert not uninitialized
    with torch.no_grad():
        quantized, ref = q(x), model(x)
    assert not torch.equal(quantized, ref)  # quantization is active ...
    assert (quantized - ref).abs().max() < 0.1 * ref.abs().max()  # ... and W8/A8 stays close


def test_vit_units_and_layernorm_consumers():
    model = tiny_vit_layerscale()
    adapter = ViTAdapter()
    assert [n for n, _ in adapter.units(model)] == ["blocks.0", "blocks.1", "head"]
    assert [n for n, _ in ViTAdapter(embed_unit=True, head_unit=False).units(model)] == \
        ["patch_embed", "blocks.0", "blocks.1"]
    assert [n for n, _ in adapter.units(tiny_deit_distilled())][-2:] == ["head", "head_dist"]
    assert adapter.logit_units(model) == {"head"} and ViTAdapter(head_unit=False).logit_units(model) == set()
    assert adapter.logit_units(tiny_deit_distilled()) == {"head", "head_dist"}
    pairs = adapter.layernorm_consumers(model)
    expected = [(b.norm1, [b.attn.qkv]) for b in model.blocks] + [(b.norm2, [b.mlp.fc1]) for b in model.blocks]
    assert sorted(map(lambda p: (id(p[0]), [id(c) for c in p[1]]), pairs)) == \
        sorted(map(lambda p: (id(p[0]), [id(c) for c in p[1]]), expected))


def test_swin_units_in_forward_order_and_merging_option():
    model = tiny_swin()
    names = [n for n, _ in SwinAdapter().units(model)]
    assert names == ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.downsample", "layers.1.blocks.0",
                     "layers.1.blocks.1", "head"]
    assert SwinAdapter(embed_unit=True, head_unit=False).units(model)[0][0] == "patch_embed"
    assert SwinAdapter().logit_units(model) == {"head"} and SwinAdapter(head_unit=False).logit_units(model) == set()
    assert "layers.1.downsample" not in [n for n, _ in SwinAdapter(merging_units=False).units(model)]
    pairs = SwinAdapter().layernorm_consumers(model)
    merging = model.layers[1].downsample
    assert any(n is merging.norm and c == [merging.reduction] for n, c in pairs)


def test_swin_padding_guard_keeps_reparameterization_exact():
    """20x20 tokens with window 8: timm pads the normalized map before qkv, so norm1 must not be folded."""
    model = tiny_swin(img_size=40, window=8)
    blocks = [b for stage in model.layers for b in stage.blocks]
    pairs = SwinAdapter().layernorm_consumers(model)
    folded = {id(n) for n, _ in pairs}
    assert any(b.input_resolution[0] % b.window_size[0] for b in blocks)
    for b in blocks:
        padded = b.input_resolution[0] % b.window_size[0] != 0
        assert (id(b.norm1) in folded) == (not padded)
        assert id(b.norm2) in folded

    q = _prepared_copy(model, "repq", 6)
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    calibrate_activations(q, [x], show=False)
    apply_reparameterization(q)
    with aiqvit.quantization_disabled(q), torch.no_grad():
        torch.testing.assert_close(q(x), model(x), atol=1e-4, rtol=1e-4)


def test_vit_reparameterization_is_exact_in_float():
    model = tiny_vit_layerscale()
    q = _prepared_copy(model, "repq", 6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    calibrate_activations(q, [x], show=False)
    apply_reparameterization(q)
    with aiqvit.quantization_disabled(q), torch.no_grad():
        torch.testing.assert_close(q(x), model(x), atol=1e-4, rtol=1e-4)


def test_adapter_selection_by_type():
    assert isinstance(aiqvit.find_adapter(tiny_vit_layerscale()), ViTAdapter)
    assert isinstance(aiqvit.find_adapter(tiny_deit_distilled()), ViTAdapter)
    assert isinstance(aiqvit.find_adapter(tiny_swin()), SwinAdapter)
    with pytest.raises(aiqvit.AdapterError):
        aiqvit.find_adapter(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_deit_distilled, tiny_swin])
def test_key_centering_keeps_timm_outputs(build):
    from aiqvit.centering import center_attention_keys, key_ranges

    model = build()
    adapter = aiqvit.find_adapter(model)
    from timm.layers.attention import Attention
    from timm.models.swin_transformer import WindowAttention

    assert len(adapter.key_projections(model)) == sum(isinstance(m, (Attention, WindowAttention)) for m in model.modules())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a large shared key offset, invisible to the Softmax
        for qkv, keys in adapter.key_projections(model):
            qkv.bias[keys] += 5 * torch.randn(keys.stop - keys.start, generator=g)
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = model(x)
    calib = [torch.randn(4, 3, 32, 32, generator=g)]
    centered = copy.deepcopy(model)
    assert center_attention_keys(centered, adapter, calib) == len(adapter.key_projections(model))
    with torch.no_grad():
        torch.testing.assert_close(centered(x), ref, atol=1e-5, rtol=1e-5)
    _, ranges = key_ranges(centered, adapter, calib)
    assert all(float((lo + hi).abs().max()) < 1e-4 for lo, hi in ranges)


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_deit_distilled, tiny_swin])
@pytest.mark.parametrize("scope", ["qk", "qkv"])
def test_attention_balancing_keeps_timm_outputs(build, scope):
    from timm.layers.attention import Attention
    from timm.models.swin_transformer import WindowAttention

    from aiqvit.balancing import balance_attention

    model = build()
    adapter = aiqvit.find_adapter(model)
    projections = adapter.attention_projections(model)
    assert len(projections) == sum(isinstance(m, (Attention, WindowAttention)) for m in model.modules())
    assert all(p.output is not None for p in projections)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # outlier query channels whose keys are small: the logits stay the same
        for p in projections:
            (qkv, q), (_, k) = p.query, p.key
            qkv.weight[q.start:q.start + 2] *= 8
            qkv.weight[k.start:k.start + 2] /= 8
            qkv.bias[q.start:q.start + 2] *= 8
            qkv.bias[k.start:k.start + 2] /= 8
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = model(x)
    balanced = copy.deepcopy(model)
    assert balance_attention(balanced, adapter, [torch.randn(4, 3, 32, 32, generator=g)], scope) == len(projections)
    assert not all(torch.equal(a, b) for a, b in zip(balanced.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(balanced(x), ref, atol=1e-5, rtol=1e-5)


def test_attention_with_a_query_norm_is_not_balanced():
    model = tiny_vit_layerscale()
    model.blocks[0].attn.q_norm = torch.nn.LayerNorm(model.blocks[0].attn.head_dim)
    model.blocks[1].attn.norm = torch.nn.LayerNorm(model.blocks[1].attn.attn_dim)
    projections = ViTAdapter().attention_projections(model)
    assert len(projections) == len(model.blocks) - 1
    assert projections[0].query[0] is model.blocks[1].attn.qkv and projections[0].output is None


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_deit_distilled])
def test_class_token_view_keeps_everything_the_head_reads(build):
    """The logits do not change when the last block's rows outside its output view are overwritten."""
    model = build()
    last = f"blocks.{len(model.blocks) - 1}"
    view = ViTAdapter().output_view(model, last)
    assert ViTAdapter().output_view(model, "blocks.0") is None
    assert ViTAdapter(class_token_view=False).output_view(model, last) is None
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        kept = view(torch.zeros(2, 17, 48)).shape[1]

        def scramble(module, args, output):
            out = torch.randn_like(output) * 10
            out[:, :kept] = output[:, :kept]
            return out
        handle = model.blocks[-1].register_forward_hook(scramble)
        try:
            assert torch.allclose(model(x), ref, atol=1e-6)
        finally:
            handle.remove()
        model.global_pool = "avg"
        assert ViTAdapter().output_view(model, last) is None


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_swin])
def test_logits_loss_kl_reaches_the_prepared_head(build):
    """The head is a quantized module once prepared; ``logits_loss="kl"`` must still find it."""
    calib = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    losses = {}
    for loss in ("l2", "kl"):
        cfg = aiqvit.QuantConfig.for_method("aiqvit", 4, 4)
        cfg.reconstruction.iters, cfg.search.iters, cfg.reconstruction.logits_loss = 4, 2, loss
        losses[loss] = aiqvit.quantize(build(), calib, cfg, progress_bar=False).unit_losses
    blocks = [n for n in losses["l2"] if n != "head"]
    assert all(losses["kl"][n] == losses["l2"][n] for n in blocks)
    assert losses["kl"]["head"] != losses["l2"]["head"]


@pytest.mark.parametrize("build", [tiny_vit_layerscale, tiny_swin])
def test_per_head_scales_follow_the_heads(build):
    """attention_scales="head": each head's key range is the min-max of that head's keys (the adapter's
    attention_head_axis is the head axis of the operands)."""
    model = build()
    q = copy.deepcopy(model)
    aiqvit.prepare(q, aiqvit.QuantConfig.for_method("minmax", 8, 8, attention_scales="head"))
    last_attn = [m for m in q.modules() if isinstance(m, aiqvit.AttentionQuantizers)][-1]
    keys = []
    last_attn.key_quantizer.register_forward_hook(lambda _m, args, _out: keys.append(args[0].detach()))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calibrate_activations(q, [x], show=False)
    k = keys[0]
    scale = last_attn.key_quantizer.scale.detach()
    assert scale.shape == (1, k.shape[1], 1, 1) and k.shape[1] > 1
    for h in range(k.shape[1]):
        alone = aiqvit.UniformQuantizer(8)
        alone.calibrate_from(k[:, h])
        torch.testing.assert_close(scale.flatten()[h], alone.scale)
