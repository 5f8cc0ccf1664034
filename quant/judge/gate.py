"""The quality gate's checks: an evaluation against its baseline, one ``Check`` per comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quant.errors import ConfigError
from quant.judge.evaluation import STEPS, Evaluation
from quant.judge.metrics import bootstrap_mean_ci, psnr_db
from quant.models.prompts import Prompt


@dataclass(frozen=True)
class Check:
    """One comparison: ``direction`` "max" means the measured value must stay ≤ limit, "min" ≥ limit."""

    metric: str
    measured: float
    baseline: float
    limit: float
    direction: str
    detail: str = ""

    @property
    def failure(self) -> str | None:
        ok = self.measured <= self.limit if self.direction == "max" else self.measured >= self.limit
        if ok:
            return None
        word = "at most" if self.direction == "max" else "at least"
        return (f"{self.metric}: measured {self.measured:.6g}, baseline {self.baseline:.6g}, limit {self.limit:.6g} "
                f"(must be {word} the limit){' — ' + self.detail if self.detail else ''}")


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

    def has(self, metric: str, key: str) -> bool:
        return key in self.baseline.get(metric, {})

    def mse(self, prompt: Prompt, steps: int) -> Check:
        i, entry = self._index[prompt.id], self.baseline["mse"][str(steps)]
        measured = self.evaluation.mse[steps][self.evaluation.prompts.index(prompt)]
        base, tol = entry["values"][i], entry["tolerance"][i]
        return Check(f"MSE qdq@{steps} vs float@{steps} [{prompt.id}]", measured, base, base + tol, "max",
                     f"PSNR {psnr_db(measured):.2f} dB")

    def clip_delta(self, steps: int) -> Check:
        delta = self.evaluation.clip_delta(steps)
        low, high = bootstrap_mean_ci(delta)
        entry = self.baseline["clip_delta"][str(steps)]
        # fail only when the whole 95 % interval of the paired mean lies below baseline − tolerance
        return Check(f"mean CLIP(qdq@{steps}) − CLIP(float@1), 95% CI upper bound [{self.evaluation.backbones.clip}]",
                     high, entry["value"], entry["value"] - entry["tolerance"], "min",
                     f"mean {float(delta.mean()):+.4f}, CI [{low:+.4f}, {high:+.4f}]")

    def clip_floor(self, prompt: Prompt, steps: int) -> Check:
        i = self._index[prompt.id]
        base = self.baseline["clip"][f"qdq@{steps}"][i]
        tol = self.baseline["clip_floor"][str(steps)]["tolerance"]
        measured = self.evaluation.clip[f"qdq@{steps}"][self.evaluation.prompts.index(prompt)]
        return Check(f"CLIP qdq@{steps} [{prompt.id}] [{self.evaluation.backbones.clip}]", measured, base, base - tol, "min")

    def fid(self, label: str) -> Check:
        entry = self.baseline["fid"][label]
        return Check(f"FID {label} [{self.evaluation.backbones.fid}]", self.evaluation.fid[label], entry["value"],
                     entry["value"] + entry["tolerance"], "max", f"reference: {self.baseline.get('fid_reference')}")

    def all_checks(self) -> list[Check]:
        checks = []
        for k in STEPS:
            if self.has("mse", str(k)):
                checks += [self.mse(p, k) for p in self.evaluation.prompts]
            if self.has("clip_delta", str(k)):
                checks.append(self.clip_delta(k))
            if self.has("clip_floor", str(k)):
                checks += [self.clip_floor(p, k) for p in self.evaluation.prompts]
        checks += [self.fid(label) for label in ("qdq@1", "qdq@2") if self.has("fid", label)]
        return checks
