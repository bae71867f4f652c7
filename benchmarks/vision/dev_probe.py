"""Development probe on held-out TRAIN images (never the test split): quantize a task's model with one
method and recipe, then report top-1 on ``--dev-size`` train images that neither the calibration set
nor the task's head training saw, and the agreement with the float model's predictions.

Used to choose defaults (the test split is only for the recorded benchmark):

    python benchmarks/vision/dev_probe.py --method aiqvit --bits 4 --set channelwise_inputs=all
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import Subset

import aiqvit
from aiqvit_vision import pipeline, tasks
from aiqvit_vision.data import loader
from aiqvit_vision.recipes import build_config, get_recipe, parse_overrides


@torch.no_grad()
def predictions(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = [], []
    for x, y in loader(dataset, 100):
        preds.append(model(x).argmax(-1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def probe_parser(description: str, dev_size: int) -> argparse.ArgumentParser:
    """The options every dev probe shares (task, method, bits, recipe, held-out size, seed, overrides)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="vit_s14_fmnist")
    p.add_argument("--method", default="aiqvit")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--dev-size", type=int, default=dev_size)
    p.add_argument("--seed", type=int, default=0, help="the config's seed (calibration images stay the same)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=None)
    return p


def float_probe_parser(description: str, images: int) -> argparse.ArgumentParser:
    """The options of the float-model probes (task, how many train images, threads)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="vit_s14_fmnist")
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--threads", type=int, default=None)
    return p


def float_probe_inputs(args) -> tuple[torch.nn.Module, torch.Tensor]:
    """The task's float model and ``args.images`` seeded TRAIN images of it, stacked."""
    if args.threads:
        torch.set_num_threads(args.threads)
    task = tasks.get_task(args.task)
    train = task.dataset("train")
    model = task.build().eval()
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.images].tolist()
    return model, torch.stack([train[i][0] for i in index])


def held_out_setup(args):
    """``(train, dev, float model, its dev predictions, dev labels)``; ``dev`` is the tail of the seeded
    permutation that draws calibration images and the head's training subset."""
    if args.threads:
        torch.set_num_threads(args.threads)
    task = tasks.get_task(args.task)
    train = task.dataset("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    dev = Subset(train, sorted(perm[-args.dev_size:].tolist()))
    model = task.build()
    fp_pred, labels = predictions(model, dev)
    return train, dev, model, fp_pred, labels


def dev_scores(model, dev, fp_pred: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(top-1 on dev, agreement with the float model's predictions fp_pred)``, in percent."""
    pred, _ = predictions(model, dev)
    return float((pred == labels).float().mean() * 100), float((pred == fp_pred).float().mean() * 100)


def quantize_held_out(args, train, model, a_bits: int | None = None, **pipeline_options):
    """Quantize ``model`` in place with the method, bits (activations: ``a_bits``, default ``args.bits``),
    recipe, seed and ``--set`` overrides of ``args``, calibrating on ``train``; ``(recipe, config, report)``."""
    recipe = get_recipe(args.recipe)
    config = build_config(args.method, args.bits, a_bits or args.bits, recipe, args.seed, parse_overrides(args.set))
    report, _ = pipeline.quantize_model(model, train, config, recipe, progress=False, **pipeline_options)
    return recipe, config, report


def main() -> None:
    p = probe_parser(__doc__, dev_size=1000)
    p.add_argument("--a-bits", type=int, default=None, help="activation bits (default: --bits)")
    p.add_argument("--calib-images", type=int, default=None, help="calibration images (default: the recipe's)")
    p.add_argument("--adapter", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the model family's adapter, e.g. head_unit=false, class_token_view=false, "
                        "embed_unit=true")
    args = p.parse_args()
    train, dev, model, fp_pred, labels = held_out_setup(args)
    a_bits = args.a_bits or args.bits
    family = type(aiqvit.find_adapter(model))
    try:
        adapter = family(**parse_overrides(args.adapter))
    except TypeError as e:
        raise SystemExit(f"--adapter {args.adapter}: not an option of {family.__name__} ({e})") from e
    start = time.time()
    recipe, _, report = quantize_held_out(args, train, model, a_bits, calib_images=args.calib_images, adapter=adapter)
    seconds = time.time() - start
    fp_acc = float((fp_pred == labels).float().mean() * 100)
    q_acc, agree = dev_scores(model, dev, fp_pred, labels)
    strengths = sorted(set(report.reparam_strengths.values())) if report.reparam_strengths else []
    calib = args.calib_images or recipe.calib_images
    print(f"{args.task} {args.method} W{args.bits}A{a_bits} {args.recipe} calib={calib} seed={args.seed} {args.set}"
          f"{' adapter ' + str(args.adapter) if args.adapter else ''}: "
          f"dev top-1 {q_acc:.2f} "
          f"(FP {fp_acc:.2f}), agreement {agree:.2f}%, calib {seconds:.0f}s, strengths {strengths}"
          + (f", network loss {report.network_loss[0]:.3f} -> {report.network_loss[1]:.3f}" if report.network_loss else ""),
          flush=True)


if __name__ == "__main__":
    main()
