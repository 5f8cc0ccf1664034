"""The gated metrics, one module per metric in this folder: each defines ``METRIC``, an instance of a ``GatedMetric``
subclass that is the whole unit — what it measures (beyond the evaluation's MSE, CLIP and FID), the noise its
tolerances come from, the baseline entries it writes, its checks with their direction and two windows, its harm
floors, its rows in the report and in the recipe A/B. ``registry()`` finds them; the gate (``Gate.all_checks``),
``summary.json``, the HTML report, the baseline writer and reader, ``sdxl-qdq compare`` and ``pytest -m quality``
(tests/test_quality.py) read nothing metric-specific beyond it. Adding a metric is one new file here plus its test
(README: "How to add a metric").
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from sdxl_qdq.components import STEPS

if TYPE_CHECKING:  # the gate, the evaluation and the A/B import this registry: their types are named, not imported
    from pathlib import Path

    import numpy as np

    from sdxl_qdq.judge.backbones import Backbones
    from sdxl_qdq.models.prompts import Prompt

Evaluation = Gate = Check = Difference = Any  # sdxl_qdq.judge.{evaluation,gate,compare}'s classes, for annotations


@dataclass(frozen=True)
class CheckKind:
    """One kind of check a metric makes: ``key`` names its entry in a baseline (``baseline[key][<step or label>]``),
    in skips and in test ids; ``per_prompt`` makes one check per prompt, else one per step or label."""

    key: str
    per_prompt: bool


@dataclass(frozen=True)
class NoiseSets:
    """The image sets a baseline update draws to measure noise, loaded in prompt order: ``float_sets`` (steps →
    float@k), ``seed_sets`` (seed base → float@1 of other noise), ``float2_other_seed`` (float@2 of the first other
    seed), ``recalibrated`` (steps → qdq@k of the recipe calibrated on the test prompts instead)."""

    float_sets: dict[int, list[np.ndarray]]
    seed_sets: dict[int, list[np.ndarray]]
    float2_other_seed: list[np.ndarray]
    recalibrated: dict[int, list[np.ndarray]]
    reference_images: list[np.ndarray]
    recalibrated_dirs: dict[int, Path] = field(default_factory=dict)  # steps → the folder of ``recalibrated[k]``

    @property
    def first_seed(self) -> list[np.ndarray]:
        """The float@1 set of the first other seed: the one each per-image noise is measured against."""
        return self.seed_sets[next(iter(self.seed_sets))]


class GatedMetric:
    """The base of every metric module's ``METRIC``. Class attributes say what it is; methods do its work."""

    name: str = ""  # unique; the module's name
    order: int = 0  # place in the gate's check order, summary.json, the report and the A/B table
    by_step: bool = True  # checks per step count ("1", "2"), interleaved with the other per-step metrics' ...
    keys: tuple[str, ...] = ()  # ... or per one of these labels, after all per-step checks
    kinds: tuple[CheckKind, ...] = ()
    better_is: str = "lower"  # "lower" or "higher": the A/B verdict's direction
    harm: dict[str, float] = {}  # noqa: RUF012  the harm floors it applies (summary.json's harm_floors)
    baseline_keys: tuple[str, ...] = ()  # what it writes into a baseline
    required: bool = True  # a baseline without its keys is refused (False: its checks skip until --update-baselines)

    def check_keys(self) -> tuple[str, ...]:
        return tuple(str(k) for k in STEPS) if self.by_step else self.keys

    # -- measuring ------------------------------------------------------------------------------------------------
    def measure(
        self,
        images: dict[str, list[np.ndarray]],
        prompts: list[Prompt],
        backbones: Backbones,
        progress: Any,
        dirs: dict[str, Path],
        reference: list[np.ndarray],
    ) -> Any | None:
        """What it measures beyond the evaluation's MSE, CLIP and FID (kept in ``Evaluation.measured[name]``);
        ``dirs``: the drawn sets' folders by label (what the drawing wrote beside the images); ``reference``: the FID
        reference images."""
        return None

    def noise(self, ev: Evaluation, sets: NoiseSets) -> dict[str, Any]:
        """The noise its tolerances come from (merged into ``Evaluation.noise``; keys unique across metrics)."""
        return {}

    # -- baselines ------------------------------------------------------------------------------------------------
    def baseline_entries(self, ev: Evaluation) -> dict[str, Any]:
        """Its entries of a baseline derived from ``ev`` (which holds the noise)."""
        raise NotImplementedError

    def derivation(self, ev: Evaluation) -> tuple[str, dict[str, Any]]:
        """How its tolerances were derived: a sentence, and the noise figures it used (recorded in the baseline)."""
        raise NotImplementedError

    # -- gating ---------------------------------------------------------------------------------------------------
    def check(self, gate: Gate, kind: str, key: str, prompt: Prompt | None = None) -> Check:
        raise NotImplementedError

    def report_rows(self, gate: Gate) -> list[tuple[str, float, float, str]]:
        """The report's "Metrics vs baseline" rows: (what, measured, baseline, note)."""
        return []

    def differences(self, a: Evaluation, b: Evaluation, key: str, reference: np.ndarray) -> list[Difference]:
        """The recipe A/B rows for one step or label: B − A with an interval (``reference``: the FID features of the
        reference set)."""
        return []


@cache
def registry() -> tuple[GatedMetric, ...]:
    """Every ``METRIC`` of this folder's modules, in ``order``; names and check-kind keys are unique."""
    metrics = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        metric = getattr(module, "METRIC", None)
        if not isinstance(metric, GatedMetric):
            raise TypeError(f"{module.__name__} defines no METRIC (a GatedMetric instance)")
        metrics.append(metric)
    metrics.sort(key=lambda m: (m.order, m.name))
    kinds = [k.key for m in metrics for k in m.kinds]
    names = [m.name for m in metrics]
    for what, values in (("metric name", names), ("check kind", kinds)):
        if len(set(values)) != len(values):
            raise TypeError(f"two gated metrics share a {what}: {sorted(v for v in values if values.count(v) > 1)}")
    return tuple(metrics)


def in_gate_order() -> Iterator[tuple[GatedMetric, str]]:
    """(metric, step or label) in the order the gate, summary.json and the A/B list them: per step count each
    per-step metric, then the other metrics' labels."""
    for k in STEPS:
        for metric in registry():
            if metric.by_step:
                yield metric, str(k)
    for metric in registry():
        if not metric.by_step:
            for key in metric.keys:
                yield metric, key


def metric_of(kind: str) -> GatedMetric:
    """The metric that makes checks of ``kind``."""
    for metric in registry():
        if any(k.key == kind for k in metric.kinds):
            return metric
    raise KeyError(f"no gated metric makes {kind!r} checks ({', '.join(k.key for m in registry() for k in m.kinds)})")


def harm_floors() -> dict[str, float]:
    """Every metric's harm floors, in registry order (summary.json's ``harm_floors``)."""
    return {name: value for metric in registry() for name, value in metric.harm.items()}
