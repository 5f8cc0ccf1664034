"""CI workflow files validate against GitHub's workflow schema (vendored by check-jsonschema: offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / ".github" / "workflows").glob("*.yml"))


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_github_schema(workflow: Path) -> None:
    done = _validate(workflow)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflows_run_the_documented_gates() -> None:
    text = {p.stem: p.read_text() for p in WORKFLOWS}
    assert "make test" in text["ci"]
    assert "-m quality --ep qnn" in text["nightly-npu"] and "--benchmark-compare-fail" in text["nightly-npu"]
    assert "upload-artifact" in text["nightly-npu"]


def test_validator_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps: not-a-list\n")
    assert _validate(broken).returncode != 0
