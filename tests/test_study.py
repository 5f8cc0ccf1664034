"""Reproduce the published study from its own images, and check the shipped sdxl-turbo baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdxl_qdq.judge.metrics import image_mse, psnr_db
from sdxl_qdq.judge.study import STUDY_DIR, read_table, study_baseline
from sdxl_qdq.run.generate import load_png

TRIPLETS = {  # prompt → the study's published 1-step MSE
    "A few people working on various computers in an office": 468.82,
    "A purple motorcycle parked in front of a red brick building": 398.23,
    "A small white toilet sitting next to a metal trash can": 587.02,
}


@pytest.mark.parametrize("prompt", sorted(TRIPLETS), ids=lambda p: p.split()[2])
def test_our_mse_reproduces_the_study(prompt: str) -> None:
    float_image = load_png(STUDY_DIR / "unoptimized" / f"{prompt}.png")
    quantized = load_png(STUDY_DIR / "optimized_1step" / f"{prompt}.png")
    assert float_image.shape == quantized.shape == (512, 512, 3)
    mse = image_mse(float_image, quantized)
    assert mse == pytest.approx(TRIPLETS[prompt], abs=0.005)
    assert mse == pytest.approx(read_table(STUDY_DIR / "optimized_1step" / "mse_scores.txt")[prompt], rel=1e-6)
    assert psnr_db(mse) == pytest.approx(10 * np.log10(255**2 / TRIPLETS[prompt]), abs=1e-4)


def test_study_summary_figures_match_its_tables() -> None:
    base = study_baseline()
    assert [round(base["fid"][k]["value"], 2) for k in ("float@1", "qdq@1", "qdq@2")] == [174.41, 176.45, 168.21]
    assert [round(float(np.mean(base["clip"][k])), 2) for k in ("float@1", "qdq@1", "qdq@2")] == [31.58, 31.70, 31.70]
    assert round(float(np.mean(base["mse"]["1"]["values"]))) == 425


def test_shipped_sdxl_turbo_baseline_is_the_study() -> None:
    from sdxl_qdq.paths import BASELINES_DIR

    shipped = json.loads(
        (
            BASELINES_DIR
            / "sdxl-turbo"
            / "cpu"
            / "openai--clip-vit-base-patch16__inception-v3-2048__coco2017-crop256.json"
        ).read_text()
    )
    fresh = study_baseline()
    for key in ("prompts", "mse", "clip", "clip_delta", "clip_floor", "fid", "backbones"):
        assert shipped[key] == fresh[key], key
