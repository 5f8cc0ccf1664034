"""Where the QNN EP computes a QDQ model differently from the CPU EP, found by cutting the graph.

A graph that QNN compiles as one cannot be probed: adding graph outputs changes what HTP computes, and
intermediate DequantizeLinear outputs read back as garbage. So every measurement here is a *single-output
cut*: a subgraph that ends at one quantized activation (a DequantizeLinear output), extracted from the QDQ
model and run on both EPs with the same inputs, each cut in its own process on QNN (many QNN sessions in one
process can crash it). Two errors per cut, as SQNR of QNN against the CPU EP (dB, higher is better):

- *accumulated*: the cut starts at the model inputs (what the whole model would output there);
- *local*: the cut starts at the block's own inputs, fed the CPU EP's values of those tensors (each still
  quantized by its own QuantizeLinear inside the cut), so upstream error does not count.

The CPU EP runs the graph as written (no graph optimization): its fused integer kernels round differently
depending on which tensors a graph exposes (47 dB between two CPU runs of the same block), while the QDQ
graph's own float emulation gives every cut exactly the whole model's values.

``localize`` scores every block (a module of the export: ``up_blocks.1``, ``encoder/layers.3``…), worst local
error first; in the worst block it bisects for the first activation whose cut falls below the threshold, then
reduces that cut in the way of Polygraphy's ``debug reduce``: the latest start that still fails, then every
activation inside it fed from the CPU instead of computed on QNN where the failure survives that. What is
left is the smallest subgraph that QNN gets wrong, reported node by node (op types, quantization types and
scales, each node alone and inside the subgraph).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdxl_qdq.convert.calibration import iter_calibration
from sdxl_qdq.graphs import consumers, producers
from sdxl_qdq.judge.metrics import sqnr_db
from sdxl_qdq.procs import Progress
from sdxl_qdq.run.pipeline import feeds_digest
from sdxl_qdq.runtime import QnnOptions, assert_assignment, create_session

Feeds = list[dict[str, np.ndarray]]
DEFAULT_THRESHOLD_DB = 30.0  # AI Hub treats a QNN-vs-reference SQNR above 30 dB as good
_QDQ = ("QuantizeLinear", "DequantizeLinear")


# ------------------------------------------------------------------------------------------ the graph
@dataclass(frozen=True)
class Activation:
    """A quantized activation: ``tensor`` (float) → QuantizeLinear → ``dequantized`` (what consumers read)."""

    index: int  # position of its QuantizeLinear in the graph (topological order)
    tensor: str
    dequantized: str
    producer: str  # node name of what computes ``tensor`` ("" for a graph input)
    block: str


class CutGraph:
    """A QDQ model read graph-only (weights stay in their data file) and cut into single-output subgraphs."""

    def __init__(self, model: Path, *, depth: int | None = None) -> None:
        import onnx

        self.path = Path(model)
        self.proto = onnx.load(str(self.path), load_external_data=False)
        graph = self.proto.graph
        self.nodes = list(graph.node)
        self.producer, self.consumers = producers(self.nodes), consumers(self.nodes)
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {v.name for v in graph.input}
        self.value_info = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
        self.inferred: list[str] = []  # tensors whose shapes the model did not record (found by shape inference)
        self.blocks_of = _assign_blocks(self.nodes, self.producer, self.consumers, depth)
        self.activations = []
        for i, n in enumerate(self.nodes):
            if n.op_type == "QuantizeLinear" and n.input[0] not in self.initializers:
                dqs = [
                    self.nodes[j]
                    for j in self.consumers.get(n.output[0], [])
                    if self.nodes[j].op_type == "DequantizeLinear"
                ]
                if dqs:
                    p = self.producer.get(n.input[0])
                    self.activations.append(
                        Activation(
                            i,
                            n.input[0],
                            dqs[0].output[0],
                            self.nodes[p].name if p is not None else "",
                            self.blocks_of[p] if p is not None else self.blocks_of[i],
                        )
                    )
        self.by_dequantized = {a.dequantized: a for a in self.activations}
        self._infer_missing_shapes()

    def _infer_missing_shapes(self) -> None:
        """Olive's QDQ models record no shape for some activations: a graph output's ``<name>_QuantizeLinear_Input``,
        and tensors a pass added. Cuts ending or starting there need one (and QNN needs every shape). QuantizeLinear
        and DequantizeLinear keep the shape, so an activation has its dequantized tensor's shape (a graph output's,
        for the last one) and the reverse; what is still missing is left to ONNX shape inference on the graph
        (initializers keep their dims without their data)."""
        from onnx import TensorProto, helper

        def dims(name: str) -> list[int] | None:
            v = self.value_info.get(name)
            if v is None or not v.type.tensor_type.HasField("shape"):
                return None
            return [d.dim_value for d in v.type.tensor_type.shape.dim]

        def elem_type(node: Any, tensor: str) -> int:
            """Float on the float side of a Q or DQ node; on the other, its zero point's type (uint8 without one)."""
            if (node.op_type == "QuantizeLinear") == (tensor == node.input[0]):
                return TensorProto.FLOAT
            zero_point = self.initializers.get(node.input[2]) if len(node.input) > 2 else None
            return zero_point.data_type if zero_point is not None else TensorProto.UINT8

        # a shape known on one side of a QuantizeLinear or DequantizeLinear is the other side's (also along the
        # Q→DQ→Q→DQ chains of a precision conversion), to a fixed point
        qdq = [n for n in self.nodes if n.op_type in _QDQ and n.input[0] not in self.initializers]
        changed = True
        while changed:
            changed = False
            for n in qdq:
                for have, want in ((n.input[0], n.output[0]), (n.output[0], n.input[0])):
                    shape = None if want in self.value_info else dims(have)
                    if shape is not None:
                        self.value_info[want] = helper.make_tensor_value_info(want, elem_type(n, want), shape)
                        self.inferred.append(want)
                        changed = True
        missing = [t for a in self.activations for t in (a.tensor, a.dequantized) if t not in self.value_info]
        if missing:
            from onnx import shape_inference

            for v in shape_inference.infer_shapes(self.proto, strict_mode=False).graph.value_info:
                if v.name not in self.value_info and v.type.tensor_type.HasField("shape"):
                    self.value_info[v.name] = v
                    self.inferred.append(v.name)
        self.proto.graph.value_info.extend(self.value_info[name] for name in self.inferred)

    # -- structure
    def block_names(self) -> list[str]:
        """Blocks in the order their first node appears."""
        seen: dict[str, None] = {}
        for i, n in enumerate(self.nodes):
            if n.op_type not in _QDQ:
                seen.setdefault(self.blocks_of[i])
        return list(seen)

    def block_activations(self, block: str) -> list[Activation]:
        return [a for a in self.activations if a.block == block]

    def block_output(self, block: str) -> Activation | None:
        """The block's last activation read outside it (its output; the last activation if none is)."""
        acts = self.block_activations(block)
        outside = [a for a in acts if any(self.blocks_of[j] != block for j in self._readers(a))]
        return (outside or acts or [None])[-1]

    def block_inputs(self, block: str) -> list[str]:
        """Float tensors quantized outside the block and read inside it: where its local cut starts."""
        inside = {i for i, b in self.blocks_of.items() if b == block}
        return [a.tensor for a in self.activations if a.block != block and any(j in inside for j in self._readers(a))]

    def _readers(self, a: Activation) -> list[int]:
        q = self.nodes[a.index]
        readers = []
        for j in self.consumers.get(q.output[0], []):
            if self.nodes[j].op_type == "DequantizeLinear":
                readers += self.consumers.get(self.nodes[j].output[0], [])
        return readers

    # -- cutting
    def extract(self, output: str, stops: Iterable[str] = ()) -> Any:
        """The subgraph computing ``output`` from the graph inputs it needs and the ``stops`` it reaches."""
        from onnx import helper

        stops, need, seen, keep, inputs = set(stops), [output], set(), set(), []
        while need:
            t = need.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in stops or t in self.inputs:
                inputs.append(t)
                continue
            if t in self.initializers:
                continue
            i = self.producer[t]
            if i not in keep:
                keep.add(i)
                need.extend(self.nodes[i].input)
        nodes = [self.nodes[i] for i in sorted(keep)]
        used = {name for n in nodes for name in n.input}
        graph = helper.make_graph(
            nodes,
            "cut",
            [self.value_info_of(t) for t in sorted(inputs)],
            [self.value_info_of(output)],
            [t for t in self.proto.graph.initializer if t.name in used],
        )
        produced = {o for n in nodes for o in n.output} - {output}
        graph.value_info.extend(v for v in self.proto.graph.value_info if v.name in produced)  # QNN needs every shape
        return helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)

    def value_info_of(self, tensor: str) -> Any:
        """The type and shape of ``tensor``; a DequantizeLinear output has its float tensor's shape."""
        from onnx import TensorProto, helper

        if tensor in self.value_info:
            return self.value_info[tensor]
        a = self.by_dequantized.get(tensor)
        if a is not None and a.tensor in self.value_info:
            dims = [d.dim_value for d in self.value_info[a.tensor].type.tensor_type.shape.dim]
            return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, dims)
        raise KeyError(f"no shape recorded for {tensor!r} in {self.path}; run shape inference on the model first")

    def quantization(self, tensor: str) -> dict[str, Any]:
        """Type, scale and zero point of the DequantizeLinear that produces ``tensor`` (empty for a float one)."""
        from onnx import helper, numpy_helper

        i = self.producer.get(tensor)
        if i is None or self.nodes[i].op_type != "DequantizeLinear":
            return {}
        dq = self.nodes[i]
        scale = numpy_helper.to_array(self.initializers[dq.input[1]]) if dq.input[1] in self.initializers else None
        q = self.initializers.get(dq.input[0])
        if q is None and dq.input[0] in self.producer:  # an activation: its QuantizeLinear's zero point has the type
            zp = self.initializers.get(dq.input[2]) if len(dq.input) > 2 else None
            dtype = helper.tensor_dtype_to_np_dtype(zp.data_type).name if zp is not None else "?"
        else:
            dtype = helper.tensor_dtype_to_np_dtype(q.data_type).name if q is not None else "?"
        return {
            "type": dtype,
            "scale": float(np.ravel(scale)[0]) if scale is not None and scale.size == 1 else None,
            "per_channel": scale is not None and scale.size > 1,
        }


def _path(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p]
    return parts[:-1] if name.startswith("/") else []


def _assign_blocks(
    nodes: list[Any], producer: dict[str, int], consumers: dict[str, list[int]], depth: int | None
) -> dict[int, str]:
    """Each node's block: its module path (the export's node names) below the wrapper modules that hold nearly
    everything, cut at ``depth`` (by default the shallowest depth that gives 6 blocks or more). Nodes with no
    module path (inserted by a pass) and Q/DQ nodes belong to the block of what they read or feed."""
    paths = {i: _path(n.name) for i, n in enumerate(nodes) if n.op_type not in _QDQ}
    named = [p for p in paths.values() if p]
    while named:
        head, count = Counter(p[0] for p in named).most_common(1)[0]
        if count < 0.8 * len(named) or all(len(p) <= 1 for p in named if p[0] == head):
            break
        paths = {i: (p[1:] if p and p[0] == head else p) for i, p in paths.items()}
        named = [p for p in paths.values() if p]
    if depth is None:
        depth = next((d for d in range(1, 6) if len({"/".join(p[:d]) for p in named}) >= 6), 6)
    blocks = {i: "/".join(p[:depth]) for i, p in paths.items() if p}
    blocks.update({i: "(top)" for i, p in paths.items() if not p and nodes[i].name.startswith("/")})

    def neighbour(i: int) -> str | None:
        for name in nodes[i].input:
            j = producer.get(name)
            if j is not None and j in blocks:
                return blocks[j]
        for name in nodes[i].output:
            for j in consumers.get(name, []):
                if j in blocks:
                    return blocks[j]
        return None

    for _ in range(3):  # passes over the unassigned, each resolving those next to an assigned node
        for i in range(len(nodes)):
            if i not in blocks and (b := neighbour(i)) is not None:
                blocks[i] = b
    for i in range(len(nodes)):
        blocks.setdefault(i, "(top)")
    return blocks


# ------------------------------------------------------------------------------------------- running
def cpu_reference(graph: CutGraph, feeds: Feeds, tensors: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """The CPU EP's values of ``tensors`` for each feed (one run of the model with them as its outputs)."""
    from onnx import ModelProto

    tensors = sorted(set(tensors))
    proto = ModelProto()
    proto.CopyFrom(graph.proto)
    del proto.graph.output[:]
    proto.graph.output.extend(graph.value_info_of(t) for t in tensors)
    session = _session(proto, graph.path.parent, "cpu", None)
    names = [i.name for i in session.get_inputs()]
    return [dict(zip(tensors, session.run(tensors, {k: f[k] for k in names}))) for f in feeds]


def _session(proto: Any, data_dir: Path, ep: str, qnn: QnnOptions | None) -> Any:
    session = create_session(
        proto.SerializeToString(),
        ep=ep,
        qnn=qnn,
        optimize=ep != "cpu",
        extra_config={"session.model_external_initializers_file_folder_path": str(data_dir)},
    )
    assert_assignment(session, ep)
    return session


@dataclass
class CutResult:
    output: str
    stops: int  # how many tensors were fed from the CPU
    nodes: int  # compute nodes in the cut
    sqnr_db: float
    error: str = ""


class Runner:
    """Runs cuts on the CPU EP here and on the QNN EP in child processes (``jobs`` at a time)."""

    def __init__(
        self,
        graph: CutGraph,
        feeds: Feeds,
        *,
        qnn: QnnOptions | None = None,
        jobs: int = 2,
        progress: Progress = lambda _: None,
    ) -> None:
        self.graph, self.feeds, self.qnn, self.jobs, self.progress = graph, feeds, qnn or QnnOptions(), jobs, progress
        self.reference: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        self.runs = 0

    def need_reference(self, tensors: Iterable[str]) -> None:
        missing = sorted(set(tensors) - set(self.reference[0]))
        if missing:
            for ref, values in zip(self.reference, cpu_reference(self.graph, self.feeds, missing)):
                ref.update(values)

    def run(self, cuts: list[tuple[str, frozenset[str]]]) -> list[CutResult]:
        """SQNR of QNN against the CPU EP for each (output, stops) cut, over all feeds."""
        prepared = []
        for output, stops in cuts:
            proto = self.graph.extract(output, stops)
            names = [i.name for i in proto.graph.input]
            self.need_reference([n for n in names if n not in self.graph.inputs])
            feeds = [
                {n: (f[n] if n in self.graph.inputs else r[n]) for n in names}
                for f, r in zip(self.feeds, self.reference)
            ]
            prepared.append((output, proto, feeds, len(stops & set(names))))
        with ThreadPoolExecutor(self.jobs) as pool:
            qnn_outs = list(pool.map(lambda p: _run_child(p[1], self.graph.path.parent, p[2], self.qnn), prepared))
        results = []
        for (output, proto, feeds, stops), (qnn_values, error) in zip(prepared, qnn_outs):
            compute = sum(n.op_type not in _QDQ for n in proto.graph.node)
            if error:
                results.append(CutResult(output, stops, compute, float("nan"), error))
                continue
            session = _session(proto, self.graph.path.parent, "cpu", None)
            cpu_values = np.stack([session.run(None, f)[0] for f in feeds])
            results.append(CutResult(output, stops, compute, sqnr_db(cpu_values, np.stack(qnn_values))))
        self.runs += len(cuts)
        return results

    def one(self, output: str, stops: Iterable[str] = ()) -> CutResult:
        return self.run([(output, frozenset(stops))])[0]


def _run_child(proto: Any, data_dir: Path, feeds: Feeds, qnn: QnnOptions) -> tuple[list[np.ndarray], str]:
    """Run ``proto`` on the QNN EP in a child process; (outputs per feed, "") or ([], what went wrong)."""
    with tempfile.TemporaryDirectory(prefix="diverge-") as tmp:
        work = Path(tmp)
        (work / "model.onnx").write_bytes(proto.SerializeToString())
        np.savez(work / "feeds.npz", **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
        (work / "job.json").write_text(json.dumps({"data_dir": str(data_dir), "qnn": asdict(qnn), "n": len(feeds)}))
        done = subprocess.run(
            [sys.executable, "-m", "sdxl_qdq", "_qnn-cut", str(work)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            return [], f"QNN child exited with {done.returncode}: {lines[-1] if lines else 'no message'}"
        out = np.load(work / "out.npz")
        return [out[str(i)] for i in range(len(feeds))], ""


def run_cut_child(work: Path) -> int:
    """The QNN side of one cut, in its own process (``python -m sdxl_qdq _qnn-cut WORK``): ``work`` holds the cut
    (model.onnx), its feeds (feeds.npz) and options (job.json); the outputs go to out.npz."""
    import onnx

    job = json.loads((work / "job.json").read_text())
    feeds_file = np.load(work / "feeds.npz")
    feeds: list[dict[str, np.ndarray]] = [{} for _ in range(job["n"])]
    for key in feeds_file.files:
        i, name = key.split("/", 1)
        feeds[int(i)][name] = feeds_file[key]
    session = _session(
        onnx.load(str(work / "model.onnx"), load_external_data=False),
        Path(job["data_dir"]),
        "qnn",
        QnnOptions(**job["qnn"]),
    )
    np.savez(work / "out.npz", **{str(i): session.run(None, f)[0] for i, f in enumerate(feeds)})
    return 0


# ------------------------------------------------------------------------------------------ localize
@dataclass
class BlockScore:
    block: str
    output: str  # the activation its cuts end at
    local_db: float
    accumulated_db: float
    compute_nodes: int


@dataclass
class NodeRow:
    name: str
    op_type: str
    inputs: list[dict[str, Any]]  # per input: tensor, type, scale (quantized inputs)
    output: dict[str, Any]
    alone_db: float  # the node alone, fed the CPU reference at its inputs
    in_subgraph_db: float  # its output inside the reduced subgraph (from the subgraph's inputs)


@dataclass
class Divergence:
    model: str
    samples: int
    threshold_db: float
    blocks: list[BlockScore]  # worst local error first
    first_divergent: str | None = None  # the first activation of the worst block below the threshold
    reduced: list[NodeRow] = field(default_factory=list)  # the smallest failing subgraph, in graph order
    reduced_db: float | None = None
    reduced_inputs: list[str] = field(default_factory=list)
    cuts_run: int = 0

    @property
    def worst(self) -> BlockScore | None:
        return self.blocks[0] if self.blocks else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A readable report, worst first."""
        out = [
            f"QNN EP vs CPU EP on {self.model}: {self.samples} samples, single-output cuts, threshold "
            f"{self.threshold_db:g} dB (SQNR, higher is better)",
            f"{'block':40s} {'local dB':>9s} {'accum. dB':>10s} {'nodes':>6s}  output",
        ]
        for b in self.blocks:
            flag = "  <" if b.local_db < self.threshold_db else ""
            out.append(
                f"{b.block:40s} {b.local_db:9.2f} {b.accumulated_db:10.2f} {b.compute_nodes:6d}  {b.output}{flag}"
            )
        if self.first_divergent:
            out.append(f"first activation below {self.threshold_db:g} dB in {self.worst.block}: {self.first_divergent}")
        if self.reduced:
            out.append(
                f"smallest failing subgraph: {len(self.reduced)} compute nodes, {self.reduced_db:.2f} dB; "
                f"fed from the CPU at {len(self.reduced_inputs)} tensors"
            )
            for r in self.reduced:
                types = ",".join(f"{i.get('type', 'f32')}" for i in r.inputs) + f"->{r.output.get('type', 'f32')}"
                scale = r.output.get("scale")
                out.append(
                    f"  {r.op_type:22s} {types:26s} out scale {scale if scale is None else f'{scale:.3g}':>9}  "
                    f"alone {r.alone_db:7.2f} dB  in subgraph {r.in_subgraph_db:7.2f} dB  {r.name}"
                )
        return out


def localize(
    model: Path,
    feeds: Feeds,
    *,
    qnn: QnnOptions | None = None,
    depth: int | None = None,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    reduce: bool = True,
    jobs: int = 2,
    progress: Progress = lambda _: None,
) -> Divergence:
    """Score every block of the QDQ ``model`` (QNN vs CPU), worst local error first; where one falls below
    ``threshold_db``, find its first diverging activation and (``reduce``) the smallest subgraph QNN gets wrong."""
    graph = CutGraph(model, depth=depth)
    runner = Runner(graph, feeds, qnn=qnn, jobs=jobs, progress=progress)
    names = graph.block_names()
    outputs = {b: graph.block_output(b) for b in names}
    names = [b for b in names if outputs[b] is not None]
    progress(f"{len(names)} blocks: {', '.join(names)}")
    local = runner.run([(outputs[b].dequantized, frozenset(graph.block_inputs(b))) for b in names])
    progress("local cuts done")
    accumulated = runner.run([(outputs[b].dequantized, frozenset()) for b in names])
    progress("accumulated cuts done")
    blocks = [
        BlockScore(b, outputs[b].dequantized, lo.sqnr_db, ac.sqnr_db, lo.nodes)
        for b, lo, ac in zip(names, local, accumulated)
    ]
    blocks.sort(key=lambda s: (np.nan_to_num(s.local_db, nan=-np.inf), names.index(s.block)))
    result = Divergence(str(model), len(feeds), threshold_db, blocks)
    worst = result.worst
    if worst is not None and worst.local_db < threshold_db:
        stops = frozenset(graph.block_inputs(worst.block))
        first = _first_failing(runner, graph.block_activations(worst.block), stops, threshold_db, progress)
        result.first_divergent = first.tensor if first else None
        if first is not None and reduce:
            _reduce(runner, graph, first, stops, threshold_db, result, progress)
    result.cuts_run = runner.runs
    return result


def _first_failing(
    runner: Runner, acts: list[Activation], stops: frozenset[str], threshold: float, progress: Progress
) -> Activation | None:
    """Bisect the block's activations (graph order) for the first whose cut from the block inputs fails; the
    last one fails (it is the block output, scored already), assuming what fails stays failed downstream."""
    if not acts:
        return None
    lo, hi = -1, len(acts) - 1  # acts[hi] fails; acts[lo] passes (-1: the block inputs themselves)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = runner.one(acts[mid].dequantized, stops)
        progress(f"bisect: {r.sqnr_db:7.2f} dB at {acts[mid].tensor}")
        if r.sqnr_db < threshold or np.isnan(r.sqnr_db):
            hi = mid
        else:
            lo = mid
    return acts[hi]


class _Reduction:
    """Cuts that end at ``target``, failing or not; ``outer`` is always fed from the CPU (the block inputs)."""

    def __init__(
        self, runner: Runner, graph: CutGraph, target: Activation, outer: frozenset[str], threshold: float
    ) -> None:
        self.runner, self.graph, self.target, self.outer, self.threshold = runner, graph, target, outer, threshold
        self.before = [a for a in graph.activations if a.index < target.index]

    def fails(self, stops: frozenset[str]) -> tuple[bool, CutResult]:
        r = self.runner.one(self.target.dequantized, stops)
        return bool(r.sqnr_db < self.threshold or np.isnan(r.sqnr_db)), r

    def prefix(self, k: int) -> frozenset[str]:
        """Stops that leave only the last ``k`` activations before the target to be computed on QNN."""
        return self.outer | {a.tensor for a in self.before[: len(self.before) - k]}

    def latest_start(self) -> frozenset[str]:
        """Grow the computed part backwards until the cut fails, then bisect the boundary."""
        k, passing = 1, 0
        while k < len(self.before) and not self.fails(self.prefix(k))[0]:
            passing, k = k, min(2 * k, len(self.before))
        lo, hi = passing, k  # prefix(lo) passes, prefix(hi) fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fails(self.prefix(mid))[0]:
                hi = mid
            else:
                lo = mid
        return self.prefix(hi)

    def minimized(self, stops: frozenset[str]) -> frozenset[str]:
        """Feed from the CPU every activation inside the cut whose computing on QNN the failure does not need
        (greedy, nearest the target first, in halving chunks)."""
        produced = {o for n in self.graph.extract(self.target.dequantized, stops).graph.node for o in n.output}
        todo = [a.tensor for a in reversed(self.before) if a.tensor in produced]
        kept: set[str] = set()
        chunk = max(1, len(todo) // 2)
        while todo:
            part, rest = todo[:chunk], todo[chunk:]
            if self.fails(stops | kept | set(part))[0]:
                kept |= set(part)
                todo = rest
            elif chunk == 1:
                todo = rest  # this one must be computed on QNN for the failure to show
            else:
                chunk = max(1, chunk // 2)
        return stops | frozenset(kept)

    def rows(self, final: frozenset[str]) -> list[NodeRow]:
        """Each compute node of the reduced cut: alone (fed the CPU values at its inputs) and inside the cut."""
        graph = self.graph
        cuts = []
        for n in graph.extract(self.target.dequantized, final).graph.node:
            out = (
                next((a for a in graph.activations if a.tensor == n.output[0]), None) if n.op_type not in _QDQ else None
            )
            if out is not None:
                inputs = frozenset(graph.by_dequantized[i].tensor for i in n.input if i in graph.by_dequantized)
                cuts.append((n, out, inputs | self.outer))
        alone = self.runner.run([(out.dequantized, stops) for _, out, stops in cuts])
        inside = self.runner.run([(out.dequantized, final) for _, out, _ in cuts])
        return [
            NodeRow(
                n.name,
                n.op_type,
                [
                    {"tensor": i, **graph.quantization(i)}
                    for i in n.input
                    if i and i not in graph.initializers and graph.quantization(i)
                ],
                {"tensor": out.tensor, **graph.quantization(out.dequantized)},
                a.sqnr_db,
                s.sqnr_db,
            )
            for (n, out, _), a, s in zip(cuts, alone, inside)
        ]


def _reduce(
    runner: Runner,
    graph: CutGraph,
    target: Activation,
    outer: frozenset[str],
    threshold: float,
    result: Divergence,
    progress: Progress,
) -> None:
    """The smallest cut ending at ``target`` that still fails, into ``result``: the latest start first, then each
    activation inside fed from the CPU where the failure survives it."""
    reduction = _Reduction(runner, graph, target, outer, threshold)
    final = reduction.minimized(reduction.latest_start())
    _, r = reduction.fails(final)
    progress(f"reduced to {r.nodes} compute nodes at {r.sqnr_db:.2f} dB")
    result.reduced_db = r.sqnr_db
    result.reduced_inputs = sorted(
        i.name for i in graph.extract(target.dequantized, final).graph.input if i.name not in graph.inputs
    )
    result.reduced = reduction.rows(final)


def divergence_summary(
    build: Any,
    components: Iterable[str],
    *,
    qnn: QnnOptions | None = None,
    samples: int = 2,
    top: int = 3,
    reduce_worst: bool = False,
) -> list[str]:
    """A few lines per component for a failure summary: its worst blocks and first diverging activation; with
    ``reduce_worst``, also the smallest subgraph QNN gets wrong in the component whose worst block is worst (its
    cuts run again with the reduction; ``sdxl-qdq diverge`` reduces any component)."""
    lines, found = [], {}
    for c in components:
        feeds = distinct_samples(iter_calibration(build.calibration_dir, c), samples)
        found[c] = localize(build.qdq.models[c], feeds, qnn=qnn, reduce=False)
        for b in found[c].blocks[:top]:
            lines.append(f"{c:15s} {b.block:32s} local {b.local_db:7.2f} dB  accumulated {b.accumulated_db:7.2f} dB")
        if found[c].first_divergent:
            lines.append(f"{c:15s} first activation below {found[c].threshold_db:g} dB: {found[c].first_divergent}")
    failing = {c: d.worst.local_db for c, d in found.items() if d.first_divergent and d.worst is not None}
    if reduce_worst and failing:
        c = min(failing, key=failing.get)
        feeds = distinct_samples(iter_calibration(build.calibration_dir, c), samples)
        reduced = localize(build.qdq.models[c], feeds, qnn=qnn, reduce=True)
        at = next((i for i, line in enumerate(reduced.lines()) if line.startswith("smallest failing subgraph")), None)
        if at is not None:
            lines += [f"{c:15s} {line.strip()}" for line in reduced.lines()[at:]]
    return lines


def distinct_samples(feeds: Iterable[dict[str, np.ndarray]], count: int) -> Feeds:
    """The first ``count`` feeds that differ from each other (recorded calls repeat: the first UNet call is the
    same at 1 and 2 steps)."""
    chosen, seen = [], set()
    for f in feeds:
        d = feeds_digest(f)
        if d not in seen:
            seen.add(d)
            chosen.append(f)
            if len(chosen) == count:
                break
    return chosen
