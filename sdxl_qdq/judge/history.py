"""A history of gate runs: each run's summary.json, condensed to one line of a JSON Lines store, and the trend of
every metric per model, EP and device, with a flag where it moved by more than a fraction of its noise window.

Why JSON Lines in a results branch and not SQLite: a run appends one line; a night's host and device jobs append to
different files (``<model>/<ep>/<device>.jsonl``) so they never conflict; git keeps, diffs and reviews it; nothing
needs a server; and CI artifacts (which expire) are not the store. SQLite would be a binary file in git: no diff, no
merge of two runners' appends. ``sdxl-qdq history`` and the report read the same file.

A series is one kind of check for one step count or label (``MSE qdq@1 vs float@1``: the mean over prompts of the
per-prompt checks; ``FID qdq@2 (…)``: the set's value), with its noise window (mean |limit − baseline|). Between two
consecutive runs a move larger than ``fraction`` × window is a *regression* in the check's bad direction and a
*progression* in its good one (Qualcomm AI Hub's scorecard flags a tenth of its threshold the same way).
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.errors import ConfigError

SCHEMA_ID = "sdxl-qdq-gate/history/1"
DEFAULT_FRACTION = 0.1
_PROMPT = re.compile(r" \[[^\]]*\]$")


def _float(x: Any) -> float:
    return float(x)  # summary.json writes inf/nan as strings: float() reads both


def condense(summary: dict[str, Any], *, device: str | None = None, commit: str | None = None) -> dict[str, Any]:
    """One history line from a summary.json: the run's identity and each series' value, baseline and window."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in summary["checks"]:  # a summary without groups (older runs): the metric's name less a trailing [prompt]
        groups.setdefault(c.get("group") or _PROMPT.sub("", c["metric"]), []).append(c)
    series = {}
    for name, checks in groups.items():
        measured = [_float(c["measured"]) for c in checks]
        base = [_float(c["baseline"]) for c in checks]
        window = [abs(_float(c["limit"]) - b) for c, b in zip(checks, base)]
        series[name] = {
            "value": float(np.mean(measured)),
            "baseline": float(np.mean(base)),
            "window": float(np.mean(window)),
            "direction": checks[0]["direction"],
            "failed": sum(c["status"] == "failed" for c in checks),
            "checks": len(checks),
        }
    return {
        "schema": SCHEMA_ID,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "model": summary["model"],
        "recipe": summary["recipe"],
        "ep": summary["ep"],
        "device": device or summary["ep_detail"],
        "verdict": summary["verdict"],
        "counts": summary["counts"],
        "prompts": summary["prompts"],
        "versions": summary.get("versions", {}),
        "series": series,
    }


def store_file(store: Path, record: dict[str, Any]) -> Path:
    """Where ``record`` goes in a store folder: ``<model>/<ep>/<device>.jsonl`` (names made safe)."""
    safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-")[:80] or "unnamed"  # noqa: E731
    return Path(store) / safe(record["model"]) / safe(record["ep"]) / f"{safe(record['device'])}.jsonl"


def append(store: Path, record: dict[str, Any]) -> Path:
    """Add ``record`` as the last line of its file in ``store`` (the whole file rewritten to a temp file, then
    renamed: a killed run never leaves half a line)."""
    path = store_file(store, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(before + json.dumps(record) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load(path: Path) -> list[dict[str, Any]]:
    """The records of one history file, oldest first; a bad line is an error naming the file and line."""
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"history file {path}, line {n}: not JSON ({e}); remove or fix that line") from e
        if record.get("schema") != SCHEMA_ID:
            raise ConfigError(f"history file {path}, line {n}: schema {record.get('schema')!r}, expected {SCHEMA_ID}")
        records.append(record)
    return records


def files(store: Path) -> list[Path]:
    """Every history file of a store folder."""
    if not Path(store).is_dir():
        raise ConfigError(f"history store {str(store)!r} is not a folder; pass the folder runs were appended to")
    return sorted(Path(store).rglob("*.jsonl"))


@dataclass(frozen=True)
class Flag:
    series: str
    kind: str  # "regression" | "progression"
    before: float
    after: float
    window: float
    run: int  # index of the later run
    when: str

    def line(self) -> str:
        moved = self.after - self.before
        return (
            f"{self.kind.upper()} {self.series}: {self.before:.5g} -> {self.after:.5g} ({moved:+.3g}, "
            f"{abs(moved) / self.window:.2f} of its window {self.window:.3g}) at run {self.run + 1} ({self.when})"
        )


def flags(records: list[dict[str, Any]], *, fraction: float = DEFAULT_FRACTION) -> list[Flag]:
    """Moves between consecutive runs larger than ``fraction`` of the series' noise window."""
    if not fraction > 0:
        raise ConfigError(f"history fraction must be > 0, got {fraction!r}")
    found = []
    for i in range(1, len(records)):
        before, after = records[i - 1]["series"], records[i]["series"]
        for name, s in after.items():
            if name not in before:
                continue
            moved, window = s["value"] - before[name]["value"], max(s["window"], before[name]["window"])
            if window > 0 and abs(moved) > fraction * window:
                worse = moved > 0 if s["direction"] == "max" else moved < 0
                kind = "regression" if worse else "progression"
                found.append(Flag(name, kind, before[name]["value"], s["value"], window, i, records[i]["time"]))
    return found


def table(records: list[dict[str, Any]], *, last: int = 8) -> list[str]:
    """Each series' values over the last ``last`` runs, one line per series."""
    shown = records[-last:]
    names = list(dict.fromkeys(n for r in shown for n in r["series"]))
    width = max([len(n) for n in names] + [6])
    head = f"{'series':{width}s}  " + "  ".join(f"{r['time'][5:16]:>11s}" for r in shown)
    out = [head]
    for n in names:
        cells = [f"{r['series'][n]['value']:11.5g}" if n in r["series"] else f"{'-':>11s}" for r in shown]
        out.append(f"{n:{width}s}  " + "  ".join(cells))
    return out


def sparkline(values: list[float], flagged: set[int], *, width: int = 160, height: int = 28) -> str:
    """An inline SVG of ``values`` (oldest left); runs in ``flagged`` (indices) drawn red."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    xy = [
        (4 + i * (width - 8) / max(len(values) - 1, 1), height - 4 - (v - lo) / span * (height - 8))
        for i, v in enumerate(values)
    ]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    style = lambda i: 'r="3" fill="#d62728"' if i in flagged else 'r="2" fill="#1f77b4"'  # noqa: E731
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" {style(i)}><title>{values[i]:.5g}</title></circle>'
        for i, (x, y) in enumerate(xy)
    )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<polyline points="{points}" fill="none" stroke="#999"/>{dots}</svg>'
    )


def trend_html(records: list[dict[str, Any]], *, fraction: float = DEFAULT_FRACTION, last: int = 20) -> str:
    """The report's trend section: per series a sparkline of the last ``last`` runs and the last run's flag."""
    shown = records[-last:]
    if not shown:
        return ""
    found = flags(shown, fraction=fraction)
    rows = []
    for name in shown[-1]["series"]:
        values = [r["series"][name]["value"] for r in shown if name in r["series"]]
        marked = {f.run for f in found if f.series == name}
        latest = [f for f in found if f.series == name and f.run == len(shown) - 1]
        note = html.escape(latest[0].kind) if latest else ""
        cls = {"regression": "failed", "progression": "pass"}.get(latest[0].kind, "") if latest else ""
        rows.append(
            f"<tr class={cls or 'none'}><td class=l>{html.escape(name)}</td><td>{sparkline(values, marked)}</td>"
            f"<td>{values[-1]:.5g}</td><td class=l>{note}</td></tr>"
        )
    return (
        f"<h2>Trend over the last {len(shown)} runs</h2>"
        "<p class=small>From the history store (sdxl_qdq.judge.history): "
        f"{html.escape(shown[0]['model'])} on {html.escape(shown[0]['device'])}; a move of more than {fraction:g} of a "
        "check's noise window between two runs is flagged.</p>"
        "<table><tr><th>series</th><th>runs (oldest left)</th><th>now</th><th>flag</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def publish(
    summary: dict[str, Any],
    *,
    remote: str,
    branch: str,
    work: Path,
    device: str | None = None,
    commit: str | None = None,
    attempts: int = 3,
) -> Path:
    """Append ``summary``'s line to the history store kept in ``branch`` of the git ``remote`` and push it: clone (or
    start the branch when it does not exist yet), append, commit, push; when another run pushed first, fetch, put
    this line on top of theirs and push again (at most ``attempts`` times). Returns the file appended to."""
    import subprocess

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True, check=check)

    record = condense(summary, device=device, commit=commit)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    git("init", "-q")
    git("remote", "add", "origin", remote, check=False)
    for attempt in range(1, attempts + 1):
        fetched = git("fetch", "-q", "--depth", "1", "origin", branch, check=False).returncode == 0
        if fetched:
            git("checkout", "-q", "-B", branch, "FETCH_HEAD")
        else:
            git("checkout", "-q", "--orphan", branch)
        path = append(work, record)
        git("add", str(path.relative_to(work)))
        message = f"gate history: {record['model']} {record['ep']} {record['device']} {record['verdict']}"
        git(
            "-c",
            "user.name=sdxl-qdq-gate",
            "-c",
            "user.email=sdxl-qdq-gate@users.noreply.github.com",
            "commit",
            "-q",
            "-m",
            message,
        )
        pushed = git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", check=False)
        if pushed.returncode == 0:
            return path
        if attempt == attempts:
            why = re.sub(r"//[^/@\s]+@", "//***@", pushed.stderr.strip())[:300]  # no token in a log
            raise ConfigError(f"could not push the history line to {branch} after {attempts} attempts: {why}")
        git("reset", "-q", "--hard")
    raise AssertionError("unreachable")
