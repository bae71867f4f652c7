"""Train the full-precision Point Transformer on SyntheticParts (seeded, reproducible).

    python benchmarks/pointcloud/train.py --task cls
    python benchmarks/pointcloud/train.py --task partseg

Writes the fp16 safetensors checkpoint (default: into the package, where the benchmark and the
CLI find it) and a JSON record beside it with the recipe, wall time and test metrics.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch
from aiqvit.io_utils import git_commit, peak_rss_mb, write_json_atomic

from aiqvit_pointcloud.data.synthetic import load_synthetic
from aiqvit_pointcloud.training import TrainRecipe, small_config_for, train_model
from aiqvit_pointcloud.weights import PACKAGED_DIR, checkpoint_filename, save_checkpoint

# Sized for ~10-15 min of one CPU core per model; on a shared machine the wall time is longer
# (the JSON beside each checkpoint records both).
DEFAULT_RECIPES = {
    "cls": TrainRecipe(epochs=6, batch_size=16, lr=2e-3),
    "partseg": TrainRecipe(epochs=4, batch_size=16, lr=2e-3),
}
NUM_POINTS = 512


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_and_save(task: str, output: Path, recipe: TrainRecipe, progress: bool = True, log=print) -> dict:
    train_set = load_synthetic("train", NUM_POINTS)
    test_set = load_synthetic("test", NUM_POINTS)
    config = small_config_for(task, train_set)
    model, history = train_model(task, config, train_set, test_set, recipe, progress=progress, log=log)
    record = {"task": task, "dataset": "SyntheticParts (synthetic)", "train_size": len(train_set),
              "test_size": len(test_set), "config": config.to_dict(), "history": history,
              "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
              "git_commit": git_commit(), "peak_rss_mb": peak_rss_mb(), "cpu_seconds": cpu_seconds(),
              "command": f"python benchmarks/pointcloud/train.py --task {task}"}
    save_checkpoint(model, output, metadata={k: record[k] for k in ("task", "dataset", "train_size", "test_size")}
                    | {"test": history.get("test"), "recipe": recipe.to_dict()})
    write_json_atomic(output.with_suffix(".json"), record)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(DEFAULT_RECIPES), required=True)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, help="checkpoint path (default: the packaged weights folder)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    base = DEFAULT_RECIPES[args.task]
    recipe = TrainRecipe(**{**base.to_dict(), "seed": args.seed, "threads": args.threads,
                            **{k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size,
                                                     lr=args.lr).items() if v is not None}})
    output = args.output or PACKAGED_DIR / checkpoint_filename(args.task)
    record = train_and_save(args.task, output, recipe, progress=not args.no_progress)
    print(json.dumps({"checkpoint": str(output), "test": record["history"].get("test"),
                      "train_seconds": record["history"]["train_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
