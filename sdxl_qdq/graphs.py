"""Positions of an ONNX graph's nodes by the tensors they produce and read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def producers(nodes: Sequence[Any]) -> dict[str, int]:
    """Tensor name → index of the node that produces it."""
    return {o: i for i, n in enumerate(nodes) for o in n.output}


def consumers(nodes: Sequence[Any]) -> dict[str, list[int]]:
    """Tensor name → indices of the nodes that read it, in graph order."""
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    return readers
