"""The plugin is an installed pytest11 entry point: its options exist wherever pytest runs, whatever the path form;
and it is a guest in every other project's sessions: prefixed options, namespaced fixtures, no environment changes,
none of its collection or reporting hooks acting outside this suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_options_work_outside_the_repo_with_an_absolute_path(tmp_path: Path, form: str) -> None:
    """pytest takes its rootdir from path arguments: with the options in a conftest.py, `--qdq-recipe /abs/path` run
    outside the repo was 'unrecognized arguments'. As an entry point the plugin is always there."""
    recipe = str(DEFAULT_RECIPE.resolve())
    (tmp_path / "test_probe.py").write_text(
        "def test_probe(pytestconfig):\n"
        f"    assert pytestconfig.getoption('qdq_recipe') == {recipe!r}\n"
        "    assert pytestconfig.getoption('qdq_ep') == 'qnn'\n"
    )
    args = (
        ["--qdq-recipe", recipe, "--qdq-ep", "qnn"]
        if form == "separate"
        else [f"--qdq-recipe={recipe}", "--qdq-ep=qnn"]
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_probe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "sdxl_qdq"] == ["sdxl_qdq.plugin"]
    assert not (Path(__file__).resolve().parent.parent / "conftest.py").exists(), (
        "the plugin lives in sdxl_qdq/plugin.py"
    )


FOREIGN_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--model", default="theirs")
    parser.addoption("--report", default=None)
    parser.addoption("--ep", default="gpu")

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: their own slow marker")
"""

FOREIGN_TESTS = """
import os
import pytest

def test_their_option(pytestconfig):
    assert pytestconfig.getoption("--model") == "theirs" and pytestconfig.getoption("--ep") == "gpu"

def test_pytest_cache(cache):
    cache.set("guest/value", 1)
    assert cache.get("guest/value", None) == 1

def test_hub_offline_untouched():
    assert os.environ.get("HF_HUB_OFFLINE") is None and os.environ.get("HF_DATASETS_OFFLINE") is None

@pytest.fixture
def gate():
    return "their gate"

def test_their_gate_fixture(gate):
    assert gate == "their gate"

@pytest.mark.slow
def test_their_slow_test_runs():
    assert True

def test_parity_of_theirs_fails():
    assert 1 == 2
"""


def test_a_foreign_project_is_untouched(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unrelated project in the same environment: its own --model/--report/--ep options, pytest's ``cache``
    fixture, a fixture named ``gate``, its own ``slow`` marker (not skipped), HF_HUB_OFFLINE unset; a failing test
    named like a parity check gets no localization section."""
    from importlib.metadata import entry_points

    assert any(e.value == "sdxl_qdq.plugin" for e in entry_points(group="pytest11")), "the plugin is installed"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    pytester.makeconftest(FOREIGN_CONFTEST)
    pytester.makepyfile(test_guest=FOREIGN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:xdist")
    result.assert_outcomes(passed=5, failed=1)
    text = "\n".join(result.outlines + result.errlines)
    assert "worst layers" not in text and "QNN departs" not in text and "no localization" not in text
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "--qdq-model" in help_text and "--model" in help_text


def test_every_plugin_option_and_fixture_is_namespaced() -> None:
    from sdxl_qdq import plugin

    assert plugin.PREFIX == "--qdq-"
    fixtures = [
        name
        for name, value in vars(plugin).items()
        if hasattr(value, "_pytestfixturefunction") or type(value).__name__ == "FixtureFunctionDefinition"
    ]
    assert fixtures and all(name.startswith("qdq_") for name in fixtures), fixtures


def test_the_gate_fixtures_restore_the_environment(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdxl_qdq.plugin import _offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # a user's own value is kept
    with _offline(pytestconfig):
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"


def test_package_messages_name_the_plugins_flags() -> None:
    from sdxl_qdq.plugin import plugin_flags

    assert (
        plugin_flags("pass --coco-dir DIR, or --ep qnn --update-baselines; not --eps or --model-x")
        == "pass --qdq-coco-dir DIR, or --qdq-ep qnn --qdq-update-baselines; not --eps or --model-x"
    )


BROKEN_DIAGNOSIS = """
import sdxl_qdq.diagnose.localize as localize


def broken(build):
    raise KeyError("no shape recorded for 'penultimate_hidden_states_QuantizeLinear_Input'")


localize.localize_build = broken  # the localizer's old crash, planted
"""

FAILING_QUALITY = """
import pytest


@pytest.mark.quality
def test_quality_fails(qdq_artifacts):
    assert qdq_artifacts.qdq.models
    assert 1 == 2, "a planted quality failure"
"""


def test_a_failing_diagnosis_is_one_line_and_keeps_the_verdict(pytester: pytest.Pytester) -> None:
    """The failure summary explains; it never adds a failure. With the localizer raising (as it did with "no shape
    recorded" on text_encoder_2), the session still reports the one failed test with exit code 1, and the summary
    says in one line that the diagnosis failed (it ended the session with a traceback before)."""
    pytester.makeini("[pytest]\nqdq_suite = true\n")
    pytester.makeconftest(BROKEN_DIAGNOSIS)
    pytester.makepyfile(test_q=FAILING_QUALITY)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:xdist", "-p", "no:cacheprovider")
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    result.assert_outcomes(failed=1)
    assert "INTERNALERROR" not in text
    line = [x for x in result.outlines if "diagnosis failed" in x]
    assert line == [
        "(diagnosis failed, the verdict stands: KeyError: \"no shape recorded for "
        "'penultimate_hidden_states_QuantizeLinear_Input'\")"
    ], text[-3000:]


DIAGNOSED_GATE = """
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import sdxl_qdq.diagnose.localize as localize
from sdxl_qdq.judge.checks.mse import mse_at_psnr
from sdxl_qdq.plugin import BUILD_KEY, GATE_KEY

sys.path.insert(0, {tests!r})
from test_verdicts import _gate  # noqa: E402

CALLS = Path(__file__).parent / "localized.txt"


def counted(build):
    with open(CALLS, "a") as f:
        f.write("called\\n")
    return {{"unet": [SimpleNamespace(sqnr_db=7.5, tensor="/up/norm1/planted_output_0")]}}


localize.localize_build = counted


@pytest.fixture(scope="session")
def qdq_gate(pytestconfig, tmp_path_factory):
    pytestconfig.stash[BUILD_KEY] = "a build (the planted localizer reads nothing of it)"
    gate = _gate(tmp_path_factory.mktemp("images"), [mse_at_psnr(20.0)] * 2, [mse_at_psnr(40.0)] * 2)
    pytestconfig.stash[GATE_KEY] = gate
    return gate
"""

GATE_TEST = """
import pytest


@pytest.mark.quality
def test_image(qdq_gate):
    failed = [c for c in qdq_gate.all_checks() if c.status == "failed"]
    assert not failed, failed[0].failure
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failing_gate_is_diagnosed_once_for_the_report_and_the_terminal(
    pytester: pytest.Pytester, workers: int
) -> None:
    """The report of a failing gate shows where the error comes from (it had no diagnosis), the terminal summary
    shows the same lines, and the localizer runs once for both: in the process that ran the gate, or, under xdist,
    in the worker (the controller reads its diagnosis.json)."""
    pytester.makeini("[pytest]\nqdq_suite = true\n")
    pytester.makeconftest(DIAGNOSED_GATE.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_q=GATE_TEST)
    xdist = ["-n", "1"] if workers else ["-p", "no:xdist"]
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *xdist, "--qdq-report=rep")
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    assert [x for x in result.outlines if "/up/norm1/planted_output_0" in x] == [
        "unet               7.50 dB  /up/norm1/planted_output_0"
    ], text[-3000:]
    assert (pytester.path / "localized.txt").read_text().count("called") == 1
    page = (pytester.path / "rep" / "index.html").read_text()
    assert "Where the error comes from" in page and "/up/norm1/planted_output_0" in page
    assert (pytester.path / "rep" / "diagnosis.json").is_file()


def test_an_option_path_outside_the_suite_that_loses_its_ini_is_one_clear_error(pytester: pytest.Pytester) -> None:
    """`--qdq-recipe /elsewhere/r.json` (a separate token): pytest counted the file as a test path, took the common
    ancestor as rootdir and lost the suite's ini (every marker unknown, the gate's hooks off; it ran on anyway). Now
    it is a usage error naming the fix; the `=` form keeps the ini."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nqdq_suite = true\n')
    pytester.makepyfile(test_q="def test_q():\n    assert True\n")
    outside = pytester.path.parent / f"{pytester.path.name}-recipe.json"
    outside.write_text(DEFAULT_RECIPE.read_text())
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--qdq-recipe", str(outside))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"write --qdq-recipe={outside}" in "\n".join(result.errlines), "\n".join(result.errlines)
    fine = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", f"--qdq-recipe={outside}")
    assert fine.ret == 0, "\n".join(fine.outlines[-20:])
