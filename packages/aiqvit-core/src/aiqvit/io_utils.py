"""Atomic file writes and benchmark records shared by the task packages."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on
    failure it is removed. Works for files and for directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (and its waited-for children), MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return max(own, kids) * scale


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclasses.dataclass
class BenchmarkRecord:
    """One benchmark run: the schema of ``benchmarks/results/*.json`` for every task."""

    task: str
    model: str
    method: str
    w_bits: int | None
    a_bits: int | None
    recipe: str
    metric: str
    value: float
    calib_seconds: float
    peak_rss_mb: float
    seed: int
    git_commit: str
    notes: str = ""


_LOCKS_HELD: dict[str, int] = {}


@contextlib.contextmanager
def results_lock(path: str | os.PathLike):
    """Exclusive lock on a results file across processes (several benchmark runs may share one),
    re-entrant within a process. Without ``fcntl`` (Windows) it only counts."""
    key = str(Path(path).resolve())
    if _LOCKS_HELD.get(key):
        _LOCKS_HELD[key] += 1
        try:
            yield
        finally:
            _LOCKS_HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"aiqvit-results-{digest}.lock", "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        _LOCKS_HELD[key] = 1
        try:
            yield
        finally:
            _LOCKS_HELD.pop(key, None)
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


#: what identifies one run in a results file; records that differ only in ``seed`` are repeats
SETTING_KEY = ("task", "model", "method", "w_bits", "a_bits", "recipe", "metric")
RUN_KEY = SETTING_KEY + ("seed",)


def merge_records(path: str | os.PathLike, records: list[BenchmarkRecord]) -> list[dict]:
    """Add ``records`` to the JSON list at ``path`` (replacing runs with the same task, model,
    method, bits, recipe, metric and seed), atomically and under :func:`results_lock`. Returns the
    full list. Runs of one setting with other seeds are kept: :func:`mean_over_seeds` pools them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with results_lock(path):
        existing = json.loads(path.read_text()) if path.exists() else []
        new = [dataclasses.asdict(r) for r in records]
        new_keys = {tuple(r[k] for k in RUN_KEY) for r in new}
        merged = [r for r in existing if tuple(r.get(k) for k in RUN_KEY) not in new_keys] + new
        write_json_atomic(path, merged)
    return merged


def mean_over_seeds(records: list[dict]) -> list[dict]:
    """One record per setting (:data:`SETTING_KEY`): ``value`` and ``calib_seconds`` are the means
    over its seeds, ``peak_rss_mb`` the largest; ``seeds`` lists them, ``values`` holds each seed's
    value in that order and ``std`` their sample standard deviation (0.0 for a single seed). The
    first record of each setting gives the other fields; settings keep their first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in SETTING_KEY), []).append(r)
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.get("seed", 0))
        values = [float(r["value"]) for r in runs]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        out.append({**runs[0], "value": mean, "std": std, "values": values, "seeds": [r.get("seed") for r in runs],
                    "calib_seconds": sum(float(r["calib_seconds"]) for r in runs) / len(runs),
                    "peak_rss_mb": max(float(r["peak_rss_mb"]) for r in runs)})
    return out
