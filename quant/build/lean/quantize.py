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
5. Calibration in segments (``quant.build.lean.segmented``): contiguous slices of the topologically sorted graph, each
   with ~``segment_bytes`` of weights, run over every distinct sample; a slice's boundary activations
   feed the next. MinMax ranges merge exactly, so they equal the single-pass ranges (a repeated sample
   cannot change a min or a max, so repeats are skipped).
6. ``quantize_static`` from those ranges (onnxruntime's calibration cache), on the graph: it reads each
   weight from the data file as it quantizes it and holds only the quantized ones.

``python -m quant _lean`` runs one component in its own process (``build`` does so); each step reports its
time and peak resident memory.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.build.calibration import iter_calibration
from quant.build.files import save_with_external_data
from quant.build.lean.graph import Graph
from quant.build.ort_patches import graph_only_quantizer, linear_quantizer, patched
from quant.build.lean.passes import graph_surgeries, qnn_preprocess, quant_preprocess, to_opset21
from quant.build.lean.segmented import segmented_minmax_ranges
from quant.build.recipe import load_recipe
from quant.errors import ConfigError
from quant.procs import Progress, StepMeter, report_peak_at_exit
from quant.runtime import register_qnn

SUPPORTED_PASSES = ("QNNPreprocess", "GraphSurgeries", "OnnxStaticQuantization")
DEFAULT_SEGMENT_BYTES = 1 << 30  # weights per calibration segment


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class QuantSettings:
    """The OnnxStaticQuantization options this path reads, defaulting as Olive's pass does (checked against
    Olive's own defaults by a test); ``plan`` refuses every other option."""

    activation_type: str = "int8"
    weight_type: str = "int8"  # Olive calls it "precision"
    quant_preprocess: bool = True
    per_channel: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> QuantSettings:
        default = cls()
        return cls(activation_type=str(options.get("activation_type", default.activation_type)),
                   weight_type=str(options.get("precision", default.weight_type)),
                   quant_preprocess=bool(options.get("quant_preprocess", default.quant_preprocess)),
                   per_channel=bool(options.get("per_channel", default.per_channel)))


def plan(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The workflow's passes as (type, options), checked against what this path implements."""
    steps = []
    for name, spec in workflow["passes"].items():
        kind = spec.get("type")
        options = {k: v for k, v in spec.items() if k != "type"}
        if kind not in SUPPORTED_PASSES:
            raise ConfigError(
                f"pass {name!r} of type {kind!r} is not supported by the memory-bounded quantizer (it runs "
                f"{', '.join(SUPPORTED_PASSES)}); use --quantizer olive for this recipe"
            )
        if kind == "QNNPreprocess":
            unknown = set(options) - {"fuse_layernorm"}
        elif kind == "GraphSurgeries":
            unknown = set(options) - {"surgeries", "remove_duplicate_initializers"}
        else:
            expected = {"data_config": None, "quant_format": "QDQ", "calibrate_method": "MinMax", "prepare_qdq_config": True,
                        "activation_type": None, "precision": None, "quant_preprocess": None, "per_channel": None}
            unknown = set(options) - set(expected)
            wrong = {k: options[k] for k, v in expected.items() if v is not None and options.get(k, v) != v}
            if wrong:
                raise ConfigError(
                    f"pass {name!r}: the memory-bounded quantizer implements QDQ MinMax with prepare_qdq_config only; "
                    f"got {wrong}; use --quantizer olive for this recipe"
                )
        if unknown:
            raise ConfigError(
                f"pass {name!r} ({kind}) sets {sorted(unknown)}, which the memory-bounded quantizer does not implement; "
                "use --quantizer olive for this recipe"
            )
        steps.append((kind, options))
    kinds = [kind for kind, _ in steps]
    if kinds.count("OnnxStaticQuantization") != 1 or any(k != "GraphSurgeries" for k in kinds[kinds.index("OnnxStaticQuantization") + 1:]):
        raise ConfigError("the memory-bounded quantizer needs a workflow with one OnnxStaticQuantization, followed by "
                          f"GraphSurgeries passes only; got passes {kinds}; use --quantizer olive for this recipe")
    return steps


def lean_quantize(
    workflow: dict[str, Any],
    model: Path,
    calibration_dir: Path,
    out: Path,
    *,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    segments: int | None = None,
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """Run ``workflow``'s passes on ``model`` memory-bounded; write ``out/model.onnx`` (+ data). Calibration
    runs in segments of about ``segment_bytes`` of weights, or in exactly ``segments``. Returns
    the per-step measurements."""
    steps = plan(workflow)
    meter = StepMeter(progress)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lean-", dir=out) as tmp:  # on the cache's disk, gone with a failed build
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
                    graph = graph_surgeries(graph, step_dir, options.get("surgeries", []),
                                            options.get("remove_duplicate_initializers", True))
            else:
                calibration = lambda: iter_calibration(calibration_dir, model_component(calibration_dir, model))  # noqa: E731
                graph = _quantize(graph, QuantSettings.from_options(options), calibration, work, step_dir, meter,
                                  segments=segments, segment_bytes=segment_bytes, progress=progress)
        with meter("save"):
            staged = _save_result(graph, work / "result")
        for f in staged.iterdir():
            os.replace(f, out / f.name)
    shutil.copy(model.parent / "io.json", out / "io.json")
    return meter.steps


def _quantize(graph: Graph, settings: QuantSettings, calibration: Callable[[], Iterator[dict[str, Any]]], work: Path,
              step_dir: Path, meter: StepMeter, *, segments: int | None, segment_bytes: int, progress: Progress) -> Graph:
    """OnnxStaticQuantization: [quant_preprocess,] the QNN QDQ config and the opset-21 graph, segmented MinMax
    calibration, then onnxruntime's quantizer from those ranges, on the graph."""
    from olive.passes.onnx.quantization import quant_type_from_precision
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    if settings.quant_preprocess:
        with meter("quant_preprocess"):
            graph = quant_preprocess(graph, step_dir / "pre")
        _drop_unused(work, graph)
    with meter("qdq_config"):
        config = get_qnn_qdq_config(
            graph.proto, None, activation_type=quant_type_from_precision(settings.activation_type),
            weight_type=quant_type_from_precision(settings.weight_type), per_channel=settings.per_channel,
        )
        graph = to_opset21(graph)
        opset21 = graph.base_dir / "opset21.onnx"  # beside its data (see Graph.save)
        graph = graph.save(opset21) if _owned(graph, work) else graph.save(step_dir / "opset21" / "opset21.onnx")
    timings: dict[str, float] = {}
    with meter("calibration"):
        ranges = segmented_minmax_ranges(graph, calibration, segments=segments, segment_bytes=segment_bytes,
                                         op_types_to_calibrate=config.op_types_to_quantize, work=step_dir / "calibration",
                                         progress=progress, timings=timings)
    meter.steps[-1].update(timings)
    with meter("quantize"):
        produced = step_dir / "qdq" / "model.onnx"
        produced.parent.mkdir(parents=True)
        quantize_with_ranges(graph.base_dir / "opset21.onnx", produced, ranges, config, lazy_weights=True)
    return Graph.load(produced)


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
        raise ConfigError(f"no calibration data for {component!r} under {calibration_dir}; record it first (quant.build)")
    return component


def quantize_child(recipe_path: Path, component: str, model: Path, calibration_dir: Path, out: Path,
                   segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
    """One component's memory-bounded quantization in this process (``python -m quant _lean``, started by
    ``quant.build.stages``): its steps go to ``out/steps.json``, its peak memory to the parent."""
    report_peak_at_exit()
    register_qnn()  # get_qnn_qdq_config and Olive's QNN code expect the EP in this process
    steps = lean_quantize(load_recipe(recipe_path)["workflows"][component], model, calibration_dir, out,
                          segment_bytes=segment_bytes, progress=lambda m: print(f"{component}: {m}", flush=True))
    (out / "steps.json").write_text(json.dumps(steps, indent=1))


def quantize_with_ranges(model_path: Path, output: Path, ranges: Any, qdq_config: Any, *, lazy_weights: bool = False) -> None:
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
        run = lambda: quantize_static(str(model_path), str(output), calibration_data_reader=None,  # noqa: E731
                                      calibration_cache_path=str(cache), **kwargs)
        if not lazy_weights:
            with patched(linear_quantizer()):
                run()
            return
        with patched(graph_only_quantizer(model_path.parent) + linear_quantizer()), contextlib.chdir(model_path.parent):
            run()
