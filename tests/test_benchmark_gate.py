"""The latency regression gate: pytest-benchmark's compare-fail against stored runs, on a synthetic benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

THRESHOLD = "median:25%"  # the documented threshold of `make bench-compare`
BENCH = """
import time

def test_sleep(benchmark):
    benchmark.pedantic(time.sleep, args=(0.02,), rounds=5, iterations=1)
"""


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-benchmark disables itself in a process that inherits PYTEST_XDIST_WORKER."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--benchmark-storage=stored", *args)


def _stored(pytester: pytest.Pytester) -> list[Path]:
    return sorted(Path(pytester.path, "stored").glob("*/*.json"))


def test_compare_passes_against_itself_and_fails_against_a_30_percent_faster_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCH)
    assert _run(pytester, "--benchmark-only", "--benchmark-save=baseline").ret == 0
    (saved,) = _stored(pytester)
    faster = json.loads(saved.read_text())
    for bench in faster["benchmarks"]:
        stats = bench["stats"]
        for key in ("min", "max", "mean", "median", "q1", "q3", "ld15iqr", "hd15iqr", "total"):
            if key in stats:
                stats[key] *= 0.7
        stats["data"] = [x * 0.7 for x in stats.get("data", [])]
    saved.with_name("0002_faster.json").write_text(json.dumps(faster))

    same = _run(pytester, "--benchmark-only", "--benchmark-compare=0001", f"--benchmark-compare-fail={THRESHOLD}")
    assert same.ret == 0, same.stdout.str()
    slower = _run(pytester, "--benchmark-only", "--benchmark-compare=0002", f"--benchmark-compare-fail={THRESHOLD}")
    assert slower.ret != 0
    output = slower.stdout.str() + slower.stderr.str()
    assert "Performance has regressed" in output and "median" in output


def test_compare_without_a_stored_run_for_this_machine_says_how_to_record_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCH)
    pytester.makeconftest((Path(__file__).resolve().parent.parent / "conftest.py").read_text())
    result = _run(pytester, "--benchmark-only", "--benchmark-compare")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*no stored benchmark run for this machine*make bench-save*"])
