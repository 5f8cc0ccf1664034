"""The latency regression gates: pytest-benchmark's compare-fail (make bench-compare) and `sdxl-qdq bench-gate`
(make bench-ci: the same comparison corrected for the machine's speed), on synthetic and real benchmarks."""

from __future__ import annotations

import json
import os
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
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", "--benchmark-storage=stored", *args
    )


def _stored(pytester: pytest.Pytester) -> list[Path]:
    return sorted(Path(pytester.path, "stored").glob("*/*.json"))


# The stored run made 2x faster: a 20 ms sleep measured a 23.75 ms median in a run while other work loaded the
# machine and 20.10 ms in the next; against a 30 %-faster copy of the loaded run that is 1.21x, under the 25 %
# threshold, so the plant must be larger than the machine's own noise.
FASTER = 0.5


def test_compare_passes_against_itself_and_fails_against_a_2x_faster_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCH)
    assert _run(pytester, "--benchmark-only", "--benchmark-save=baseline").ret == 0
    (saved,) = _stored(pytester)
    faster = json.loads(saved.read_text())
    for bench in faster["benchmarks"]:
        stats = bench["stats"]
        for key in ("min", "max", "mean", "median", "q1", "q3", "ld15iqr", "hd15iqr", "total"):
            if key in stats:
                stats[key] *= FASTER
        stats["data"] = [x * FASTER for x in stats.get("data", [])]
    saved.with_name("0002_faster.json").write_text(json.dumps(faster))

    same = _run(pytester, "--benchmark-only", "--benchmark-compare=0001", f"--benchmark-compare-fail={THRESHOLD}")
    assert same.ret == 0, same.stdout.str()
    slower = _run(pytester, "--benchmark-only", "--benchmark-compare=0002", f"--benchmark-compare-fail={THRESHOLD}")
    assert slower.ret != 0
    output = slower.stdout.str() + slower.stderr.str()
    assert "Performance has regressed" in output and "median" in output


def test_compare_without_a_stored_run_for_this_machine_says_how_to_record_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCH)
    # another project's session: pytest-benchmark's own behaviour, nothing of this suite's
    guest = _run(pytester, "--benchmark-only", "--benchmark-compare")
    assert "make bench-save" not in guest.stdout.str() + guest.stderr.str()
    # this suite (its ini says so; no conftest: the plugin is an installed entry point, loaded in any folder)
    pytester.makeini("[pytest]\nqdq_suite = true\n")
    result = _run(pytester, "--benchmark-only", "--benchmark-compare")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*no stored benchmark run for this machine*make bench-save*"])


PLANTED = '''
import time
import sdxl_qdq.convert.stages as stages

_build = stages.build


def slow_build(*args, **kwargs):
    time.sleep(float(__import__("os").environ["PLANTED_DELAY_S"]))
    return _build(*args, **kwargs)


def pytest_configure(config):
    if float(__import__("os").environ.get("PLANTED_DELAY_S", "0")) > 0:
        stages.build = slow_build
        __import__("tests.test_benchmarks").test_benchmarks.build = slow_build
'''


def _scaled(run: dict, factor: float, names: tuple[str, ...] | None = None) -> dict:
    """The run with every time of the named benchmarks multiplied by factor; with names=None, the machine's: every
    benchmark's and every machine probe's."""
    out = json.loads(json.dumps(run))
    for bench in out["benchmarks"]:
        if names is None and "machine_probe_s" in bench.get("extra_info", {}):
            bench["extra_info"]["machine_probe_s"] *= factor
        if names is None or bench["name"] in names:
            for key in ("min", "max", "mean", "median", "q1", "q3", "ld15iqr", "hd15iqr", "total", "stddev", "iqr"):
                if key in bench["stats"]:
                    bench["stats"][key] *= factor
            bench["stats"]["data"] = [x * factor for x in bench["stats"].get("data", [])]
    return out


def _run_json(benchmarks: dict[str, float], probe_s: float | None = 0.03) -> dict:
    extra = {} if probe_s is None else {"machine_probe_s": probe_s}
    return {
        "benchmarks": [
            {"name": name, "stats": {"min": t, "median": t, "mean": t, "data": [t] * 5}, "extra_info": extra}
            for name, t in benchmarks.items()
        ]
    }


@pytest.mark.parametrize(
    ("machine", "code", "fails"),
    [
        (1.0, 1.0, False),
        (2.0, 1.0, False),
        (0.5, 1.0, False),
        (1.0, 10.0, True),
        (2.0, 3.5, True),
        (0.4, 7.0, True),
        (3.6, 2.9, True),
    ],
    ids=[
        "same",
        "machine-2x-slower",
        "machine-2x-faster",
        "code-10x",
        "both-slower",
        "faster-machine-hides",
        "load-is-not-the-machine",
    ],
)
def test_bench_gate_judges_the_code_not_the_hour(tmp_path: Path, machine: float, code: float, fails: bool) -> None:
    """A machine slower by a factor moves every time, the probes' too, and passes; code slower moves one and fails,
    even when a faster hour would have hidden it from a raw comparison (0.4 x 7 = 2.8x raw, under the 3x limit;
    5.6x corrected). The correction stops at 2x (this machine kind's span between hours): a 3.6x probe ratio is load,
    and code 2.9x slower under it still fails (10.4x raw / 2 = 5.2x; the miss CI's make test once had)."""
    from sdxl_qdq.cli import main

    stored = _run_json({"test_build_warm": 0.010, "test_pipeline_latency[qdq-1step]": 0.07})
    now = _scaled(_scaled(stored, machine), code, ("test_build_warm",))
    (tmp_path / "stored.json").write_text(json.dumps(stored))
    (tmp_path / "now.json").write_text(json.dumps(now))
    rc = main(["bench-gate", str(tmp_path / "now.json"), "--stored", str(tmp_path / "stored.json")])
    assert rc == (1 if fails else 0)


def test_a_slower_hour_fails_the_raw_comparison_and_passes_the_gate(pytester: pytest.Pytester) -> None:
    """Why the CI gate corrects for the machine: pytest-benchmark's raw median:200% fails a run whose every time,
    the probes' included, is 4x the stored one (the correction stops at 2x: 4x / 2 = 2x, under the 3x limit;
    the tiny warm build measured 4.1 ms in one stored run and 12 to 25 ms for the same code in other hours). 4x, not
    3.2x: the re-run's own noise (a 20 ms sleep measured 20.1 and 23.3 ms medians) must not decide the raw one."""
    pytester.makepyfile(
        test_bench="""
import time
from sdxl_qdq.benchgate import probe_seconds

def test_sleep(benchmark):
    benchmark.extra_info["machine_probe_s"] = probe_seconds()
    benchmark.pedantic(time.sleep, args=(0.02,), rounds=3, iterations=1)
"""
    )
    assert _run(pytester, "--benchmark-only", "--benchmark-save=baseline").ret == 0
    (saved,) = _stored(pytester)
    saved.with_name("0002_faster_hour.json").write_text(json.dumps(_scaled(json.loads(saved.read_text()), 1 / 4)))
    raw = _run(
        pytester,
        "--benchmark-only",
        "--benchmark-compare=0002",
        "--benchmark-compare-fail=median:200%",
        "--benchmark-json=now.json",
    )
    assert raw.ret != 0 and "Performance has regressed" in raw.stdout.str() + raw.stderr.str()
    from sdxl_qdq.cli import main

    # the gate on exactly that run: the first run itself against its 1/4 copy (the re-run's own probe moved 8x
    # against the first one's when other work loaded the machine in between: a test of the arithmetic, not the load)
    stored = saved.with_name("0002_faster_hour.json")
    assert main(["bench-gate", str(saved), "--stored", str(stored)]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fail", "median:200"], "expected STAT:PERCENT%"),
        (["--fail", "p99:200%"], "STAT one of min, median, mean"),
        (["--fail", "median:lots%"], "'lots' is not a number"),
        (["--stored", "missing.json"], "does not exist; write one with --benchmark-json"),
        (["--stored", "noprobe.json"], "has no machine probe"),
        (["--storage", "empty"], "no stored benchmark run for this machine"),
    ],
)
def test_bench_gate_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    from sdxl_qdq.cli import main

    monkeypatch.chdir(tmp_path)
    Path("now.json").write_text(json.dumps(_run_json({"test_build_warm": 0.01})))
    Path("noprobe.json").write_text(json.dumps(_run_json({"test_build_warm": 0.01}, probe_s=None)))
    Path("empty").mkdir()
    assert main(["bench-gate", "now.json", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("slowdown", [1, 10])
def test_ci_perf_gate_fails_a_planted_10x_slowdown_of_the_warm_build(tmp_path: Path, slowdown: int) -> None:
    """`make bench-ci`'s gate (`sdxl-qdq bench-gate`, median 3x after the machine-speed correction) on the real
    warm-build benchmark: against a run of the same code it passes, and it fails with the warm path made 10x slower
    (a sleep of 9 reference medians before each build).

    The reference is recorded here, a moment before, and not read from `baselines/benchmarks/`: under `make test` the
    other worker competes for the cores, so a test of the gate against a run from another hour would test the
    machine. `make bench-ci` itself compares against the stored run, on an otherwise idle machine."""
    import subprocess
    import sys

    from sdxl_qdq.cli import main

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "planted.py").write_text(PLANTED)
    storage = tmp_path / "stored"

    def bench(delay_s: float, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{repo}", "PLANTED_DELAY_S": str(delay_s)}
        env.pop("PYTEST_XDIST_WORKER", None)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "planted",
                "-p",
                "no:xdist",
                "-p",
                "no:cacheprovider",
                "--benchmark-only",
                "-q",
                "tests/test_benchmarks.py::test_build_warm",
                f"--benchmark-storage=file://{storage}",
                "--benchmark-max-time=0.3",
                *args,
            ],
            check=False,
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    reference = bench(0, "--benchmark-save=reference")
    assert reference.returncode == 0, (reference.stdout + reference.stderr)[-3000:]
    (saved,) = storage.glob("*/0001_reference.json")
    median = next(
        b["stats"]["median"] for b in json.loads(saved.read_text())["benchmarks"] if b["name"] == "test_build_warm"
    )
    done = bench((slowdown - 1) * median, f"--benchmark-json={tmp_path / 'now.json'}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rc = main(["bench-gate", str(tmp_path / "now.json"), "--stored", str(saved)])
    assert rc == (0 if slowdown == 1 else 1)
