"""Attention-operand probe of the real ViT-S/14 (float model, no reconstruction): how much each
post-Softmax quantizer and the key quantizer alone disturb the attention, block by block.

* ``probs``: relative squared error of ``Q(P) @ V`` against ``P @ V`` for the uniform, log2 and
  log-sqrt(2) quantizers and for DFQ with uniform or log-spaced levels, each DFQ initialized with the
  plain MSE objective or the row objective (``DynamicFocusingQuantizer(init=...)``).
* ``keys``: mean L1 distance between the rows of ``softmax(q k^T)`` and ``softmax(q Q(k)^T)`` with a
  per-tensor MSE-clipped key quantizer, before and after key centering (``aiqvit.centering``).

Calibration-style data: N Fashion-MNIST TRAIN images at 112 px (no labels, no test split).

    python benchmarks/vision/attention_probe.py [BITS] [N_IMAGES]
"""

from __future__ import annotations

import sys

import torch

import aiqvit.primitives as P
from aiqvit.quantizers import DynamicFocusingQuantizer, LogQuantizer, UniformQuantizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from feature_probe import backbone, probe_data  # noqa: E402


def qkv_per_block(model, images):
    caps = {}
    handles = [b.attn.qkv.register_forward_hook(lambda m, a, o, i=i: caps.__setitem__(i, o))
               for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    heads, dim = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    return [caps[i].reshape(*caps[i].shape[:2], 3, heads, dim).permute(2, 0, 3, 1, 4) for i in sorted(caps)]


def calibrated(q, x):
    q.calibrating = True
    q(x)
    q.calibrating = False
    q.finish_calibration()
    return q


def mse_clipped(x, bits):
    q = UniformQuantizer(bits, init="mse")
    return calibrated(q, x)(x)


@torch.no_grad()
def main(argv):
    bits = int(argv[0]) if argv else 4
    n = int(argv[1]) if len(argv) > 1 else 16
    torch.set_num_threads(2)
    images, _, _ = probe_data(n)
    model = backbone()
    print(f"W-/A{bits}, {n} train images; probs: rel. error of P @ V; keys: mean row L1 of softmax(q k^T)")
    for i, (q, k, v) in enumerate(qkv_per_block(model, images)):
        q = q * model.blocks[i].attn.scale
        p = (q @ k.transpose(-2, -1)).softmax(-1)
        out = p @ v

        def err(pq, v=v, out=out):
            return float((pq @ v - out).pow(2).sum() / out.pow(2).sum())

        row = {"uniform": err(calibrated(UniformQuantizer(bits), p)(p)),
               "log2": err(calibrated(LogQuantizer(bits, "2"), p)(p)),
               "logsqrt2": err(calibrated(LogQuantizer(bits, "sqrt2"), p)(p))}
        for spacing in P.DFQ_SPACINGS:
            for init in DynamicFocusingQuantizer.INIT_OBJECTIVES:
                row[f"dfq-{spacing}-{init}"] = err(calibrated(DynamicFocusingQuantizer(bits, spacing=spacing,
                                                                                      init=init), p)(p))
        center = (k.amax((0, 2), keepdim=True) + k.amin((0, 2), keepdim=True)) / 2

        def key_l1(keys, q=q, p=p):
            return float(((q @ mse_clipped(keys, bits).transpose(-2, -1)).softmax(-1) - p).abs().sum(-1).mean())

        row["keys"], row["keys-centered"] = key_l1(k), key_l1(k - center)
        print(f"block {i:2d} " + " ".join(f"{name} {value:.4f}" for name, value in row.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
