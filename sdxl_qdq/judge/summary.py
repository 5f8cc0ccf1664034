"""What CI reads of a gate run: ``summary.json`` beside the report (every check with its two windows; validated
by ``sdxl_qdq/data/summary.schema.json``) and a Markdown summary for ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sdxl_qdq.cache import package_versions
from sdxl_qdq.judge.checks import harm_floors
from sdxl_qdq.judge.gate import STATUSES, Check, Gate
from sdxl_qdq.paths import DATA_DIR

SCHEMA = DATA_DIR / "summary.schema.json"
SCHEMA_ID = "sdxl-qdq-gate/summary/1"


def _number(x: float) -> float | str:
    """JSON has no inf or nan: those are written as the strings "inf", "-inf", "nan"."""
    return x if x == x and abs(x) != float("inf") else str(x)


def check_record(check: Check, group: str | None = None) -> dict[str, Any]:
    """One check of summary.json; ``group``: the title of its kind of check (``CheckGroup.title``), one per step
    count or label, which the history's series follow."""
    return {
        **({"group": group} if group is not None else {}),
        "metric": check.metric,
        "measured": _number(check.measured),
        "baseline": _number(check.baseline),
        "limit": _number(check.limit),
        "harm": _number(check.harm),
        "direction": check.direction,
        "status": check.status,
        "detail": check.detail,
    }


def verdict(checks: list[Check], *, strict: bool) -> str:
    """``failed`` when a check is outside its harm floor (or, under ``strict``, its noise window), ``changed`` when
    one is only outside its noise window, else ``pass``."""
    statuses = {c.status for c in checks}
    if "failed" in statuses or (strict and "changed" in statuses):
        return "failed"
    return "changed" if "changed" in statuses else "pass"


def summary(gate: Gate, *, strict: bool = False, perf: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's summary.json; ``perf``: its QNN performance record (``--qdq-htp-profile``), kept when given."""
    ev, checks = gate.evaluation, gate.all_checks()
    counts = Counter(c.status for c in checks)
    extra = {"perf": perf} if perf is not None else {}
    return {
        "schema": SCHEMA_ID,
        "verdict": verdict(checks, strict=strict),
        "strict": strict,
        "model": ev.model,
        "recipe": ev.recipe,
        "ep": ev.ep,
        "ep_detail": ev.ep_detail or ev.ep,
        "baseline_ep": gate.baseline.get("ep"),
        "backbones": ev.backbones.record(),
        "fid_reference": ev.fid_reference,
        "fid_reference_id": ev.fid_reference_id,
        "prompts": len(ev.prompts),
        "prompt_set": ev.prompt_set,
        "versions": package_versions(),
        "harm_floors": harm_floors(),
        **extra,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "checks": [check_record(c, g.title) for g in gate.groups() for c in g.checks],
    }


def markdown(data: dict[str, Any], *, worst: int = 10) -> str:
    """A short Markdown account: the verdict, counts, then the checks that failed or changed (worst first)."""
    icon = {"pass": "✅", "changed": "⚠️", "failed": "❌"}[data["verdict"]]
    lines = [
        f"### {icon} Quality gate {data['verdict'].upper()}: {data['model']} ({data['recipe']}) on {data['ep_detail']}",
        "",
        f"{data['counts']['failed']} failed, {data['counts']['changed']} changed (outside the noise window, inside "
        f"the harm floor{'; failing under --strict-gate' if data['strict'] else ''}), {data['counts']['pass']} passed; "
        f"{data['prompts']} prompts; CLIP {data['backbones']['clip']}, FID {data['backbones']['fid']}.",
        "",
    ]
    shown = [c for c in data["checks"] if c["status"] != "pass"]
    shown.sort(key=lambda c: (c["status"] != "failed", c["metric"]))
    if shown:
        lines += ["| status | check | measured | baseline | noise limit | harm floor |", "|---|---|---|---|---|---|"]
        for c in shown[:worst]:
            cells = [c["status"], c["metric"].replace("|", "\\|")] + [
                f"{v:.5g}" if isinstance(v, float | int) else str(v)
                for v in (c["measured"], c["baseline"], c["limit"], c["harm"])
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if len(shown) > worst:
            lines.append(f"\n… and {len(shown) - worst} more in summary.json.")
    return "\n".join(lines) + "\n"


def validate(data: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``data`` does not follow the schema kept in the package."""
    import jsonschema

    jsonschema.validate(data, json.loads(SCHEMA.read_text()))


def write_summary(gate: Gate, folder: Path, *, strict: bool = False, perf: dict[str, Any] | None = None) -> Path:
    """``folder/summary.json``, validated first, written to a temp file and renamed."""
    data = summary(gate, strict=strict, perf=perf)
    validate(data)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".summary.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(folder / "summary.json")
    return folder / "summary.json"


def append_step_summary(summary_json: Path) -> Path | None:
    """Append the Markdown of ``summary_json`` to ``$GITHUB_STEP_SUMMARY`` when it is set; return that file."""
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not step_summary:
        return None
    with open(step_summary, "a", encoding="utf-8") as f:
        f.write(markdown(json.loads(Path(summary_json).read_text())))
    return Path(step_summary)
