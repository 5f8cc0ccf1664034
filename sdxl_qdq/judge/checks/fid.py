"""FID of each quantized variant (qdq@1, qdq@2) against the run's FID reference set, with the run's FID backbone.

Window: the baseline's FID plus 3 σ of FID over float@1 sets drawn with different seeds. Harm: more than 50 % above
its baseline. In the recipe A/B, the difference and its interval come from the jackknife over the prompts (paired:
the same prompt left out of both sets; resampling with replacement would duplicate images).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdxl_qdq.judge.backbones import fid_features, fid_from_features
from sdxl_qdq.judge.backbones import fids as fid_sets
from sdxl_qdq.judge.checks import CheckKind, GatedMetric, NoiseSets
from sdxl_qdq.judge.evaluation import NOISE_SEEDS, load_images
from sdxl_qdq.judge.metrics import jackknife_ci

FID_RISE = 0.5  # an FID more than 50 % above its baseline
FID_SIGMA = 3.0  # FID: 3 σ of FID over the float sets drawn with different seeds


def fid_difference(fa: np.ndarray, fb: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """FID(B) − FID(A) of two feature sets of the same prompts (row i: prompt i) against ``reference``, and its 95 %
    jackknife interval (``sdxl_qdq.judge.metrics.jackknife_ci``: the expected difference at this many prompts)."""
    if len(fa) != len(fb):
        raise ValueError(f"paired feature sets differ in length: {len(fa)} and {len(fb)}")
    return jackknife_ci(
        lambda keep: fid_from_features(fb[keep], reference) - fid_from_features(fa[keep], reference), len(fa)
    )


class Fid(GatedMetric):
    name = "fid"
    order = 30
    by_step = False
    keys = ("qdq@1", "qdq@2")
    kinds = (CheckKind("fid", per_prompt=False),)
    better_is = "lower"
    harm = {"fid_rise": FID_RISE}  # noqa: RUF012
    baseline_keys = ("fid",)

    def noise(self, ev, sets: NoiseSets) -> dict[str, Any]:
        values = [
            ev.fid["float@1"],
            *fid_sets({str(k): s for k, s in sets.seed_sets.items()}, sets.reference_images, ev.backbones.fid).values(),
        ]
        return {"fid_values": values, "fid_std": float(np.std(values, ddof=1))}

    def baseline_entries(self, ev) -> dict[str, Any]:
        return {
            "fid": {
                label: {"value": value, "tolerance": FID_SIGMA * ev.noise["fid_std"]} for label, value in ev.fid.items()
            }
        }

    def derivation(self, ev) -> tuple[str, dict[str, Any]]:
        text = f"FID: tolerance = {FID_SIGMA} × std of FID over float@1 sets of {1 + len(NOISE_SEEDS)} seeds."
        return text, {"fid_values": ev.noise["fid_values"], "fid_std": ev.noise["fid_std"]}

    def check(self, gate, kind: str, key: str, prompt=None):
        from sdxl_qdq.judge.gate import Check

        entry = gate.baseline["fid"][key]
        return Check(
            f"FID {key} [{gate.evaluation.backbones.fid}]",
            gate.evaluation.fid[key],
            entry["value"],
            entry["value"] + entry["tolerance"],
            "max",
            f"reference: {gate.baseline.get('fid_reference')}",
            harm=entry["value"] * (1 + FID_RISE),
        )

    def report_rows(self, gate) -> list[tuple[str, float, float, str]]:
        ev = gate.evaluation
        return [
            (
                f"FID {label} [{ev.backbones.fid}]",
                value,
                gate.baseline.get("fid", {}).get(label, {}).get("value", float("nan")),
                "",
            )
            for label, value in ev.fid.items()
        ]

    def differences(self, a, b, key: str, reference: np.ndarray):
        """FID(B) − FID(A) over the same prompts, with the jackknife's interval (``jackknife_ci``: no duplicated
        images), leaving the same prompt out of both sets."""
        from sdxl_qdq.judge.compare import Difference

        fa = fid_features(load_images(a.image_dirs[key], a.prompts), a.backbones.fid)
        fb = fid_features(load_images(b.image_dirs[key], b.prompts), b.backbones.fid)
        estimate, low, high = fid_difference(fa, fb, reference)
        return [Difference(f"FID {key}", a.fid[key], b.fid[key], estimate, low, high, "lower")]


METRIC = Fid()
