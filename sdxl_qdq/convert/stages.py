"""Build every artifact for a model: source → float ONNX → calibration data → QDQ ONNX per component.

Each stage is cached under a key that hashes all of its inputs (upstream keys, code revision of the stage,
recipe bytes, prompts, shapes, opset, package versions); a warm build only computes keys and checks that
the directories exist, so it imports neither torch nor Olive.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdxl_qdq.cache import ArtifactCache, package_versions
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.calibration import RANGES_FILE, record_calibration
from sdxl_qdq.convert.export import export_components
from sdxl_qdq.convert.lean.policy import PROTOBUF_LIMIT, choose_quantizer, stock_peak_estimate, weight_file_bytes
from sdxl_qdq.convert.recipe import (
    DEFAULT_RECIPE,
    calibration_prompt_count,
    calibration_steps,
    load_recipe,
    minmax_only,
    quantize_component,
)
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.models.prompts import Prompt, load_prompts, prompt_set_tag, read_prompt_set
from sdxl_qdq.models.source import ModelSource, resolve_source
from sdxl_qdq.procs import Progress, StageClock, StepMeter, run_measured
from sdxl_qdq.run.pipeline import ComponentSet
from sdxl_qdq.stage_table import STAGES

# Bump a stage's revision when its code changes what it writes: old artifacts are then rebuilt, not reused.
RECORDED = ("text_encoder", "text_encoder_2", "unet")  # the components the float pipeline runs while it records
# The lean path calibrates with onnxruntime's graph optimizations (every calibrated tensor is still computed):
# ranges equal to float rounding (measured on the real UNet: 1.5e-6 of a range's width at most, a uint16 step being
# 1.5e-5), per call 9.1 s instead of 9.8 s on the real UNet, about 15 s instead of 17 s on the real decoder. The
# Olive path runs onnxruntime's calibrator as it is.
LEAN_SESSIONS = "optimized"


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class Build:
    """Everything a build produced; paths point into the cache."""

    source: ModelSource
    recipe_name: str
    recipe_path: Path
    float: ComponentSet
    qdq: ComponentSet
    calibration_dir: Path
    keys: dict[str, Any] = field(default_factory=dict)

    @property
    def pipeline_dir(self) -> Path:
        return self.float.pipeline_dir

    def components(self, kind: str) -> ComponentSet:
        """The ``"float"`` or ``"qdq"`` components."""
        if kind not in ("float", "qdq"):
            raise ValueError(f"components are 'float' or 'qdq', not {kind!r}")
        return self.float if kind == "float" else self.qdq

    def image_key(self, kind: str) -> dict[str, Any]:
        """What identifies the ``kind`` components in the key of the images drawn with them."""
        return {
            "build": {k: self.keys[k] for k in ("export", "calibration")},
            "models": self.keys["qdq"] if kind == "qdq" else self.keys["export"],
        }


def build(
    model: str = "tiny",
    *,
    recipe: Path | str | None = None,
    cache: ArtifactCache | None = None,
    calibration_prompts: list[Prompt] | None = None,
    allow_download: bool = False,
    quantizer: str = "auto",
    segment_bytes: int | None = None,
    prompts: Path | str | None = None,
    progress: Progress = _silent,
) -> Build:
    """Build (or find in the cache) the float and QDQ components of ``model`` with ``recipe``.

    ``prompts``: a prompt file (``sdxl_qdq.models.prompts.read_prompt_set``) that replaces the model's own set: its
    train prompts calibrate, and the gate, the bundle and the judge read all of it (``Build.source.prompts``).

    ``quantizer``: 'olive' (the recipe's Olive workflows, in this process), 'lean' (the same passes
    memory-bounded, one component per process: ``sdxl_qdq.convert.lean``), or 'auto' (lean for a component the stock
    path may not fit on a 16 GiB host; a function of the model, never of this machine). ``segment_bytes``: weights
    per calibration segment (lean).
    """
    cache = cache or ArtifactCache()
    clock = StageClock(progress)
    if prompts is not None:  # checked whole (token counts too) before anything is resolved or built
        read_prompt_set(Path(prompts), check_tokens=True)
    source = resolve_source(model, allow_download=allow_download)
    if prompts is not None:
        source = replace(source, prompts=Path(prompts).resolve(), prompt_set=prompt_set_tag(Path(prompts)))
    recipe_path = Path(recipe) if recipe else DEFAULT_RECIPE
    recipe_data = load_recipe(recipe_path)
    prompts = calibration_prompts if calibration_prompts is not None else load_prompts("train", path=source.prompts)
    count = calibration_prompt_count(recipe_data)
    if count is not None:
        if count > len(prompts):
            raise ConfigError(
                f"recipe {recipe_path.name}: calibration.prompts is {count}, the prompt set "
                f"{Path(source.prompts).name} has {len(prompts)} to calibrate on; ask for at most {len(prompts)}"
            )
        prompts = prompts[:count]
    versions = package_versions()
    pipeline_dir = _source_dir(source, cache, clock("source"))

    export_inputs = {"source": source.fingerprint, "revision": STAGES["export"].revision, "versions": versions}
    isolate = source.fingerprint.get("source") not in ("tiny", "canary")  # real sizes: one component per process
    export_dir = cache.get_or_build(
        "export", export_inputs, lambda out: _export(pipeline_dir, source, out, clock("export"), isolate=isolate)
    )
    float_set = ComponentSet({c: export_dir / c / "model.onnx" for c in COMPONENTS}, pipeline_dir)

    workflows = recipe_data["workflows"]
    estimates = _stock_peaks(cache, export_inputs, float_set) if quantizer == "auto" else {}
    quantizers = {c: choose_quantizer(float_set.models[c], quantizer, estimate=estimates.get(c)) for c in COMPONENTS}
    # Components the float pipeline runs while it records, quantized by the lean path with plain MinMax: their
    # ranges are collected during the recording (one pass over each call instead of two)
    collected = {
        c: _Prepared(cache, export_inputs, c, recipe_path, workflows[c], float_set.models[c], clock)
        for c in RECORDED
        if quantizers[c] == "lean" and minmax_only(workflows[c])
    }

    steps = calibration_steps(recipe_data)
    calib_inputs = {
        "export": export_inputs,
        "prompts": [p.text for p in prompts],
        "steps": list(steps),
        "revision": STAGES["calibration"].revision,
    }
    if collected:
        calib_inputs["collect"] = {
            "prepared": {c: prep.key for c, prep in collected.items()},
            "sessions": LEAN_SESSIONS,
        }
    calib_dir = cache.get_or_build(
        "calibration",
        calib_inputs,
        lambda out: _calibrate(
            float_set, prompts, steps, out, clock("calibration"), {c: prep.folder() for c, prep in collected.items()}
        ),
    )

    qdq_models, qdq_keys = {}, {}
    for component in COMPONENTS:
        inputs = {
            "export": export_inputs,
            "calibration": calib_inputs,
            "component": component,
            "workflow": workflows[component],
            "revision": STAGES["qdq"].revision,
        }
        qdq_dir, qdq_keys[component] = _qdq_component(
            cache,
            inputs,
            quantizers[component],
            recipe_path,
            recipe_data,
            float_set.models[component],
            calib_dir,
            segment_bytes,
            clock,
            prepared=collected.get(component),
        )
        qdq_models[component] = qdq_dir / "model.onnx"
    clock("build")(f"done ({len(cache.hits)} cached, {len(cache.misses)} built)")
    return Build(
        source=source,
        recipe_name=str(recipe_data.get("name", recipe_path.stem)),
        recipe_path=recipe_path,
        float=float_set,
        qdq=ComponentSet(qdq_models, pipeline_dir),
        calibration_dir=calib_dir,
        keys={
            "export": export_dir.name,
            "calibration": calib_dir.name,
            "qdq": qdq_keys,
            "quantizer": quantizers,
            "prepared": {c: prep.key for c, prep in collected.items()},
            "versions": versions,
        },
    )


def _stock_peaks(cache: ArtifactCache, export_inputs: dict[str, Any], float_set: ComponentSet) -> dict[str, int | None]:
    """The stock quantizer's estimated peak memory per exported component (``None`` past protobuf's limit, where
    the choice needs no estimate): inferred once per export and kept in the cache, so that a warm build does not
    run shape inference on every component (0.5 s on tiny, import of torch included)."""

    def make(out: Path) -> None:
        peaks = {
            c: None if weight_file_bytes(m) >= PROTOBUF_LIMIT else stock_peak_estimate(m)
            for c, m in float_set.models.items()
        }
        (out / "stock_peak.json").write_text(json.dumps(peaks, indent=1))

    folder = cache.get_or_build(
        "stock-peak", {"export": export_inputs, "revision": STAGES["stock-peak"].revision}, make
    )
    return json.loads((folder / "stock_peak.json").read_text())


def _qdq_component(
    cache: ArtifactCache,
    inputs: dict[str, Any],
    quantizer: str,
    recipe_path: Path,
    recipe: dict[str, Any],
    model: Path,
    calib_dir: Path,
    segment_bytes: int | None,
    clock: StageClock,
    *,
    prepared: _Prepared | None = None,
) -> tuple[Path, str]:
    """One component's QDQ artifact (and its key) with the chosen quantizer; the lean path's models are the same
    graphs but their own artifacts (their metadata says how they were made). A ``prepared`` component (lean) is
    quantized from that folder with the ranges its recording collected."""
    component = inputs["component"]
    if quantizer == "lean":
        inputs = {**inputs, "quantizer": "lean", "sessions": LEAN_SESSIONS}

        def make(out: Path) -> None:
            _quantize_lean(
                recipe_path,
                component,
                model,
                calib_dir,
                out,
                segment_bytes,
                clock(f"qdq {component}"),
                prepared=prepared.folder() if prepared else None,
            )
    else:

        def make(out: Path) -> None:
            _quantize(recipe, component, model, calib_dir, out, clock(f"qdq {component}"))

    return cache.get_or_build("qdq", inputs, make), cache.path("qdq", inputs).name


class _Prepared:
    """The lean path's graph of ``component`` ready to calibrate (``sdxl_qdq.convert.lean.quantize.lean_prepare``,
    in its own process), made before the recording that calibrates it. Its key enters the later stages' keys; the folder
    is made (or checked) only when a stage that reads it is built: a warm build, or one whose prepared folders were
    pruned, neither checks nor rebuilds 10 GB it has no use for."""

    def __init__(
        self,
        cache: ArtifactCache,
        export_inputs: dict[str, Any],
        component: str,
        recipe_path: Path,
        workflow: dict[str, Any],
        model: Path,
        clock: StageClock,
    ) -> None:
        self.cache, self.component, self.recipe_path, self.model, self.clock = (
            cache,
            component,
            recipe_path,
            model,
            clock,
        )
        self.inputs = {
            "export": export_inputs,
            "component": component,
            "workflow": workflow,
            "revision": STAGES["prepared"].revision,
        }
        self.key = cache.path("prepared", self.inputs).name

    def folder(self) -> Path:
        return self.cache.get_or_build("prepared", self.inputs, self._make)

    def _make(self, out: Path) -> None:
        progress = self.clock(f"prepared {self.component}")
        progress("the recipe's passes up to calibration, in their own process")
        _lean_child([str(self.recipe_path), self.component, str(self.model), "-", str(out), "--prepare"], out, progress)


def recalibrated(base: Build, *, cache: ArtifactCache) -> Build:
    """``base``'s model and recipe calibrated on the other 50 prompts (the test split): an equally valid
    quantization, whose distance from ``base`` is the noise a tolerance must allow."""
    return build(
        base.source.name,
        recipe=base.recipe_path,
        cache=cache,
        calibration_prompts=load_prompts("test", path=base.source.prompts),
    )


def with_qdq_component(base: Build, other: Build, component: str) -> Build:
    """``base`` with one QDQ component taken from ``other`` (e.g. a degraded UNet), keys updated to match."""
    models = {**base.qdq.models, component: other.qdq.models[component]}
    keys = {**base.keys, "qdq": {**base.keys["qdq"], component: other.keys["qdq"][component]}}
    return replace(base, qdq=ComponentSet(models, base.pipeline_dir), keys=keys)


def _source_dir(source: ModelSource, cache: ArtifactCache, progress: Progress) -> Path:
    before = len(cache.misses)
    folder = source.materialize(cache)
    progress(f"{source.name} at {folder}" + (" (built)" if len(cache.misses) > before else ""))
    return folder


def _export(pipeline_dir: Path, source: ModelSource, out: Path, progress: Progress, *, isolate: bool) -> None:
    progress(
        "exporting text_encoder, text_encoder_2, unet, vae_decoder to ONNX" + (", one per process" if isolate else "")
    )
    stats = export_components(pipeline_dir, source, out, progress=progress, isolate=isolate)
    if stats:
        (out / "build.json").write_text(json.dumps(stats, indent=1))


def _calibrate(
    float_set: ComponentSet,
    prompts: list[Prompt],
    steps: tuple[int, ...],
    out: Path,
    progress: Progress,
    collected: dict[str, Path],
) -> None:
    progress(
        f"running the float pipeline on {len(prompts)} train prompts at {', '.join(map(str, steps))} step(s)"
        + (f", collecting the ranges of {', '.join(collected)}" if collected else "")
    )
    meter, timings = StepMeter(progress), {}
    with meter("record"):
        record_calibration(
            float_set,
            prompts,
            out,
            steps=steps,
            progress=progress,
            timings=timings,
            collect=collected,
            optimized=LEAN_SESSIONS == "optimized",
        )
    (out / "build.json").write_text(json.dumps({**meter.steps[0], "stages": timings}, indent=1))


def _quantize_lean(
    recipe_path: Path,
    component: str,
    model: Path,
    calib_dir: Path,
    out: Path,
    segment_bytes: int | None,
    progress: Progress,
    *,
    prepared: Path | None = None,
) -> None:
    progress(
        "memory-bounded quantization in its own process"
        + (", from the ranges the recording collected" if prepared else "")
    )
    args = [str(recipe_path), component, str(model), str(calib_dir), str(out)]
    if segment_bytes:
        args += ["--segment-bytes", str(segment_bytes)]
    if prepared:
        args += ["--prepared", str(prepared), "--ranges", str(calib_dir / component / RANGES_FILE)]
    if LEAN_SESSIONS == "optimized":
        args += ["--optimized-calibration"]
    _lean_child(args, out, progress)


def _lean_child(args: list[str], out: Path, progress: Progress) -> None:
    """``python -m sdxl_qdq _lean args``: its steps and peak memory go to ``out/build.json``."""
    stats = run_measured([sys.executable, "-m", "sdxl_qdq", "_lean", *args], progress=progress)
    steps = json.loads((out / "steps.json").read_text())
    (out / "steps.json").unlink()
    (out / "build.json").write_text(json.dumps({**stats, "quantizer": "lean", "steps": steps}, indent=1))
    progress(f"done in {stats['seconds']:.1f}s, peak RSS {stats['peak_rss_gb']} GB")


def _quantize(
    recipe: dict[str, Any], component: str, model: Path, calib_dir: Path, out: Path, progress: Progress
) -> None:
    t = time.perf_counter()
    progress("running the Olive workflow")
    quantize_component(recipe, component, model=model, calibration_dir=calib_dir, out=out)
    (out / "build.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t, 2)}))
    progress(f"done in {time.perf_counter() - t:.1f}s")
