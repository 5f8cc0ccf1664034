"""Why a gate failed, said once and shown twice: sections of lines for the terminal's failure summary and the HTML
report (``diagnosis.json`` beside ``summary.json``). A section whose own computation fails is one line saying so: a
diagnosis explains failures, it never adds one, so the gate's verdict and exit code stay what its checks made them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdxl_qdq.runtime import QnnOptions

WORST_LAYERS = "worst layers by SQNR, float vs QDQ (CPU EP, 4 calibration samples)"
QNN_DEPARTS = "where QNN departs from the CPU EP (single-output graph cuts; `sdxl-qdq diverge` for more)"
FILE = "diagnosis.json"


@dataclass(frozen=True)
class Section:
    """One diagnosis: its title and lines, or ``error`` (why it could not be computed; then no lines)."""

    title: str
    lines: tuple[str, ...] = ()
    error: str | None = None

    def text(self) -> list[str]:
        """Its lines as the failure summary prints them under its title."""
        return [f"(diagnosis failed, the verdict stands: {self.error})"] if self.error else list(self.lines)


def section(title: str, lines: Callable[[], Iterable[str]]) -> Section:
    """``lines()`` under ``title``; anything it raises becomes the section's one-line ``error``."""
    try:
        return Section(title, tuple(lines()))
    except Exception as e:  # anything: the gate's verdict must not depend on its explanation
        first = (str(e).splitlines() or [""])[0][:300]
        return Section(title, error=f"{type(e).__name__}: {first}")


def worst_layer_lines(build: Any) -> list[str]:
    from sdxl_qdq.diagnose.localize import localize_build

    return [
        f"{component:15s} {layer.sqnr_db:7.2f} dB  {layer.tensor}"
        for component, layers in localize_build(build).items()
        for layer in layers
    ]


def diagnose(build: Any, *, on_qnn: Iterable[str] = (), qnn: QnnOptions | None = None) -> list[Section]:
    """The worst layers of the build (float vs QDQ) and, for the components ``on_qnn`` (checks that ran on the QNN
    EP failed), where QNN departs from the CPU EP: worst blocks, first diverging activation, and the smallest
    subgraph QNN gets wrong in the worst component."""
    from sdxl_qdq.diagnose.diverge import divergence_summary

    sections = [section(WORST_LAYERS, lambda: worst_layer_lines(build))]
    on_qnn = list(on_qnn)
    if on_qnn:
        sections.append(section(QNN_DEPARTS, lambda: divergence_summary(build, on_qnn, qnn=qnn, reduce_worst=True)))
    return sections


def save(sections: list[Section], folder: Path, *, on_qnn: Iterable[str]) -> Path:
    """``folder/diagnosis.json`` (temp file, then rename)."""
    path = Path(folder) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"on_qnn": list(on_qnn), "sections": [asdict(s) for s in sections]}, indent=1) + "\n")
    tmp.replace(path)
    return path


def load(folder: Path, *, on_qnn: Iterable[str], since: float) -> list[Section] | None:
    """The sections saved in ``folder`` by this session (written at or after ``since``) for the same QNN
    components, or None."""
    path = Path(folder) / FILE
    try:
        if path.stat().st_mtime < since:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("on_qnn") != list(on_qnn):
        return None
    return [Section(s["title"], tuple(s["lines"]), s.get("error")) for s in data["sections"]]
