"""Negative controls: recipes known to be wrong on the NPU, run through the whole QNN gate. The gate must fail them
with exit code 1 (not a crash) and its diagnosis must name the cause.

Not part of CI (``-m slow``; ``make gate-qnn-unfused``): the canary's 200 quantized images on the HTP simulator and
the localizer's cuts take 10 to 20 min on 2 cores. Each run writes ``reports/controls/<name>.json``; the measured
run is kept in ``baselines/controls/`` with the commit that made it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdxl_qdq.cache import package_versions
from sdxl_qdq.convert.recipe import DEFAULT_RECIPE
from sdxl_qdq.rehearsal import commit

pytestmark = [pytest.mark.slow, pytest.mark.qnn]
ROOT = Path(__file__).resolve().parent.parent
CONTROL = DEFAULT_RECIPE.parent / "control_unfused_groupnorm.json"
GROUPNORM = re.compile(r"/norm\d*/|GroupNorm|InstanceNormalization")


def test_the_qnn_gate_fails_the_unfused_groupnorm_and_names_a_groupnorm_first(tmp_path: Path) -> None:
    """The canary with torch's GroupNorm decomposition left un-fused (recipes/control_unfused_groupnorm.json), on the
    QNN EP: quality checks fail, the session exits 1 without a traceback (the localizer crashed with a KeyError on
    this case once), and where QNN departs from the CPU EP, the smallest failing subgraph starts at a GroupNorm."""
    report = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "quality",
        "-q",
        "-p",
        "no:cacheprovider",
        "--qdq-ep",
        "qnn",
        "--qdq-recipe",
        str(CONTROL),
        "--qdq-report",
        str(report),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    text = done.stdout + done.stderr
    counts = re.search(r"(\d+) failed, (\d+) passed", text)
    assert done.returncode == 1, text[-4000:]
    assert "Traceback" not in text and "INTERNALERROR" not in text and "diagnosis failed" not in text, text[-4000:]
    sections = {s["title"]: s for s in json.loads((report / "diagnosis.json").read_text())["sections"]}
    departs = next(s for title, s in sections.items() if "QNN departs" in title)
    subgraph = [line for line in departs["lines"] if "smallest failing subgraph" in line]
    first_node = departs["lines"][departs["lines"].index(subgraph[0]) + 1] if subgraph else ""
    page = (report / "index.html").read_text()
    record = {
        "control": CONTROL.name,
        "commit": commit(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "versions": package_versions(),
        "exit_code": done.returncode,
        "failed": int(counts.group(1)) if counts else None,
        "passed": int(counts.group(2)) if counts else None,
        "wall_s": round(wall, 1),
        "qnn_departs": departs["lines"],
        "worst_layers": sections.get(next(t for t in sections if "worst layers" in t), {}).get("lines"),
    }
    out = ROOT / "reports" / "controls" / "unfused-groupnorm-qnn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    assert counts and int(counts.group(1)) > 0, text[-4000:]
    assert subgraph and GROUPNORM.search(first_node), departs["lines"]
    assert page.index("Where the error comes from") < page.index("<h2>Images")
