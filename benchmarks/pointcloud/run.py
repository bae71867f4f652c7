"""Point-cloud PTQ benchmark: Point Transformer on SyntheticParts (synthetic), classification and
part segmentation; FP vs minmax / repq / brecq / aiqvit at W3/A3, W4/A4, W6/A6.

    python benchmarks/pointcloud/run.py                 # the default recipe (<= 60 min on 2 cores)
    python benchmarks/pointcloud/run.py --smoke         # plumbing check in a few minutes
    python benchmarks/pointcloud/run.py --seeds 1 2     # more calibration seeds; tables show the mean

On a fresh machine it generates the data (cached under $AIQVIT_CACHE), loads the packaged float
checkpoints (or trains them if missing), quantizes with 512 calibration shapes from the train
split and evaluates on the whole test split. Writes benchmarks/results/pointcloud.json
(BenchmarkRecord list, one record per seed), pointcloud.md and the plots pointcloud_*.png. The
tables and target checks use the mean over every seed recorded for a setting.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiqvit
import numpy as np
import torch
from aiqvit.io_utils import BenchmarkRecord, git_commit, mean_over_seeds, merge_records, peak_rss_mb, write_text_atomic

from aiqvit_pointcloud import PointTransformerAdapter, PointTransformerLayer, calibration_batches, evaluate
from aiqvit_pointcloud.data.synthetic import load_synthetic
from aiqvit_pointcloud.recipes import LOW_BIT_RECONSTRUCTION, RECIPES, quant_config
from aiqvit_pointcloud.weights import cached_checkpoint_path, find_checkpoint, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from train import DEFAULT_RECIPES, train_and_save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
TASK_METRICS = {"cls": ("OA", "mAcc"), "partseg": ("instance_mIoU", "class_mIoU")}
MODEL_NAME = {"cls": "PointTransformer-small-cls", "partseg": "PointTransformer-small-partseg"}
DATASET = "SyntheticParts (synthetic)"
METHODS = ("minmax", "repq", "brecq", "aiqvit")
BITS = (3, 4, 6)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fp_model(task: str):
    path = find_checkpoint(task)
    if path is None:
        path = cached_checkpoint_path(task)
        log(f"no {task} checkpoint: training one ({DEFAULT_RECIPES[task]}) into {path}")
        train_and_save(task, path, DEFAULT_RECIPES[task], progress=False, log=log)
    model, _ = load_checkpoint(path)
    return model, path


def record(task, method, bits, recipe, metric, value, seconds, seed, notes, commit) -> BenchmarkRecord:
    """``commit``: the code the run started with (its processes import it once; a commit made while it runs
    is not what it measures)."""
    return BenchmarkRecord(task=f"pointcloud-{task}", model=MODEL_NAME[task], method=method,
                           w_bits=bits, a_bits=bits, recipe=recipe, metric=metric, value=round(float(value), 4),
                           calib_seconds=round(seconds, 2), peak_rss_mb=round(peak_rss_mb(), 1), seed=seed,
                           git_commit=commit, notes=notes)


@torch.no_grad()
def softmax_samples(model, batches, adapter, limit: int = 200_000) -> dict[str, np.ndarray]:
    """Post-Softmax attention values of every vector-attention layer of the float model."""
    seen: dict[str, list] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PointTransformerLayer)]
    for name, layer in layers:
        def grab(p, name=name):
            seen.setdefault(name, []).append(p.reshape(-1)[:limit].cpu().numpy())
            return p
        layer.quant_probs = grab
    try:
        for b in batches:
            adapter.run(model, b)
    finally:
        for _, layer in layers:
            del layer.quant_probs
    return {k: np.concatenate(v)[:limit] for k, v in seen.items()}


def plot_accuracy(records: list[dict], path: Path, recipe: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = mean_over_seeds(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, task in zip(axes, ("cls", "partseg")):
        metric = TASK_METRICS[task][0]
        rows = [r for r in records if r["task"] == f"pointcloud-{task}" and r["metric"] == metric]
        fp = [r["value"] for r in rows if r["method"] == "fp"]
        for method in METHODS:
            pts = sorted((r["w_bits"], r["value"], r["std"]) for r in rows
                         if r["method"] == method and r["recipe"] in (recipe, "-"))
            if pts:
                bits, values, stds = zip(*pts)
                ax.errorbar(bits, values, yerr=stds if any(stds) else None, marker="o", capsize=3, label=method)
        if fp:
            ax.axhline(fp[0], color="k", ls="--", label="FP")
        ax.set_xlabel("bits (W = A)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_xticks(BITS)
        ax.set_title(f"{MODEL_NAME[task]} on {DATASET}")
        ax.grid(alpha=0.3)
        if rows:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_softmax(samples: dict[str, np.ndarray], intervals: dict[str, tuple[float, float]], path: Path,
                 title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        # log-spaced bins: most attention weights, and DFQ's log-spaced levels, lie far below 0.1
        ax.hist(np.clip(samples[name], 1e-6, 1.0), bins=np.logspace(-6, 0, 80), log=True, color="tab:blue")
        ax.set_xscale("log")
        key = f"{name}.quantizers"
        if key in intervals:
            b1, b2 = intervals[key]
            ax.axvspan(max(b1, 1e-6), b2, color="tab:orange", alpha=0.25, label=f"DFQ [{b1:.2g}, {b2:.2g}]")
            ax.legend(fontsize=7)
        ax.set_title(name.replace(".attn", ""), fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _value(r: dict) -> str:
    """A cell: the mean over seeds, with the sample standard deviation where there are several."""
    return f"{r['value']:.2f}" + (f" ± {r['std']:.2f}" if len(r.get("seeds", ())) > 1 else "")


def seed_summary(records: list[dict]) -> str:
    """``"seed 0"`` or ``"seeds 0, 1, 2 (each cell is their mean ± sample std)"`` for the quantized runs."""
    seeds = sorted({r["seed"] for r in records if r["method"] != "fp"})
    if len(seeds) <= 1:
        return f"seed {seeds[0] if seeds else 0}"
    return f"seeds {', '.join(map(str, seeds))} (each cell is the mean over the seeds run for it, ± sample std)"


def markdown(records: list[dict], meta: dict) -> str:
    records = mean_over_seeds(records)
    lines = ["# Point-cloud PTQ benchmark (Point Transformer, synthetic data)", "",
             f"All numbers below are on **{DATASET}**, a procedurally generated stand-in for ModelNet40 / "
             "ShapeNetPart (neither can be downloaded here); they are not ModelNet40 or ShapeNetPart results.", "",
             "## Protocol", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Rerun: `" + meta["command"] + "`", ""]
    targets = []
    for task in ("cls", "partseg"):
        rows = [r for r in records if r["task"] == f"pointcloud-{task}"]
        if not rows:
            continue
        recipes = sorted({r["recipe"] for r in rows if r["recipe"] != "-"}) or ["-"]
        for recipe in recipes:
            lines += [f"## {MODEL_NAME[task]} (recipe `{recipe}`)", ""]
            header = "| method | " + " | ".join(f"W{b}/A{b} {m}" for b in BITS for m in TASK_METRICS[task]) + \
                     " | calib s wall (W4/A4) |"
            lines += [header, "|" + "---|" * (2 + len(BITS) * len(TASK_METRICS[task]))]
            fp = {r["metric"]: r["value"] for r in rows if r["method"] == "fp"}
            if fp:
                lines.append("| FP32 | " + " | ".join(f"{fp.get(m, float('nan')):.2f}" for _ in BITS
                                                    for m in TASK_METRICS[task]) + " | - |")
            # minmax / repq do not train: their rows (recipe "-") belong to every recipe's table
            table = {(r["method"], r["w_bits"], r["metric"]): r for r in rows if r["recipe"] in (recipe, "-")}
            for method in METHODS:
                cells = []
                for b in BITS:
                    for m in TASK_METRICS[task]:
                        r = table.get((method, b, m))
                        cells.append("-" if r is None else _value(r))
                sec = table.get((method, 4, TASK_METRICS[task][0]))
                lines.append(f"| {method} | " + " | ".join(cells) + f" | {sec['calib_seconds']:.0f} |"
                             if sec else f"| {method} | " + " | ".join(cells) + " | - |")
            lines.append("")
            targets += target_checks(task, table, fp, recipe)
    if targets:
        lines += ["## Targets (checked, not asserted)", ""] + [f"- {t}" for t in targets] + [""]
    return "\n".join(lines)


def target_checks(task, table, fp, recipe) -> list[str]:
    metric = TASK_METRICS[task][0]
    out = []
    for b in BITS:
        ours = table.get(("aiqvit", b, metric))
        base = [(m, table[(m, b, metric)]["value"]) for m in METHODS[:-1] if (m, b, metric) in table]
        if ours is None or not base:
            continue
        best = max(base, key=lambda x: x[1])
        ok = ours["value"] > best[1]
        out.append(f"{task} W{b}/A{b} ({recipe}): AIQViT {_value(ours)} vs best baseline {best[0]} "
                   f"{_value(table[(best[0], b, metric)])}: {'MET' if ok else 'NOT MET'}")
        if metric in fp and b in (4, 6):
            tol = 1.0 if b == 6 else 5.0
            gap = fp[metric] - ours["value"]
            out.append(f"{task} W{b}/A{b} ({recipe}): AIQViT within {tol:g} point(s) of FP {metric} "
                       f"(gap {gap:.2f}): {'MET' if gap <= tol else 'NOT MET'}")
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_task(task: str, opts: dict) -> dict:
    """FP evaluation and every (bits, method) quantization of one task; runs in its own process."""
    torch.set_num_threads(opts["threads"])
    adapter = PointTransformerAdapter()
    model, ckpt = fp_model(task)
    n = model.config.num_points
    train_set, test_set = load_synthetic("train", n, train=False), load_synthetic("test", n, train=False)
    seeds = opts["seeds"]
    batches = calibration_batches(train_set, task, opts["calib_size"], batch_size=32, seed=seeds[0])
    n_test = min(len(test_set), opts["test_limit"] or len(test_set))
    notes = f"{DATASET}; calib {opts['calib_size']} train shapes; test {n_test} shapes; {n} points"
    records = []
    t0, c0 = time.time(), cpu_seconds()
    fp_metrics = evaluate(model, test_set, task, progress=False, limit=opts["test_limit"])
    log(f"{task} FP: " + ", ".join(f"{m} {fp_metrics[m]:.2f}" for m in TASK_METRICS[task]) +
        f" ({time.time() - t0:.0f} s wall, {cpu_seconds() - c0:.0f} s cpu)")
    records += [record(task, "fp", None, "-", m, fp_metrics[m], 0.0, seeds[0], notes, opts["commit"])
                for m in TASK_METRICS[task]]
    merge_records(opts["out_json"], records[-len(TASK_METRICS[task]):])
    softmax = softmax_samples(model, batches[:4], adapter)
    intervals = {}
    for seed in seeds:
        if seed != seeds[0]:
            batches = calibration_batches(train_set, task, opts["calib_size"], batch_size=32, seed=seed)
        records += quantize_all(task, model, adapter, batches, test_set, seed, notes, opts,
                                intervals if seed == seeds[0] else {})
    return {"task": task, "records": [dataclasses.asdict(r) for r in records], "intervals": intervals,
            "softmax": softmax, "cpu_seconds": cpu_seconds(), "checkpoint": str(ckpt)}


def quantize_all(task, model, adapter, batches, test_set, seed, notes, opts, intervals) -> list[BenchmarkRecord]:
    """Every (bits, method) of one task with one calibration seed; fills ``intervals`` with AIQViT's DFQ
    intervals per bit-width."""
    records = []
    for bits in opts["bits"]:
        for method in opts["methods"]:
            q = copy.deepcopy(model)
            config = quant_config(method, bits, bits, opts["recipe"], seed)
            c0 = cpu_seconds()
            report = aiqvit.quantize(q, batches, config, adapter=adapter, progress_bar=False)
            c1 = cpu_seconds()
            metrics = evaluate(q, test_set, task, progress=False, limit=opts["test_limit"])
            log(f"{task} {method} W{bits}/A{bits} seed {seed}: "
                + ", ".join(f"{m} {metrics[m]:.2f}" for m in TASK_METRICS[task])
                + f" (calib {report.seconds:.0f} s wall / {c1 - c0:.0f} s cpu; eval {cpu_seconds() - c1:.0f} s cpu)")
            recipe = opts["recipe"] if method in ("brecq", "aiqvit") else "-"
            records += [record(task, method, bits, recipe, m, metrics[m], report.seconds, seed, notes, opts["commit"])
                        for m in TASK_METRICS[task]]
            merge_records(opts["out_json"], records[-len(TASK_METRICS[task]):])
            if method == "aiqvit":
                intervals[bits] = report.dfq_intervals
            del q
    return records


def _subset(args) -> str:
    """What a partial run covered, so its time is not read as the whole benchmark's."""
    parts = [f"{name} {' '.join(map(str, chosen))}" for name, chosen, full in
             (("tasks", args.tasks, tuple(TASK_METRICS)), ("methods", args.methods, METHODS), ("bits", args.bits, BITS),
              ("seeds", args.seeds, (0,)))
             if tuple(chosen) != tuple(full)]
    return f"; only {', '.join(parts)} (FP included)" if parts else ""


def _low_bit_budget(recipe: str) -> str:
    """``"; at <= 3 bits: {'iters': 120}"`` for the reconstruction fields a recipe replaces at low bit-widths."""
    return "".join(f"; at <= {bits} bits: {fields}" for bits, fields in LOW_BIT_RECONSTRUCTION.get(recipe, ()))


def _input_gains(recipe: str) -> str:
    """``"; aiqvit at 4/6 bits also learns input gains (...)"``, read from the configs ``quant_config`` builds."""
    rates = {b: quant_config("aiqvit", b, b, recipe).reconstruction.lr_input_gain for b in BITS}
    bits = [b for b, lr in rates.items() if lr > 0]
    if not bits:
        return ""
    return (f"; aiqvit at {'/'.join(map(str, bits))} bits also learns input gains "
            f"(reconstruction.lr_input_gain={rates[bits[0]]:g})")


def protocol(args, last_run: str, seeds: str) -> dict:
    cmd = "python benchmarks/pointcloud/run.py" + (" --smoke" if args.smoke else "") + \
        ("" if args.recipe == "default" or args.smoke else f" --recipe {args.recipe}")
    return {"command": cmd + "  (nox -s benchmark-pointcloud)",
            "data": f"{DATASET}: 15 categories, 40 parts, 2,400 train / 600 test objects, 512 points per shape",
            "models": "Point Transformer, widths (32, 64, 128, 256), one block per stage, k = 16, stride 4; "
                      "float checkpoints packaged (fp16 safetensors, evaluated in fp32), trained by "
                      "benchmarks/pointcloud/train.py",
            "calibration": f"{args.calib_size} shapes drawn from the train split; calibration and config {seeds}",
            "evaluation": (f"the first {args.test_limit} test shapes" if args.test_limit else "the test split") +
                          "; OA / mAcc (cls); instance / class mIoU with the ShapeNetPart protocol (partseg)"
                          + ("" if args.test_limit else "; the test split holds 40 objects per category, so "
                             "OA equals mAcc and instance equals class mIoU"),
            "quantized": "every Linear (weights per channel, inputs per tensor), vector-attention query/key "
                         "operands, post-Softmax weights and aggregated values; BatchNorm stays float",
            "recipe": f"`{args.recipe}`: {RECIPES[args.recipe]}{_low_bit_budget(args.recipe)} "
                      f"(brecq and aiqvit; minmax and repq do not train){_input_gains(args.recipe)}",
            "last run": last_run}


def write_report_only(args, out_json: Path) -> int:
    if not out_json.is_file():
        raise SystemExit(f"no results at {out_json}: run the benchmark first")
    records = json.loads(out_json.read_text())
    text = markdown(records, protocol(args, f"report rewritten from {out_json.name} "
                                            f"({len(records)} records); see the JSON for each run's git commit",
                                      seed_summary(records)))
    write_text_atomic(args.results_dir / "pointcloud.md", text)
    plot_accuracy(records, args.results_dir / "pointcloud_accuracy_vs_bits.png", args.recipe)
    log(f"wrote {args.results_dir / 'pointcloud.md'} from {len(records)} records")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=("cls", "partseg"), default=["cls", "partseg"])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--bits", nargs="+", type=int, default=list(BITS))
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test shapes only")
    ap.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0],
                    help="calibration (and config) seeds, run one after another; default 0")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("AIQVIT_JOBS", 2)),
                    help="tasks run in parallel processes (default 2: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite pointcloud.md and the accuracy plot from the JSON already there (no runs)")
    ap.add_argument("--smoke", action="store_true",
                    help="recipe 'fast', 64 calibration shapes, 96 test shapes, W4/A4 only (plumbing check; "
                         "written to <results-dir>/smoke/)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.recipe, args.calib_size, args.test_limit, args.bits = "fast", 64, 96, [4]
        args.results_dir = args.results_dir / "smoke"
    out_json = args.results_dir / "pointcloud.json"
    if args.report_only:
        return write_report_only(args, out_json)
    start = time.time()
    log(f"data: {DATASET} (generated once, then cached)")
    for split in ("train", "test"):  # build the cache before the workers start
        load_synthetic(split, 512)
    opts = {k: getattr(args, k) for k in ("calib_size", "test_limit", "seeds", "threads", "bits", "methods", "recipe")}
    opts["out_json"] = out_json
    opts["commit"] = git_commit(ROOT)
    if args.jobs > 1 and len(args.tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(args.tasks)), mp_context=ctx) as pool:
            results = list(pool.map(run_task, args.tasks, [opts] * len(args.tasks)))
    else:
        results = [run_task(task, opts) for task in args.tasks]
    records = merge_records(out_json, [BenchmarkRecord(**r) for res in results for r in res["records"]])
    elapsed = time.time() - start
    cpu_total = sum(r["cpu_seconds"] for r in results)
    meta = protocol(args, f"{elapsed / 60:.1f} min wall, {cpu_total / 60:.1f} min CPU, {args.jobs} job(s) x "
                          f"{args.threads} thread(s), git {opts['commit']}" + _subset(args), seed_summary(records))
    md_path = args.results_dir / "pointcloud.md"
    text = markdown(records, meta)
    write_text_atomic(md_path, text)
    plot_accuracy(records, args.results_dir / "pointcloud_accuracy_vs_bits.png", args.recipe)
    for res in results:
        task, intervals = res["task"], res["intervals"]
        bits = 4 if 4 in intervals else next(iter(intervals), None)
        title = f"{MODEL_NAME[task]}: post-Softmax values (float model, calibration data)"
        if bits is not None:
            title += f"; DFQ intervals of AIQViT W{bits}/A{bits}"
        plot_softmax(res["softmax"], intervals.get(bits, {}), args.results_dir / f"pointcloud_softmax_{task}.png",
                     title)
    if "## Targets" in text:
        print(text[text.index("## Targets"):])
    log(f"done in {elapsed / 60:.1f} min ({cpu_total / 60:.1f} min CPU); results in {out_json} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
