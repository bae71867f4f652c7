"""Where does the accuracy of a finished quantized ViT go? Quantize as ``dev_probe.py`` does (held-out
TRAIN images, never the test split), then switch one group of activation quantizers off at a time and
report the dev top-1 that this recovers and the agreement with the float model's predictions (at
6 bits the accuracy of a few hundred images moves less than the noise; the agreement does not).
(Weights are frozen to their codes after calibration, so they are not switched off here;
``dev_probe.py --a-bits 8`` measures them.)

    python benchmarks/vision/residual_probe.py --bits 4 --dev-size 500 [--per-block] [--set key=value ...]

``--per-block``: one group per block (every activation quantizer in it) instead of per third of the depth.
"""

from __future__ import annotations

import time

from dev_probe import dev_scores, held_out_setup, probe_parser, quantize_held_out

from aiqvit.modules import AttentionQuantizers
from aiqvit.quantizers import Quantizer


def activation_groups(model, per_block: bool = False) -> dict[str, list[Quantizer]]:
    out: dict[str, list[Quantizer]] = {}
    for i, block in enumerate(model.blocks):
        third = f"block {i}" if per_block else f"blocks {4 * (i // 4)}-{4 * (i // 4) + 3}"
        for role, layer in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                            ("fc2", block.mlp.fc2)):
            out.setdefault(f"in:{role}", []).append(layer.input_quantizer)
            out.setdefault(third, []).append(layer.input_quantizer)
        for m in block.modules():
            if isinstance(m, AttentionQuantizers):
                for op in ("query", "key", "probs", "value"):
                    q = getattr(m, f"{op}_quantizer")
                    out.setdefault(f"attn:{op}", []).append(q)
                    out.setdefault(third, []).append(q)
    out["in:patch_embed"] = [model.patch_embed.proj.input_quantizer]
    out["in:head"] = [model.head.input_quantizer]
    return out


def main() -> None:
    parser = probe_parser(__doc__, dev_size=500)
    parser.add_argument("--per-block", action="store_true", help="one group per block instead of per third")
    args = parser.parse_args()
    train, dev, model, fp_pred, labels = held_out_setup(args)
    start = time.time()
    quantize_held_out(args, train, model)
    print(f"calibrated in {time.time() - start:.0f}s; FP {float((fp_pred == labels).float().mean() * 100):.2f}",
          flush=True)

    def scores() -> tuple[float, float]:
        return dev_scores(model, dev, fp_pred, labels)

    base, base_agree = scores()
    print(f"all quantized: {base:.2f}, agreement {base_agree:.2f}%", flush=True)
    for name, qs in activation_groups(model, args.per_block).items():
        for q in qs:
            q.enabled = False
        acc, agree = scores()
        for q in qs:
            q.enabled = True
        print(f"  float {name:14s} {acc:6.2f} ({acc - base:+.2f}), agreement {agree:6.2f}% ({agree - base_agree:+.2f})",
              flush=True)


if __name__ == "__main__":
    main()
