"""How unevenly a ViT's block outputs spread their energy over channels (float model, TRAIN images).

The plain reconstruction loss ``||B_q(x) - B_fp(x)||`` counts every channel of a block's output alike,
so a few high-energy channels of the residual stream dominate it. Printed per block: the median
per-channel RMS, the five largest, the share of the output's squared norm they hold, and token norms.
Measured for the Fisher-weighted loss (docs/METHOD-NOTES.md, "Fisher-weighted reconstruction loss").

    python benchmarks/vision/block_output_energy_probe.py --images 16
"""

from __future__ import annotations

import torch
from dev_probe import float_probe_inputs, float_probe_parser


def main() -> None:
    p = float_probe_parser(__doc__, images=16)
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args()
    model, images = float_probe_inputs(args)
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda m, a, out: outputs.append(out.detach())) for block in model.blocks]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    for i, out in enumerate(outputs):
        rms = out.reshape(-1, out.shape[-1]).pow(2).mean(0).sqrt().sort(descending=True).values
        share = float(rms[: args.top].pow(2).sum() / rms.pow(2).sum())
        norms = out.norm(dim=-1)
        print(f"block {i:2d}: channel RMS median {float(rms.median()):.2f}, top {args.top} "
              f"{[round(v, 1) for v in rms[: args.top].tolist()]} ({share:.0%} of the energy); "
              f"token norm median {float(norms.median()):.1f}, max {float(norms.max()):.1f}, "
              f"class token {float(norms[:, 0].mean()):.1f}")


if __name__ == "__main__":
    main()
