"""Recipe A/B: two evaluations of the same model on the same prompts, compared prompt by prompt. Each metric gets
the mean paired difference B − A with a bootstrap interval and a verdict: B is better, worse, or the two are
indistinguishable (the interval holds 0)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sdxl_qdq.judge.backbones import fid_features
from sdxl_qdq.judge.checks import in_gate_order
from sdxl_qdq.judge.evaluation import Evaluation
from sdxl_qdq.judge.metrics import bootstrap_mean_ci


@dataclass(frozen=True)
class Difference:
    """``metric`` of A and of B, the difference B − A (mean of paired per-prompt differences, or of FID), its 95 %
    bootstrap interval, and which way is better (``lower`` or ``higher``)."""

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    better_is: str

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` (B vs A) when the whole interval is on one side of 0, else ``indistinguishable``."""
        if self.low <= 0 <= self.high:
            return "indistinguishable"
        lower = self.high < 0
        return "better" if lower == (self.better_is == "lower") else "worse"

    def line(self, a: str = "A", b: str = "B") -> str:
        return (
            f"{self.metric:28s} {a} {self.a:10.5g}  {b} {self.b:10.5g}  {b}−{a} {self.difference:+.4g} "
            f"[{self.low:+.4g}, {self.high:+.4g}]  {b} is {self.verdict}"
            if self.verdict != "indistinguishable"
            else f"{self.metric:28s} {a} {self.a:10.5g}  {b} {self.b:10.5g}  {b}−{a} {self.difference:+.4g} "
            f"[{self.low:+.4g}, {self.high:+.4g}]  indistinguishable"
        )

    def record(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def paired(metric: str, a: list[float], b: list[float], better_is: str) -> Difference:
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    low, high = bootstrap_mean_ci(d)
    return Difference(metric, float(np.mean(a)), float(np.mean(b)), float(d.mean()), low, high, better_is)


def compare(a: Evaluation, b: Evaluation, reference_images: list[np.ndarray]) -> list[Difference]:
    """Every metric of the gate (``sdxl_qdq.judge.checks``), B against A (same model, prompts and backbones; checked):
    per step count each per-step metric's rows, then the other metrics' labels."""
    if [p.id for p in a.prompts] != [p.id for p in b.prompts] or a.backbones != b.backbones:
        raise ValueError("compare needs two evaluations of the same prompts with the same backbones")
    reference = fid_features(reference_images, a.backbones.fid)
    return [row for metric, key in in_gate_order() for row in metric.differences(a, b, key, reference)]
