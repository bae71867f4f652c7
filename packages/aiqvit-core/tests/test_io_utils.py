import dataclasses
import json
import multiprocessing

import pytest

from aiqvit.io_utils import BenchmarkRecord, mean_over_seeds, merge_records, results_lock


def _record(method: str, bits: int, value: float, seed: int = 0, seconds: float = 0.0,
            rss: float = 0.0) -> BenchmarkRecord:
    return BenchmarkRecord(task="t", model="m", method=method, w_bits=bits, a_bits=bits, recipe="r", metric="top1",
                           value=value, calib_seconds=seconds, peak_rss_mb=rss, seed=seed, git_commit="x", notes="")


def _writer(path: str, method: str) -> None:
    for bits in range(40):
        merge_records(path, [_record(method, bits, float(bits))])


def test_merge_replaces_a_rerun_and_keeps_the_rest(tmp_path):
    path = tmp_path / "results.json"
    merge_records(path, [_record("a", 4, 1.0), _record("b", 4, 2.0)])
    merged = merge_records(path, [_record("a", 4, 3.0)])
    assert sorted((r["method"], r["value"]) for r in merged) == [("a", 3.0), ("b", 2.0)]
    assert json.loads(path.read_text()) == merged


def test_merge_keeps_other_seeds_and_replaces_the_same_seed(tmp_path):
    path = tmp_path / "results.json"
    merge_records(path, [_record("a", 4, 1.0, seed=0), _record("a", 4, 2.0, seed=1)])
    merged = merge_records(path, [_record("a", 4, 5.0, seed=1)])
    assert sorted((r["seed"], r["value"]) for r in merged) == [(0, 1.0), (1, 5.0)]


def test_mean_over_seeds_pools_repeats_of_one_setting():
    records = [dataclasses.asdict(r) for r in (
        _record("a", 4, 80.0, seed=2, seconds=30.0, rss=900.0), _record("b", 4, 70.0),
        _record("a", 4, 84.0, seed=0, seconds=10.0, rss=1000.0), _record("a", 6, 90.0, seed=0))]
    pooled = mean_over_seeds(records)
    assert [(r["method"], r["w_bits"]) for r in pooled] == [("a", 4), ("b", 4), ("a", 6)]
    a4 = pooled[0]
    assert a4["value"] == pytest.approx(82.0) and a4["std"] == pytest.approx(8.0 ** 0.5)
    assert a4["seeds"] == [0, 2] and a4["values"] == [84.0, 80.0]
    assert a4["calib_seconds"] == pytest.approx(20.0) and a4["peak_rss_mb"] == 1000.0
    assert pooled[1]["std"] == 0.0 and pooled[1]["seeds"] == [0]


def test_concurrent_writers_lose_no_record(tmp_path):
    path = str(tmp_path / "results.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, m)) for m in ("p", "q", "r")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # a guard against a deadlock only: spawning three torch imports on a loaded machine is slow
    assert all(p.exitcode == 0 for p in procs)
    assert len(json.loads(open(path).read())) == 3 * 40


def test_results_lock_is_reentrant(tmp_path):
    path = tmp_path / "results.json"
    with results_lock(path):
        merge_records(path, [_record("a", 4, 1.0)])  # takes the same lock inside
    assert len(json.loads(path.read_text())) == 1
