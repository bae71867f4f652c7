"""How the AdaRound settings behave on one synthetic layer (``aiqvit.toy.make_weight_rounding_toy``:
3-bit per-channel weights, correlated inputs): for each regularizer weight, learning rate and number
of iterations, the layer's output error with the learned hard rounding relative to nearest rounding,
and the share of rounding variables still fractional (``0.01 < h < 0.99``) at the end. GPTQ on the
same layer for reference. Used to choose ``adaround_reg`` / ``adaround_lr`` (docs/METHOD-NOTES.md):

    python benchmarks/core/adaround_layer_probe.py
"""

from __future__ import annotations

import argparse

import torch

import aiqvit
from aiqvit.adaround import AdaRound
from aiqvit.gptq import gptq_round
from aiqvit.primitives import rectified_sigmoid
from aiqvit.reconstruction import reconstruct_unit
from aiqvit.toy import make_weight_rounding_toy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--reg", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("iters    lr    reg   error vs nearest   fractional h")
    for iters in args.iters:
        for lr in args.lr:
            for reg in args.reg:
                unit, data, _, _ = make_weight_rounding_toy()
                cfg = aiqvit.ReconstructionConfig(iters=iters, batch_size=32, curriculum=False)
                rounding = AdaRound(unit, reg=reg, lr=lr)
                before, after = reconstruct_unit(unit, data, cfg, torch.Generator().manual_seed(0), rounding=rounding)
                h = rectified_sigmoid(unit.layer.weight_quantizer.rounding.detach())
                fractional = float(((h > 0.01) & (h < 0.99)).float().mean())
                print(f"{iters:5d} {lr:5.2f} {reg:6.1f}   {after / before:16.3f}   {fractional:12.3f}")
    unit, _, x, linear = make_weight_rounding_toy()
    nearest = unit.layer.weight_quantizer(linear.weight.detach())
    levels = gptq_round(linear.weight.detach(), x.T @ x, unit.layer.weight_quantizer)
    with torch.no_grad():
        ratio = float((x @ (levels - linear.weight).T).norm(dim=1).mean() / (x @ (nearest - linear.weight).T).norm(dim=1).mean())
    print(f"GPTQ on the same layer: {ratio:.3f} of nearest rounding's error")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
