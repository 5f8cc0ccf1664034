"""Memory-bounded MinMax calibration: the graph in contiguous segments, each run over every sample.

onnxruntime's ``MinMaxCalibrater`` adds a ReduceMin/ReduceMax pair for every tensor to calibrate and runs
that augmented model once; on the real UNet (10.3 GB of weights, thousands of tensors) it needs more than
20 GB. Here the topologically sorted graph is cut into segments holding about ``segment_bytes`` of weights
each. Segment k is a model of its own: its inputs are the activations it reads from earlier segments (or the
graph inputs), its outputs the activations later segments read. It is calibrated with onnxruntime's own
calibrator (same tensor selection, same augmentation, same range computation), restricted to the tensors
it produces; its boundary outputs, per sample, are spilled to disk for the next segment. Every node runs
once per sample, so the cost is one forward pass per sample however many segments; memory is one
segment's weights plus one sample's boundary activations. MinMax ranges merge exactly (min of mins, max of
maxes), so the result equals the single-pass ranges.

The merged ranges go into onnxruntime's calibration cache (``quantize_static(...,
calibration_cache_path=...)``), which quantizes with the same QNN QDQ configuration without calibrating.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from sdxl_qdq.convert.files import save_with_external_data
from sdxl_qdq.convert.lean.graph import Graph, tensor_bytes
from sdxl_qdq.convert.ort_patches import graph_only_calibrator, linear_quantizer, patched
from sdxl_qdq.procs import Progress
from sdxl_qdq.run.pipeline import feeds_digest


def _calibrator_class() -> type:
    import onnxruntime
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    class SegmentCalibrater(MinMaxCalibrater):
        """ORT's MinMax calibrator for exactly ``subset`` of a segment's tensors (``None``: onnxruntime's own
        selection), keeping its boundary outputs.

        The boundary outputs are hidden from ``augment_graph`` (so that a wrapper which drops "original
        outputs", as Olive installs, keeps them) and restored for ``compute_data``. ``data_dir``: the session
        reads the weights from there (the augmented graph is written elsewhere, graph only).
        """

        def __init__(
            self,
            *args: Any,
            subset: set[str] | None,
            optimized: bool = False,
            data_dir: Path | None = None,
            **kwargs: Any,
        ) -> None:
            self.subset, self.optimized, self.data_dir = subset, optimized, data_dir
            super().__init__(*args, **kwargs)
            self.boundary = [o.name for o in self.model.graph.output]
            self.model_original_outputs, self.num_model_outputs = set(), 0

        def select_tensors_to_calibrate(self, model: Any) -> tuple[set[str], dict]:
            selected, value_infos = super().select_tensors_to_calibrate(model)
            return set(selected if self.subset is None else self.subset), value_infos

        def augment_graph(self) -> None:
            if self.subset is None:
                self.subset = self.select_tensors_to_calibrate(self.model)[0]
            super().augment_graph()
            self.model_original_outputs, self.num_model_outputs = set(self.boundary), len(self.boundary)
            self.model = None  # the weights are in the session now; keep one copy
            reductions_after_producers(Path(self.augmented_model_path), self.subset)

        def create_inference_session(self) -> None:
            so = session_options(optimized=self.optimized)
            model: str | bytes = self.augmented_model_path
            if self.data_dir is not None:
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.data_dir))
                model = Path(self.augmented_model_path).read_bytes()
            self.infer_session = onnxruntime.InferenceSession(
                model, sess_options=so, providers=self.execution_providers
            )

        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            """Run one sample; keep its ReduceMin/Max outputs as ``collect_data`` does, return the boundary ones."""
            names = [o.name for o in self.infer_session.get_outputs()]
            values = self.infer_session.run(None, feeds)
            self.intermediate_outputs.append(
                [None if n in self.model_original_outputs else v for n, v in zip(names, values)]
            )
            return {n: v for n, v in zip(names, values) if n in self.model_original_outputs}

    return SegmentCalibrater


class RangeCollector:
    """A whole graph as one calibration session that a pipeline runs like any session: each call returns the
    graph's outputs, and every calibrated tensor's min and max are kept. It is onnxruntime's MinMax calibrator
    with the augmentation, session settings and range computation of a segment (``segmented_minmax_ranges`` with
    the same ``optimized`` gives the same ranges for the same calls); the weights stay in ``model``'s folder, read
    by the session alone.

    The float pipeline records its calibration inputs through it, so a component that pipeline runs anyway is
    calibrated by the same calls instead of a second pass over them (on the real UNet: 100 calls of 9 s)."""

    def __init__(self, model: Path, op_types: list[str] | None, work: Path, *, optimized: bool = False) -> None:
        work.mkdir(parents=True, exist_ok=True)
        with patched(graph_only_calibrator() + linear_quantizer()):
            self.calibrator = _calibrator_class()(
                str(model),
                op_types,
                augmented_model_path=str(work / "augmented.onnx"),
                subset=None,
                data_dir=Path(model).parent,
                optimized=optimized,
            )
            self.calibrator.augment_graph()
        self.calibrator.create_inference_session()
        self.output_names = list(self.calibrator.boundary)
        self.calls = 0

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.calibrator.run(feeds)
        self.calls += 1
        return [outputs[n] for n in (output_names or self.output_names)]

    def ranges(self) -> Any:
        """The MinMax ranges over every call so far (``TensorsData``)."""
        if not self.calls:
            raise ValueError("no calls ran through the range collector: nothing to calibrate on")
        return self.calibrator.compute_data()


def reductions_after_producers(path: Path, tensors: set[str]) -> None:
    """Rewrite the augmented model at ``path`` (graph only) so that each calibrated tensor's ReduceMin/Max
    and their Reshapes (onnxruntime names them ``<tensor>_ReduceMin``, ``<tensor>_ReduceMin_Reshape``, ...)
    come right after the node producing the tensor. onnxruntime's augmentation puts them before the first
    reader, but a process that has run Olive's quantization pass augments through Olive's patch, which
    re-sorts the graph and moves them later."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = [onnx.NodeProto() for _ in model.graph.node]
    for copy, node in zip(nodes, model.graph.node):
        copy.CopyFrom(node)
    wanted = {
        t: [f"{t}_{op}{suffix}" for op in ("ReduceMin", "ReduceMax") for suffix in ("", "_Reshape")] for t in tensors
    }
    by_name = {n.name: n for n in nodes}
    added = {name for names in wanted.values() for name in names if name in by_name}
    group = {t: [by_name[name] for name in names if name in added] for t, names in wanted.items()}
    produced = {o for n in nodes if n.name not in added for o in n.output}
    order = [n for t in sorted(tensors) if t not in produced for n in group[t]]  # graph inputs first
    for node in nodes:
        if node.name not in added:
            order.append(node)
            order.extend(n for o in node.output if o in group for n in group[o])
    if len(order) != len(nodes):
        raise RuntimeError(f"reordering the calibration graph {path} lost nodes: {len(order)} of {len(nodes)}")
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.save_model(model, str(path))


def session_options(*, optimized: bool = False) -> Any:
    """The calibration session: no graph optimization (as onnxruntime's calibrator: every tensor stays as it
    is; ``optimized``: all of onnxruntime's optimizations, see ``segmented_minmax_ranges``), no CPU arena or memory
    pattern (memory goes back as tensors die), reductions run early.

    Each tensor's ReduceMin/Max sits right after its producer (``reductions_after_producers``). The default
    order runs them after everything else (they are leaves), keeping every activation alive to the end:
    14.4 GB for the real VAE decoder in one segment. Node-index priority runs them before the tensor's later
    readers (pinned by a test): 1.7 GB, and 28 s per sample instead of 43. Ranges do not depend on the order."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized
        else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    return so


def tensors_to_calibrate(model: Any, op_types_to_calibrate: list[str] | None) -> set[str]:
    """onnxruntime's selection (``CalibraterBase.select_tensors_to_calibrate``) on a shape-inferred graph."""
    from onnxruntime.quantization.calibrate import CalibraterBase

    return CalibraterBase.select_tensors_to_calibrate(
        SimpleNamespace(op_types_to_calibrate=op_types_to_calibrate), model
    )[0]


def split_nodes(model: Any, *, segments: int | None = None, segment_bytes: int | None = None) -> list[list[int]]:
    """Contiguous node-index ranges of the (topologically sorted) graph, balanced by weight bytes: ``segments``
    parts, or as many as keep each near ``segment_bytes``. Activations are not counted: with the reductions
    run next to their producers (``SegmentCalibrater``), a segment holds the live activations of a plain
    inference (1.4 GB for the real VAE decoder at 512×512), whatever its length."""
    sizes = {t.name: tensor_bytes(t) for t in model.graph.initializer}
    seen: set[str] = set()
    costs = []
    for node in model.graph.node:
        new = [n for n in node.input if n in sizes and n not in seen]
        seen.update(new)
        costs.append(sum(sizes[n] for n in new))
    total = max(sum(costs), 1)
    if segments is None:
        segments = max(1, -(-total // int(segment_bytes or total)))
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    # Greedy cuts toward an even share of what is left: a node heavier than a share (the VAE's last
    # upsampling) takes one segment and the rest is re-divided, so exactly ``segments`` parts come out.
    segments = max(1, min(segments, len(costs)))
    acc, out, current = 0, [], []
    target = total / segments
    for i, cost in enumerate(costs):
        current.append(i)
        acc += cost
        cuts_left = segments - 1 - len(out)
        if cuts_left and (acc >= target or len(costs) - 1 - i == cuts_left):
            out.append(current)
            current = []
            target = acc + (total - acc) / cuts_left  # segments still to fill
    out.append(current)
    return out


def segment_models(model: Any, parts: list[list[int]]) -> list[tuple[Any, list[str]]]:
    """A standalone model per part: inputs = activations read from before, outputs = activations read after
    (and graph outputs). Returns (model, names of its produced tensors)."""
    import onnx

    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(
                f"node {node.name!r} ({node.op_type}) has a subgraph; segmented calibration needs a flat graph"
            )
    initializers = {t.name: t for t in graph.initializer}
    infos = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    graph_outputs = [o.name for o in graph.output]
    producer_part = {}
    for k, part in enumerate(parts):
        for i in part:
            for name in graph.node[i].output:
                producer_part[name] = k
    last_reader = {}
    for k, part in enumerate(parts):
        for i in part:
            for name in graph.node[i].input:
                last_reader[name] = k
    result = []
    for k, part in enumerate(parts):
        nodes = [graph.node[i] for i in part]
        produced = [n for node in nodes for n in node.output if n]
        read = list(dict.fromkeys(n for node in nodes for n in node.input if n))
        inputs = [n for n in read if n not in initializers and producer_part.get(n) != k]
        outputs = [n for n in produced if n in graph_outputs or last_reader.get(n, -1) > k]
        missing = [n for n in inputs + outputs if n not in infos]
        if missing:
            raise ValueError(f"no type information for {missing[:3]}; run shape inference before segmenting")
        seg = onnx.helper.make_graph(
            nodes,
            f"{graph.name}_segment{k}",
            [infos[n] for n in inputs],
            [infos[n] for n in outputs],
            initializer=[initializers[n] for n in read if n in initializers],
            value_info=[infos[n] for n in produced if n in infos and n not in outputs],
        )
        m = onnx.helper.make_model(seg, opset_imports=model.opset_import, ir_version=model.ir_version)
        result.append((m, produced))
    return result


def segmented_minmax_ranges(
    graph: Any,
    feeds: Callable[[], Iterable[dict[str, np.ndarray]]],
    *,
    segments: int | None = None,
    segment_bytes: int | None = None,
    op_types_to_calibrate: list[str] | None = None,
    work: Path | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
    optimized: bool = False,
) -> Any:
    """``TensorsData`` of the MinMax ranges of ``graph`` (a ``sdxl_qdq.convert.lean.graph.Graph`` or a model path),
    computed segment by segment; ``feeds()`` yields the calibration samples (each distinct one is run once). Give
    ``segments`` or ``segment_bytes``.

    ``optimized``: run the calibration sessions with onnxruntime's graph optimizations (onnxruntime's calibrator
    runs none). Every calibrated tensor is still computed (each is read by its ReduceMin/Max, so no fusion can
    remove it), by the optimized kernels: the ranges agree with the unoptimized ones to float rounding, not bit
    for bit (as they agree across machines with another thread count)."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    if segments is not None and segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if not isinstance(graph, Graph):
        graph = Graph.load(Path(graph))
    model = onnx.shape_inference.infer_shapes(graph.proto)
    selected = tensors_to_calibrate(model, op_types_to_calibrate)
    seg_models = segment_models(model, split_nodes(model, segments=segments, segment_bytes=segment_bytes))
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    first_reader, last_reader = {}, {}
    for k, (seg, _) in enumerate(seg_models):
        for i in seg.graph.input:
            first_reader.setdefault(i.name, k)
            last_reader[i.name] = k
    merged: dict[str, Any] = {}
    spent = {"segments": len(seg_models), "setup_s": 0.0, "samples_s": 0.0}
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segments-", dir=work) as tmp:
        store = Path(tmp, "activations")
        n_samples, spent["duplicates"] = _spill_distinct(feeds(), store)
        if n_samples == 0:
            raise ValueError(f"no calibration samples for {graph.proto.graph.name!r}")
        if progress:
            progress(
                f"calibration: {n_samples} distinct samples ({spent['duplicates']} repeats skipped), "
                f"{len(seg_models)} segments"
            )
        for k, (seg, produced) in enumerate(seg_models):
            subset = {t for t in produced if t in selected}
            subset |= {
                i.name
                for i in seg.graph.input
                if i.name in selected and i.name in graph_inputs and first_reader[i.name] == k
            }
            done = [i.name for i in seg.graph.input if last_reader[i.name] == k]  # no later segment reads them
            ranges, setup, ran, first = _calibrate_segment(
                Graph(seg, graph.base_dir),
                subset,
                op_types_to_calibrate,
                store,
                n_samples,
                done,
                Path(tmp, f"segment{k}"),
                optimized=optimized,
            )
            merged.update(ranges)
            spent["setup_s"] += setup
            spent["samples_s"] += ran
            spent["first_sample_s"] = spent.get("first_sample_s", 0.0) + first
            if progress:
                progress(
                    f"calibration segment {k + 1}/{len(seg_models)}: {len(seg.graph.node)} nodes, "
                    f"{len(subset)} tensors, {n_samples} samples; setup {setup:.1f}s, samples {ran:.1f}s"
                )
    if timings is not None:
        timings.update({k: round(v, 2) for k, v in spent.items()}, samples=n_samples)
    missing = selected - set(merged)
    if missing:
        raise RuntimeError(
            f"segmented calibration left {len(missing)} tensors without a range, e.g. {sorted(missing)[:3]}"
        )
    return TensorsData(CalibrationMethod.MinMax, merged)


def _spill_distinct(samples: Iterable[dict[str, np.ndarray]], store: Path) -> tuple[int, int]:
    """Write each distinct sample to ``store`` (a sample equal to an earlier one cannot move a min or a max);
    return (distinct samples, repeats skipped)."""
    distinct: set[str] = set()
    repeats = 0
    for sample in samples:
        digest = feeds_digest(sample)
        if digest in distinct:
            repeats += 1
            continue
        distinct.add(digest)
        _spill(store, len(distinct) - 1, sample)
    return len(distinct), repeats


def _calibrate_segment(
    seg: Graph,
    subset: set[str],
    op_types: list[str] | None,
    store: Path,
    n_samples: int,
    done: list[str],
    folder: Path,
    *,
    optimized: bool = False,
) -> tuple[dict[str, Any], float, float, float]:
    """Run one segment over every stored sample with onnxruntime's calibrator for ``subset``: its boundary outputs
    replace, in ``store``, the inputs no later segment reads (``done``). Returns (ranges, setup s, samples s, first
    sample s: a session's first run pays for allocations the later ones reuse)."""
    started = time.perf_counter()
    folder.mkdir()
    save_with_external_data(seg.loaded(), folder / "model.onnx")
    calibrator = _calibrator_class()(
        str(folder / "model.onnx"),
        op_types,
        augmented_model_path=str(folder / "augmented.onnx"),
        use_external_data_format=True,
        subset=subset,
        optimized=optimized,
    )
    with patched(linear_quantizer()):  # onnxruntime's augmentation, linear in the graph (the same graph)
        calibrator.augment_graph()
    calibrator.create_inference_session()
    names = [i.name for i in seg.proto.graph.input]
    setup, started = time.perf_counter() - started, time.perf_counter()
    first = 0.0
    for s in range(n_samples):
        _spill(store, s, calibrator.run(_load(store, s, names)))
        for n in done:
            (store / f"{s:04d}" / f"{_safe(n)}.npy").unlink()
        first = first or time.perf_counter() - started
    ranges = calibrator.compute_data().data if subset else {}
    del calibrator
    shutil.rmtree(folder)  # this segment's weights, twice (model and augmented model)
    return ranges, setup, time.perf_counter() - started, first


def _spill(store: Path, sample: int, arrays: dict[str, np.ndarray]) -> None:
    folder = store / f"{sample:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{_safe(name)}.npy", array)


def _load(store: Path, sample: int, names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.load(store / f"{sample:04d}" / f"{_safe(n)}.npy") for n in names}


def _safe(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()  # tensor names may hold '/', ':' and the like
