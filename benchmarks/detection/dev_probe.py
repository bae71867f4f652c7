"""Development probe on held-out synthetic images (never the benchmark's val set): quantize one embedded
detector with one method, then report box / mask AP on ``--dev-images`` images drawn from the generator's
"dev" split, which neither the float detectors' training nor the val set saw.

Used to choose settings (the val set is only for the recorded benchmark):

    python benchmarks/detection/dev_probe.py --model mask-rcnn-swin-t-mini --method aiqvit --bits 4 \
        --recon-iters 150 [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from aiqvit.config import parse_overrides

MODELS = ("mask-rcnn-swin-t-mini", "cascade-mask-rcnn-swin-t-mini")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default=MODELS[0])
    p.add_argument("--method", default="aiqvit", help="a preset name, or fp")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--scope", default="backbone", choices=("backbone", "full"))
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--dev-images", type=int, default=150)
    p.add_argument("--recon-iters", type=int, default=50, help="the recorded benchmark's budget by default")
    p.add_argument("--search-iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="QuantConfig field, e.g. attention_balance=off or reconstruction.input_source=fp")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from aiqvit_detection.data import build_dataset, calibration_batches
    from aiqvit_detection.evaluation import evaluate_detector
    from aiqvit_detection.models import embedded_model, load_detector
    from aiqvit_detection.quantization import quant_config, quantize_detector
    from aiqvit_detection.synthetic import cached_dataset, cached_dev_dataset

    em = embedded_model(args.model)
    cfg, model = load_detector(em.config_path, em.weights_path)
    dev = build_dataset(cfg, cached_dev_dataset(args.dev_images, progress=False), "val")
    seconds = 0.0
    if args.method != "fp":
        train = build_dataset(cfg, cached_dataset(progress=False), "train")
        batches = calibration_batches(train, args.calib_images, seed=args.seed)
        model = copy.deepcopy(model)
        config = quant_config(args.method, args.bits, args.bits, seed=args.seed, recon_iters=args.recon_iters,
                              search_iters=args.search_iters, **parse_overrides(args.set))
        start = time.perf_counter()
        quantize_detector(model, batches, config, scope=args.scope, progress=False)
        seconds = time.perf_counter() - start
    metrics = evaluate_detector(model, dev, batch_size=8, progress=False)
    bits = "" if args.method == "fp" else f" W{args.bits}/A{args.bits}"
    print(f"dev {args.model} {args.method}{bits} recon={args.recon_iters} search={args.search_iters} {args.set}: "
          f"box AP {100 * metrics['bbox_mAP']:.2f} mask AP {100 * metrics['segm_mAP']:.2f} "
          f"({args.dev_images} dev images; calib {seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
