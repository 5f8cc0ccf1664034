"""CLIP score of the quantized images against their prompts (the CLIP backbone of the run), two checks per step:
the mean paired difference CLIP(qdq@k) − CLIP(float@1) (its 95 % bootstrap interval's upper bound must stay above
the baseline minus 2 standard errors of the seed-to-seed noise), and a per-image floor (baseline − 3 σ).

Harm: the mean difference more than 1 % of the mean float CLIP under its baseline; an image's score more than 10 %
under its baseline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdxl_qdq.judge.backbones import clip_scores
from sdxl_qdq.judge.checks import CheckKind, GatedMetric, NoiseSets
from sdxl_qdq.judge.metrics import bootstrap_mean_ci

CLIP_DROP = 0.10  # a per-image CLIP score more than 10 % under its baseline
CLIP_MEAN_DROP = 0.01  # a mean paired CLIP difference more than 1 % of the mean float CLIP under its baseline
CLIP_DELTA_SE = 2.0  # mean CLIP difference: tolerance of 2 standard errors of the seed-resampling noise
CLIP_FLOOR_SIGMA = 3.0  # per-image CLIP floor: 3 σ of the per-prompt seed-to-seed CLIP difference


class Clip(GatedMetric):
    name = "clip"
    order = 20
    kinds = (CheckKind("clip_delta", per_prompt=False), CheckKind("clip_floor", per_prompt=True))
    better_is = "higher"
    harm = {"clip_drop": CLIP_DROP, "clip_mean_drop": CLIP_MEAN_DROP}  # noqa: RUF012
    baseline_keys = ("clip", "clip_delta", "clip_floor")

    def noise(self, ev, sets: NoiseSets) -> dict[str, Any]:
        other = clip_scores(sets.first_seed, [p.text for p in ev.prompts], ev.backbones.clip)
        return {"clip_diff_std": float(np.std(np.asarray(other) - np.asarray(ev.clip["float@1"]), ddof=1))}

    def baseline_entries(self, ev) -> dict[str, Any]:
        sd, n = ev.noise["clip_diff_std"], len(ev.prompts)
        steps = [int(label.split("@")[1]) for label in ev.clip if label.startswith("qdq@")]
        return {
            "clip": ev.clip,
            "clip_delta": {
                str(k): {"value": float(np.mean(ev.clip_delta(k))), "tolerance": CLIP_DELTA_SE * sd / math.sqrt(n)}
                for k in steps
            },
            "clip_floor": {str(k): {"tolerance": CLIP_FLOOR_SIGMA * sd} for k in steps},
        }

    def derivation(self, ev) -> tuple[str, dict[str, Any]]:
        text = (
            f"Mean CLIP difference vs float@1: tolerance = {CLIP_DELTA_SE} × σ/√n, σ = std of per-prompt "
            f"seed-to-seed CLIP differences. Per-image CLIP floor: baseline_i − {CLIP_FLOOR_SIGMA} σ."
        )
        return text, {"clip_diff_std": ev.noise["clip_diff_std"]}

    def check(self, gate, kind: str, key: str, prompt=None):
        from sdxl_qdq.judge.gate import Check

        ev, steps = gate.evaluation, int(key)
        if kind == "clip_delta":
            delta = ev.clip_delta(steps)
            low, high = bootstrap_mean_ci(delta)
            entry = gate.baseline["clip_delta"][key]
            # fail only when the whole 95 % interval of the paired mean lies below baseline − tolerance
            harm = entry["value"] - CLIP_MEAN_DROP * float(np.mean(ev.clip["float@1"]))
            return Check(
                f"mean CLIP(qdq@{steps}) − CLIP(float@1), 95% CI upper bound [{ev.backbones.clip}]",
                high,
                entry["value"],
                entry["value"] - entry["tolerance"],
                "min",
                f"mean {float(delta.mean()):+.4f}, CI [{low:+.4f}, {high:+.4f}]",
                harm=harm,
            )
        base = gate.baseline["clip"][f"qdq@{steps}"][gate.index(prompt)]
        tol = gate.baseline["clip_floor"][key]["tolerance"]
        measured = ev.clip[f"qdq@{steps}"][ev.prompts.index(prompt)]
        return Check(
            f"CLIP qdq@{steps} [{prompt.id}] [{ev.backbones.clip}]",
            measured,
            base,
            base - tol,
            "min",
            harm=base * (1 - CLIP_DROP),
            per_prompt=True,
        )

    def report_rows(self, gate) -> list[tuple[str, float, float, str]]:
        ev, stored = gate.evaluation, gate.baseline.get("clip", {})
        return [
            (
                f"mean CLIP {label} [{ev.backbones.clip}]",
                float(np.mean(scores)),
                np.mean(stored[label]) if label in stored else float("nan"),
                "",
            )
            for label, scores in ev.clip.items()
        ]

    def differences(self, a, b, key: str, reference):
        from sdxl_qdq.judge.compare import paired

        label = f"qdq@{key}"
        return [paired(f"CLIP {label}", a.clip[label], b.clip[label], "higher")]


METRIC = Clip()
