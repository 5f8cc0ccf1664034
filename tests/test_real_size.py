"""Real size: the memory-bounded path on the real SDXL-turbo architectures (random weights), 2 samples.

Not part of CI (``-m slow`` or ``make real-size`` selects it; about 20 min on 2 cores, 12 GB of memory,
35 GB of disk). It builds ``sdxl-turbo:random`` (stabilityai/sdxl-turbo's configs, seeded random weights)
with ``--quantizer lean`` and calibration on 2 prompts at 1 step (2 samples per component), and records,
per component and stage, wall time and peak resident memory, with the time extrapolated to 50 prompts; the
table goes to the benchmark's extra_info and to ``reports/real-size.json`` so that users can size their
machines (README, "Real size"; a measured run is kept in ``baselines/real-size/``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import onnx
import pytest

from quant.build.recipe import DEFAULT_RECIPE
from quant.build.stages import build
from quant.cache import package_versions
from quant.components import COMPONENTS
from quant.models.prompts import PROMPTS_COCO, load_prompts
from quant.procs import total_memory_bytes

pytestmark = pytest.mark.slow
REPORT = Path(__file__).resolve().parent.parent / "reports" / "real-size.json"
SAMPLES = 2


def _stats(result) -> dict:
    export_dir = result.float.models["unet"].parent.parent
    out = {
        "samples": SAMPLES,
        "versions": package_versions(),
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(total_memory_bytes() / 1e9, 1), "system": platform.platform()},
        "export": json.loads((export_dir / "build.json").read_text()) if (export_dir / "build.json").exists() else None,
        "calibration": json.loads((result.calibration_dir / "build.json").read_text()),
        "quantize": {c: json.loads((result.qdq.models[c].parent / "build.json").read_text()) for c in COMPONENTS},
        "sizes_gb": {
            c: {"float": round((result.float.models[c].parent / "model.onnx.data").stat().st_size / 1e9, 3),
                "qdq": round((result.qdq.models[c].parent / "model.onnx.data").stat().st_size / 1e9, 3)}
            for c in COMPONENTS
        },
    }
    # 50 prompts at 1 step (50 samples per component), and the seed recipe's 1- and 2-step trajectories
    out["extrapolated"] = [_extrapolate(out, 50, (1,)), _extrapolate(out, 50, (1, 2))]
    return out


def _extrapolate(stats: dict, prompts: int, steps: tuple[int, ...]) -> dict:
    """Time to build with ``prompts`` calibration prompts at each step count in ``steps`` (the recipe's
    ``calibration.steps``), from the measured fixed and per-sample costs. Distinct calls: each text encoder
    runs once per prompt, the UNet once per step except that the first step is the same call at every step
    count, the decoder once per prompt and step count (its inputs are recorded, not run; calibration runs
    it). Peak memory does not grow with the samples (each sample's activations go to disk)."""
    encoder_calls = prompts
    unet_calls = prompts * (sum(steps) - len(steps) + 1)
    decoder_samples = prompts * len(steps)
    export = sum(v["seconds"] for v in (stats["export"] or {}).values())
    stages = stats["calibration"]["stages"]
    record = (stages["text encoders"]["load_s"] + encoder_calls * stages["text encoders"]["per_call_s"]
              + stages["unet"]["load_s"] + unet_calls * stages["unet"]["per_call_s"])
    samples = {"text_encoder": encoder_calls, "text_encoder_2": encoder_calls, "unet": unet_calls,
               "vae_decoder": decoder_samples}
    quantize = {}
    for c, q in stats["quantize"].items():
        cal = next(s for s in q["steps"] if s["step"] == "calibration")
        quantize[c] = round(q["seconds"] - cal["samples_s"] + cal["samples_s"] / cal["samples"] * samples[c], 1)
    peaks = [v["peak_rss_gb"] for v in (stats["export"] or {}).values()] + [stats["calibration"]["peak_rss_gb"]]
    peaks += [q["peak_rss_gb"] for q in stats["quantize"].values()]
    return {"prompts": prompts, "steps": list(steps), "samples": samples, "export_s": round(export, 1),
            "record_s": round(record, 1), "quantize_s": quantize,
            "total_min": round((export + record + sum(quantize.values())) / 60, 1), "peak_rss_gb": max(peaks)}


def test_real_size_build_is_memory_bounded(benchmark, cache, tmp_path: Path) -> None:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["calibration"]["steps"] = [1]  # 2 prompts x 1 step = 2 samples per component
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe))
    prompts = load_prompts("train", path=PROMPTS_COCO)[:SAMPLES]

    result = benchmark.pedantic(
        lambda: build("sdxl-turbo:random", recipe=recipe_path, cache=cache, calibration_prompts=prompts,
                      quantizer="lean", progress=lambda m: print(m, flush=True)),
        rounds=1, iterations=1)

    stats = _stats(result)
    benchmark.extra_info.update(stats)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(stats, indent=1))
    for c in COMPONENTS:
        assert result.keys["quantizer"][c] == "lean"
        model = onnx.load(str(result.qdq.models[c]), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, c
        assert stats["quantize"][c]["quantizer"] == "lean"
        # the QDQ weights are uint8: about a quarter of the float ones
        assert stats["sizes_gb"][c]["qdq"] < 0.4 * stats["sizes_gb"][c]["float"], c
