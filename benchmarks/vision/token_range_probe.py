"""Class token against patch tokens: the float range of every Linear input of a timm ViT, per block.

A per-tensor activation scale is shared by the class token and the patch tokens. Where their ranges
differ by a large factor, one of them gets a much coarser grid than it needs; since the head reads the
class token only, its grid matters most. Float model, TRAIN images, no quantization.

    python benchmarks/vision/token_range_probe.py --images 32
"""

from __future__ import annotations

import torch
from dev_probe import float_probe_inputs, float_probe_parser


def main() -> None:
    args = float_probe_parser(__doc__, images=32).parse_args()
    model, images = float_probe_inputs(args)
    rows: dict[str, tuple[float, float]] = {}
    handles = []
    for i, block in enumerate(model.blocks):
        for role, layer in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                            ("fc2", block.mlp.fc2)):
            def hook(module, inputs, output, name=f"block {i:2d} {role:4s}"):
                x = inputs[0].detach()
                cls, patches = x[:, 0], x[:, 1:]
                rows[name] = (float(cls.max() - cls.min()), float(patches.max() - patches.min()))
            handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    print(f"{args.task}, {args.images} train images: width of the float range (max - min) of each Linear input")
    print("layer          class token   patch tokens   patch / class")
    for name, (cls_width, patch_width) in rows.items():
        print(f"{name}  {cls_width:11.2f}   {patch_width:12.2f}   {patch_width / max(cls_width, 1e-12):13.2f}")


if __name__ == "__main__":
    main()
