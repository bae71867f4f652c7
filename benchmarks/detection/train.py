"""Train an embedded detector (reduced Swin-T backbone) on the synthetic shapes data, on CPU.

Seeded and reproducible; writes the fp16 safetensors checkpoint shipped in the package and a JSON
record (iterations, time, val box/mask AP of the fp16 weights) beside it::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/detection/train.py --model mask-rcnn-swin-t-mini --iters 3000
    python benchmarks/detection/train.py --model mask-rcnn-swin-t-mini --time-iters 20   # measure only
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from itertools import count
from pathlib import Path

import torch


def lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return 0.001 + (1 - 0.001) * it / warmup
    return 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup))) * 0.99 + 0.01


def build_train_loader(cfg, root: Path, batch_size: int, seed: int):
    from mmengine.runner import Runner

    loader = copy.deepcopy(cfg.train_dataloader)
    loader.batch_size = batch_size
    loader.dataset.data_root = str(root)
    loader.sampler = dict(type="DefaultSampler", shuffle=True, seed=seed)
    return Runner.build_dataloader(loader, seed=seed)


def main(argv=None) -> dict:
    from aiqvit_detection.models import EMBEDDED_MODELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(EMBEDDED_MODELS))
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the config's)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--time-iters", type=int, help="only time this many iterations, write nothing")
    p.add_argument("--out", help="checkpoint path (default: the package's weights/ file)")
    p.add_argument("--eval-only", action="store_true", help="evaluate an existing checkpoint and write its record")
    p.add_argument("--train-seconds", type=float, help="with --eval-only, for a checkpoint without that metadata")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import set_random_seed

    from aiqvit_detection.models import build_detector, load_config, save_fp16_safetensors
    from aiqvit_detection.synthetic import SyntheticSpec, cached_dataset

    em = EMBEDDED_MODELS[args.model]
    set_random_seed(args.seed, deterministic=False)
    cfg = load_config(em.config_path)
    if args.lr is not None:
        cfg.optim_wrapper.optimizer.lr = args.lr
    spec = SyntheticSpec()
    root = cached_dataset(spec)
    out = Path(args.out) if args.out else em.weights_path
    if args.eval_only:
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        seconds = meta.get("train_seconds", args.train_seconds)  # older checkpoints lack it: pass it
        lr = meta.get("lr", args.lr)
        return evaluate_and_record(cfg, em, args, out, root, spec, int(meta["iters"]), float(seconds), float(lr))
    model = build_detector(cfg, init_weights=True)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lrs = [g["lr"] for g in optim.optimizer.param_groups]
    loader = build_train_loader(cfg, root, args.batch_size, args.seed)
    total = args.time_iters or args.iters

    start = time.perf_counter()
    running: dict[str, float] = {}
    it = 0
    for epoch in count():
        loader.sampler.set_epoch(epoch)
        for data in loader:
            for g, base in zip(optim.optimizer.param_groups, base_lrs):
                g["lr"] = base * lr_factor(it, total, args.warmup)
            log = model.train_step(data, optim)
            for k, v in log.items():
                running[k] = running.get(k, 0.0) + float(v)
            it += 1
            if it % args.log_every == 0 or it == total:
                el = time.perf_counter() - start
                msg = " ".join(f"{k}={v / args.log_every:.3f}" for k, v in sorted(running.items()) if k == "loss"
                               or k.startswith(("loss_rpn", "loss_cls", "loss_bbox", "loss_mask", "s0.loss")))
                print(f"it {it}/{total} {el:.0f}s ({el / it:.3f} s/it) {msg}", flush=True)
                running = {}
            if it == total:
                break
        if it == total:
            break
    seconds = time.perf_counter() - start
    if args.time_iters:
        result = {"iters": it, "seconds": seconds, "seconds_per_iter": seconds / it}
        print(json.dumps(result))
        return result

    save_fp16_safetensors(model, out, metadata={"model": args.model, "iters": str(it), "seed": str(args.seed),
                                                "train_seconds": f"{seconds:.1f}", "lr": str(base_lrs[0])})
    return evaluate_and_record(cfg, em, args, out, root, spec, it, seconds, base_lrs[0])


def evaluate_and_record(cfg, em, args, out: Path, root: Path, spec, iters: int, seconds: float, lr: float) -> dict:
    """Evaluate what is shipped (the fp16 weights, loaded into float32) and write the JSON record."""
    from aiqvit.io_utils import write_json_atomic
    from aiqvit_detection.data import build_dataset
    from aiqvit_detection.evaluation import evaluate_detector
    from aiqvit_detection.models import build_detector, load_detector_weights

    eval_model = build_detector(cfg)
    load_detector_weights(eval_model, out)
    val = build_dataset(cfg, root, "val")
    metrics = evaluate_detector(eval_model, val, batch_size=args.eval_batch_size)
    record = {"model": args.model, "config": em.config, "iters": iters, "batch_size": args.batch_size,
              "lr": lr, "warmup": args.warmup, "seed": args.seed, "threads": args.threads,
              "train_seconds": round(seconds, 1), "dataset": spec.key(), "val_images": len(val),
              "bbox_mAP": metrics["bbox_mAP"], "segm_mAP": metrics["segm_mAP"],
              "bbox_mAP_50": metrics["bbox_mAP_50"], "segm_mAP_50": metrics["segm_mAP_50"],
              "checkpoint_bytes": out.stat().st_size,
              "command": f"python benchmarks/detection/train.py --model {args.model} --iters {iters} "
                         f"--batch-size {args.batch_size} --lr {lr:g} --warmup {args.warmup} --seed {args.seed}"}
    write_json_atomic(out.with_suffix(".json"), record)
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
