"""The text-conditioning check (sdxl_qdq/judge/checks/text_response.py): per prompt, the UNet's response to the prompt
(cond − uncond output at the first step) of the quantized pipeline against float's, as a cosine and a gain error.

Here on planted responses (the arithmetic, the windows, the one-line errors); on the canary's real recipes in
tests/test_verdicts.py (the seed recipe passes, the text encoders without their mask surgery fail) and
tests/test_canary.py (a UNet that no longer reads the prompt fails)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.backbones import Backbones
from sdxl_qdq.judge.checks.text_response import COSINE_FLOOR, GAIN_FLOOR, compare, responses
from sdxl_qdq.judge.evaluation import STEPS, VARIANTS, evaluate, seed_noise
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.run.generate import image_name, response_name, save_response

PROMPTS = [Prompt(index=i, text=f"a red circle number {i}", split="test") for i in range(8)]
SHAPE = (4, 8, 8)


def _response(i: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal(SHAPE).astype(np.float32)


def _set(folder: Path, plant=lambda i, r: r, seed: int = 0) -> Path:
    """A drawn set: the same image for every prompt's variant, and each prompt's response after ``plant`` plus
    seeded noise of 0.2 % (quantization's own error)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, p in enumerate(PROMPTS):
        Image.fromarray(np.full((32, 32, 3), 40 * (i % 6), dtype=np.uint8)).save(folder / image_name(p))
        response = plant(i, _response(i)) + 0.002 * rng.standard_normal(SHAPE)
        save_response(response, folder / response_name(p))
    return folder


def test_compare_measures_direction_and_strength() -> None:
    r = [_response(i) for i in range(3)]
    same = compare(r, r)
    assert same["cosine"] == pytest.approx([1.0] * 3) and same["gain"] == pytest.approx([0.0] * 3, abs=1e-12)
    weak = compare(r, [x / 19 for x in r])  # ai-hub-apps#155: a response 19x weaker than float's
    assert weak["ratio"] == pytest.approx([1 / 19] * 3) and weak["gain"] == pytest.approx([np.log2(19)] * 3)
    assert weak["cosine"] == pytest.approx([1.0] * 3)  # as strong a direction, only weaker: the gain catches it
    turned = compare(r, [-x for x in r])
    assert turned["cosine"] == pytest.approx([-1.0] * 3) and turned["gain"] == pytest.approx([0.0] * 3, abs=1e-12)
    silent = compare(r, [np.zeros(SHAPE, np.float32)] * 3)  # a UNet that ignores the prompt
    assert silent["cosine"] == [0.0] * 3 and silent["gain"] == [float("inf")] * 3
    assert compare([np.zeros(SHAPE)], [np.zeros(SHAPE)])["cosine"] == [1.0]


def test_a_set_drawn_without_responses_is_refused_by_name(tmp_path: Path) -> None:
    folder = _set(tmp_path / "qdq@1")
    (folder / response_name(PROMPTS[3])).unlink()
    with pytest.raises(ConfigError, match=r"qdq@1 has no text response for 1 of its 8 prompts .*draw it again") as e:
        responses(folder, PROMPTS)
    assert "\n" not in str(e.value)


def _gate(tmp_path: Path, plant) -> tuple:
    """A baseline made from an honest quantized set (its noise: the same recipe calibrated on other prompts), and a
    gate of the quantized set whose responses ``plant`` changed."""
    from sdxl_qdq.judge.baseline import baseline_from_evaluation
    from sdxl_qdq.judge.gate import Gate

    backbones = Backbones("proxy-clip-s0-v1", "proxy-conv64-s0-v2")
    reference = [np.full((32, 32, 3), 40 * (i % 6), dtype=np.uint8) for i in range(len(PROMPTS))]

    def evaluation(folder: str, qdq_plant) -> object:
        dirs = {
            label: _set(tmp_path / folder / label, qdq_plant if label.startswith("qdq") else (lambda i, r: r), n)
            for n, label in enumerate(VARIANTS)
        }
        return evaluate(
            model="tiny",
            recipe="r",
            prompts=PROMPTS,
            backbones=backbones,
            image_dirs=dirs,
            reference_images=reference,
            reference_name="ref",
            reference_id="ref-id",
        )

    honest = evaluation("honest", lambda i, r: r)
    honest.noise = seed_noise(
        honest,
        recalibrated={k: _set(tmp_path / f"recal{k}", seed=10 + k) for k in STEPS},
        float1_seeds={s: _set(tmp_path / f"seed{s}", seed=20 + s) for s in (2, 3)},
        float2_other_seed=_set(tmp_path / "f2", seed=30),
        reference_images=reference,
    )
    baseline = baseline_from_evaluation(honest)
    return Gate(honest, baseline), Gate(evaluation("planted", plant), baseline), baseline


def _text_checks(gate) -> dict[str, list]:
    found = {"text_cosine": [], "text_gain": []}
    for group in gate.groups():
        if group.kind in found:
            found[group.kind] = list(group.checks)
    return found


def test_the_checks_pass_the_honest_set_and_fail_weakened_or_turned_responses(tmp_path: Path) -> None:
    """Prompts 0-2: the response 19× weaker (ai-hub-apps#155); prompts 3-4: turned 60° away from float's; the rest as
    the baseline's. Only the planted prompts fail, each on the check that measures what was planted."""

    def plant(i: int, r: np.ndarray) -> np.ndarray:
        if i < 3:
            return r / 19
        if i < 5:  # rotate within the plane of r and an orthogonal direction: cosine 0.5
            other = _response(50 + i)
            other = other - (other.ravel() @ r.ravel()) / (r.ravel() @ r.ravel()) * r
            other *= np.linalg.norm(r) / np.linalg.norm(other)
            return 0.5 * r + np.sqrt(0.75) * other
        return r

    honest, planted, baseline = _gate(tmp_path, plant)
    assert set(baseline["text_cosine"]) == {"qdq"} and len(baseline["text_gain"]["qdq"]["values"]) == len(PROMPTS)
    assert baseline["derivation"]["noise"]["text_cosine_recalibration_std"] > 0
    assert all(c.status == "pass" for checks in _text_checks(honest).values() for c in checks)
    checks = _text_checks(planted)
    failed = {kind: [n for n, c in enumerate(cs) if c.status == "failed"] for kind, cs in checks.items()}
    assert failed == {"text_cosine": [3, 4], "text_gain": [0, 1, 2]}
    weak = checks["text_gain"][0]
    assert weak.measured == pytest.approx(np.log2(19), rel=0.02) and weak.harm == GAIN_FLOOR
    assert weak.detail.startswith("response 0.05") and "× float's" in weak.detail, weak.detail
    assert checks["text_cosine"][3].measured == pytest.approx(0.5, abs=0.02)
    assert checks["text_cosine"][3].harm == COSINE_FLOOR


def test_a_baseline_without_the_check_skips_it_with_the_fix(tmp_path: Path) -> None:
    """The study's sdxl-turbo baseline has no text response: the gate makes no such check, and the quality test says
    which command adds it (tests/test_quality.py's skip)."""
    honest, _, baseline = _gate(tmp_path, lambda i, r: r)
    for kind in ("text_cosine", "text_gain"):
        baseline.pop(kind)
    from sdxl_qdq.judge.gate import Gate

    gate = Gate(honest.evaluation, baseline)
    assert not gate.has("text_cosine", "qdq") and not any("text response" in c.metric for c in gate.all_checks())
