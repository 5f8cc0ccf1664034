"""The quality gate's checks: an evaluation against its baseline, one ``Check`` per comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.evaluation import STEPS, Evaluation
from sdxl_qdq.judge.metrics import bootstrap_mean_ci, psnr_db
from sdxl_qdq.models.prompts import Prompt

# Harm floors: how far a quantized variant may move from its baseline before the change is harm, whatever the
# noise says (the noise window says only whether it changed). Derived in baselines/README.md from measured numbers.
PSNR_FLOOR_DB = 30.0  # an image is harmed below 30 dB PSNR vs float (AI Hub's lower bar) ...
PSNR_DROP_DB = 6.0  # ... or, where its baseline is already below 36 dB, 6 dB (4× the MSE) under its baseline
CLIP_DROP = 0.10  # a per-image CLIP score more than 10 % under its baseline
CLIP_MEAN_DROP = 0.01  # a mean paired CLIP difference more than 1 % of the mean float CLIP under its baseline
FID_RISE = 0.5  # an FID more than 50 % above its baseline
HARM = {
    "psnr_floor_db": PSNR_FLOOR_DB,
    "psnr_drop_db": PSNR_DROP_DB,
    "clip_drop": CLIP_DROP,
    "clip_mean_drop": CLIP_MEAN_DROP,
    "fid_rise": FID_RISE,
}
STATUSES = ("pass", "changed", "failed")


class QualityChanged(UserWarning):
    """A check outside its noise window but inside its harm floor: reported, failing only under --strict-gate."""


def mse_at_psnr(psnr: float, *, data_range: float = 255.0) -> float:
    return data_range**2 / 10 ** (psnr / 10)


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

    def has(self, metric: str, key: str) -> bool:
        return key in self.baseline.get(metric, {})

    def mse(self, prompt: Prompt, steps: int) -> Check:
        i, entry = self._index[prompt.id], self.baseline["mse"][str(steps)]
        measured = self.evaluation.mse[steps][self.evaluation.prompts.index(prompt)]
        base, tol = entry["values"][i], entry["tolerance"][i]
        harm = mse_at_psnr(min(PSNR_FLOOR_DB, psnr_db(base) - PSNR_DROP_DB))
        return Check(
            f"MSE qdq@{steps} vs float@{steps} [{prompt.id}]",
            measured,
            base,
            base + tol,
            "max",
            f"PSNR {psnr_db(measured):.2f} dB",
            harm=harm,
        )

    def clip_delta(self, steps: int) -> Check:
        delta = self.evaluation.clip_delta(steps)
        low, high = bootstrap_mean_ci(delta)
        entry = self.baseline["clip_delta"][str(steps)]
        # fail only when the whole 95 % interval of the paired mean lies below baseline − tolerance
        harm = entry["value"] - CLIP_MEAN_DROP * float(np.mean(self.evaluation.clip["float@1"]))
        return Check(
            f"mean CLIP(qdq@{steps}) − CLIP(float@1), 95% CI upper bound [{self.evaluation.backbones.clip}]",
            high,
            entry["value"],
            entry["value"] - entry["tolerance"],
            "min",
            f"mean {float(delta.mean()):+.4f}, CI [{low:+.4f}, {high:+.4f}]",
            harm=harm,
        )

    def clip_floor(self, prompt: Prompt, steps: int) -> Check:
        i = self._index[prompt.id]
        base = self.baseline["clip"][f"qdq@{steps}"][i]
        tol = self.baseline["clip_floor"][str(steps)]["tolerance"]
        measured = self.evaluation.clip[f"qdq@{steps}"][self.evaluation.prompts.index(prompt)]
        return Check(
            f"CLIP qdq@{steps} [{prompt.id}] [{self.evaluation.backbones.clip}]",
            measured,
            base,
            base - tol,
            "min",
            harm=base * (1 - CLIP_DROP),
        )

    def fid(self, label: str) -> Check:
        entry = self.baseline["fid"][label]
        return Check(
            f"FID {label} [{self.evaluation.backbones.fid}]",
            self.evaluation.fid[label],
            entry["value"],
            entry["value"] + entry["tolerance"],
            "max",
            f"reference: {self.baseline.get('fid_reference')}",
            harm=entry["value"] * (1 + FID_RISE),
        )

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
