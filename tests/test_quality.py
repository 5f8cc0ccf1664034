"""The quality gate (pytest -m quality): images of the quantized model against baselines/.

MSE per prompt and step count, mean paired CLIP difference with a bootstrap interval, a per-image CLIP
floor, FID. Each failure message gives measured value, baseline, limit and direction.
"""

from __future__ import annotations

import pytest

from quant.judge.evaluation import STEPS

pytestmark = pytest.mark.quality
# `quality_prompt` is parametrized by conftest.py with the prompt set of the model under test


def _assert(check) -> None:
    assert check.failure is None, check.failure


def _needs(gate, metric: str, key: str) -> None:
    if not gate.has(metric, key):
        pytest.skip(f"baseline {gate.evaluation.model} has no {metric} for {key} (the published study gave none); "
                    "run `pytest -m quality --update-baselines` on this model to add it")


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_mse_within_bound(gate, quality_prompt, steps: int) -> None:
    _needs(gate, "mse", str(steps))
    _assert(gate.mse(quality_prompt, steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_mean_clip_difference_vs_float(gate, steps: int) -> None:
    _needs(gate, "clip_delta", str(steps))
    _assert(gate.clip_delta(steps))


@pytest.mark.parametrize("steps", STEPS, ids=lambda k: f"{k}step")
def test_image_clip_floor(gate, quality_prompt, steps: int) -> None:
    _needs(gate, "clip_floor", str(steps))
    _assert(gate.clip_floor(quality_prompt, steps))


@pytest.mark.parametrize("label", ["qdq@1", "qdq@2"])
def test_fid_within_tolerance(gate, label: str) -> None:
    _needs(gate, "fid", label)
    _assert(gate.fid(label))


def test_every_number_carries_its_backbone(gate) -> None:
    assert gate.baseline["backbones"] == {"clip": gate.evaluation.backbones.clip, "fid": gate.evaluation.backbones.fid}
    assert all(gate.evaluation.backbones.clip in c.metric for c in gate.all_checks() if "CLIP" in c.metric)
    assert all(gate.evaluation.backbones.fid in c.metric for c in gate.all_checks() if "FID" in c.metric)
