"""Shared builders for the tests that need mmdet (imported inside those tests only)."""

from __future__ import annotations

import torch
from torch import nn

from aiqvit_detection.models import EMBEDDED_MODELS, build_detector, load_config


def mini_config(name: str = "mask-rcnn-swin-t-mini"):
    return load_config(EMBEDDED_MODELS[name].config_path)


def random_detector(name: str = "mask-rcnn-swin-t-mini", seed: int = 0):
    """The embedded architecture with seeded random weights (LayerNorm affines and the relative
    position bias perturbed, so that reparameterization and the bias table matter)."""
    torch.manual_seed(seed)
    cfg = mini_config(name)
    model = build_detector(cfg, init_weights=True)
    from mmdet.models.backbones.swin import WindowMSA

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.mul_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, WindowMSA):
                table = m.relative_position_bias_table
                table.copy_(0.5 * torch.randn(table.shape, generator=g))
    return cfg, model.eval()


def image_batch(sizes, seed: int = 0) -> dict:
    """A raw mmdet batch (uint8 images) of the given (H, W) sizes, no annotations."""
    from mmdet.structures import DetDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i, (h, w) in enumerate(sizes):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        s = DetDataSample()
        s.set_metainfo(dict(img_id=i, img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        samples.append(s)
    return {"inputs": inputs, "data_samples": samples}
