import json
import multiprocessing

from aiqvit.io_utils import BenchmarkRecord, merge_records, results_lock


def _record(method: str, bits: int, value: float) -> BenchmarkRecord:
    return BenchmarkRecord(task="t", model="m", method=method, w_bits=bits, a_bits=bits, recipe="r", metric="top1",
                           value=value, calib_seconds=0.0, peak_rss_mb=0.0, seed=0, git_commit="x", notes="")


def _writer(path: str, method: str) -> None:
    for bits in range(40):
        merge_records(path, [_record(method, bits, float(bits))])


def test_merge_replaces_a_rerun_and_keeps_the_rest(tmp_path):
    path = tmp_path / "results.json"
    merge_records(path, [_record("a", 4, 1.0), _record("b", 4, 2.0)])
    merged = merge_records(path, [_record("a", 4, 3.0)])
    assert sorted((r["method"], r["value"]) for r in merged) == [("a", 3.0), ("b", 2.0)]
    assert json.loads(path.read_text()) == merged


def test_concurrent_writers_lose_no_record(tmp_path):
    path = str(tmp_path / "results.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, m)) for m in ("p", "q", "r")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(json.loads(open(path).read())) == 3 * 40


def test_results_lock_is_reentrant(tmp_path):
    path = tmp_path / "results.json"
    with results_lock(path):
        merge_records(path, [_record("a", 4, 1.0)])  # takes the same lock inside
    assert len(json.loads(path.read_text())) == 1
