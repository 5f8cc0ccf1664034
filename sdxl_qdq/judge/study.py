"""The published study (fixtures/reference_study): its figures as the sdxl-turbo baseline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.cache import package_versions
from sdxl_qdq.judge.backbones import REAL_CLIP, REAL_FID, Backbones
from sdxl_qdq.judge.baseline import prompts_sha256
from sdxl_qdq.judge.evaluation import COCO_REFERENCE
from sdxl_qdq.models.prompts import load_prompts
from sdxl_qdq.paths import FIXTURES_DIR

STUDY_DIR = FIXTURES_DIR / "reference_study"
VARIANTS = {"float@1": "unoptimized", "qdq@1": "optimized_1step", "qdq@2": "optimized_2steps"}
# The versions the study recorded nothing about; ours at the time the baseline was written are kept apart.
STUDY_REF = "microsoft/Olive e51d49f434cc0f0d9b9168a67b933387ba076476 examples/directml/stable_diffusion_xl/report_xl"


def read_table(path: Path) -> dict[str, float]:
    """``| key | value |`` rows of a study score file (header row skipped)."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and re.fullmatch(r"-?[0-9.eE+-]+", cells[1]):
            rows[cells[0]] = float(cells[1])
    return rows


def study_baseline(study_dir: Path = STUDY_DIR) -> dict[str, Any]:
    """The sdxl-turbo baseline: the study's per-prompt CLIP, per-image MSE and FID, with tolerances derived
    from the study's own spread (it judged all three variants 'similar')."""
    prompts = load_prompts("all")
    clip = {}
    for label, folder in VARIANTS.items():
        table = read_table(study_dir / folder / "clip_scores.txt")
        clip[label] = [table[p.text] for p in prompts]
    mse_table = read_table(study_dir / "optimized_1step" / "mse_scores.txt")
    mse = [mse_table[p.text] for p in prompts]
    fid = {label: read_table(study_dir / folder / "fid_scores.txt")["FID"] for label, folder in VARIANTS.items()}
    n = len(prompts)
    mse_sd = float(np.std(mse, ddof=1))
    deltas = {k: np.asarray(clip[f"qdq@{k}"]) - np.asarray(clip["float@1"]) for k in (1, 2)}
    delta_sd = float(np.std(deltas[1], ddof=1))
    fid_spread = max(fid.values()) - min(fid.values())
    backbones = Backbones(REAL_CLIP, REAL_FID)
    return {
        "model": "sdxl-turbo",
        "backbones": backbones.record(),
        "fid_reference": "COCO 2017 images of the 100 prompts, center-cropped to 256",
        "fid_reference_id": COCO_REFERENCE,
        "recipe": "qnn-w8a16",
        "ep": "cpu",
        "ep_note": (
            "the study does not name the EP its QDQ models ran on; onnxruntime's default, the CPU EP, is assumed. "
            "It gates CPU-EP runs only: a QNN-EP run is gated by a baseline made on the QNN EP."
        ),
        "versions": {"study": STUDY_REF, "written_with": package_versions()},
        "source": f"published study ({STUDY_REF})",
        "derivation": {
            "text": (
                "From the study's own spread. MSE (1 step only; the study published no 2-step MSE): limit_i = "
                "baseline_i + 2 σ, σ = std of the study's 100 per-image MSE values. Mean CLIP difference vs float@1: "
                "tolerance = 2 σ_Δ/√n, σ_Δ = std of the study's per-prompt CLIP(qdq@1) − CLIP(float@1). Per-image "
                "CLIP floor: baseline_i − 3 σ_Δ. FID: tolerance = the range of the study's three FIDs, which it "
                "called similar."
            ),
            "noise": {"mse_std": mse_sd, "clip_delta_std": delta_sd, "fid_range": fid_spread},
        },
        "prompts": [p.id for p in prompts],
        "prompts_sha256": prompts_sha256(prompts),
        "mse": {"1": {"values": mse, "tolerance": [2 * mse_sd] * n}},
        "clip": clip,
        "clip_delta": {
            str(k): {"value": float(deltas[k].mean()), "tolerance": 2 * delta_sd / np.sqrt(n)} for k in (1, 2)
        },
        "clip_floor": {str(k): {"tolerance": 3 * delta_sd} for k in (1, 2)},
        "fid": {label: {"value": value, "tolerance": fid_spread} for label, value in fid.items()},
    }
