"""``aiqvit-detection``: quantize and evaluate mmdet Swin detectors; make the embedded data sets.

Real path (your own mmdet config + checkpoint + COCO root)::

    aiqvit-detection quantize --config mask-rcnn_swin-t-p4-w7_fpn_1x_coco --checkpoint ckpt.pth \\
        --coco-root /data/coco --method aiqvit --w-bits 4 --a-bits 4 --out runs/mrcnn-w4a4
    aiqvit-detection evaluate --quantized runs/mrcnn-w4a4 --coco-root /data/coco

Embedded default (synthetic data generated on first use, checkpoints shipped in the package)::

    aiqvit-detection quantize --model mask-rcnn-swin-t-mini --out runs/mini-w4a4
    aiqvit-detection evaluate --quantized runs/mini-w4a4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aiqvit.errors import AIQViTError

from .coco_layout import CocoLayout, check_coco_root


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detector (either --model, or --config and --checkpoint)")
    g.add_argument("--model", help="embedded detector trained on the synthetic data (mask-rcnn-swin-t-mini, "
                                   "cascade-mask-rcnn-swin-t-mini)")
    g.add_argument("--config", help="mmdet config file, or the name of a packaged config")
    g.add_argument("--checkpoint", help="detector checkpoint (.pth read with weights_only=True, or .safetensors)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--coco-root", help="COCO-format root (default with --model: the synthetic data set)")
    g.add_argument("--train-ann", default=CocoLayout.train_ann)
    g.add_argument("--val-ann", default=CocoLayout.val_ann)
    g.add_argument("--train-images", default=CocoLayout.train_images)
    g.add_argument("--val-images", default=CocoLayout.val_images)
    g.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiqvit-detection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="calibrate a quantized detector and save it")
    _add_model_args(q)
    _add_data_args(q)
    q.add_argument("--method", default="aiqvit", help="minmax, percentile, repq, brecq, aiqvit")
    q.add_argument("--w-bits", type=int, default=4)
    q.add_argument("--a-bits", type=int, default=4)
    q.add_argument("--scope", default="backbone", choices=("backbone", "full"),
                   help="quantize the Swin backbone only, or backbone + neck + heads")
    q.add_argument("--calib-images", type=int, default=256, help="train images used for calibration (batch 1)")
    q.add_argument("--recon-iters", type=int, help="reconstruction iterations per Swin block (core default if unset)")
    q.add_argument("--search-iters", type=int, help="rank-search iterations per Swin block (core default if unset)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--checkpoint-dir", help="resume directory for per-block calibration checkpoints")
    q.add_argument("--evaluate", action="store_true", help="also evaluate on the val split")
    q.add_argument("--max-images", type=int, help="evaluate on the first N val images only")
    q.add_argument("--out", required=True, help="output directory (written atomically)")

    e = sub.add_parser("evaluate", help="box and mask AP (pycocotools, through mmdet's CocoMetric)")
    _add_model_args(e)
    _add_data_args(e)
    e.add_argument("--quantized", help="directory written by 'quantize' (replaces --model/--config/--checkpoint)")
    e.add_argument("--max-images", type=int, help="evaluate on the first N val images only")
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--json", help="also write the metrics to this JSON file")

    s = sub.add_parser("synthetic-data", help="write the synthetic COCO-format data set")
    s.add_argument("--root", help="output root (default: the AIQViT cache)")
    s.add_argument("--train-images", type=int, default=2000)
    s.add_argument("--val-images", type=int, default=300)
    s.add_argument("--seed", type=int, default=0)

    lm = sub.add_parser("labelme-data", help="extract the 3 PASCAL VOC photos of the labelme sdist (COCO layout)")
    lm.add_argument("--root", required=True)
    lm.add_argument("--sdist", help="labelme-6.3.1.tar.gz (default: cache, else pip download)")
    return parser


def _layout(args) -> CocoLayout:
    return CocoLayout(args.train_ann, args.val_ann, args.train_images, args.val_images)


def _detector_from_args(args, splits: tuple[str, ...]):
    """``(cfg, model, coco_root)`` for --model or --config/--checkpoint; the root's ``splits`` are
    checked first, so that a bad root fails before a large model is loaded."""
    from .models import embedded_model, load_detector

    if args.model:
        if args.config or args.checkpoint:
            raise AIQViTError("give either --model or --config/--checkpoint, not both")
        em = embedded_model(args.model)
        if not em.weights_path.is_file():
            raise AIQViTError(f"{em.weights_path} is missing: train it with benchmarks/detection/train.py")
        config, checkpoint, root = em.config_path, em.weights_path, args.coco_root
        if root is None:
            from .synthetic import cached_dataset
            root = cached_dataset()
    else:
        if not (args.config and args.checkpoint):
            raise AIQViTError("give --model NAME, or both --config and --checkpoint")
        if not args.coco_root:
            raise AIQViTError("--coco-root is required with --config/--checkpoint")
        config, checkpoint, root = args.config, args.checkpoint, args.coco_root
    for split in splits:
        check_coco_root(root, split, _layout(args))
    cfg, model = load_detector(config, checkpoint, args.device)
    return cfg, model, root


def cmd_quantize(args) -> dict:
    from aiqvit.io_utils import peak_rss_mb

    from .data import build_dataset, calibration_batches
    from .evaluation import evaluate_detector
    from .quantization import quant_config, quantize_detector, save_quantized_detector

    config = quant_config(args.method, args.w_bits, args.a_bits, seed=args.seed, recon_iters=args.recon_iters,
                          search_iters=args.search_iters)
    cfg, model, root = _detector_from_args(args, ("train", "val") if args.evaluate else ("train",))
    layout = _layout(args)
    train = build_dataset(cfg, root, "train", layout)
    if args.evaluate:
        val = build_dataset(cfg, root, "val", layout)  # fail on a bad val split before the long calibration
    batches = calibration_batches(train, args.calib_images, seed=args.seed)
    report = quantize_detector(model, batches, config, scope=args.scope, checkpoint_dir=args.checkpoint_dir)
    summary = {"method": args.method, "w_bits": args.w_bits, "a_bits": args.a_bits, "scope": args.scope,
               "calib_images": len(batches), "calib_seconds": round(report.seconds, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1), "coco_root": str(root), "ranks": report.ranks,
               "dfq_intervals": report.dfq_intervals, "config": config.to_dict()}
    if args.evaluate:
        summary["metrics"] = evaluate_detector(model, val, max_images=args.max_images)
    save_quantized_detector(model, cfg, args.out,
                            extra={"summary": summary, "classes": list(train.metainfo.get("classes", ()))})
    return summary


def cmd_evaluate(args) -> dict:
    from .data import build_dataset
    from .evaluation import evaluate_detector

    if args.quantized:
        from .quantization import load_quantized_detector

        if args.model or args.config or args.checkpoint:
            raise AIQViTError("--quantized replaces --model/--config/--checkpoint")
        cfg, model, meta = load_quantized_detector(args.quantized, args.device)
        root = args.coco_root or meta.get("summary", {}).get("coco_root")
        if root is None:
            raise AIQViTError("--coco-root is required")
    else:
        cfg, model, root = _detector_from_args(args, ("val",))
    val = build_dataset(cfg, root, "val", _layout(args))
    start = time.perf_counter()
    metrics = evaluate_detector(model, val, batch_size=args.batch_size, max_images=args.max_images)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        from aiqvit.io_utils import write_json_atomic
        write_json_atomic(args.json, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "quantize":
            out = cmd_quantize(args)
            print(json.dumps({k: out[k] for k in ("method", "w_bits", "a_bits", "scope", "calib_seconds")}
                             | ({"metrics": {k: out["metrics"][k] for k in ("bbox_mAP", "segm_mAP")}}
                                if "metrics" in out else {})))
            print(f"saved to {args.out}")
        elif args.command == "evaluate":
            m = cmd_evaluate(args)
            print(json.dumps({k: m[k] for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50", "seconds")}))
        elif args.command == "synthetic-data":
            from .synthetic import SyntheticSpec, cached_dataset, generate_dataset
            spec = SyntheticSpec(train_images=args.train_images, val_images=args.val_images, seed=args.seed)
            print(generate_dataset(Path(args.root), spec) if args.root else cached_dataset(spec))
        elif args.command == "labelme-data":
            from .labelme_data import extract_labelme_coco
            print(extract_labelme_coco(args.root, args.sdist))
    except AIQViTError as exc:
        print(f"aiqvit-detection: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
