"""Per-image MSE of qdq@k against float@k (the study's definition, 0–255 pixels), per prompt and step count.

Window: the baseline's MSE plus 3 σ of how much re-calibrating the same recipe on other prompts moves it. Harm: the
image falls under 30 dB PSNR (AI Hub's lower bar) or, where its baseline is already under 36 dB, 6 dB (4× the MSE)
under its baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdxl_qdq.judge.checks import CheckKind, GatedMetric, NoiseSets
from sdxl_qdq.judge.metrics import image_mse, psnr_db

PSNR_FLOOR_DB = 30.0  # an image is harmed below 30 dB PSNR vs float (AI Hub's lower bar) ...
PSNR_DROP_DB = 6.0  # ... or, where its baseline is already below 36 dB, 6 dB (4× the MSE) under its baseline
MSE_RECAL_SIGMA = 3.0  # a prompt fails when its error grows by > 3 σ of what re-calibrating moves it


def mse_at_psnr(psnr: float, *, data_range: float = 255.0) -> float:
    return data_range**2 / 10 ** (psnr / 10)


class Mse(GatedMetric):
    name = "mse"
    order = 10
    kinds = (CheckKind("mse", per_prompt=True),)
    better_is = "lower"
    harm = {"psnr_floor_db": PSNR_FLOOR_DB, "psnr_drop_db": PSNR_DROP_DB}  # noqa: RUF012
    baseline_keys = ("mse",)

    def noise(self, ev, sets: NoiseSets) -> dict[str, Any]:
        return {
            "recalibrated_mse": {
                k: [image_mse(f, q) for f, q in zip(sets.float_sets[k], images)]
                for k, images in sets.recalibrated.items()
            },
            "mse": {
                1: [image_mse(a, b) for a, b in zip(sets.float_sets[1], sets.first_seed)],
                2: [image_mse(a, b) for a, b in zip(sets.float_sets[2], sets.float2_other_seed)],
            },
        }

    def _recalibration_sd(self, ev) -> dict[int, float]:
        return {
            k: float(np.std(np.asarray(ev.noise["recalibrated_mse"][k]) - np.asarray(ev.mse[k]), ddof=1))
            for k in ev.mse
        }

    def baseline_entries(self, ev) -> dict[str, Any]:
        sd, n = self._recalibration_sd(ev), len(ev.prompts)
        return {"mse": {str(k): {"values": ev.mse[k], "tolerance": [MSE_RECAL_SIGMA * sd[k]] * n} for k in ev.mse}}

    def derivation(self, ev) -> tuple[str, dict[str, Any]]:
        text = (
            f"MSE: limit_i = baseline_i + {MSE_RECAL_SIGMA} σ_k, σ_k = std over prompts of the change in per-image "
            "MSE when the same recipe is calibrated on the 50 test prompts instead of the 50 train prompts."
        )
        return text, {
            "mse_seed_mean": {str(k): float(np.mean(v)) for k, v in ev.noise["mse"].items()},
            "mse_recalibration_std": {str(k): v for k, v in self._recalibration_sd(ev).items()},
        }

    def check(self, gate, kind: str, key: str, prompt=None):
        from sdxl_qdq.judge.gate import Check

        i, entry = gate.index(prompt), gate.baseline["mse"][key]
        measured = gate.evaluation.mse[int(key)][gate.evaluation.prompts.index(prompt)]
        base, tol = entry["values"][i], entry["tolerance"][i]
        harm = mse_at_psnr(min(PSNR_FLOOR_DB, psnr_db(base) - PSNR_DROP_DB))
        return Check(
            f"MSE qdq@{key} vs float@{key} [{prompt.id}]",
            measured,
            base,
            base + tol,
            "max",
            f"PSNR {psnr_db(measured):.2f} dB",
            harm=harm,
            per_prompt=True,
        )

    def report_rows(self, gate) -> list[tuple[str, float, float, str]]:
        rows = []
        for k, values in gate.evaluation.mse.items():
            base = np.mean(gate.baseline["mse"][str(k)]["values"]) if gate.has("mse", str(k)) else float("nan")
            mean = float(np.mean(values))
            rows.append((f"mean MSE qdq@{k} vs float@{k}", mean, base, f"PSNR {psnr_db(mean):.2f} dB"))
        return rows

    def differences(self, a, b, key: str, reference):
        from sdxl_qdq.judge.compare import paired

        k = int(key)
        return [paired(f"MSE qdq@{k} vs float@{k}", a.mse[k], b.mse[k], "lower")]


METRIC = Mse()
