"""The packaged real-path configs (mmdet's Mask R-CNN Swin-T/S, our Cascade Swin-T/S) build and adapt."""

import copy

import pytest
import torch

import aiqvit

pytestmark = pytest.mark.mmdet

CONFIGS = {  # config stem -> (detector class name, Swin blocks)
    "mask-rcnn_swin-t-p4-w7_fpn_1x_coco": ("MaskRCNN", 12),
    "mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco": ("MaskRCNN", 24),
    "cascade-mask-rcnn_swin-t-p4-w7_fpn_coco": ("CascadeRCNN", 12),
    "cascade-mask-rcnn_swin-s-p4-w7_fpn_coco": ("CascadeRCNN", 24),
}


@pytest.mark.parametrize("stem", sorted(CONFIGS))
def test_config_builds_a_swin_detector_the_adapter_handles(stem):
    from aiqvit_detection.adapter import SwinDetectorAdapter
    from aiqvit_detection.models import build_detector, load_config

    cfg = load_config(stem)
    assert cfg.model.backbone.init_cfg is None  # nothing is downloaded at build time
    model = build_detector(cfg)
    assert type(model).__name__ == CONFIGS[stem][0]
    assert aiqvit.find_adapter(model).name == "mmdet-swin"
    assert len(SwinDetectorAdapter().units(model)) == CONFIGS[stem][1]
    assert model.backbone.stages[0].blocks[0].attn.window_size == 7


@pytest.mark.parametrize("stem", ["mask-rcnn_swin-t-p4-w7_fpn_1x_coco", "cascade-mask-rcnn_swin-t-p4-w7_fpn_coco"])
def test_real_size_swin_t_with_quantizers_off_equals_mmdet(stem):
    from mmdet_helpers import image_batch

    from aiqvit_detection.adapter import SwinDetectorAdapter
    from aiqvit_detection.models import build_detector, load_config

    torch.manual_seed(0)
    model = build_detector(load_config(stem))
    batch = image_batch([(96, 128)])  # 7x7 windows over 24x32, 12x16, 6x8, 3x4 token grids: every stage pads
    with torch.no_grad():
        ref = model.extract_feat(model.data_preprocessor(batch, False)["inputs"])
    q = copy.deepcopy(model)
    # minmax: the cheapest weight-quantizer init for a 28M-parameter backbone; quantizers are off anyway
    aiqvit.prepare(q, aiqvit.QuantConfig.for_method("minmax", 4, 4), adapter=SwinDetectorAdapter())
    with aiqvit.quantization_disabled(q), torch.no_grad():
        out = q.extract_feat(q.data_preprocessor(batch, False)["inputs"])
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
