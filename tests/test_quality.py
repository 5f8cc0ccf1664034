"""The quality gate (pytest -m quality): images of the quantized model against baselines/.

MSE per prompt and step count, mean paired CLIP difference with a bootstrap interval, a per-image CLIP
floor, FID. Each check has two windows: outside the noise window the variant *changed* (a warning; a failure
under --strict-gate), outside the harm floor it *failed*. Each message gives measured value, baseline, the bound
and direction; each test records its numbers as JUnit properties.
"""

from __future__ import annotations

import pytest

from sdxl_qdq.judge.evaluation import STEPS

pytestmark = pytest.mark.quality
# `quality_prompt` is parametrized by the plugin (sdxl_qdq/plugin.py) with the prompt set of the model under test;
# `judge` asserts a check (harm always, a change under --strict-gate), warns of a change, and records its numbers


def _needs(gate, metric: str, key: str) -> None:
    if not gate.has(metric, key):
        pytest.skip(f"baseline {gate.evaluation.model} has no {metric} for {key} (the published study gave none); "
                    "run `pytest -m quality --update-baselines` on this model to add it")


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_mse_within_bound(gate, judge, quality_prompt, steps: int) -> None:
    _needs(gate, "mse", str(steps))
    judge(gate.mse(quality_prompt, steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_mean_clip_difference_vs_float(gate, judge, steps: int) -> None:
    _needs(gate, "clip_delta", str(steps))
    judge(gate.clip_delta(steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_clip_floor(gate, judge, quality_prompt, steps: int) -> None:
    _needs(gate, "clip_floor", str(steps))
    judge(gate.clip_floor(quality_prompt, steps))


@pytest.mark.parametrize("label", ["qdq@1", "qdq@2"])
def test_fid_within_tolerance(gate, judge, label: str) -> None:
    _needs(gate, "fid", label)
    judge(gate.fid(label))


def test_every_number_carries_its_backbone(gate) -> None:
    """Every CLIP and FID check names the backbone it was measured with (a number without one compares nothing)."""
    assert any("CLIP" in c.metric for c in gate.all_checks()) and any("FID" in c.metric for c in gate.all_checks())
    assert all(gate.evaluation.backbones.clip in c.metric for c in gate.all_checks() if "CLIP" in c.metric)
    assert all(gate.evaluation.backbones.fid in c.metric for c in gate.all_checks() if "FID" in c.metric)
