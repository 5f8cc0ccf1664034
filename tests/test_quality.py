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
# `qdq_quality_prompt` is parametrized by the plugin (sdxl_qdq/plugin.py) with the prompt set of the model under test;
# `qdq_judge` asserts a check (harm always, a change under --qdq-strict-gate), warns of a change, and records its
# numbers


def _needs(qdq_gate, metric: str, key: str) -> None:
    if not qdq_gate.has(metric, key):
        pytest.skip(
            f"baseline {qdq_gate.evaluation.model} has no {metric} for {key} (the published study gave none); "
            "run `pytest -m quality --qdq-update-baselines` on this model to add it"
        )


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_mse_within_bound(qdq_gate, qdq_judge, qdq_quality_prompt, steps: int) -> None:
    _needs(qdq_gate, "mse", str(steps))
    qdq_judge(qdq_gate.mse(qdq_quality_prompt, steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_mean_clip_difference_vs_float(qdq_gate, qdq_judge, steps: int) -> None:
    _needs(qdq_gate, "clip_delta", str(steps))
    qdq_judge(qdq_gate.clip_delta(steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_clip_floor(qdq_gate, qdq_judge, qdq_quality_prompt, steps: int) -> None:
    _needs(qdq_gate, "clip_floor", str(steps))
    qdq_judge(qdq_gate.clip_floor(qdq_quality_prompt, steps))


@pytest.mark.parametrize("label", ["qdq@1", "qdq@2"])
def test_fid_within_tolerance(qdq_gate, qdq_judge, label: str) -> None:
    _needs(qdq_gate, "fid", label)
    qdq_judge(qdq_gate.fid(label))


def test_every_number_carries_its_backbone(qdq_gate) -> None:
    """Every CLIP and FID check names the backbone it was measured with (a number without one compares nothing)."""
    assert any("CLIP" in c.metric for c in qdq_gate.all_checks()) and any(
        "FID" in c.metric for c in qdq_gate.all_checks()
    )
    assert all(qdq_gate.evaluation.backbones.clip in c.metric for c in qdq_gate.all_checks() if "CLIP" in c.metric)
    assert all(qdq_gate.evaluation.backbones.fid in c.metric for c in qdq_gate.all_checks() if "FID" in c.metric)
