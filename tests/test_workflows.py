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
    import yaml

    text = {p.stem: p.read_text() for p in WORKFLOWS}
    assert "make test" in text["ci"] and "make gate-qnn" in text["ci"]
    night = yaml.safe_load(text["nightly-npu"])["jobs"]
    assert list(night) == ["build", "device", "judge"]
    assert night["device"]["needs"] == "build" and night["judge"]["needs"] == "device"
    assert "self-hosted" in night["device"]["runs-on"] and "arm64" in night["device"]["runs-on"]
    device = "\n".join(str(step.get("run", "")) + str(step.get("with", "")) for step in night["device"]["steps"])
    assert "requirements/device.txt" in device and "constraints.txt" not in device and "make setup" not in device
    assert "'architecture': 'arm64'" in device and "device-check" in device and "--benchmark-compare-fail" in device
    build = "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in night["build"]["steps"])
    assert "sdxl-qdq bundle" in build and "actions/cache" in build
    judge = "\n".join(str(step.get("run", "")) for step in night["judge"]["steps"])
    assert "-m quality" in judge and "--ep qnn" in judge and "--from-device" in judge


def test_validator_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps: not-a-list\n")
    assert _validate(broken).returncode != 0
