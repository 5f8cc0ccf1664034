"""Memory-bounded quantization: the recipe's passes, holding at most one copy of a model's weights.

The stock path (Olive's passes over onnxruntime's tools) loads the whole model into Python several times
over and calibrates every tensor in one augmented session; on the real UNet (10.3 GB) that needs more than
20 GB, and graphs over 2 GB cannot be converted to opset 21 in memory at all. This path runs the same
steps, with the same onnxruntime and Olive code where it can, on the *graph only* (``onnx.load(...,
load_external_data=False)``, weights stay in their external data file):

1. QNNPreprocess: onnxruntime's ``qnn_preprocess_model`` with its optimize-and-reload step replaced by an
   onnxruntime session that writes the optimized weights to an external file (one copy, in onnxruntime).
2. GraphSurgeries: Olive's surgeons and initializer de-duplication; the few tensors they inspect are read on
   demand.
3. quant_preprocess: onnxruntime's symbolic shape inference, basic optimization (as in 1.) and ONNX shape
   inference.
4. ``get_qnn_qdq_config`` on that graph (the same QNN overrides, the same contrib-op choice as the stock
   path, which asks before the opset bump), then the graph alone is converted to opset 21.
5. Calibration in segments (``sdxl_qdq.convert.lean.segmented``): contiguous slices of the topologically sorted
graph, each
   with ~``segment_bytes`` of weights, run over every distinct sample; a slice's boundary activations
   feed the next. MinMax ranges merge exactly, so they equal the single-pass ranges (a repeated sample
   cannot change a min or a max, so repeats are skipped). Or no calibration here: the ranges were collected
   while the float pipeline recorded its trajectories through the prepared graph (``RangeCollector``).
6. ``quantize_static`` from those ranges (onnxruntime's calibration cache), on the graph: it reads each
   weight from the data file as it quantizes it and holds only the quantized ones.

Steps 1-4 are ``lean_prepare`` (a prepared folder), 5-6 and the passes after the quantization ``lean_finish``;
``lean_quantize`` runs both. ``python -m sdxl_qdq _lean`` runs them for one component in its own process (``build``
does so); each step reports its time and peak resident memory.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_qdq.convert.calibration import iter_calibration
from sdxl_qdq.convert.files import PREPARED_INPUT, PREPARED_META, PREPARED_MODEL, save_with_external_data
from sdxl_qdq.convert.lean.graph import Graph
from sdxl_qdq.convert.lean.passes import graph_surgeries, qnn_preprocess, quant_preprocess, to_opset21
from sdxl_qdq.convert.lean.segmented import segmented_minmax_ranges
from sdxl_qdq.convert.ort_patches import graph_only_quantizer, linear_quantizer, patched
from sdxl_qdq.convert.recipe import load_recipe, overrides_with_quant_types
from sdxl_qdq.convert.recipe_passes import lean_problem
from sdxl_qdq.errors import ConfigError
from sdxl_qdq.procs import Progress, StepMeter, report_peak_at_exit
from sdxl_qdq.runtime import register_qnn

DEFAULT_SEGMENT_BYTES = 1 << 30  # weights per calibration segment


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class QuantSettings:
    """The OnnxStaticQuantization options this path reads, defaulting as Olive's pass does (checked against
    Olive's own defaults by a test); ``plan`` refuses every other option (``recipe_passes.LEAN``).
    ``overrides``: ``extra_options.TensorQuantOverrides`` with onnxruntime's quant types, which Olive hands to
    ``get_qnn_qdq_config`` as ``init_overrides``."""

    activation_type: str = "int8"
    weight_type: str = "int8"  # Olive calls it "precision"
    quant_preprocess: bool = True
    per_channel: bool = False
    overrides: dict[str, Any] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> QuantSettings:
        default = cls()
        overrides = (options.get("extra_options") or {}).get("TensorQuantOverrides")
        if overrides:
            overrides = overrides_with_quant_types(overrides, "OnnxStaticQuantization")
        return cls(
            activation_type=str(options.get("activation_type", default.activation_type)),
            weight_type=str(options.get("precision", default.weight_type)),
            quant_preprocess=bool(options.get("quant_preprocess", default.quant_preprocess)),
            per_channel=bool(options.get("per_channel", default.per_channel)),
            overrides=overrides or None,
        )


def plan(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The workflow's passes as (type, options), checked against what this path implements
    (``sdxl_qdq.convert.recipe_passes.LEAN``)."""
    steps = []
    for name, spec in workflow["passes"].items():
        kind = spec.get("type")
        options = {k: v for k, v in spec.items() if k != "type"}
        problem = lean_problem(kind, options)
        if problem:
            raise ConfigError(f"pass {name!r} {problem}; use --quantizer olive for this recipe")
        steps.append((kind, options))
    kinds = [kind for kind, _ in steps]
    if kinds.count("OnnxStaticQuantization") != 1 or any(
        k != "GraphSurgeries" for k in kinds[kinds.index("OnnxStaticQuantization") + 1 :]
    ):
        raise ConfigError(
            "the memory-bounded quantizer needs a workflow with one OnnxStaticQuantization, followed by "
            f"GraphSurgeries passes only; got passes {kinds}; use --quantizer olive for this recipe"
        )
    return steps


def lean_quantize(
    workflow: dict[str, Any],
    model: Path,
    calibration_dir: Path,
    out: Path,
    *,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    segments: int | None = None,
    optimized: bool = False,
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """Run ``workflow``'s passes on ``model`` memory-bounded; write ``out/model.onnx`` (+ data). Calibration
    runs in segments of about ``segment_bytes`` of weights, or in exactly ``segments``, with onnxruntime's graph
    optimizations if ``optimized`` (``segmented_minmax_ranges``). Returns the per-step measurements."""
    plan(workflow)  # a refused workflow stops before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lean-", dir=out) as tmp:  # on the cache's disk, gone with a failed build
        prepared = Path(tmp) / "prepared"
        steps = lean_prepare(workflow, model, prepared, progress=progress)
        component = model_component(calibration_dir, model)
        steps += lean_finish(
            workflow,
            prepared,
            out,
            calibration=lambda: iter_calibration(calibration_dir, component),
            segment_bytes=segment_bytes,
            segments=segments,
            optimized=optimized,
            progress=progress,
        )
    shutil.copy(model.parent / "io.json", out / "io.json")
    return steps


def lean_prepare(
    workflow: dict[str, Any], model: Path, out: Path, *, progress: Progress = lambda _: None
) -> list[dict[str, Any]]:
    """``workflow``'s passes up to calibration, memory-bounded, into ``out``: ``model.onnx`` (opset 21, ready to
    calibrate) beside its data, ``pre.onnx`` (the quantization pass's input, on which the QDQ configuration is
    computed) and ``prepared.json`` (the tensors to calibrate). Returns the per-step measurements."""
    steps = plan(workflow)
    meter = StepMeter(progress)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lean-", dir=out) as tmp:
        work = Path(tmp)
        graph = Graph.load(model)
        for i, (kind, options) in enumerate(steps):
            _drop_unused(work, graph)
            step_dir = work / f"{i}-{kind}"
            if kind == "QNNPreprocess":
                with meter("qnn_preprocess"):
                    graph = qnn_preprocess(graph, step_dir, fuse_layernorm=bool(options.get("fuse_layernorm", False)))
            elif kind == "GraphSurgeries":
                with meter("graph_surgeries"):
                    graph = graph_surgeries(
                        graph,
                        step_dir,
                        options.get("surgeries", []),
                        options.get("remove_duplicate_initializers", True),
                    )
            else:  # OnnxStaticQuantization: [quant_preprocess,] the QNN QDQ configuration and the opset-21 graph
                settings = QuantSettings.from_options(options)
                if settings.quant_preprocess:
                    with meter("quant_preprocess"):
                        graph = quant_preprocess(graph, step_dir / "pre")
                    _drop_unused(work, graph)
                with meter("qdq_config"):
                    config = qdq_config(graph.proto, settings)
                    _place(graph, to_opset21(graph), work, out)
                (out / PREPARED_META).write_text(json.dumps({"op_types": config.op_types_to_quantize}, indent=1))
                break
    return meter.steps


def lean_finish(
    workflow: dict[str, Any],
    prepared: Path,
    out: Path,
    *,
    ranges: Any = None,
    calibration: Callable[[], Iterator[dict[str, Any]]] | None = None,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    segments: int | None = None,
    optimized: bool = False,
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """The rest of ``workflow`` on a ``prepared`` folder (``lean_prepare``): calibration over ``calibration()``'s
    samples, in segments, unless ``ranges`` (``TensorsData``) were collected while the float pipeline ran; the
    quantization from those ranges; the passes after it. Writes ``out/model.onnx`` (+ data); returns the steps."""
    import onnx

    steps = plan(workflow)
    at = next(i for i, (kind, _) in enumerate(steps) if kind == "OnnxStaticQuantization")
    settings = QuantSettings.from_options(steps[at][1])
    meter = StepMeter(progress)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lean-", dir=out) as tmp:
        work = Path(tmp)
        with meter("qdq_config"):
            config = qdq_config(onnx.load(str(prepared / PREPARED_INPUT), load_external_data=False), settings)
        if ranges is None:
            if calibration is None:
                raise ValueError("lean_finish needs calibration samples or recorded ranges")
            timings: dict[str, float] = {}
            with meter("calibration"):
                ranges = segmented_minmax_ranges(
                    Graph.load(prepared / PREPARED_MODEL),
                    calibration,
                    segments=segments,
                    segment_bytes=segment_bytes,
                    op_types_to_calibrate=config.op_types_to_quantize,
                    work=work / "calibration",
                    progress=progress,
                    timings=timings,
                    optimized=optimized,
                )
            meter.steps[-1].update(timings)
        with meter("quantize"):
            produced = work / "qdq" / "model.onnx"
            produced.parent.mkdir(parents=True)
            quantize_with_ranges(prepared / PREPARED_MODEL, produced, ranges, config, lazy_weights=True)
        graph = Graph.load(produced)
        for i, (_, options) in enumerate(steps[at + 1 :], start=at + 1):  # GraphSurgeries (plan checked)
            _drop_unused(work, graph)
            with meter("graph_surgeries"):
                graph = graph_surgeries(
                    graph,
                    work / f"{i}-GraphSurgeries",
                    options.get("surgeries", []),
                    options.get("remove_duplicate_initializers", True),
                )
        with meter("save"):
            staged = _save_result(graph, work / "result")
        for f in staged.iterdir():
            os.replace(f, out / f.name)
    return meter.steps


def qdq_config(proto: Any, settings: QuantSettings) -> Any:
    """onnxruntime's QNN QDQ configuration (``get_qnn_qdq_config``) of the quantization pass's input graph."""
    from olive.passes.onnx.quantization import quant_type_from_precision
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    return get_qnn_qdq_config(
        proto,
        None,
        activation_type=quant_type_from_precision(settings.activation_type),
        weight_type=quant_type_from_precision(settings.weight_type),
        per_channel=settings.per_channel,
        init_overrides=copy.deepcopy(settings.overrides),
    )


def _place(pre: Graph, ready: Graph, work: Path, out: Path) -> None:
    """Both graphs (they share their data files) into ``out``, beside their data: moved from this run's work
    folder, copied from anywhere else (the read-only export cache, when no pass rewrote the weights)."""
    import onnx

    for name in ready.data_files():
        source = ready.base_dir / name
        if _owned(ready, work):
            os.replace(source, out / name)
        else:
            shutil.copyfile(source, out / name)
    onnx.save_model(pre.proto, str(out / PREPARED_INPUT))
    onnx.save_model(ready.proto, str(out / PREPARED_MODEL))


def _save_result(graph: Graph, folder: Path) -> Path:
    """The final model in ``folder`` with all its data, marked as made by this path."""
    import onnx

    proto = graph.loaded()
    folder.mkdir()
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "sdxl_qdq.quantizer": "lean"})
    save_with_external_data(proto, folder / "model.onnx")
    return folder


def _drop_unused(work: Path, graph: Graph) -> None:
    """Delete earlier steps' folders that the current graph no longer reads from (their weight copies)."""
    keep = graph.base_dir.resolve()
    for d in work.iterdir():
        if d.is_dir() and d.resolve() not in keep.parents and d.resolve() != keep:
            shutil.rmtree(d)


def _owned(graph: Graph, work: Path) -> bool:
    """Whether the graph's data lives in this run's work folder (not in the read-only export cache)."""
    return work.resolve() in graph.base_dir.resolve().parents


def model_component(calibration_dir: Path, model: Path) -> str:
    """The component a float model belongs to (its folder name), checked against the calibration data."""
    component = model.parent.name
    if not (calibration_dir / component / "inputs.json").is_file():
        raise ConfigError(
            f"no calibration data for {component!r} under {calibration_dir}; record it first (sdxl_qdq.convert)"
        )
    return component


def quantize_child(
    recipe_path: Path,
    component: str,
    model: Path,
    calibration_dir: Path,
    out: Path,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    *,
    prepare: bool = False,
    prepared: Path | None = None,
    ranges: Path | None = None,
    optimized: bool = False,
) -> None:
    """One component's memory-bounded quantization in this process (``python -m sdxl_qdq _lean``, started by
    ``sdxl_qdq.convert.stages``): the whole workflow; or only its preparation (``prepare``); or the rest of it from a
    ``prepared`` folder, with ``ranges`` recorded while the float pipeline ran. Its steps go to
    ``out/steps.json``, its peak memory to the parent."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    report_peak_at_exit()
    register_qnn()  # get_qnn_qdq_config and Olive's QNN code expect the EP in this process
    workflow = load_recipe(recipe_path)["workflows"][component]
    progress = lambda m: print(f"{component}: {m}", flush=True)  # noqa: E731
    if prepare:
        steps = lean_prepare(workflow, model, out, progress=progress)
    elif prepared is not None:
        steps = lean_finish(
            workflow,
            prepared,
            out,
            ranges=load_tensors_data(ranges) if ranges else None,
            calibration=lambda: iter_calibration(calibration_dir, model_component(calibration_dir, model)),
            segment_bytes=segment_bytes,
            optimized=optimized,
            progress=progress,
        )
        shutil.copy(model.parent / "io.json", out / "io.json")
    else:
        steps = lean_quantize(
            workflow, model, calibration_dir, out, segment_bytes=segment_bytes, optimized=optimized, progress=progress
        )
    (out / "steps.json").write_text(json.dumps(steps, indent=1))


def quantize_with_ranges(
    model_path: Path, output: Path, ranges: Any, qdq_config: Any, *, lazy_weights: bool = False
) -> None:
    """``quantize_static`` with ``qdq_config`` (e.g. from ``get_qnn_qdq_config``), ranges from ``ranges`` (through
    onnxruntime's calibration cache, so nothing is calibrated again).

    ``lazy_weights``: quantize from the graph alone, inside the model's folder (``ort_patches.graph_only_quantizer``):
    onnxruntime's quantizer reads each weight it quantizes from the data file and holds only the quantized ones
    (a quarter of the float ones). The result is the same model (``tests/test_lean.py``).
    """
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    model_path, output = Path(model_path).resolve(), Path(output).resolve()
    with tempfile.TemporaryDirectory(prefix="chunked-quant-") as tmp:
        cache = Path(tmp, "calibration.json")
        save_tensors_data(ranges, cache)
        kwargs = {k: v for k, v in inspect.getmembers(qdq_config) if not k.startswith("_")}
        kwargs.pop("calibration_data_reader", None)
        kwargs["use_external_data_format"] = True

        def run() -> None:
            quantize_static(
                str(model_path), str(output), calibration_data_reader=None, calibration_cache_path=str(cache), **kwargs
            )

        if not lazy_weights:
            with patched(linear_quantizer()):
                run()
            return
        with patched(graph_only_quantizer(model_path.parent) + linear_quantizer()), contextlib.chdir(model_path.parent):
            run()
