"""The history of gate runs: one line per run in a JSON Lines store, the trend per model/EP/device, moves larger
than a fraction of a check's noise window flagged as regressions or progressions, and the trend in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge import history


def _summary(mse: float = 5.0, fid: float = 1.0, *, model: str = "canary", ep_detail: str = "CPU EP") -> dict:
    """A summary.json as the gate writes it: two prompts' MSE checks (window 10 each) and one FID check (window 2)."""
    checks = [
        {
            "metric": f"MSE qdq@1 vs float@1 [00{i}-a-prompt]",
            "measured": mse + i,
            "baseline": 5.0 + i,
            "limit": 15.0 + i,
            "harm": 65.0,
            "direction": "max",
            "status": "pass" if mse + i <= 15.0 + i else "changed",
            "detail": "",
        }
        for i in range(2)
    ]
    checks.append(
        {
            "metric": "FID qdq@1 (image-tower)",
            "measured": fid,
            "baseline": 1.0,
            "limit": 3.0,
            "harm": "inf",
            "direction": "max",
            "status": "pass",
            "detail": "",
        }
    )
    return {
        "schema": "sdxl-qdq-gate/summary/1",
        "verdict": "pass",
        "model": model,
        "recipe": "qnn-w8a16",
        "ep": "cpu",
        "ep_detail": ep_detail,
        "prompts": 2,
        "versions": {"onnxruntime": "1.0"},
        "counts": {"pass": 3, "changed": 0, "failed": 0},
        "checks": checks,
    }


def test_a_run_condenses_to_one_series_per_kind_of_check() -> None:
    record = history.condense(_summary(mse=6.0), commit="abc")
    assert set(record["series"]) == {"MSE qdq@1 vs float@1", "FID qdq@1 (image-tower)"}
    mse = record["series"]["MSE qdq@1 vs float@1"]
    assert mse["value"] == pytest.approx(6.5) and mse["baseline"] == pytest.approx(5.5)
    assert mse["window"] == pytest.approx(10.0) and mse["checks"] == 2 and mse["direction"] == "max"
    assert record["series"]["FID qdq@1 (image-tower)"]["window"] == pytest.approx(2.0)
    assert (record["commit"], record["device"], record["model"]) == ("abc", "CPU EP", "canary")


def test_three_runs_and_a_planted_regression_is_flagged(tmp_path: Path) -> None:
    """Runs 1-2 move MSE by 0.05 of its window (noise at fraction 0.1), run 3 by 0.3: a regression, named; FID
    improving by 0.5 of its window is a progression; nothing else is flagged."""
    for mse, fid in ((5.0, 1.0), (5.5, 1.0), (8.5, 0.0)):
        path = history.append(tmp_path, history.condense(_summary(mse, fid)))
    assert path == tmp_path / "canary" / "cpu" / "CPU-EP.jsonl"
    records = history.load(path)
    assert len(records) == 3
    found = history.flags(records, fraction=0.1)
    assert [(f.series, f.kind, f.run) for f in found] == [
        ("MSE qdq@1 vs float@1", "regression", 2),
        ("FID qdq@1 (image-tower)", "progression", 2),
    ]
    assert "REGRESSION MSE qdq@1 vs float@1: 6 -> 9 (+3, 0.30 of its window 10)" in found[0].line()
    assert history.flags(records, fraction=0.4) == [found[1]]  # the same runs under a coarser fraction
    page = history.trend_html(records)
    assert page.count("<svg") == 2 and "regression" in page and "progression" in page


def test_series_follow_the_summarys_groups_whatever_the_check_names() -> None:
    """A per-prompt CLIP floor check is named `CLIP qdq@1 [<prompt>] [<backbone>]`: its series is the group the
    summary names, not one series per prompt."""
    data = _summary()
    data["checks"] = [
        {**c, "metric": f"CLIP qdq@1 [00{i}-p] [scorer]", "group": "CLIP qdq@1 [scorer]"}
        for i, c in enumerate(data["checks"])
    ]
    assert list(history.condense(data)["series"]) == ["CLIP qdq@1 [scorer]"]


def test_devices_and_models_get_their_own_files(tmp_path: Path) -> None:
    a = history.append(tmp_path, history.condense(_summary(), device="Snapdragon X Elite / runner 1"))
    b = history.append(tmp_path, history.condense(_summary(model="tiny")))
    assert a == tmp_path / "canary" / "cpu" / "Snapdragon-X-Elite-runner-1.jsonl" and a != b
    assert history.files(tmp_path) == sorted([a, b])


def test_bad_history_input_is_one_clear_error(tmp_path: Path) -> None:
    path = history.append(tmp_path, history.condense(_summary()))
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ConfigError, match=r"CPU-EP.jsonl, line 2: not JSON"):
        history.load(path)
    with pytest.raises(ConfigError, match="history fraction must be > 0, got 0"):
        history.flags([], fraction=0)
    with pytest.raises(ConfigError, match="is not a folder"):
        history.files(tmp_path / "nowhere")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdxl_qdq", *args], capture_output=True, text=True)


def test_history_cli_appends_shows_plots_and_fails_on_a_regression(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for n, (mse, fid) in enumerate(((5.0, 1.0), (5.1, 1.0), (9.0, 1.0))):
        summary = tmp_path / f"summary{n}.json"
        summary.write_text(json.dumps(_summary(mse, fid)))
        done = _cli("history", "append", str(summary), "--store", str(store), "--commit", f"c{n}")
        assert done.returncode == 0, done.stderr
    plot = tmp_path / "trend.html"
    done = _cli("history", "show", "--store", str(store), "--plot", str(plot), "--fail-on-regression")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "REGRESSION MSE qdq@1 vs float@1: 5.6 -> 9.5" in done.stdout and "(3 runs)" in done.stdout
    assert "<svg" in plot.read_text()
    assert _cli("history", "show", "--store", str(store)).returncode == 0  # reporting alone never fails
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    published = _cli("history", "publish", str(tmp_path / "summary2.json"), "--remote", str(remote), "--device", "npu")
    assert published.returncode == 0 and "published to gate-history: canary/cpu/npu.jsonl" in published.stdout, (
        published.stdout + published.stderr
    )
    assert _cli("history", "publish", str(tmp_path / "summary2.json")).returncode == 2  # no --remote: one line
    bad = _cli("history", "append", str(tmp_path / "missing.json"), "--store", str(store))
    assert bad.returncode == 2 and bad.stderr.strip().endswith("is not a file"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


PASSING_GATE = """
import sys

import numpy as np
import pytest

from sdxl_qdq.judge.checks.mse import mse_at_psnr
from sdxl_qdq.plugin import GATE_KEY

sys.path.insert(0, {tests!r})
from test_verdicts import _gate  # noqa: E402


@pytest.fixture(scope="session")
def qdq_gate(pytestconfig, tmp_path_factory):
    gate = _gate(tmp_path_factory.mktemp("images"), [mse_at_psnr(45.0)] * 2, [mse_at_psnr(45.0)] * 2)
    pytestconfig.stash[GATE_KEY] = gate
    return gate
"""

GATE_TEST = """
import pytest


@pytest.mark.quality
def test_image(qdq_gate):
    assert qdq_gate.all_checks()
"""


def test_the_plugin_appends_each_gate_run_and_the_report_shows_the_trend(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nqdq_suite = true\n")
    pytester.makeconftest(PASSING_GATE.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_q=GATE_TEST)
    for _ in range(2):
        result = pytester.runpytest_subprocess(
            "-p", "no:xdist", "-p", "no:cacheprovider", "--qdq-report=rep", "--qdq-history=hist", "--qdq-device=here"
        )
        assert result.ret == 0, "\n".join(result.outlines[-30:])
    path = pytester.path / "hist" / "synthetic" / "cpu" / "here.jsonl"
    assert len(history.load(path)) == 2
    assert "Trend over the last 2 runs" in (pytester.path / "rep" / "index.html").read_text()


def test_publish_appends_to_the_history_branch_and_retries_when_another_run_pushed_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly's history job: the first run starts the branch, the next appends; a run whose push is refused
    because another run pushed between its fetch and its push fetches again and appends on top (no line lost)."""
    import subprocess

    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    first = history.publish(_summary(5.0), remote=str(remote), branch="gate-history", work=tmp_path / "w1")
    history.publish(_summary(6.0), remote=str(remote), branch="gate-history", work=tmp_path / "w2")
    real, raced = subprocess.run, []

    def racing(args, *a, **k):  # another run pushes just before this run's first push
        if "push" in args and not raced:
            raced.append(True)
            monkeypatch.setattr(subprocess, "run", real)
            history.publish(_summary(7.0), remote=str(remote), branch="gate-history", work=tmp_path / "w3")
            monkeypatch.setattr(subprocess, "run", racing)
        return real(args, *a, **k)

    monkeypatch.setattr(subprocess, "run", racing)
    history.publish(_summary(8.0), remote=str(remote), branch="gate-history", work=tmp_path / "w1")
    monkeypatch.setattr(subprocess, "run", real)
    assert raced
    check = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", "--branch", "gate-history", str(remote), str(check)], check=True)
    records = history.load(check / first.relative_to(tmp_path / "w1"))
    assert [r["series"]["MSE qdq@1 vs float@1"]["value"] for r in records] == [5.5, 6.5, 7.5, 8.5]
    log = subprocess.run(["git", "-C", str(check), "log", "--format=%s"], capture_output=True, text=True).stdout
    assert log.count("gate history: canary cpu CPU EP pass") == 4
