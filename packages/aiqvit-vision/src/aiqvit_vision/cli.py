"""``aiqvit-vision``: quantize, evaluate and plot timm vision transformers with AIQViT.

    aiqvit-vision quantize                       # embedded default: ViT-S/14 + Fashion-MNIST, AIQViT W4/A4
    aiqvit-vision quantize --task swin_tiny_fmnist --method repq --w-bits 6 --a-bits 6
    aiqvit-vision quantize --model deit_small_patch16_224 --weights deit_s.safetensors --data ~/imagenet
    aiqvit-vision evaluate --quantized aiqvit-out/    # or, for the float model, the same model options
    aiqvit-vision plots --results benchmarks/results/vision.json --out benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aiqvit import METHODS
from aiqvit.errors import AIQViTError

from . import pipeline, tasks
from .recipes import RECIPES, build_config, get_recipe, parse_overrides

DEFAULT_EVAL_SIZE = 2000  # test images evaluated by default (seeded subset); --eval-size 0 = the whole split


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (default: the embedded ViT-S/14 + Fashion-MNIST task)")
    g.add_argument("--task", choices=sorted(tasks.TASKS), help="a built-in Fashion-MNIST task")
    g.add_argument("--model", help="a timm model name (needs --data)")
    g.add_argument("--weights", help="local weights for --model (.safetensors, or .pth loaded with weights_only)")
    g.add_argument("--pretrained", action="store_true", help="download timm's pretrained weights (needs the hub)")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--img-size", type=int)
    g.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help='extra timm constructor arguments for --model, e.g. \'{"depth": 6}\'')
    g.add_argument("--data", help="ImageFolder root with train/ (calibration) and val/ (evaluation)")
    g.add_argument("--fmnist-root", help="directory of the Fashion-MNIST IDX .gz files (default: Debian's)")
    g.add_argument("--download-data", action="store_true",
                   help="download Fashion-MNIST with torchvision when no local copy is found (needs internet)")
    g.add_argument("--eval-size", type=int, default=DEFAULT_EVAL_SIZE,
                   help=f"seeded test subset to evaluate (default {DEFAULT_EVAL_SIZE}; 0 = the whole test split)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-progress", action="store_true")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _spec(args) -> pipeline.ModelSpec:
    task = args.task if (args.task or args.model) else tasks.DEFAULT_TASK
    return pipeline.ModelSpec(task=task, model=args.model, weights=args.weights, pretrained=args.pretrained,
                              num_classes=args.num_classes, img_size=args.img_size,
                              model_kwargs=args.model_kwargs, data=args.data,
                              fmnist_root=args.fmnist_root, download=args.download_data).validate()


def _eval_size(args):
    if args.eval_size < 0:
        raise AIQViTError(f"--eval-size must be >= 0, got {args.eval_size}")
    return args.eval_size or None


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def cmd_quantize(args) -> int:
    spec = _spec(args)
    recipe = get_recipe(args.recipe)
    config = build_config(args.method, args.w_bits, args.a_bits, recipe, args.seed, parse_overrides(args.set))
    progress = not args.no_progress
    out_dir = Path(args.output or f"aiqvit-out/{spec.label}-{args.method}-w{args.w_bits}a{args.a_bits}")
    eval_size = _eval_size(args)

    t0 = time.perf_counter()
    model, train, test = pipeline.build(spec)
    float_bytes = pipeline.float_size_bytes(model)
    fp = None
    if not args.skip_fp_eval:
        fp = pipeline.accuracy(model, test, eval_size, desc="evaluate FP", progress=progress, device=args.device)
    report, calib_s = pipeline.quantize_model(model, train, config, recipe, args.seed, args.calib_size, progress)
    q = pipeline.accuracy(model, test, eval_size, desc="evaluate quantized", progress=progress, device=args.device)
    run = {"method": args.method, "w_bits": args.w_bits, "a_bits": args.a_bits, "recipe": recipe.name,
           "seed": args.seed, "calib_images": args.calib_size or recipe.calib_images,
           "overrides": parse_overrides(args.set), "config": config.to_dict(), "eval_size": q["n"],
           "fp_top1": fp["top1"] if fp else None, "quant_top1": q["top1"], "quant_top5": q["top5"],
           "calib_seconds": round(calib_s, 1), "ranks": report.ranks, "dfq_intervals": report.dfq_intervals}
    pipeline.save_run(pipeline.to_device(model, "cpu"), out_dir, spec, run)
    saved = pipeline.dir_size(out_dir)
    print(f"\n{spec.label}: {args.method} W{args.w_bits}/A{args.a_bits} ({recipe.name} recipe, "
          f"{run['calib_images']} calibration images from the train split, seed {args.seed})")
    print(f"  top-1 on {q['n']} test images: FP {fp['top1']:.2f}%  quantized {q['top1']:.2f}%" if fp else
          f"  top-1 on {q['n']} test images: quantized {q['top1']:.2f}%")
    print(f"  size: float {_mib(float_bytes)}  quantized {_mib(saved)} ({out_dir})")
    print(f"  time: calibration {calib_s:.0f} s, total {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_evaluate(args) -> int:
    progress = not args.no_progress
    eval_size = _eval_size(args)
    if args.quantized:
        model, spec, run, (_, test) = pipeline.load_run(args.quantized, args.fmnist_root)
        what = f"{spec.label} {run['method']} W{run['w_bits']}/A{run['a_bits']} ({args.quantized})"
    else:
        spec = _spec(args)
        model, _, test = pipeline.build(spec)
        what = f"{spec.label} FP"
    result = pipeline.accuracy(model, test, eval_size, desc="evaluate", progress=progress, device=args.device)
    print(f"{what}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  on {result['n']} test images")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_plots(args) -> int:
    from .plots import plots_from_results

    written = plots_from_results(args.results, args.out)
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiqvit-vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model and report FP vs quantized accuracy")
    _model_options(q)
    q.add_argument("--method", choices=METHODS, default="aiqvit")
    q.add_argument("--w-bits", type=int, default=4)
    q.add_argument("--a-bits", type=int, default=4)
    q.add_argument("--recipe", choices=sorted(RECIPES), default="fast")
    q.add_argument("--calib-size", type=int, default=None, help="calibration images (default: the recipe's)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="QuantConfig override, repeatable: lowrank=fixed, lowrank_rank=20, softmax_quantizer=log2, "
                        "reconstruction.curriculum=true (the fast recipe turns it off)")
    q.add_argument("--output", "-o", help="output directory (default aiqvit-out/<model>-<method>-w<W>a<A>)")
    q.add_argument("--skip-fp-eval", action="store_true", help="do not evaluate the float model first")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("evaluate", help="accuracy of the float model, or of a saved quantized one")
    _model_options(e)
    e.add_argument("--quantized", help="an output directory of 'aiqvit-vision quantize'")
    e.add_argument("--json", action="store_true", help="also print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plots", help="draw the benchmark plots from a results JSON")
    pl.add_argument("--results", default="benchmarks/results/vision.json")
    pl.add_argument("--out", default="benchmarks/results")
    pl.set_defaults(func=cmd_plots)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (AIQViTError, FileNotFoundError) as e:
        print(f"aiqvit-vision: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
