"""The quality gate's checks: an evaluation against its baseline, one ``Check`` per comparison; what each metric
checks lives in its module under ``sdxl_qdq/judge/checks/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.checks import in_gate_order, metric_of
from sdxl_qdq.judge.evaluation import Evaluation
from sdxl_qdq.models.prompts import Prompt

STATUSES = ("pass", "changed", "failed")


class QualityChanged(UserWarning):
    """A check outside its noise window but inside its harm floor: reported, failing only under --strict-gate."""


@dataclass(frozen=True)
class Check:
    """One comparison with two windows. ``direction`` "max": the measured value should stay ≤ ``limit`` (the noise
    window: beyond it the variant *changed*) and must stay ≤ ``harm`` (the harm floor: beyond it the variant is
    *failed*); "min" the same with ≥. ``harm`` is never tighter than ``limit``: failing needs a change outside
    the noise first."""

    metric: str
    measured: float
    baseline: float
    limit: float
    direction: str
    detail: str = ""
    harm: float | None = None  # None: the noise window is also the harm floor
    per_prompt: bool = False  # one of a metric's per-prompt checks (else a check of a whole image set)

    def __post_init__(self) -> None:
        looser = max if self.direction == "max" else min
        object.__setattr__(self, "harm", self.limit if self.harm is None else looser(self.harm, self.limit))

    def _within(self, bound: float) -> bool:
        return self.measured <= bound if self.direction == "max" else self.measured >= bound

    @property
    def status(self) -> str:
        return "pass" if self._within(self.limit) else "changed" if self._within(self.harm) else "failed"

    def _message(self, bound: float, window: str) -> str:
        word = "at most" if self.direction == "max" else "at least"
        return (
            f"{self.metric}: measured {self.measured:.6g}, baseline {self.baseline:.6g}, {window} {bound:.6g} "
            f"(must be {word} the {window}){' — ' + self.detail if self.detail else ''}"
        )

    @property
    def failure(self) -> str | None:
        """Why this check fails the gate (outside the harm floor), or None."""
        if self.status != "failed":
            return None
        return self._message(self.harm, "limit" if self.harm == self.limit else "harm floor")

    @property
    def change(self) -> str | None:
        """Why this check changed (outside the noise window, inside the harm floor: fails only under --strict-gate)."""
        if self.status != "changed":
            return None
        return self._message(self.limit, "limit") + f"; within the harm floor {self.harm:.6g}"

    def verdict(self, *, strict: bool = False) -> str | None:
        """The message a test fails with: harm always, a change too when ``strict``."""
        return self.failure or (self.change if strict else None)


@dataclass
class Gate:
    """An evaluation and its baseline; each method returns the ``Check`` a test asserts on."""

    evaluation: Evaluation
    baseline: dict[str, Any]
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {pid: i for i, pid in enumerate(self.baseline["prompts"])}
        missing = [p.id for p in self.evaluation.prompts if p.id not in self._index]
        if missing:
            raise ConfigError(f"baseline has no entry for prompts {missing[:3]}…; prompts changed: update the baseline")

    def has(self, kind: str, key: str) -> bool:
        """Whether the baseline holds ``kind`` checks for ``key`` (a step count or a label)."""
        return key in self.baseline.get(kind, {})

    def index(self, prompt: Prompt) -> int:
        """``prompt``'s position in the baseline's lists."""
        return self._index[prompt.id]

    def check(self, kind: str, key: str, prompt: Prompt | None = None) -> Check:
        """The ``kind`` check (a key of ``sdxl_qdq.judge.checks``' metrics: mse, clip_delta, clip_floor, fid, …) for
        ``key`` (a step count or a label) and, for a per-prompt kind, ``prompt``."""
        return metric_of(kind).check(self, kind, key, prompt)

    def groups(self) -> list[CheckGroup]:
        """Every check the baseline allows, grouped by kind and step or label, in the registry's order: per step
        count, each per-step metric's kinds (per prompt or one), then the other metrics' labels."""
        found: list[CheckGroup] = []
        for metric, key in in_gate_order():
            for kind in metric.kinds:
                if self.has(kind.key, key):
                    prompts = tuple(self.evaluation.prompts) if kind.per_prompt else (None,)
                    checks = tuple(metric.check(self, kind.key, key, p) for p in prompts)
                    found.append(CheckGroup(kind.key, key, checks, prompts))
        return found

    def all_checks(self) -> list[Check]:
        """Every check the baseline allows, in the order of ``groups``."""
        return [c for g in self.groups() for c in g.checks]


@dataclass(frozen=True)
class CheckGroup:
    """The checks of one kind for one step count or label: one per prompt (``prompts``), or one (``(None,)``)."""

    kind: str
    key: str
    checks: tuple[Check, ...]
    prompts: tuple[Prompt | None, ...]

    @property
    def title(self) -> str:
        """What its checks measure, without the prompt (``MSE qdq@1 vs float@1``, ``CLIP qdq@1 [backbone]``)."""
        first, prompt = self.checks[0].metric, self.prompts[0]
        return first.replace(f" [{prompt.id}]", "", 1) if prompt is not None else first

    def outside(self) -> list[tuple[Check, Prompt | None]]:
        """Its checks outside their noise window (failed or changed), worst first."""
        bad = [(c, p) for c, p in zip(self.checks, self.prompts) if c.status != "pass"]
        return sorted(bad, key=lambda cp: -cp[0].measured if cp[0].direction == "max" else cp[0].measured)
