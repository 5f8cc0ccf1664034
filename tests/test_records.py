"""Records of the runs CI leaves out (make test-long): every test's outcome and time, with the commit."""

from __future__ import annotations

import json
from pathlib import Path

from sdxl_qdq.records import main

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok" time="12.5"/>
<testcase classname="tests.test_a" name="test_bad" time="3.0"><failure message="x">x</failure></testcase>
<testcase classname="tests.test_b" name="test_skip[1]" time="0.0"><skipped message="why"/></testcase>
</testsuite></testsuites>"""


def test_a_junit_file_becomes_a_record_and_a_failure_is_exit_1(tmp_path: Path) -> None:
    xml, out = tmp_path / "run.xml", tmp_path / "records" / "long.json"
    xml.write_text(JUNIT)
    assert main(["junit", str(xml), str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["counts"] == {"passed": 1, "failed": 1, "skipped": 1} and record["seconds"] == 15.5
    assert record["tests"][0] == {"id": "tests.test_a::test_ok", "outcome": "passed", "seconds": 12.5}
    assert "commit" in record and "versions" in record
    xml.write_text(JUNIT.replace('<failure message="x">x</failure>', ""))
    assert main(["junit", str(xml), str(out)]) == 0


def test_a_missing_junit_file_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["junit", str(tmp_path / "none.xml"), str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and not (tmp_path / "out.json").exists()
