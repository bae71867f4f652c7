"""Does the class token need its own activation scale? Quantize as ``dev_probe.py`` does (held-out TRAIN
images, never the test split), then give the input of every block Linear a second static per-tensor
quantizer for the class token (row 0), calibrated on the calibration images' class-token rows with the
preset's activation init. ``--recalibrate-patches`` also replaces the shared quantizer with one calibrated
on the patch rows only. Prints dev top-1 and agreement with the float model before and after.

    python benchmarks/vision/class_token_scale_probe.py --bits 6 --set reconstruct=false --set lowrank=off
"""

from __future__ import annotations

import torch
from dev_probe import dev_scores, held_out_setup, probe_parser, quantize_held_out

import aiqvit
from aiqvit.quantizers import UniformQuantizer
from aiqvit_vision.data import calibration_batches


class ClassTokenSplit(torch.nn.Module):
    """Row 0 of a ``[batch, tokens, channels]`` input through ``class_q``, the other rows through ``patch_q``."""

    def __init__(self, patch_q: UniformQuantizer, class_q: UniformQuantizer):
        super().__init__()
        self.patch_q, self.class_q = patch_q, class_q

    enabled = property(lambda self: self.patch_q.enabled or self.class_q.enabled)
    calibrating = property(lambda self: self.patch_q.calibrating or self.class_q.calibrating)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            return self.patch_q(x)
        return torch.cat([self.class_q(x[:, :1]), self.patch_q(x[:, 1:])], 1)


def main() -> None:
    p = probe_parser(__doc__, dev_size=1000)
    p.add_argument("--a-bits", type=int, default=None)
    p.add_argument("--recalibrate-patches", action="store_true")
    args = p.parse_args()
    train, dev, model, fp_pred, labels = held_out_setup(args)
    recipe, config, _ = quantize_held_out(args, train, model, args.a_bits)
    batches = calibration_batches(train, recipe.calib_images, recipe.calib_batch, args.seed)

    def score(tag: str) -> None:
        top1, agreement = dev_scores(model, dev, fp_pred, labels)
        print(f"{tag}: dev top-1 {top1:.2f}, agreement {agreement:.2f}%", flush=True)

    print(f"{args.method} W{args.bits}A{args.a_bits or args.bits} {args.set}", flush=True)
    score("one scale per tensor")
    init = config.resolved_act_init()
    fresh = []
    for block in model.blocks:
        for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            class_q = UniformQuantizer(config.a_bits, init=init)
            patch_q = UniformQuantizer(config.a_bits, init=init) if args.recalibrate_patches else layer.input_quantizer
            layer.input_quantizer = ClassTokenSplit(patch_q, class_q)
            fresh += [class_q, patch_q] if args.recalibrate_patches else [class_q]
    with torch.no_grad(), aiqvit.calibration_mode(model, only=fresh):
        for batch in batches:
            model(batch)
    score("class token with its own scale" + (", patch scale recalibrated" if args.recalibrate_patches else ""))


if __name__ == "__main__":
    main()
