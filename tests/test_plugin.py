"""The plugin is an installed pytest11 entry point: its options exist wherever pytest runs, whatever the path form."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_qdq.convert.recipe import DEFAULT_RECIPE


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_options_work_outside_the_repo_with_an_absolute_path(tmp_path: Path, form: str) -> None:
    """pytest takes its rootdir from path arguments: with the options in a conftest.py, `--recipe /abs/path` run
    outside the repo was 'unrecognized arguments'. As an entry point the plugin is always there."""
    recipe = str(DEFAULT_RECIPE.resolve())
    (tmp_path / "test_probe.py").write_text(
        "def test_probe(pytestconfig):\n"
        f"    assert pytestconfig.getoption('qdq_recipe') == {recipe!r}\n"
        "    assert pytestconfig.getoption('qdq_ep') == 'qnn'\n")
    args = ["--recipe", recipe, "--ep", "qnn"] if form == "separate" else [f"--recipe={recipe}", "--ep=qnn"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_probe.py"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "sdxl_qdq"] == ["sdxl_qdq.plugin"]
    assert not (Path(__file__).resolve().parent.parent / "conftest.py").exists(), "the plugin lives in sdxl_qdq/plugin.py"
