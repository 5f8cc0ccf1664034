"""Calibration data: each component's inputs, recorded while the float ONNX pipeline runs the train prompts.

Written in the layout Olive's built-in ``RawDataContainer`` reads: ``<dir>/<component>/<input>/<NNN>.bin``
(raw little-endian arrays, one file per call) plus ``<dir>/<component>/inputs.json`` (names, shapes, types).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.files import PREPARED_META, PREPARED_MODEL
from sdxl_qdq.errors import BuildError
from sdxl_qdq.models.prompts import Prompt
from sdxl_qdq.procs import Meter
from sdxl_qdq.run.pipeline import ComponentSet, OrtSDXLPipeline, feeds_digest

RANGES_FILE = "ranges.json"  # <dir>/<component>/ranges.json: MinMax ranges collected while recording


def record_calibration(
    float_models: ComponentSet,
    prompts: list[Prompt],
    out: Path,
    *,
    steps: tuple[int, ...] = (1,),
    progress: Callable[[str], None] | None = None,
    timings: dict[str, dict[str, float]] | None = None,
    collect: dict[str, Path] | None = None,
    optimized: bool = False,
) -> None:
    """Run the float pipeline on ``prompts`` at each step count in ``steps``; write every component's inputs
    under ``out`` (at 2 steps the UNet sees t=999 and t=499). Every call is recorded; a call whose inputs equal
    an earlier one's (the same prompt encoded again, the first UNet call at 2 steps) reuses its outputs instead
    of running the model again. ``timings`` receives, per stage, the seconds to create its sessions and per
    model call.

    ``collect``: components run as their prepared graph (``sdxl_qdq.convert.lean.quantize.lean_prepare``, by folder)
    through a ``RangeCollector``, so that the same calls that record the pipeline's trajectories also give
    their MinMax ranges, written to ``out/<component>/ranges.json``: the trajectories are those of the prepared
    graph (the recipe's preprocessing of the same float model, equal to float rounding). ``optimized``: their
    sessions run with onnxruntime's graph optimizations (``segmented_minmax_ranges``)."""
    collect = collect or {}
    recorder = _Recorder(out)
    runs = [(p.text, k) for p in prompts for k in steps]
    # Stage by component, so that one model's weights are in memory at a time (the real UNet alone is
    # 10.3 GB); each component still sees its calls in the order the whole pipeline makes them.
    meter = _StageMeter(runs, progress, timings if timings is not None else {})
    encoders = ("text_encoder", "text_encoder_2")
    pipe = OrtSDXLPipeline(
        float_models, ep="cpu", recorder=recorder, load=tuple(c for c in encoders if c not in collect), reuse=True
    )
    collectors = _collectors(pipe, {c: collect[c] for c in encoders if c in collect}, out, optimized)
    meter.loaded("text encoders")
    encoded = []
    for i, (text, _) in enumerate(runs):
        encoded.append(pipe.encode_prompt(text))
        meter.report("text encoders", i, pipe.executed["text_encoder"])
    meter.ran("text encoders", pipe.executed["text_encoder"])
    _write_ranges(collectors, out)
    pipe.release(*encoders)
    collectors = _collectors(pipe, {"unet": collect["unet"]} if "unet" in collect else {}, out, optimized)
    if not collectors:
        pipe.load("unet")
    meter.loaded("unet")
    latents = []
    for i, ((text, k), (hidden, pooled)) in enumerate(zip(runs, encoded)):
        latents.append(pipe.denoise(text, hidden, pooled, steps=k))
        meter.report("unet", i, pipe.executed["unet"])
    meter.ran("unet", pipe.executed["unet"])
    _write_ranges(collectors, out)
    pipe.release("unet")
    # The decoder's inputs are the final latents: recorded without running it (images are not needed here).
    for x in latents:
        recorder("vae_decoder", pipe.decode_feeds(x))
    for component in COMPONENTS:
        io = float_models.io(component)
        meta = {
            "samples": recorder.counts[component],
            "input_names": [t.name for t in io.inputs],
            "input_shapes": [list(t.shape) for t in io.inputs],
            "input_types": [t.dtype for t in io.inputs],
        }
        (out / component / "inputs.json").write_text(json.dumps(meta, indent=1))


def _collectors(pipe: OrtSDXLPipeline, prepared: dict[str, Path], out: Path, optimized: bool) -> dict[str, Any]:
    """A ``RangeCollector`` per prepared component, in the pipeline's place of that component's session."""
    from sdxl_qdq.convert.lean.segmented import RangeCollector

    collectors = {}
    for component, folder in prepared.items():
        op_types = json.loads((folder / PREPARED_META).read_text())["op_types"]
        collector = RangeCollector(folder / PREPARED_MODEL, op_types, out / ".collect" / component, optimized=optimized)
        expected = [t.name for t in pipe.io[component].outputs]
        if collector.output_names != expected:
            raise BuildError(
                f"the prepared {component} in {folder} has outputs {collector.output_names}, the float "
                f"model {expected}: the recipe's passes before quantization must keep the graph outputs"
            )
        pipe.sessions[component] = collectors[component] = collector
    return collectors


def _write_ranges(collectors: dict[str, Any], out: Path) -> None:
    from onnxruntime.quantization.calibrate import save_tensors_data

    for component, collector in collectors.items():
        (out / component).mkdir(parents=True, exist_ok=True)
        save_tensors_data(collector.ranges(), out / component / RANGES_FILE)
        shutil.rmtree(out / ".collect" / component)
    if collectors and (out / ".collect").is_dir() and not any((out / ".collect").iterdir()):
        (out / ".collect").rmdir()


class _Recorder:
    """Writes each call's inputs as ``<out>/<component>/<input>/<NNNN>.bin``."""

    def __init__(self, out: Path) -> None:
        self.out, self.counts = out, defaultdict(int)

    def __call__(self, component: str, feeds: dict[str, np.ndarray]) -> None:
        n = self.counts[component]
        for name, array in feeds.items():
            folder = self.out / component / name
            folder.mkdir(parents=True, exist_ok=True)
            np.ascontiguousarray(array).tofile(folder / f"{n:04d}.bin")
        self.counts[component] += 1


class _StageMeter:
    """Progress every 10 runs, and per stage the seconds to create its sessions, of the first run (a session's
    first run pays for allocations the later ones reuse) and per model call."""

    def __init__(
        self, runs: list, progress: Callable[[str], None] | None, timings: dict[str, dict[str, float]]
    ) -> None:
        self.runs, self.progress, self.timings, self.clock = runs, progress, timings, time.perf_counter()

    def _lap(self) -> float:
        seconds, self.clock = time.perf_counter() - self.clock, time.perf_counter()
        return seconds

    def report(self, stage: str, i: int, executed: int) -> None:
        if i == 0:
            self.timings.setdefault(stage, {}).update(
                first_run_s=round(time.perf_counter() - self.clock, 3), first_run_calls=executed
            )
        self.meter.step()

    def loaded(self, stage: str) -> None:
        self.meter = Meter(f"calibration {stage}", len(self.runs), self.progress)
        seconds = self._lap()
        self.timings.setdefault(stage, {})["load_s"] = round(seconds, 2)
        if self.progress:
            self.progress(f"calibration {stage}: sessions created in {seconds:.1f}s")

    def ran(self, stage: str, executed: int) -> None:
        seconds, calls = self._lap(), max(executed, 1)  # model runs; a call with the inputs of an earlier one is reused
        self.timings.setdefault(stage, {}).update(
            runs=len(self.runs), calls=calls, per_call_s=round(seconds / calls, 3)
        )
        if self.progress:
            component = "text_encoder" if stage == "text encoders" else stage
            self.progress(
                f"calibration {stage}: {len(self.runs)} runs, {calls} {component} calls in {seconds:.1f}s "
                f"({seconds / calls:.2f}s per call)"
            )


def iter_calibration(calib_dir: Path, component: str) -> Iterator[dict[str, np.ndarray]]:
    """The recorded feeds of ``component``, in call order, read one at a time."""
    meta = json.loads((calib_dir / component / "inputs.json").read_text())
    for i in range(meta["samples"]):
        yield {
            name: np.fromfile(calib_dir / component / name / f"{i:04d}.bin", dtype=dtype).reshape(shape)
            for name, shape, dtype in zip(meta["input_names"], meta["input_shapes"], meta["input_types"])
        }


def load_calibration(calib_dir: Path, component: str) -> list[dict[str, np.ndarray]]:
    """The recorded feeds of ``component``, in call order."""
    return list(iter_calibration(calib_dir, component))


def write_distinct(calib_dir: Path, component: str, out: Path) -> tuple[int, int]:
    """``component``'s recorded samples without repeats, written as a calibration folder of its own under ``out``:
    the first call of each distinct input set, in call order. A repeated sample cannot move a min or a max, so
    MinMax calibration over it gives the ranges of all samples in fewer runs. Returns (kept, recorded)."""
    meta = json.loads((calib_dir / component / "inputs.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for feeds in iter_calibration(calib_dir, component):
        digest = feeds_digest(feeds)
        if digest in seen:
            continue
        for name in meta["input_names"]:
            (out / name).mkdir(parents=True, exist_ok=True)
            np.ascontiguousarray(feeds[name]).tofile(out / name / f"{len(seen):04d}.bin")
        seen.add(digest)
    (out / "inputs.json").write_text(json.dumps({**meta, "samples": len(seen)}, indent=1))
    return len(seen), meta["samples"]
