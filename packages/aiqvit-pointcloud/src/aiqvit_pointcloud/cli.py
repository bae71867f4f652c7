"""``aiqvit-pointcloud``: quantize and evaluate Point Transformer networks.

    aiqvit-pointcloud quantize --task cls --w-bits 4 --a-bits 4 --method aiqvit --output runs/cls-w4a4
    aiqvit-pointcloud evaluate --task cls --quantized runs/cls-w4a4
    aiqvit-pointcloud evaluate --task partseg                       # the float model

By default the float model is the packaged checkpoint trained on SyntheticParts (synthetic data)
and calibration/evaluation use SyntheticParts; ``--checkpoint`` and ``--data``/``--data-root``
switch to your own model and ModelNet40 / ShapeNetPart release.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import aiqvit
import torch
from aiqvit.errors import AIQViTError, CheckpointError
from aiqvit.io_utils import write_json_atomic

from .adapter import PointTransformerAdapter
from .data.common import calibration_batches
from .data.sources import SOURCES, open_dataset
from .device import to_device
from .evaluation import evaluate
from .models import PointTransformerConfig, build_model
from .recipes import RECIPES, parse_overrides, quant_config
from .weights import load_checkpoint, pretrained

SIDECAR = "pointcloud.json"


def _float_model(task: str, checkpoint: Path | None, data: str, device: str):
    if checkpoint is None:
        if data != "synthetic":
            raise CheckpointError(f"no packaged checkpoint for {data}: pass --checkpoint (a model trained on it)")
        model, meta = pretrained(task, device)
        source = f"packaged:{task}-synthetic"
    else:
        model, meta = load_checkpoint(checkpoint, device)
        source = str(checkpoint)
    if model.config.task != task:
        raise CheckpointError(f"the checkpoint is a {model.config.task} model, not {task}")
    return model, source


def load_quantized_run(path: Path, device: str = "cpu"):
    """A model saved by ``aiqvit-pointcloud quantize`` and its sidecar record."""
    side = Path(path) / SIDECAR
    if not side.is_file():
        raise CheckpointError(f"{path} lacks {SIDECAR}: not a directory written by 'aiqvit-pointcloud quantize'")
    try:
        record = json.loads(side.read_text())
        config = PointTransformerConfig.from_dict(record["model_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{side} is corrupt: {e}") from e
    model = build_model(config)
    aiqvit.load_quantized(model, path, adapter=PointTransformerAdapter())
    return to_device(model, device).eval(), record


def cmd_quantize(args) -> dict:
    torch.manual_seed(args.seed)
    model, source = _float_model(args.task, args.checkpoint, args.data, args.device)
    n = args.num_points or model.config.num_points
    calib_set = open_dataset(args.data, "train", n, args.task, args.data_root, train=False)
    batches = calibration_batches(calib_set, args.task, args.calib_size, args.calib_batch_size, args.seed)
    batches = [tuple(t.to(args.device) for t in b) if isinstance(b, tuple) else b.to(args.device) for b in batches]
    config = quant_config(args.method, args.w_bits, args.a_bits, args.recipe, args.seed, **parse_overrides(args.set))
    start = time.perf_counter()
    report = aiqvit.quantize(model, batches, config, adapter=PointTransformerAdapter(),
                             checkpoint_dir=args.resume_dir, progress_bar=not args.no_progress)
    seconds = time.perf_counter() - start
    aiqvit.save_quantized(model, args.output)
    record = {"task": args.task, "model_config": model.config.to_dict(), "fp_checkpoint": source,
              "data": args.data, "calib_size": args.calib_size, "recipe": args.recipe, "method": args.method,
              "w_bits": args.w_bits, "a_bits": args.a_bits, "seed": args.seed, "calib_seconds": seconds,
              "quant_config": config.to_dict(),
              "ranks": report.ranks, "dfq_intervals": report.dfq_intervals,
              "unit_losses": {k: list(v) for k, v in report.unit_losses.items()}}
    if args.evaluate:
        test_set = open_dataset(args.data, "test", n, args.task, args.data_root)
        record["metrics"] = evaluate(model, test_set, args.task, device=args.device, progress=not args.no_progress)
    write_json_atomic(Path(args.output) / SIDECAR, record)
    return {k: record[k] for k in ("task", "method", "w_bits", "a_bits", "recipe", "calib_seconds")} | \
        {"output": str(args.output), **({"metrics": record["metrics"]} if "metrics" in record else {})}


def cmd_evaluate(args) -> dict:
    if args.quantized is not None:
        if args.checkpoint is not None:
            raise AIQViTError("pass either --quantized or --checkpoint, not both")
        model, record = load_quantized_run(args.quantized, args.device)
        if record["task"] != args.task:
            raise CheckpointError(f"{args.quantized} holds a {record['task']} model, not {args.task}")
        what = f"{record['method']} W{record['w_bits']}/A{record['a_bits']} ({args.quantized})"
    else:
        model, what = _float_model(args.task, args.checkpoint, args.data, args.device)
        what = f"float ({what})"
    n = args.num_points or model.config.num_points
    test_set = open_dataset(args.data, args.split, n, args.task, args.data_root)
    metrics = evaluate(model, test_set, args.task, batch_size=args.batch_size, device=args.device,
                       progress=not args.no_progress, limit=args.limit)
    out = {"model": what, "data": test_set.name, **metrics}
    if args.json is not None:
        write_json_atomic(args.json, out)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aiqvit-pointcloud", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--task", choices=("cls", "partseg"), required=True)
        p.add_argument("--checkpoint", type=Path, help="float checkpoint (default: the packaged SyntheticParts one)")
        p.add_argument("--data", choices=SOURCES, default="synthetic")
        p.add_argument("--data-root", type=Path, help="release folder of modelnet40 / shapenetpart")
        p.add_argument("--num-points", type=int, help="points per shape (default: the model's)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("quantize", help="post-training quantization of a float model")
    common(q)
    q.add_argument("--w-bits", type=int, default=4)
    q.add_argument("--a-bits", type=int, default=4)
    q.add_argument("--method", choices=aiqvit.METHODS, default="aiqvit")
    q.add_argument("--calib-size", type=int, default=512, help="calibration shapes from the train split")
    q.add_argument("--calib-batch-size", type=int, default=32)
    q.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set lowrank=fixed --set reconstruction.iters=200")
    q.add_argument("--output", type=Path, required=True, help="directory for the quantized model")
    q.add_argument("--resume-dir", type=Path, help="per-unit calibration checkpoints (resume an interrupted run)")
    q.add_argument("--evaluate", action="store_true", help="also evaluate on the test split")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("evaluate", help="evaluate the float model or a saved quantized one")
    common(e)
    e.add_argument("--quantized", type=Path, help="directory written by 'quantize'")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--limit", type=int, help="evaluate only the first N shapes")
    e.add_argument("--json", type=Path, help="also write the metrics to this file")
    e.set_defaults(func=cmd_evaluate)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result = args.func(args)
    except (AIQViTError, ValueError, FileNotFoundError) as e:
        print(f"aiqvit-pointcloud: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
