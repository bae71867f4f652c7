"""Empirical bias correction after quantization (Nagel et al., 2019), measured on held-out TRAIN images:
quantize as ``dev_probe.py`` does, then shift the bias of each quantized Linear by the difference between
the float model's and the quantized model's mean output per channel on the calibration images.

``--mode sequential`` (default) corrects one layer at a time in forward order, each after the corrections
before it; ``--mode joint`` corrects every layer from one pass, ``--passes`` times. Layers whose float
output the preset changes on purpose (the ``qkv`` projections, rescaled by attention balancing) are
left alone.

    python benchmarks/vision/bias_correction_probe.py --bits 6 --set reconstruct=false --set lowrank=off
"""

from __future__ import annotations

import torch
from dev_probe import dev_scores, held_out_setup, probe_parser, quantize_held_out

from aiqvit.modules import QuantLinear
from aiqvit_vision import tasks
from aiqvit_vision.data import calibration_batches


@torch.no_grad()
def mean_outputs(model, layers: dict[str, torch.nn.Module], batches: list) -> dict[str, torch.Tensor]:
    """Mean output per channel (over images and tokens) of each of ``layers``, keyed by name."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, layer in layers.items():
        def hook(module, args, out, name=name):
            rows = out.detach().reshape(-1, out.shape[-1]).double()
            sums[name] = sums.get(name, 0) + rows.sum(0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
        handles.append(layer.register_forward_hook(hook))
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in layers}


def main() -> None:
    p = probe_parser(__doc__, dev_size=1000)
    p.add_argument("--a-bits", type=int, default=None)
    p.add_argument("--mode", choices=("sequential", "joint"), default="sequential")
    p.add_argument("--passes", type=int, default=3, help="joint mode: correction passes")
    args = p.parse_args()
    train, dev, model, fp_pred, labels = held_out_setup(args)
    float_model = tasks.get_task(args.task).build().eval()
    recipe, _, _ = quantize_held_out(args, train, model, args.a_bits)
    batches = calibration_batches(train, recipe.calib_images, recipe.calib_batch, args.seed)

    def score(tag: str) -> None:
        top1, agreement = dev_scores(model, dev, fp_pred, labels)
        print(f"{tag}: dev top-1 {top1:.2f}, agreement {agreement:.2f}%", flush=True)

    balanced = {id(m.attn.qkv) for m in model.modules() if hasattr(m, "attn") and hasattr(m.attn, "qkv")}
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear) and m.bias is not None and id(m) not in balanced]
    layers = {n: model.get_submodule(n) for n in names}
    reference = mean_outputs(float_model, {n: float_model.get_submodule(n) for n in names}, batches)
    print(f"{args.method} W{args.bits}A{args.a_bits or args.bits} {args.set}: correcting {len(names)} layers "
          f"({args.mode})", flush=True)
    score("before")
    if args.mode == "sequential":
        for name in names:
            shift = reference[name] - mean_outputs(model, {name: layers[name]}, batches)[name]
            layers[name].bias.data += shift
    else:
        for k in range(args.passes):
            current = mean_outputs(model, layers, batches)
            for name in names:
                layers[name].bias.data += reference[name] - current[name]
            score(f"after pass {k + 1}")
    if args.mode == "sequential":
        score("after")


if __name__ == "__main__":
    main()
