"""Operator-level view of a QDQ model: op histograms, QDQ coverage, float islands.

A compute node is any node but QuantizeLinear/DequantizeLinear (default or com.microsoft domain),
Constant, and shape arithmetic that touches no float tensor. It is *covered* when every float tensor it reads comes
from a DequantizeLinear (or is a float
initializer a DQ feeds, which QDQ never leaves bare) and every float tensor it writes goes only to
QuantizeLinear nodes. Uncovered compute nodes joined by tensors form float islands.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
QDQ_DOMAINS = {"", "ai.onnx", "com.microsoft"}
NON_COMPUTE = {"Constant"}
# Inputs that parametrize an op rather than carry data (float here, never quantized by design).
PARAM_SLOTS = {"Resize": {1, 2, 3}, "Pad": {1, 2}, "Clip": {1, 2}}


@dataclass(frozen=True)
class Island:
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]


@dataclass
class Coverage:
    compute: int
    covered: int
    uncovered: dict[str, str] = field(default_factory=dict)  # node name → op type
    islands: list[Island] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.covered / self.compute if self.compute else 1.0

    def uncovered_op_types(self) -> Counter[str]:
        return Counter(self.uncovered.values())


def op_histogram(model_path: Path | str) -> dict[str, int]:
    """Op type (with non-default domain prefixed) → count, sorted by name."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node)
    return dict(sorted(counts.items()))


def _is_qdq(node) -> bool:
    return node.op_type in QDQ_OPS and node.domain in QDQ_DOMAINS


def qdq_coverage(model_path: Path | str) -> Coverage:
    """Which compute nodes (a float tensor in or out; shape arithmetic is not compute) read every float input
    from a DequantizeLinear and feed every float output only to QuantizeLinears, and the float islands left."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(model_path), load_external_data=False)).graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    elem.update({i.name: i.data_type for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_float(name: str) -> bool:
        return elem.get(name) in float_types

    compute = [
        n
        for n in graph.node
        if not _is_qdq(n) and n.op_type not in NON_COMPUTE and any(is_float(t) for t in [*n.input, *n.output] if t)
    ]
    uncovered = {}
    for node in compute:
        ins_ok = all(
            (p := producer.get(i)) is not None and _is_qdq(p) and p.op_type == "DequantizeLinear"
            for slot, i in enumerate(node.input)
            if i and is_float(i) and slot not in PARAM_SLOTS.get(node.op_type, ())
        )
        outs_ok = all(
            all(_is_qdq(c) and c.op_type == "QuantizeLinear" for c in consumers.get(o, [])) and consumers.get(o)
            for o in node.output
            if o and is_float(o)
        )
        if not (ins_ok and outs_ok):
            uncovered[_node_id(node)] = node.op_type
    return Coverage(len(compute), len(compute) - len(uncovered), uncovered, _islands(compute, uncovered, consumers))


def _node_id(node: Any) -> str:
    return node.name or f"{node.op_type}@{id(node)}"


def _islands(compute: list[Any], uncovered: dict[str, str], consumers: dict[str, list]) -> list[Island]:
    """Connected components of the uncovered nodes (through the tensors between them), largest first."""
    by_name = {_node_id(n): n for n in compute}
    parent = {name: name for name in uncovered}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name in uncovered:
        for o in by_name[name].output:
            for c in consumers.get(o, []):
                if _node_id(c) in uncovered:
                    parent[find(_node_id(c))] = find(name)
    groups: dict[str, list[str]] = {}
    for name in uncovered:
        groups.setdefault(find(name), []).append(name)
    islands = [Island(tuple(sorted(g)), tuple(sorted(uncovered[x] for x in g))) for g in groups.values()]
    return sorted(islands, key=lambda i: (-len(i.nodes), i.nodes))
