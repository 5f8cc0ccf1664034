"""Text conditioning: per prompt, the UNet's response to the prompt at the first step — its output for the prompt's
embeddings minus its output for the empty prompt's, from the same latents (``OrtSDXLPipeline.text_response``, drawn
beside each image) — of the quantized pipeline on its EP against the float pipeline's. Two checks per prompt: the
cosine of the two responses (does the prompt still push the same way?) and the gain error |log2(‖Δqdq‖ / ‖Δfloat‖)|
(does it push as hard?). The uncond embeddings come from each pipeline's own text encoders, so a broken encoder
shows here as well as a broken cross-attention.

CLIP score sees a weakened conditioning late, and only on a model whose prompts matter; this sees it at the UNet's
output, on any weights (qualcomm/ai-hub-apps#155: a QNN UNet whose response was 19× weaker than PyTorch's drew
near-monochrome images).

Window: the baseline's value ± 3 σ of how much re-calibrating the same recipe on other prompts moves it (as MSE).
Harm: a cosine under 0.9 (or, where its baseline is already under 0.95, 0.05 under it); a response halved or doubled
(gain error over 1, or 0.5 over its baseline where that is already over 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.errors import ConfigError
from sdxl_qdq.judge.checks import CheckKind, GatedMetric, NoiseSets
from sdxl_qdq.run.generate import load_response, response_name

KEY = "qdq"  # one label: the response is the first step's, shared by every step count
COSINE_FLOOR = 0.9  # harm: the quantized response points more than ~26° away from float's ...
COSINE_DROP = 0.05  # ... or, where the baseline is already under 0.95, 0.05 under its baseline
GAIN_FLOOR = 1.0  # harm: the response halved or doubled (|log2 ratio| > 1) ...
GAIN_RISE = 0.5  # ... or, where the baseline is already over 0.5, 0.5 (×1.41) over its baseline
RECAL_SIGMA = 3.0  # noise window: 3 σ of the per-prompt change when the recipe is calibrated on other prompts


def responses(folder: Path, prompts: list) -> list[np.ndarray]:
    """The text responses drawn beside ``folder``'s images, in prompt order; a one-line error when they are missing."""
    missing = [p for p in prompts if not (Path(folder) / response_name(p)).is_file()]
    if missing:
        raise ConfigError(
            f"{folder} has no text response for {len(missing)} of its {len(prompts)} prompts (first: "
            f"{response_name(missing[0])}): it was drawn by an older sdxl-qdq; draw it again (a device: "
            "`sdxl-qdq device-run` on a bundle made by this version)"
        )
    return [load_response(Path(folder) / response_name(p)) for p in prompts]


def compare(reference: list[np.ndarray], quantized: list[np.ndarray]) -> dict[str, list[float]]:
    """Per prompt: cosine of the two responses, their norm ratio (quantized / reference), the gain error
    |log2 ratio|, and each response's RMS."""
    out: dict[str, list[float]] = {"cosine": [], "ratio": [], "gain": [], "float_rms": [], "qdq_rms": []}
    for ref, quant in zip(reference, quantized):
        f, q = ref.astype(np.float64).ravel(), quant.astype(np.float64).ravel()
        nf, nq = float(np.linalg.norm(f)), float(np.linalg.norm(q))
        tiny = np.finfo(np.float32).tiny
        cosine = float(f @ q / (nf * nq)) if nf > tiny and nq > tiny else float(nf <= tiny and nq <= tiny)
        ratio = nq / nf if nf > tiny else (1.0 if nq <= tiny else float("inf"))
        out["cosine"].append(cosine)
        out["ratio"].append(ratio)
        out["gain"].append(abs(float(np.log2(ratio))) if 0 < ratio < float("inf") else float("inf"))
        out["float_rms"].append(nf / np.sqrt(f.size))
        out["qdq_rms"].append(nq / np.sqrt(q.size))
    return out


class TextResponse(GatedMetric):
    name = "text_response"
    order = 40
    by_step = False
    keys = (KEY,)
    kinds = (CheckKind("text_cosine", per_prompt=True), CheckKind("text_gain", per_prompt=True))
    better_is = "higher"  # the A/B reads each row's own direction (cosine higher, gain error lower)
    harm = {  # noqa: RUF012
        "text_cosine_floor": COSINE_FLOOR,
        "text_cosine_drop": COSINE_DROP,
        "text_gain_floor": GAIN_FLOOR,
        "text_gain_rise": GAIN_RISE,
    }
    baseline_keys = ("text_cosine", "text_gain")
    required = False  # the study's sdxl-turbo baseline has none: its checks skip until --update-baselines

    def measure(self, images, prompts, backbones, progress, dirs, reference) -> dict[str, list[float]]:
        progress("text responses: quantized vs float")
        return compare(responses(dirs["float@1"], prompts), responses(dirs["qdq@1"], prompts))

    def noise(self, ev, sets: NoiseSets) -> dict[str, Any]:
        if 1 not in sets.recalibrated_dirs:
            return {}
        other = compare(
            responses(ev.image_dirs["float@1"], ev.prompts), responses(sets.recalibrated_dirs[1], ev.prompts)
        )
        return {"recalibrated_text_cosine": other["cosine"], "recalibrated_text_gain": other["gain"]}

    def _recalibration_sd(self, ev) -> dict[str, float]:
        measured = ev.measured[self.name]
        return {
            kind: float(np.std(np.asarray(ev.noise[f"recalibrated_text_{kind}"]) - np.asarray(measured[kind]), ddof=1))
            for kind in ("cosine", "gain")
        }

    def baseline_entries(self, ev) -> dict[str, Any]:
        if self.name not in ev.measured or "recalibrated_text_cosine" not in ev.noise:
            return {}
        sd, measured, n = self._recalibration_sd(ev), ev.measured[self.name], len(ev.prompts)
        return {
            f"text_{kind}": {KEY: {"values": measured[kind], "tolerance": [RECAL_SIGMA * sd[kind]] * n}}
            for kind in ("cosine", "gain")
        }

    def derivation(self, ev) -> tuple[str, dict[str, Any]]:
        text = (
            f"Text response (cosine and |log2 gain| of the UNet's cond − uncond output, qdq vs float): limit_i = "
            f"baseline_i ∓ {RECAL_SIGMA} σ, σ = std over prompts of the change when the recipe is calibrated on the "
            "50 test prompts instead."
        )
        if self.name not in ev.measured or "recalibrated_text_cosine" not in ev.noise:
            return text, {}
        return text, {f"text_{k}_recalibration_std": v for k, v in self._recalibration_sd(ev).items()}

    def check(self, gate, kind: str, key: str, prompt=None):
        from sdxl_qdq.judge.gate import Check

        ev = gate.evaluation
        measured = ev.measured[self.name]
        n = ev.prompts.index(prompt)
        entry, i = gate.baseline[kind][key], gate.index(prompt)
        base, tol = entry["values"][i], entry["tolerance"][i]
        detail = (
            f"response {measured['ratio'][n]:.3g}× float's (RMS {measured['qdq_rms'][n]:.4g} vs "
            f"{measured['float_rms'][n]:.4g}), cosine {measured['cosine'][n]:.4f}"
        )
        if kind == "text_cosine":
            harm = min(COSINE_FLOOR, base - COSINE_DROP)
            return Check(
                f"text response cosine qdq vs float [{prompt.id}]",
                measured["cosine"][n],
                base,
                base - tol,
                "min",
                detail,
                harm=harm,
                per_prompt=True,
            )
        return Check(
            f"text response gain error |log2(qdq/float)| [{prompt.id}]",
            measured["gain"][n],
            base,
            base + tol,
            "max",
            detail,
            harm=max(GAIN_FLOOR, base + GAIN_RISE),
            per_prompt=True,
        )

    def report_rows(self, gate) -> list[tuple[str, float, float, str]]:
        measured = gate.evaluation.measured.get(self.name)
        if not measured:
            return []

        def stored(kind: str) -> float:
            values = gate.baseline.get(f"text_{kind}", {}).get(KEY, {}).get("values")
            return float(np.median(values)) if values else float("nan")

        ratios = np.asarray(measured["ratio"])
        return [
            ("median text response cosine qdq vs float", float(np.median(measured["cosine"])), stored("cosine"), ""),
            (
                "median text response gain error |log2(qdq/float)|",
                float(np.median(measured["gain"])),
                stored("gain"),
                f"strength qdq/float: median {np.median(ratios):.3g}×, weakest {ratios.min():.3g}×, "
                f"strongest {ratios.max():.3g}×",
            ),
        ]

    def differences(self, a, b, key: str, reference):
        from sdxl_qdq.judge.compare import paired

        if self.name not in a.measured or self.name not in b.measured:
            return []
        ma, mb = a.measured[self.name], b.measured[self.name]
        return [
            paired("text response cosine qdq vs float", ma["cosine"], mb["cosine"], "higher"),
            paired("text response gain error |log2|", ma["gain"], mb["gain"], "lower"),
        ]


METRIC = TextResponse()
