"""Which quantizer a component gets: the recipe's Olive workflows where they fit a 16 GiB host, the
memory-bounded path (``sdxl_qdq.convert.lean``) where they may not. The choice depends on the model, never on the
machine
that builds it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from sdxl_qdq.convert.lean.graph import Graph
from sdxl_qdq.errors import ConfigError

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
        if t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and all(
            d.HasField("dim_value") for d in t.shape.dim
        ):
            acts += int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.int64)) * 4
    return 3 * graph.weight_bytes() + acts


def weight_file_bytes(model: Path) -> int:
    data = model.parent / "model.onnx.data"
    return data.stat().st_size if data.exists() else 0


# The stock path's estimated peak above which ``auto`` picks the lean path: half of the smallest host this project
# supports (16 GiB). A fixed budget, not this machine's memory, so that the choice (and with it every key) is the
# same on every host that builds the model.
STOCK_BUDGET = 8 * 2**30


def choose_quantizer(model: Path, requested: str, *, estimate: int | None = None) -> str:
    """``requested`` ('olive' or 'lean'), or for 'auto': 'lean' when the stock path may not fit a 16 GiB host:
    weights over protobuf's 2 GB, or the stock estimate (``estimate``, else inferred now) over ``STOCK_BUDGET``
    (the estimate leaves out onnxruntime's arena growth and Olive's own copies: 17.9 GB for the real VAE decoder,
    whose stock calibration was measured above 20 GB). A function of the model only. Both give the same model
    (``tests/test_lean.py``)."""
    if requested not in ("auto", "olive", "lean"):
        raise ConfigError(f"quantizer {requested!r} is not one of auto, olive, lean")
    if requested != "auto":
        return requested
    if weight_file_bytes(model) >= PROTOBUF_LIMIT:
        return "lean"
    estimate = stock_peak_estimate(model) if estimate is None else estimate
    return "lean" if estimate > STOCK_BUDGET else "olive"
