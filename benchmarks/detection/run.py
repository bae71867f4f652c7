"""Detection benchmark: FP, minmax, repq, brecq, aiqvit at W4/A4 and W6/A6, box and mask AP.

Embedded default: the two detectors trained here (Mask R-CNN and Cascade Mask R-CNN with a
reduced Swin-T backbone) on the synthetic shapes data (256 train images for calibration, batch 1,
as the paper; evaluation on the 300 val images). Numbers on synthetic data are not COCO numbers.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/detection/run.py
    python benchmarks/detection/run.py --quick        # 2 models x 1 bit-width x 2 methods, small budget

Writes benchmarks/results/detection.json (BenchmarkRecord list, merged), detection.md and
detection_<model>.png (rendered from every record of the JSON with this run's recipe). Targets are
printed, not asserted. Models can run as separate processes (--models NAME) sharing one JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
METHODS = ("minmax", "repq", "brecq", "aiqvit")
MODELS = ("mask-rcnn-swin-t-mini", "cascade-mask-rcnn-swin-t-mini")
METRICS = (("bbox_mAP", "box AP"), ("segm_mAP", "mask AP"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--bits", nargs="+", type=int, default=[4, 6], help="W/A bit-widths (same for both)")
    p.add_argument("--scope", default="backbone", choices=("backbone", "full"))
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--val-images", type=int, help="evaluate on the first N val images (default: all 300)")
    p.add_argument("--recon-iters", type=int, help="reconstruction iterations per Swin block (core default if unset)")
    p.add_argument("--search-iters", type=int, help="rank-search iterations per Swin block (core default if unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke run: W4/A4, minmax + aiqvit, 32 calibration "
                                                         "images, 60 val images, 20 iterations per block")
    p.add_argument("--out", help="results JSON (default benchmarks/results/detection.json, "
                                 "detection_quick.json with --quick); .md and plots go beside it")
    args = p.parse_args(argv)
    args.out = args.out or str(default_out(args))
    if args.quick:
        args.bits, args.methods = [4], ["minmax", "aiqvit"]
        args.calib_images, args.val_images = 32, args.val_images or 60
        args.recon_iters, args.search_iters = args.recon_iters or 20, args.search_iters or 10
    return args


def default_out(args) -> Path:
    return RESULTS / ("detection_quick.json" if args.quick else "detection.json")


def recipe(args) -> str:
    parts = [f"scope={args.scope}", f"calib={args.calib_images}x1"]
    if args.recon_iters is not None:
        parts.append(f"recon_iters={args.recon_iters}")
    if args.search_iters is not None:
        parts.append(f"search_iters={args.search_iters}")
    if args.val_images is not None:
        parts.append(f"val={args.val_images}")
    return ",".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from aiqvit.io_utils import BenchmarkRecord, git_commit, merge_records, peak_rss_mb, results_lock
    from aiqvit_detection.data import build_dataset, calibration_batches
    from aiqvit_detection.evaluation import evaluate_detector
    from aiqvit_detection.models import embedded_model, load_detector
    from aiqvit_detection.quantization import quant_config, quantize_detector
    from aiqvit_detection.synthetic import cached_dataset

    commit = git_commit(REPO)
    root = cached_dataset()
    rec = recipe(args)
    notes = f"synthetic shapes data ({root.name}); reduced Swin-T backbone trained here; not COCO"
    start_all = time.perf_counter()
    for name in args.models:
        em = embedded_model(name)
        cfg, fp_model = load_detector(em.config_path, em.weights_path)
        train = build_dataset(cfg, root, "train")
        val = build_dataset(cfg, root, "val")
        batches = calibration_batches(train, args.calib_images, seed=args.seed)
        runs = [("fp", None)] + [(m, b) for b in args.bits for m in args.methods]
        for method, bits in runs:
            t0 = time.perf_counter()
            calib_seconds = 0.0
            model = fp_model
            if method != "fp":
                model = copy.deepcopy(fp_model)
                config = quant_config(method, bits, bits, seed=args.seed, recon_iters=args.recon_iters,
                                      search_iters=args.search_iters)
                report = quantize_detector(model, batches, config, scope=args.scope, progress=False)
                calib_seconds = report.seconds
            metrics = evaluate_detector(model, val, batch_size=args.eval_batch_size, max_images=args.val_images,
                                        progress=False)
            records = [BenchmarkRecord(task="detection", model=name, method=method, w_bits=bits, a_bits=bits,
                                       recipe=rec, metric=key, value=round(100 * metrics[key], 2),
                                       calib_seconds=round(calib_seconds, 1), peak_rss_mb=round(peak_rss_mb(), 1),
                                       seed=args.seed, git_commit=commit, notes=notes)
                       for key, _ in METRICS]
            with results_lock(args.out):  # several model runs may share one results file
                merge_records(args.out, records)
                render(args, rec)  # tables and plots follow the results as they come
            print(f"{name:32s} {method:7s} W{bits or 32}/A{bits or 32}: box AP {records[0].value:5.2f} "
                  f"mask AP {records[1].value:5.2f} (calib {calib_seconds:.0f}s, total {time.perf_counter() - t0:.0f}s)",
                  flush=True)
            del model
    total = time.perf_counter() - start_all
    print(f"total time: {total / 60:.1f} min with {args.threads} thread(s) ({', '.join(args.models)})")
    with results_lock(args.out):
        table = render(args, rec)
    print_targets(table, args)
    return 0


def render(args, rec: str) -> dict:
    table = load_table(args.out, rec)
    write_markdown(Path(args.out).with_suffix(".md"), table, args, rec)
    for name in table:
        plot(Path(args.out).with_name(f"{Path(args.out).stem}_{name}.png"), name, table[name], args)
    return table


def load_table(path, rec: str) -> dict:
    """``{model: {(method, bits): {metric: value, "calib_seconds": s, "seeds": [...]}}}`` of the records
    with this recipe; a setting run with several seeds holds their means (and ``"<metric>_std"``)."""
    from aiqvit.io_utils import mean_over_seeds

    table: dict[str, dict] = {}
    for r in mean_over_seeds(json.loads(Path(path).read_text())):
        if r["task"] == "detection" and r["recipe"] == rec:
            cell = table.setdefault(r["model"], {}).setdefault((r["method"], r["w_bits"]), {})
            cell[r["metric"]] = r["value"]
            cell[f"{r['metric']}_std"] = r["std"]
            cell["calib_seconds"] = r["calib_seconds"]
            cell["seeds"] = r["seeds"]
    order = {m: i for i, m in enumerate(("fp",) + METHODS)}
    return {m: dict(sorted(runs.items(), key=lambda kv: (kv[0][1] or 0, order.get(kv[0][0], 99))))
            for m, runs in sorted(table.items())}


def _cell(vals: dict, metric: str) -> str:
    """The mean over seeds, with the sample standard deviation where several seeds were run."""
    v = vals.get(metric)
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {vals[metric + '_std']:.2f}" if len(vals.get("seeds", ())) > 1 else "")


def write_markdown(path: Path, table: dict, args, rec: str) -> None:
    from aiqvit.io_utils import write_text_atomic

    # the table may gather several processes (one per model or bit-width): give the shared options
    cmd = (f"python benchmarks/detection/run.py --scope {args.scope} --calib-images {args.calib_images}"
           + (f" --val-images {args.val_images}" if args.val_images is not None else "")
           + (f" --recon-iters {args.recon_iters}" if args.recon_iters is not None else "")
           + (f" --search-iters {args.search_iters}" if args.search_iters is not None else ""))
    out = Path(args.out).resolve()
    if out != default_out(args).resolve():
        cmd += f" --out {out.relative_to(REPO) if out.is_relative_to(REPO) else out}"
    lines = ["# Detection benchmark (synthetic shapes data, reduced Swin-T detectors)", "",
             f"Generated by `{cmd}` (optionally split with --models/--bits; recipe `{rec}`, "
             f"{args.threads} thread(s) per process).",
             "Box / mask AP (COCO mAP@[.5:.95], %) on the synthetic val set; these are not COCO numbers. "
             "A setting run with several seeds (`--seed`; calibration images and config) shows their mean ± sample "
             "std; the target checks use the means.",
             f"Quantized: {'the Swin backbone only' if args.scope == 'backbone' else 'backbone, neck and heads'}"
             f" (scope `{args.scope}`); calibration seconds per run on this shared 2-core machine.", ""]
    for name, runs in table.items():
        lines += [f"## {name}", "", "| method | W/A | box AP | mask AP | calib s | seeds |", "|---|---|---|---|---|---|"]
        for (method, bits), vals in runs.items():
            wa = "32/32" if bits is None else f"{bits}/{bits}"
            lines.append(f"| {method} | {wa} | {_cell(vals, 'bbox_mAP')} | {_cell(vals, 'segm_mAP')} "
                         f"| {vals.get('calib_seconds', 0):.0f} | {', '.join(map(str, vals.get('seeds', [])))} |")
        lines.append("")
    write_text_atomic(path, "\n".join(lines))


def plot(path: Path, name: str, runs: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aiqvit.io_utils import atomic_path

    fp = runs.get(("fp", None), {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    methods = [m for m in METHODS if any(k[0] == m for k in runs)]
    bits_list = sorted({b for (_, b) in runs if b is not None})
    width = 0.8 / max(1, len(bits_list))
    for ax, (key, label) in zip(axes, METRICS):
        for j, bits in enumerate(bits_list):
            vals = [runs.get((m, bits), {}).get(key, 0.0) for m in methods]
            xs = [i + (j - (len(bits_list) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, vals, width=width, label=f"W{bits}/A{bits}")
        if key in fp:
            ax.axhline(fp[key], color="k", linestyle="--", linewidth=1, label="FP")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(label)
        ax.set_ylabel("AP (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name} on synthetic shapes (scope: {args.scope})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def print_targets(table: dict, args) -> None:
    print("\nTargets (printed, not asserted):")
    for name, runs in table.items():
        fp = runs.get(("fp", None), {})
        for bits in sorted({b for (_, b) in runs if b is not None}):
            for key, label in METRICS:
                ours = runs.get(("aiqvit", bits), {}).get(key)
                if ours is None:
                    continue
                others = {m: runs.get((m, bits), {}).get(key) for m in METHODS if m != "aiqvit"}
                best = max((v for v in others.values() if v is not None), default=None)
                ahead = best is None or ours > best
                gap = fp.get(key, float("nan")) - ours
                allowed = 0.5 if bits >= 6 else 4.0
                print(f"  {name} W{bits}/A{bits} {label}: aiqvit {ours:.2f} vs best baseline "
                      f"{'-' if best is None else f'{best:.2f}'} -> {'ahead' if ahead else 'NOT ahead'}; "
                      f"FP - aiqvit = {gap:.2f} (target <= {allowed}) -> {'met' if gap <= allowed else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
