"""Real size: the memory-bounded path on the real SDXL-turbo architectures (random weights), 3 samples.

Not part of CI (``-m slow`` or ``make real-size`` selects it; 9 to 13 min on 2 cores, 14 GB of memory,
40 GB of disk). It builds ``sdxl-turbo:random`` (stabilityai/sdxl-turbo's configs, seeded random weights)
with ``--quantizer lean`` and calibration on 3 prompts at 1 step (3 samples per component), and records,
per component and stage, wall time and peak resident memory, with the time extrapolated to 50 prompts; the
table goes to the benchmark's extra_info and to ``reports/real-size.json`` so that users can size their
machines (README, "Real size"; a measured run is kept in ``baselines/real-size/``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import onnx
import pytest

from sdxl_qdq.cache import package_versions
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.recipe import DEFAULT_RECIPE
from sdxl_qdq.convert.stages import build
from sdxl_qdq.models.prompts import PROMPTS_COCO, load_prompts
from sdxl_qdq.procs import total_memory_bytes
from sdxl_qdq.rehearsal import commit

pytestmark = pytest.mark.slow
REPORT = Path(__file__).resolve().parent.parent / "reports" / "real-size.json"
SAMPLES = 3


def _stats(result, qdq_cache, *, wall: float) -> dict:
    export_dir = result.float.models["unet"].parent.parent
    out = {
        "samples": SAMPLES,
        "wall_s": round(wall, 1),
        "versions": package_versions(),
        "commit": commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(total_memory_bytes() / 1e9, 1),
            "system": platform.platform(),
        },
        "export": json.loads((export_dir / "build.json").read_text()) if (export_dir / "build.json").exists() else None,
        "prepared": {
            c: json.loads((qdq_cache.root / "prepared" / key / "build.json").read_text())
            for c, key in result.keys["prepared"].items()
        },
        "calibration": json.loads((result.calibration_dir / "build.json").read_text()),
        "quantize": {c: json.loads((result.qdq.models[c].parent / "build.json").read_text()) for c in COMPONENTS},
        "sizes_gb": {
            c: {
                "float": round((result.float.models[c].parent / "model.onnx.data").stat().st_size / 1e9, 3),
                "qdq": round((result.qdq.models[c].parent / "model.onnx.data").stat().st_size / 1e9, 3),
            }
            for c in COMPONENTS
        },
    }
    # 50 prompts at 1 step (50 samples per component), and the seed recipe's 1- and 2-step trajectories
    out["extrapolated"] = [_extrapolate(out, 50, (1,)), _extrapolate(out, 50, (1, 2))]
    return out


def _extrapolate(stats: dict, prompts: int, steps: tuple[int, ...]) -> dict:
    """Time to build with ``prompts`` calibration prompts at each step count in ``steps`` (the recipe's
    ``calibration.steps``), from the measured fixed and per-call costs. Distinct calls: each text encoder
    runs once per prompt, the UNet once per step except that the first step is the same call at every step
    count, the decoder once per prompt and step count (its inputs are recorded, not run; calibration runs
    it). A component whose ranges the recording collects costs its per-call time there and no calibration
    later. A session's first run pays for allocations the later ones reuse: it is counted once, the others
    extrapolate. Peak memory does not grow with the samples (each sample's activations go to disk)."""
    encoder_calls = prompts
    unet_calls = prompts * (sum(steps) - len(steps) + 1)
    decoder_samples = prompts * len(steps)
    export = sum(v["seconds"] for v in (stats["export"] or {}).values())
    prepared = sum(v["seconds"] for v in stats["prepared"].values())
    stages = stats["calibration"]["stages"]
    record = _calls(stages["text encoders"], encoder_calls) + _calls(stages["unet"], unet_calls)
    samples = {
        "text_encoder": encoder_calls,
        "text_encoder_2": encoder_calls,
        "unet": unet_calls,
        "vae_decoder": decoder_samples,
    }
    quantize = {}
    for c, q in stats["quantize"].items():
        cal = next((s for s in q["steps"] if s["step"] == "calibration"), None)
        if cal:  # the first sample of each segment once, the others per sample
            rest = (cal["samples_s"] - cal["first_sample_s"]) / (cal["samples"] - 1)
            quantize[c] = round(q["seconds"] - cal["samples_s"] + cal["first_sample_s"] + rest * (samples[c] - 1), 1)
        else:
            quantize[c] = round(q["seconds"], 1)
    # what no stage's clock sees (artifact manifests: hashing 24 GB; starting processes), counted as measured
    other = (
        stats["wall_s"]
        - export
        - prepared
        - stats["calibration"]["seconds"]
        - sum(q["seconds"] for q in stats["quantize"].values())
    )
    peaks = [v["peak_rss_gb"] for v in (stats["export"] or {}).values()] + [stats["calibration"]["peak_rss_gb"]]
    peaks += [v["peak_rss_gb"] for v in stats["prepared"].values()] + [
        q["peak_rss_gb"] for q in stats["quantize"].values()
    ]
    return {
        "prompts": prompts,
        "steps": list(steps),
        "samples": samples,
        "export_s": round(export, 1),
        "prepared_s": round(prepared, 1),
        "record_s": round(record, 1),
        "quantize_s": quantize,
        "other_s": round(other, 1),
        "total_min": round((export + prepared + record + sum(quantize.values()) + other) / 60, 1),
        "peak_rss_gb": max(peaks),
    }


def _calls(stage: dict, calls: int) -> float:
    """A recording stage's time for ``calls`` model calls: sessions, the first run, then per call."""
    rest = (stage["calls"] * stage["per_call_s"] - stage["first_run_s"]) / (stage["calls"] - stage["first_run_calls"])
    return stage["load_s"] + stage["first_run_s"] + rest * (calls - stage["first_run_calls"])


def test_real_size_build_is_memory_bounded(benchmark, qdq_cache, tmp_path: Path) -> None:
    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["calibration"]["steps"] = [1]  # 3 prompts x 1 step = 3 samples per component
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe))
    prompts = load_prompts("train", path=PROMPTS_COCO)[:SAMPLES]

    started = time.perf_counter()
    result = benchmark.pedantic(
        lambda: build(
            "sdxl-turbo:random",
            recipe=recipe_path,
            cache=qdq_cache,
            calibration_prompts=prompts,
            quantizer="lean",
            progress=lambda m: print(m, flush=True),
        ),
        rounds=1,
        iterations=1,
    )

    stats = _stats(result, qdq_cache, wall=time.perf_counter() - started)
    benchmark.extra_info.update(stats)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(stats, indent=1))
    assert sorted(result.keys["prepared"]) == ["text_encoder", "text_encoder_2", "unet"]  # calibrated while recording
    for c in COMPONENTS:
        assert result.keys["quantizer"][c] == "lean"
        model = onnx.load(str(result.qdq.models[c]), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, c
        assert stats["quantize"][c]["quantizer"] == "lean"
        # the QDQ weights are uint8: about a quarter of the float ones
        assert stats["sizes_gb"][c]["qdq"] < 0.4 * stats["sizes_gb"][c]["float"], c
