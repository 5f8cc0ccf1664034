"""Which quantizer a component gets: the recipe's Olive workflows where they fit this machine, the
memory-bounded path (``quant.build.lean``) where they may not."""

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
from quant.build.lean.graph import Graph
from quant.procs import total_memory_bytes
import numpy as np


PROTOBUF_LIMIT = 2**31  # bytes: the stock path serializes whole models (opset conversion) and fails beyond


def stock_peak_estimate(model: Path) -> int:
    """A rough upper bound of the stock path's peak memory for ``model``: its weights three times (loaded by
    the calibrator, copied by its augmentation, held by the session) plus every float activation at once
    (the augmented session's default order keeps them all alive: 14.4 GB for the real VAE decoder). Shapes
    come from onnxruntime's symbolic shape inference, which sizes what ONNX's leaves open (the decoder's
    upsampling outputs)."""
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
    if requested not in ("auto", "olive", "lean"):
        raise ConfigError(f"quantizer {requested!r} is not one of auto, olive, lean")
    if requested != "auto":
        return requested
    weights = (model.parent / "model.onnx.data").stat().st_size if (model.parent / "model.onnx.data").exists() else 0
    memory = memory or total_memory_bytes()
    return "lean" if weights >= PROTOBUF_LIMIT or stock_peak_estimate(model) > 0.5 * memory else "olive"
