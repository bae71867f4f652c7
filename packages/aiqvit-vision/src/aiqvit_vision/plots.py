"""Benchmark plots (matplotlib, Agg): accuracy vs bits per method, post-Softmax histograms with the learned
DFQ interval per block, searched rank per layer.

Inputs: the records of ``benchmarks/results/vision.json`` and the details file beside it
(``vision_details.json``: per task and setting the searched ranks, DFQ intervals and post-Softmax histograms).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from aiqvit.io_utils import atomic_path, mean_over_seeds  # noqa: E402

DETAILS_FILE = "vision_details.json"


HIST_LOG10_MIN = -6.0  # post-Softmax histograms: log10-spaced bins on [1e-6, 1]; smaller values join the first


def softmax_histograms(model, batches, adapter_run, bins: int = 96) -> dict:
    """Per attention module: histogram of the post-Softmax values of the float model on ``batches``,
    in ``bins`` log10-spaced bins on [1e-6, 1] (most of the mass, and DFQ's log-spaced levels, sit far
    below 0.1, where linear bins would see one spike).

    Hooks the ``probs`` quantizer call of the wrapped attentions (which are identities with quantization off).
    """
    from aiqvit import AttentionQuantizers, quantization_disabled

    hists, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, AttentionQuantizers):
            def hook(_m, args, _out, name=name):
                x = args[0].detach().float().flatten().clamp(10 ** HIST_LOG10_MIN, 1).log10()
                counts = torch.histc(x, bins=bins, min=HIST_LOG10_MIN, max=0.0)
                hists[name] = hists.get(name, torch.zeros(bins)) + counts
            handles.append(module.probs_quantizer.register_forward_hook(hook))
    try:
        with torch.no_grad(), quantization_disabled(model):
            for b in batches:
                adapter_run(model, b)
    finally:
        for h in handles:
            h.remove()
    return {k: v.tolist() for k, v in hists.items()}


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_vs_bits(records: list[dict], out_dir: Path) -> list[Path]:
    written = []
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task and r["metric"] == "top1"]
        fp = [r["value"] for r in rows if r["method"] == "fp"]
        methods = sorted({r["method"] for r in rows if r["method"] != "fp" and "+" not in r["method"]})
        if not methods:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            pts = sorted((r["w_bits"], r["value"]) for r in rows if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        if fp:
            ax.axhline(fp[0], color="k", linestyle="--", label=f"FP {fp[0]:.2f}")
        ax.set_xlabel("bits (W = A)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{task}: accuracy vs bit-width")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"vision_{task}_accuracy_vs_bits.png"))
    return written


def dfq_levels(b1: float, b2: float, bits: int, spacing: str) -> list[float]:
    """The dequantized values of DFQ's in-interval codes (``top="b2"``)."""
    from aiqvit.primitives import dfq_dequantize

    codes = torch.arange(1, 2**bits)
    return dfq_dequantize(codes, torch.tensor(b1), torch.tensor(b2), bits, "b2", spacing).tolist()


def plot_softmax_histograms(task: str, hists: dict, intervals: dict, out_dir: Path, setting: str,
                            bits: int | None = None, spacing: str = "uniform") -> Path | None:
    """Log-binned post-Softmax histograms per block, the learned DFQ interval shaded and, when ``bits``
    is given, its quantization levels as ticks."""
    if not hists:
        return None
    names = list(hists)
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        counts = hists[name]
        edges = [10 ** (HIST_LOG10_MIN * (1 - i / len(counts))) for i in range(len(counts) + 1)]
        ax.stairs([max(c, 0.5) for c in counts], edges, fill=True, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if name in intervals:
            b1, b2 = intervals[name]
            ax.axvspan(max(b1, edges[0]), b2, color="tab:red", alpha=0.2, label=f"DFQ [{b1:.2g}, {b2:.2g}]")
            if bits:
                for level in dfq_levels(b1, b2, bits, spacing):
                    ax.axvline(max(level, edges[0]), color="tab:red", linewidth=0.5, alpha=0.8)
            ax.legend(fontsize=6)
        ax.set_title(name.replace(".attn.quantizers", ""), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    levels = f", {spacing} levels" if bits else ""
    fig.suptitle(f"{task}: post-Softmax values (FP model) and learned DFQ interval{levels}, {setting}", fontsize=10,
                 y=1.02)
    return _save(fig, out_dir / f"vision_{task}_softmax_dfq_{setting}.png")


def plot_ranks(task: str, ranks: dict, out_dir: Path, setting: str) -> Path | None:
    if not ranks:
        return None
    names = list(ranks)
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 3.5))
    ax.bar(range(len(names)), [ranks[n] for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("searched rank")
    ax.set_title(f"{task}: searched low-rank per layer, {setting}")
    return _save(fig, out_dir / f"vision_{task}_ranks_{setting}.png")


def plots_from_results(results: str | Path, out_dir: str | Path) -> list[Path]:
    results, out_dir = Path(results), Path(out_dir)
    if not results.is_file():
        raise FileNotFoundError(f"results file {results} not found; run benchmarks/vision/run.py first")
    records = mean_over_seeds(json.loads(results.read_text()))
    written = plot_accuracy_vs_bits(records, out_dir)
    details_path = results.parent / DETAILS_FILE
    details = json.loads(details_path.read_text()) if details_path.is_file() else {}
    for task, entry in details.items():
        for setting, d in entry.get("settings", {}).items():
            for path in (plot_softmax_histograms(task, entry.get("softmax_hist", {}), d.get("dfq_intervals", {}),
                                                 out_dir, setting, d.get("bits"), d.get("dfq_spacing", "uniform")),
                         plot_ranks(task, d.get("ranks", {}), out_dir, setting)):
                if path is not None:
                    written.append(path)
    return written
