"""The quality gate (pytest -m quality): images of the quantized model against baselines/.

The registered metrics' checks (sdxl_qdq/judge/checks/): MSE per prompt and step count, mean paired CLIP
difference with a bootstrap interval, a per-image CLIP floor, FID. Each check has two windows: outside the noise
window the variant *changed* (a warning; a failure under --strict-gate), outside the harm floor it *failed*. Each
message gives measured value, baseline, the bound and direction; each test records its numbers as JUnit properties.
"""

from __future__ import annotations

import pytest

from sdxl_qdq.judge.checks import registry

pytestmark = pytest.mark.quality
# `qdq_quality_prompt` is parametrized by the plugin (sdxl_qdq/plugin.py) with the prompt set of the model under test;
# `qdq_judge` asserts a check (harm always, a change under --qdq-strict-gate), warns of a change, and records its
# numbers. The checks are the registered metrics' (sdxl_qdq/judge/checks/): a new metric's module adds its tests here.
PER_IMAGE = [(kind.key, key) for m in registry() for kind in m.kinds if kind.per_prompt for key in m.check_keys()]
PER_SET = [(kind.key, key) for m in registry() for kind in m.kinds if not kind.per_prompt for key in m.check_keys()]


def _id(key: str) -> str:
    return f"{key}step" if key.isdigit() else key


def _needs(qdq_gate, kind: str, key: str) -> None:
    if not qdq_gate.has(kind, key):
        pytest.skip(
            f"baseline {qdq_gate.evaluation.model} has no {kind} for {key} (the published study gave none, or it was "
            "made before the metric existed); run `pytest -m quality --qdq-update-baselines` on this model to add it"
        )


@pytest.mark.parametrize(("kind", "key"), PER_IMAGE, ids=[f"{kind}-{_id(key)}" for kind, key in PER_IMAGE])
def test_image(qdq_gate, qdq_judge, qdq_quality_prompt, kind: str, key: str) -> None:
    """A per-image check (MSE bound, CLIP floor, …) of one prompt."""
    _needs(qdq_gate, kind, key)
    qdq_judge(qdq_gate.check(kind, key, qdq_quality_prompt))


@pytest.mark.parametrize(("kind", "key"), PER_SET, ids=[f"{kind}-{_id(key)}" for kind, key in PER_SET])
def test_image_set(qdq_gate, qdq_judge, kind: str, key: str) -> None:
    """A check of a whole image set (mean CLIP difference, FID, …)."""
    _needs(qdq_gate, kind, key)
    qdq_judge(qdq_gate.check(kind, key))


def test_every_number_carries_its_backbone(qdq_gate) -> None:
    """Every CLIP and FID check names the backbone it was measured with (a number without one compares nothing)."""
    assert any("CLIP" in c.metric for c in qdq_gate.all_checks()) and any(
        "FID" in c.metric for c in qdq_gate.all_checks()
    )
    assert all(qdq_gate.evaluation.backbones.clip in c.metric for c in qdq_gate.all_checks() if "CLIP" in c.metric)
    assert all(qdq_gate.evaluation.backbones.fid in c.metric for c in qdq_gate.all_checks() if "FID" in c.metric)
