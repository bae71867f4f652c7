"""Held-out development score for choosing point-cloud settings without touching the test split.

The dev set is freshly generated SyntheticParts objects from the TRAIN distribution with another
generator seed (``--dev-seed``, default 1): the float models were trained on seed 0's objects, and the
benchmark's test split is never read. Calibration is the benchmark's (512 train shapes, seed 0).

    python benchmarks/pointcloud/dev_probe.py --task cls --method aiqvit --bits 3
    python benchmarks/pointcloud/dev_probe.py --task cls --method aiqvit --bits 3 --set softmax_quantizer=uniform
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import aiqvit
import torch

from aiqvit_pointcloud import PointTransformerAdapter, calibration_batches, evaluate
from aiqvit_pointcloud.data.synthetic import load_synthetic
from aiqvit_pointcloud.recipes import RECIPES, parse_overrides, quant_config

sys.path.insert(0, str(Path(__file__).parent))
from run import TASK_METRICS, fp_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASK_METRICS), default="cls")
    p.add_argument("--method", default="aiqvit", help="a preset name, or fp")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--dev-size", type=int, default=600)
    p.add_argument("--dev-seed", type=int, default=1, help="generator seed of the dev objects (training used 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (dotted keys reach reconstruction./search.)")
    args = p.parse_args(argv)
    if args.dev_seed == 0:
        p.error("--dev-seed 0 regenerates the objects the float models were trained on")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)

    model, _ = fp_model(args.task)
    n = model.config.num_points
    dev_set = load_synthetic("train", n, size=args.dev_size, seed=args.dev_seed, train=False)
    t0 = time.time()
    if args.method != "fp":
        train_set = load_synthetic("train", n, train=False)
        batches = calibration_batches(train_set, args.task, args.calib_size, batch_size=32, seed=args.seed)
        config = quant_config(args.method, args.bits, args.bits, args.recipe, args.seed, **overrides)
        aiqvit.quantize(model, batches, config, adapter=PointTransformerAdapter(), progress_bar=False)
    metrics = evaluate(model, dev_set, args.task, progress=False)
    label = "fp" if args.method == "fp" else f"{args.method} W{args.bits}/A{args.bits}"
    sets = " ".join(args.set)
    print(f"dev {args.task} {label} {sets}: " + ", ".join(f"{m} {metrics[m]:.2f}" for m in TASK_METRICS[args.task])
          + f" ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
