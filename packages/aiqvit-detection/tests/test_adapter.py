"""The Swin adapter: float equivalence with quantizers off, units, scopes, padding under reparameterization."""

import copy

import pytest
import torch

import aiqvit

pytestmark = pytest.mark.mmdet


@pytest.fixture(scope="module")
def detector():
    from mmdet_helpers import random_detector

    return random_detector(seed=1)[1]


def _feats(model, batch):
    with torch.no_grad():
        return model.extract_feat(model.data_preprocessor(batch, False)["inputs"])


def _predict(model, batch):
    with torch.no_grad():
        return model.test_step(batch)


def _same_predictions(a, b):
    for pa, pb in zip(a, b):
        ia, ib = pa.pred_instances, pb.pred_instances
        assert torch.equal(ia.bboxes, ib.bboxes) and torch.equal(ia.scores, ib.scores)
        assert torch.equal(ia.labels, ib.labels) and torch.equal(ia.masks, ib.masks)


@pytest.mark.parametrize("scope", ["backbone", "full"])
def test_quantizers_off_equals_mmdet(detector, scope):
    from mmdet_helpers import image_batch

    from aiqvit_detection.adapter import QuantWindowMSA, adapter_for_scope

    # the batch is padded to 160 x 160: token grids 40, 20, 10, 5, so stage 4 pads its 4x4 windows
    batch = image_batch([(160, 160), (128, 96)])
    ref_feats, ref_pred = _feats(detector, batch), _predict(detector, batch)
    model = copy.deepcopy(detector)
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("aiqvit", 4, 4), adapter=adapter_for_scope(scope))
    assert sum(isinstance(m, QuantWindowMSA) for m in model.modules()) == 8
    with aiqvit.quantization_disabled(model):
        for a, b in zip(_feats(model, batch), ref_feats):
            assert torch.equal(a, b)
        _same_predictions(_predict(model, batch), ref_pred)


def test_units_are_swin_blocks_in_order_and_scope_selects_layers(detector):
    from mmdet.models.backbones.swin import SwinBlock

    from aiqvit_detection.adapter import SwinDetectorAdapter, SwinDetectorFullAdapter

    units = SwinDetectorAdapter().units(copy.deepcopy(detector))
    assert [n for n, _ in units] == [f"backbone.stages.{s}.blocks.{b}" for s in range(4) for b in range(2)]
    assert all(isinstance(m, SwinBlock) for _, m in units)
    back = {n for n, _ in SwinDetectorAdapter().quantizable_layers(detector)}
    full = {n for n, _ in SwinDetectorFullAdapter().quantizable_layers(detector)}
    assert back and all(n.startswith("backbone.") for n in back)
    assert back < full
    assert any(n.startswith("neck.") for n in full) and any(n.startswith("roi_head.") for n in full)
    assert any(n.startswith("rpn_head.") for n in full)
    # every block contributes qkv, proj, fc1, fc2; plus patch embedding and 3 patch mergings
    assert len(back) == 8 * 4 + 1 + 3
    assert aiqvit.find_adapter(detector).name == "mmdet-swin"


def test_layernorm_pairs_cover_qkv_fc1_and_patch_merging(detector):
    from torch import nn

    from aiqvit_detection.adapter import SwinDetectorAdapter

    pairs = SwinDetectorAdapter().layernorm_consumers(detector)
    assert len(pairs) == 8 * 2 + 3
    assert all(isinstance(norm, nn.LayerNorm) and len(lins) == 1 and isinstance(lins[0], nn.Linear)
               for norm, lins in pairs)
    for norm, (lin,) in pairs:
        assert lin.in_features == norm.normalized_shape[0]


def test_reparameterization_is_exact_with_window_padding(detector):
    """Folding post-LN scales must not change the float model, even where windows are padded;
    with mmdet's zero padding it would."""
    from mmdet.models.backbones.swin import ShiftWindowMSA
    from mmdet_helpers import image_batch

    from aiqvit.api import apply_reparameterization, calibrate_activations
    from aiqvit_detection.adapter import ReparamSafeShiftWindowMSA, SwinDetectorAdapter

    batch = image_batch([(160, 160)], seed=3)  # stage grids 40, 20, 10, 5: padding at stage 4
    ref = _feats(detector, batch)
    model = copy.deepcopy(detector)
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("repq", 4, 4), adapter=SwinDetectorAdapter())
    calibrate_activations(model, [image_batch([(160, 160)], seed=s) for s in range(3)], show=False)
    apply_reparameterization(model)
    with aiqvit.quantization_disabled(model):
        out = _feats(model, batch)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        for m in model.modules():  # back to mmdet's zero padding
            if isinstance(m, ReparamSafeShiftWindowMSA):
                m.__class__ = ShiftWindowMSA
        broken = _feats(model, batch)
    assert (broken[3] - ref[3]).abs().max() > 1e-2


def test_run_accepts_raw_and_preprocessed_batches(detector):
    from mmdet_helpers import image_batch

    from aiqvit_detection.adapter import SwinDetectorAdapter, SwinDetectorFullAdapter

    batch = image_batch([(128, 128)])
    raw = SwinDetectorAdapter().run(detector, batch)
    pre = SwinDetectorAdapter().run(detector, detector.data_preprocessor(batch, False))
    for a, b in zip(raw, pre):
        assert torch.equal(a, b)
    preds = SwinDetectorFullAdapter().run(detector, batch)
    assert len(preds) == 1 and hasattr(preds[0], "pred_instances")
    with pytest.raises(aiqvit.CalibrationDataError, match="mmdet batch"):
        SwinDetectorAdapter().run(detector, torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("scope,method", [("backbone", "aiqvit"), ("full", "minmax")])
def test_quantize_changes_outputs_a_little_and_roundtrips(detector, scope, method, tmp_path):
    from mmdet_helpers import image_batch, mini_config

    from aiqvit_detection.quantization import (
        load_quantized_detector,
        quant_config,
        quantize_detector,
        save_quantized_detector,
    )

    calib = [image_batch([(128, 128)], seed=10 + i) for i in range(3)]
    batch = image_batch([(128, 128)], seed=99)
    model = copy.deepcopy(detector)
    config = quant_config(method, 8, 8, recon_iters=2, search_iters=2)
    report = quantize_detector(model, calib, config, scope=scope, progress=False)
    if method == "aiqvit":  # every Swin block reconstructed, every window attention with a DFQ interval
        assert len(report.unit_losses) == 8 and len(report.dfq_intervals) == 8
    q, ref = _feats(model, batch), _feats(detector, batch)
    rel = [float((a - b).norm() / b.norm()) for a, b in zip(q, ref)]
    assert all(0 < r < 0.2 for r in rel), rel
    save_quantized_detector(model, mini_config(), tmp_path / "q")
    _, loaded, meta = load_quantized_detector(tmp_path / "q")
    assert meta["adapter"] == ("mmdet-swin" if scope == "backbone" else "mmdet-swin-full")
    for a, b in zip(_feats(loaded, batch), q):
        assert torch.equal(a, b)
    _same_predictions(_predict(loaded, batch), _predict(model, batch))


def test_key_centering_keeps_detector_outputs(detector):
    from mmdet_helpers import image_batch

    from aiqvit.centering import center_attention_keys, key_ranges
    from aiqvit_detection.adapter import SwinDetectorAdapter

    model = copy.deepcopy(detector)
    adapter = SwinDetectorAdapter()
    assert len(adapter.key_projections(model)) == 8
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a large shared key offset, invisible to the window Softmax
        for qkv, keys in adapter.key_projections(model):
            qkv.bias[keys] += 5 * torch.randn(keys.stop - keys.start, generator=g)
    batch = image_batch([(160, 160)])
    ref = _feats(model, batch)
    assert center_attention_keys(model, adapter, [batch]) == 8
    for a, b in zip(_feats(model, batch), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    _, ranges = key_ranges(model, adapter, [batch])
    assert all(float((lo + hi).abs().max()) < 1e-3 for lo, hi in ranges)


def test_attention_balancing_keeps_detector_outputs(detector):
    from mmdet_helpers import image_batch

    from aiqvit.balancing import balance_attention
    from aiqvit_detection.adapter import SwinDetectorAdapter

    model = copy.deepcopy(detector)
    adapter = SwinDetectorAdapter()
    projections = adapter.attention_projections(model)
    assert len(projections) == 8 and all(p.output is not None for p in projections)
    batch = image_batch([(160, 160)])
    ref = _feats(model, batch)
    before = copy.deepcopy(model.state_dict())
    assert balance_attention(model, adapter, [batch], "qkv") == 8
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for a, b in zip(_feats(model, batch), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_per_head_scales_follow_the_backbone_heads(detector):
    """attention_scales="head": each WindowMSA's key quantizer holds one range per head, the min-max of
    that head's keys (attention_head_axis is the head axis of the operands)."""
    from mmdet_helpers import image_batch

    from aiqvit.api import calibrate_activations
    from aiqvit_detection.adapter import QuantWindowMSA, SwinDetectorAdapter

    model = copy.deepcopy(detector)
    aiqvit.prepare(model, aiqvit.QuantConfig.for_method("minmax", 8, 8, attention_scales="head"),
                   adapter=SwinDetectorAdapter())
    last = [m for m in model.modules() if isinstance(m, QuantWindowMSA)][-1]
    keys = []
    last.matmul_quantizers.key_quantizer.register_forward_hook(lambda _m, args, _out: keys.append(args[0].detach()))
    calibrate_activations(model, [image_batch([(160, 160)])], show=False)
    k, scale = keys[0], last.matmul_quantizers.key_quantizer.scale.detach()
    assert scale.shape == (1, last.num_heads, 1, 1) and k.shape[1] == last.num_heads > 1
    for h in range(last.num_heads):
        alone = aiqvit.UniformQuantizer(8)
        alone.calibrate_from(k[:, h])
        torch.testing.assert_close(scale.flatten()[h], alone.scale)
