"""Stored records of runs CI does not make (``make test-long``): what ran, on which commit and machine, with what
outcome and time, so a reviewer sees that they passed and when. ``python -m sdxl_qdq.records junit XML OUT``."""

from __future__ import annotations

import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdxl_qdq.cache import package_versions
from sdxl_qdq.errors import ConfigError


def junit_record(xml: Path) -> dict[str, Any]:
    """Each test case of a JUnit XML file (pytest's --junitxml) with its outcome and seconds, and the totals."""
    if not Path(xml).is_file():
        raise ConfigError(f"JUnit file {str(xml)!r} does not exist; run pytest with --junitxml={xml} first")
    tests = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = next((t for t in ("failure", "error", "skipped") if case.find(t) is not None), "passed")
        tests.append(
            {
                "id": f"{case.get('classname', '')}::{case.get('name', '')}",
                "outcome": {"failure": "failed", "error": "error"}.get(outcome, outcome),
                "seconds": round(float(case.get("time", 0)), 1),
            }
        )
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    from sdxl_qdq.rehearsal import commit

    return {
        "commit": commit(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "versions": package_versions(),
        "counts": counts,
        "seconds": round(sum(t["seconds"] for t in tests), 1),
        "tests": tests,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "junit":
        print("usage: python -m sdxl_qdq.records junit XML OUT_JSON", file=sys.stderr)
        return 2
    try:
        record = junit_record(Path(argv[1]))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(f"{out}: {record['counts']} on {record['commit']}")
    return 0 if set(record["counts"]) <= {"passed", "skipped"} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
