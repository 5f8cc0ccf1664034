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
5. Calibration in segments (``quant.chunked``): contiguous slices of the topologically sorted graph, each
   with ~``segment_bytes`` of weights, run over every distinct sample; a slice's boundary activations
   feed the next. MinMax ranges merge exactly, so they equal the single-pass ranges (a repeated sample
   cannot change a min or a max, so repeats are skipped).
6. ``quantize_static`` from those ranges (onnxruntime's calibration cache), on the graph: it reads each
   weight from the data file as it quantizes it and holds only the quantized ones.

``python -m quant.lean`` runs one component in its own process (``build`` does so); each step reports its
time and peak resident memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.errors import ConfigError

Progress = Callable[[str], None]
SUPPORTED_PASSES = ("QNNPreprocess", "GraphSurgeries", "OnnxStaticQuantization")
DEFAULT_SEGMENT_BYTES = 1 << 30  # weights per calibration segment


# ----------------------------------------------------------------------------------------- graph files
@dataclass
class Graph:
    """A graph-only ModelProto whose external tensors live in files under ``base_dir``."""

    proto: Any
    base_dir: Path

    @classmethod
    def load(cls, path: Path) -> Graph:
        import onnx

        return cls(onnx.load(str(path), load_external_data=False), Path(path).parent)

    def data_files(self) -> set[str]:
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        return {
            next(e.value for e in t.external_data if e.key == "location")
            for t in _get_all_tensors(self.proto) if uses_external_data(t)
        }

    def save(self, path: Path) -> Graph:
        """Write the graph at ``path``. onnx and onnxruntime read external data only from the model's own
        folder (no links), so data files of another folder are copied there: callers keep graphs next to
        their data and only pay this when a stage must write its result elsewhere."""
        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.resolve() != self.base_dir.resolve():
            for name in self.data_files():
                shutil.copyfile(self.base_dir / name, path.parent / name)
        onnx.save_model(self.proto, str(path))
        return Graph(self.proto, path.parent)

    def loaded(self, tensors: Any = None) -> Any:
        """A copy of the proto with the external data of ``tensors`` (names; default all) read in."""
        import onnx
        from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for t in proto.graph.initializer:
            if uses_external_data(t) and (tensors is None or t.name in tensors):
                load_external_data_for_tensor(t, str(self.base_dir))
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        return proto

    def session(self, so: Any, **kwargs: Any) -> Any:
        """An onnxruntime session over this graph, its weights read from ``base_dir`` by onnxruntime."""
        import onnxruntime

        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.base_dir))
        return onnxruntime.InferenceSession(self.proto.SerializeToString(), so, providers=["CPUExecutionProvider"], **kwargs)

    def weight_bytes(self) -> int:
        return sum(_tensor_bytes(t) for t in self.proto.graph.initializer)


def _tensor_bytes(t: Any) -> int:
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(t.data_type)).itemsize


def ort_optimize(graph: Graph, work: Path, *, disabled_optimizers: list[str] | None = None) -> Graph:
    """onnxruntime's basic-level optimization (what the stock tools run) with the optimized weights written
    to an external file: one copy of the weights, held by onnxruntime."""
    import onnxruntime

    out = work / "out"
    out.mkdir(parents=True)
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out / "model.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    kwargs = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
    graph.session(so, **kwargs)
    return Graph.load(out / "model.onnx")


# ------------------------------------------------------------------------------------------- the passes
def qnn_preprocess(graph: Graph, work: Path, **options: Any) -> Graph:
    """onnxruntime's ``qnn_preprocess_model``; its save-optimize-reload step works on the graph only."""
    import onnx
    from onnxruntime.quantization.execution_providers.qnn import preprocess

    optimized: list[Graph] = []

    def reload_optimized(model: Any, shape_infer: bool) -> Any:
        g = Graph(onnx.shape_inference.infer_shapes(model) if shape_infer else model, graph.base_dir)
        g = ort_optimize(g, work / "optimize")  # as onnxruntime.tools.onnx_model_utils.optimize_model
        props = {"onnx.infer": "onnxruntime.tools.qnn.preprocess", **{p.key: p.value for p in g.proto.metadata_props}}
        onnx.helper.set_model_props(g.proto, props)
        optimized.append(g)
        return g.proto

    original = preprocess.save_and_reload_optimize_model
    preprocess.save_and_reload_optimize_model = reload_optimized
    try:
        out = work / "out" / "model.onnx"
        out.parent.mkdir(parents=True)
        modified = preprocess.qnn_preprocess_model(graph.proto, str(out), save_as_external_data=False, **options)
    finally:
        preprocess.save_and_reload_optimize_model = original
    if not modified:  # as Olive's pass: an unmodified model passes through
        return graph
    return Graph(onnx.load(str(out), load_external_data=False), optimized[0].base_dir)


def graph_surgeries(graph: Graph, work: Path, surgeries: list[dict[str, Any]], remove_duplicate_initializers: bool = True) -> Graph:
    """Olive's GraphSurgeries pass (surgeons, then initializer de-duplication), on the graph: the tensors a
    surgeon or the de-duplication inspects are read from the data file on demand (relative to the cwd, as
    ``numpy_helper.to_array`` and onnx_ir's external tensors read them), never all at once."""
    import onnx
    import onnx_ir as ir
    from olive.passes.onnx.graph_surgeries import GraphSurgeries

    import quant.build.surgeons  # noqa: F401  (registers this project's surgeons)

    model = onnx.ModelProto()
    model.CopyFrom(graph.proto)
    with contextlib.chdir(graph.base_dir):
        for surgery in surgeries:  # the pass's own surgeon lookup (it only reads the registry and the signature)
            model = GraphSurgeries.init_surgeon_instance(GraphSurgeries, surgery)(model)
        if remove_duplicate_initializers:
            from onnx_ir.passes.common import DeduplicateHashedInitializersPass

            ir_model = DeduplicateHashedInitializersPass()(ir.from_proto(model)).model
            model = ir.to_proto(ir_model)
            for value in ir_model.graph.initializers.values():  # unmap the data file (hashed through mmap)
                if isinstance(value.const_value, ir.ExternalTensor):
                    value.const_value.release()
    return Graph(model, graph.base_dir)


def quant_preprocess(graph: Graph, work: Path) -> Graph:
    """onnxruntime's ``quant_pre_process`` as Olive calls it (auto_merge), on the graph only."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # it reads the few initializers it computes shapes from through numpy_helper.to_array, relative to the cwd
    with contextlib.chdir(graph.base_dir):
        model = SymbolicShapeInference.infer_shapes(graph.proto, 2**31 - 1, True, False, 0)
    g = ort_optimize(Graph(model, graph.base_dir), work / "optimize")
    model = onnx.shape_inference.infer_shapes(g.proto)
    add_pre_process_metadata(model)
    return Graph(model, g.base_dir)


def to_opset21(graph: Graph) -> Graph:
    """onnxruntime's ``update_opset_version`` for 16-bit activations (convert, re-infer shapes), graph only."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata, get_opset_version

    model = onnx.shape_inference.infer_shapes(graph.proto)
    add_infer_metadata(model)
    if get_opset_version(model) < 21:
        model = onnx.shape_inference.infer_shapes(onnx.version_converter.convert_version(model, 21))
        add_infer_metadata(model)
    return Graph(model, graph.base_dir)


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class QuantSettings:
    """The OnnxStaticQuantization options this path supports (the recipe's; anything else is refused)."""

    activation_type: str = "uint16"
    weight_type: str = "uint8"
    calibrate_method: str = "MinMax"
    quant_preprocess: bool = True
    per_channel: bool = False


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


class StepMeter:
    """Wall time and peak resident memory per step (Linux: peak reset through /proc/self/clear_refs; freed
    heap memory is handed back to the system after each step, so a step's peak is its own)."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.steps = progress, []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        from quant.procs import current_rss_bytes, peak_rss_bytes, release_free_memory, reset_peak

        release_free_memory()
        reset_peak()
        before, t = current_rss_bytes(), time.perf_counter()
        yield
        seconds, peak = time.perf_counter() - t, peak_rss_bytes()
        self.steps.append({"step": name, "seconds": round(seconds, 2), "peak_rss_gb": round(peak / 1e9, 3),
                           "rss_before_gb": round(before / 1e9, 3)})
        self.progress(f"{name}: {seconds:.1f}s, peak RSS {peak / 1e9:.2f} GB (RSS at start {before / 1e9:.2f} GB)")


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
    import onnx
    from olive.passes.onnx.quantization import quant_type_from_precision
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from quant.build.calibration import iter_calibration
    from quant.build.lean.segmented import quantize_with_ranges, segmented_minmax_ranges

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
                settings = QuantSettings(
                    activation_type=options.get("activation_type", "uint8"), weight_type=options.get("precision", "uint8"),
                    quant_preprocess=bool(options.get("quant_preprocess", False)),
                    per_channel=bool(options.get("per_channel", False)),
                )
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
                    ranges = segmented_minmax_ranges(
                        graph, lambda: iter_calibration(calibration_dir, model_component(calibration_dir, model)),
                        segments=segments, segment_bytes=segment_bytes, op_types_to_calibrate=config.op_types_to_quantize,
                        work=step_dir / "calibration", progress=progress, timings=timings,
                    )
                meter.steps[-1].update(timings)
                with meter("quantize"):
                    produced = step_dir / "qdq" / "model.onnx"
                    produced.parent.mkdir(parents=True)
                    quantize_with_ranges(graph.base_dir / "opset21.onnx", produced, ranges, config, lazy_weights=True)
                    graph = Graph.load(produced)
        with meter("save"):
            proto = graph.loaded()
            staged = work / "result"
            staged.mkdir()
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "sdxl_qdq.quantizer": "lean"})
            onnx.save_model(proto, str(staged / "model.onnx"), save_as_external_data=True,
                            all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
            del proto
        for f in (work / "result").iterdir():
            os.replace(f, out / f.name)
    shutil.copy(model.parent / "io.json", out / "io.json")
    return meter.steps


PROTOBUF_LIMIT = 2**31  # bytes: the stock path serializes whole models (opset conversion) and fails beyond


def stock_peak_estimate(model: Path) -> int:
    """A rough upper bound of the stock path's peak memory for ``model``: its weights three times (loaded by
    the calibrator, copied by its augmentation, held by the session) plus every float activation at once
    (the augmented session's default order keeps them all alive: 14.4 GB for the real VAE decoder). Shapes
    come from onnxruntime's symbolic shape inference, which sizes what ONNX's leaves open (the decoder's
    upsampling outputs)."""
    import numpy as np
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    graph = Graph.load(model)
    with contextlib.chdir(graph.base_dir):  # the few initializers it reads, from the data file on demand
        proto = SymbolicShapeInference.infer_shapes(graph.proto, 2**31 - 1, True, False, 0)
    acts = 0
    for vi in [*proto.graph.value_info, *proto.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and all(d.HasField("dim_value") for d in t.shape.dim):
            acts += int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.int64)) * 4
    return 3 * graph.weight_bytes() + acts


def choose_quantizer(model: Path, requested: str, memory: int | None = None) -> str:
    """``requested`` ('olive' or 'lean'), or for 'auto': 'lean' when the stock path may not fit ``model``:
    weights over protobuf's 2 GB, or the stock estimate over half of this machine's memory (the estimate
    leaves out onnxruntime's arena growth and Olive's own copies: 17.9 GB for the real VAE decoder, whose
    stock calibration was measured above 20 GB). Both give the same model (``tests/test_lean.py``)."""
    from quant.procs import total_memory_bytes

    if requested not in ("auto", "olive", "lean"):
        raise ConfigError(f"quantizer {requested!r} is not one of auto, olive, lean")
    if requested != "auto":
        return requested
    weights = (model.parent / "model.onnx.data").stat().st_size if (model.parent / "model.onnx.data").exists() else 0
    memory = memory or total_memory_bytes()
    return "lean" if weights >= PROTOBUF_LIMIT or stock_peak_estimate(model) > 0.5 * memory else "olive"


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


def main(argv: list[str] | None = None) -> int:
    """``python -m quant.lean RECIPE COMPONENT MODEL CALIBRATION_DIR OUT [SEGMENT_BYTES]``: one component, this process."""
    from quant.build.recipe import load_recipe
    from quant.runtime import register_qnn

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (5, 6):
        print(main.__doc__, file=sys.stderr)
        return 2
    recipe, component = load_recipe(args[0]), args[1]
    model, calibration_dir, out = Path(args[2]), Path(args[3]), Path(args[4])
    from quant.procs import report_peak_at_exit

    report_peak_at_exit()
    register_qnn()  # get_qnn_qdq_config and Olive's QNN code expect the EP in this process
    steps = lean_quantize(recipe["workflows"][component], model, calibration_dir, out,
                          segment_bytes=int(args[5]) if len(args) == 6 else DEFAULT_SEGMENT_BYTES,
                          progress=lambda m: print(f"{component}: {m}", flush=True))
    (out / "steps.json").write_text(json.dumps(steps, indent=1))
    return 0


if __name__ == "__main__":  # run the importable module, not a second copy of it named __main__
    from quant.build.lean.quantize import main as _main

    sys.exit(_main())
