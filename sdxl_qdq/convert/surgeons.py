"""Olive graph surgeons of this project, registered with Olive's ``GraphSurgeries`` pass on import.

``FuseGroupNormalization`` rewrites torch's export of GroupNorm, ``Reshape [N, G, -1] → InstanceNormalization
(ones, zeros) → Reshape back → Mul γ → Add β`` (with or without the Q/DQ pairs a QDQ quantizer puts between
them), into one ONNX ``GroupNormalization`` (opset 21: per-channel scale and bias), which the QNN EP maps to
HTP's native GroupNorm.

Why: QNN HTP miscomputes that decomposition in some graphs. In the tiny UNet the output of
``up_blocks.1/resnets.2/norm1/Mul`` reads back at −2 dB SQNR against the CPU EP (the tensor feeding it is at
44 dB); a 23-op micro-model reproduces it (GroupNorm decomposition → SiLU → Conv → GroupNorm decomposition at
8×8: 10 dB; 72 dB without the first GroupNorm), on every simulated chip. With the native op the tiny UNet's
QNN-vs-CPU SQNR goes from 11 dB to 49 dB. See ``tests/test_groupnorm.py``.

It must run *after* quantization: onnxruntime's CPU EP has no GroupNormalization kernel and inlines the op
into its function body whenever a session optimizes the graph (QNNPreprocess, quant_preprocess and the
calibrator all do). On a QDQ graph the fused op takes the input's DequantizeLinear, γ and β keep their
quantized data (reshaped to 1-D) and the Add's QuantizeLinear stays the output's: every tensor the fused
op touches keeps the range it was calibrated with. Only graph structure is read and written, plus the
InstanceNormalization's constant scale and bias (G values each), so it runs on graph-only models whose
weights stay in an external data file (``sdxl_qdq.convert.lean``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from sdxl_qdq.graphs import consumers, producers


@dataclass(frozen=True)
class _Match:
    x: str  # the GroupNorm input (as the first Reshape reads it)
    groups: int
    epsilon: float
    gamma: str  # tensors feeding Mul and Add (a DequantizeLinear output or a float initializer)
    beta: str
    output: str  # the Add's output
    removed: tuple[int, ...]  # node indices of the decomposition (Q/DQ pairs between its ops included)
    name: str


def fuse_group_norms(model: ModelProto) -> int:
    """Replace every GroupNorm decomposition in ``model`` (in place) by one ``GroupNormalization``; return the count.

    GroupNormalization with per-channel scale and bias is opset 21: a model with one to fuse is converted to
    opset 21 first (``onnx.version_converter``, as onnxruntime's quantizer converts models for 16-bit types),
    unless ``model`` is older than opset 14, which is refused.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    index = _GraphIndex(model.graph)
    if not any(_match(index, i) for i, n in enumerate(model.graph.node) if n.op_type == "InstanceNormalization"):
        return 0
    if opset < 21:
        if opset < 14:
            raise ValueError(
                f"FuseGroupNormalization needs opset >= 14 to convert the model to opset 21 (per-channel "
                f"GroupNormalization); the model has opset {opset}: export it at opset 17 or later"
            )
        from onnx import version_converter

        model.CopyFrom(version_converter.convert_version(model, 21))
        index = _GraphIndex(model.graph)
    graph = model.graph
    matches = [
        m
        for i, n in enumerate(graph.node)
        if n.op_type == "InstanceNormalization"
        if (m := _match(index, i)) is not None
    ]
    removed = {i for m in matches for i in m.removed}
    inserted: dict[int, list[NodeProto]] = {}
    for m in matches:
        gamma, beta = _as_vector(index, m.gamma, m.name + "_scale"), _as_vector(index, m.beta, m.name + "_bias")
        fused = helper.make_node(
            "GroupNormalization",
            [m.x, gamma[-1], beta[-1]],
            [m.output],
            name=m.name,
            num_groups=m.groups,
            epsilon=m.epsilon,
        )
        inserted[max(m.removed)] = [*gamma[:-1], *beta[:-1], fused]
    nodes = []
    for i, node in enumerate(graph.node):
        if i in removed:
            nodes.extend(inserted.get(i, []))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_dead(graph)
    return len(matches)


class _GraphIndex:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer, self.consumers = producers(graph.node), consumers(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.shapes = {
            v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in (*graph.value_info, *graph.input, *graph.output)
            if v.type.tensor_type.HasField("shape")
        }

    def shape(self, tensor: str) -> list[int | None] | None:
        """The recorded shape of ``tensor``, or of the tensor a DequantizeLinear ← QuantizeLinear pair carries."""
        if tensor in self.shapes:
            return self.shapes[tensor]
        i = self.producer.get(tensor)
        if i is not None and self.node(i).op_type == "DequantizeLinear":
            q = self.producer.get(self.node(i).input[0])
            if q is not None and self.node(q).op_type == "QuantizeLinear":
                return self.shape(self.node(q).input[0])
        return None

    def node(self, i: int) -> NodeProto:
        return self.graph.node[i]

    def only_consumer(self, tensor: str) -> int | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer, a Constant, or DequantizeLinear of an initializer (dequantized)."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        i = self.producer.get(tensor)
        if i is None:
            return None
        node = self.node(i)
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        if node.op_type == "Identity":
            return self.constant(node.input[0])
        if node.op_type == "DequantizeLinear" and node.input[0] in self.initializers:
            q = numpy_helper.to_array(self.initializers[node.input[0]]).astype(np.float64)
            scale = self.constant(node.input[1])
            zero = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
            if scale is None or zero is None or np.size(scale) != 1 or np.size(zero) != 1:
                return None  # per-axis: not a constant this module needs
            return (q - float(np.ravel(zero)[0])) * float(np.ravel(scale)[0])
        return None

    def through_qdq(self, tensor: str, path: list[int]) -> tuple[int, str] | None:
        """The single consumer of ``tensor``, skipping a QuantizeLinear → DequantizeLinear pair (whose indices
        are appended to ``path``); None when the chain branches."""
        i = self.only_consumer(tensor)
        if i is None:
            return None
        node = self.node(i)
        if node.op_type != "QuantizeLinear":
            return i, tensor
        j = self.only_consumer(node.output[0])
        if j is None or self.node(j).op_type != "DequantizeLinear":
            return None
        k = self.only_consumer(self.node(j).output[0])
        if k is None:
            return None
        path += [i, j]
        return k, self.node(j).output[0]


def _match(index: _GraphIndex, inorm_index: int) -> _Match | None:
    """The GroupNorm decomposition around the InstanceNormalization at ``inorm_index``, or None."""
    inorm = index.node(inorm_index)
    path: list[int] = []
    found = _upstream(index, inorm_index, path)
    if found is None:
        return None
    reshape, groups, shape = found
    path.append(inorm_index)
    chain = _downstream(index, inorm.output[0], path)
    if chain is None:
        return None
    restored, (mul, mul_in), (add, add_in) = chain
    rank, channels = len(restored), int(restored[1])
    if not _normalizes_what_it_restores(index.shape(reshape.input[0]), shape, restored, groups):
        return None
    gamma = next(t for t in mul.input if t != mul_in)
    beta = next(t for t in add.input if t != add_in)
    if channels <= 0 or channels % groups or not all(_per_channel(index, t, channels, rank) for t in (gamma, beta)):
        return None
    epsilon = next((a.f for a in inorm.attribute if a.name == "epsilon"), 1e-5)
    name = (
        inorm.name.replace("InstanceNormalization", "GroupNormalization")
        if inorm.name
        else f"GroupNormalization_{inorm_index}"
    )
    return _Match(reshape.input[0], groups, float(epsilon), gamma, beta, add.output[0], tuple(path), name)


def _upstream(index: _GraphIndex, inorm_index: int, path: list[int]) -> tuple[NodeProto, int, np.ndarray] | None:
    """``Reshape [N, G, -1] → [Q → DQ →] InstanceNormalization(ones, zeros)``: (the Reshape, G, its shape)."""
    inorm = index.node(inorm_index)
    src, i = inorm.input[0], index.producer.get(inorm.input[0])
    if index.only_consumer(src) != inorm_index:
        return None
    if i is not None and index.node(i).op_type == "DequantizeLinear":
        q = index.producer.get(index.node(i).input[0])
        if (
            q is None
            or index.node(q).op_type != "QuantizeLinear"
            or index.only_consumer(index.node(i).input[0]) is None
        ):
            return None
        path += [q, i]
        src, i = index.node(q).input[0], index.producer.get(index.node(q).input[0])
    if i is None or index.node(i).op_type != "Reshape" or index.only_consumer(src) is None:
        return None
    reshape = index.node(i)
    path.append(i)
    scale, bias = index.constant(inorm.input[1]), (index.constant(inorm.input[2]) if len(inorm.input) > 2 else None)
    shape = index.constant(reshape.input[1])
    if scale is None or bias is None or shape is None or scale.ndim != 1:
        return None
    groups = int(scale.shape[0])
    if not (np.allclose(scale, 1.0, rtol=0, atol=1e-6) and np.allclose(bias, 0.0, rtol=0, atol=1e-6)):
        return None
    if len(shape) != 3 or shape[0] not in (0, 1) or shape[1] != groups:
        return None
    return reshape, groups, shape


def _downstream(index: _GraphIndex, tensor: str, path: list[int]) -> tuple[np.ndarray, tuple, tuple] | None:
    """``→ [Q → DQ →] Reshape → [Q → DQ →] Mul γ → [Q → DQ →] Add β``: (the restored shape, (Mul, the input it
    reads from the chain), (Add, likewise))."""
    chain = []
    for op in ("Reshape", "Mul", "Add"):
        step = index.through_qdq(tensor, path)
        if step is None or index.node(step[0]).op_type != op:
            return None
        chain.append((index.node(step[0]), step[1]))
        path.append(step[0])
        tensor = index.node(step[0]).output[0]
    (reshape1, _), mul, add = chain
    restored = index.constant(reshape1.input[1])  # the input's shape, [N, C, ...]
    if (
        restored is None
        or restored.ndim != 1
        or len(restored) < 3
        or any(list(n.input).count(t) != 1 for n, t in (mul, add))
    ):
        return None
    return restored, mul, add


def _normalizes_what_it_restores(
    x_shape: list[int | None] | None, shape: np.ndarray, restored: np.ndarray, groups: int
) -> bool:
    """Whether the first Reshape splits the very tensor the second one restores into G groups."""
    if x_shape is None:  # torch's own export: [0, G, -1] of the tensor the second Reshape restores
        return shape[2] == -1 and restored[0] not in (0, -1) and -1 not in restored[1:]
    if len(x_shape) != len(restored) or any(a is not None and a != b for a, b in zip(x_shape, restored)):
        return False  # e.g. an earlier Reshape merged in: the normalized tensor is not the one restored
    return shape[2] == -1 or groups * int(shape[2]) == int(np.prod(restored[1:]))


def _source_tensor(index: _GraphIndex, tensor: str) -> tuple[TensorProto, NodeProto | None] | None:
    """The initializer behind ``tensor`` (through Identity nodes) and the DequantizeLinear reading it (None for a
    float initializer)."""
    while tensor not in index.initializers:
        i = index.producer.get(tensor)
        if i is None:
            return None
        node = index.node(i)
        if node.op_type == "Identity":
            tensor = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.input[0] in index.initializers:
            return index.initializers[node.input[0]], node
        else:
            return None
    return index.initializers[tensor], None


def _per_channel(index: _GraphIndex, tensor: str, channels: int, rank: int) -> bool:
    """Whether ``tensor`` is a constant that broadcasts along axis 1 of a rank-``rank`` input: shape [C, 1, 1] for
    NCHW (trailing ones), per-tensor quantized if quantized."""
    found = _source_tensor(index, tensor)
    if found is None:
        return False
    initializer, dq = found
    dims = list(initializer.dims)
    axis = len(dims) - (rank - 1)  # the position that lines up with the input's axis 1
    if axis < 0 or dims[axis] != channels or any(d != 1 for k, d in enumerate(dims) if k != axis):
        return False
    scale = index.initializers.get(dq.input[1]) if dq is not None else None
    return dq is None or (scale is not None and len(scale.dims) == 0)


def _as_vector(index: _GraphIndex, tensor: str, name: str) -> list[Any]:
    """Nodes that give ``tensor``'s values as a 1-D [C] tensor, the last item being the tensor's name: a 1-D copy of
    the initializer (its raw or external data reused as is) and, for a quantized one, its own DequantizeLinear."""
    initializer, dq = _source_tensor(index, tensor)
    copy = TensorProto()
    copy.CopyFrom(initializer)
    del copy.dims[:]
    copy.dims.append(int(np.prod(initializer.dims)))
    copy.name = f"{name}_quantized" if dq is not None else name
    index.graph.initializer.append(copy)
    index.initializers[copy.name] = copy
    if dq is None:
        return [copy.name]
    node = helper.make_node(
        "DequantizeLinear", [copy.name, *dq.input[1:]], [name], name=f"{name}_DequantizeLinear", domain=dq.domain
    )  # the quantizer's choice (com.microsoft for 16-bit types)
    node.attribute.extend(a for a in dq.attribute if a.name != "axis")  # per-tensor: the axis means nothing
    return [node, name]


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used, then unused initializers and value_info."""
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        used = outputs | {name for n in nodes for name in n.input}
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
    used = outputs | {name for n in nodes for name in n.input}
    produced = {o for n in nodes for o in n.output} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    info = [v for v in graph.value_info if v.name in produced or v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _register() -> None:
    from olive.passes.onnx.graph_surgeries import ProtoSurgeon

    class FuseGroupNormalization(ProtoSurgeon):
        """GroupNorm decompositions (and their Q/DQ) → one ``GroupNormalization`` (see ``sdxl_qdq.surgeons``)."""

        def __call__(self, model: ModelProto) -> ModelProto:
            fuse_group_norms(model)
            return model


_register()
