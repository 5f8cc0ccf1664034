"""Baselines: one JSON file per model, EP and backbone pair, with tolerances derived from measured noise."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from quant.cache import package_versions
from quant.errors import ConfigError
from quant.judge.backbones import Backbones
from quant.judge.evaluation import NOISE_SEEDS, STEPS, Evaluation
from quant.paths import BASELINES_DIR

MSE_RECAL_SIGMA = 3.0  # a prompt fails when its error grows by > 3 σ of what re-calibrating moves it
CLIP_DELTA_SE = 2.0  # mean CLIP difference: tolerance of 2 standard errors of the seed-resampling noise
CLIP_FLOOR_SIGMA = 3.0  # per-image CLIP floor: 3 σ of the per-prompt seed-to-seed CLIP difference
FID_SIGMA = 3.0  # FID: 3 σ of FID over the float sets drawn with different seeds


def baseline_model_name(model: str) -> str:
    """The folder under baselines/ for ``--model``: ``stabilityai/sdxl-turbo`` → ``sdxl-turbo``; a variant
    (``canary:no-xattn``) is gated by its parent's baseline."""
    return Path(model.rstrip("/")).name.split(":")[0]


def baseline_path(model: str, backbones: Backbones, root: Path = BASELINES_DIR, *, ep: str = "cpu") -> Path:
    """``<root>/<model>/<ep>/<clip>__<fid>.json``: the EP that ran the quantized variants is part of the key (the
    QNN EP does not compute what the CPU EP computes, so one never gates the other)."""
    return root / baseline_model_name(model) / ep / f"{backbones.name}.json"


def load_baseline(model: str, backbones: Backbones, root: Path = BASELINES_DIR, *, ep: str = "cpu") -> dict[str, Any]:
    """The baseline of ``model`` for exactly these backbones and this EP; a clear error when there is none."""
    path = baseline_path(model, backbones, root, ep=ep)
    if not path.is_file():
        folder = path.parent.parent
        others = sorted(f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*__*.json")) if folder.is_dir() else []
        hint = (f"baselines exist for other EPs or backbones only ({', '.join(others)}), which never gate this one; "
                if others else "")
        raise ConfigError(
            f"no baseline for model {baseline_model_name(model)!r} on the {ep} EP with backbones clip={backbones.clip}, "
            f"fid={backbones.fid} (looked for {path}); {hint}create it with "
            f"`pytest -m quality{'' if ep == 'cpu' else f' --ep {ep}'} --update-baselines`"
        )
    baseline = json.loads(path.read_text())
    if baseline["backbones"] != {"clip": backbones.clip, "fid": backbones.fid}:
        raise ConfigError(f"baseline {path} was made with backbones {baseline['backbones']}, not {backbones}")
    if baseline.get("ep") != ep:
        raise ConfigError(f"baseline {path} was made on the {baseline.get('ep')!r} EP, not {ep!r}; it must not gate this "
                          f"run: regenerate it with `pytest -m quality --ep {ep} --update-baselines`")
    return baseline


def baseline_from_evaluation(ev: Evaluation) -> dict[str, Any]:
    """A baseline with tolerances derived from the seed noise measured in ``ev`` (needs ``with_noise``)."""
    if ev.noise is None:
        raise ValueError("deriving tolerances needs an evaluation with seed noise (evaluate(..., with_noise=True))")
    n = len(ev.prompts)
    clip_sd = ev.noise["clip_diff_std"]
    recal_sd = {k: float(np.std(np.asarray(ev.noise["recalibrated_mse"][k]) - np.asarray(ev.mse[k]), ddof=1)) for k in STEPS}
    return {
        "model": ev.model,
        "backbones": {"clip": ev.backbones.clip, "fid": ev.backbones.fid},
        "fid_reference": ev.fid_reference,
        "recipe": ev.recipe,
        "ep": ev.ep,
        "versions": package_versions(),
        "source": "measured with `pytest -m quality --update-baselines`",
        "derivation": {
            "text": (
                f"Tolerances come from the float model's seed-to-seed noise (seed bases 0 vs {NOISE_SEEDS}). "
                f"MSE: limit_i = baseline_i + {MSE_RECAL_SIGMA} σ_k, σ_k = std over prompts of the change in per-image "
                "MSE when the same recipe is calibrated on the 50 test prompts instead of the 50 train prompts. "
                f"Mean CLIP difference vs float@1: tolerance = {CLIP_DELTA_SE} × σ/√n, σ = std of per-prompt "
                f"seed-to-seed CLIP differences. Per-image CLIP floor: baseline_i − {CLIP_FLOOR_SIGMA} σ. "
                f"FID: tolerance = {FID_SIGMA} × std of FID over float@1 sets of {1 + len(NOISE_SEEDS)} seeds."
            ),
            "noise": {"clip_diff_std": clip_sd, "fid_values": ev.noise["fid_values"], "fid_std": ev.noise["fid_std"],
                      "mse_seed_mean": {str(k): float(np.mean(v)) for k, v in ev.noise["mse"].items()},
                      "mse_recalibration_std": {str(k): recal_sd[k] for k in STEPS}},
        },
        "prompts": [p.id for p in ev.prompts],
        "mse": {
            str(k): {"values": ev.mse[k], "tolerance": [MSE_RECAL_SIGMA * recal_sd[k]] * n}
            for k in STEPS
        },
        "clip": ev.clip,
        "clip_delta": {str(k): {"value": float(np.mean(ev.clip_delta(k))), "tolerance": CLIP_DELTA_SE * clip_sd / math.sqrt(n)}
                       for k in STEPS},
        "clip_floor": {str(k): {"tolerance": CLIP_FLOOR_SIGMA * clip_sd} for k in STEPS},
        "fid": {label: {"value": value, "tolerance": FID_SIGMA * ev.noise["fid_std"]} for label, value in ev.fid.items()},
    }


def write_baseline(baseline: dict[str, Any], path: Path) -> None:
    """Atomic write (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(baseline, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ checks
